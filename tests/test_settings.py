"""The typed params sections (librarm.run.settings) agree with the schema both ways: the same keys, the
same required keys, the same defaults; they build from every preset; a bad key is one line naming
it; and a default that was used still counts as a read of its key."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from librarm.run.config import ConfigError, load_params, validate_params
from librarm.run.paths import SCHEMA_PATH
from librarm.run.reads import RecordingDict
from librarm.run.settings import (
    NESTED_SECTIONS,
    REGISTRIES,
    TYPED_SECTIONS,
    BalanceSettings,
    JudgeSettings,
    JudgeSpec,
    ModelSpec,
    Params,
    ProblemSet,
    RlSettings,
    RlVariant,
    SettingsError,
    SftSettings,
    SftVariant,
    SyntheticSettings,
)

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads(SCHEMA_PATH.read_text())


def _schema_of(cls) -> dict:
    props = SCHEMA["properties"]
    nested = {RlVariant: props["rl"]["properties"]["variants"]["additionalProperties"],
              SftVariant: props["sft"]["properties"]["variants"]["additionalProperties"],
              ProblemSet: props["problems"]["properties"]["sets"]["items"],
              SyntheticSettings: props["problems"]["properties"]["synthetic"],
              BalanceSettings: props["bench"]["properties"]["balance"]}
    if cls in nested:
        return nested[cls]
    return props[cls.KEY]["additionalProperties"] if cls in REGISTRIES else props[cls.KEY]


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return list(f.default) if isinstance(f.default, tuple) else f.default
    if f.default_factory is not dataclasses.MISSING:
        made = f.default_factory()
        return "nested" if dataclasses.is_dataclass(made) else made
    return dataclasses.MISSING


@pytest.mark.parametrize("cls", [*TYPED_SECTIONS, *NESTED_SECTIONS, *REGISTRIES], ids=lambda c: c.__name__)
def test_typed_section_agrees_with_the_schema(cls):
    sec = _schema_of(cls)
    props = sec["properties"]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(fields) == set(props), f"{cls.KEY}: keys only in code {set(fields) - set(props)}, " \
                                      f"only in the schema {set(props) - set(fields)}"
    required = {n for n, f in fields.items() if _default(f) is dataclasses.MISSING}
    assert required == set(sec.get("required", [])) & set(fields)
    for name, f in fields.items():
        default = _default(f)
        if default == "nested":         # a nested section: its defaults are checked as its own class
            continue
        if default is dataclasses.MISSING:
            assert "default" not in props[name], f"{cls.KEY}.{name}: a schema default but required in code"
        else:
            assert props[name].get("default", dataclasses.MISSING) == default, \
                f"{cls.KEY}.{name}: code default {default!r}, schema default {props[name].get('default', 'none')!r}"


@pytest.mark.parametrize("preset", [None, "ci", "smoke-real", "paper"])
def test_params_build_from_every_preset(preset):
    p = Params.from_dict(load_params(REPO / "params.yaml", [preset] if preset else []))
    assert p.judge.max_new_tokens > 0 and p.launch.processes >= 1
    assert all(p.rl.variant(v).init for v in p.rl.variants)
    if "judge_rl_no_length_penalty" in p.rl.variants:
        assert p.rl.rewards_of("judge_rl_no_length_penalty")["length"] == 0.0
    assert p.dpo is None or p.dpo.steps(10) >= 1


def test_a_bad_section_is_one_line_naming_the_key(params):
    with pytest.raises(SettingsError, match=r"^sft\.bogus: unknown key$"):
        SftSettings.from_section({**params["sft"], "bogus": 1})
    with pytest.raises(SettingsError, match=r"^sft\.init: required$"):
        SftSettings.from_section({k: v for k, v in params["sft"].items() if k != "init"})
    bad = {**params, "rl": {**params["rl"], "variants": {"judge_rl": {"init": "judge_sft", "rewards": {"length": 1.0}}}}}
    bad["rl"]["variants"]["judge_rl"]["init"] = "judge_sft"
    assert Params.from_dict(bad).rl.rewards_of("judge_rl") == {"length": 1.0}
    p = {**params, "launch": {**params["launch"], "launcher": "torchrun", "accelerate_config": "x.yaml"}}
    with pytest.raises(ConfigError, match="launch.accelerate_config: only read by launcher 'accelerate'"):
        validate_params(p)


def test_a_section_records_the_fields_a_stage_reads(params):
    """Built from a job's recording view, a section notes a field when it is read (a default
    that was used included), not when it is built."""
    log: set[str] = set()
    section = {k: v for k, v in params["sft"].items() if k != "seed"}
    view = RecordingDict({**params, "sft": section}, "", log)
    s = SftSettings.from_params(view)
    assert log == set()
    assert s.seed == 0 and s.steps > 0
    assert log == {"sft.seed", "sft.steps"}
    log.clear()
    j = JudgeSettings.from_params(view)
    j.prompt_template, j.max_prompt_tokens
    assert log == {"judge.prompt_template", "judge.max_prompt_tokens"}


def test_a_section_with_nested_mappings_built_from_a_recording_view_is_plain_data(params):
    """rl.rewards and rl.variants are plain dicts in the section (asdict and hashing work on them),
    and reading the field is the read."""
    log: set[str] = set()
    rl = RlSettings.from_params(RecordingDict(params, "", log))
    assert type(rl.rewards) is dict and type(rl.variants) is dict
    assert dataclasses.asdict(rl)["rewards"] == params["rl"]["rewards"]
    assert "rl.rewards" in log and rl.variant("judge_rl").init == "judge_sft"


def test_registries_and_nested_sections_build_and_record_their_leaves(params):
    """A registry entry is one spec (a name it lacks is one line); a nested section (bench.balance,
    problems.sets[i]) records its own leaves, so handing it out is not a read of the whole."""
    p = Params.from_dict(params)
    assert p.seed == params["seed"] and set(p.models) == set(params["models"])
    assert isinstance(p.judges["rl"], JudgeSpec) and p.judges["rl"].kind == "generative"
    assert p.problems.names("eval") and all(isinstance(s, ProblemSet) for s in p.problems.sets)
    with pytest.raises(SettingsError, match=r"^models\.nope: not defined"):
        ModelSpec.registry(params["models"])["nope"]
    log: set[str] = set()
    view = RecordingDict(params, "", log)
    from librarm.run.settings import BenchSettings
    bench = BenchSettings.from_params(view)
    assert log == set()
    bench.balance.unit
    assert log == {"bench.balance.unit"}
    log.clear()
    ModelSpec.registry(view["models"])["gen_weak"].source
    assert log == {"models.gen_weak.source"}


def test_sft_and_rl_variants_set_a_judges_start_seed_and_steps():
    """sft.variants / rl.variants: a replicate's own seed, sft_more's start and steps; any other
    name (a test's or a benchmark's run) trains with the section's settings."""
    p = load_params(REPO / "params.yaml", ["seeds"])
    sft, rl = SftSettings.from_params(p), RlSettings.from_params(p)
    assert sft.for_model("judge_sft_s2").seed == 2 and sft.for_model("judge_sft_s2").init == sft.init
    more = sft.for_model("judge_sft_more_s1")
    assert (more.init, more.steps, more.seed) == ("judge_sft_s1", 80, 1) and more.variants == {}
    assert sft.for_model("judge_sft") == sft.replace(variants={})
    assert rl.for_model("judge_rl_s1").seed == 1 and rl.for_model("judge_rl").seed == rl.seed
    assert rl.for_model("t") is rl
