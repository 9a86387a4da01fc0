"""librarm.stages.dpo on tiny models: the DPO rows use the sampler's prompt and keep the thinking, a short
real TRL run lowers the loss and keeps the best validation checkpoint, and the settings are checked."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from librarm.run.io import write_jsonl
from librarm.run.settings import call


def _arith_pairs(n: int) -> tuple[list[dict], list[dict]]:
    pairs, val = [], []
    for i in range(n):
        a, b = i % 9 + 1, (i * 7) % 9
        q = f"Compute {a}+{b}."
        pairs.append({"pair_id": f"p{i}", "problem_id": f"q{i}", "question": q,
                      "chosen": f"<think>{a}+{b}={a + b}</think>\n\\boxed{{{a + b}}}",
                      "rejected": f"<think>{a}+{b}={a + b + 1}</think>\n\\boxed{{{a + b + 1}}}"})
    for i in range(6):
        val.append({"id": f"v{i}", "problem": f"Compute {i}+1.", "answer": str(i + 1)})
    return pairs, val


@pytest.fixture
def dpo_params(params):
    p = copy.deepcopy(params)
    p["dpo"].update(learning_rate=0.003, beta=0.1, epochs=4, batch_size=8, val_every=5, val_k=1)
    p["evaluate_policy"]["max_new_tokens"] = 24
    return p


def test_dpo_rows_use_the_samplers_prompt_and_keep_the_thinking(tmp_path, dpo_params):
    from tiny_fixtures import make_random_lm

    from librarm.engines.base import SampleRequest, SamplingConfig
    from librarm.engines.hf import HFSampler
    from librarm.stages.dpo import dpo_rows
    from librarm.stages.sample import problem_messages

    model_dir = make_random_lm(tmp_path / "rand", hidden=16)
    pairs, _ = _arith_pairs(2)
    sampler = HFSampler(str(model_dir), SamplingConfig(max_new_tokens=2, temperature=1.0, top_p=1.0, batch_size=64))
    rows = call(dpo_rows, dpo_params, pairs, sampler.tok)
    want = sampler.encode_prompts([SampleRequest(problem_messages({"problem": pairs[0]["question"]}, None), 0)])[0]
    assert sampler.tok(rows[0]["prompt"], add_special_tokens=False)["input_ids"] == want
    assert rows[0]["chosen"].startswith("<think>") and rows[0]["chosen"] == pairs[0]["chosen"]


def test_short_dpo_run_lowers_the_loss_and_keeps_the_best_val_checkpoint(tmp_path, dpo_params):
    from tiny_fixtures import make_random_lm

    from librarm.run.settings import DpoSettings
    from librarm.stages.dpo import run_dpo

    model_dir = make_random_lm(tmp_path / "rand", hidden=32, layers=1)
    pairs, val = _arith_pairs(48)
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    write_jsonl(tmp_path / "val.jsonl", val)
    log = call(run_dpo, dpo_params, tmp_path / "pairs.jsonl", tmp_path / "val.jsonl", str(model_dir), tmp_path / "out",
               name="t", seed=0, threads=1, resume_root=tmp_path / "resume")
    assert log["steps"] == DpoSettings.from_params(dpo_params).steps(48) == 24
    losses = [h["loss"] for h in log["loss_curve"]]
    assert losses[0] == pytest.approx(np.log(2), abs=0.02)        # policy == reference at step 1
    assert np.mean(losses[-4:]) < 0.7 * losses[0]                 # falls by a set margin (0.69 -> ~0.39 seen)
    assert [v["step"] for v in log["val_curve"]] == [0, 5, 10, 15, 20, 24]   # step 0: the untrained policy
    best = max(log["val_curve"], key=lambda v: v["val_avg_at_k"])
    assert log["selected_val_avg_at_k"] == best["val_avg_at_k"]
    assert (tmp_path / "out" / "config.json").exists() and (tmp_path / "out" / "tokenizer_config.json").exists()


def test_dpo_settings_are_checked(dpo_params):
    from librarm.run.settings import DpoSettings

    with pytest.raises(ValueError, match="beta"):
        DpoSettings.from_section({**dpo_params["dpo"], "beta": 0})
    assert DpoSettings.from_section({**dpo_params["dpo"], "epochs": 1.5, "batch_size": 10}).steps(21) == 4
