"""The shipped tiny-model weights were made by the current bootstrap params (hash in the manifest),
and every model folder matches its recorded hash. The vllm-cpu preset runs the same weights: the tiny
world's head_dim (32) is one vLLM's CPU attention takes."""
import copy

import pytest
from conftest import REPO

from librarm.run.config import load_params
from librarm.run.io import read_json, tree_sha256
from librarm.run.settings import BootstrapSettings, call
from librarm.stages.bootstrap_tiny import bootstrap_hash

WORLDS = [(), ("vllm-cpu",)]


def _shipped(params):
    return REPO / BootstrapSettings.from_params(params).shipped_dir


def _manifest(params):
    return read_json(_shipped(params) / "manifest.json")


@pytest.mark.parametrize("presets", WORLDS, ids=["default", "vllm-cpu"])
def test_shipped_weights_match_params(presets):
    params = load_params(REPO / "params.yaml", presets)
    assert _manifest(params)["params_hash"] == call(bootstrap_hash, params), (
        f"params that make the tiny models changed: run `librarm train-tiny --ship{''.join(' --preset ' + p for p in presets)}` "
        f"and commit {BootstrapSettings.from_params(params).shipped_dir}")
    # set sizes (the ci preset) do not change the models
    assert call(bootstrap_hash, load_params(REPO / "params.yaml", ["ci", *presets])) == _manifest(params)["params_hash"]


def test_changed_bootstrap_param_is_detected():
    """Negative twin: any change to what makes the weights changes the hash."""
    params = load_params(REPO / "params.yaml")
    for mutate in (lambda p: p["bootstrap"].__setitem__("core_steps", p["bootstrap"]["core_steps"] + 1),
                   lambda p: p["bootstrap"]["architecture"].__setitem__("num_heads", 4),
                   lambda p: p["models"]["gen_weak"].__setitem__("step_noise", 0.31),
                   lambda p: p["judge"].__setitem__("prompt_template", p["judge"]["prompt_template"] + " ")):
        changed = copy.deepcopy(params)
        mutate(changed)
        assert call(bootstrap_hash, changed) != _manifest(params)["params_hash"]


@pytest.mark.parametrize("presets", WORLDS, ids=["default", "vllm-cpu"])
def test_shipped_folders_match_recorded_hashes(presets):
    params = load_params(REPO / "params.yaml", presets)
    m = _manifest(params)
    for name, digest in m["models"].items():
        assert tree_sha256(_shipped(params) / name) == digest, name
    assert read_json(_shipped(params) / "gen_strong" / "config.json")["head_dim"] == 32
