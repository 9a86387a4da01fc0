"""`librarm score` as a researcher runs it: every benchmark format of the field scored with a model
judge (hf, the tiny world's judge) and with the rule verifier (`--backend rule`), k verdicts per item,
the metrics users compare printed as a table, a folder that resumes and refuses to be overwritten,
and (engines) a killed http scoring run against a real `transformers serve` that resumes sending only
the missing requests, counted at a proxy, into the same bytes as an uninterrupted run."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from test_serving import librarm

from librarm.run.io import read_jsonl

JUDGE = REPO / "workflow" / "tiny_models" / "judge_teacher"


# ----------------------------------------------------------------------------- files in each schema
def _problems(n: int):
    for i in range(n):
        a, b = i % 7 + 1, i % 4 + 2
        yield i, f"Compute {a}+{b}.", str(a + b)


def write_format(fmt: str, path: Path, n: int = 6) -> Path:
    """A small file in the benchmark's own schema (half the responses wrong)."""
    rows = []
    for i, q, ans in _problems(n):
        good = i % 2 == 0
        resp = f"The sum is \\boxed{{{ans if good else int(ans) + 1}}}."
        if fmt == "libra":
            rows.append({"index": i, "question": q, "response": resp, "label": int(good), "subset": f"s{i % 2}",
                         "model": "g", "reference": ans})
        elif fmt == "verifybench":
            rows.append({"id": f"v{i}", "question": q, "answer": ans, "completion": resp, "gold_correct": good,
                         "answer_type": "Numerical", "answer_subtype": "Integer"})
        elif fmt == "verifierbench":
            rows.append({"question": q, "gold_answer": ans, "llm_response": resp, "gold_judgment": "A" if good else "B",
                         "data_source": "toy", "domain": "math", "answer_type": "numeric"})
        elif fmt == "jsonl":
            rows.append({"q": q, "a": ans, "r": resp, "y": good, "c": "arith"})
    if fmt == "ppe-math":
        for i, q, ans in _problems(max(1, n // 3)):
            row = {"question_id": f"p{i}", "problem": q, "sanitized_solution": ans, "model_name": "g", "level": "1",
                   "type": "Algebra", "scores": [True, False, True]}
            for k, good in enumerate(row["scores"]):
                row[f"response_{k + 1}"] = f"\\boxed{{{ans if good else int(ans) + 2}}}"
            rows.append(row)
    if fmt == "rewardbench2":
        for i, q, ans in _problems(max(1, n // 3)):
            rows.append({"id": f"r{i}", "subset": "Math", "prompt": q, "chosen": [f"\\boxed{{{ans}}}"],
                         "rejected": [f"\\boxed{{{int(ans) + 1}}}", f"\\boxed{{{int(ans) + 3}}}"]})
    if fmt == "verifierbench":
        path.write_text(json.dumps(rows))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def greedy_params(tmp: Path, **judge) -> Path:
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["judge"].update({"temperature": 0.0, "max_new_tokens": 48, **judge})
    out = tmp / "params.yaml"
    out.write_text(yaml.safe_dump(p))
    return out


FORMATS = ["libra", "verifybench", "verifierbench", "ppe-math", "rewardbench2", "jsonl"]
FIELDS = {"jsonl": ["--fields", "question=q,reference=a,response=r,label=y,category=c"]}


def score_here(capsys, *args: str) -> tuple[int, str, str]:
    """`librarm score ...` in this process (the model loads once per call; no interpreter start)."""
    from librarm.cli import main

    rc = main(["score", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_scores_with_a_model_judge_and_with_the_rule_verifier(fmt, tmp_path, capsys):
    bench = write_format(fmt, tmp_path / ("bench.json" if fmt == "verifierbench" else "bench.jsonl"))
    params = greedy_params(tmp_path)
    fields = FIELDS.get(fmt, [])
    rc, out, err = score_here(capsys, "--bench", str(bench), *fields, "--params", str(params), "--model", str(JUDGE),
                              "--out", str(tmp_path / "hf"))
    assert rc == 0, err[-3000:]
    summary = json.loads((tmp_path / "hf" / "summary.json").read_text())
    assert summary["judge"] == "judge_teacher" and summary["benchmark"]["format"] == fmt
    first = summary["metrics"]["first"]
    for key in ("accuracy", "balanced_accuracy", "f1", "acc_correct", "acc_incorrect", "harmonic_mean", "unparsed_rate"):
        assert key in first, key
    assert "accuracy [95% CI]" in out
    rc, out, err = score_here(capsys, "--bench", str(bench), *fields, "--backend", "rule", "--out", str(tmp_path / "rule"))
    if fmt == "rewardbench2":
        # no reference answers: the rule judge refuses in one line
        assert rc != 0 and "no reference" in err and len(err.strip().splitlines()) == 1
        return
    assert rc == 0, err[-3000:]
    preds = read_jsonl(tmp_path / "rule" / "predictions.jsonl").records
    # the rule verifier is right on these arithmetic items
    assert [p["pred"] for p in preds] == [p["label"] for p in preds]
    assert json.loads((tmp_path / "rule" / "summary.json").read_text())["metrics"]["first"]["accuracy"] == 1.0


@pytest.mark.slow
def test_k_verdicts_give_first_majority_and_calibration(tmp_path):
    bench = write_format("libra", tmp_path / "bench.jsonl", n=2)
    params = greedy_params(tmp_path, temperature=1.0)
    res = librarm("score", "--bench", str(bench), "--params", str(params), "--model", str(JUDGE), "--samples", "8",
                  "--out", str(tmp_path / "k8"))
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((tmp_path / "k8" / "summary.json").read_text())["metrics"]
    assert m["k"] == 8 and {"first", "majority", "mean_p"} <= set(m)
    assert "brier" in m["mean_p"]
    verdicts = read_jsonl(tmp_path / "k8" / "verdicts.jsonl").records
    assert len(verdicts) == 2 * 8
    assert [(v["index"], v["k"]) for v in verdicts] == sorted((v["index"], v["k"]) for v in verdicts)
    preds = read_jsonl(tmp_path / "k8" / "predictions.jsonl").records
    assert all(len(p["verdicts"]) == 8 for p in preds)
    # a rerun with the same settings sends nothing; other settings are refused without --overwrite
    again = librarm("score", "--bench", str(bench), "--params", str(params), "--model", str(JUDGE), "--samples", "8",
                    "--out", str(tmp_path / "k8"))
    assert again.returncode == 0 and "0 sent, 16 reused" in again.stdout
    other = librarm("score", "--bench", str(bench), "--params", str(params), "--model", str(JUDGE), "--samples", "4",
                    "--out", str(tmp_path / "k8"))
    assert other.returncode != 0 and "--overwrite" in other.stderr and "samples" in other.stderr


def test_a_judge_needs_a_name_and_limit_takes_the_first_items(tmp_path):
    bench = write_format("libra", tmp_path / "bench.jsonl")
    res = librarm("score", "--bench", str(bench), "--out", str(tmp_path / "x"))
    assert res.returncode != 0 and "--judge" in res.stderr and "--model" in res.stderr
    res = librarm("score", "--bench", str(bench), "--backend", "rule", "--limit", "2", "--out", str(tmp_path / "r"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(read_jsonl(tmp_path / "r" / "predictions.jsonl").records) == 2
    assert "first 2" in res.stdout


# ----------------------------------------------------------------------------- http: kill and resume
@pytest.mark.slow
@pytest.mark.engines
def test_a_killed_http_scoring_run_resumes_sending_only_the_missing_requests(served, tmp_path):
    from fault_proxy import FaultProxy

    bench = write_format("libra", tmp_path / "bench.jsonl", n=6)
    params = greedy_params(tmp_path)
    proxy = FaultProxy(served).start()
    try:
        def command(out: str) -> list[str]:
            return [sys.executable, "-m", "librarm.cli", "score", "--bench", str(bench), "--params", str(params),
                    "--backend", "http", "--base-url", proxy.url, "--model", str(JUDGE), "--samples", "2",
                    "--concurrency", "1", "--out", str(tmp_path / out)]

        clean = subprocess.run(command("clean"), capture_output=True, text=True, timeout=600)
        assert clean.returncode == 0, clean.stderr[-3000:]
        total = len(proxy.log)
        assert total == 12
        proxy.reset()
        proc = subprocess.Popen(command("killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        store = tmp_path / "killed" / "verdicts.jsonl"
        deadline = time.time() + 300
        while time.time() < deadline and (not store.exists() or len(store.read_text().splitlines()) < 4):
            assert proc.poll() is None, "the run finished before it could be killed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kept = sum(1 for line in store.read_text().splitlines() if line.endswith("}"))
        assert 4 <= kept < 12
        proxy.reset()
        resumed = subprocess.run(command("killed"), capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert len(proxy.log) == 12 - kept, (len(proxy.log), kept)        # only the missing requests
        assert store.read_bytes() == (tmp_path / "clean" / "verdicts.jsonl").read_bytes()
    finally:
        proxy.stop()


def test_a_scoring_run_is_logged_to_mlflow_with_its_benchmark_and_verdicts(tmp_path, monkeypatch):
    import os

    from mlflow.tracking import MlflowClient

    bench = write_format("verifybench", tmp_path / "bench.jsonl")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    res = subprocess.run([sys.executable, "-m", "librarm.cli", "score", "--bench", str(bench), "--backend", "rule",
                          "--out", str(tmp_path / "rule"), "--mlflow"], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": uri, "LIBRARM_TRACKING": "0"})
    assert res.returncode == 0, res.stderr[-3000:]
    monkeypatch.chdir(tmp_path)            # the store keeps artifact paths relative to where it was made
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("librarm-score").experiment_id])
    assert run.data.params["judge"] == "rule" and run.data.params["format"] == "verifybench"
    assert run.data.metrics["first.accuracy"] == 1.0
    (ds,) = run.inputs.dataset_inputs
    assert ds.dataset.name == "bench" and json.loads(ds.dataset.source)["format"] == "verifybench"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"summary.json", "verdicts.jsonl"}


def test_the_evaluate_job_logs_its_bench_as_a_dataset_input_and_its_predictions(tmp_path, monkeypatch, capsys):
    """The evaluate stage's tracked part (`librarm stage evaluate` under tracking) into a store in a
    temporary folder: its job run holds the bench as a dataset input (name, digest, source: what
    `librarm score --mlflow` logs for the same file) and its predictions and metrics as artifacts;
    tracking leaves the result files as an untracked run writes them."""
    from conftest import bench_file
    from mlflow.tracking import MlflowClient

    from librarm.cli import main
    from librarm.judging.bench_formats import read_items
    from librarm.run.config import load_params
    from librarm.run.io import file_sha256
    from librarm.run.tracking import bench_dataset_input, flush_spool
    from librarm.scoring import bench_identity

    params = load_params(REPO / "params.yaml", overlays=[{"judges": {"oracle": {
        "backend": "pseudo", "kind": "generative", "pseudo": "reference_judge"}}}])
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(params))
    bench = bench_file(tmp_path / "bench.jsonl")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)

    def evaluate(out: str, tracking: str) -> Path:
        monkeypatch.setenv("LIBRARM_TRACKING", tracking)
        assert main(["stage", "evaluate", "--config", str(cfg), "--wildcard", "judge=oracle", "--in", "bench", str(bench),
                     "--in", "stress", "--out", "predictions", f"{out}/predictions.jsonl", "--out", "metrics",
                     f"{out}/metrics.json", "--out", "stress_predictions"]) == 0
        return tmp_path / out

    tracked, untracked = evaluate("tracked", "1"), evaluate("untracked", "0")
    capsys.readouterr()
    assert (tracked / "predictions.jsonl").read_bytes() == (untracked / "predictions.jsonl").read_bytes()
    timing = ("seconds", "tokens_per_s", "provenance")
    same = [{k: v for k, v in json.loads((d / "metrics.json").read_text()).items() if k not in timing}
            for d in (tracked, untracked)]
    assert same[0] == same[1]
    assert flush_spool() == 1
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    exp = client.get_experiment_by_name("libra")
    (run,) = client.search_runs([exp.experiment_id], "tags.`librarm.stage` = 'evaluate'")
    (ds,) = run.inputs.dataset_inputs
    digest = file_sha256(bench)
    assert (ds.dataset.name, ds.dataset.digest) == ("bench", digest[:16])
    assert json.loads(ds.dataset.source) == {"uri": str(bench), "sha256": digest, "format": "libra"}
    assert json.loads(ds.dataset.profile) == {"num_rows": 24}
    # the same input `librarm score --mlflow` logs for this file (one function makes both)
    scored = bench_dataset_input(bench_identity(bench, read_items(bench, None, None)[1], None)).dataset
    assert (scored.name, scored.digest, scored.source) == (ds.dataset.name, ds.dataset.digest, ds.dataset.source)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"metrics.json", "predictions.jsonl"}
