"""A prepared accelerator check: bf16 SFT, GRPO and DPO steps (TRL, the pipeline's trainers) of a
random-init Llama-style model of about 0.5B parameters, and hf-backend decoding at batch 64.

Prints, in one run:
  * training tokens/s and MFU = 6 * N * tokens/s / peak (N = parameters, peak = the card's dense
    bf16 FLOP/s from PEAKS below, stated in the output);
  * decode tokens/s at batch 64 against the HBM roofline: each decode step reads every weight once
    (2 bytes a parameter in bf16) plus the KV cache so far, so the roofline is
    batch * bandwidth / bytes per step.
    Three decoders: the pipeline's hf sampler, a bare forward+argmax loop (the model's own rate),
    and transformers' generate with a static KV cache, which on a GPU compiles the forward with
    torch.compile into CUDA graphs (the first call, the compilation, is left out).

`--cpu --tiny` runs the same code path on a tiny model on the CPU in well under a minute (a test
runs it, so the script cannot rot); MFU and the roofline are "n/a" there.
Run on a GPU machine: `scripts/gpu_check.sh` (5 minutes at most on an H100)."""
from __future__ import annotations

import argparse
import json
import math
import time

# Dense bf16 peak FLOP/s and HBM bandwidth (bytes/s) by device name fragment (vendor spec sheets).
PEAKS = {
    "H200": (989e12, 4.8e12),
    "H100": (989e12, 3.35e12),      # SXM; the PCIe card is lower (756 TFLOP/s, 2.0 TB/s)
    "A100": (312e12, 2.039e12),
    "L40S": (362e12, 0.864e12),
}


def device_peaks(name: str) -> tuple[float | None, float | None]:
    for key, val in PEAKS.items():
        if key in name:
            return val
    return None, None


def build(tiny: bool, device: str, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    from librarm.stages.bootstrap_tiny import build_tokenizer

    tok = build_tokenizer()
    if tiny:
        cfg = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=2)
    else:           # about 0.47B parameters with the byte-level vocabulary
        cfg = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=28, num_attention_heads=16,
                   num_key_value_heads=16)
    config = LlamaConfig(vocab_size=len(tok), max_position_embeddings=2048, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, tie_word_embeddings=False, **cfg)
    import torch

    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype)
    return model, tok, sum(p.numel() for p in model.parameters())


def rows(n: int, length: int) -> list[dict]:
    digits = "0123456789+-="
    return [{"prompt": f"Compute {i % 9}+{i % 7}.", "completion": "".join(digits[(i * 7 + j) % 13] for j in range(length)),
             "chosen": "".join(digits[(i + j) % 13] for j in range(length)),
             "rejected": "".join(digits[(i * 3 + j) % 13] for j in range(length))} for i in range(n)]


def common_args(tiny: bool, cpu: bool, steps: int, batch: int) -> dict:
    return dict(output_dir="/tmp/gpu_check", max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-5,
                logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True, bf16=not cpu, use_cpu=cpu,
                seed=0, dataloader_num_workers=0)


def step_timer():
    """A Trainer callback that times each optimizer step (synchronizing the GPU), so the first
    steps, which pay for CUDA start-up and kernel selection, can be left out of the rate."""
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self._t = 0.0

        def _sync(self):
            if torch.cuda.is_available():
                torch.cuda.synchronize()

        def on_step_begin(self, args, state, control, **kw):
            self._sync()
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self._sync()
            self.times.append(time.perf_counter() - self._t)

    return StepTimer()


def timed_train(trainer, tokens_per_step: float, steps: int, warmup: int) -> dict:
    """Steady-state tokens/s over the steps after `warmup` (all steps when there are too few)."""
    timer = step_timer()
    trainer.add_callback(timer)
    trainer.train()
    kept = timer.times[warmup:] if len(timer.times) > warmup else timer.times
    t = sum(kept)
    return {"steps": steps, "timed_steps": len(kept), "seconds": round(sum(timer.times), 2),
            "seconds_per_step": round(t / len(kept), 4) if kept else None,
            "tokens_per_step": round(tokens_per_step, 1),
            "tokens_per_s": round(tokens_per_step * len(kept) / t, 1) if t else None}


def run_sft(model, tok, a) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    seq = 64 if a.tiny else 1024
    ds = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows(64, seq)])
    args = SFTConfig(**common_args(a.tiny, a.cpu, a.steps, a.batch), max_length=seq + 32, packing=False)
    tr = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    return timed_train(tr, a.batch * seq, a.steps, a.warmup)


def run_dpo(model, tok, a) -> dict:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    seq = 32 if a.tiny else 512
    ds = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows(64, seq)])
    args = DPOConfig(**common_args(a.tiny, a.cpu, a.steps, a.batch), max_length=seq + 32, beta=0.1,
                     precompute_ref_log_probs=False)
    ref, _, _ = build(a.tiny, "cpu" if a.cpu else "cuda", model.dtype)     # same seed: the same weights
    tr = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=tok)
    # chosen + rejected through the policy and the reference model
    return timed_train(tr, 2 * a.batch * seq, a.steps, a.warmup)


def run_grpo(model, tok, a) -> dict:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    gen = 16 if a.tiny else 128
    ds = Dataset.from_list([{"prompt": r["prompt"]} for r in rows(64, 4)])

    def length_reward(completions, **kw):
        return [-abs(len(c) - 20) / 20 for c in completions]

    args = GRPOConfig(**common_args(a.tiny, a.cpu, a.steps, a.batch), num_generations=4, max_completion_length=gen,
                      temperature=1.0, beta=0.0)
    tr = GRPOTrainer(model=model, reward_funcs=[length_reward], args=args, train_dataset=ds, processing_class=tok)
    r = timed_train(tr, a.batch * gen, a.steps, a.warmup)
    # the rate counts the tokens actually generated (a completion can stop early at EOS)
    lengths = [h["completions/mean_length"] for h in tr.state.log_history if "completions/mean_length" in h]
    if lengths and r["seconds_per_step"]:
        r["tokens_per_step"] = round(a.batch * sum(lengths) / len(lengths), 1)
        r["tokens_per_s"] = round(r["tokens_per_step"] / r["seconds_per_step"], 1)
    return r


def run_decode(model, tok, n_params: int, a, bandwidth: float | None) -> dict:
    from librarm.engines.base import SampleRequest, SamplingConfig
    from librarm.engines.hf import HFSampler

    new = 16 if a.tiny else 256
    model.eval()
    sampler = HFSampler("live", SamplingConfig(temperature=1.0, max_new_tokens=new, batch_size=64, top_p=1.0), model=model,
                        tokenizer=tok)
    reqs = [SampleRequest([{"role": "user", "content": f"Compute {i % 9}+{i % 7}."}], i) for i in range(64)]
    sampler.generate(reqs[:2])                                  # warm-up
    t = time.perf_counter()
    res = sampler.generate(reqs)
    dt = time.perf_counter() - t
    tokens = sum(r.completion_tokens for r in res)
    bare = bare_decode_tokens_per_s(model, sampler.encode_prompts(reqs), new, tok.pad_token_id)
    static, compiled = static_cache_tokens_per_s(model, sampler.encode_prompts(reqs), new, tok.pad_token_id)
    cfg = model.config
    # bytes read per decode step: weights (2 bytes each in bf16) + the KV cache at mid-generation
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 2 \
        * 64 * (20 + new / 2)
    per_step = 2 * n_params + kv
    roofline = 64 * bandwidth / per_step if bandwidth else None
    return {"batch": 64, "new_tokens": new, "tokens": tokens, "seconds": round(dt, 2),
            "tokens_per_s": round(tokens / dt, 1), "roofline_tokens_per_s": round(roofline, 1) if roofline else None,
            "share_of_roofline": round(tokens / dt / roofline, 3) if roofline else None,
            "bytes_per_step": int(per_step), "bare_loop_tokens_per_s": round(bare, 1),
            "static_cache_tokens_per_s": round(static, 1), "static_cache_compiled": compiled,
            "static_cache_share_of_roofline": round(static / roofline, 3) if roofline else None}


def _left_padded(prompt_ids, pad: int, device):
    import torch

    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompt_ids):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def static_cache_tokens_per_s(model, prompt_ids, new: int, pad: int) -> tuple[float, bool]:
    """transformers' generate with a static KV cache (fixed shapes), greedy, exactly `new` tokens
    a row. On a GPU generate compiles the forward with torch.compile (mode reduce-overhead: CUDA
    graphs) for a static cache by itself; the first call pays the compilation and is left out.
    On the CPU the static cache runs uncompiled. Returns (tokens/s, whether it was compiled)."""
    import torch

    ids, mask = _left_padded(prompt_ids, pad, model.device)
    kw = dict(attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
              cache_implementation="static", pad_token_id=pad)
    with torch.inference_mode():
        model.generate(ids, **kw)                       # compilation (GPU) and warm-up
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        model.generate(ids, **kw)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
    return len(prompt_ids) * new / (time.perf_counter() - t), model.device.type == "cuda"


def bare_decode_tokens_per_s(model, prompt_ids, new: int, pad: int) -> float:
    """The model's own decode rate at the same batch: forward with the KV cache and a greedy pick
    on the device, no per-row sampling or stop handling. The gap to the sampler's rate is the
    sampler's per-step host work."""
    import torch

    from librarm.engines.hf import cache_argument

    dev = model.device
    ids, mask = _left_padded(prompt_ids, pad, dev)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        past, nxt, pos = res.past_key_values, res.logits[:, -1:].argmax(-1), pos[:, -1:] + 1
        for _ in range(new - 1):
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
            res = model(input_ids=nxt, attention_mask=mask, position_ids=pos, **{cache_argument(model): past},
                        use_cache=True)
            past, nxt, pos = res.past_key_values, res.logits[:, -1:].argmax(-1), pos + 1
        if dev.type == "cuda":
            torch.cuda.synchronize()
    return len(prompt_ids) * new / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (fp32)")
    ap.add_argument("--tiny", action="store_true", help="a tiny model (the test's setting)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None, help="steps left out of the rate (start-up)")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    import torch

    if not a.cpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --cpu (and --tiny) on a machine without a GPU")
    a.steps = a.steps or (2 if a.tiny else 10)
    a.batch = a.batch or (4 if a.tiny else 8)
    a.warmup = a.warmup if a.warmup is not None else (0 if a.tiny else 2)
    device = "cpu" if a.cpu else "cuda"
    dtype = torch.float32 if a.cpu else torch.bfloat16
    name = "cpu" if a.cpu else torch.cuda.get_device_name(0)
    peak, bandwidth = (None, None) if a.cpu else device_peaks(name)
    out = {"device": name, "peak_bf16_flops": peak, "hbm_bytes_per_s": bandwidth, "tiny": a.tiny}
    failed = []
    # one stage's failure is reported and the others still run: a GPU lease is too short to rerun all
    for stage, fn in (("sft", run_sft), ("grpo", run_grpo), ("dpo", run_dpo), ("decode", None)):
        try:
            if not a.cpu:
                torch.cuda.reset_peak_memory_stats()
            model, tok, n = build(a.tiny, device, dtype)
            out["params"] = n
            if fn is None:
                r = run_decode(model, tok, n, a, bandwidth)
            else:
                r = fn(model, tok, a)
                r["mfu"] = round(6 * n * r["tokens_per_s"] / peak, 4) if peak and r["tokens_per_s"] else None
            if not a.cpu:
                r["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
            del model
        except Exception as exc:                 # noqa: BLE001 - reported below, exit status 1
            import traceback

            traceback.print_exc()
            r = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            failed.append(stage)
        out[stage] = r
        if not a.cpu:
            torch.cuda.empty_cache()
    n = out.get("params", 0)
    print(f"device: {name}; parameters N = {n / 1e6:.1f}M; peak bf16 = "
          + (f"{peak / 1e12:.0f} TFLOP/s, HBM {bandwidth / 1e12:.2f} TB/s" if peak else "n/a (not a listed card)"))
    print("MFU = 6 * N * tokens/s / peak   (GRPO: generated tokens only; DPO: chosen + rejected tokens)")
    print(f"steady state: the first {a.warmup} steps of each stage are left out of tokens/s")
    print("| stage | steps | s/step | tokens/step | tokens/s | MFU | peak GiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for stage in ("sft", "grpo", "dpo"):
        r = out[stage]
        if "error" in r:
            print(f"| {stage} | failed: {r['error']} | | | | | |")
            continue
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        print(f"| {stage} | {r['steps']} | {r['seconds_per_step']} | {r['tokens_per_step']} | {r['tokens_per_s']} | "
              f"{mfu} | {r.get('peak_memory_gib', 'n/a')} |")
    d = out["decode"]
    if "error" in d:
        print(f"decode failed: {d['error']}")
    else:
        roof = "n/a" if d["roofline_tokens_per_s"] is None else \
            f"{d['roofline_tokens_per_s']} ({100 * d['share_of_roofline']:.1f}% reached)"
        print(f"decode (hf backend, batch 64, {d['new_tokens']} new tokens): {d['tokens_per_s']} tokens/s; "
              f"HBM roofline = 64 * bandwidth / {d['bytes_per_step']} bytes per step = {roof}; "
              f"the bare forward+argmax loop at the same batch: {d['bare_loop_tokens_per_s']} tokens/s")
        share = "" if d["static_cache_share_of_roofline"] is None else \
            f" ({100 * d['static_cache_share_of_roofline']:.1f}% of the roofline)"
        print(f"decode with transformers' static KV cache{' compiled (CUDA graphs)' if d['static_cache_compiled'] else ''}, "
              f"greedy, batch 64: {d['static_cache_tokens_per_s']} tokens/s{share}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 1 if failed or not all(math.isfinite(out[s]["seconds"]) for s in ("sft", "grpo", "dpo")) else 0


if __name__ == "__main__":
    raise SystemExit(main())
