"""Small models made on the spot for integration tests (random init: fast, offline)."""
from __future__ import annotations

from pathlib import Path


def make_random_lm(out_dir: Path, seed: int = 0, hidden: int = 32, layers: int = 1) -> Path:
    from librarm.stages.bootstrap_tiny import build_model, build_tokenizer, save_model

    tok = build_tokenizer()
    arch = {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_layers": layers, "num_heads": 2,
            "max_positions": 512}
    model = build_model(arch, len(tok), tok.pad_token_id, tok.eos_token_id, seed)
    save_model(model, tok, out_dir)
    return out_dir


def params_with_path_model(params: dict, model_dir: Path, **sampling) -> dict:
    import copy

    p = copy.deepcopy(params)
    # Only the foundation stages: drop the learning-to-think and downstream sections and the judges they train.
    for key in ("judge_data", "rs", "sft", "rl", "scalar_rm", "compare", "pairs", "dpo", "evaluate_policy", "report"):
        p.pop(key, None)
    p["models"] = {k: v for k, v in p["models"].items() if v["source"] != "trained"}
    p["judges"] = {"base": p["judges"]["base"]}
    p["evaluate"]["judges"] = ["base"]
    p["evaluate"]["threshold_split"] = None
    p["models"]["rand"] = {"source": "path", "path": str(model_dir), "role": "generator"}
    p["generators"] = {"rand": {"model": "rand", "backend": "hf"}}
    p["judges"]["rand_judge"] = {"model": "rand", "backend": "hf", "kind": "generative"}
    p["sampling"].update(sampling)
    return p
