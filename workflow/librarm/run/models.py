"""Where each model of `models` lives, and which folders the pipeline itself makes: what stages and
rules need from the model registry (kept apart from config validation, so that editing a check's
message reruns no job)."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from librarm.run.paths import MODEL_DIR, TRAINED_MODEL
from librarm.run.settings import ModelSpec, RlSettings, ScalarRmSettings, SftSettings


def model_ref(params: Mapping[str, Any], name: str) -> dict:
    """Where model `name` lives: {'path': local folder or hub id, 'revision': str|None, 'local': bool}."""
    m = ModelSpec.of(params, name)
    if m.source in ("tiny", "gguf"):
        return {"path": MODEL_DIR.format(model=name), "revision": None, "local": True}
    if m.source == "trained":
        return {"path": TRAINED_MODEL.format(model=name), "revision": None, "local": True}
    if m.source == "path":
        return {"path": m.path, "revision": None, "local": True}
    return {"path": m.id, "revision": m.revision, "local": False}


def training_start(params: Mapping[str, Any], name: str) -> str:
    """The model a trained judge starts from: its sft or rl variant's init, else its section's."""
    kind = ModelSpec.of(params, name).train
    if kind in ("sft", "nothink"):
        return SftSettings.from_params(params).for_model(name).init
    if kind == "rl":
        return RlSettings.from_params(params).variant(name).init
    return ScalarRmSettings.from_params(params).init


def local_model_dirs(params: Mapping[str, Any], model_names: Iterable[str]) -> list[str]:
    """Model folders the pipeline itself produces (inputs of the jobs that use them)."""
    out = []
    for name in model_names:
        if ModelSpec.of(params, name).source in ("tiny", "gguf", "trained"):
            out.append(model_ref(params, name)["path"])
    return sorted(set(out))


