"""librarm.cli: the command line as a new user meets it with bad input: one line naming file:line
(or the key) and no traceback unless --debug; params.yaml syntax errors located; `librarm score`
with file lines counted across blank lines, with a data-built (pseudo) judge, and with a judge that
is not in params (a clear error)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import bench_file

REPO = Path(__file__).resolve().parents[1]


def librarm(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "LIBRARM_TRACKING": "0", "PYTHONPATH": str(REPO / "workflow")}
    env.pop("LIBRARM_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "librarm.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _bench_line(i: int, label) -> str:
    return json.dumps({"index": i, "question": "Compute 2+3.", "response": f"\\boxed{{{4 + i % 2}}}", "label": label,
                       "subset": "s", "model": "g", "reference": "5"})


def test_yaml_syntax_error_is_located_in_one_line(tmp_path):
    bad = tmp_path / "params.yaml"
    text = (REPO / "params.yaml").read_text().replace("\n  n: 4\n", "\n  n: [4\n", 1)
    bad.write_text(text)
    line = text[: text.index("n: [4")].count("\n") + 1
    res = librarm("check-config", "--params", str(bad))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert f"{bad}:{line + 1}:" in res.stderr and "YAML syntax error" in res.stderr and f"line {line}" in res.stderr
    debug = librarm("--debug", "check-config", "--params", str(bad))
    assert "Traceback" in debug.stderr


def test_score_names_the_file_line_after_blank_lines(tmp_path):
    bench = tmp_path / "bench.jsonl"
    bench.write_text(_bench_line(0, 1) + "\n\n" + _bench_line(1, 0) + "\n\n" + _bench_line(2, "maybe") + "\n")
    res = librarm("score", "--bench", str(bench), "--judge", "base", "--out", str(tmp_path / "out"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"{bench}:5: field 'label'" in res.stderr


def test_score_with_a_pseudo_judge(tmp_path):
    """A data-built judge reads each item's label (it crashed with KeyError: 'label' before)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["judges"]["oracle"] = {"backend": "pseudo", "kind": "generative", "pseudo": "reference_judge"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    bench = tmp_path / "bench.jsonl"
    bench.write_text("\n".join(_bench_line(i, int(i % 2 == 1)) for i in range(6)) + "\n")
    res = librarm("score", "--bench", str(bench), "--judge", "oracle", "--params", str(tmp_path / "params.yaml"),
                  "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["libra_score"] == 1.0


def test_score_cli_unknown_judge_is_clear(tmp_path, repo, capsys):
    from librarm.cli import main

    bench = bench_file(tmp_path / "bench.jsonl")
    assert main(["score", "--bench", str(bench), "--judge", "nope", "--params", str(repo / "params.yaml"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err
