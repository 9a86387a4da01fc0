"""librarm.run.pulled: what `librarm after-pull` says when DVC does not vouch for the results, and that
it then runs nothing (the round trip through a real DVC remote is in test_workflow.py)."""
from __future__ import annotations

import subprocess

import pytest

from librarm.run import pulled


def test_describe_names_each_stage_file_and_param():
    status = {"sample": [{"changed deps": {"params.yaml": {"sampling.temperature": "modified"},
                                           "workflow/librarm/sampling.py": "modified"}}],
              "bench": [{"changed outs": {"results/bench": "deleted"}}]}
    assert pulled.describe(status) == [
        "bench: changed outs (results/bench deleted)",
        "sample: changed deps (params.yaml: sampling.temperature modified, workflow/librarm/sampling.py modified)",
    ]


def test_after_pull_refuses_and_touches_nothing_unless_dvc_status_is_clean(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(pulled, "dvc_changes", lambda root: {"dpo": [{"changed deps": {"params.yaml": {"dpo.beta": "modified"}}}]})
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    with pytest.raises(pulled.NotCurrentError, match=r"dpo: changed deps \(params.yaml: dpo.beta modified\)"):
        pulled.after_pull(tmp_path)
    assert calls == []
    monkeypatch.setattr(pulled, "dvc_changes", lambda root: {})
    pulled.after_pull(tmp_path)
    assert calls and calls[0][0][:3] == ["snakemake", "--touch", "--forceall"]
