"""The shipped tiny-model weights were made by the current bootstrap params (hash in the manifest),
and every model folder matches its recorded hash."""
import copy

from conftest import REPO

from librarm.config import load_params
from librarm.io import read_json, tree_sha256
from librarm.tinyworld import bootstrap_hash


def _manifest():
    return read_json(REPO / "workflow" / "tiny_models" / "manifest.json")


def test_shipped_weights_match_params():
    params = load_params(REPO / "params.yaml")
    assert _manifest()["params_hash"] == bootstrap_hash(params), (
        "params that make the tiny models changed: run `librarm train-tiny --ship` and commit workflow/tiny_models")


def test_changed_bootstrap_param_is_detected():
    """Negative twin: any change to what makes the weights changes the hash."""
    params = load_params(REPO / "params.yaml")
    for mutate in (lambda p: p["bootstrap"].__setitem__("core_steps", p["bootstrap"]["core_steps"] + 1),
                   lambda p: p["models"]["gen_weak"].__setitem__("step_noise", 0.31),
                   lambda p: p["judge"].__setitem__("prompt_template", p["judge"]["prompt_template"] + " ")):
        changed = copy.deepcopy(params)
        mutate(changed)
        assert bootstrap_hash(changed) != _manifest()["params_hash"]
    # set sizes (the ci preset) do not change the models
    assert bootstrap_hash(load_params(REPO / "params.yaml", ["ci"])) == _manifest()["params_hash"]


def test_shipped_folders_match_recorded_hashes():
    m = _manifest()
    for name, digest in m["models"].items():
        assert tree_sha256(REPO / "workflow" / "tiny_models" / name) == digest, name
