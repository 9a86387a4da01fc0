"""A model job run as a fresh process against the same job forked from the warm server (librarm/run/warm.py).

The job: `librarm stage sample` with the shipped tiny generator (gen_weak) on 16 problems, n=2, as a
Snakemake job would run it (its own process, output to a log). Each way runs --reps times,
alternating; the server is started once, outside the timings (a run starts it at its first job).
Prints one JSON line: each way's wall seconds (median) and the ratio fresh / warm.
  python benchmarks/warm_jobs.py [--reps 3]          (about 1 min on 2 idle cores)"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()

    from librarm.run import warm
    from librarm.run.config import load_params
    from librarm.run.io import write_jsonl

    params = copy.deepcopy(load_params(REPO / "params.yaml"))
    params["sampling"]["n"] = 2
    # the shipped weights themselves (a run copies them to results/bootstrap/models/gen_weak)
    params["models"]["gen_weak"] = {"source": "path", "path": str(REPO / "workflow/tiny_models/gen_weak"),
                                    "role": "generator"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "cfg.json").write_text(json.dumps(params))
        write_jsonl(tmp / "probs.jsonl", [{"id": f"p{i}", "set": "s", "role": "eval", "problem": f"Compute {i}+1.",
                                           "answer": str(i + 1)} for i in range(16)])
        os.environ["LIBRARM_TRACKING"] = "0"
        os.chdir(tmp)                        # the job's chunk store (results/.resume) goes here
        server = warm.start(tmp / "server.log")
        path = os.environ.pop(warm.SOCKET_ENV)
        while not os.path.exists(path):
            time.sleep(0.05)
        times: dict[str, list[float]] = {"fresh": [], "warm": []}
        try:
            for rep in range(a.reps):
                for how in ("fresh", "warm"):
                    out = tmp / f"{how}-{rep}"
                    cmd = [sys.executable, "-m", "librarm.cli", "stage", "sample", "--config", str(tmp / "cfg.json"),
                           "--wildcard", "generator=gen_weak", "--wildcard", "subset=s",
                           "--in", "problems", str(tmp / "probs.jsonl"), "--out", "samples", f"{out}/s.jsonl",
                           "--out", "meta", f"{out}/meta.json", "--threads", "1"]
                    env = {**os.environ, **({warm.SOCKET_ENV: path} if how == "warm" else {})}
                    started = time.perf_counter()
                    with open(tmp / f"{how}-{rep}.log", "w") as log:
                        subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
                    times[how].append(time.perf_counter() - started)
                    # each rep samples afresh: the chunk store would otherwise answer the second way
                    subprocess.run(["rm", "-rf", str(tmp / "results/.resume")], check=True)
            same = (tmp / "fresh-0/s.jsonl").read_bytes() == (tmp / "warm-0/s.jsonl").read_bytes()
            forked = (tmp / "server.log").read_text().count("forked stage sample")
        finally:
            server.stop()
    med = {k: round(statistics.median(v), 2) for k, v in times.items()}
    print(json.dumps({"job": "stage sample, gen_weak, 16 problems x 2", "reps": a.reps, "median_s": med,
                      "all_s": {k: [round(x, 2) for x in v] for k, v in times.items()},
                      "fresh_over_warm": round(med["fresh"] / med["warm"], 2), "same_bytes": same,
                      "forked": forked}))


if __name__ == "__main__":
    main()
