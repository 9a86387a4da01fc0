"""A team MLflow server: `mlflow server` (SQLite backend, artifacts proxied into a local folder) on a
free loopback port, stopped by PID, is MLFLOW_TRACKING_URI for a cut of the ci run; the same cut run
again fills the default store (mlflow/mlflow.db). Both hold the same job runs (stage + wildcards),
params, metrics (wall-clock ones aside) and artifact files, the server's artifacts behind
mlflow-artifacts: URIs; in both the pipeline run spans its jobs. Without a server: a rerun's flush
moves the pipeline run's end, never its start."""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ENV, REPO, free_port, mlflow_server_env, run, serve_on_loopback, stop_group

from librarm.run.tracking import flush_spool, pipeline_context, spool_record

# The cut: three jobs of the ci preset in a copy of the session's ci run (conftest.ci_run, untracked):
# bootstrap-stats with its stats.json artifact, one sample job and its verify job with the wall-clock
# `seconds`. Both tracked runs take the samples from the chunk store (results/.resume), so their
# sample metrics (generated_now, reused, ...) are the same and no run repeats the generation.
CUT = "results/bootstrap/stats.json results/verify/gen_weak/tiny_l5.jsonl"
CUT_OUTPUTS = ("results/bootstrap/stats.json", "results/samples", "results/verify")   # removed before each run
CUT_STEPS = {"bootstrap-stats": 1, "sample": 1, "verify": 1}
# Wall-clock measurements differ between any two runs: verify's `seconds`, and sample's
# `tokens_per_s` (logged only by a job that generates: not here, while the chunk store is warm).
# Matched on a name's last part (a summary's nested copies, e.g. sample-stats'
# jobs.<generator>/<subset>.tokens_per_s, count too).
TIMING = {"seconds", "tokens_per_s"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` on a free loopback port: (its URL, its folder with server.db and artifacts/)."""
    tmp = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = mlflow_server_env()
    url = f"http://127.0.0.1:{port}"
    proc = serve_on_loopback([str(Path(sys.executable).with_name("mlflow")), "server",
                              "--backend-store-uri", f"sqlite:///{tmp}/server.db", "--serve-artifacts",
                              "--artifacts-destination", str(tmp / "artifacts"),
                              "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                             f"{url}/health", tmp / "server.log", "mlflow server", 60, cwd=tmp, env=env)
    try:
        yield url, tmp
    finally:
        stop_group(proc)


def _copy_of_run(ci_run: Path, root: Path) -> Path:
    """A copy of the session's ci run, results, Snakemake records and mtimes included (copy2), so
    that only the cut's own jobs run again; ../shared beside it."""
    shutil.copytree(ci_run, root, symlinks=True, ignore=shutil.ignore_patterns("mlflow", "reads", "__pycache__"))
    shared = REPO.parent / "shared"
    if shared.exists() and not (root.parent / "shared").exists():
        os.symlink(shared, root.parent / "shared")
    return root


def _spooled(root: Path) -> list[Path]:
    return list((root / "mlflow" / "spool").glob("*.json"))


@pytest.fixture(scope="module")
def stores(server, ci_run, tmp_path_factory):
    """The cut run twice in a copy of the session's ci run, first into the server, then into the
    default store."""
    from mlflow.tracking import MlflowClient

    url, server_dir = server
    started = time.monotonic()
    root = _copy_of_run(ci_run, tmp_path_factory.mktemp("team") / "repo")
    env = {k: v for k, v in ENV.items() if k not in ("LIBRARM_TRACKING", "MLFLOW_TRACKING_URI", "DVC_EXP_NAME")}
    env["PYTHONPATH"] = str(root / "workflow")
    params = yaml.safe_load((root / "params.yaml").read_text())
    seconds = {"copy": time.monotonic() - started}
    for store, uri in (("server", url), ("default", None)):
        for out in map(root.joinpath, CUT_OUTPUTS):
            if out.is_dir():
                shutil.rmtree(out)
            else:
                out.unlink(missing_ok=True)
        started = time.monotonic()
        run(f"snakemake --cores 2 {CUT}", root, env={**env, "MLFLOW_TRACKING_URI": uri} if uri else env)
        seconds[store] = time.monotonic() - started
        assert not _spooled(root), f"records left in the spool: the import into the {store} store failed"
        if uri:
            assert not (root / "mlflow" / "mlflow.db").exists() and not (root / "mlflow" / "artifacts").exists()
    print(f"seconds: {seconds}")
    return {"server": MlflowClient(url), "default": MlflowClient(f"sqlite:///{root}/mlflow/mlflow.db"),
            "experiment": params["tracking"]["experiment"], "server_dir": server_dir, "root": root}


def _runs(client, experiment: str):
    """(pipeline runs, {(stage, wildcards): job run}) of one store."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    jobs = {}
    for r in runs:
        if r.data.tags.get("librarm.kind") == "job":
            key = (r.data.tags["librarm.stage"],
                   tuple(sorted((k, v) for k, v in r.data.tags.items() if k.startswith("wildcard."))))
            assert key not in jobs, f"two runs of one job: {key}"
            jobs[key] = r
    return [r for r in runs if r.data.tags.get("librarm.kind") == "pipeline"], jobs


def _untimed(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k.rsplit(".", 1)[-1] not in TIMING}


@pytest.mark.slow
@pytest.mark.engines
def test_the_server_holds_the_same_job_runs_params_and_metrics(stores):
    _, served = _runs(stores["server"], stores["experiment"])
    _, local = _runs(stores["default"], stores["experiment"])
    assert set(served) == set(local)
    steps = [stage for stage, _ in local]
    assert {s: steps.count(s) for s in set(steps)} == CUT_STEPS
    timed = set()
    for key, mine in local.items():
        theirs = served[key]
        assert theirs.info.status == mine.info.status == "FINISHED", key
        assert theirs.data.params == mine.data.params and mine.data.params, key
        assert set(theirs.data.metrics) == set(mine.data.metrics), key
        assert _untimed(theirs.data.metrics) == _untimed(mine.data.metrics), key
        timed |= set(mine.data.metrics) - set(_untimed(mine.data.metrics))
    assert "seconds" in {k.rsplit(".", 1)[-1] for k in timed}        # the exclusion is not idle


@pytest.mark.slow
@pytest.mark.engines
def test_artifacts_go_through_the_server_proxy(stores, tmp_path, monkeypatch):
    server, default = stores["server"], stores["default"]
    # the local store's artifact location is relative to the checkout (a copied store stays its own)
    monkeypatch.chdir(stores["root"])
    _, served = _runs(server, stores["experiment"])
    _, local = _runs(default, stores["experiment"])
    listed = []
    for key, mine in local.items():
        theirs = served[key]
        assert theirs.info.artifact_uri.startswith("mlflow-artifacts:/"), theirs.info.artifact_uri
        assert not Path(mine.info.artifact_uri).is_absolute() and "://" not in mine.info.artifact_uri, \
            mine.info.artifact_uri
        names = [a.path for a in server.list_artifacts(theirs.info.run_id)]
        assert names == [a.path for a in default.list_artifacts(mine.info.run_id)], key
        listed += names
    # the files are in the server's artifacts folder, and a download through the proxy is the file
    stored = [p.name for p in (stores["server_dir"] / "artifacts").rglob("*") if p.is_file()]
    assert listed and sorted(stored) == sorted(listed)
    stats = ("bootstrap-stats", ())
    got = server.download_artifacts(served[stats].info.run_id, "stats.json", str(tmp_path / "served"))
    want = default.download_artifacts(local[stats].info.run_id, "stats.json", str(tmp_path / "local"))
    assert Path(got).read_bytes() == Path(want).read_bytes()


@pytest.mark.slow
@pytest.mark.engines
def test_the_pipeline_run_spans_its_jobs_in_both_stores(stores):
    idents = []
    for store in ("server", "default"):
        pipelines, jobs = _runs(stores[store], stores["experiment"])
        assert len(pipelines) == 1, store
        (pipe,) = pipelines
        idents.append({k: pipe.data.tags[k] for k in ("librarm.pipeline_id", "git_commit", "params_hash")})
        assert {r.data.tags["mlflow.parentRunId"] for r in jobs.values()} == {pipe.info.run_id}, store
        assert pipe.info.start_time <= min(r.info.start_time for r in jobs.values()), store
        assert pipe.info.end_time >= max(r.info.end_time for r in jobs.values()), store
        assert pipe.info.end_time - pipe.info.start_time > 1000, store
    assert idents[0] == idents[1]


def _record(params, stage: str, start_ms: int, end_ms: int) -> dict:
    return {"experiment": params["tracking"]["experiment"], "pipeline": pipeline_context(params).identity, "stage": stage,
            "wildcards": {}, "params": {}, "metrics": {"a": 1.0}, "steps": [], "artifacts": [], "status": "FINISHED",
            "start_ms": start_ms, "end_ms": end_ms}


def test_a_rerun_moves_the_pipeline_runs_end_not_its_start(params, tmp_path, monkeypatch):
    """No server: one flush creates the pipeline run at its earliest job start (a job that started
    first may end after another); a rerun's flush moves its end on; a flush of jobs that ended
    earlier moves nothing."""
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIBRARM_TRACKING", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    t0 = int(time.time() * 1000) - 3_600_000

    def pipeline():
        client = MlflowClient(f"sqlite:///{tmp_path}/mlflow/mlflow.db")
        exp = client.get_experiment_by_name(params["tracking"]["experiment"])
        (run,) = client.search_runs([exp.experiment_id], "tags.`librarm.kind` = 'pipeline'")
        return run.info.run_id, run.info.start_time, run.info.end_time

    spool_record(_record(params, "a", t0 + 1000, t0 + 5000))
    spool_record(_record(params, "b", t0, t0 + 3000))
    assert flush_spool() == 2
    first = pipeline()
    assert first[1:] == (t0, t0 + 5000)
    spool_record(_record(params, "a", t0 + 10_000, t0 + 12_000))
    flush_spool()
    assert pipeline() == (first[0], t0, t0 + 12_000)
    spool_record(_record(params, "b", t0 + 2000, t0 + 4000))
    flush_spool()
    assert pipeline() == (first[0], t0, t0 + 12_000)
