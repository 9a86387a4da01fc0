"""params.yaml: loading, preset overlays, schema validation and cross-reference checks."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from librarm import engines
from librarm.run.launch import batch_problems
from librarm.run.paths import PRESETS_DIR, SCHEMA_PATH
from librarm.run.settings import (
    BootstrapSettings,
    CompareSettings,
    DpoSettings,
    EngineSpec,
    EvaluatePolicySettings,
    EvaluateSettings,
    Generators,
    JudgeDataSettings,
    Judges,
    Models,
    PairsSettings,
    Params,
    ProblemsSettings,
    ReportSettings,
    RlSettings,
    RsSettings,
    ScalarRmSettings,
    SettingsError,
    SftSettings,
    StressSettings,
    call,
    stress_template_problems,
)


class ConfigError(ValueError):
    """params.yaml is invalid; the message names the key."""


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict:
    """Overlay dicts recursively (lists and scalars are replaced), like Snakemake's --configfile."""
    out = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if value is None and isinstance(out.get(key), Mapping):
            out.pop(key)          # `key: null` in an overlay removes a registry entry
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


OPTIONAL_SECTIONS = ("judge_data", "rs", "sft", "rl", "scalar_rm", "compare", "pairs", "dpo", "evaluate_policy", "report")


def prune_removed(params: dict) -> dict:
    """Snakemake merges --configfile overlays itself and keeps `name: null` entries; drop them
    from the registries so that an overlay can remove a model, generator or judge."""
    for section in OPTIONAL_SECTIONS:
        if section in params and params[section] is None:
            del params[section]       # `pairs: null` switches the downstream phases off
    registries = [params.get(s) for s in ("models", "generators", "judges")]
    registries.append(params.get("rl", {}).get("variants") if isinstance(params.get("rl"), dict) else None)
    for reg in registries:
        if isinstance(reg, dict):
            for key in [k for k, v in reg.items() if v is None]:
                del reg[key]
    return params


def preset_path(name: str) -> Path:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(known)}")
    return path


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content; a syntax error becomes a ConfigError located as file:line:col."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context = getattr(exc, "context", None)
        cmark = getattr(exc, "context_mark", None)
        if context and cmark and mark and cmark.line != mark.line:
            context += f" that starts at line {cmark.line + 1}"
        raise ConfigError(f"{where}: YAML syntax error: {problem}" + (f" ({context})" if context else "")) from None


def load_params(path: str | Path = "params.yaml", presets: Iterable[str] = (),
                overlays: Iterable[Mapping] = ()) -> dict:
    """Load params.yaml, apply presets then explicit overlays, validate, return the dict."""
    path = Path(path)
    params = read_yaml(path)
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping of params sections, got {type(params).__name__}")
    for name in presets:
        params = deep_merge(params, read_yaml(preset_path(name)) or {})
    for overlay in overlays:
        params = deep_merge(params, overlay)
    validate_params(params, source=str(path))
    return params


def _key_path(error) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "<top level>"


def validate_params(params: Mapping[str, Any], source: str = "params") -> None:
    """Schema validation, then checks that names refer to things that exist."""
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    # the schema lists the built-in backends (a test keeps it equal to engines.BUILTIN); a backend
    # registered by a call (engines.register) is valid too
    schema["$defs"]["backend"]["enum"] = engines.names()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors[:10]:
            key = _key_path(err)
            if err.validator == "additionalProperties":
                lines.append(f"{key}: {err.message} (unknown key)")
            else:
                lines.append(f"{key}: {err.message}")
        raise ConfigError(f"{source} is invalid:\n  " + "\n  ".join(lines))
    try:
        typed = Params.from_dict(params)           # the typed sections' own checks (settings.py)
    except SettingsError as exc:
        raise ConfigError(f"{source} is invalid:\n  {exc}") from None
    problems = [line for check in CROSS_CHECKS for line in call(check, typed)]
    if problems:
        raise ConfigError(f"{source} is invalid:\n  " + "\n  ".join(problems))


def check_replicates(*, report: ReportSettings | None, evaluate: EvaluateSettings, pairs: PairsSettings | None,
                     compare: CompareSettings | None) -> list[str]:
    """Config problems of report.replicates, one line each (config.validate_params reports them)."""
    rep = report.replicates if report else {}
    judges = set(evaluate.judges)
    labelers = set(pairs.labelers) if pairs else set()
    problems, seen = [], {}
    for g, members in rep.items():
        for m in members:
            if m not in judges:
                problems.append(f"report.replicates.{g}: {m!r} is not in evaluate.judges")
            if m in seen:
                problems.append(f"report.replicates.{g}: {m!r} is also in group {seen[m]!r}")
            seen[m] = g
        if labelers & set(members) and not set(members) <= labelers:
            problems.append(f"report.replicates.{g}: some members are pairs.labelers and some are not "
                            f"({sorted(set(members) - labelers)} are not)")
        if g not in members and g in judges:
            problems.append(f"report.replicates.{g}: the group is named after judge {g!r}, which is not a member")
    sizes = {**{j: 1 for j in judges}, **{g: len(m) for g, m in rep.items()}}
    for a, b in (compare.pairs if compare else ()):
        na, nb = sizes.get(a, 1), sizes.get(b, 1)
        if na != nb and 1 not in (na, nb):
            problems.append(f"compare.pairs [{a}, {b}]: {na} and {nb} seeds cannot be paired (equal counts or one)")
    return problems


def _check_problem_sets(*, problems: ProblemsSettings, stress: StressSettings | None) -> list[str]:
    """Problem sets that cannot be loaded or named, and stress templates that cannot work."""
    out: list[str] = []
    names = problems.names()
    for dup in sorted({n for n in names if names.count(n) > 1}):
        out.append(f"problems.sets: duplicate set name {dup!r}")
    if not problems.names("eval"):
        out.append("problems.sets: at least one set needs role 'eval'")
    if stress:
        out += stress_template_problems(stress)
    for i, s in enumerate(problems.sets):
        key = f"problems.sets.{i}"
        if s.source == "synthetic":
            for need in ("n", "steps"):
                if getattr(s, need) is None:
                    out.append(f"{key}.{need}: required for source 'synthetic'")
        elif s.source == "jsonl" and s.path is None:
            out.append(f"{key}.path: required for source 'jsonl'")
        elif s.source == "hf":
            for need in ("hf_id", "revision"):
                if getattr(s, need) is None:
                    out.append(f"{key}.{need}: required for source 'hf' (pin a revision)")
    return out


def _check_models_and_engines(*, models: Models, generators: Generators, judges: Judges, evaluate: EvaluateSettings,
                              bootstrap: BootstrapSettings | None) -> list[str]:
    """What refers to a model, judge or backend that does not exist, or misses a key its kind needs."""
    problems: list[str] = []
    for name, m in models.items():
        key = f"models.{name}"
        if m.source == "hub" and (m.id is None or m.revision is None):
            problems.append(f"{key}: source 'hub' needs 'id' and a pinned 'revision'")
        if m.source == "gguf" and (m.package is None or m.gguf_file is None):
            problems.append(f"{key}: source 'gguf' needs 'package' and 'gguf_file'")
        if m.source == "path" and m.path is None:
            problems.append(f"{key}.path: required for source 'path'")
        if m.source == "tiny" and m.role in ("generator", "policy") and m.step_noise is None:
            problems.append(f"{key}.step_noise: required for a tiny {m.role}")
        if m.source == "tiny" and m.role == "judge" and m.init not in models:
            problems.append(f"{key}.init: must name a model in 'models', got {m.init!r}")
    if any(m.source == "tiny" for m in models.values()) and bootstrap is None:
        problems.append("bootstrap: required when a model has source 'tiny'")
    for section, registry in (("generators", generators), ("judges", judges)):
        for name, g in registry.items():
            if g.backend in engines.names() and engines.get(g.backend).needs_model and g.model not in models:
                problems.append(f"{section}.{name}.model: {g.model!r} is not a key of 'models'")
                continue
            _check_engine(g, f"{section}.{name}", "backend", problems)
    for j in evaluate.judges:
        if j not in judges:
            problems.append(f"evaluate.judges: {j!r} is not a key of 'judges'")
    return problems


def _check_engine(g: EngineSpec, where: str, backend_key: str, problems: list[str]) -> None:
    """What an engine's backend needs (the backend's own check, engines registry): a generator's or
    judge's (where: its registry key), or the policy's (where: pairs.engine, its backend in pairs.backend)."""
    if g.backend not in engines.names():
        problems.append(f"{where if backend_key == 'backend' else 'pairs'}.{backend_key.split('.')[-1]}: unknown backend "
                        f"{g.backend!r} (one of: {', '.join(engines.names())})")
        return
    problems.extend(engines.check(g, where))


def _cross_check_learning(*, models: Models, generators: Generators, judges: Judges, problems: ProblemsSettings,
                          evaluate: EvaluateSettings, judge_data: JudgeDataSettings | None, rs: RsSettings | None,
                          sft: SftSettings | None, rl: RlSettings | None, scalar_rm: ScalarRmSettings | None,
                          compare: CompareSettings | None) -> list[str]:
    """What the learning-to-think sections (judge_data, rs, sft, rl, scalar_rm) refer to that does not exist."""
    found: list[str] = []
    trained = {n: m for n, m in models.items() if m.source == "trained"}
    if trained and judge_data is None:
        found.append("judge_data: required when a model has source 'trained'")
    for n, m in trained.items():
        if m.train is None:
            found.append(f"models.{n}.train: required for source 'trained' (sft | nothink | rl | scalar)")
        elif m.train == "rl" and n not in (rl.variants if rl else {}):
            found.append(f"models.{n}: an rl model must be a key of rl.variants")
        elif m.train in ("sft", "nothink") and sft is None:
            found.append(f"models.{n}: section 'sft' is required")
        elif m.train == "scalar" and scalar_rm is None:
            found.append(f"models.{n}: section 'scalar_rm' is required")
    if judge_data is not None:
        jd = judge_data
        if jd.pool not in problems.names("judge_pool"):
            found.append(f"judge_data.pool: {jd.pool!r} is not a problem set with role 'judge_pool'")
        for g in jd.exclude_generators:
            if g not in generators:
                found.append(f"judge_data.exclude_generators: {g!r} is not a generator")
        if rs is not None and rs.teacher not in judges:
            found.append(f"rs.teacher: {rs.teacher!r} is not a key of 'judges'")
    for j, spec in judges.items():
        # a GRPO judge served by vLLM trains with vLLM rollouts, not the hf sampler's
        if rl and spec.model in rl.variants and spec.backend == "vllm" and rl.rollout_backend == "hf":
            found.append(f"rl.rollout_backend: 'hf', but judges.{j} runs GRPO model {spec.model!r} on vllm: its "
                         "rollouts would fall back to the hf sampler (set rl.rollout_backend: vllm and "
                         "rl.rollout_vllm_args)")
    for name in (rl.variants if rl else {}):
        init = rl.variant(name).init
        if name not in models:
            found.append(f"rl.variants.{name}: not a key of 'models'")
        if init not in models:
            found.append(f"rl.variants.{name}.init: {init!r} is not a key of 'models'")
    for name in (sft.variants if sft else {}):
        if name not in trained or trained[name].train not in ("sft", "nothink"):
            found.append(f"sft.variants.{name}: not a model with source 'trained' and train sft | nothink")
        init = sft.for_model(name).init
        if init not in models:
            found.append(f"sft.variants.{name}.init: {init!r} is not a key of 'models'")
        elif init == name:
            found.append(f"sft.variants.{name}.init: a model cannot start from itself")
    kinds = {m.train for m in trained.values()}
    for key, needed, section in (("sft", {"sft", "nothink"}, sft), ("scalar_rm", {"scalar"}, scalar_rm)):
        if kinds & needed and section is not None and section.init not in models:
            found.append(f"{key}.init: {section.init!r} is not a key of 'models'")
    for a, b in (compare.pairs if compare else ()):
        for j in (a, b):
            if j not in evaluate.judges:
                found.append(f"compare.pairs: {j!r} is not in evaluate.judges")
    for j, spec in judges.items():
        m = models.get(spec.model or "")
        if spec.kind == "scalar" and m is not None and m.train == "scalar" and scalar_rm is not None \
                and spec.input != scalar_rm.input:
            found.append(f"judges.{j}.input: {spec.input!r} differs from scalar_rm.input "
                            f"{scalar_rm.input!r}, which its model was trained on")
    if any(j in judges and judges[j].kind == "scalar" for j in evaluate.judges) \
            and not evaluate.threshold_split:
        found.append("evaluate.threshold_split: required when a scalar judge is evaluated")
    return found


def _cross_check_downstream(*, pairs: PairsSettings | None, dpo: DpoSettings | None,
                            evaluate_policy: EvaluatePolicySettings | None, problems: ProblemsSettings, models: Models,
                            judges: Judges, report: ReportSettings | None) -> list[str]:
    """What the downstream sections (pairs, dpo, evaluate_policy) refer to that does not exist."""
    if pairs is None:
        return []
    found: list[str] = []
    from librarm.run.labelers import NONE_POLICY, labeler_kind

    for section, value in (("dpo", dpo), ("evaluate_policy", evaluate_policy)):
        if value is None:
            found.append(f"{section}: required when 'pairs' is set (the downstream phases)")
    if pairs.pool not in problems.names("dpo_pool"):
        found.append(f"pairs.pool: {pairs.pool!r} is not a problem set with role 'dpo_pool'")
    if pairs.policy not in models:
        found.append(f"pairs.policy: {pairs.policy!r} is not a key of 'models'")
    _check_engine(pairs.policy_engine(), "pairs.engine", "pairs.backend", found)
    for i, name in enumerate(pairs.labelers):
        try:
            labeler_kind(name, judges)
        except ValueError as exc:
            found.append(f"pairs.labelers.{i}: {exc}")
    for name in pairs.raw_labelers:
        if name not in pairs.labelers:
            found.append(f"pairs.raw_labelers: {name!r} is not in pairs.labelers")
    if pairs.gold_curve and "gold" not in pairs.labelers:
        found.append("pairs.gold_curve: needs 'gold' in pairs.labelers")
    for n in pairs.gold_curve:
        if n >= pairs.budget:
            found.append(f"pairs.gold_curve: {n} is not below pairs.budget ({pairs.budget}); gold on the "
                            "budget is the `gold` policy itself")
    if NONE_POLICY in pairs.labelers:
        found.append(f"pairs.labelers: {NONE_POLICY!r} is reserved for the base policy")
    for s in (evaluate_policy.subsets if evaluate_policy else ()):
        if s not in problems.names("eval"):
            found.append(f"evaluate_policy.subsets: {s!r} is not a problem set with role 'eval'")
    for name in (report.fit_labelers if report else ()):
        if name not in pairs.labelers or name not in judges:
            found.append(f"report.fit_labelers: {name!r} must be a trained judge listed in pairs.labelers")
    return found


# Every cross-reference check, each given the sections it reads (settings.call).
CROSS_CHECKS = (_check_problem_sets, _check_models_and_engines, check_replicates, _cross_check_learning,
                _cross_check_downstream, batch_problems)
