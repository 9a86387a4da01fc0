"""librarm.run.config: params.yaml and every preset validate; a bad value is named by its key (unknown
key, wrong type, out of range, dangling reference, the downstream sections, DPO values); overlays
(null removes an entry, lists replace, dicts merge); values read without a code default are required
by the schema."""
import copy
from pathlib import Path

import pytest

from librarm.run.config import ConfigError, deep_merge, load_params, validate_params


def test_default_params_valid(params):
    assert params["sampling"]["n"] >= 1


PRESETS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "workflow" / "presets").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_valid(repo, preset):
    load_params(repo / "params.yaml", [preset])


@pytest.mark.parametrize("engine", ["vllm-cpu", "serve"])
def test_engine_presets_stack_on_ci(repo, engine):
    """The engine presets change engines only: on top of ci, the ci world with every model-running
    entry on the preset's backend (the scalar reward model stays on hf)."""
    ci, both = load_params(repo / "params.yaml", ["ci"]), load_params(repo / "params.yaml", ["ci", engine])
    backend = {"vllm-cpu": "vllm", "serve": "http"}[engine]
    assert both["problems"] == ci["problems"] and both["sampling"] == ci["sampling"]
    assert {g["backend"] for g in both["generators"].values()} == {backend}
    assert {j["backend"] for j in both["judges"].values() if j["kind"] == "generative"} == {backend}
    assert both["pairs"]["backend"] == backend


def test_grpo_judges_served_by_vllm_need_vllm_rollouts(repo):
    """A GRPO judge on vLLM trains with vLLM rollouts: the hf sampler is no fallback (the engine
    presets set rl.rollout_backend)."""
    both = load_params(repo / "params.yaml", ["ci", "vllm-cpu"])
    assert both["rl"]["rollout_backend"] == "vllm"
    both["rl"]["rollout_backend"] = "hf"
    with pytest.raises(ConfigError, match=r"rl.rollout_backend: 'hf', but judges.rl runs GRPO model 'judge_rl' on vllm"):
        validate_params(both)


def test_http_policy_needs_a_base_url(params):
    p = copy.deepcopy(params)
    p["pairs"]["backend"] = "http"
    with pytest.raises(ConfigError, match=r"pairs.engine.base_url: required for backend 'http'"):
        validate_params(p)


def _bad(params, mutate):
    p = copy.deepcopy(params)
    mutate(p)
    with pytest.raises(ConfigError) as exc:
        validate_params(p)
    return str(exc.value)


def test_unknown_key_named(params):
    msg = _bad(params, lambda p: p["sampling"].__setitem__("temprature", 1.0))
    assert "sampling" in msg and "temprature" in msg and "unknown key" in msg


def test_wrong_type_named(params):
    msg = _bad(params, lambda p: p["sampling"].__setitem__("n", "four"))
    assert "sampling.n" in msg


def test_out_of_range_named(params):
    msg = _bad(params, lambda p: p["sampling"].__setitem__("top_p", 1.5))
    assert "sampling.top_p" in msg


def test_dangling_reference_named(params):
    msg = _bad(params, lambda p: p["generators"]["gen_weak"].__setitem__("model", "nope"))
    assert "generators.gen_weak.model" in msg


def test_eval_judge_must_exist(params):
    msg = _bad(params, lambda p: p["evaluate"].__setitem__("judges", ["missing"]))
    assert "evaluate.judges" in msg


def test_hub_model_needs_revision(params):
    msg = _bad(params, lambda p: p["models"].__setitem__("x", {"source": "hub", "id": "org/model"}))
    assert "models.x" in msg and "revision" in msg


def test_bootstrap_resamples_minimum(params):
    msg = _bad(params, lambda p: p["evaluate"].__setitem__("bootstrap_resamples", 100))
    assert "evaluate.bootstrap_resamples" in msg


def test_overlay_null_removes_entry():
    merged = deep_merge({"models": {"a": {"x": 1}, "b": {"x": 2}}}, {"models": {"a": None}})
    assert merged == {"models": {"b": {"x": 2}}}


def test_overlay_lists_replace_dicts_merge():
    merged = deep_merge({"a": {"b": 1, "c": [1, 2]}}, {"a": {"c": [3]}})
    assert merged == {"a": {"b": 1, "c": [3]}}


def test_values_read_without_a_code_default_are_required_by_the_schema():
    """judge.batch_size had three different code defaults (32, 64, 64) and verify.timeout_s was
    optional in the schema but read with []: now the schema requires them and no code default
    exists, so there is one place for each value."""
    import json
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    schema = json.loads((root / "workflow/schemas/params.schema.json").read_text())
    assert {"timeout_s", "memory_mb"} <= set(schema["properties"]["verify"]["required"])
    assert "batch_size" in schema["properties"]["judge"]["required"]
    assert "batch_size" in schema["properties"]["sampling"]["required"]
    code = "\n".join(p.read_text() for p in (root / "workflow/librarm").glob("*.py"))
    assert not re.search(r'(jcfg|\["judge"\]|\["sampling"\])\.get\("batch_size"', code)
    assert not re.search(r'\.get\("(timeout_s|memory_mb)"', code)


# ----------------------------------------------------------------------------- the downstream sections
@pytest.mark.parametrize("edit,message", [
    (lambda p: p["pairs"].update(labelers=["rl", "gold_p7x"]), "pairs.labelers.1"),
    (lambda p: p["pairs"].update(labelers=["rl", "gold_p0"]), "pairs.labelers.1"),
    (lambda p: p["pairs"].update(raw_labelers=["sft"], labelers=["rl"]), "pairs.raw_labelers"),
    (lambda p: p["pairs"].update(pool="judge_pool"), "pairs.pool"),
    (lambda p: p["pairs"].update(policy="nope"), "pairs.policy"),
    (lambda p: p["evaluate_policy"].update(subsets=["dpo_pool"]), "evaluate_policy.subsets"),
    (lambda p: p["report"].update(fit_labelers=["gold"]), "report.fit_labelers"),
    (lambda p: p.pop("dpo"), "dpo: required"),
    (lambda p: p["rl"].update(items="all"), "rl.items"),
])
def test_downstream_config_errors_name_the_key(edit, message):
    params = copy.deepcopy(load_params("params.yaml"))
    edit(params)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        validate_params(params)


def test_schema_rejects_bad_dpo_values():
    params = copy.deepcopy(load_params("params.yaml"))
    params["dpo"]["seeds"] = []
    with pytest.raises(ConfigError, match="dpo"):
        validate_params(params)
