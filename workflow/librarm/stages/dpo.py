"""DPO of the policy on one labeler's pairs (TRL DPOTrainer), with checkpoint selection on the
validation problems of the unlabeled pool (the eval subsets are never read here)."""
from __future__ import annotations

import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Mapping

from librarm import engines
from librarm.run.io import StageIO, read_json, read_jsonl, set_tree_mode, write_json
from librarm.run.launch import (
    barrier,
    full_state_dict,
    gathered_for_decoding,
    is_main,
    per_process,
    sharded,
    sharding_args,
    shared_on_disk,
    world_size,
)
from librarm.run.paths import RESUME_TRAIN
from librarm.run.settings import (
    DpoSettings,
    EvaluatePolicySettings,
    LaunchSettings,
    Models,
    PairsSettings,
    SamplingSettings,
    Seed,
    VerifySettings,
)
from librarm.stages.train import device_args, latest_checkpoint, resume_dir_for, seed_everything


def dpo_rows(pairs, tok, *, sampling: SamplingSettings) -> list[dict]:
    """Prompt = the policy's rendered chat prompt (as the sampler renders it); chosen/rejected = the
    raw responses including their thinking (TRL appends EOS), so no template can strip it."""
    from librarm.engines.hf import render_chat
    from librarm.stages.sample import problem_messages

    scfg = sampling
    return [{"prompt": render_chat(tok, problem_messages({"problem": p["question"]}, scfg.system_prompt,
                                                         scfg.problem_template)),
             "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]


def run_dpo(pairs_path: str | Path, val_problems_path: str | Path, init_model: str,
            out_dir: str | Path, *, name: str, seed: int, threads: int | None = None,
            resume_root: str | Path = RESUME_TRAIN, budget: int | None = None, dpo: DpoSettings,
            sampling: SamplingSettings, evaluate_policy: EvaluatePolicySettings, verify: VerifySettings,
            run_seed: Seed, launch: LaunchSettings, pairs: PairsSettings) -> dict:
    """Train one DPO policy for the steps `budget` pairs take (see `labelers.dpo_step_pairs`;
    None: the file's own count); keep the checkpoint with the best validation avg@k, checked on
    the untrained policy (step 0), every `val_every` steps and at the end. Selection reads the
    gold answers of the pool's held-out validation problems (declared in every table). Resumes
    from the last checkpoint under resume_root. `seed` is this DPO run's (training) seed;
    `run_seed` is the run's seed (params `seed`), which seeds the validation samples. Validation
    decodes on the policy's backend (`pairs.backend`, see `validation_decoder`)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from librarm.judging.verifier import VerifierPool
    from librarm.run.labelers import dpo_step_pairs
    from librarm.stages.downstream import policy_decoding

    cfg = dpo
    policy_engine = validation_engine(pairs, dpo)
    vcfg = policy_decoding(evaluate_policy=evaluate_policy, sampling=sampling)
    decoder = validation_decoder(policy_engine, vcfg, threads, run_seed)
    prepare = engines.get(policy_engine.backend).prepare if decoder is not None else None
    if prepare:
        prepare()      # vllm: the job may start over in vLLM's environment
    seed_everything(seed, threads)
    rows = read_jsonl(pairs_path).records
    if not rows:
        return _unchanged_policy(init_model, Path(out_dir), name, seed, pairs_path)
    val_problems = [dict(p, subset="val") for p in read_jsonl(val_problems_path).records]
    tok = AutoTokenizer.from_pretrained(init_model)
    model = AutoModelForCausalLM.from_pretrained(init_model, dtype=torch.float32)
    ds = Dataset.from_list(dpo_rows(rows, tok, sampling=sampling))
    step_pairs = len(rows) if budget is None else dpo_step_pairs(name, len(rows), budget)
    steps = cfg.steps(step_pairs)
    # validation on an engine selects on other numbers than the live model's: its own resume folder
    decoded_by = () if decoder is None else ({"decoded_by": asdict(policy_engine)},)
    resume_dir = resume_dir_for(resume_root, f"dpo-{name}", init_model, pairs_path, val_problems_path,
                                {k: v for k, v in asdict(cfg).items() if k != "seeds"}, seed, steps,
                                sampling.system_prompt, sampling.problem_template, *decoded_by)
    if world_size() > 1:
        ds = shared_on_disk(ds, resume_dir / f"rows-{world_size()}")
        if len(rows) % cfg.batch_size and is_main():
            print(f"dpo: {len(rows)} pairs is not a multiple of dpo.batch_size {cfg.batch_size}: in "
                  f"{world_size()} processes an epoch's last, short batch is padded with repeated pairs "
                  "(accelerate's even_batches), so those steps differ from one process", flush=True)
    best_path = resume_dir / "best.json"
    # read by every process before any writes it (then they agree on whether step 0 is validated)
    started_with_best = best_path.exists()
    barrier()
    pool = VerifierPool(1, verify.timeout_s, verify.memory_mb)

    select = select_on_val(TrainerCallback, vcfg, val_problems, cfg, run_seed, pool, resume_dir,
                           best_path, started_with_best, decoder, sampling=sampling)

    args = DPOConfig(
        **device_args(), **sharding_args(launch, model),
        output_dir=str(resume_dir), max_steps=steps, per_device_train_batch_size=per_process(cfg.batch_size, "dpo.batch_size"),
        learning_rate=cfg.learning_rate, beta=cfg.beta, loss_type=[cfg.loss_type], lr_scheduler_type="constant",
        logging_steps=1, save_steps=cfg.val_every, save_total_limit=1, seed=seed, max_length=cfg.max_length,
        precompute_ref_log_probs=cfg.precompute_ref_log_probs, use_cpu=not torch.cuda.is_available(),
        report_to=[], disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = sharded(DPOTrainer)(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[select])
    started = time.time()
    with pool:
        trainer.train(resume_from_checkpoint=latest_checkpoint(resume_dir))
    elapsed = time.time() - started
    barrier()
    best = read_json(best_path)
    _publish(resume_dir / "best", tok, Path(out_dir))
    return _summary(trainer.state, ds, tok, name, seed, len(rows), step_pairs, steps, best, elapsed, cfg.batch_size)


def _unchanged_policy(init_model: str, out_dir: Path, name: str, seed: int, pairs_path) -> dict:
    """The labeler gave no training signal: the policy stays the base policy (reported as such)."""
    if is_main():
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.copytree(init_model, out_dir)
        set_tree_mode(out_dir)            # copytree keeps the source's modes
    barrier()
    return {"labeler": name, "seed": seed, "pairs": 0, "steps": 0, "global_step": 0, "selected_step": 0,
            "selected_val_avg_at_k": None, "seconds": 0.0, "tokens_per_s": None, "loss_curve": [], "val_curve": [],
            "note": f"{pairs_path} has no pair: the base policy, unchanged"}


def validation_engine(pairs: PairsSettings, dpo: DpoSettings):
    """The policy's engine (pairs.backend, pairs.engine) with dpo.val_vllm_args over its vllm_args:
    the validation engine shares the process, and the GPU, with training."""
    engine = pairs.policy_engine()
    return replace(engine, vllm_args={**engine.vllm_args, **dpo.val_vllm_args})


def validation_decoder(policy_engine, vcfg, threads: int | None, run_seed: int):
    """How validation decodes the policy being trained: folder -> a sampler of the policy's backend
    over weights saved there, for a backend that loads saved weights (vLLM holds its own copy of
    the weights and, on the CPU, cannot load new ones into a running engine); None, the live model
    in this process through the hf sampler, for hf and for a backend that serves weights of its own
    (http: a server elsewhere cannot see the weights being trained)."""
    backend = engines.get(policy_engine.backend)
    if not backend.loads_saved_weights:
        return None
    return lambda folder: backend.make(policy_engine, engines.ModelRef(folder), vcfg, threads, run_seed)


def select_on_val(callback_base, vcfg, val_problems, cfg: DpoSettings, seed: int, pool, resume_dir: Path, best_path: Path,
                  started_with_best: bool, decoder=None, *, sampling: SamplingSettings):
    """The trainer callback that validates avg@k on the untrained policy (step 0), every val_every
    steps and at the end, and keeps the best state beside the checkpoints (with its score, so a
    resumed run keeps comparing against it). decoder (validation_decoder): None, every process
    decodes the live model; else the weights are saved as the candidate and the main process
    decodes them through an engine built on that folder."""
    import gc

    from librarm.engines.hf import HFSampler
    from librarm.stages.downstream import avg_at_k, per_problem_accuracy, sample_and_grade

    candidate, verdict = resume_dir / "best.tmp", resume_dir / "val.json"

    def accuracy(sampler) -> float:
        graded = sample_and_grade(sampler, val_problems, cfg.val_k, seed, "policy-val", pool, sampling=sampling)
        return avg_at_k(per_problem_accuracy(graded))["all"]

    def save_candidate(model, tok, weights) -> None:
        shutil.rmtree(candidate, ignore_errors=True)
        model.save_pretrained(str(candidate), state_dict=weights)
        if tok is not None:
            tok.save_pretrained(str(candidate))      # an engine reads the tokenizer from the folder

    def improves(acc: float) -> bool:
        best = read_json(best_path) if best_path.exists() else None
        return best is None or acc > best["val_avg_at_k"]

    def keep_candidate(state, acc: float) -> None:
        shutil.rmtree(resume_dir / "best", ignore_errors=True)
        candidate.rename(resume_dir / "best")
        write_json(best_path, {"step": state.global_step, "val_avg_at_k": acc})

    class SelectOnVal(callback_base):

        def validate(self, state, model, tok):
            if decoder is None:
                self.validate_live(state, model, tok)
            else:
                self.validate_saved(state, model, tok)

        def validate_live(self, state, model, tok):
            was_training = model.training
            model.eval()
            with gathered_for_decoding(model):
                acc = accuracy(HFSampler("live", vcfg, model=model, tokenizer=tok))
            if was_training:
                model.train()
            state.log_history.append({"step": state.global_step, "val_avg_at_k": acc})
            # every process validates the same weights the same way and reads the best so far
            # (before rank 0 rewrites it: the gather below is a collective); rank 0 keeps the best
            improved = improves(acc)
            weights = full_state_dict(model) if improved else None    # sharded: gathered by all
            if is_main() and improved:
                save_candidate(model, None, weights)
                keep_candidate(state, acc)
            barrier()

        def validate_saved(self, state, model, tok):
            weights = full_state_dict(model)                          # sharded: gathered by all
            if is_main():
                save_candidate(model, tok, weights)
                engine = decoder(str(candidate))
                acc = accuracy(engine)
                del engine
                gc.collect()
                if improves(acc):
                    keep_candidate(state, acc)
                write_json(verdict, {"step": state.global_step, "val_avg_at_k": acc})
            barrier()
            state.log_history.append({"step": state.global_step, "val_avg_at_k": read_json(verdict)["val_avg_at_k"]})

        def on_train_begin(self, args, state, control, model=None, processing_class=None, **kw):
            # step 0 (the untrained policy) is a candidate too: DPO may only hurt
            if state.global_step == 0 and not started_with_best:
                self.validate(state, model, processing_class)

        def on_step_end(self, args, state, control, model=None, processing_class=None, **kw):
            if state.global_step % cfg.val_every and state.global_step != state.max_steps:
                return
            self.validate(state, model, processing_class)

    return SelectOnVal()


def _publish(best_dir: Path, tok, out_dir: Path) -> None:
    """The selected checkpoint and the tokenizer become the policy folder, atomically (rank 0)."""
    if is_main():
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(best_dir, tmp)
        tok.save_pretrained(str(tmp))
        set_tree_mode(tmp)                    # safetensors writes 0600; every output gets the umask's mode
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
    barrier()


def _summary(state, ds, tok, name: str, seed: int, n_pairs: int, step_pairs: int, steps: int, best: Mapping[str, Any],
             elapsed: float, batch_size: int) -> dict:
    hist = state.log_history
    tokens = sum(len(tok(r["prompt"] + r["chosen"])["input_ids"]) + len(tok(r["prompt"] + r["rejected"])["input_ids"])
                 for r in ds)
    return {"labeler": name, "seed": seed, "pairs": n_pairs, "step_pairs": step_pairs, "steps": steps,
            "selection": "validation avg@k on gold answers of held-out pool problems (step 0 included)",
            "global_step": state.global_step,
            "selected_step": best["step"], "selected_val_avg_at_k": best["val_avg_at_k"],
            "seconds": round(elapsed, 1),
            "tokens_per_s": round(tokens * steps * batch_size / max(1, n_pairs) / elapsed, 1) if elapsed else None,
            "loss_curve": [{"step": h["step"], "loss": h["loss"], "reward_margin": h.get("rewards/margins"),
                            "reward_accuracy": h.get("rewards/accuracies")} for h in hist if "loss" in h],
            "val_curve": [{"step": h["step"], "val_avg_at_k": h["val_avg_at_k"]} for h in hist if "val_avg_at_k" in h]}


def step_dpo(io: StageIO, *, dpo: DpoSettings, pairs: PairsSettings, sampling: SamplingSettings,
             evaluate_policy: EvaluatePolicySettings, verify: VerifySettings, models: Models,
             seed: Seed, launch: LaunchSettings) -> tuple[dict, list[str]]:
    """Stage step `dpo`: one policy (the `policy` wildcard) and DPO seed, from the `init` input (the
    policy folder the pipeline made) or the hub policy `pairs.policy` names."""
    from librarm.stages.downstream import policy_folder

    init = policy_folder(io.input_list("init"), pairs=pairs, models=models)
    log = run_dpo(io.input("pairs"), io.input("val"), init, io.output("model"),
                  name=io.wildcard("policy"), seed=int(io.wildcard("seed")), threads=io.threads,
                  budget=pairs.budget, dpo=dpo, sampling=sampling, evaluate_policy=evaluate_policy, verify=verify,
                  run_seed=seed, launch=launch, pairs=pairs)
    if is_main():
        write_json(io.output("log"), log)
    return {k: log[k] for k in ("pairs", "steps", "selected_step", "selected_val_avg_at_k", "seconds",
                                "tokens_per_s", "loss_curve", "val_curve")}, [io.output("log")]


def step_dpo_stats(io: StageIO) -> tuple[dict, list[str]]:
    """Stage step `dpo-stats`: every DPO run's log in one file, keyed <policy>/seed-<seed>."""
    stats = {}
    for p in io.input_list("logs"):
        d = read_json(p)
        stats[f"{d['labeler']}/seed-{d['seed']}"] = d
    write_json(io.output("stats"), stats)
    return {k: {"selected_val_avg_at_k": v["selected_val_avg_at_k"], "seconds": v["seconds"]}
            for k, v in stats.items()}, [io.output("stats")]
