"""Where each model of `models` lives, and which folders the pipeline itself makes: what stages and
rules need from the model registry (kept apart from config validation, so that editing a check's
message reruns no job)."""
from __future__ import annotations

from typing import Iterable

from librarm.run.paths import MODEL_DIR, TRAINED_MODEL
from librarm.run.settings import Models, RlSettings, ScalarRmSettings, SettingsError, SftSettings


def model_ref(models: Models, name: str) -> dict:
    """Where model `name` lives: {'path': local folder or hub id, 'revision': str|None, 'local': bool}."""
    m = models[name]
    if m.source in ("tiny", "gguf"):
        return {"path": MODEL_DIR.format(model=name), "revision": None, "local": True}
    if m.source == "trained":
        return {"path": TRAINED_MODEL.format(model=name), "revision": None, "local": True}
    if m.source == "path":
        return {"path": m.path, "revision": None, "local": True}
    return {"path": m.id, "revision": m.revision, "local": False}


def training_start(name: str, models: Models, sft: SftSettings | None, rl: RlSettings | None,
                   scalar_rm: ScalarRmSettings | None) -> str:
    """The model a trained judge starts from: its sft or rl variant's init, else its section's."""
    kind = models[name].train
    section = sft if kind in ("sft", "nothink") else rl if kind == "rl" else scalar_rm
    if section is None:
        raise SettingsError(f"models.{name}: train {kind!r} needs the {'sft' if kind == 'nothink' else kind} section")
    if kind in ("sft", "nothink"):
        return sft.for_model(name).init
    if kind == "rl":
        return rl.variant(name).init
    return scalar_rm.init


def local_model_dirs(models: Models, model_names: Iterable[str]) -> list[str]:
    """Model folders the pipeline itself produces (inputs of the jobs that use them)."""
    out = []
    for name in model_names:
        if models[name].source in ("tiny", "gguf", "trained"):
            out.append(model_ref(models, name)["path"])
    return sorted(set(out))


