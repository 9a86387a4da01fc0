"""Typed params sections: frozen dataclasses built from the validated params dict.

A field's default is the schema's `default` (tests/test_settings.py checks both ways: the same
keys, the same required keys, the same defaults), so no stage carries a second default of its own.
Sections are built from whatever mapping the caller holds, the recording view of a job included
(every field is read with `get`, so a default that was used still counts as a read).

Typed so far: judge, sampling, verify, evaluate, compare, judge_data, rs, sft, rl, scalar_rm, dpo,
evaluate_policy, report, launch. Still read as dicts: seed, problems, bootstrap, bench, pairs,
stress, tracking and the registries (models, generators, judges)."""
from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Mapping


class SettingsError(ValueError):
    """A params section that cannot work; the message names the key."""


class Section:
    """Build a dataclass from a params section, key by key. Built from a job's recording view
    (librarm.reads), a section notes each field when it is READ, not when it is built: a stage's
    declared reads are the fields it uses, a default it used included."""

    KEY: ClassVar[str]          # the params key of the section

    @classmethod
    def from_section(cls, section: Mapping[str, Any] | None, key: str | None = None):
        key = key or cls.KEY
        section = section or {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in section if k not in known)      # iterating keys reads no value
        if unknown:
            raise SettingsError(f"{key}.{unknown[0]}: unknown key")
        kw = {}
        for f in fields(cls):
            value = _unrecorded_get(section, f.name, MISSING)
            if value is MISSING:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise SettingsError(f"{key}.{f.name}: required")
                continue
            kw[f.name] = _plain(value)
        obj = cls(**kw)
        log = getattr(section, "_log", None)
        if log is not None:
            object.__setattr__(obj, "_reads", (log, getattr(section, "_path", key)))
        return obj

    @classmethod
    def from_params(cls, params: Mapping[str, Any]):
        section = _unrecorded_get(params, cls.KEY)
        obj = cls.from_section(section, cls.KEY)
        log = getattr(params, "_log", None)
        if log is not None and "_reads" not in obj.__dict__:      # the section is absent: still a read
            object.__setattr__(obj, "_reads", (log, cls.KEY))
        return obj

    def __post_init__(self):
        # lists (YAML's only sequence) become tuples, nested ones too: a frozen section stays frozen
        for f in fields(self):
            value = object.__getattribute__(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, _tupled(value))

    def __getattribute__(self, name: str):
        value = object.__getattribute__(self, name)
        if not name.startswith("_"):
            reads = object.__getattribute__(self, "__dict__").get("_reads")
            if reads is not None and name in type(self).__dataclass_fields__:
                reads[0].add(f"{reads[1]}.{name}")
        return value


def _unrecorded_get(mapping: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """mapping[key] without noting a read on a recording view (a section notes its own reads)."""
    return dict.get(mapping, key, default) if isinstance(mapping, dict) else mapping.get(key, default)


def _tupled(value: Any) -> Any:
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


def _plain(value: Any) -> Any:
    """A nested mapping as a plain dict (a recording view's children included, without noting a
    read: reading the field is the read)."""
    if isinstance(value, Mapping):
        items = dict.items(value) if isinstance(value, dict) else value.items()
        return {k: _plain(v) for k, v in items}
    return value


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise SettingsError(message)


@dataclass(frozen=True)
class JudgeSettings(Section):
    """`judge`: the generative judge's prompt, budgets and decoding."""

    KEY: ClassVar[str] = "judge"
    prompt_template: str
    max_prompt_tokens: int
    overflow: str
    max_new_tokens: int
    temperature: float
    batch_size: int
    system_prompt: str | None = None
    top_p: float = 1.0


@dataclass(frozen=True)
class SftSettings(Section):
    """`sft`: rejection-sampling SFT of the judge (and the verdict-only `nothink` control)."""

    KEY: ClassVar[str] = "sft"
    init: str
    steps: int
    batch_size: int
    learning_rate: float
    seed: int = 0
    save_steps: int = 50
    val_every: int = 50
    val_items: int = 60
    max_length: int = 512

    def __post_init__(self):
        super().__post_init__()
        _check(self.steps >= 1 and self.batch_size >= 1 and self.save_steps >= 1,
               "sft: steps, batch_size and save_steps must be >= 1")
        _check(0 < self.learning_rate < 1, "sft.learning_rate: must be in (0, 1)")


@dataclass(frozen=True)
class RlVariant(Section):
    """`rl.variants.<model>`: where a GRPO judge starts, and its own reward weights if any."""

    KEY: ClassVar[str] = "rl.variants"
    init: str
    rewards: Mapping[str, float] | None = None


@dataclass(frozen=True)
class RlSettings(Section):
    """`rl`: GRPO of the judge."""

    KEY: ClassVar[str] = "rl"
    steps: int
    batch_size: int
    num_generations: int
    max_completion_length: int
    learning_rate: float
    l_exp: int | str
    l_max: int
    rewards: Mapping[str, float]
    beta: float = 0.0
    temperature: float = 1.0
    passrate_k: int = 4
    passrate_band: tuple[float, float] = (0.1, 0.9)
    l_exp_quantile: float = 0.75
    save_steps: int = 25
    val_every: int = 20
    val_items: int = 60
    seed: int = 0
    variants: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        super().__post_init__()
        _check(self.l_exp == "auto" or isinstance(self.l_exp, int), "rl.l_exp: an integer or 'auto'")

    def variant(self, name: str) -> RlVariant:
        return RlVariant.from_section(self.variants[name], f"rl.variants.{name}")

    def rewards_of(self, name: str) -> Mapping[str, float]:
        """A variant's reward weights: its own, else the section's."""
        own = self.variant(name).rewards
        return own if own is not None else self.rewards


@dataclass(frozen=True)
class ScalarRmSettings(Section):
    """`scalar_rm`: the Bradley-Terry reward model baseline."""

    KEY: ClassVar[str] = "scalar_rm"
    init: str
    steps: int
    batch_size: int
    learning_rate: float
    pairs_per_problem: int = 4
    seed: int = 0
    input: str = "response"


@dataclass(frozen=True)
class DpoSettings(Section):
    """`dpo`: the downstream policy's DPO on judge-labelled pairs."""

    KEY: ClassVar[str] = "dpo"
    beta: float
    learning_rate: float
    epochs: float
    batch_size: int
    seeds: tuple[int, ...]
    val_every: int = 20
    val_k: int = 2
    max_length: int = 256
    loss_type: str = "sigmoid"
    precompute_ref_log_probs: bool = True

    def __post_init__(self):
        super().__post_init__()
        _check(self.beta > 0 and 0 < self.learning_rate < 1, "dpo: beta must be > 0 and learning_rate in (0, 1)")
        _check(self.epochs > 0 and self.batch_size >= 1 and self.val_every >= 1 and self.val_k >= 1,
               "dpo: epochs > 0, batch_size >= 1, val_every >= 1 and val_k >= 1 are required")

    def steps(self, n_pairs: int) -> int:
        return max(1, math.ceil(self.epochs * n_pairs / self.batch_size))


@dataclass(frozen=True)
class SamplingSettings(Section):
    """`sampling`: how generators sample (n responses a problem) and the problem prompt."""

    KEY: ClassVar[str] = "sampling"
    n: int
    temperature: float
    top_p: float
    max_new_tokens: int
    batch_size: int
    system_prompt: str | None = None
    problem_template: str | None = None


@dataclass(frozen=True)
class EvaluatePolicySettings(Section):
    """`evaluate_policy`: avg@k of each policy on the eval subsets."""

    KEY: ClassVar[str] = "evaluate_policy"
    subsets: tuple[str, ...]
    k: int
    temperature: float
    top_p: float = 1.0
    max_new_tokens: int | None = None       # None: sampling.max_new_tokens
    bootstrap_resamples: int = 2000


@dataclass(frozen=True)
class VerifySettings(Section):
    """`verify`: the answer verifier's per-item limits."""

    KEY: ClassVar[str] = "verify"
    timeout_s: float
    memory_mb: int


@dataclass(frozen=True)
class JudgeDataSettings(Section):
    """`judge_data`: the judge-training items (verified responses of the judge pool)."""

    KEY: ClassVar[str] = "judge_data"
    pool: str
    val_fraction: float
    exclude_generators: tuple[str, ...] = ()
    per_label: int | None = None
    unit: str = "subset_generator"


@dataclass(frozen=True)
class RsSettings(Section):
    """`rs`: rejection sampling of the teacher's judging trajectories."""

    KEY: ClassVar[str] = "rs"
    teacher: str
    k: int
    max_per_item: int
    mix_ratio: float
    temperature: float = 1.0
    acceptance_band: tuple[float, float] = (0.2, 0.9)


@dataclass(frozen=True)
class EvaluateSettings(Section):
    """`evaluate`: the judges scored on the bench."""

    KEY: ClassVar[str] = "evaluate"
    judges: tuple[str, ...]
    bootstrap_resamples: int = 2000
    threshold_split: str | None = None


@dataclass(frozen=True)
class CompareSettings(Section):
    """`compare`: the paired judge comparisons of the eval summary."""

    KEY: ClassVar[str] = "compare"
    pairs: tuple[tuple[str, str], ...] = ()
    resamples: int = 2000


@dataclass(frozen=True)
class ReportSettings(Section):
    """`report`: the correlation fit and its resampling."""

    KEY: ClassVar[str] = "report"
    fit_labelers: tuple[str, ...] = ()
    resamples: int = 2000
    permutations: int = 10000


LAUNCHERS = ("torchrun", "accelerate")


@dataclass(frozen=True)
class LaunchSettings(Section):
    """`launch`: how the training steps run (one process, or N under a launcher)."""

    KEY: ClassVar[str] = "launch"
    processes: int = 1
    launcher: str = "torchrun"
    accelerate_config: str | None = None
    gpus_per_process: int = 0

    def __post_init__(self):
        super().__post_init__()
        _check(self.processes >= 1, f"launch.processes: must be >= 1, got {self.processes}")
        _check(self.launcher in LAUNCHERS, f"launch.launcher: {self.launcher!r} is not one of {', '.join(LAUNCHERS)}")
        _check(not self.accelerate_config or self.launcher == "accelerate",
               "launch.accelerate_config: only read by launcher 'accelerate'")


TYPED_SECTIONS: tuple[type[Section], ...] = (JudgeSettings, SamplingSettings, VerifySettings, EvaluateSettings,
                                             CompareSettings, JudgeDataSettings, RsSettings, SftSettings, RlSettings,
                                             ScalarRmSettings, DpoSettings, EvaluatePolicySettings, ReportSettings,
                                             LaunchSettings)


@dataclass(frozen=True)
class Params:
    """The typed sections of a validated params dict (None: the optional section is off)."""

    judge: JudgeSettings
    sampling: SamplingSettings
    verify: VerifySettings
    evaluate: EvaluateSettings
    launch: LaunchSettings
    compare: CompareSettings | None = None
    judge_data: JudgeDataSettings | None = None
    rs: RsSettings | None = None
    sft: SftSettings | None = None
    rl: RlSettings | None = None
    scalar_rm: ScalarRmSettings | None = None
    dpo: DpoSettings | None = None
    evaluate_policy: EvaluatePolicySettings | None = None
    report: ReportSettings | None = None

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> "Params":
        kw: dict[str, Any] = {}
        for section in TYPED_SECTIONS:
            if section.KEY in params or section.KEY == "launch":
                kw[section.KEY] = section.from_params(params)
        if kw.get("rl"):
            for v in kw["rl"].variants:
                kw["rl"].variant(v)           # each variant checked now, not when its job runs
        return cls(**kw)
