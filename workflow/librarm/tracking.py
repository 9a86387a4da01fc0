"""MLflow: one run per job, nested under one pipeline run per (git commit, params hash, DVC exp).

Files stay the source of truth; MLflow is the browsing index. Weights never go to MLflow.
The default store is a local SQLite file (mlflow/mlflow.db); several jobs writing it at once can
hit "database is locked", so every write is retried with backoff.
"""
from __future__ import annotations

import contextlib
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .io import stable_hash

DEFAULT_DB = "mlflow/mlflow.db"
PIPELINE_TAG = "librarm.pipeline_id"


def enabled(params: Mapping[str, Any]) -> bool:
    if os.environ.get("LIBRARM_TRACKING", "1").lower() in ("0", "false", "off"):
        return False
    return params.get("tracking", {}).get("enabled", True)


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    Path(DEFAULT_DB).parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{DEFAULT_DB}"


def _retry(fn: Callable[[], Any], attempts: int = 8) -> Any:
    for i in range(attempts):
        try:
            return fn()
        except Exception as exc:  # sqlite "database is locked" surfaces as several exception types
            if "locked" not in str(exc).lower() or i == attempts - 1:
                raise
            time.sleep(0.2 * (2 ** i) * (1 + random.random()))


def pipeline_identity(params: Mapping[str, Any]) -> dict[str, str | None]:
    from .provenance import git_commit

    exp = os.environ.get("DVC_EXP_NAME")
    ident = {"git_commit": git_commit(), "params_hash": stable_hash(params), "dvc_exp": exp}
    ident["pipeline_id"] = stable_hash(ident)
    return ident


def _client_and_experiment(params: Mapping[str, Any]):
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri())
    client = MlflowClient()
    name = params.get("tracking", {}).get("experiment", "libra")
    exp = _retry(lambda: client.get_experiment_by_name(name))
    if exp is None:
        art = Path("mlflow/artifacts").resolve().as_uri()
        try:
            exp_id = _retry(lambda: client.create_experiment(name, artifact_location=art))
        except Exception:  # created concurrently by another job
            exp_id = _retry(lambda: client.get_experiment_by_name(name)).experiment_id
    else:
        exp_id = exp.experiment_id
    return client, exp_id


def ensure_pipeline_run(params: Mapping[str, Any]) -> str | None:
    """Find or create the pipeline run for this identity (a rerun reuses it). Returns its id."""
    if not enabled(params):
        return None
    client, exp_id = _client_and_experiment(params)
    ident = pipeline_identity(params)
    found = _retry(lambda: client.search_runs([exp_id], f"tags.`{PIPELINE_TAG}` = '{ident['pipeline_id']}' "
                                              "and tags.`librarm.kind` = 'pipeline'",
                                              max_results=1))
    if found:
        return found[0].info.run_id
    tags = {PIPELINE_TAG: ident["pipeline_id"], "librarm.kind": "pipeline",
            "git_commit": str(ident["git_commit"]), "params_hash": ident["params_hash"],
            "dvc_exp": str(ident["dvc_exp"]), "mlflow.runName": f"pipeline {ident['pipeline_id'][:8]}"}
    run = _retry(lambda: client.create_run(exp_id, tags=tags))
    _retry(lambda: client.set_terminated(run.info.run_id, "FINISHED"))
    return run.info.run_id


_NAME_BAD = re.compile(r"[^A-Za-z0-9_\-. :/]")


def flatten(obj: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested dicts/lists as dotted keys (bools and None skipped); characters
    MLflow refuses in names (e.g. the '|' of 'a|b' overlap keys) become '_'."""
    out: dict[str, float] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{_NAME_BAD.sub('_', str(k))}."))
    elif isinstance(obj, (list, tuple)) and len(obj) == 2 and all(isinstance(x, (int, float)) for x in obj):
        out[f"{prefix}low"], out[f"{prefix}high"] = float(obj[0]), float(obj[1])
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix.rstrip(".")] = float(obj)
    return out


class StageRun:
    def __init__(self, client, run_id: str | None):
        self.client, self.run_id = client, run_id

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if not self.run_id:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        flat = [Metric(k[:250], v, now, step or 0) for k, v in flatten(metrics).items()]
        for i in range(0, len(flat), 500):
            _retry(lambda chunk=flat[i:i + 500]: self.client.log_batch(self.run_id, metrics=chunk))

    def log_artifact(self, path: str | Path) -> None:
        if self.run_id and Path(path).exists() and Path(path).stat().st_size < 5 * 1024 * 1024:
            _retry(lambda: self.client.log_artifact(self.run_id, str(path)))


@contextlib.contextmanager
def stage_run(params: Mapping[str, Any], stage: str, sections: Mapping[str, Any],
              wildcards: Mapping[str, str] | None = None) -> Iterator[StageRun]:
    """One MLflow run for one job, nested under the pipeline run; params are the job's sections."""
    if not enabled(params):
        yield StageRun(None, None)
        return
    from mlflow.entities import Param

    client, exp_id = _client_and_experiment(params)
    parent = ensure_pipeline_run(params)
    ident = pipeline_identity(params)
    wildcards = dict(wildcards or {})
    name = stage + "".join(f" {k}={v}" for k, v in sorted(wildcards.items()))
    tags = {"mlflow.parentRunId": parent, "mlflow.runName": name, "librarm.stage": stage,
            "librarm.kind": "job", PIPELINE_TAG: ident["pipeline_id"], "git_commit": str(ident["git_commit"]),
            **{f"wildcard.{k}": str(v) for k, v in wildcards.items()}}
    # A rerun of a job that failed (an interrupted training) continues that job's run, so a
    # resumed training curve has no gap; a finished job's rerun gets a run of its own.
    run_id = _unfinished_run(client, exp_id, tags)
    if run_id:
        _retry(lambda: client.update_run(run_id, status="RUNNING"))
    else:
        run_id = _retry(lambda: client.create_run(exp_id, tags=tags)).info.run_id
    flat_params = {}
    for k, v in _flatten_params(sections).items():
        flat_params[k[:250]] = str(v)[:6000]
    plist = [Param(k, v) for k, v in flat_params.items()]
    for i in range(0, len(plist), 100):
        _retry(lambda chunk=plist[i:i + 100]: client.log_batch(run_id, params=chunk))
    status = "FAILED"
    # Trainers with report_to=["mlflow"] log their curves into this run (transformers' MLflow
    # callback resumes the run named by MLFLOW_RUN_ID in the store named by MLFLOW_TRACKING_URI).
    saved = {k: os.environ.get(k) for k in ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI")}
    os.environ.update(MLFLOW_RUN_ID=run_id, MLFLOW_TRACKING_URI=tracking_uri())
    try:
        yield StageRun(client, run_id)
        status = "FINISHED"
    finally:
        # a trainer's callback left this run active in mlflow's fluent API: end it here with the
        # job's status (mlflow's exit hook would otherwise mark a failed job FINISHED)
        fluent = sys.modules.get("mlflow")
        active = fluent.active_run() if fluent else None
        if active is not None and active.info.run_id == run_id:
            fluent.end_run(status=status)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _retry(lambda: client.set_terminated(run_id, status))


def _unfinished_run(client, exp_id: str, tags: Mapping[str, str]) -> str | None:
    """The latest FAILED or RUNNING run of the same job (same pipeline, stage and wildcards)."""
    keys = [PIPELINE_TAG, "librarm.stage"] + [k for k in tags if k.startswith("wildcard.")]
    flt = " and ".join(f"tags.`{k}` = '{tags[k]}'" for k in keys)
    runs = _retry(lambda: client.search_runs([exp_id], filter_string=flt, order_by=["attributes.start_time DESC"],
                                             max_results=20))
    for r in runs:
        same_wildcards = {k for k in r.data.tags if k.startswith("wildcard.")} == {k for k in tags if k.startswith("wildcard.")}
        if same_wildcards and r.info.status in ("FAILED", "RUNNING"):
            return r.info.run_id
        if same_wildcards:
            return None
    return None


def _flatten_params(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(_flatten_params(v, f"{prefix}{k}."))
    else:
        out[prefix.rstrip(".")] = obj
    return out
