# Shared by every rule: config validation, the effective-config file the jobs read, and the
# lists of files derived from params (never directory globs).
import json
import os
import re
import sys
from pathlib import Path

from librarm.config import MODELS_DIR, local_model_dirs, prune_removed, sets_by_role, validate_params
from librarm.io import atomic_path
from librarm.phases import PHASES, rule_params
from librarm.tracking import ensure_pipeline_run

prune_removed(config)
validate_params(config, source="params.yaml (+ --configfile overlays)")

PHASE_TARGETS = [p.target for p in PHASES.values()]
SET_NAMES = [s["name"] for s in config["problems"]["sets"]]
EVAL_SUBSETS = sets_by_role(config, "eval")
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
