"""GRPO rollouts: transformers' `model.generate` (what TRL calls by default) against the pipeline's
sampler (what `train.sampler_rollout` hands TRL), same judge, same prompts, one run.

    python benchmarks/grpo_rollout.py [--model DIR] [--prompts 32] [--max-new-tokens 160] [--steps 3]

Each "step" is one GRPO generation batch: `--prompts` prompt rows (as TRL repeats them per
generation) sampled once. Default model: the shipped tiny judge (workflow/tiny_models/judge_base).
Prints seconds per step for each and their ratio."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "workflow/tiny_models/judge_base"))
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    import torch
    from transformers import GenerationConfig

    from librarm.engines.base import SamplingConfig
    from librarm.engines.hf import HFSampler, load_causal_lm, render_chat
    from librarm.judging.judge import judge_messages

    torch.set_num_threads(a.threads)
    tok, model = load_causal_lm(a.model)
    prompts = [render_chat(tok, judge_messages("Judge the answer.\nQ: {question}\nA: {response}",
                                               f"Compute {10 + i % 80} + {1 + i % 9} - {1 + i % 7}.",
                                               f"<think>{10 + i % 80}+{1 + i % 9}={11 + i % 80 + i % 9}</think>"
                                               f"\\boxed{{{i % 90}}}", None))
               for i in range(a.prompts // 8) for _ in range(8)]
    ids = tok(text=prompts)["input_ids"]
    gen_cfg = GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=a.max_new_tokens,
                               pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    tok.padding_side = "left"
    seconds = {}
    t0 = time.perf_counter()
    for _ in range(a.steps):
        batch = tok(text=prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            model.generate(**batch, generation_config=gen_cfg)
    seconds["model.generate"] = (time.perf_counter() - t0) / a.steps
    sampler = HFSampler(a.model, SamplingConfig(temperature=1.0, max_new_tokens=a.max_new_tokens,
                                                batch_size=len(prompts), top_p=1.0), model=model, tokenizer=tok)
    t0 = time.perf_counter()
    for step in range(a.steps):
        sampler.generate_ids(ids, [step * 1000 + i for i in range(len(ids))])
    seconds["sampler"] = (time.perf_counter() - t0) / a.steps
    for k, v in seconds.items():
        print(f"{k:>15}: {v:.2f} s per step ({len(prompts)} completions, up to {a.max_new_tokens} tokens)")
    print(f"sampler / model.generate speed: {seconds['model.generate'] / seconds['sampler']:.2f}x  "
          f"(model {a.model}, {a.threads} thread)")


if __name__ == "__main__":
    main()
