"""The prepared accelerator check runs its whole code path on the CPU with a tiny model, so it
cannot rot between the sessions that get a GPU."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_cpu_tiny(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "LIBRARM_TRACKING": "0"}
    res = subprocess.run(["bash", str(REPO / "scripts/gpu_check.sh"), "--cpu", "--tiny"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads((tmp_path / "gpu_check.json").read_text())
    for stage in ("sft", "grpo", "dpo"):
        assert out[stage]["steps"] == 2 and out[stage]["tokens_per_s"] > 0
    assert out["decode"]["batch"] == 64 and out["decode"]["tokens"] > 0
    assert out["decode"]["static_cache_tokens_per_s"] > 0 and out["decode"]["static_cache_compiled"] is False
    assert "| sft |" in res.stdout and "HBM roofline" in res.stdout
