"""CI's gates on the test run itself: under LIBRARM_REQUIRE_ENGINES=1 (set by .ci/run) a skipped test
fails with its reason, except tests marked gpu; without it the same test skips."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO

SAMPLE = '''
import pytest

@pytest.mark.engines
def test_engine():
    pytest.skip("no engine here")

@pytest.mark.slow
@pytest.mark.skipif(True, reason="no data here")
def test_slow_with_skipif():
    pass

@pytest.mark.gpu
def test_gpu():
    pytest.skip("no gpu here")

@pytest.mark.xfail(strict=True, reason="known")
def test_known():
    assert False

def test_plain():
    assert True
'''


def _pytest(tmp_path, require: str | None):
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "LIBRARM_REQUIRE_ENGINES"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO / "workflow")])
    if require is not None:
        env["LIBRARM_REQUIRE_ENGINES"] = require
    # the project's conftest as a plugin, on a sample module outside tests/
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           "-p", "conftest", "-W", "ignore::pytest.PytestUnknownMarkWarning", "test_sample.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_a_skip_fails_under_require_engines_with_its_reason(tmp_path):
    res = _pytest(tmp_path, "1")
    assert res.returncode == 1, res.stdout
    # a skipif marker skips at setup, so its failure is reported as an error; both fail the run
    assert "1 failed, 1 passed, 1 skipped, 1 xfailed, 1 error" in res.stdout, res.stdout
    assert "skipped under LIBRARM_REQUIRE_ENGINES=1" in res.stdout and "no engine here" in res.stdout
    assert "no data here" in res.stdout


def test_without_it_the_same_tests_skip(tmp_path):
    for require in (None, "0"):
        res = _pytest(tmp_path, require)
        assert res.returncode == 0, res.stdout
        assert "1 passed, 3 skipped, 1 xfailed" in res.stdout, res.stdout
