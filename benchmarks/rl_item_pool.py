"""Does GRPO get room to learn from a larger item pool? Validation split only (the bench is never read).

With `rl.items: train`, GRPO from judge_sft trains on judge_data's 179 items, 118 of which the SFT
judge always gets right. This script builds every balanced judging item of the verified judge-pool
responses (the same rule as judge_data, per_label unlimited; what judge_data now writes as
rl_pool.jsonl), keeps the problems of judge_data's validation split out of training, and scores on
all items of those validation problems:

  * judge_sft and the run's judge_rl (trained on the items its run's `rl.items` names: the 179 items
    in the run that chose the pool, the pool since);
  * GRPO from judge_sft with the run's settings on the larger pool, at --steps (default 40 and 120).

All judges are scored with the same sampling seeds per item (paired), k sampled verdicts per item.
Prints one JSON line.
  python benchmarks/rl_item_pool.py RUN_DIR [--steps 40 120] [--k 8]      (about 4 min on 2 idle cores)"""
from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="a checkout that ran the default DAG (its results/)")
    ap.add_argument("--steps", type=int, nargs="+", default=[40, 120])
    ap.add_argument("--k", type=int, default=8, help="sampled verdicts per validation item (judge.temperature)")
    a = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from librarm.run.io import read_json, read_jsonl, write_jsonl
    from librarm.run.settings import JudgeDataSettings, RlSettings, call
    from librarm.stages.train import build_judge_items, run_grpo, val_accuracy

    os.chdir(a.run_dir)
    params = read_json("results/.config/effective.json")
    jd = JudgeDataSettings.from_params(params)
    val = read_jsonl("results/judge_data/val.jsonl").records
    val_problems = {r["problem_id"] for r in val}
    records = []
    for path in sorted(Path("results/verify").glob(f"*/{jd.pool}.jsonl")):
        records += read_jsonl(path).records
    train_items, val_items, _ = build_judge_items(records, int(params["seed"]), jd.val_fraction,
                                                  list(jd.exclude_generators), None, jd.unit)
    pool = train_items + val_items
    big_val = [r for r in pool if r["problem_id"] in val_problems]
    big_train = [r for r in pool if r["problem_id"] not in val_problems]

    def score(path: str) -> float:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        # one sampled verdict per item moved a judge's accuracy by 3-5 points between seeds: average k
        return round(sum(call(val_accuracy, params, model, tok, big_val, f"rl-item-pool-val-{i}") for i in range(a.k)) / a.k, 4)

    out: dict = {"train_items": {"judge_data": len(read_jsonl("results/judge_data/train.jsonl").records),
                                 "pool": len(big_train), "pool_labels": dict(Counter(r["label"] for r in big_train))},
                 "val_items": len(big_val),
                 "val_accuracy": {"judge_sft": score("results/train/judge_sft"),
                                  "judge_rl": score("results/train/judge_rl")}}
    rl = RlSettings.from_params(params).for_model("judge_rl")
    with tempfile.TemporaryDirectory() as tmp:
        train_path = f"{tmp}/pool.jsonl"
        write_jsonl(train_path, big_train)
        for steps in a.steps:
            p = copy.deepcopy(params)
            p["rl"]["steps"] = steps
            started = time.time()
            res = call(run_grpo, p, train_path, "results/train/judge_sft", f"{tmp}/rl{steps}", name="judge_rl",
                       rewards=rl.rewards_of("judge_rl"), val_items=val, resume_root=f"{tmp}/resume{steps}")
            out["val_accuracy"][f"pool_{steps}_steps"] = score(f"{tmp}/rl{steps}")
            out[f"pool_{steps}_steps"] = {"passrate_filter": res["passrate_filter"],
                                          "seconds": round(time.time() - started)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
