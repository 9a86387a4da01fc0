# Shared by every rule: config validation, the effective-config file the jobs read, and the
# lists of files derived from params (never directory globs).
import json
import os
import re
import sys
from pathlib import Path

from librarm.config import MODELS_DIR, local_model_dirs, prune_removed, sets_by_role, validate_params
from librarm.io import atomic_path
from librarm.phases import PHASES, active_phases, rule_params
from librarm.tracking import flush_at_end

prune_removed(config)
validate_params(config, source="params.yaml (+ --configfile overlays)")

PHASE_TARGETS = [p.target for p in active_phases(config)]
SET_NAMES = [s["name"] for s in config["problems"]["sets"]]
EVAL_SUBSETS = sets_by_role(config, "eval")
LEARNING = bool(config.get("judge_data"))
JUDGE_POOL = config["judge_data"]["pool"] if LEARNING else None
# Generators sample the eval subsets, and the judge pool when the judge is trained.
SAMPLED_SUBSETS = EVAL_SUBSETS + ([JUDGE_POOL] if LEARNING else [])
TRAIN_GENERATORS = [g for g in config["generators"] if g not in (config.get("judge_data") or {}).get("exclude_generators", [])]
TRAINED_MODELS = [m for m, s in config["models"].items() if s["source"] == "trained"]
GENERATORS = list(config["generators"])
JUDGES = list(config["evaluate"]["judges"])
TINY_MODELS = [m for m, s in config["models"].items() if s["source"] == "tiny"]
GGUF_MODELS = [m for m, s in config["models"].items() if s["source"] == "gguf"]


def _write_effective_config() -> str:
    """Jobs read the merged config (params.yaml + --configfile overlays) from one fixed path;
    rewritten only when its content changes."""
    path = Path("results/.config/effective.json")
    text = json.dumps(config, sort_keys=True, indent=1)
    if not path.exists() or path.read_text() != text:
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    return str(path)


CONFIG = _write_effective_config()


def job_params(phase, **override):
    """A rule's params: the params keys its phase reads (from the registry), the phase's code
    hash, per-job overrides, and the effective-config path the job reads."""
    return rule_params(config, phase, cfg=CONFIG, **override)


def UNUSED(*dotted):
    """Params keys of a phase that one of its rules does not read: left out of that rule's params,
    so editing them does not rerun it."""
    from librarm.phases import param_name

    return {param_name(k): None for k in dotted}


def rule_env(backends=()):
    """The conda env file for a rule: GPU inference when a job of it uses vLLM."""
    return "../envs/gpu-inference.yaml" if "vllm" in backends else "../envs/cpu.yaml"


SAMPLE_ENV = rule_env({g["backend"] for g in config["generators"].values()})
EVAL_ENV = rule_env({config["judges"][j]["backend"] for j in JUDGES})


def any_regex(names):
    """Wildcard constraint matching exactly these names (never matches when empty)."""
    return "|".join(re.escape(n) for n in names) if names else "(?!x)x"


def generator_model(wildcards):
    spec = config["generators"][wildcards.generator]
    return local_model_dirs(config, [spec["model"]]) if spec["backend"] != "pseudo" else []


def judge_model(wildcards):
    return local_model_dirs(config, [config["judges"][wildcards.judge]["model"]])


def train_inputs(wildcards):
    spec = config["models"][wildcards.model]
    data = {"train": "results/judge_data/train.jsonl", "val": "results/judge_data/val.jsonl"}
    if spec["train"] in ("sft", "nothink"):
        data["sft"] = "results/rs/sft.jsonl"
        init = config["sft"].get("init", "judge_base")
    elif spec["train"] == "rl":
        init = config["rl"]["variants"][wildcards.model]["init"]
    else:
        init = config["scalar_rm"]["init"]
    data["init"] = local_model_dirs(config, [init])
    return data


def threshold_split(wildcards):
    """A scalar RM's threshold is chosen on labeled items that are not the bench."""
    if config["judges"][wildcards.judge]["kind"] == "scalar":
        return [config["evaluate"]["threshold_split"]]
    return []


# ---------------------------------------------------------------- downstream (judge-labeled DPO)
DOWNSTREAM = bool(config.get("pairs"))
if DOWNSTREAM:
    from librarm.labelers import NONE_POLICY, curve_policies, downstream_policies, labeler_kind

    LABELERS = list(config["pairs"]["labelers"])
    JUDGE_LABELERS = [l for l in LABELERS if labeler_kind(l, config["judges"]) == "judge"]
    # A DPO policy per labeler (on its budget of pairs), the gold curve (curve/gold-<n>) and, for
    # raw_labelers, one more on all the labeler's pairs (raw/<labeler>).
    DPO_POLICIES = downstream_policies(config["pairs"])
    CURVE_POLICIES = curve_policies(config["pairs"])
    DPO_SEEDS = [int(s) for s in config["dpo"]["seeds"]]
    POLICIES = [NONE_POLICY] + DPO_POLICIES
    POLICY_EVAL_SETS = list(config["evaluate_policy"]["subsets"])
    DPO_POOL = config["pairs"]["pool"]
else:
    LABELERS = JUDGE_LABELERS = DPO_POLICIES = CURVE_POLICIES = DPO_SEEDS = POLICIES = POLICY_EVAL_SETS = []


def policy_runs(policy):
    """Evaluation runs of a policy: one per DPO seed; the base policy has one ("base")."""
    return ["base"] if policy == NONE_POLICY else [f"seed-{s}" for s in DPO_SEEDS]


def policy_eval_model_path(wildcards):
    """The folder (or hub id) of the policy one evaluation run scores."""
    if wildcards.policy == NONE_POLICY:
        from librarm.config import model_ref

        return model_ref(config, config["pairs"]["policy"])["path"]
    return f"results/dpo/{wildcards.policy}/{wildcards.run}/model"


def policy_eval_model(wildcards):
    """The same as an input: only folders the pipeline makes (a hub policy is not a file)."""
    if wildcards.policy == NONE_POLICY:
        return local_model_dirs(config, [config["pairs"]["policy"]])
    return [policy_eval_model_path(wildcards)]
