"""Typed params sections: frozen dataclasses built from the validated params dict.

A field's default is the schema's `default` (tests/test_settings.py checks both ways: the same
keys, the same required keys, the same defaults), so no stage carries a second default of its own.
Sections are built from whatever mapping the caller holds, the recording view of a job included
(every field is read with `get`, so a default that was used still counts as a read).

Every section is typed: `Params.from_dict` builds them all (the registries `models`, `generators`
and `judges` as name -> spec maps). No stage function takes the params tree: each names the
sections it reads as typed parameters (`bench: BenchSettings`, `rl: RlSettings | None`,
`judges: Judges`, `seed: Seed`), and `call` (the one dispatcher, at the end of this module) builds
them from the tree for the CLI's steps, the config checks and the tests."""
from __future__ import annotations

import collections.abc
import functools
import inspect
import math
import types
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Callable, ClassVar, Mapping, NewType, TypeVar, Union, get_args, get_origin, get_type_hints


class SettingsError(ValueError):
    """A params section that cannot work; the message names the key."""


class Section:
    """Build a dataclass from a params section, key by key. Built from a job's recording view
    (librarm.run.reads), a section notes each field when it is READ, not when it is built: a stage's
    declared reads are the fields it uses, a default it used included."""

    KEY: ClassVar[str]          # the params key of the section
    # fields that are sections themselves (a mapping) or tuples of them (a list of mappings)
    NESTED: ClassVar[Mapping[str, type["Section"]]] = {}

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
            nested = cls.NESTED.get(f.name)
            if value is MISSING and nested is not None and f.default_factory is not MISSING:
                value = {}              # an absent nested section: its defaults, written as nothing
            if value is MISSING:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise SettingsError(f"{key}.{f.name}: required")
                continue
            if nested is not None and value is not None:
                child = f"{key}.{f.name}"
                kw[f.name] = (tuple(nested.from_section(v, f"{child}[{i}]") for i, v in enumerate(value))
                              if isinstance(value, list) else nested.from_section(value, child))
            else:
                kw[f.name] = _plain(value)
        obj = cls(**kw)
        object.__setattr__(obj, "_given", tuple(k for k in section if k in known))
        object.__setattr__(obj, "_key", key)            # where it sits in params, for error messages
        log = getattr(section, "_log", None)
        if log is not None:
            object.__setattr__(obj, "_reads", (log, getattr(section, "_path", key)))
        return obj

    @classmethod
    def registry(cls, section: Mapping[str, Any] | None) -> "Registry":
        """Every entry of a registry section (`models`, `generators`, `judges`: the mapping under
        its key), by name."""
        section = section or {}
        return Registry(cls.KEY, {name: cls.from_section(_unrecorded_get(section, name), f"{cls.KEY}.{name}")
                                  for name in section})

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

    @property
    def where(self) -> str:
        """The params key of this section or entry (e.g. `judges.rl`), for one-line errors."""
        return self.__dict__.get("_key", self.KEY)

    def replace(self, **changes: Any):
        """A copy with `changes` (dataclasses.replace) that still notes its reads, as this one does."""
        import dataclasses

        new = dataclasses.replace(self, **changes)
        for attr in ("_reads", "_given", "_key"):
            if attr in self.__dict__:
                object.__setattr__(new, attr, self.__dict__[attr])
        return new

    def as_written(self) -> dict[str, Any]:
        """The section as params wrote it, as plain JSON data: only the keys given (a section made
        in code: all of them). Cache keys hash this, so a key's hash is what it was before typing."""
        given = self.__dict__.get("_given", tuple(f.name for f in fields(self)))
        return {name: _written(object.__getattribute__(self, name)) for name in given}

    def __getattribute__(self, name: str):
        value = object.__getattribute__(self, name)
        if not name.startswith("_"):
            reads = object.__getattribute__(self, "__dict__").get("_reads")
            # a nested section notes its own leaf reads; handing it out is not a read
            if reads is not None and name in type(self).__dataclass_fields__ and not isinstance(value, Section):
                reads[0].add(f"{reads[1]}.{name}")
        return value


class Registry(dict):
    """A registry section's entries by name (`models`, `generators`, `judges`); a name it lacks
    is one line naming it and the names it has, not a KeyError."""

    def __init__(self, key: str, entries: Mapping[str, Any]):
        super().__init__(entries)
        self.key = key

    def __missing__(self, name: str):
        raise SettingsError(f"{self.key}.{name}: not defined (defined: {', '.join(sorted(self))})")


def _unrecorded_get(mapping: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """mapping[key] without noting a read on a recording view (a section notes its own reads)."""
    return dict.get(mapping, key, default) if isinstance(mapping, dict) else mapping.get(key, default)


def _written(value: Any) -> Any:
    if isinstance(value, Section):
        return value.as_written()
    if isinstance(value, (tuple, list)):
        return [_written(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _written(v) for k, v in value.items()}
    return value


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
    variants: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        super().__post_init__()
        _check(self.steps >= 1 and self.batch_size >= 1 and self.save_steps >= 1,
               "sft: steps, batch_size and save_steps must be >= 1")
        _check(0 < self.learning_rate < 1, "sft.learning_rate: must be in (0, 1)")

    def for_model(self, name: str) -> "SftSettings":
        """The settings one SFT judge trains with: the section's, with its `variants` entry's init,
        seed and steps where it has one (a seed replicate, or sft_more continuing from judge_sft)."""
        v = SftVariant.from_section(self.variants[name], f"sft.variants.{name}") if name in self.variants \
            else SftVariant()
        return self.replace(variants={}, **{k: getattr(v, k) for k in ("init", "seed", "steps")
                                            if getattr(v, k) is not None})


@dataclass(frozen=True)
class SftVariant(Section):
    """`sft.variants.<model>`: where this SFT judge starts, its seed and its steps, when not the section's."""

    KEY: ClassVar[str] = "sft.variants"
    init: str | None = None
    seed: int | None = None
    steps: int | None = None


@dataclass(frozen=True)
class RlVariant(Section):
    """`rl.variants.<model>`: where a GRPO judge starts, and its own reward weights if any."""

    KEY: ClassVar[str] = "rl.variants"
    init: str
    rewards: Mapping[str, float] | None = None
    seed: int | None = None             # a seed replicate's own seed (default: rl.seed)


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
    items: str = "train"
    variants: Mapping[str, Any] = field(default_factory=dict)
    rollout_backend: str = "hf"
    rollout_vllm_args: Mapping[str, Any] = field(default_factory=dict)
    sync_every: int = 1

    def __post_init__(self):
        super().__post_init__()
        _check(self.l_exp == "auto" or isinstance(self.l_exp, int), "rl.l_exp: an integer or 'auto'")
        _check(self.items in ("train", "pool"), f"rl.items: 'train' or 'pool', got {self.items!r}")
        _check(self.rollout_backend in ("hf", "vllm"), f"rl.rollout_backend: 'hf' or 'vllm', got {self.rollout_backend!r}")
        _check(self.sync_every >= 1, f"rl.sync_every: must be >= 1, got {self.sync_every}")

    def run_key(self) -> dict:
        """What a GRPO run's resume folder is keyed by: every setting, less the rollout engine's
        when rollouts come from the hf sampler (the key runs had before vLLM rollouts existed, so
        their checkpoints and saved files stay the same)."""
        key = asdict(self)
        if self.rollout_backend == "hf":
            for k in ("rollout_backend", "rollout_vllm_args", "sync_every"):
                key.pop(k)
        return key

    def variant(self, name: str) -> RlVariant:
        return RlVariant.from_section(self.variants[name], f"rl.variants.{name}")

    def for_model(self, name: str) -> "RlSettings":
        """The settings one GRPO judge trains with: the section's, with its variant's seed (a name
        that is no variant, e.g. a test's or a benchmark's run, trains with the section's)."""
        seed = self.variant(name).seed if name in self.variants else None
        return self if seed is None else self.replace(seed=seed)

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
    val_vllm_args: Mapping[str, Any] = field(default_factory=dict)
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
    samples: int = 1
    scalar_batch_size: int = 16


@dataclass(frozen=True)
class CompareSettings(Section):
    """`compare`: the paired judge comparisons of the eval summary."""

    KEY: ClassVar[str] = "compare"
    pairs: tuple[tuple[str, str], ...] = ()
    resamples: int = 2000


@dataclass(frozen=True)
class ReportSettings(Section):
    """`report`: the correlation fit, its resampling, and the judges' seed replicates."""

    KEY: ClassVar[str] = "report"
    fit_labelers: tuple[str, ...] = ()
    resamples: int = 2000
    permutations: int = 10000
    # judges that differ only in their training seed, by group (seed order): the `seeds` stage
    replicates: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


LAUNCHERS = ("torchrun", "accelerate")
SHARDINGS = ("none", "fsdp2")


@dataclass(frozen=True)
class LaunchSettings(Section):
    """`launch`: how the training steps run (one process, or N under a launcher)."""

    KEY: ClassVar[str] = "launch"
    processes: int = 1
    launcher: str = "torchrun"
    accelerate_config: str | None = None
    gpus_per_process: int = 0
    sharding: str = "none"

    def __post_init__(self):
        super().__post_init__()
        _check(self.processes >= 1, f"launch.processes: must be >= 1, got {self.processes}")
        _check(self.sharding in SHARDINGS, f"launch.sharding: {self.sharding!r} is not one of {', '.join(SHARDINGS)}")
        _check(self.launcher in LAUNCHERS, f"launch.launcher: {self.launcher!r} is not one of {', '.join(LAUNCHERS)}")
        _check(not self.accelerate_config or self.launcher == "accelerate",
               "launch.accelerate_config: only read by launcher 'accelerate'")


Seed = NewType("Seed", int)
"""The run's seed (`seed`, the one top-level scalar): every per-item draw derives from it. A
function parameter annotated `Seed` is given it by `call`."""


# ----------------------------------------------------------------------------- data and bench
@dataclass(frozen=True)
class ProblemSet(Section):
    """`problems.sets[i]`: one problem set, its role and where it comes from."""

    KEY: ClassVar[str] = "problems.sets"
    name: str
    role: str
    source: str
    n: int | None = None                    # synthetic: problems in the set
    steps: int | tuple[int, ...] | None = None      # synthetic: reasoning steps a problem takes
    path: str | None = None                 # jsonl
    hf_id: str | None = None                # hf
    hf_config: str | None = None
    revision: str | None = None
    split: str = "test"
    fields: Mapping[str, str] = field(default_factory=dict)    # our field -> the file's field
    level: int | None = None
    limit: int | None = None


@dataclass(frozen=True)
class SyntheticSettings(Section):
    """`problems.synthetic`: the tiny world's arithmetic problems."""

    KEY: ClassVar[str] = "problems.synthetic"
    max_value: int = 99
    max_operand: int = 9


@dataclass(frozen=True)
class ProblemsSettings(Section):
    """`problems`: the problem sets and what a bad input line does."""

    KEY: ClassVar[str] = "problems"
    NESTED: ClassVar[Mapping[str, type[Section]]] = {"sets": ProblemSet, "synthetic": SyntheticSettings}
    sets: tuple[ProblemSet, ...]
    on_bad_line: str = "error"
    synthetic: SyntheticSettings = field(default_factory=SyntheticSettings)

    def names(self, role: str | None = None) -> list[str]:
        return [s.name for s in self.sets if role is None or s.role == role]

    def by_name(self, name: str) -> ProblemSet:
        return next(s for s in self.sets if s.name == name)


@dataclass(frozen=True)
class BootstrapSettings(Section):
    """`bootstrap`: how the tiny world's models are trained (or taken from shipped weights)."""

    KEY: ClassVar[str] = "bootstrap"
    architecture: Mapping[str, int]
    core_steps: int
    finetune_steps: int
    judge_steps: int
    judge_traces: int
    batch_size: int
    learning_rate: float
    malformed_rate: float
    eval_samples: int
    shipped_dir: str | None = None
    skill_bands: Mapping[str, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class BalanceSettings(Section):
    """`bench.balance`: how Libra Bench balances correct and incorrect responses."""

    KEY: ClassVar[str] = "bench.balance"
    unit: str
    on_shortfall: str
    per_label: int | None = None
    per_label_by_subset: Mapping[str, int] | None = None


@dataclass(frozen=True)
class BenchSettings(Section):
    """`bench`: Libra Bench assembly."""

    KEY: ClassVar[str] = "bench"
    NESTED: ClassVar[Mapping[str, type[Section]]] = {"balance": BalanceSettings}
    balance: BalanceSettings


@dataclass(frozen=True)
class StressSettings(Section):
    """`stress`: the judge-hacking stress set (content-free responses, false claims)."""

    KEY: ClassVar[str] = "stress"
    per_template: int
    content_free: tuple[str, ...]
    false_claim: str
    false_claim_items: int


@dataclass(frozen=True)
class TrackingSettings(Section):
    """`tracking`: the MLflow experiment and when jobs' records are imported."""

    KEY: ClassVar[str] = "tracking"
    experiment: str = "libra"
    enabled: bool = True
    mode: str = "deferred"


@dataclass(frozen=True)
class PairsSettings(Section):
    """`pairs`: the downstream policy's judge-labelled preference pairs."""

    KEY: ClassVar[str] = "pairs"
    pool: str
    policy: str
    n: int
    val_fraction: float
    per_problem: int
    labelers: tuple[str, ...]
    budget: int
    backend: str = "hf"
    engine: Mapping[str, Any] = field(default_factory=dict)     # vllm_args, base_url, ... of the policy's engine
    temperature: float = 1.0
    gold_curve: tuple[int, ...] = ()
    raw_labelers: tuple[str, ...] = ()

    def policy_engine(self) -> "GeneratorSpec":
        """The policy as a generator: it samples the pool (and is evaluated) on `pairs.backend`
        with the `pairs.engine` settings."""
        return GeneratorSpec(model=self.policy, backend=self.backend, **dict(self.engine))


# ----------------------------------------------------------------------------- registries
@dataclass(frozen=True)
class ModelSpec(Section):
    """`models.<name>`: where a model comes from (and, for the tiny world, how it is made)."""

    KEY: ClassVar[str] = "models"
    source: str
    role: str | None = None
    step_noise: float | None = None     # tiny: the share of reasoning steps it slips
    init: str | None = None             # tiny judges: the model they are tuned from
    id: str | None = None               # hub
    revision: str | None = None
    path: str | None = None             # path
    package: str | None = None          # gguf: the pip package holding the file
    gguf_file: str | None = None
    train: str | None = None            # trained: sft | nothink | rl | scalar


@dataclass(frozen=True)
class EngineSpec(Section):
    """What generators and judges share: the model and the engine that runs it."""

    KEY: ClassVar[str]
    backend: str
    model: str | None = None
    pseudo: str | None = None
    prompt_opens_think: bool = False    # the chat template opens <think>: the reply starts inside it
    tensor_parallel_size: int = 1
    vllm_args: Mapping[str, Any] = field(default_factory=dict)   # vllm: keyword arguments of vllm.LLM
    gpus: int = 0
    base_url: str | None = None
    api_key_env: str | None = None
    concurrency: int = 8                # http: requests in flight
    max_retries: int = 6                # http: retries of a request (429/5xx, drops, timeouts, bad bodies)
    timeout_s: float = 600.0            # http: overall deadline of each attempt of a request
    extra_body: Mapping[str, Any] = field(default_factory=dict)   # http: added to every request body

    @property
    def scheduler_gpus(self) -> int:
        """The GPUs a job running this engine asks the scheduler for: `gpus`, else one per
        tensor-parallel rank for vLLM, else none (hf runs where it is placed; http uses none)."""
        return self.gpus or (self.tensor_parallel_size if self.backend == "vllm" else 0)


@dataclass(frozen=True)
class GeneratorSpec(EngineSpec):
    """`generators.<name>`: a response generator."""

    KEY: ClassVar[str] = "generators"
    max_new_tokens: int | None = None   # None: sampling.max_new_tokens


@dataclass(frozen=True, kw_only=True)
class JudgeSpec(EngineSpec):
    """`judges.<name>`: a judge (generative: a verdict in text; scalar: a reward score)."""

    KEY: ClassVar[str] = "judges"
    kind: str
    input: str = "response"             # scalar judges: the response field they read


TYPED_SECTIONS: tuple[type[Section], ...] = (JudgeSettings, SamplingSettings, VerifySettings, EvaluateSettings,
                                             CompareSettings, JudgeDataSettings, RsSettings, SftSettings, RlSettings,
                                             ScalarRmSettings, DpoSettings, EvaluatePolicySettings, ReportSettings,
                                             LaunchSettings, ProblemsSettings, BootstrapSettings, BenchSettings,
                                             StressSettings, TrackingSettings, PairsSettings)
NESTED_SECTIONS: tuple[type[Section], ...] = (ProblemSet, SyntheticSettings, BalanceSettings, RlVariant, SftVariant)
REGISTRIES: tuple[type[Section], ...] = (ModelSpec, GeneratorSpec, JudgeSpec)
ALWAYS = ("launch", "tracking")         # sections built with their defaults when params leave them out


@dataclass(frozen=True)
class Params:
    """The typed sections of a validated params dict (None: the optional section is off)."""

    seed: int
    problems: ProblemsSettings
    models: Mapping[str, ModelSpec]
    generators: Mapping[str, GeneratorSpec]
    judges: Mapping[str, JudgeSpec]
    judge: JudgeSettings
    sampling: SamplingSettings
    verify: VerifySettings
    evaluate: EvaluateSettings
    launch: LaunchSettings
    tracking: TrackingSettings
    bench: BenchSettings | None = None
    bootstrap: BootstrapSettings | None = None
    stress: StressSettings | None = None
    pairs: PairsSettings | None = None
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
        kw: dict[str, Any] = {"seed": Seed(int(params["seed"]))}
        for section in TYPED_SECTIONS:
            if _unrecorded_get(params, section.KEY) is not None or section.KEY in ALWAYS:
                kw[section.KEY] = section.from_params(params)
        for registry in REGISTRIES:
            kw[registry.KEY] = registry.registry(_unrecorded_get(params, registry.KEY))
        if kw.get("rl"):
            for v in kw["rl"].variants:
                kw["rl"].variant(v)           # each variant checked now, not when its job runs
        return cls(**kw)


def stress_template_problems(cfg: StressSettings) -> list[str]:
    """What is wrong with the stress templates (empty when nothing): each names its params key."""
    problems = []
    if not cfg.content_free:
        problems.append("stress.content_free: give at least one template")
    for i, t in enumerate(cfg.content_free):
        try:
            text = t.format(question="Q")
        except (KeyError, IndexError, ValueError) as exc:
            problems.append(f"stress.content_free[{i}] {t!r}: not a template with only {{question}} ({exc!r})")
            continue
        if not text.strip():
            problems.append(f"stress.content_free[{i}]: empty response")
    if not cfg.false_claim.strip():
        problems.append("stress.false_claim: empty claim")
    return problems


# ----------------------------------------------------------------------------- the dispatcher
Models = Mapping[str, ModelSpec]
Generators = Mapping[str, GeneratorSpec]
Judges = Mapping[str, JudgeSpec]
R = TypeVar("R")


def call(fn: Callable[..., R], params: Mapping[str, Any] | Params, /, *args: Any, **kwargs: Any) -> R:
    """fn(*args, **kwargs) with each parameter left out that fn's signature types as params
    settings, built from params (the params tree, or the Params built from it): `Seed` (the run's
    seed), a section (`BenchSettings`; with `| None`, None when params leave it out) or a registry
    (`Models`, `Generators`, `Judges`). Steps, the config checks and tests reach the code below
    through it, and no function there takes the params tree: each names the sections it reads.
    Sections built from a recording view note the fields read (librarm.run.reads)."""
    given = inspect.signature(fn).bind_partial(*args, **kwargs).arguments
    for name, kind, cls in _settings_parameters(fn):
        if name in given:
            continue
        if isinstance(params, Params):
            value = params.seed if kind == "seed" else getattr(params, cls.KEY)
            # a section params leave out: its defaults, as from_params builds it from the tree
            kwargs[name] = cls.from_section(None) if value is None and kind == "section" else value
        elif kind == "seed":
            kwargs[name] = Seed(int(params["seed"]))
        elif kind == "registry":
            kwargs[name] = cls.registry(_unrecorded_get(params, cls.KEY))
        elif kind == "optional" and _unrecorded_get(params, cls.KEY) is None:
            kwargs[name] = None
        else:
            kwargs[name] = cls.from_params(params)
    return fn(*args, **kwargs)


@functools.lru_cache(maxsize=None)
def _settings_parameters(fn: Callable[..., Any]) -> tuple[tuple[str, str, type[Section] | None], ...]:
    """(name, seed | section | optional | registry, its class) of each parameter of fn typed as settings."""
    hints = get_type_hints(fn)
    out = []
    for name in inspect.signature(fn).parameters:
        hint = hints.get(name)
        args = get_args(hint)
        if hint is Seed:
            out.append((name, "seed", None))
        elif isinstance(hint, type) and hint in TYPED_SECTIONS:
            out.append((name, "section", hint))
        elif get_origin(hint) in (Union, types.UnionType) and type(None) in args:
            inner = [a for a in args if a is not type(None)]
            if len(inner) == 1 and inner[0] in TYPED_SECTIONS:
                out.append((name, "optional", inner[0]))
        elif get_origin(hint) in (collections.abc.Mapping, dict) and len(args) == 2 and args[1] in REGISTRIES:
            out.append((name, "registry", args[1]))
    return tuple(out)
