"""The hf sampler's decoding loop against the loop it replaced, same model, same requests, one run.

    python benchmarks/sampler_loop.py [--model DIR] [--n 512] [--batch 128] [--max-new-tokens 80]

The reference loop is the one the sampler used before: one `torch.multinomial` call per row and
step, and finished rows kept in the batch until the last row stops. The current loop draws each
row's noise for many steps in one call (the same tokens: see `_ExponentialNoise`) and drops rows
as they finish. Prints both timings, their ratio, and whether every sample is byte-identical.
Default model: the shipped tiny policy (workflow/tiny_models/policy)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def reference_sampler_class():
    from librarm.engines.base import SampleResult
    from librarm.engines.hf import HFSampler

    class ReferenceHFSampler(HFSampler):
        def _generate_batch(self, prompt_ids, seeds):
            import torch

            cfg, pad, n = self.cfg, self.tok.pad_token_id, len(prompt_ids)
            width = max(len(p) for p in prompt_ids)
            input_ids = torch.full((n, width), pad, dtype=torch.long)
            mask = torch.zeros((n, width), dtype=torch.long)
            for i, p in enumerate(prompt_ids):
                input_ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
                mask[i, width - len(p):] = 1
            gens = [torch.Generator().manual_seed(int(s) % (2**63)) for s in seeds]
            position = (mask.cumsum(-1) - 1).clamp(min=0)
            done, reason = [False] * n, ["length"] * n
            generated: list[list[int]] = [[] for _ in range(n)]
            with torch.inference_mode():
                res = self.model(input_ids=input_ids, attention_mask=mask, position_ids=position, use_cache=True)
                past, logits = res.past_key_values, res.logits[:, -1, :].float()
                next_pos = position[:, -1:] + 1
                for _ in range(cfg.max_new_tokens):
                    probs = torch.softmax(logits / cfg.temperature, dim=-1)
                    tokens = [0 if done[i] else int(torch.multinomial(probs[i], 1, generator=gens[i]))
                              for i in range(n)]
                    for i in range(n):
                        if done[i]:
                            continue
                        if tokens[i] in self.stop_ids:
                            done[i], reason[i] = True, "stop"
                        else:
                            generated[i].append(tokens[i])
                    if all(done):
                        break
                    step = torch.tensor([[t] if not d else [pad] for t, d in zip(tokens, done)], dtype=torch.long)
                    mask = torch.cat([mask, torch.ones((n, 1), dtype=torch.long)], dim=1)
                    res = self.model(input_ids=step, attention_mask=mask, position_ids=next_pos, cache=past,
                                     use_cache=True)
                    past, logits = res.past_key_values, res.logits[:, -1, :].float()
                    next_pos = next_pos + 1
            return [SampleResult(self.tok.decode(g, skip_special_tokens=True), reason[i], len(prompt_ids[i]), len(g))
                    for i, g in enumerate(generated)]

    return ReferenceHFSampler


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "workflow/tiny_models/policy"))
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--max-new-tokens", type=int, default=80)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    import torch

    from librarm.engines.base import SampleRequest, SamplingConfig
    from librarm.engines.hf import HFSampler
    from librarm.stages.sample import problem_messages

    torch.set_num_threads(a.threads)
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=a.max_new_tokens, batch_size=a.batch, top_p=1.0)
    reqs = [SampleRequest(problem_messages({"problem": f"Compute {10 + i % 80} + {1 + i % 9} - {1 + i % 7}."}, None),
                          seed=i) for i in range(a.n)]
    results, seconds = {}, {}
    for label, cls in (("reference", reference_sampler_class()), ("current", HFSampler)):
        sampler = cls(a.model, cfg)
        t0 = time.perf_counter()
        results[label] = sampler.generate(reqs)
        seconds[label] = time.perf_counter() - t0
        toks = sum(r.completion_tokens for r in results[label])
        print(f"{label:>9}: {a.n} samples, {toks} tokens in {seconds[label]:.2f} s")
    same = [(r.text, r.finish_reason) for r in results["reference"]] == [(r.text, r.finish_reason)
                                                                           for r in results["current"]]
    print(f"current / reference speed: {seconds['reference'] / seconds['current']:.2f}x; "
          f"samples byte-identical: {same}  (model {a.model}, batch {a.batch}, {a.threads} thread)")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
