"""MLflow: jobs spool one record each, one flush imports them: one run per job nested under one
reused pipeline run; metric values equal metrics.json; curves become step metrics."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from librarm.run.tracking import SPOOL_DIR, ensure_pipeline_run, flatten, flush_spool, pipeline_context, stage_run


@pytest.fixture
def mlflow_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIBRARM_TRACKING", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    return tmp_path


def _metrics_file(tmp_path):
    from librarm.stages.evaluate import score_predictions

    preds = [{"label": i % 2, "pred": (i // 3) % 2 if i % 7 else None, "subset": "ab"[i % 2], "model": f"g{i % 3}",
              "question": f"q{i // 4}", "truncated": False} for i in range(40)]
    metrics = score_predictions(preds, resamples=2000, seed=0)
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    return path


def _job_runs(stage: str, **wildcards):
    """The job runs of one stage and wildcards in the store, newest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name("libra")
    flt = " and ".join([f"tags.`librarm.stage` = '{stage}'"] + [f"tags.`wildcard.{k}` = '{v}'" for k, v in wildcards.items()])
    return [r for r in client.search_runs([exp.experiment_id], flt, order_by=["attributes.start_time DESC"])
            if {k[len("wildcard."):] for k in r.data.tags if k.startswith("wildcard.")} == set(wildcards)]


def test_metrics_in_mlflow_equal_metrics_json(mlflow_here, params):
    from mlflow.tracking import MlflowClient

    path = _metrics_file(mlflow_here)
    with stage_run(pipeline_context(params), "evaluate", {"judge": params["judge"]}, {"judge": "base"}) as run:
        run.log_metrics(json.loads(path.read_text()))
        run.log_artifact(path)
    path.write_text("{}")                      # the artifact is the file as the job left it
    assert flush_spool() == 1 and flush_spool() == 0
    (logged,) = _job_runs("evaluate", judge="base")
    client = MlflowClient()
    assert logged.data.metrics == pytest.approx(flatten(json.loads(_metrics_file(mlflow_here).read_text())))
    assert logged.data.tags["librarm.stage"] == "evaluate" and logged.data.tags["wildcard.judge"] == "base"
    assert logged.data.params["judge.max_new_tokens"] == str(params["judge"]["max_new_tokens"])
    assert logged.info.status == "FINISHED"
    parent = logged.data.tags["mlflow.parentRunId"]
    assert parent == ensure_pipeline_run(pipeline_context(params))
    assert [a.path for a in client.list_artifacts(logged.info.run_id)] == ["metrics.json"]
    local = client.download_artifacts(logged.info.run_id, "metrics.json", str(mlflow_here / "dl"))
    assert json.loads(Path(local).read_text()) == json.loads(_metrics_file(mlflow_here).read_text())
    assert (mlflow_here / "mlflow" / "mlflow.db").exists()
    assert not list((mlflow_here / SPOOL_DIR).glob("*.json"))


def test_a_job_never_imports_mlflow_and_an_empty_flush_is_free(mlflow_here, params):
    """The point of the spool: a job's tracking costs a JSON write, not an MLflow import."""
    code = ("import sys, json; from librarm.run.config import load_params; from librarm.run.tracking import pipeline_context, stage_run, flush_spool\n"
            f"p = load_params({str(REPO / 'params.yaml')!r})\n"
            "with stage_run(pipeline_context(p), 'bench', {'bench': p['bench']}) as run: run.log_metrics({'a': 1})\n"
            "assert 'mlflow' not in sys.modules, 'a job imported mlflow'\n"
            "import shutil; shutil.move('mlflow/spool', 'held')\n"
            "assert flush_spool() == 0 and 'mlflow' not in sys.modules\n"
            "shutil.move('held', 'mlflow/spool'); print(len(list(__import__('pathlib').Path('mlflow/spool').glob('*.json'))))")
    res = subprocess.run([sys.executable, "-c", code], cwd=mlflow_here, capture_output=True, text=True,
                         env={**os.environ, "LIBRARM_TRACKING": "1"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "1"


def test_curves_become_step_metrics_once(mlflow_here, params):
    from mlflow.tracking import MlflowClient

    hist = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "val_accuracy": 0.6}]
    with stage_run(pipeline_context(params), "train", {}, {"model": "m"}) as run:
        run.log_metrics({"global_step": 2, "log_history": hist, "val_curve": hist[1:]})
    flush_spool()
    (logged,) = _job_runs("train", model="m")
    client = MlflowClient()
    assert [(m.step, m.value) for m in client.get_metric_history(logged.info.run_id, "loss")] == [(1, 2.0), (2, 1.5)]
    assert len(client.get_metric_history(logged.info.run_id, "val_accuracy")) == 1
    assert logged.data.metrics["global_step"] == 2


def test_live_mode_imports_when_the_job_ends(mlflow_here, params):
    live = {**params, "tracking": {**params["tracking"], "mode": "live"}}
    with stage_run(pipeline_context(live), "bench", {}):
        pass
    assert not list((mlflow_here / SPOOL_DIR).glob("*.json"))
    assert len(_job_runs("bench")) == 1


def test_pipeline_run_reused_not_duplicated(mlflow_here, params, monkeypatch):
    first = ensure_pipeline_run(pipeline_context(params))
    assert ensure_pipeline_run(pipeline_context(params)) == first
    changed = json.loads(json.dumps(params))
    changed["sampling"]["n"] += 1
    assert ensure_pipeline_run(pipeline_context(changed)) != first             # new params hash: a new pipeline run
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")
    assert pipeline_context(params).identity["dvc_exp"] == "exp-1"
    assert ensure_pipeline_run(pipeline_context(params)) != first               # a DVC experiment gets its own


def test_failed_job_marked_failed(mlflow_here, params):
    with pytest.raises(RuntimeError):
        with stage_run(pipeline_context(params), "bench", {"bench": params["bench"]}):
            raise RuntimeError("boom")
    flush_spool()
    assert [r.info.status for r in _job_runs("bench")] == ["FAILED"]


def test_tracking_off(monkeypatch, params, tmp_path):
    monkeypatch.setenv("LIBRARM_TRACKING", "0")
    monkeypatch.chdir(tmp_path)
    with stage_run(pipeline_context(params), "bench", {}) as run:
        assert not run.active
        run.log_metrics({"a": 1})
    assert not (tmp_path / SPOOL_DIR).exists()


def test_rerun_of_failed_job_continues_its_run_and_a_finished_one_does_not(mlflow_here, params):
    with pytest.raises(RuntimeError):
        with stage_run(pipeline_context(params), "train", {}, {"model": "m"}):
            raise RuntimeError("killed")
    flush_spool()
    (first,) = [r.info.run_id for r in _job_runs("train", model="m")]
    with stage_run(pipeline_context(params), "train", {}, {"model": "m"}):
        pass
    flush_spool()
    assert [r.info.run_id for r in _job_runs("train", model="m")] == [first]      # the interrupted job's run goes on
    with stage_run(pipeline_context(params), "train", {}, {"model": "other"}):
        pass
    flush_spool()
    assert first not in [r.info.run_id for r in _job_runs("train", model="other")]  # another job never takes it
    with stage_run(pipeline_context(params), "train", {}, {"model": "m"}):
        pass
    flush_spool()
    assert len(_job_runs("train", model="m")) == 2                                 # a finished job's rerun: a new run


@pytest.mark.slow
def test_killed_training_resumes_global_step_and_mlflow_curve_has_no_gap(mlflow_here, params):
    """SFT killed after its step-5 checkpoint: the rerun resumes at step 5 (TRL's global step
    continues to max_steps), continues the killed job's MLflow run, and its loss curve covers every
    step without a gap (the resumed trainer's history starts at step 1)."""
    from mlflow.tracking import MlflowClient
    from tiny_fixtures import make_random_lm
    from transformers import TrainerCallback

    from librarm.run.io import write_jsonl
    from librarm.run.settings import LaunchSettings, SftSettings
    from librarm.stages.train import run_sft

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 7:
                raise KeyboardInterrupt("simulated kill after the step-5 checkpoint")

    class Record(TrainerCallback):
        steps: list[int] = []

        def on_step_end(self, args, state, control, **kw):
            self.steps.append(state.global_step)

    model_dir = make_random_lm(mlflow_here / "rand", hidden=16)
    write_jsonl(mlflow_here / "sft.jsonl", [{"prompt": f"<|user|>q{i}<|assistant|>", "completion": f"<think>{i}</think>ok",
                                             "kind": "judging"} for i in range(16)])
    cfg = SftSettings(init="rand", steps=10, learning_rate=1e-3, batch_size=4, save_steps=5)
    kw = dict(name="judge_sft", resume_root=mlflow_here / "resume", threads=1, logging_steps=1,
              launch=LaunchSettings())
    with pytest.raises(KeyboardInterrupt):
        with stage_run(pipeline_context(params), "train", {}, {"model": "judge_sft"}):
            run_sft(mlflow_here / "sft.jsonl", str(model_dir), mlflow_here / "out", cfg, callbacks=[Kill()], **kw)
    flush_spool()
    (first,) = _job_runs("train", model="judge_sft")
    assert first.info.status == "FAILED"
    assert sorted(p.name for p in next((mlflow_here / "resume" / "judge_sft").iterdir()).glob("checkpoint-*")) == \
        ["checkpoint-5"]
    with stage_run(pipeline_context(params), "train", {}, {"model": "judge_sft"}) as run:
        log = run_sft(mlflow_here / "sft.jsonl", str(model_dir), mlflow_here / "out", cfg, callbacks=[Record()], **kw)
        run.log_metrics({"global_step": log["global_step"], "log_history": log["log_history"]})
    flush_spool()
    (again,) = _job_runs("train", model="judge_sft")
    assert again.info.run_id == first.info.run_id and again.info.status == "FINISHED"
    assert log["global_step"] == 10
    assert Record.steps == [6, 7, 8, 9, 10]                  # resumed from checkpoint-5, not restarted
    assert [h["step"] for h in log["log_history"] if "loss" in h] == list(range(1, 11))
    steps = sorted({m.step for m in MlflowClient().get_metric_history(first.info.run_id, "loss")})
    assert steps == list(range(1, 11))
