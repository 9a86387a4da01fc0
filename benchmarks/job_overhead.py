"""Per-job costs the DAG pays 104 times, and the trainer settings it pays on every step; one run.

    python benchmarks/job_overhead.py [--steps 10] [--repeats 3]

1. Tracking: a job's MLflow record written to the spool (what jobs do now) vs importing MLflow and
   logging the same run into a fresh SQLite store (what every job did before), each in a fresh
   process, median of --repeats.
2. Provenance: `provenance()` in a process that never loaded torch, vs the same after importing
   torch (what every job paid before device_info stopped importing it).
3. Training: --steps SFT steps of the shipped tiny judge on the tiny SFT rows, TRL's defaults
   (bf16 autocast, gradient checkpointing) vs `train.device_args()` on this machine.
Prints seconds and the ratios old/new. Run it on an idle machine: timings under load mislead."""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SPOOL_JOB = """
import time; t = time.time()
from librarm.run.config import load_params; from librarm.run.tracking import pipeline_context, stage_run
p = load_params({params!r})
with stage_run(pipeline_context(p), 'bench', {{'bench': p['bench']}}, {{'subset': 'x'}}) as run: run.log_metrics({{'a': 1, 'b': {{'c': 2}}}})
print(time.time() - t)
"""

MLFLOW_JOB = """
import time; t = time.time()
import mlflow; from mlflow.tracking import MlflowClient; from mlflow.entities import Metric, Param
mlflow.set_tracking_uri('sqlite:///' + {db!r}); c = MlflowClient()
e = c.get_experiment_by_name('libra'); eid = e.experiment_id if e else c.create_experiment('libra')
r = c.create_run(eid, tags={{'librarm.stage': 'bench'}})
c.log_batch(r.info.run_id, metrics=[Metric('a', 1, 0, 0), Metric('b.c', 2, 0, 0)], params=[Param('bench.x', '1')])
c.set_terminated(r.info.run_id)
print(time.time() - t)
"""

PROVENANCE_JOB = """
import time; t = time.time()
{pre}from librarm.run.provenance import provenance; provenance(); print(time.time() - t)
"""


def timed_process(code: str, cwd: Path, repeats: int) -> float:
    """Median over fresh processes of what the snippet itself prints (its own elapsed seconds) plus
    nothing else: interpreter start-up is the same for both sides and left out."""
    env = {"PYTHONPATH": str(ROOT / "workflow"), "LIBRARM_TRACKING": "1", "PATH": "/usr/bin:/bin"}
    times = []
    for _ in range(repeats):
        res = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=True)
        times.append(float(res.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


def training_seconds(steps: int, settings: dict, work: Path) -> float:
    from librarm.stages import train

    rows = work / "sft.jsonl"
    if not rows.exists():
        items = [{"prompt": f"<|user|>Judge the answer.\nQ: Compute {a}+{a % 7}-3.\nA: \\boxed{{{2 * a}}}<|end|><|assistant|>",
                  "completion": f"<think>{a}+{a % 7}={a + a % 7}\nmine={a:03d} theirs={2 * a:03d} match=nyn</think>\n"
                                "\\boxed{incorrect}", "kind": "judging"} for a in range(10, 90)]
        rows.write_text("".join(json.dumps(r) + "\n" for r in items))
    original = train.device_args
    train.device_args = lambda: settings
    try:
        tag = "-".join(f"{k}={v}" for k, v in settings.items())
        from librarm.run.settings import LaunchSettings, SftSettings

        cfg = SftSettings(init="tiny", steps=steps, learning_rate=5e-4, batch_size=16, save_steps=10 * steps)
        out = train.run_sft(rows, str(ROOT / "workflow/tiny_models/judge_base"), work / f"out-{tag}", cfg, name=tag,
                            resume_root=work / "resume", threads=1, logging_steps=steps, launch=LaunchSettings())
    finally:
        train.device_args = original
    return out["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "workflow"))
    work = Path(tempfile.mkdtemp(prefix="librarm-overhead-"))
    try:
        spool = timed_process(SPOOL_JOB.format(params=str(ROOT / "params.yaml")), work, a.repeats)
        direct = timed_process(MLFLOW_JOB.format(db=str(work / "mlflow.db")), work, a.repeats)
        print(f"tracking per job: MLflow import + log {direct:.2f} s, spool record {spool:.3f} s, "
              f"ratio {direct / spool:.0f}x")
        bare = timed_process(PROVENANCE_JOB.format(pre=""), work, a.repeats)
        old = timed_process(PROVENANCE_JOB.format(pre="import torch; "), work, a.repeats)
        print(f"provenance in a job without torch: importing torch for it {old:.2f} s, now {bare:.3f} s, "
              f"ratio {old / bare:.0f}x")
        from librarm.stages.train import device_args

        trl_default = {"bf16": True, "gradient_checkpointing": True}
        ours = device_args()
        t_default = training_seconds(a.steps, trl_default, work)
        t_ours = training_seconds(a.steps, ours, work)
        print(f"{a.steps} SFT steps of the tiny judge: TRL defaults {trl_default} {t_default:.1f} s, "
              f"device_args {ours} {t_ours:.1f} s, ratio {t_default / t_ours:.1f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
