"""envs/*.yaml and pyproject pins agree with requirements.lock (imports without vllm: test_sampling)."""
import re

import pytest
import yaml
from conftest import REPO

# Packages that only a GPU env has (not in the CPU lock).
GPU_ONLY = {"vllm"}
# What vLLM pins for itself in an env that has it beside TRL (resolved with pip --dry-run)
PINNED_BY_VLLM = {"gpu-train-vllm": {"transformers": "5.17.0"}}


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


@pytest.mark.parametrize("env", ["cpu", "gpu-inference", "gpu-train", "gpu-train-vllm"])
def test_env_pins_match_lock(env):
    doc = yaml.safe_load((REPO / "envs" / f"{env}.yaml").read_text())
    pip = next(d["pip"] for d in doc["dependencies"] if isinstance(d, dict))
    lock = lock_pins()
    checked = 0
    for spec in pip:
        m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)$", spec)
        if not m:
            continue
        name = m.group(1).lower().replace("_", "-")
        if name in GPU_ONLY:
            continue
        if name in PINNED_BY_VLLM.get(env, {}):
            assert PINNED_BY_VLLM[env][name] == m.group(2), f"{env}: {name}=={m.group(2)}"
            continue
        assert name in lock, f"{env}: {name} is not in requirements.lock"
        assert lock[name] == m.group(2), f"{env}: {name}=={m.group(2)} but the lock has {lock[name]}"
        checked += 1
    assert checked >= 5


def test_pyproject_pins_match_lock():
    lock = lock_pins()
    text = (REPO / "pyproject.toml").read_text()
    for name, ver in re.findall(r'"([A-Za-z0-9_.\-]+)==([^"]+)"', text):
        assert lock[name.lower().replace("_", "-")] == ver, name
