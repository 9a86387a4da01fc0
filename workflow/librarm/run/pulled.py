"""After `dvc pull` (or `dvc checkout`): make Snakemake agree with DVC that the pulled results are
current, and only when DVC has proved it.

A pulled clone has the outputs but not Snakemake's own records (`.snakemake/metadata`: the params,
code and input checksums each output was made with), and the files carry checkout-time mtimes, so
`snakemake -n` wants to rerun almost everything ("Updated input files"). `snakemake --touch
--forceall` fixes both: it sets the mtimes in DAG order and writes each job's record with the
current params and code. That is safe only when the outputs WERE made with the current params,
code and inputs, which is exactly what a clean `dvc status` says (every stage's params, code files,
upstream outputs and its own outputs match `dvc.lock`). So the touch runs after a clean status and
never otherwise: a stale output is never marked current."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Sequence


class NotCurrentError(RuntimeError):
    """DVC does not vouch for the pulled results: the message lists each stage and why."""


def dvc_changes(root: str | Path = ".") -> dict:
    """`dvc status --json` of the workspace ({} when every stage matches dvc.lock)."""
    res = subprocess.run(["dvc", "status", "--json"], cwd=root, capture_output=True, text=True)
    if res.returncode != 0:
        raise NotCurrentError(f"dvc status failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}")
    return json.loads(res.stdout or "{}")


def describe(changes: dict) -> list[str]:
    """One line per stage that is not current, e.g.
    `sample: changed deps (params.yaml: sampling modified)`."""
    lines = []
    for stage, entries in sorted(changes.items()):
        parts = []
        for entry in entries:
            if not isinstance(entry, dict):
                parts.append(str(entry))
                continue
            for kind, what in entry.items():
                items = []
                for name, state in (what.items() if isinstance(what, dict) else [(str(what), "")]):
                    if isinstance(state, dict):     # a params file: each key and its state
                        items += [f"{name}: {k} {v}" for k, v in sorted(state.items())]
                    else:
                        items.append(f"{name} {state}".strip())
                parts.append(f"{kind} ({', '.join(items)})")
        lines.append(f"{stage}: {'; '.join(parts)}")
    return lines


def after_pull(root: str | Path = ".", snakemake: Sequence[str] = ("snakemake",), cores: int = 1) -> None:
    """Check `dvc status` is clean, then record the results as current for Snakemake."""
    changes = dvc_changes(root)
    if changes:
        raise NotCurrentError("DVC does not vouch for these results, so nothing was marked current:\n  "
                              + "\n  ".join(describe(changes))
                              + "\nrun `dvc pull` (missing files) or `dvc repro` (changed params or code) instead")
    subprocess.run([*snakemake, "--touch", "--forceall", "--cores", str(cores), "--quiet"], cwd=root, check=True)
