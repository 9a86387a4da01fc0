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

The pipeline run carries the run's params (params hash, preset, every setting; registries by name)
and, once the report has run, its headline metrics (the report's metrics.json), so MLflow's
compare view works across pipeline runs and DVC experiments. The report's models.json
(librarm.stages.model_cards) makes every trained judge and DPO policy an MLflow model at import time: an
external LoggedModel (the weights stay in their DVC-tracked folder; the model names its path and
weights digest), its bench metrics and bench dataset logged through a small run of its own, and a
version of the registered model libra-judge-<judge> / libra-policy-<labeler>. The same weights are
one model across pipeline runs.

A local store is relocatable: its experiment's artifact location is relative (mlflow/artifacts,
resolved against the working directory like the store's own sqlite:///mlflow/mlflow.db), so a
copied or moved checkout reads and writes its own artifacts, never the original's.
"""
from __future__ import annotations

import contextlib
import os
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from librarm.run.io import stable_hash
from librarm.run.settings import TrackingSettings

DEFAULT_DB = "mlflow/mlflow.db"
PIPELINE_TAG = "librarm.pipeline_id"


def enabled(tracking: TrackingSettings) -> bool:
    """Whether jobs record runs: `tracking.enabled`, unless LIBRARM_TRACKING=0 turns it off."""
    if os.environ.get("LIBRARM_TRACKING", "1").lower() in ("0", "false", "off"):
        return False
    return tracking.enabled


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


@dataclass(frozen=True)
class PipelineContext:
    """What a job's MLflow record says of the pipeline it belongs to, made once from the params
    (`pipeline_context`): the tracking settings, the pipeline's identity, and the params the
    pipeline run shows."""

    tracking: TrackingSettings
    identity: Mapping[str, str | None]      # git commit, params hash, DVC experiment, pipeline id
    shown: Mapping[str, str]                # the pipeline run's params (every setting, dotted)


# Registries are shown by their names (each entry's settings are in the jobs' params)
REGISTRIES = ("models", "generators", "judges")


def pipeline_context(params: Mapping[str, Any]) -> PipelineContext:
    """The pipeline of these params. Its identity is (git commit, params hash, DVC experiment);
    its run shows the identity, the preset and every setting as a dotted key, registries and
    problem sets by name, so two pipeline runs compare key by key in MLflow's compare view."""
    from librarm.run.provenance import git_commit

    ident = {"git_commit": git_commit(), "params_hash": stable_hash(params), "dvc_exp": os.environ.get("DVC_EXP_NAME")}
    ident["pipeline_id"] = stable_hash(ident)
    out = {"params_hash": ident["params_hash"], "preset": preset_of(params), "git_commit": str(ident["git_commit"]),
           "dvc_exp": str(ident["dvc_exp"])}
    for section, value in params.items():
        if section in REGISTRIES and isinstance(value, Mapping):
            out[section] = ",".join(value)
        elif section == "problems" and isinstance(value, Mapping):
            for k, v in _flatten_params({k: v for k, v in value.items() if k != "sets"}, "problems.").items():
                out[k] = str(v)
            out["problems.sets"] = ",".join(f"{s.get('name')}:{s.get('role')}:{s.get('n', '')}"
                                            for s in value.get("sets") or [] if isinstance(s, Mapping))
        else:
            out.update({k: str(v) for k, v in _flatten_params({section: value}).items()})
    shown = {k[:250]: v[:6000] for k, v in out.items()}
    return PipelineContext(TrackingSettings.from_params(params), ident, shown)


def preset_of(params: Mapping[str, Any]) -> str:
    """The presets (workflow/presets) whose every value the params hold, joined by '+' in name
    order; 'default' when none: how the params were made, whether by `--configfile` overlays or by
    `librarm params --preset ... --write params.yaml`."""
    import yaml

    from librarm.run.paths import PRESETS_DIR

    names = []
    for f in sorted(PRESETS_DIR.glob("*.yaml")):
        try:
            overlay = yaml.safe_load(f.read_text())
        except Exception:  # a broken preset file is the config check's business, not tracking's
            continue
        if isinstance(overlay, Mapping) and overlay and _holds(params, overlay):
            names.append(f.stem)
    return "+".join(names) or "default"


def _holds(value: Any, overlay: Any) -> bool:
    """Whether value (a part of the params) holds every value of overlay (the same part of a preset)."""
    if isinstance(overlay, Mapping):
        if not isinstance(value, Mapping):
            return False
        for k, v in overlay.items():
            if v is None:
                if value.get(k) is not None:       # `key: null` removes an entry
                    return False
            elif k not in value or not _holds(value[k], v):
                return False
        return True
    if isinstance(overlay, (list, tuple)):
        return isinstance(value, (list, tuple)) and len(value) == len(overlay) and \
            all(_holds(a, b) for a, b in zip(value, overlay))
    return value == overlay


def _client_and_experiment(name: str):
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)        # MLflow's default client (logged models, the registry) uses it
    # ... and it also exports it: keep the environment as it was, so that a later import from another
    # checkout in this process resolves its own store (tracking_uri reads the environment first)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
    client = MlflowClient()
    exp = _retry(lambda: client.get_experiment_by_name(name))
    if exp is None:
        # a local store keeps artifacts beside it; a server's own location (mlflow-artifacts:/ when it
        # proxies them) is the one every teammate's client can reach, a path on this machine is not
        art = None if _is_server(uri) else _artifacts_dir(uri).as_uri()
        try:
            exp_id = _retry(lambda: client.create_experiment(name, artifact_location=art))
        except Exception:  # created concurrently by another process
            exp_id = _retry(lambda: client.get_experiment_by_name(name)).experiment_id
    else:
        exp_id = exp.experiment_id
    db = _sqlite_path(uri)
    if db is not None:
        _retry(lambda: make_relocatable(db))
    return client, exp_id


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def _artifacts_dir(uri: str) -> Path:
    """Where a local store keeps its artifacts: beside its sqlite file (mlflow/artifacts)."""
    db = _sqlite_path(uri)
    return (db.parent if db is not None else Path("mlflow")).resolve() / "artifacts"


# MLflow's columns that hold artifact locations (a local store resolves every local location to an
# absolute path, so a copied store would write into the original's folder)
_LOCATION_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                     ("logged_models", "artifact_location"), ("model_versions", "storage_location"))


def make_relocatable(db: str | Path, cwd: str | Path | None = None) -> int:
    """Rewrite the local store's absolute artifact locations under the working directory as paths
    relative to it (mlflow/artifacts/...), the way the store's own URI sqlite:///mlflow/mlflow.db
    is relative: a copy of the checkout then reads and writes its own artifacts. Locations outside
    the working directory stay as they are. Returns how many rows changed."""
    import sqlite3
    from urllib.parse import unquote, urlparse

    cwd = Path(cwd or Path.cwd()).resolve()
    changed = 0
    con = sqlite3.connect(str(db), timeout=60)
    try:
        with con:
            for table, column in _LOCATION_COLUMNS:
                try:
                    rows = con.execute(f"SELECT rowid, {column} FROM {table} WHERE {column} LIKE 'file:%' "
                                       f"OR {column} LIKE '/%'").fetchall()
                except sqlite3.OperationalError:      # a table this MLflow version does not have
                    continue
                for rowid, loc in rows:
                    path = Path(unquote(urlparse(loc).path)) if loc.startswith("file:") else Path(loc)
                    try:
                        rel = path.relative_to(cwd)
                    except ValueError:
                        continue
                    con.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = ?", (rel.as_posix() or ".", rowid))
                    changed += 1
    finally:
        con.close()
    return changed


def _is_server(uri: str) -> bool:
    return uri.split(":", 1)[0].lower() in ("http", "https")


def ensure_pipeline_run(pipeline: PipelineContext) -> str | None:
    """Find or create the pipeline run for this identity (a rerun reuses it). Returns its id."""
    if not enabled(pipeline.tracking):
        return None
    client, exp_id = _client_and_experiment(pipeline.tracking.experiment)
    return _pipeline_run(client, exp_id, pipeline.identity)


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

    def log_dataset(self, bench: Mapping[str, Any]) -> None:
        """A benchmark the job read, as an MLflow dataset input of its run (bench_dataset_input)."""
        if self.record is not None:
            self.record.setdefault("datasets", []).append(
                {k: bench.get(k) for k in ("name", "path", "sha256", "format", "items")})


@contextlib.contextmanager
def stage_run(pipeline: PipelineContext | None, stage: str, sections: Mapping[str, Any],
              wildcards: Mapping[str, str] | None = None) -> Iterator[StageRun]:
    """One MLflow run for one job, nested under the pipeline run; params are the job's sections.
    The record is spooled when the job ends, FAILED if it raised (a rerun continues that run).
    pipeline None (or tracking off): nothing is recorded."""
    if pipeline is None or not enabled(pipeline.tracking):
        yield StageRun(None)
        return
    wildcards = {k: str(v) for k, v in (wildcards or {}).items()}
    tracking = pipeline.tracking
    record = {"experiment": tracking.experiment,
              "pipeline": dict(pipeline.identity), "pipeline_params": dict(pipeline.shown),
              "stage": stage, "wildcards": wildcards,
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
    tmp.write_text(json.dumps({**record, "artifacts": arts,
                               "artifact_dirs": [artifact_dir(a) for a in record["artifacts"]]}, default=str))
    return tmp.replace(spool / f"{stem}.json")


CARDS_FOLDER = "model_cards"        # librarm.stages.model_cards.MODEL_CARDS's folder name (not imported: see flush)


def artifact_dir(path: str | Path) -> str | None:
    """Where an artifact goes in its run: beside the others (None), except the model cards, all named
    README.md, which keep their folders (model_cards/<card>/README.md, model_cards/models.json)."""
    parts = Path(path).parts
    if len(parts) >= 2 and parts[-2] == CARDS_FOLDER:
        return CARDS_FOLDER
    if len(parts) >= 3 and parts[-3] == CARDS_FOLDER:
        return f"{CARDS_FOLDER}/{parts[-2]}"
    return None


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
                _log_pipeline_params(client, parents[key], rec.get("pipeline_params") or {})
            run_id = _import_record(client, exp_id, rec, spool, parents[key])
            if rec["stage"] == "report" and rec["status"] == "FINISHED":
                # the report's headline is the pipeline run's metrics; its models.json, the run's models
                _log_pipeline_metrics(client, parents[key], rec)
                try:
                    _log_models(client, exp_id, rec, spool, parents[key], run_id)
                except Exception as exc:  # the job runs are in: a model that fails to log must not lose them
                    print(f"MLflow: logging the run's models failed ({type(exc).__name__}: {exc})", file=sys.stderr)
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
    for a, where in zip(rec["artifacts"], rec.get("artifact_dirs") or [None] * len(rec["artifacts"])):
        _retry(lambda a=a, where=where: client.log_artifact(run_id, str(spool / a), where))
    datasets = [d for d in map(bench_dataset_input, rec.get("datasets") or ()) if d is not None]
    if datasets:
        _retry(lambda: client.log_inputs(run_id, datasets=datasets))
    _retry(lambda: client.set_terminated(run_id, rec["status"], end_time=end))
    return run_id


def _log_pipeline_params(client, run_id: str, pparams: Mapping[str, str]) -> None:
    """The run's params on its pipeline run: only keys it does not hold yet (the same identity has
    the same params; MLflow refuses a param logged again with another value)."""
    from mlflow.entities import Param

    if not pparams:
        return
    have = _retry(lambda: client.get_run(run_id)).data.params
    plist = [Param(k, v) for k, v in pparams.items() if k not in have]
    for i in range(0, len(plist), 100):
        _retry(lambda chunk=plist[i:i + 100]: client.log_batch(run_id, params=chunk))


def _log_pipeline_metrics(client, run_id: str, rec: Mapping[str, Any]) -> None:
    """The report's headline (its metrics.json, the DVC metric: what the report job logged) as the
    pipeline run's metrics."""
    from mlflow.entities import Metric

    mlist = [Metric(k, v, rec["end_ms"], 0) for k, v in rec["metrics"].items()]
    for i in range(0, len(mlist), 500):
        _retry(lambda chunk=mlist[i:i + 500]: client.log_batch(run_id, metrics=chunk))


# ----------------------------------------------------------------------------- models
def _log_models(client, exp_id: str, rec: Mapping[str, Any], spool: Path, parent: str, report_run: str) -> int:
    """Every model of the report's models.json (librarm.stages.model_cards) as an MLflow model: an
    external LoggedModel that names its DVC-tracked folder and weights digest (no weights are
    copied), with its card as the model's artifact, its bench metrics and bench dataset logged
    through a run of its own (nested under the pipeline run), its training job's run as its source
    when that run is in this pipeline, and a version of its registered model. A model whose weights
    are already logged under the same name (an experiment that did not retrain it) is that model:
    it gets metrics only for a dataset it has none for. Returns how many models were new."""
    import json

    dirs = rec.get("artifact_dirs") or [None] * len(rec["artifacts"])
    manifest, cards = None, {}
    for a, where in zip(rec["artifacts"], dirs):
        if where == CARDS_FOLDER and Path(a).name == "models.json":
            manifest = spool / a
        elif where and where.startswith(CARDS_FOLDER + "/"):
            cards[where.split("/", 1)[1]] = spool / a
    if manifest is None:
        return 0
    new = 0
    for entry in json.loads(manifest.read_text())["models"]:
        new += _log_model(client, exp_id, rec, entry, cards.get(entry["card"]), parent)
    return new


def _log_model(client, exp_id: str, rec: Mapping[str, Any], e: Mapping[str, Any], card: Path | None,
               parent: str) -> int:
    import mlflow

    name, digest = e["registered_name"], e.get("weights_sha256")
    ident = rec["pipeline"]
    found = []
    if digest:
        found = _retry(lambda: client.search_logged_models(
            [exp_id], filter_string=f"name = '{name}' AND tags.`librarm.weights_sha256` = '{digest}'", max_results=1))
    ds = e.get("dataset") or {}
    ds_digest = (ds.get("sha256") or "")[:16] or None
    if found:
        model = found[0]
        if ds_digest and any(m.dataset_digest == ds_digest for m in (model.metrics or [])):
            return 0
        _model_run(client, exp_id, rec, e, model.model_id, card, parent)
        return 0
    if e["type"] == "judge":
        source = _job_run(client, exp_id, ident["pipeline_id"], "train", {"model": e["model"]})
    else:
        source = _job_run(client, exp_id, ident["pipeline_id"], "dpo", {"policy": e["policy"], "seed": str(e["seed"])})
    tags = {"librarm.type": e["type"], "librarm.card": e["card"], "librarm.path": e["path"],
            "librarm.weights_sha256": str(digest), PIPELINE_TAG: ident["pipeline_id"],
            "git_commit": str(ident["git_commit"]), "params_hash": ident["params_hash"],
            "librarm.base_model": str(e.get("base", {}).get("id") or e.get("base", {}).get("name")),
            "librarm.tiny_world": str(e.get("base", {}).get("source") == "tiny").lower()}
    tags.update({f"librarm.training_data.{i}": f"{d['path']}@sha256:{d['sha256']}"
                 for i, d in enumerate(e.get("training_data") or [])})
    for k in ("judge", "model", "kind", "policy", "labeler", "seed"):
        if e.get(k) is not None:
            tags[f"librarm.{k}"] = str(e[k])
    params = {k: str(v)[:6000] for k, v in (e.get("training") or {}).items()}
    model_run = _model_run(client, exp_id, rec, e, None, card, parent)
    model = _retry(lambda: mlflow.create_external_model(name=name, source_run_id=source or model_run, tags=tags,
                                                        params=params or None, model_type=e["type"],
                                                        experiment_id=exp_id))
    if card is not None:
        _retry(lambda: client.log_model_artifact(model.model_id, str(card)))
    _link_model_run(client, model_run, model.model_id, e)
    if source:
        from mlflow.entities import LoggedModelOutput

        _retry(lambda: client.log_outputs(source, [LoggedModelOutput(model.model_id, 0)]))
    _register(client, name, model.model_id, source or model_run, e)
    return 1


def _job_run(client, exp_id: str, pipeline_id: str, stage: str, wildcards: Mapping[str, str]) -> str | None:
    """The latest finished run of one job (stage + wildcards) of this pipeline run, if any."""
    flt = " and ".join([f"tags.`{PIPELINE_TAG}` = '{pipeline_id}'", f"tags.`librarm.stage` = '{stage}'",
                        "attributes.status = 'FINISHED'"] + [f"tags.`wildcard.{k}` = '{v}'" for k, v in wildcards.items()])
    runs = _retry(lambda: client.search_runs([exp_id], filter_string=flt, order_by=["attributes.start_time DESC"],
                                             max_results=5))
    for r in runs:
        if {k for k in r.data.tags if k.startswith("wildcard.")} == {f"wildcard.{k}" for k in wildcards}:
            return r.info.run_id
    return None


def _model_run(client, exp_id: str, rec: Mapping[str, Any], e: Mapping[str, Any], model_id: str | None,
               card: Path | None, parent: str) -> str:
    """A run of its own for one model's scores, nested under the pipeline run: its metrics (bound
    to the model and the dataset), the dataset as an input, the card as an artifact."""
    ident = rec["pipeline"]
    tags = {"mlflow.parentRunId": parent, "mlflow.runName": f"model {e['card']}", "librarm.kind": "model",
            "librarm.model_card": e["card"], PIPELINE_TAG: ident["pipeline_id"], "git_commit": str(ident["git_commit"])}
    run_id = _retry(lambda: client.create_run(exp_id, start_time=rec["end_ms"], tags=tags)).info.run_id
    if card is not None:
        _retry(lambda: client.log_artifact(run_id, str(card)))
    if model_id is not None:
        _link_model_run(client, run_id, model_id, e)
    return run_id


def _link_model_run(client, run_id: str, model_id: str, e: Mapping[str, Any]) -> None:
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelInput, Metric

    ds = e.get("dataset") or {}
    ds_name, ds_digest = ds.get("name"), (ds.get("sha256") or "")[:16] or None
    datasets = []
    if ds_name and ds_digest:
        datasets.append(DatasetInput(Dataset(name=ds_name, digest=ds_digest, source_type="local",
                                             source=json.dumps({"uri": ds.get("path"), "sha256": ds.get("sha256")}),
                                             profile=json.dumps({"num_rows": ds.get("records")})),
                                     tags=[InputTag("mlflow.data.context", "eval")]))
    _retry(lambda: client.log_inputs(run_id, datasets=datasets or None, models=[LoggedModelInput(model_id)]))
    ts = int(time.time() * 1000)
    metrics = e.get("metrics") or {}
    values = {k: float(v) for k, v in (metrics.get("values") or {}).items() if isinstance(v, (int, float))}
    for k, ci in (metrics.get("ci95") or {}).items():
        if ci and len(ci) == 2:
            values[f"ci95.{k}.low"], values[f"ci95.{k}.high"] = float(ci[0]), float(ci[1])
    named = dict(dataset_name=ds_name, dataset_digest=ds_digest) if ds_name and ds_digest else {}
    mlist = [Metric(k[:250], v, ts, 0, model_id=model_id, **named) for k, v in values.items()]
    if mlist:
        _retry(lambda: client.log_batch(run_id, metrics=mlist))
    _retry(lambda: client.set_terminated(run_id, "FINISHED", end_time=ts))


def _register(client, name: str, model_id: str, run_id: str, e: Mapping[str, Any]) -> None:
    """A version of the registered model `name` (created on first use) for this logged model."""
    from mlflow.exceptions import MlflowException

    what = (f"Trained judge `{e.get('judge')}` of the Libra pipeline ({e.get('kind')})" if e["type"] == "judge" else
            f"DPO policy of the Libra pipeline trained on the pairs of labeler `{e.get('labeler')}`")
    try:
        _retry(lambda: client.create_registered_model(
            name, tags={"librarm.type": e["type"]},
            description=f"{what}. Each version is one set of weights (a DVC-tracked folder); its model card is "
                        f"`{e.get('card_path') or e['card'] + '/README.md'}`."))
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and exc.error_code not in ("RESOURCE_ALREADY_EXISTS",
                                                                               "ALREADY_EXISTS"):
            raise
    vals = (e.get("metrics") or {}).get("values") or {}
    score = (f"Libra score {100 * vals['libra_score']:.1f}%" if vals.get("libra_score") is not None else
             f"avg@k {100 * vals['avg_at_k']:.1f}%" if vals.get("avg_at_k") is not None else "no score")
    tags = {"librarm.path": e["path"], "librarm.weights_sha256": str(e.get("weights_sha256")),
            "librarm.card": e["card"]}
    if e.get("seed") is not None:
        tags["librarm.seed"] = str(e["seed"])
    _retry(lambda: client.create_model_version(
        name, source=f"models:/{model_id}", run_id=run_id, model_id=model_id, tags=tags,
        description=f"{score}; weights `{e['path']}` (sha256 {str(e.get('weights_sha256'))[:16]}).",
        await_creation_for=0))


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


def bench_dataset_input(bench: Mapping[str, Any]):
    """A benchmark as an MLflow dataset input of an eval run: its name, its digest (the first 16 hex
    digits of its sha256) and its source (path, sha256, format), with its item count as the profile.
    `bench` has the keys of `librarm score`'s summary["benchmark"]; None without a name or sha256.
    One definition for `librarm score --mlflow` and the evaluate stage's job run."""
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    digest = (bench.get("sha256") or "")[:16]
    if not bench.get("name") or not digest:
        return None
    ds = Dataset(name=bench["name"], digest=digest, source_type="local",
                 source=json.dumps({"uri": bench.get("path"), "sha256": bench.get("sha256"), "format": bench.get("format")}),
                 profile=json.dumps({"num_rows": bench.get("items")}))
    return DatasetInput(ds, tags=[InputTag("mlflow.data.context", "eval")])


SCORE_EXPERIMENT = "librarm-score"
SCORE_METRICS = ("accuracy", "balanced_accuracy", "f1", "acc_correct", "acc_incorrect", "harmonic_mean",
                 "unparsed_rate")


def log_scoring_run(summary: Mapping[str, Any], out_dir: str | Path, experiment: str = SCORE_EXPERIMENT) -> str:
    """A `librarm score` run in MLflow (the tracking URI of this checkout, or MLFLOW_TRACKING_URI):
    the judge and its settings as params, every view's metrics, the benchmark as a dataset input
    (name, digest, source) and the run folder's summary, predictions and verdicts as artifacts, so
    `mlflow ui` compares judges across benchmarks. Returns the run id."""
    from mlflow.entities import Metric, Param

    client, exp_id = _client_and_experiment(experiment)
    bench = summary.get("benchmark") or {}
    run = _retry(lambda: client.create_run(exp_id, run_name=f"{summary['judge']} on {bench.get('name')}",
                                           tags={"librarm.kind": "score"}))
    rid = run.info.run_id
    params = {"judge": summary.get("judge"), "backend": summary.get("backend"), "model": summary.get("model"),
              "samples": summary.get("samples"), "benchmark": bench.get("name"), "format": bench.get("format"),
              "items": bench.get("items")}
    metrics = summary.get("metrics") or {}
    values = {f"{view}.{k}": metrics[view][k] for view in ("first", "majority") if view in metrics
              for k in SCORE_METRICS if isinstance(metrics[view].get(k), (int, float))}
    for key in ("libra_score",):
        if isinstance(metrics.get(key), (int, float)):
            values[key] = metrics[key]
    ts = int(time.time() * 1000)
    _retry(lambda: client.log_batch(rid, params=[Param(k, str(v)[:6000]) for k, v in params.items()],
                                    metrics=[Metric(k, float(v), ts, 0) for k, v in values.items()]))
    dataset = bench_dataset_input(bench)
    if dataset is not None:
        _retry(lambda: client.log_inputs(rid, datasets=[dataset]))
    for name in ("summary.json", "predictions.jsonl", "verdicts.jsonl"):
        path = Path(out_dir) / name
        if path.exists():
            _retry(lambda: client.log_artifact(rid, str(path)))
    _retry(lambda: client.set_terminated(rid, "FINISHED"))
    return rid
