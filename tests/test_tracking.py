"""MLflow: one run per job nested under one reused pipeline run; metric values equal metrics.json."""
import json

import pytest

from librarm.tracking import ensure_pipeline_run, flatten, pipeline_identity, stage_run


@pytest.fixture
def mlflow_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIBRARM_TRACKING", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    return tmp_path


def _metrics_file(tmp_path):
    from librarm.evaluate import score_predictions

    preds = [{"label": i % 2, "pred": (i // 3) % 2 if i % 7 else None, "subset": "ab"[i % 2], "model": f"g{i % 3}",
              "question": f"q{i // 4}", "truncated": False} for i in range(40)]
    metrics = score_predictions(preds, resamples=2000, seed=0)
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    return path


def test_metrics_in_mlflow_equal_metrics_json(mlflow_here, params):
    from mlflow.tracking import MlflowClient

    path = _metrics_file(mlflow_here)
    with stage_run(params, "evaluate", {"judge": params["judge"]}, {"judge": "base"}) as run:
        run.log_metrics(json.loads(path.read_text()))
        run.log_artifact(path)
        run_id = run.run_id
    client = MlflowClient()
    logged = client.get_run(run_id)
    assert logged.data.metrics == pytest.approx(flatten(json.loads(path.read_text())))
    assert logged.data.tags["librarm.stage"] == "evaluate" and logged.data.tags["wildcard.judge"] == "base"
    assert logged.data.params["judge.max_new_tokens"] == str(params["judge"]["max_new_tokens"])
    assert logged.info.status == "FINISHED"
    parent = logged.data.tags["mlflow.parentRunId"]
    assert parent == ensure_pipeline_run(params)
    assert [a.path for a in client.list_artifacts(run_id)] == ["metrics.json"]
    assert (mlflow_here / "mlflow" / "mlflow.db").exists()


def test_pipeline_run_reused_not_duplicated(mlflow_here, params, monkeypatch):
    first = ensure_pipeline_run(params)
    assert ensure_pipeline_run(params) == first
    changed = json.loads(json.dumps(params))
    changed["sampling"]["n"] += 1
    assert ensure_pipeline_run(changed) != first             # new params hash: a new pipeline run
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")
    assert pipeline_identity(params)["dvc_exp"] == "exp-1"
    assert ensure_pipeline_run(params) != first               # a DVC experiment gets its own


def test_failed_job_marked_failed(mlflow_here, params):
    from mlflow.tracking import MlflowClient

    with pytest.raises(RuntimeError):
        with stage_run(params, "bench", {"bench": params["bench"]}) as run:
            run_id = run.run_id
            raise RuntimeError("boom")
    assert MlflowClient().get_run(run_id).info.status == "FAILED"


def test_tracking_off(monkeypatch, params):
    monkeypatch.setenv("LIBRARM_TRACKING", "0")
    with stage_run(params, "bench", {}) as run:
        assert run.run_id is None
        run.log_metrics({"a": 1})


def test_rerun_of_failed_job_continues_its_run_and_a_finished_one_does_not(mlflow_here, params):
    with pytest.raises(RuntimeError):
        with stage_run(params, "train", {}, {"model": "m"}) as run:
            first = run.run_id
            raise RuntimeError("killed")
    with stage_run(params, "train", {}, {"model": "m"}) as run:
        assert run.run_id == first                       # the interrupted job's run goes on
    with stage_run(params, "train", {}, {"model": "other"}) as run:
        assert run.run_id != first                       # another job never takes it
    with stage_run(params, "train", {}, {"model": "m"}) as run:
        assert run.run_id != first                       # a finished job's rerun is a new run


@pytest.mark.slow
def test_killed_training_resumes_global_step_and_mlflow_curve_has_no_gap(mlflow_here, params):
    """SFT killed after its step-5 checkpoint: the rerun resumes at step 5 (TRL's global step
    continues to max_steps) and the job's MLflow loss curve covers every step without a gap."""
    import mlflow
    from mlflow.tracking import MlflowClient
    from tiny_fixtures import make_random_lm
    from transformers import TrainerCallback

    from librarm.io import write_jsonl
    from librarm.train import TrainConfig, run_sft

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
    cfg = TrainConfig(max_steps=10, learning_rate=1e-3, batch_size=4, save_steps=5, logging_steps=1)
    kw = dict(name="judge_sft", report_to_mlflow=True, resume_root=mlflow_here / "resume", threads=1)
    with pytest.raises(KeyboardInterrupt):
        with stage_run(params, "train", {}, {"model": "judge_sft"}) as run:
            first = run.run_id
            run_sft(mlflow_here / "sft.jsonl", str(model_dir), mlflow_here / "out", cfg, callbacks=[Kill()], **kw)
    assert mlflow.active_run() is None       # stage_run ended it as FAILED
    assert MlflowClient().get_run(first).info.status == "FAILED"
    assert sorted(p.name for p in next((mlflow_here / "resume" / "judge_sft").iterdir()).glob("checkpoint-*")) == \
        ["checkpoint-5"]
    with stage_run(params, "train", {}, {"model": "judge_sft"}) as run:
        assert run.run_id == first
        log = run_sft(mlflow_here / "sft.jsonl", str(model_dir), mlflow_here / "out", cfg, callbacks=[Record()], **kw)
    assert MlflowClient().get_run(first).info.status == "FINISHED"
    assert log["global_step"] == 10
    assert Record.steps == [6, 7, 8, 9, 10]                  # resumed from checkpoint-5, not restarted
    assert [h["step"] for h in log["log_history"] if "loss" in h] == list(range(1, 11))
    steps = sorted({m.step for m in MlflowClient().get_metric_history(first, "loss")})
    assert steps == list(range(1, 11))
