# Shared by every rule: config validation, the effective-config file the jobs read, and the
# lists of files derived from params (never directory globs).
import json
import os
import re
import sys
from pathlib import Path

import shlex

from librarm.run import paths as P
from librarm.run.config import prune_removed, validate_params
from librarm import engines
from librarm.run.models import local_model_dirs, training_start
from librarm.run.io import atomic_path
from librarm.phases import PHASES, active_phases, phase_backends, rule_params
from librarm.run.settings import Params, call
from librarm.run.tracking import flush_at_end
from librarm.run.warm import start_for_workflow, stop_for_workflow

prune_removed(config)
validate_params(config, source="params.yaml (+ --configfile overlays)")
PARAMS = Params.from_dict(config)       # the typed sections (librarm/run/settings.py)

PHASE_TARGETS = [p.target for p in active_phases(config)]
SET_NAMES = PARAMS.problems.names()
EVAL_SUBSETS = PARAMS.problems.names("eval")
LEARNING = PARAMS.judge_data is not None
STRESS = PARAMS.stress is not None          # the judge-hacking stress set
JUDGE_POOL = PARAMS.judge_data.pool if LEARNING else None
# Generators sample the eval subsets, and the judge pool when the judge is trained.
SAMPLED_SUBSETS = EVAL_SUBSETS + ([JUDGE_POOL] if LEARNING else [])
TRAIN_GENERATORS = [g for g in PARAMS.generators if not LEARNING or g not in PARAMS.judge_data.exclude_generators]
TRAINED_MODELS = [m for m, s in PARAMS.models.items() if s.source == "trained"]
GENERATORS = list(PARAMS.generators)
JUDGES = list(PARAMS.evaluate.judges)
TINY_MODELS = [m for m, s in PARAMS.models.items() if s.source == "tiny"]
GGUF_MODELS = [m for m, s in PARAMS.models.items() if s.source == "gguf"]
# Training jobs (train, dpo) run in launch.processes processes: a thread and its GPUs each.
TRAIN_THREADS = PARAMS.launch.processes
TRAIN_GPUS = PARAMS.launch.processes * PARAMS.launch.gpus_per_process


def _write_effective_config() -> str:
    """Jobs read the merged config (params.yaml + --configfile overlays) from one fixed path;
    rewritten only when its content changes."""
    path = Path(P.EFFECTIVE_CONFIG)
    text = json.dumps(config, sort_keys=True, indent=1)
    if not path.exists() or path.read_text() != text:
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    return str(path)


CONFIG = _write_effective_config()


def job_params(phase, **override):
    """A rule's params: the params keys its phase reads (from the registry), the phase's code
    hash, per-job overrides, the effective-config path the job reads, and its named files."""
    return rule_params(config, phase, cfg=CONFIG, io=named_io, **override)


def named_io(wildcards, input, output):
    """`--in NAME PATH... --out NAME PATH... --wildcard K=V`: every input and output of the job by
    the name its rule gives it, so stage code asks for a file by name and never builds a path."""
    parts = []
    for flag, files in (("--in", input), ("--out", output)):
        named = list(files.items())
        if sum(1 if isinstance(v, str) else len(v) for _, v in named) != len(files):
            raise ValueError(f"unnamed {flag[2:]}put(s) in {list(files)}: a stage job gets every file by name")
        for name, value in named:
            paths = [value] if isinstance(value, str) else list(value)
            parts.append(" ".join([flag, name] + [shlex.quote(str(p)) for p in paths]))
    parts += [f"--wildcard {shlex.quote(f'{k}={v}')}" for k, v in wildcards.items()]
    return " ".join(parts)


def stage(step, threads=None):
    """A rule's shell command: one `librarm stage` step with the job's named files and its log.
    A failing job shows its log's last lines (the one-line error) in Snakemake's own output.
    `threads`: the job's compute threads when the rule has more than one. Snakemake lowers a rule's
    `threads:` to --cores when that is smaller; passing the rule's own count instead keeps results
    (and the thread count their provenance records) the same on any --cores (oversubscribed then)."""
    count = threads if threads is not None else "{threads}"
    return (f"python -m librarm.cli stage {step} --config {{params.cfg}} {{params.io}} --threads {count}"
            " > {log} 2>&1 || (status=$?; tail -n 5 {log} >&2; exit $status)")


def UNUSED(*dotted):
    """Params keys of a phase that one of its rules does not read: left out of that rule's params,
    so editing them does not rerun it."""
    from librarm.phases import param_name

    return {param_name(k): None for k in dotted}


def rule_env(backends=()):
    """The conda env file for a rule: GPU inference when a job of it uses a backend that runs in
    the vLLM environment (engines registry)."""
    return "../envs/gpu-inference.yaml" if any(engines.get(b).vllm_env for b in backends) else "../envs/cpu.yaml"


SAMPLE_ENV = rule_env({g.backend for g in PARAMS.generators.values()})


def train_env(phase):
    """Training jobs on GPUs (launch.gpus_per_process > 0) use the CUDA training env (torch,
    accelerate, TRL), with vLLM when the phase's jobs decode through it (GRPO rollouts, DPO
    validation); on the CPU a vLLM job re-runs itself under LIBRARM_VLLM_PYTHON."""
    if not TRAIN_GPUS:
        return "../envs/cpu.yaml"
    vllm = any(engines.get(b).vllm_env for b in phase_backends(config, phase))
    return "../envs/gpu-train-vllm.yaml" if vllm else "../envs/gpu-train.yaml"


TRAIN_ENV = train_env("train")
DPO_ENV = train_env("dpo")
EVAL_ENV = rule_env({PARAMS.judges[j].backend for j in JUDGES})


def any_regex(names):
    """Wildcard constraint matching exactly these names (never matches when empty)."""
    return "|".join(re.escape(n) for n in names) if names else "(?!x)x"


def generator_model(wildcards):
    spec = PARAMS.generators[wildcards.generator]
    return engines.model_dirs(PARAMS.models, spec)


def judge_model(wildcards):
    return local_model_dirs(PARAMS.models, [PARAMS.judges[wildcards.judge].model])


def train_inputs(wildcards):
    kind = PARAMS.models[wildcards.model].train
    data = {"train": P.JUDGE_TRAIN, "val": P.JUDGE_VAL, "sft": []}
    if kind in ("sft", "nothink"):
        data["sft"] = P.RS_SFT
    if kind == "rl" and PARAMS.rl.items == "pool":
        data["train"] = P.JUDGE_RL_POOL
    data["init"] = local_model_dirs(PARAMS.models, [call(training_start, PARAMS, wildcards.model)])
    return data


def threshold_split(wildcards):
    """A scalar RM's threshold is chosen on labeled items that are not the bench."""
    if PARAMS.judges[wildcards.judge].kind == "scalar":
        return [PARAMS.evaluate.threshold_split]
    return []


# ---------------------------------------------------------------- downstream (judge-labeled DPO)
DOWNSTREAM = PARAMS.pairs is not None
if DOWNSTREAM:
    from librarm.run.labelers import NONE_POLICY, all_policies, curve_policies, downstream_policies, labeler_kind, policy_runs

    LABELERS = list(PARAMS.pairs.labelers)
    JUDGE_LABELERS = [l for l in LABELERS if labeler_kind(l, PARAMS.judges) == "judge"]
    # A DPO policy per labeler (on its budget of pairs), the gold curve (curve/gold-<n>) and, for
    # raw_labelers, one more on all the labeler's pairs (raw/<labeler>).
    DPO_POLICIES = downstream_policies(PARAMS.pairs)
    CURVE_POLICIES = curve_policies(PARAMS.pairs)
    DPO_SEEDS = [int(s) for s in PARAMS.dpo.seeds]
    POLICIES = all_policies(PARAMS.pairs)
    POLICY_EVAL_SETS = list(PARAMS.evaluate_policy.subsets)
    DPO_POOL = PARAMS.pairs.pool
else:
    LABELERS = JUDGE_LABELERS = DPO_POLICIES = CURVE_POLICIES = DPO_SEEDS = POLICIES = POLICY_EVAL_SETS = []


def policy_eval_model(wildcards):
    """The policy folder one evaluation run scores: the DPO run's model, or the base policy's
    folder when the pipeline makes it (a hub policy is not a file: the stage reads pairs.policy)."""
    if wildcards.policy == NONE_POLICY:
        return local_model_dirs(PARAMS.models, [PARAMS.pairs.policy])
    return [P.DPO_MODEL.format(policy=wildcards.policy, seed=wildcards.run.removeprefix("seed-"))]
