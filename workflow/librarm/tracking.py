"""MLflow: one run per job, nested under one pipeline run per (git commit, params hash, DVC exp).

Files stay the source of truth; MLflow is the browsing index. Weights never go to MLflow.

A job never imports MLflow: it writes what it would log (params, metrics, its curves by step,
small artifacts, its status) to a spool record under mlflow/spool/, and `flush_spool` imports
every record into the store in one process: the Snakefile calls it when a run ends (success or
error), `librarm track-flush` does it by hand. Importing and connecting to MLflow cost each job
several seconds, more than many jobs' own work. With `tracking.mode: live` a job flushes its own
record when it ends (a team server that wants each job as soon as it is done).
The default store is a local SQLite file (mlflow/mlflow.db); concurrent flushes take a file lock,
and every write is retried with backoff ("database is locked"). A team server (MLFLOW_TRACKING_URI
http://...) holds the same runs; its artifacts go where the server puts them (proxied with
`mlflow server --serve-artifacts`), not into this checkout.
The pipeline run spans its jobs: the flush that creates it starts it at the earliest job start in
the spool, and every flush moves its end to the latest job end. MLflow cannot move a run's start
afterwards (UpdateRun takes status, end time and name), so a pipeline run made first by
`ensure_pipeline_run`, or in live mode by a job that started after one still running, starts late.
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
from .settings import TrackingSettings

DEFAULT_DB = "mlflow/mlflow.db"
PIPELINE_TAG = "librarm.pipeline_id"


def enabled(params: Mapping[str, Any]) -> bool:
    if os.environ.get("LIBRARM_TRACKING", "1").lower() in ("0", "false", "off"):
        return False
    return TrackingSettings.from_params(params).enabled


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    db = Path(DEFAULT_DB).resolve()     # absolute: MLflow caches one store per URI string
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


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


def _client_and_experiment(name: str):
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    exp = _retry(lambda: client.get_experiment_by_name(name))
    if exp is None:
        # a local store keeps artifacts beside it; a server's own location (mlflow-artifacts:/ when it
        # proxies them) is the one every teammate's client can reach, a path on this machine is not
        art = None if _is_server(uri) else Path("mlflow/artifacts").resolve().as_uri()
        try:
            exp_id = _retry(lambda: client.create_experiment(name, artifact_location=art))
        except Exception:  # created concurrently by another process
            exp_id = _retry(lambda: client.get_experiment_by_name(name)).experiment_id
    else:
        exp_id = exp.experiment_id
    return client, exp_id


def _is_server(uri: str) -> bool:
    return uri.split(":", 1)[0].lower() in ("http", "https")


def ensure_pipeline_run(params: Mapping[str, Any]) -> str | None:
    """Find or create the pipeline run for this identity (a rerun reuses it). Returns its id."""
    if not enabled(params):
        return None
    client, exp_id = _client_and_experiment(TrackingSettings.from_params(params).experiment)
    return _pipeline_run(client, exp_id, pipeline_identity(params))


def _pipeline_run(client, exp_id: str, ident: Mapping[str, Any], start_ms: int | None = None) -> str:
    """Find or create the pipeline run; a new one starts at start_ms (now when None), the only time
    its start can be set."""
    found = _retry(lambda: client.search_runs([exp_id], f"tags.`{PIPELINE_TAG}` = '{ident['pipeline_id']}' "
                                              "and tags.`librarm.kind` = 'pipeline'",
                                              max_results=1))
    if found:
        return found[0].info.run_id
    tags = {PIPELINE_TAG: ident["pipeline_id"], "librarm.kind": "pipeline",
            "git_commit": str(ident["git_commit"]), "params_hash": ident["params_hash"],
            "dvc_exp": str(ident["dvc_exp"]), "mlflow.runName": f"pipeline {ident['pipeline_id'][:8]}"}
    run = _retry(lambda: client.create_run(exp_id, start_time=start_ms, tags=tags))
    _retry(lambda: client.set_terminated(run.info.run_id, "FINISHED", end_time=start_ms))
    return run.info.run_id


def _extend_pipeline_run(client, run_id: str, end_ms: int) -> None:
    """The pipeline run ends with its latest job: a rerun's jobs move the end later, never earlier."""
    info = _retry(lambda: client.get_run(run_id)).info
    if info.end_time is None or info.end_time < end_ms:
        _retry(lambda: client.set_terminated(run_id, info.status, end_time=end_ms))


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


SPOOL_DIR = "mlflow/spool"
CURVE_KEYS = ("log_history", "loss_curve", "val_curve", "reward_curve")
ARTIFACT_MAX_BYTES = 5 * 1024 * 1024


def curve_points(metrics: Mapping[str, Any]) -> list[tuple[str, float, int]]:
    """A trainer's per-step history in a stage's result (lists of {step, ...} dicts under
    CURVE_KEYS) as (metric name, value, step); the trainer's own names ("loss", "val_avg_at_k")."""
    out: dict[tuple[str, int], float] = {}      # a point listed under two keys is logged once
    for key in CURVE_KEYS:
        for row in metrics.get(key) or []:
            if not isinstance(row, Mapping) or not isinstance(row.get("step"), int):
                continue
            for name, v in row.items():
                if name != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    out.setdefault((_NAME_BAD.sub("_", name)[:250], row["step"]), float(v))
    return [(name, v, step) for (name, step), v in out.items()]


class StageRun:
    """What one job logs, kept until the job ends and then written as one spool record."""

    def __init__(self, record: dict | None):
        self.record = record

    @property
    def active(self) -> bool:
        return self.record is not None

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if self.record is None:
            return
        if step is None:
            self.record["metrics"].update({k[:250]: v for k, v in flatten(metrics).items()})
            self.record["steps"] += curve_points(metrics)
        else:
            self.record["steps"] += [(k[:250], v, step) for k, v in flatten(metrics).items()]

    def log_artifact(self, path: str | Path) -> None:
        if self.record is not None and Path(path).is_file() and Path(path).stat().st_size < ARTIFACT_MAX_BYTES:
            self.record["artifacts"].append(str(path))


@contextlib.contextmanager
def stage_run(params: Mapping[str, Any], stage: str, sections: Mapping[str, Any],
              wildcards: Mapping[str, str] | None = None) -> Iterator[StageRun]:
    """One MLflow run for one job, nested under the pipeline run; params are the job's sections.
    The record is spooled when the job ends, FAILED if it raised (a rerun continues that run)."""
    if not enabled(params):
        yield StageRun(None)
        return
    wildcards = {k: str(v) for k, v in (wildcards or {}).items()}
    tracking = TrackingSettings.from_params(params)
    record = {"experiment": tracking.experiment,
              "pipeline": pipeline_identity(params), "stage": stage, "wildcards": wildcards,
              "params": {k[:250]: str(v)[:6000] for k, v in _flatten_params(sections).items()},
              "metrics": {}, "steps": [], "artifacts": [], "status": "FAILED", "start_ms": int(time.time() * 1000)}
    run = StageRun(record)
    try:
        yield run
        record["status"] = "FINISHED"
    finally:
        record["end_ms"] = int(time.time() * 1000)
        spool_record(record)
        if tracking.mode == "live":
            flush_spool()


def spool_record(record: Mapping[str, Any], spool_dir: str | Path = SPOOL_DIR) -> Path:
    """Write one job's record (and copies of its artifacts, as they are now) into the spool."""
    import json
    import shutil

    spool = Path(spool_dir)
    stem = f"{record['end_ms']:015d}-{os.getpid()}-{random.randrange(16 ** 6):06x}"
    art_dir = spool / stem
    arts = []
    for i, a in enumerate(record["artifacts"]):
        dst = art_dir / str(i) / Path(a).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(a, dst)
        arts.append(str(dst.relative_to(spool)))
    spool.mkdir(parents=True, exist_ok=True)
    tmp = spool / f".{stem}.tmp"
    tmp.write_text(json.dumps({**record, "artifacts": arts}, default=str))
    return tmp.replace(spool / f"{stem}.json")


def flush_spool(spool_dir: str | Path = SPOOL_DIR) -> int:
    """Import every spooled job record into the MLflow store (one process, one connection), in
    the order the jobs ended; a record leaves the spool once it is in. Returns how many went in.
    Cheap when the spool is empty: MLflow is imported only when there is something to log."""
    import fcntl
    import json
    import shutil

    spool = Path(spool_dir)
    if not spool.is_dir() or not any(spool.glob("*.json")):
        return 0
    with open(spool / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        records = [(path, json.loads(path.read_text())) for path in sorted(spool.glob("*.json"))]
        # (experiment, pipeline id) -> the earliest start and latest end of its jobs in this flush
        spans: dict[tuple[str, str], tuple[int, int]] = {}
        for _, rec in records:
            key = (rec["experiment"], rec["pipeline"]["pipeline_id"])
            lo, hi = spans.get(key, (rec["start_ms"], rec["end_ms"]))
            spans[key] = (min(lo, rec["start_ms"]), max(hi, rec["end_ms"]))
        clients: dict[str, tuple] = {}
        parents: dict[tuple[str, str], str] = {}    # (experiment, pipeline id) -> pipeline run, looked up once
        for path, rec in records:
            if rec["experiment"] not in clients:
                clients[rec["experiment"]] = _client_and_experiment(rec["experiment"])
            client, exp_id = clients[rec["experiment"]]
            key = (rec["experiment"], rec["pipeline"]["pipeline_id"])
            if key not in parents:
                parents[key] = _pipeline_run(client, exp_id, rec["pipeline"], start_ms=spans[key][0])
            _import_record(client, exp_id, rec, spool, parents[key])
            path.unlink()
            shutil.rmtree(spool / path.stem, ignore_errors=True)
        # after the jobs: an import that stops halfway leaves the later-ending records, whose flush
        # moves the end on
        for key, run_id in parents.items():
            _extend_pipeline_run(clients[key[0]][0], run_id, spans[key][1])
    return len(records)


def flush_at_end() -> None:
    """The Snakefile's onsuccess/onerror hook: import the spool; a failure (a server down) keeps
    the records for `librarm track-flush` and never fails the run."""
    try:
        n = flush_spool()
    except Exception as exc:  # the run's results are in files; tracking must not fail it
        print(f"MLflow: import failed ({exc}); the records stay in {SPOOL_DIR}: run `librarm track-flush`",
              file=sys.stderr)
        return
    if n:
        print(f"MLflow: {n} job records imported into {tracking_uri()}", file=sys.stderr)


def _import_record(client, exp_id: str, rec: Mapping[str, Any], spool: Path, parent: str) -> str:
    from mlflow.entities import Metric, Param

    ident = rec["pipeline"]
    wildcards = rec["wildcards"]
    name = rec["stage"] + "".join(f" {k}={v}" for k, v in sorted(wildcards.items()))
    tags = {"mlflow.parentRunId": parent, "mlflow.runName": name, "librarm.stage": rec["stage"],
            "librarm.kind": "job", PIPELINE_TAG: ident["pipeline_id"], "git_commit": str(ident["git_commit"]),
            **{f"wildcard.{k}": v for k, v in wildcards.items()}}
    # A rerun of a job that failed (an interrupted training) continues that job's run; a finished
    # job's rerun gets a run of its own.
    run_id = _unfinished_run(client, exp_id, tags)
    logged: Mapping[str, str] = {}
    if run_id is None:
        run_id = _retry(lambda: client.create_run(exp_id, start_time=rec["start_ms"], tags=tags)).info.run_id
    else:
        # a continued run keeps the params it has; MLflow refuses to log one again with a new value
        logged = _retry(lambda: client.get_run(run_id)).data.params
    plist = [Param(k, v) for k, v in rec["params"].items() if logged.get(k) != v]
    for i in range(0, len(plist), 100):
        _retry(lambda chunk=plist[i:i + 100]: client.log_batch(run_id, params=chunk))
    end = rec["end_ms"]
    mlist = [Metric(k, v, end, 0) for k, v in rec["metrics"].items()]
    mlist += [Metric(k, v, end, step) for k, v, step in rec["steps"]]
    for i in range(0, len(mlist), 500):
        _retry(lambda chunk=mlist[i:i + 500]: client.log_batch(run_id, metrics=chunk))
    for a in rec["artifacts"]:
        _retry(lambda a=a: client.log_artifact(run_id, str(spool / a)))
    _retry(lambda: client.set_terminated(run_id, rec["status"], end_time=end))
    return run_id


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
