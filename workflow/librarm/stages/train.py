"""Learning to think: judge-training data (V2V on the judge pool), rejection sampling from a
teacher judge, SFT (TRL SFTTrainer), GRPO (TRL GRPOTrainer) and a scalar reward model
(TRL RewardTrainer). Each stage is one function; heavy imports stay inside them.
"""
from __future__ import annotations

import shutil
import time
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from librarm import engines
from librarm.run import paths as P
from librarm.run.io import (
    StageIO,
    read_json,
    read_jsonl,
    set_tree_mode,
    stable_hash,
    stable_seed,
    write_json,
    write_jsonl,
)
from librarm.run.launch import (
    barrier,
    full_state_dict,
    gathered_for_decoding,
    is_main,
    per_process,
    rank,
    sharded,
    sharding_args,
)
from librarm.run.settings import (
    GeneratorSpec,
    JudgeDataSettings,
    Judges,
    JudgeSettings,
    LaunchSettings,
    Models,
    ProblemsSettings,
    RlSettings,
    RsSettings,
    SamplingSettings,
    ScalarRmSettings,
    Seed,
    SftSettings,
)


# ----------------------------------------------------------------------------- judge_data
def judging_items(records: Sequence[Mapping[str, Any]], seed: int, exclude_generators: Sequence[str],
                  per_label: int | None, unit: str = "subset_generator") -> tuple[list[dict], dict]:
    """Verifiable judging items from verified judge-pool samples: drop malformed, dedupe, balance
    labels per generator (as the bench does; `per_label` items of each label a cell, None: all a
    balanced cell has) and hold out `exclude_generators` entirely. Each item names its problem."""
    from librarm.stages.bench import assemble

    kept = [r for r in records if r["generator"] not in set(exclude_generators)]
    rows, stats = assemble(kept, seed=seed, unit=unit, per_label=per_label,
                           on_shortfall="take_available", subset_order=sorted({r["subset"] for r in kept}))
    pid_of = {(r["question"], r["response_with_cot"], r["generator"]): r["problem_id"] for r in kept}
    items = []
    for r in rows:
        pid = pid_of[(r["question"], r["response_with_cot"], r["model"])]
        items.append({**r, "problem_id": pid, "item_id": f"{pid}|{r['model']}|{stable_hash(r['response_with_cot'], length=8)}"})
    return items, stats


def _indexed(items: list[dict]) -> list[dict]:
    for i, it in enumerate(items):
        it["index"] = i
    return items


def build_judge_items(records: Sequence[Mapping[str, Any]], seed: int, val_fraction: float,
                      exclude_generators: Sequence[str], per_label: int | None,
                      unit: str = "subset_generator") -> tuple[list[dict], list[dict], dict]:
    """`judging_items`, split train/validation by problem (all items of a problem on one side)."""
    items, stats = judging_items(records, seed, exclude_generators, per_label, unit)
    problems = sorted({it["problem_id"] for it in items}, key=lambda pid: stable_hash(seed, "judge-split", pid))
    n_val = max(1, int(round(val_fraction * len(problems)))) if problems else 0
    val_problems = set(problems[:n_val])
    train = _indexed([it for it in items if it["problem_id"] not in val_problems])
    val = _indexed([it for it in items if it["problem_id"] in val_problems])
    stats = {"train": len(train), "val": len(val), "train_problems": len(problems) - n_val,
             "val_problems": n_val, "excluded_generators": list(exclude_generators),
             "label_balance": {"train": dict(Counter(i["label"] for i in train)),
                               "val": dict(Counter(i["label"] for i in val))},
             "assembly": {k: stats[k] for k in ("dropped_malformed", "dropped_duplicates", "cells")}}
    return train, val, stats


def build_rl_pool(records: Sequence[Mapping[str, Any]], seed: int, exclude_generators: Sequence[str],
                  val: Sequence[Mapping[str, Any]], unit: str = "subset_generator") -> tuple[list[dict], dict]:
    """GRPO's item pool (rl.items: pool): every balanced judging item (no per_label cap) of the
    problems outside the validation split. SFT trains on the capped items, whose rejection-sampled
    trajectories the judge already fits; GRPO learns only from items inside its pass-rate band, so it
    gets the rest of the verified items too. The validation problems stay out."""
    items, _ = judging_items(records, seed, exclude_generators, None, unit)
    val_problems = {it["problem_id"] for it in val}
    pool = _indexed([it for it in items if it["problem_id"] not in val_problems])
    return pool, {"items": len(pool), "problems": len({it["problem_id"] for it in pool}),
                  "label_balance": dict(Counter(i["label"] for i in pool))}


def run_judge_data(verify_paths: Sequence[str | Path], problem_paths: Sequence[str | Path],
                   train_path: str | Path, val_path: str | Path, rl_pool_path: str | Path, stats_path: str | Path, *,
                   judge_data: JudgeDataSettings, problems: ProblemsSettings, seed: Seed) -> dict:
    """Stage `judge_data`: the judge-training items (train, val), GRPO's item pool and stats, with
    the disjointness check."""
    from librarm.stages.problems import load_problem_sets, overlap_report

    cfg = judge_data
    records = []
    for p in verify_paths:
        records.extend(read_jsonl(p).records)
    # The judge pool must be disjoint from the bench subsets and the DPO pool.
    sets: dict[str, list] = defaultdict(list)
    for rec in load_problem_sets(problem_paths).values():
        sets[rec["set"]].append(rec)
    pools = problems.names("judge_pool")
    overlaps = {k: v for k, v in overlap_report(sets).items() if set(k.split("|")) & set(pools) and v["exact"]}
    if overlaps:
        raise ValueError(f"judge pool overlaps other sets: {overlaps}")
    train, val, stats = build_judge_items(records, seed, cfg.val_fraction, list(cfg.exclude_generators),
                                          cfg.per_label, cfg.unit)
    if not train or not val:
        raise ValueError(f"judge_data: empty split (train={len(train)}, val={len(val)})")
    rl_pool, stats["rl_pool"] = build_rl_pool(records, seed, list(cfg.exclude_generators), val, cfg.unit)
    write_jsonl(train_path, train)
    write_jsonl(val_path, val)
    write_jsonl(rl_pool_path, rl_pool)
    stats["disjoint_checked"] = sorted(overlap_report(sets))
    write_json(stats_path, stats)
    return stats


def step_judge_data(io: StageIO, *, judge_data: JudgeDataSettings, problems: ProblemsSettings,
                    seed: Seed) -> tuple[dict, list[str]]:
    stats = run_judge_data(io.input_list("verified"), io.input_list("problems"), io.output("train"),
                           io.output("val"), io.output("rl_pool"), io.output("stats"),
                           judge_data=judge_data, problems=problems, seed=seed)
    return stats, [io.output("stats")]


# ----------------------------------------------------------------------------- rejection sampling
def run_rs(train_path: str | Path, solutions_paths: Sequence[str | Path],
           trajectories_path: str | Path, sft_path: str | Path, stats_path: str | Path,
           threads: int | None = None, sampler=None, *, rs: RsSettings, judge: JudgeSettings, sft: SftSettings,
           sampling: SamplingSettings, judges: Judges, models: Models, seed: Seed) -> dict:
    """Stage `rs`: the teacher judges each training item k times; trajectories whose verdict
    matches the label are accepted (at most m per item); labels are rebalanced after filtering;
    verified-correct solutions are mixed in at `mix_ratio`. Writes every trajectory (with
    `accepted` and `kept` flags), the SFT set (prompt/completion) and stats."""
    from librarm.engines.base import SamplingConfig
    from librarm.engines.hf import render_chat
    from librarm.judging.judge import build_judge_requests, judge_verdict, with_reasoning
    from librarm.stages.sample import problem_messages

    cfg = rs
    jcfg = judge
    items = read_jsonl(train_path).records
    teacher = judges[cfg.teacher]
    scfg = SamplingConfig(temperature=cfg.temperature, top_p=1.0,
                          max_new_tokens=jcfg.max_new_tokens, batch_size=jcfg.batch_size)
    sampler = sampler or engines.make_sampler(teacher, models, scfg, seed, threads)
    # SFT prompts are rendered with the STUDENT's chat template (the teacher may be an API model
    # or have another template).
    from transformers import AutoTokenizer

    from librarm.run.models import model_ref

    student = model_ref(models, sft.init)
    tok = AutoTokenizer.from_pretrained(student["path"], revision=student["revision"])
    # the teacher's prompts are held to judge.max_prompt_tokens in the teacher's own tokens
    batch = build_judge_requests(items, judge, seed, ("rs",), key="item_id", repeats=cfg.k,
                                 tok=getattr(sampler, "tok", None))
    results = sampler.generate(batch.requests)
    trajs = []
    per_item: dict[str, int] = Counter()
    for (i, k), res in zip(batch.owners, results):
        it, msgs = items[i], batch.messages[i]
        v = judge_verdict(res, teacher.prompt_opens_think)
        accepted = v.value is not None and v.value == it["label"]
        keep = accepted and per_item[it["item_id"]] < cfg.max_per_item
        per_item[it["item_id"]] += keep
        trajs.append({"item_id": it["item_id"], "k": k, "label": it["label"], "verdict": v.value, "status": v.status,
                      "generator": it["model"], "subset": it["subset"], "accepted": accepted, "kept": keep,
                      "prompt": render_chat(tok, msgs), "completion": with_reasoning(res),
                      "completion_tokens": res.completion_tokens})
    # Rebalance: as many kept trajectories of label 1 as of label 0 (hash-ranked, deterministic).
    by_label = {0: [t for t in trajs if t["kept"] and t["label"] == 0], 1: [t for t in trajs if t["kept"] and t["label"] == 1]}
    n_bal = min(len(by_label[0]), len(by_label[1]))
    for lab in (0, 1):
        ranked = sorted(by_label[lab], key=lambda t: stable_hash(seed, "rs-balance", t["item_id"], t["k"]))
        for t in ranked[n_bal:]:
            t["kept"] = False
    judging = [t for t in trajs if t["kept"]]
    if not judging:
        raise ValueError(f"rs: the teacher {cfg.teacher!r} had no trajectory whose verdict matched the label "
                         f"({len(trajs)} tried); raise rs.k or check the teacher's prompt and max_new_tokens")
    # Non-judging reasoning data: verified-correct solutions from the judge pool.
    sols = []
    for p in solutions_paths:
        sols.extend(r for r in read_jsonl(p).records if r["reason"] == "correct")
    sols.sort(key=lambda r: stable_hash(seed, "rs-mix", r["sample_id"]))
    n_mix = min(len(sols), int(round(cfg.mix_ratio * len(judging))))
    mixture = []
    for r in sols[:n_mix]:
        msgs = problem_messages({"problem": r["question"]}, sampling.system_prompt, sampling.problem_template)
        mixture.append({"prompt": render_chat(tok, msgs),
                        "completion": r["response_with_cot"], "kind": "reasoning", "item_id": r["sample_id"]})
    sft_rows = [{"prompt": t["prompt"], "completion": t["completion"], "kind": "judging", "item_id": t["item_id"],
                 "label": t["label"]} for t in judging] + mixture
    write_jsonl(trajectories_path, trajs)
    write_jsonl(sft_path, sft_rows)
    stats = rs_stats(trajs, items, list(cfg.acceptance_band))
    stats.update({"judging_examples": len(judging), "reasoning_examples": len(mixture), "teacher": cfg.teacher,
                  "prompts_over_budget": {st: batch.prompt_status.count(st) for st in ("truncated", "skipped")}})
    write_json(stats_path, stats)
    return stats


def step_rs(io: StageIO, *, rs: RsSettings, judge: JudgeSettings, sft: SftSettings, sampling: SamplingSettings,
            judges: Judges, models: Models, seed: Seed) -> tuple[dict, list[str]]:
    stats = run_rs(io.input("train"), io.input_list("solutions"), io.output("trajectories"),
                   io.output("sft"), io.output("stats"), io.threads, rs=rs, judge=judge, sft=sft, sampling=sampling,
                   judges=judges, models=models, seed=seed)
    return stats, [io.output("stats")]


def rs_stats(trajs: Sequence[Mapping[str, Any]], items: Sequence[Mapping[str, Any]], band: Sequence[float]) -> dict:
    def rate(group):
        return round(sum(t["accepted"] for t in group) / len(group), 4) if group else None

    out: dict[str, Any] = {"acceptance_rate": rate(trajs)}
    for key in ("label", "generator", "subset"):
        groups = defaultdict(list)
        for t in trajs:
            groups[str(t[key])].append(t)
        out[f"acceptance_by_{key}"] = {k: rate(v) for k, v in sorted(groups.items())}
    accepted_items = {t["item_id"] for t in trajs if t["accepted"]}
    out["items_none_accepted"] = sum(1 for it in items if it["item_id"] not in accepted_items)
    out["warnings"] = [f"acceptance {k}={v} outside band {list(band)}"
                       for k, v in [("all", out["acceptance_rate"])] + [(f"label {a}", b) for a, b in out["acceptance_by_label"].items()]
                       if v is not None and not band[0] <= v <= band[1]]
    return out


# ----------------------------------------------------------------------------- SFT
def resume_dir_for(resume_root: str | Path, name: str, *key_parts: Any) -> Path:
    """Checkpoints are resumed only by a job with the same inputs: the folder is keyed by the
    initial model, the training data and the settings (a stale checkpoint must never be reused)."""
    from librarm.run.io import file_sha256, tree_sha256

    parts = []
    for k in key_parts:
        if isinstance(k, (str, Path)) and Path(k).is_file():
            parts.append(file_sha256(k))
        elif isinstance(k, (str, Path)) and Path(k).is_dir():
            parts.append(tree_sha256(k))
        else:
            parts.append(k)
    return Path(resume_root) / name / stable_hash(*parts)


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Same params, same bytes: a fixed thread count, torch's deterministic kernels on GPUs (warn-only,
    so an op without one still runs and says so), and every RNG seeded BEFORE a model is built: a
    fresh head (the scalar RM's score layer) is drawn from torch's RNG when the model is loaded,
    which the Trainer's own set_seed comes too late for."""
    import os

    import torch
    from transformers import set_seed

    if threads:
        torch.set_num_threads(threads)
    if torch.cuda.is_available():
        # GPU kernels (atomics in scatter/index ops, cuBLAS workspaces) are where nondeterminism
        # lives; on the CPU the seeding below is what made runs byte-identical
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    set_seed(seed)


def device_args() -> dict:
    """Trainer arguments TRL sets for GPUs by default, kept there and turned off on the CPU:
    bf16 autocast (a CPU without bf16 units emulates it: every matmul ran several times slower,
    and the weights came out of mixed precision rather than fp32) and gradient checkpointing
    (recomputing the forward pass cost a quarter of each step, for memory the CPU does not lack;
    it changes no gradient: tests/test_determinism.py)."""
    import torch

    cuda = torch.cuda.is_available()
    return {"bf16": cuda and torch.cuda.is_bf16_supported(), "gradient_checkpointing": cuda}


def latest_checkpoint(resume_dir: Path) -> str | None:
    ckpts = sorted(resume_dir.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    return str(ckpts[-1]) if ckpts else None


def _finish(trainer, tok, out_dir: Path, started: float, tokens: int) -> dict:
    import shutil

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if is_main():
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    trainer.save_model(str(tmp))      # every process: sharded (FSDP2) weights are gathered; rank 0 writes
    if is_main():
        tok.save_pretrained(str(tmp))
        set_tree_mode(tmp)            # safetensors writes 0600; every output gets the umask's mode
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
    barrier()
    hist = [h for h in trainer.state.log_history if "loss" in h or "reward" in h or "val_accuracy" in h]
    elapsed = time.time() - started
    return {"global_step": trainer.state.global_step, "log_history": hist, "seconds": round(elapsed, 1),
            "tokens_per_s": round(tokens / elapsed, 1) if elapsed > 0 else None}


def verdict_only(completion: str) -> str:
    """The `nothink` target: the verdict alone, no thinking."""
    from librarm.judging.judge import parse_verdict

    v = parse_verdict(completion)
    return "\\boxed{correct}" if v.value == 1 else "\\boxed{incorrect}"


def run_sft(data_path: str | Path, init_model: str, out_dir: str | Path, sft: SftSettings, *,
            name: str, verdict_only_targets: bool = False, resume_root: str | Path = P.RESUME_TRAIN,
            threads: int | None = None, callbacks: Sequence = (), logging_steps: int = 5,
            launch: LaunchSettings) -> dict:
    """TRL SFTTrainer on prompt/completion rows: the prompt is the rendered chat prompt, the
    completion the raw trajectory (TRL appends EOS), so no chat template can strip the thinking.
    Loss on completion tokens only. Resumes from the last checkpoint under resume_root/name."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    seed_everything(sft.seed, threads)
    rows = read_jsonl(data_path).records
    if verdict_only_targets:
        rows = [dict(r, completion=verdict_only(r["completion"])) if r["kind"] == "judging" else r for r in rows]
    ds = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    tok = AutoTokenizer.from_pretrained(init_model)
    model = AutoModelForCausalLM.from_pretrained(init_model, dtype=torch.float32)
    resume_dir = resume_dir_for(resume_root, name, init_model, data_path, asdict(sft), verdict_only_targets)
    args = SFTConfig(
        **device_args(), **sharding_args(launch, model),
        output_dir=str(resume_dir), max_steps=sft.steps, per_device_train_batch_size=per_process(sft.batch_size, "sft.batch_size"),
        learning_rate=sft.learning_rate, lr_scheduler_type="cosine", warmup_steps=max(1, sft.steps // 20),
        logging_steps=logging_steps, save_steps=sft.save_steps, save_total_limit=1, seed=sft.seed,
        max_length=sft.max_length, completion_only_loss=True, packing=False, use_cpu=not torch.cuda.is_available(),
        report_to=[], disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = sharded(SFTTrainer)(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=list(callbacks))
    started = time.time()
    trainer.train(resume_from_checkpoint=latest_checkpoint(resume_dir))
    tokens = sum(len(tok(r["completion"], add_special_tokens=False)["input_ids"]) for r in rows)
    tokens = int(tokens * trainer.state.global_step * sft.batch_size / max(1, len(rows)))
    return _finish(trainer, tok, Path(out_dir), started, tokens)


# ----------------------------------------------------------------------------- GRPO
def pass_rates(items: Sequence[Mapping[str, Any]], sampler, k: int, name: str, *, judge: JudgeSettings,
               seed: Seed) -> list[float]:
    """Fraction of k sampled verdicts that match each item's label (for filtering); an item whose
    prompt is over the budget has rate 0 (never trained on)."""
    from librarm.judging.judge import build_judge_requests, judge_verdict

    batch = build_judge_requests(items, judge, seed, ("passrate", name), key="item_id", repeats=k,
                                 tok=getattr(sampler, "tok", None))
    hits = [0] * len(items)
    for (i, _), r in zip(batch.owners, sampler.generate(batch.requests)):
        hits[i] += judge_verdict(r).value == items[i]["label"]
    return [h / k for h in hits]


def filter_by_pass_rate(items: Sequence[Mapping[str, Any]], sampler, rl: RlSettings, name: str, *,
                        judge: JudgeSettings, seed: Seed) -> tuple[list[Mapping[str, Any]], dict]:
    """The items whose pass rate is inside rl.passrate_band, in their file order. GRPO draws
    steps x batch_size / num_generations prompts, so items are rated in chunks of that size, in a
    seeded order, until that many are in the band (a pool several times larger than training uses
    is not rated whole). An item's verdicts are seeded by its id: the chunking changes no rate."""
    need = rl.steps * rl.batch_size // rl.num_generations
    order = sorted(range(len(items)), key=lambda i: stable_hash(seed, "passrate-order", name, items[i]["item_id"]))
    lo, hi = rl.passrate_band
    rated: dict[int, float] = {}
    in_band = 0
    for start in range(0, len(order), need):
        chunk = order[start:start + need]
        for i, r in zip(chunk, pass_rates([items[i] for i in chunk], sampler, rl.passrate_k, name,
                                          judge=judge, seed=seed)):
            rated[i] = r
            in_band += lo <= r <= hi
        if in_band >= need:
            break
    rates = list(rated.values())
    kept = [items[i] for i in sorted(rated) if lo <= rated[i] <= hi]
    return kept, {"items": len(items), "rated": len(rated), "kept": len(kept), "needed": need,
                  "always_right": sum(r == 1 for r in rates), "always_wrong": sum(r == 0 for r in rates),
                  "mean_pass_rate": round(sum(rates) / max(1, len(rates)), 4)}


def sampler_rollout(sampler, seed: int):
    """GRPO completions from the pipeline's own sampler instead of `model.generate`: the same
    decoding loop as every other stage, on the live model (always the current weights), and each
    completion seeded by (step, position in the step's batch), so a resumed run draws what an
    uninterrupted one draws."""
    def decode(trainer, prompt_ids, seeds):
        model = trainer.accelerator.unwrap_model(trainer.model)
        was_training = model.training
        model.eval()
        try:
            sampler.model = model
            with gathered_for_decoding(model):       # each process decodes its own prompts
                return sampler.generate_ids(prompt_ids, seeds)
        finally:
            model.train(was_training)

    return _rollout_func(decode, seed)


def synced_rollout(make_engine, weights_dir: str | Path, every: int, seed: int):
    """GRPO completions from an engine that holds its own copy of the weights (vLLM): before the
    first rollout and then every `every` optimizer steps, the trained weights are saved to
    weights_dir/step-<step> (gathered when sharded) and the engine is rebuilt from them
    (make_engine(folder)); vLLM on the CPU cannot load weights into a running engine. Seeds as
    sampler_rollout's. The latest folder is kept (the one the engine holds)."""
    import gc

    held: dict[str, Any] = {"engine": None, "step": None, "folder": None}

    def decode(trainer, prompt_ids, seeds):
        step = trainer.state.global_step
        if held["engine"] is None or step - held["step"] >= every:
            model = trainer.accelerator.unwrap_model(trainer.model)
            weights = full_state_dict(model)
            folder = Path(weights_dir) / f"step-{step}"
            if is_main():
                shutil.rmtree(folder, ignore_errors=True)
                model.save_pretrained(str(folder), state_dict=weights)
                trainer.processing_class.save_pretrained(str(folder))
            barrier()
            held["engine"] = None
            gc.collect()
            held["engine"] = make_engine(str(folder))
            if is_main() and held["folder"] is not None:
                shutil.rmtree(held["folder"], ignore_errors=True)
            held["step"], held["folder"] = step, folder
        return held["engine"].generate_ids(prompt_ids, seeds)

    return _rollout_func(decode, seed)


def _rollout_func(decode, seed: int):
    """TRL's rollout_func around decode(trainer, prompt_ids, seeds) -> SampleResults."""
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")    # rollout_func is experimental in TRL

    def rollout(prompts, trainer) -> dict:
        # Tokenized exactly as TRL tokenizes plain-text prompts for its own generation.
        prompt_ids = trainer.processing_class(text=list(prompts))["input_ids"]
        step = trainer.state.global_step
        # seeded by the position in the step's global batch: process r holds its r-th share
        first = rank() * len(prompt_ids)
        res = decode(trainer, prompt_ids, [stable_seed(seed, step, first + i) for i in range(len(prompt_ids))])
        # finish_reason reaches the reward functions: a completion cut at the length limit earns
        # no correctness or format reward (rewards.py)
        return {"prompt_ids": prompt_ids, "completion_ids": [r.token_ids for r in res], "logprobs": None,
                "finish_reason": [r.finish_reason for r in res]}

    return rollout


def length_threshold(sampler, val_items: Sequence[Mapping[str, Any]], name: str, *, rl: RlSettings,
                     judge: JudgeSettings, seed: Seed) -> dict:
    """rl.l_exp when it is `auto`: the rl.l_exp_quantile quantile of the starting judge's completion
    lengths (tokens) on the validation items, so that the length penalty bites on about
    1 - quantile of the rollouts (a fixed L_exp above every trajectory makes the no-length-penalty
    ablation null by construction). Capped at rl.l_max."""
    from librarm.judging.judge import build_judge_requests

    if not val_items:
        raise ValueError("rl.l_exp: auto needs validation items (judge_data val) to measure lengths on")
    batch = build_judge_requests(val_items, judge, seed, ("l_exp", name), key="item_id", tok=getattr(sampler, "tok", None))
    lengths = sorted(r.completion_tokens for r in sampler.generate(batch.requests))
    q = float(rl.l_exp_quantile)
    l_exp = min(int(lengths[min(len(lengths) - 1, int(q * len(lengths)))]), int(rl.l_max))
    return {"l_exp": l_exp, "quantile": q, "items": len(lengths),
            "val_length_mean": round(sum(lengths) / len(lengths), 1), "val_length_max": lengths[-1],
            "val_penalised_share": round(sum(n > l_exp for n in lengths) / len(lengths), 4)}


def run_grpo(train_path: str | Path, init_model: str, out_dir: str | Path, *,
             name: str, rewards: Mapping[str, float], val_items: Sequence[Mapping[str, Any]] = (),
             resume_root: str | Path = P.RESUME_TRAIN, threads: int | None = None, callbacks: Sequence = (),
             rl: RlSettings, judge: JudgeSettings, seed: Seed, launch: LaunchSettings) -> dict:
    """TRL GRPOTrainer on judging prompts with rule rewards. Items the initial judge always gets
    right or always wrong give no gradient: they are filtered by pass rate first."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from librarm.engines.base import SamplingConfig
    from librarm.engines.hf import HFSampler, render_chat
    from librarm.judging.judge import judge_prompts
    from librarm.judging.rewards import build_reward_funcs

    section = rl
    rl = rl.for_model(name)
    prepare = engines.get(rl.rollout_backend).prepare if rl.rollout_backend != "hf" else None
    if prepare:
        prepare()      # vllm: the job may start over in vLLM's environment
    seed_everything(rl.seed, threads)
    jcfg = judge
    items = read_jsonl(train_path).records
    tok = AutoTokenizer.from_pretrained(init_model)
    model = AutoModelForCausalLM.from_pretrained(init_model, dtype=torch.float32)
    sampler = HFSampler(init_model, SamplingConfig(temperature=rl.temperature, max_new_tokens=rl.max_completion_length,
                                                   batch_size=jcfg.batch_size, top_p=1.0), model=model, tokenizer=tok)
    kept, filt = filter_by_pass_rate(items, sampler, rl, name, judge=judge, seed=seed)
    if not kept:
        raise ValueError(f"rl: no item with pass rate in {list(rl.passrate_band)} ({filt})")
    # an item over the prompt budget (rate 0) is kept only by a band that starts at 0: dropped here
    prompts, _ = judge_prompts(kept, judge, tok)
    rows = [{"prompt": render_chat(tok, msgs), "label": it["label"], "item_id": it["item_id"]}
            for it, msgs in zip(kept, prompts) if msgs is not None]
    if rl.l_exp == "auto":
        length = length_threshold(sampler, val_items[: rl.val_items], name, rl=section, judge=judge, seed=seed)
    else:
        length = {"l_exp": int(rl.l_exp)}
    funcs, weights = build_reward_funcs(dict(rewards), length["l_exp"], rl.l_max)
    resume_dir = resume_dir_for(resume_root, name, init_model, train_path, rl.run_key(), dict(rewards),
                                jcfg.prompt_template)
    args = GRPOConfig(
        **device_args(), **sharding_args(launch, model),
        output_dir=str(resume_dir), max_steps=rl.steps, per_device_train_batch_size=per_process(rl.batch_size, "rl.batch_size"),
        num_generations=rl.num_generations, max_completion_length=rl.max_completion_length,
        learning_rate=rl.learning_rate, beta=rl.beta, temperature=rl.temperature, seed=rl.seed,
        reward_weights=weights, logging_steps=1, save_steps=rl.save_steps, save_total_limit=1,
        use_cpu=not torch.cuda.is_available(), report_to=[],
        disable_tqdm=True, shuffle_dataset=True, lr_scheduler_type="constant",
    )
    trainer = sharded(GRPOTrainer)(model=model, reward_funcs=funcs, args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tok, callbacks=list(callbacks),
                          rollout_func=_rollouts(rl, sampler, resume_dir, stable_seed(seed, "grpo", name)))
    started = time.time()
    trainer.train(resume_from_checkpoint=latest_checkpoint(resume_dir))
    hist = trainer.state.log_history
    tokens = sum(h.get("completions/mean_length", 0) * rl.batch_size for h in hist)
    out = _finish(trainer, tok, Path(out_dir), started, int(tokens))
    out["passrate_filter"] = filt
    zero = [h["frac_reward_zero_std"] for h in hist if "frac_reward_zero_std" in h]
    out["zero_advantage_share"] = round(sum(zero) / len(zero), 4) if zero else None
    out["reward_curve"] = [{"step": h.get("step"), "reward": h.get("reward"),
                            "correctness": h.get("rewards/correctness/mean"),
                            "length": h.get("completions/mean_length")} for h in hist if "reward" in h]
    shares = [h["length_penalised_share"] for h in hist if "length_penalised_share" in h]
    length["rollout_penalised_share"] = round(sum(shares) / len(shares), 4) if shares else None
    out["length_penalty"] = length
    return out


def _rollouts(rl: RlSettings, sampler, resume_dir: Path, seed: int):
    """GRPO's rollout function for rl.rollout_backend: the live model through the hf sampler, or a
    vLLM engine synced every rl.sync_every steps."""
    if rl.rollout_backend == "hf":
        return sampler_rollout(sampler, seed)
    from librarm.engines.base import SamplingConfig

    backend = engines.get(rl.rollout_backend)
    spec = GeneratorSpec(backend=rl.rollout_backend, vllm_args=dict(rl.rollout_vllm_args))
    cfg = SamplingConfig(temperature=rl.temperature, max_new_tokens=rl.max_completion_length,
                         batch_size=sampler.cfg.batch_size, top_p=1.0)
    return synced_rollout(lambda folder: backend.make(spec, engines.ModelRef(folder), cfg, None, rl.seed),
                          resume_dir / "rollout-weights", rl.sync_every, seed)


# ----------------------------------------------------------------------------- validation curve
def val_accuracy(model, tok, items: Sequence[Mapping[str, Any]], tag: str, *, judge: JudgeSettings, seed: Seed) -> float:
    """Judge accuracy (no verdict = wrong) of a live model on validation items."""
    from librarm.engines.hf import HFSampler
    from librarm.judging.judge import judge_sampling, run_generative

    sampler = HFSampler("live", judge_sampling(judge), model=model, tokenizer=tok)
    was_training = model.training
    model.eval()
    with gathered_for_decoding(model):
        preds = run_generative(items, sampler, judge, seed, f"val-{tag}")
    if was_training:
        model.train()
    return round(sum(p["pred"] == p["label"] for p in preds) / max(1, len(preds)), 4)


def make_val_callback(items, every: int, tag: str, *, judge: JudgeSettings, seed: Seed):
    """A TrainerCallback that records validation accuracy every `every` steps (and at the end)."""
    from transformers import TrainerCallback

    class ValCurve(TrainerCallback):
        def __init__(self):
            self.curve: list[dict] = []

        def on_step_end(self, args, state, control, model=None, processing_class=None, **kw):
            if state.global_step % every == 0 or state.global_step == state.max_steps:
                acc = val_accuracy(model, processing_class, items, tag, judge=judge, seed=seed)
                self.curve.append({"step": state.global_step, "val_accuracy": acc})
                state.log_history.append({"step": state.global_step, "val_accuracy": acc})

    return ValCurve()


# ----------------------------------------------------------------------------- scalar reward model
def reward_pairs(items: Sequence[Mapping[str, Any]], seed: int, per_problem: int,
                 field: str = "response") -> list[dict]:
    """(chosen correct, rejected incorrect) responses of the same problem, hash-paired; `field` is
    what the RM reads: the final answer (`response`) or the answer with its reasoning
    (`response_with_cot`), where a step-level slip is visible."""
    by_q: dict[str, dict[int, list]] = defaultdict(lambda: {0: [], 1: []})
    for it in items:
        by_q[it["question"]][it["label"]].append(it)
    pairs = []
    for q in sorted(by_q):
        pos = sorted(by_q[q][1], key=lambda r: stable_hash(seed, "rm", r["item_id"]))
        neg = sorted(by_q[q][0], key=lambda r: stable_hash(seed, "rm", r["item_id"]))
        for a, b in list(zip(pos, neg))[:per_problem]:
            pairs.append({"question": q, "chosen": a[field], "rejected": b[field]})
    return pairs


def run_scalar_rm(train_path: str | Path, init_model: str, out_dir: str | Path, *,
                  name: str, resume_root: str | Path = P.RESUME_TRAIN,
                  threads: int | None = None, scalar_rm: ScalarRmSettings, seed: Seed, launch: LaunchSettings) -> dict:
    """TRL RewardTrainer (Bradley-Terry on correct-vs-incorrect pairs of the same problem) from the
    base judge's weights with a fresh 1-logit head: the paper's non-thinking baseline family.
    Its decision threshold is chosen later, on the validation split."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    cfg = scalar_rm
    seed_everything(cfg.seed, threads)
    items = read_jsonl(train_path).records
    pairs = reward_pairs(items, seed, cfg.pairs_per_problem, cfg.input)
    if not pairs:
        raise ValueError("scalar_rm: no (correct, incorrect) pair of the same problem in the training items")
    tok = AutoTokenizer.from_pretrained(init_model)
    model = AutoModelForSequenceClassification.from_pretrained(init_model, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id

    def chat(q, r):
        return tok.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": r}],
                                       tokenize=False)

    ds = Dataset.from_list([{"chosen": chat(p["question"], p["chosen"]), "rejected": chat(p["question"], p["rejected"])}
                            for p in pairs])
    resume_dir = resume_dir_for(resume_root, name, init_model, train_path, asdict(cfg))
    args = RewardConfig(**device_args(), **sharding_args(launch, model), output_dir=str(resume_dir), max_steps=cfg.steps,
                        per_device_train_batch_size=per_process(cfg.batch_size, "scalar_rm.batch_size"),
                        learning_rate=cfg.learning_rate, logging_steps=5, save_steps=50, save_total_limit=1,
                        seed=cfg.seed, use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
                        report_to=[], max_length=512)
    trainer = sharded(RewardTrainer)(model=model, args=args, train_dataset=ds, processing_class=tok)
    started = time.time()
    trainer.train(resume_from_checkpoint=latest_checkpoint(resume_dir))
    out = _finish(trainer, tok, Path(out_dir), started, 0)
    out["pairs"] = len(pairs)
    return out


# ----------------------------------------------------------------------------- stage entry points
def train_judge(kind: str, model_name: str, data: Mapping[str, str], out_dir: str | Path,
                log_path: str | Path, threads: int | None = None, *, models: Models, sft: SftSettings | None,
                rl: RlSettings | None, scalar_rm: ScalarRmSettings | None, judge: JudgeSettings, seed: Seed,
                launch: LaunchSettings) -> dict:
    """One training job of the `train` phase: kind in sft | nothink | rl | scalar. Writes the final
    model to out_dir (a DVC output) and a log JSON (curves, tokens/s) to log_path. The kind's
    section (sft, rl or scalar_rm) must be given; the others may be None."""
    from librarm.run.models import model_ref, training_start

    val = read_jsonl(data["val"]).records
    init = model_ref(models, training_start(model_name, models, sft, rl, scalar_rm))["path"]
    if kind in ("sft", "nothink"):
        cfg = sft.for_model(model_name)
        out = run_sft(data["sft"], init, out_dir, cfg, name=model_name, verdict_only_targets=kind == "nothink",
                      threads=threads, launch=launch,
                      callbacks=[make_val_callback(val[: cfg.val_items], cfg.val_every, model_name,
                                                   judge=judge, seed=seed)])
    elif kind == "rl":
        out = run_grpo(data["train"], init, out_dir, name=model_name, rewards=rl.rewards_of(model_name),
                       val_items=val, threads=threads,
                       callbacks=[make_val_callback(val[: rl.val_items], rl.val_every, model_name,
                                                    judge=judge, seed=seed)],
                       rl=rl, judge=judge, seed=seed, launch=launch)
    elif kind == "scalar":
        out = run_scalar_rm(data["train"], init, out_dir, name=model_name,
                            threads=threads, scalar_rm=scalar_rm, seed=seed, launch=launch)
    else:
        raise ValueError(f"unknown training kind {kind!r}")
    out.update({"kind": kind, "model": model_name, "init": init})
    out["val_curve"] = [h for h in out.get("log_history", []) if "val_accuracy" in h]
    if is_main():
        write_json(log_path, out)
    return out


def step_train(io: StageIO, *, models: Models, sft: SftSettings | None, rl: RlSettings | None,
               scalar_rm: ScalarRmSettings | None, judge: JudgeSettings, seed: Seed,
               launch: LaunchSettings) -> tuple[dict, list[str]]:
    """Stage step `train`: one judge (the `model` wildcard), of the kind its models entry names."""
    from librarm.run.tracking import CURVE_KEYS

    name = io.wildcard("model")
    sft_data = io.input_list("sft")
    data = {"train": io.input("train"), "val": io.input("val"), **({"sft": sft_data[0]} if sft_data else {})}
    log = train_judge(models[name].train, name, data, io.output("model"), io.output("log"), io.threads,
                      models=models, sft=sft, rl=rl, scalar_rm=scalar_rm, judge=judge, seed=seed, launch=launch)
    # the curves go to the job's MLflow run as step metrics (tracking.curve_points)
    return {k: log[k] for k in ("global_step", "seconds", "tokens_per_s", *CURVE_KEYS) if k in log} | \
        {"final_val_accuracy": (log["val_curve"][-1]["val_accuracy"] if log.get("val_curve") else None)}, \
        [io.output("log")]


def step_train_stats(io: StageIO, *, models: Models) -> tuple[dict, list[str]]:
    """Stage step `train-stats`: every trained judge's log, curves kept, in one file."""
    trained = [m for m, s in models.items() if s.source == "trained"]
    stats = {}
    for name, p in io.keyed("logs", P.TRAIN_LOG, "model", trained).items():
        d = read_json(p)
        stats[name] = {k: d.get(k) for k in ("kind", "init", "global_step", "seconds", "tokens_per_s",
                                             "val_curve", "passrate_filter", "zero_advantage_share",
                                             "reward_curve", "length_penalty", "pairs")}
        stats[name]["loss_curve"] = [{"step": h.get("step"), "loss": h.get("loss")}
                                     for h in d.get("log_history", []) if "loss" in h]
    write_json(io.output("stats"), stats)
    return {k: {"final_val_accuracy": (v["val_curve"][-1]["val_accuracy"] if v.get("val_curve") else None),
                "seconds": v["seconds"], "tokens_per_s": v["tokens_per_s"]} for k, v in stats.items()}, \
        [io.output("stats")]
