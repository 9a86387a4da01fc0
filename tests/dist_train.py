"""Runs one trainer of the pipeline (sft | dpo | grpo) from a JSON spec, in however many processes
its launcher started (tests/test_launch.py starts it in one and in two). Rank 0 writes the log
history; for GRPO every process writes the rewards it gave each completion.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/dist_train.py SPEC.json
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from pathlib import Path


def kill_after_save(step: int):
    """A hard stop once every process has written its part of the step's checkpoint."""
    from transformers import TrainerCallback

    from librarm.run.launch import barrier

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step == step:
                barrier()
                os._exit(3)

    return Kill()


def record_rewards(path: Path):
    """Wrap the reward functions run_grpo builds so each process logs what it scored."""
    import librarm.judging.rewards as rewards

    build = rewards.build_reward_funcs

    def recording_build(*a, **kw):
        funcs, weights = build(*a, **kw)

        def wrap(fn):
            @functools.wraps(fn)
            def scored(prompts, completions, **cols):
                out = fn(prompts=prompts, completions=completions, **cols)
                with open(path, "a") as fh:
                    for i, (p, c, r) in enumerate(zip(prompts, completions, out)):
                        fh.write(json.dumps({"func": fn.__name__, "prompt": p, "completion": c, "reward": r,
                                             "item_id": cols["item_id"][i], "label": cols["label"][i],
                                             "completion_ids": list(cols["completion_ids"][i]),
                                             "finish_reason": (cols.get("finish_reason") or [None] * len(out))[i]})
                                 + "\n")
                return out
            return scored

        return [wrap(f) for f in funcs], weights

    rewards.build_reward_funcs = recording_build


def record_rollouts(path: Path):
    """Wrap the rollout functions run_grpo builds so each completion's step, prompt ids, seed and
    completion ids are logged (the vLLM test replays them on a fresh engine)."""
    import librarm.stages.train as train

    make = train._rollout_func

    def recording(decode, seed):
        def recorded(trainer, prompt_ids, seeds):
            res = decode(trainer, prompt_ids, seeds)
            with open(path, "a") as fh:
                for ids, s, r in zip(prompt_ids, seeds, res):
                    fh.write(json.dumps({"step": trainer.state.global_step, "prompt_ids": list(ids), "seed": s,
                                         "completion_ids": list(r.token_ids)}) + "\n")
            return res
        return make(recorded, seed)

    train._rollout_func = recording


@contextlib.contextmanager
def record_validations(path: Path):
    """While in the block, DPO validation's sample_and_grade logs each validation's responses in
    order (the vLLM test decodes them again on a fresh engine)."""
    import librarm.stages.downstream as downstream

    grade = downstream.sample_and_grade

    def recording(sampler, *a, **kw):
        graded = grade(sampler, *a, **kw)
        with open(path, "a") as fh:
            fh.write(json.dumps({"sampler": type(sampler).__name__,
                                 "responses": [g["response_with_cot"] for g in graded]}) + "\n")
        return graded

    downstream.sample_and_grade = recording
    try:
        yield
    finally:
        downstream.sample_and_grade = grade


def replay_validation(spec: dict, out: Path) -> int:
    """DPO validation again, on a fresh engine of the policy's backend loaded from spec["folder"]
    (the decoder and seeds a DPO job uses); writes the responses."""
    from librarm.judging.verifier import VerifierPool
    from librarm.run.io import read_jsonl, write_json
    from librarm.run.settings import DpoSettings, PairsSettings, call
    from librarm.stages.downstream import policy_decoding, sample_and_grade
    from librarm.stages.dpo import validation_decoder, validation_engine

    p = spec["params"]
    problems = [dict(r, subset="val") for r in read_jsonl(spec["val"]).records]
    vcfg = call(policy_decoding, p)
    policy_engine = validation_engine(PairsSettings.from_params(p), DpoSettings.from_params(p))
    engine = validation_decoder(policy_engine, vcfg, None, p["seed"])(spec["folder"])
    with VerifierPool(1, 10.0, 1024) as pool:
        graded = call(sample_and_grade, p, engine, problems, p["dpo"]["val_k"], p["seed"], "policy-val", pool)
    write_json(out / "replay.json", {"responses": [g["response_with_cot"] for g in graded]})
    return 0


def replay(spec: dict, out: Path) -> int:
    """Decode one step's recorded rollouts again on a fresh engine of the rollout backend, loaded
    from spec["folder"]; writes which completions came out the same."""
    from librarm import engines
    from librarm.engines.base import SamplingConfig
    from librarm.run.io import read_jsonl, write_json
    from librarm.run.settings import GeneratorSpec

    recs = [r for r in read_jsonl(spec["records"]).records if r["step"] == spec["step"]]
    engine = engines.get("vllm").make(GeneratorSpec(backend="vllm", vllm_args=spec["vllm_args"]),
                                      engines.ModelRef(spec["folder"]), SamplingConfig(**spec["sampling"]), None, 0)
    res = engine.generate_ids([r["prompt_ids"] for r in recs], [r["seed"] for r in recs])
    write_json(out / "replay.json", {"n": len(recs), "same": sum(list(x.token_ids) == r["completion_ids"]
                                                                 for x, r in zip(res, recs))})
    return 0


def weights_folder(pattern: str) -> str:
    """The one folder a path pattern names (a resume folder's name is a hash the test does not know)."""
    found = sorted(Path("/").glob(pattern.lstrip("/")))
    assert len(found) == 1, (pattern, found)
    return str(found[0])


def main(spec_path: str) -> int:
    from librarm.run.launch import is_main

    spec = json.loads(Path(spec_path).read_text())
    rc = run_spec(spec)
    if not spec.get("then"):
        return rc
    # replays after the run, in the main process, out of the process group (an engine beside one
    # runs its core in a process of its own): each a fresh engine, vLLM's imports paid once
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:       # the launcher's group, not vLLM's own
        dist.barrier()
        dist.destroy_process_group()
    for then in spec["then"] if is_main() else ():
        rc = rc or run_spec({**then, "folder": weights_folder(then["folder"])})
    return rc


def run_spec(spec: dict) -> int:
    from librarm.run.io import write_json
    from librarm.run.launch import is_main, rank
    from librarm.run.settings import LaunchSettings, call

    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    if spec["kind"] == "replay":
        return replay(spec, out)
    if spec["kind"] == "replay_validation":
        return replay_validation(spec, out)
    callbacks = [kill_after_save(spec["kill_after_save"])] if spec.get("kill_after_save") else []
    # launch.sharding of the run (the processes come from the launcher that started this one)
    common = dict(name="t", resume_root=spec["resume_root"], threads=1,
                  launch=LaunchSettings(sharding=spec.get("sharding", "none")))
    if spec["kind"] == "sft":
        from librarm.run.settings import SftSettings
        from librarm.stages.train import run_sft

        log = run_sft(spec["data"], spec["init"], out / "model", SftSettings(init="rand", **spec["cfg"]), callbacks=callbacks,
                      logging_steps=1, **common)
    elif spec["kind"] == "dpo":
        from librarm.stages.dpo import run_dpo

        with record_validations(out / f"validations-rank{rank()}.jsonl"):
            log = call(run_dpo, spec["params"], spec["data"], spec["val"], spec["init"], out / "model", seed=0,
                       **{k: v for k, v in common.items()})
    else:
        from librarm.stages.train import run_grpo

        record_rewards(out / f"rewards-rank{rank()}.jsonl")
        record_rollouts(out / f"rollouts-rank{rank()}.jsonl")
        log = call(run_grpo, spec["params"], spec["data"], spec["init"], out / "model", rewards=spec["rewards"],
                   callbacks=callbacks, **common)
    if is_main():
        write_json(out / "log.json", log)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
