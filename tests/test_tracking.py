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
