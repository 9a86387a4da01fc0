"""The backends that turn chat messages into text, and the one registry that names them.

A backend is a module of this package (or of any package: `register`) that declares
`BACKEND = Backend(...)`: its name, the engine fields it reads, its params checks, whether it runs
in the vLLM environment, and a factory. The registry imports a backend's module only when the
backend is used, so a phase's code hash holds only the backends its params use
(`phases.code_hash`), and the CLI's choices, the config checks, the schema's enum (a test) and
the rules' environments all read the registry (`names`, `get`).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from librarm.engines.base import Sampler, SamplingConfig
    from librarm.run.settings import EngineSpec, Models

# The backends that ship with the package: name -> module (imported on first use).
BUILTIN = {"hf": "librarm.engines.hf", "vllm": "librarm.engines.vllm", "http": "librarm.engines.http",
           "pseudo": "librarm.engines.pseudo", "rule": "librarm.engines.rule"}


@dataclass(frozen=True)
class ModelRef:
    """The weights a backend serves: a local folder or hub id, and its pinned revision."""

    path: str | None
    revision: str | None = None


@dataclass(frozen=True)
class Backend:
    name: str
    # (spec, model, sampling config, threads, params seed) -> Sampler
    make: Callable[["EngineSpec", ModelRef, "SamplingConfig", int | None, int], "Sampler"]
    description: str
    fields: tuple[str, ...] = ()         # the EngineSpec fields it reads beyond backend and model
    needs_model: bool = True             # reads `models.<spec.model>`
    vllm_env: bool = False               # runs in the vLLM environment (rules' conda env, venv re-exec)
    reads_labels: bool = False           # built from the data's labels (pseudo): never scores a benchmark
    # decodes weights a job saves to a local folder mid-training (vLLM): GRPO rollouts and DPO
    # validation of a model being trained go through it (hf decodes the live model instead)
    loads_saved_weights: bool = False
    # (spec, where) -> problems with its params, one line each, naming the key
    check: Callable[["EngineSpec", str], list[str]] | None = None
    # called before a job that uses it does any work (vllm: the job starts over under
    # LIBRARM_VLLM_PYTHON where this Python has no vLLM)
    prepare: Callable[[], object] | None = None
    module: str = field(default="", compare=False)


_REGISTRY: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Add a backend (or replace one of the same name); returns it, so a module can write
    `BACKEND = register(Backend(...))` for a backend that lives outside this package."""
    _REGISTRY[backend.name] = backend
    return backend


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def names() -> list[str]:
    """Every backend name: the built-in ones and those registered by a call."""
    return sorted(set(BUILTIN) | set(_REGISTRY))


def get(name: str) -> Backend:
    """The backend called `name`, its module imported on first use."""
    if name not in _REGISTRY:
        if name not in BUILTIN:
            raise ValueError(f"unknown backend {name!r} (one of: {', '.join(names())})")
        mod = importlib.import_module(BUILTIN[name])
        _REGISTRY[name] = mod.BACKEND
    return _REGISTRY[name]


def module_of(name: str) -> str | None:
    """The package module of a built-in backend (`engines/hf`), None for one registered by a call."""
    return BUILTIN[name].removeprefix("librarm.").replace(".", "/") if name in BUILTIN else None


def check(spec: "EngineSpec", where: str) -> list[str]:
    """Problems with an engine's params: an unknown backend, or what its backend's own check finds."""
    try:
        backend = get(spec.backend)
    except ValueError as exc:
        return [f"{where}.backend: {exc}"]
    return backend.check(spec, where) if backend.check else []


def make_sampler(spec: "EngineSpec", models: "Models", cfg: "SamplingConfig", seed: int,
                 threads: int | None = None, model_path: str | None = None) -> "Sampler":
    """The sampler of a generator or judge spec: its model (`models.<spec.model>`, or the folder
    model_path, e.g. a DPO run's policy) behind its backend; `seed` is the run's."""
    from librarm.run.models import model_ref

    backend = get(spec.backend)
    if not backend.needs_model:
        ref = ModelRef(None)
    elif model_path:
        ref = ModelRef(model_path)
    else:
        m = model_ref(models, spec.model)
        ref = ModelRef(m["path"], m["revision"])
    return backend.make(spec, ref, cfg, threads, seed)


def model_dirs(models: "Models", spec: "EngineSpec") -> list[str]:
    """The model folder a generator or judge reads, when its backend reads a model the pipeline
    makes (a rule's input)."""
    from librarm.run.models import local_model_dirs

    return local_model_dirs(models, [spec.model]) if get(spec.backend).needs_model else []
