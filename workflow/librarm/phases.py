"""The one registry of the DAG's phases: what each reads (params keys, code, upstream outputs)
and writes. dvc.yaml is generated from it, Snakemake rules take their params from it, and a test
checks both against what Snakemake actually builds."""
from __future__ import annotations

import ast
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from librarm.run import paths as P
from librarm.run.paths import REPO_ROOT
from librarm.run.settings import EvaluateSettings, Generators, Judges, PairsSettings, RlSettings, RsSettings, call

PKG = "workflow/librarm"
# Code every phase depends on beyond its import closure: the registry itself (rule params, code
# hashes). The CLI dispatcher is not: it only maps a step to its function (cli.STEPS).
COMMON_CODE = ("phases.py",)


def package_modules(root: Path = REPO_ROOT) -> dict[str, Path]:
    """Every module of the package by its dotted name under librarm ("cli", "run.io", "engines"
    for engines/__init__.py) -> its file."""
    base = root / PKG
    out = {}
    for p in sorted(base.rglob("*.py")):
        parts = p.relative_to(base).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            out[".".join(parts)] = p
    return out


def module_file(module: str) -> str:
    """A module's file relative to the package folder: run.io -> run/io.py, engines -> engines/__init__.py."""
    return (module.replace(".", "/") + "/__init__.py") if module in _PACKAGES else module.replace(".", "/") + ".py"


_PACKAGES = ("engines", "judging", "run", "stages")


def module_imports(module: str, root: Path = REPO_ROOT, modules: Mapping[str, Path] | None = None) -> set[str]:
    """The package modules one module imports, at top level or inside functions (most of this
    package's imports sit inside functions, to keep heavy libraries out of start-up). Absolute
    imports only (`from librarm.run.io import ...`, `from librarm.run import paths`): the package
    uses no relative ones. `modules`: package_modules(root), when the caller holds it."""
    modules = package_modules(root) if modules is None else modules
    out: set[str] = set()
    for parent, names in _librarm_imports(modules[module]):
        if names is None:
            out.add(parent)
        for name in names or ():
            sub = f"{parent}.{name}" if parent else name
            out.add(sub if sub in modules else parent)
    # importing a.b.c runs a/__init__ and a/b/__init__ too
    out |= {".".join(m.split(".")[:i]) for m in set(out) for i in range(1, m.count(".") + 1)}
    return (out & set(modules)) - {module}


def _librarm_imports(path: Path) -> tuple[tuple[str, tuple[str, ...] | None], ...]:
    """(module under librarm, imported names or None for `import librarm.x`) for each import of
    the package in a file. Every Snakemake start computes the code hashes of every rule, so each
    file is parsed once per process and content (a file edited in place is parsed again)."""
    stat = path.stat()
    return _parsed_imports(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=None)
def _parsed_imports(path: str, mtime_ns: int, size: int) -> tuple[tuple[str, tuple[str, ...] | None], ...]:
    out = []
    statements = list(ast.parse(Path(path).read_text()).body)
    while statements:
        node = statements.pop()
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "librarm" and not node.level:
            out.append((node.module.removeprefix("librarm").lstrip("."), tuple(a.name for a in node.names)))
        elif isinstance(node, ast.Import):
            out += [(a.name.removeprefix("librarm."), None) for a in node.names if a.name.startswith("librarm.")]
        # an import is a statement: descend only into statement blocks (functions, classes,
        # if/for/while/with/try/match), not into the expressions that make up most of a tree
        for block in ("body", "orelse", "finalbody", "handlers", "cases"):
            for child in getattr(node, block, None) or ():
                statements.append(child)
    return tuple(out)


@functools.lru_cache(maxsize=None)
def import_closure(modules: tuple[str, ...], root: Path = REPO_ROOT) -> tuple[str, ...]:
    """Every package module reachable from `modules` by imports: a phase's code dependencies."""
    files = package_modules(root)
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(module_imports(m, root, files) - seen)
    return tuple(sorted(seen))


@dataclass(frozen=True)
class Phase:
    name: str
    target: str                       # the phase's summary file: Snakemake target and DVC metric
    out: str                          # the DVC output folder (every rule of the phase writes under it)
    params: tuple[str, ...]           # params.yaml keys (dotted) the phase reads
    entry: tuple[str, ...]            # librarm modules holding the phase's entry functions
    upstream: tuple[str, ...] = ()    # phases whose outputs it reads
    rules_file: str = ""
    optional: str | None = None       # params section that switches the phase on (None: always on)
    steps: tuple[str, ...] = ()       # its `librarm stage` steps (cli.STEPS names each one's function)

    @property
    def code(self) -> tuple[str, ...]:
        """The phase's code: the import closure of its entry modules (computed, never listed)."""
        return tuple(module_file(m) for m in import_closure(self.entry))

    @property
    def code_files(self) -> list[str]:
        return [f"{PKG}/{m}" for m in sorted(set(self.code) | set(COMMON_CODE))]


PHASES: dict[str, Phase] = {p.name: p for p in (
    Phase("problems", P.PROBLEMS_STATS, P.PROBLEMS, ("seed", "problems"),
          ("stages.problems",), (), "rules/problems.smk", steps=("problems",)),
    Phase("bootstrap", P.BOOTSTRAP_STATS, P.BOOTSTRAP,
          ("seed", "problems", "models", "bootstrap", "judge.prompt_template", "judge.system_prompt",
           "judge.max_prompt_tokens", "judge.overflow"),
          ("stages.bootstrap_tiny", "stages.bootstrap_gguf"), ("problems",), "rules/bootstrap.smk",
          steps=("bootstrap-tiny", "prepare-model", "bootstrap-stats")),
    Phase("sample", P.SAMPLES_STATS, P.SAMPLES, ("seed", "models", "generators", "sampling"),
          ("stages.sample",), ("problems", "bootstrap"), "rules/sample.smk", steps=("sample", "sample-stats")),
    Phase("verify", P.VERIFY_STATS, P.VERIFY, ("verify",),
          ("stages.verify",), ("problems", "sample"), "rules/verify.smk", steps=("verify", "verify-stats")),
    Phase("bench", P.BENCH_STATS, P.BENCH, ("seed", "bench", "problems", "stress"),
          ("stages.bench",), ("verify",), "rules/bench.smk", steps=("bench",)),
    Phase("judge_data", P.JUDGE_DATA_STATS, P.JUDGE_DATA, ("seed", "judge_data", "problems"),
          ("stages.train",), ("problems", "verify"), "rules/train.smk", optional="judge_data", steps=("judge-data",)),
    Phase("rs", P.RS_STATS, P.RS, ("seed", "rs", "judge", "judges", "models", "sampling", "sft.init"),
          ("stages.train",), ("judge_data", "verify", "bootstrap"),
          "rules/train.smk", optional="rs", steps=("rs",)),
    Phase("train", P.TRAIN_STATS, P.TRAIN, ("seed", "sft", "rl", "scalar_rm", "judge", "models", "launch"),
          ("stages.train",),
          ("rs", "judge_data", "bootstrap"), "rules/train.smk", optional="judge_data", steps=("train", "train-stats")),
    Phase("evaluate", P.EVAL_SUMMARY, P.EVAL,
          ("seed", "models", "judges", "judge", "evaluate", "compare", "judge_data.exclude_generators"),
          ("stages.evaluate",),
          ("bench", "bootstrap", "train", "judge_data"), "rules/evaluate.smk", steps=("evaluate", "eval-summary")),
    Phase("pairs", P.PAIRS_STATS, P.PAIRS,
          ("seed", "pairs", "models", "judges", "judge", "evaluate.threshold_split", "evaluate.scalar_batch_size",
           "sampling", "verify"),
          ("stages.downstream", "stages.evaluate", "stages.verify"),
          ("problems", "bootstrap", "train", "judge_data"), "rules/downstream.smk", optional="pairs",
          steps=("pairs-split", "pairs-sample", "pairs-verify", "pairs-label", "pairs-build")),
    Phase("dpo", P.DPO_STATS, P.DPO,
          ("seed", "dpo", "sampling", "evaluate_policy", "verify", "pairs.labelers", "pairs.raw_labelers",
           "pairs.budget", "pairs.gold_curve", "pairs.policy", "pairs.backend", "pairs.engine", "models", "launch"),
          ("stages.dpo",),
          ("pairs", "bootstrap"), "rules/downstream.smk", optional="pairs", steps=("dpo", "dpo-stats")),
    Phase("evaluate_policy", P.DOWNSTREAM_SUMMARY, P.DOWNSTREAM,
          ("seed", "evaluate_policy", "sampling", "verify", "pairs.labelers", "pairs.raw_labelers", "pairs.gold_curve",
           "pairs.backend", "pairs.engine", "pairs.policy", "models", "dpo.seeds", "report.permutations"),
          ("stages.downstream", "stages.verify"),
          ("problems", "bootstrap", "pairs", "dpo"), "rules/downstream.smk", optional="pairs",
          steps=("policy-eval", "policy-metrics", "downstream-summary")),
    # the model cards read models, judges, pairs.policy, rl.items and dpo (what each model starts
    # from and trains on) and name the judge_data files the judges train on
    Phase("report", P.REPORT_METRICS, P.REPORT,
          ("seed", "report", "pairs.labelers", "pairs.gold_curve", "pairs.raw_labelers", "pairs.policy", "dpo",
           "evaluate.judges", "compare.pairs", "models", "judges", "rl.items"),
          ("stages.report", "stages.replicates"),
          ("verify", "bench", "evaluate", "judge_data", "train", "rs", "pairs", "dpo", "evaluate_policy"),
          "rules/report.smk", optional="pairs", steps=("report", "replicates")),
)}

# Every `librarm stage` step and the phase it belongs to (the CLI's step -> phase map).
STEP_PHASE: dict[str, str] = {step: p.name for p in PHASES.values() for step in p.steps}


def active_phases(config: Mapping[str, Any]) -> list[Phase]:
    """Phases this config runs (the learning-to-think phases need their params sections)."""
    return [p for p in PHASES.values() if p.optional is None or config.get(p.optional)]


def declared_params(config: Mapping[str, Any], phase: str) -> dict[str, Any]:
    """The values of the params keys a phase reads (dotted key -> value; None when absent): its
    rules' params, its dvc.yaml params and its jobs' MLflow params."""
    out = {}
    for dotted in PHASES[phase].params:
        cur: Any = config
        for part in dotted.split("."):
            cur = cur.get(part) if isinstance(cur, Mapping) else None
        out[dotted] = cur
    return out


def param_name(dotted: str) -> str:
    """Snakemake params names cannot hold dots: judge.prompt_template -> judge__prompt_template."""
    return dotted.replace(".", "__")


def phase_backends(config: Mapping[str, Any] | None, phase: str) -> set[str]:
    """The backends a phase's jobs run under these params (every built-in one when config is None:
    DVC's static deps). Only the phases that sample or judge use any."""
    from librarm import engines

    if phase not in ENGINE_SPECS:
        return set()
    if config is None:
        return set(engines.BUILTIN)
    return {b for b in call(ENGINE_SPECS[phase], config) if b}


def _sample_backends(*, generators: Generators) -> set[str]:
    return {g.backend for g in generators.values()}


def _rs_backends(*, rs: RsSettings | None, judges: Judges) -> set[str]:
    return {judges[rs.teacher].backend} if rs and rs.teacher in judges else set()


def _evaluate_backends(*, evaluate: EvaluateSettings, judges: Judges) -> set[str]:
    return {judges[j].backend for j in evaluate.judges if j in judges}


def _pairs_backends(*, pairs: PairsSettings | None, judges: Judges) -> set[str]:
    if pairs is None:
        return set()
    return {pairs.backend} | {judges[name].backend for name in pairs.labelers if name in judges}


def _policy_backends(*, pairs: PairsSettings | None) -> set[str]:
    return {pairs.backend} if pairs else set()


def _dpo_backends(*, pairs: PairsSettings | None) -> set[str]:
    # validation decodes saved weights on pairs.backend when it loads them, else the live policy on
    # hf (the phase's own code)
    from librarm import engines

    if pairs is None or pairs.backend not in engines.names() or not engines.get(pairs.backend).loads_saved_weights:
        return set()
    return {pairs.backend}


def _train_backends(*, rl: RlSettings | None) -> set[str]:
    # the hf sampler is the train phase's own code; another backend decodes GRPO's rollouts
    return {rl.rollout_backend} - {"hf"} if rl else set()


# phase -> the backends its jobs use (generators, judges, the policy's engine), from the sections named
ENGINE_SPECS = {"sample": _sample_backends, "rs": _rs_backends, "evaluate": _evaluate_backends,
                "pairs": _pairs_backends, "evaluate_policy": _policy_backends, "train": _train_backends,
                "dpo": _dpo_backends}


def backend_files(backends: set[str]) -> list[str]:
    """The package files of these backends (a backend registered by a call has none here)."""
    from librarm import engines

    return sorted(f"{PKG}/{engines.module_of(b)}.py" for b in backends if engines.module_of(b))


def code_files(phase: str, backends: set[str] | None = None) -> list[str]:
    """A phase's code: its import closure, the registry, and the modules of the backends it uses
    (phase_backends; None: every built-in one)."""
    if backends is None:
        backends = phase_backends(None, phase)
    return sorted(set(PHASES[phase].code_files) | set(backend_files(backends)))


def code_hash(phase: str, root: Path = REPO_ROOT, backends: set[str] | None = None) -> str:
    """Hash of the phase's module sources: a Snakemake param, so editing a module reruns the phase
    (DVC sees the same files as deps; with every backend's, being static)."""
    h = hashlib.sha256()
    for f in code_files(phase, backends):
        h.update(f.encode())
        h.update((root / f).read_bytes())
    return h.hexdigest()[:16]


def rule_params(config: Mapping[str, Any], phase: str, **override) -> dict[str, Any]:
    """The `params:` of a phase's rules: each params key it reads, plus the code hash."""
    out = {param_name(k): _constant(v) for k, v in declared_params(config, phase).items()}
    out["code"] = code_hash(phase, backends=phase_backends(config, phase))
    out.update(override)
    return out


def _constant(value: Any):
    # A function, so that Snakemake does not expand "{...}" inside string values (prompt templates).
    return lambda wildcards: value


def dvc_stages() -> dict[str, Any]:
    stages = {}
    for p in PHASES.values():
        deps = ["Snakefile", "rules/common.smk", p.rules_file] + code_files(p.name)
        deps += [PHASES[u].out for u in p.upstream]
        stages[p.name] = {
            "cmd": f"snakemake --cores all {p.target}",
            "deps": deps,
            "params": list(p.params),
            # persist: DVC must not delete a phase's folder before running Snakemake on it, or a
            # `dvc repro` right after a `snakemake` run would recompute everything.
            "outs": [{p.out: {"persist": True}}],
        }
    return stages


def out_paths(stage: Mapping[str, Any]) -> list[str]:
    """A dvc.yaml stage's output paths (entries are plain paths or {path: options})."""
    return [o if isinstance(o, str) else next(iter(o)) for o in stage.get("outs", [])]


def dvc_plots() -> list[dict]:
    """`dvc plots show` definitions: each curve folder of the report (one CSV per series, so the
    definitions do not depend on which models a params file names) and the report's PNG plots."""
    from librarm.stages.report import CURVES, PLOT_IMAGES

    out: list[Any] = [{f"{P.REPORT_CURVES}/{name}": {"x": "step", "y": key, "title": title}}
                      for name, _kind, key, title in CURVES]
    out.append({f"{P.REPORT_CURVES}/dpo_loss": {"x": "step", "y": "loss", "title": "DPO loss (budget pairs)"}})
    # libra_score.png: the judges' Libra scores with intervals (librarm.stages.report_pages)
    return out + [f"{P.REPORT}/{img}" for img in PLOT_IMAGES] + [f"{P.REPORT}/libra_score.png"]


def render_dvc_yaml() -> str:
    doc = {
        "stages": dvc_stages(),
        # Only the report's headline is a DVC metric: registering every stats file made `dvc
        # metrics show` one row of hundreds of columns. The stats files stay stage outputs.
        "metrics": [PHASES["report"].target],
        "plots": dvc_plots(),
    }
    header = ("# GENERATED from workflow/librarm/phases.py by `librarm dvc-yaml`; do not edit by hand.\n"
              "# One DVC stage per phase; each runs Snakemake on the phase's target.\n")
    return header + yaml.safe_dump(doc, sort_keys=False, width=120)


def check_dvc_yaml(path: str | Path = "dvc.yaml") -> list[str]:
    """Differences between the committed dvc.yaml and the registry ([] when they agree)."""
    want = yaml.safe_load(render_dvc_yaml())
    have = yaml.safe_load(Path(path).read_text())
    problems = []
    for name in sorted(set(want["stages"]) | set(have.get("stages", {}))):
        w, h = want["stages"].get(name), have.get("stages", {}).get(name)
        if w is None or h is None:
            problems.append(f"stage {name}: {'missing in dvc.yaml' if h is None else 'not in the registry'}")
            continue
        for key in ("cmd", "deps", "params", "outs"):
            norm = lambda v: sorted(json.dumps(x, sort_keys=True) for x in v) if isinstance(v, list) else v  # noqa: E731
            if norm(w[key]) != norm(h.get(key, [])):
                problems.append(f"stage {name}: {key} differ: registry {w[key]!r} vs dvc.yaml {h.get(key)!r}")
    if sorted(want["metrics"]) != sorted(have.get("metrics", [])):
        problems.append("metrics differ")
    if want.get("plots") != have.get("plots"):
        problems.append("plots differ (run `librarm dvc-yaml`)")
    return problems
