"""Learning to think: reward functions, judge items, rejection-sampling stats, and
short real TRL runs on tiny models (SFT label tokens, GRPO learning a trivial judging task)."""
import random

import pytest

from librarm.io import write_jsonl
from librarm.rewards import (
    build_reward_funcs,
    correctness_reward,
    format_reward,
    length_penalty,
)
from librarm.train import build_judge_items, reward_pairs, rs_stats, verdict_only


def test_length_penalty_reconstruction():
    assert length_penalty(10, 64, 96) == 0.0
    assert length_penalty(64, 64, 96) == 0.0
    assert length_penalty(80, 64, 96) == pytest.approx(-0.5)
    assert length_penalty(96, 64, 96) == -1.0 and length_penalty(500, 64, 96) == -1.0
    assert length_penalty(65, 64, 64) == -1.0 and length_penalty(64, 64, 64) == 0.0   # step when equal


def test_correctness_and_format_rewards():
    outs = ["<think>a</think>\\boxed{correct}", "<think>a</think>\\boxed{incorrect}", "<think>a", "no verdict"]
    assert correctness_reward(outs, label=[1, 1, 1, 0]) == [1.0, 0.0, 0.0, 0.0]
    assert format_reward(outs) == [1.0, 1.0, 0.0, 0.0]


def test_reward_registry_weights_and_unknown():
    funcs, w = build_reward_funcs({"correctness": 1.0, "format": 0.0, "length": 0.5}, 8, 16)
    assert [f.__name__ for f in funcs] == ["correctness", "length"] and w == [1.0, 0.5]
    with pytest.raises(ValueError, match="unknown reward"):
        build_reward_funcs({"style": 1.0}, 8, 16)


def _verified(n_problems=20, gens=("g1", "g2", "g3")):
    recs = []
    for p in range(n_problems):
        for g in gens:
            for k in range(4):
                lab = int(k < 2)
                recs.append({"sample_id": f"{g}|p{p}|{k}", "problem_id": f"p{p}", "generator": g, "subset": "pool",
                             "sample_idx": k, "label": lab, "reason": "correct" if lab else "wrong_answer",
                             "question": f"Q{p}", "response": f"\\boxed{{{k}}}", "gold": "0",
                             "response_with_cot": f"<think>{g}{p}{k}</think>\\boxed{{{k}}}"})
    return recs


def test_judge_items_split_by_problem_and_hold_out_generators():
    train, val, stats = build_judge_items(_verified(), seed=1, val_fraction=0.25, exclude_generators=["g3"],
                                          per_label=None)
    assert {i["model"] for i in train + val} == {"g1", "g2"}
    assert not {i["problem_id"] for i in train} & {i["problem_id"] for i in val}
    assert stats["val_problems"] == 5
    for split in (train, val):
        labels = [i["label"] for i in split]
        assert labels.count(0) == labels.count(1)
    assert len({i["item_id"] for i in train}) == len(train)


def test_rs_stats_and_band_warning():
    trajs = [{"item_id": f"i{i // 2}", "label": i % 2, "generator": "g", "subset": "s", "accepted": i % 4 == 0}
             for i in range(40)]
    items = [{"item_id": f"i{i}"} for i in range(20)]
    st = rs_stats(trajs, items, [0.3, 0.9])
    assert st["acceptance_rate"] == 0.25 and st["acceptance_by_label"] == {"0": 0.5, "1": 0.0}
    assert st["items_none_accepted"] == 10 and st["warnings"]


def test_verdict_only_and_reward_pairs():
    assert verdict_only("<think>long</think>\\boxed{incorrect}") == "\\boxed{incorrect}"
    items = [{"question": "q", "label": 1, "response": "a", "item_id": "1"},
             {"question": "q", "label": 0, "response": "b", "item_id": "2"},
             {"question": "r", "label": 1, "response": "c", "item_id": "3"}]
    assert reward_pairs(items, 0, 4) == [{"question": "q", "chosen": "a", "rejected": "b"}]


# ----------------------------------------------------------------------------- real TRL runs
def test_sft_label_tokens_equal_trajectory_with_thinking(tmp_path):
    """The unmasked label tokens of an SFT example are exactly the trajectory's tokens (+ EOS),
    thinking included: no chat template touched the completion."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from librarm.tinyworld import build_model, build_tokenizer

    tok = build_tokenizer()
    model = build_model({"hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2,
                         "max_positions": 512}, len(tok), tok.pad_token_id, tok.eos_token_id, 0)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Judge.\nQ: Compute 1+1.\nA: \\boxed{2}"}],
                                     tokenize=False, add_generation_prompt=True)
    traj = "<think>1+1=2\nmine=2 theirs=2</think>\n\\boxed{correct}"
    args = SFTConfig(output_dir=str(tmp_path / "o"), max_steps=1, per_device_train_batch_size=1, report_to=[],
                     completion_only_loss=True, use_cpu=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list([{"prompt": prompt, "completion": traj}]),
                         processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    labels = [t for t in batch["labels"][0].tolist() if t != -100]
    assert labels == tok(traj, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert "<think>1+1=2" in tok.decode(labels)


@pytest.mark.slow
def test_grpo_learns_trivial_judging_task_and_rewards_stay_aligned(tmp_path, params):
    """Every item's label is 1 ("correct"); a judge that says either verdict half the time must
    learn to say "correct". A recording reward checks TRL hands each completion its own item's
    columns even though the dataset is shuffled."""
    import copy

    from tiny_fixtures import make_random_lm

    from librarm.train import TrainConfig, run_grpo, run_sft

    base = make_random_lm(tmp_path / "rand", hidden=64, layers=2)
    rows = []
    for i in range(64):
        prompt = f"<|user|>Judge.\nQ: Compute {i}+1.\nA: \\boxed{{{i + 1}}}<|end|><|assistant|>"
        rows.append({"prompt": prompt, "completion": "\\boxed{" + ("correct" if i % 2 else "incorrect") + "}",
                     "kind": "judging", "item_id": str(i), "label": i % 2})
    write_jsonl(tmp_path / "sft.jsonl", rows)
    run_sft(tmp_path / "sft.jsonl", str(base), tmp_path / "sft", TrainConfig(max_steps=100, learning_rate=3e-3, batch_size=16),
            name="sft", resume_root=tmp_path / "resume")
    items = [{"question": f"Compute {i}+1.", "response": f"\\boxed{{{i + 1}}}", "label": 1, "item_id": f"it{i}",
              "index": i} for i in range(32)]
    write_jsonl(tmp_path / "items.jsonl", items)
    p = copy.deepcopy(params)
    p["judge"]["prompt_template"] = "Judge.\nQ: {question}\nA: {response}"
    p["rl"].update({"steps": 30, "batch_size": 16, "num_generations": 8, "max_completion_length": 24,
                    "learning_rate": 5e-4, "passrate_k": 4, "passrate_band": [0.0, 1.0], "l_exp": 24, "l_max": 32,
                    "val_every": 1000})
    out = run_grpo(p, tmp_path / "items.jsonl", str(tmp_path / "sft"), tmp_path / "rl", name="rl",
                   rewards={"correctness": 1.0}, resume_root=tmp_path / "resume")
    curve = [c["correctness"] for c in out["reward_curve"] if c["correctness"] is not None]
    first, last = sum(curve[:5]) / 5, sum(curve[-5:]) / 5
    assert last >= first + 0.2, curve
    assert out["global_step"] == 30


def test_rewards_stay_aligned_with_item_ids_under_shuffle(tmp_path, params):
    """TRL repeats dataset columns per completion; with shuffle on, a recording reward must see
    each item's own label next to its own id."""

    from datasets import Dataset
    from tiny_fixtures import make_random_lm
    from trl import GRPOConfig, GRPOTrainer

    model_dir = make_random_lm(tmp_path / "rand", hidden=16, layers=1)
    truth = {f"it{i}": random.Random(i).randint(0, 1) for i in range(24)}
    seen = []

    def recorder(completions, item_id, label, **_):
        seen.extend(zip(item_id, label))
        return [float(truth[i] == l) for i, l in zip(item_id, label)]

    ds = Dataset.from_list([{"prompt": f"<|user|>q{i}<|end|><|assistant|>", "item_id": k, "label": v}
                            for i, (k, v) in enumerate(truth.items())])
    args = GRPOConfig(output_dir=str(tmp_path / "o"), max_steps=3, per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=4, shuffle_dataset=True, report_to=[], use_cpu=True, seed=3,
                      disable_tqdm=True, save_strategy="no")
    GRPOTrainer(model=str(model_dir), reward_funcs=[recorder], args=args, train_dataset=ds).train()
    assert len(seen) == 3 * 8 and all(truth[i] == l for i, l in seen)
