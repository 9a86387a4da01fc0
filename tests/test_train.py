"""librarm.stages.train: judge items (split by problem, held-out generators, balanced labels),
rejection-sampling stats, verdict-only text and reward pairs, and short real TRL runs on tiny models
(SFT label tokens, GRPO learning a trivial judging task, rewards aligned with item ids under shuffle)."""
import random

import pytest

from librarm.run.io import read_jsonl, write_jsonl
from librarm.run.settings import call
from librarm.stages.train import (
    build_judge_items,
    build_rl_pool,
    filter_by_pass_rate,
    reward_pairs,
    rs_stats,
    verdict_only,
)


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


def test_rl_pool_has_every_balanced_item_outside_the_validation_problems():
    records = _verified()
    train, val, _ = build_judge_items(records, seed=1, val_fraction=0.25, exclude_generators=["g3"], per_label=1)
    pool, stats = build_rl_pool(records, seed=1, exclude_generators=["g3"], val=val)
    assert not {i["problem_id"] for i in pool} & {i["problem_id"] for i in val}
    assert {i["item_id"] for i in train} <= {i["item_id"] for i in pool}       # the capped items are in it
    assert len(pool) > len(train) and {i["model"] for i in pool} == {"g1", "g2"}
    assert stats["label_balance"][0] == stats["label_balance"][1] == len(pool) // 2
    assert [i["index"] for i in pool] == list(range(len(pool)))


class _SeededVerdicts:
    """A sampler whose verdict is right for a request when its seed's hash says so: an item's rate
    depends only on its own requests' seeds, as with the real samplers."""

    def __init__(self):
        self.rated = 0

    def generate(self, requests):
        from librarm.engines.base import SampleResult
        from librarm.run.io import stable_hash

        self.rated += len(requests)
        out = []
        for r in requests:
            right = int(stable_hash(r.seed), 16) % 3 != 0
            verdict = "correct" if right == bool(r.problem["label"]) else "incorrect"
            out.append(SampleResult(f"<think>x</think>\\boxed{{{verdict}}}", "stop", 1, 1))
        return out


def test_pass_rate_filter_rates_only_what_grpo_draws_and_keeps_file_order(params):
    from dataclasses import replace

    from librarm.run.settings import RlSettings

    items = [{**r, "index": i} for i, r in enumerate(build_rl_pool(_verified(60), 1, [], [])[0])]
    rl = replace(RlSettings.from_params(params), steps=5, batch_size=8, num_generations=4)   # 10 prompts
    sampler = _SeededVerdicts()
    kept, stats = call(filter_by_pass_rate, params, items, sampler, rl, "judge_rl")
    assert stats["needed"] == 10 and stats["kept"] >= 10 and stats["rated"] < len(items)
    assert sampler.rated == stats["rated"] * rl.passrate_k
    assert [it["index"] for it in kept] == sorted(it["index"] for it in kept)
    # the same items rated whole: each rated item's rate is unchanged by the chunking
    whole = replace(rl, steps=10_000)
    kept_all, stats_all = call(filter_by_pass_rate, params, items, _SeededVerdicts(), whole, "judge_rl")
    assert stats_all["rated"] == len(items)
    assert {it["item_id"] for it in kept} <= {it["item_id"] for it in kept_all}


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

    from librarm.stages.bootstrap_tiny import build_model, build_tokenizer

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

    from librarm.run.settings import LaunchSettings, SftSettings
    from librarm.stages.train import run_grpo, run_sft

    base = make_random_lm(tmp_path / "rand", hidden=64, layers=2)
    rows = []
    for i in range(64):
        prompt = f"<|user|>Judge.\nQ: Compute {i}+1.\nA: \\boxed{{{i + 1}}}<|end|><|assistant|>"
        rows.append({"prompt": prompt, "completion": "\\boxed{" + ("correct" if i % 2 else "incorrect") + "}",
                     "kind": "judging", "item_id": str(i), "label": i % 2})
    write_jsonl(tmp_path / "sft.jsonl", rows)
    run_sft(tmp_path / "sft.jsonl", str(base), tmp_path / "sft", SftSettings(init="rand", steps=100, learning_rate=3e-3, batch_size=16),
            name="sft", resume_root=tmp_path / "resume", launch=LaunchSettings())
    items = [{"question": f"Compute {i}+1.", "response": f"\\boxed{{{i + 1}}}", "label": 1, "item_id": f"it{i}",
              "index": i} for i in range(32)]
    write_jsonl(tmp_path / "items.jsonl", items)
    p = copy.deepcopy(params)
    p["judge"]["prompt_template"] = "Judge.\nQ: {question}\nA: {response}"
    p["rl"].update({"steps": 30, "batch_size": 16, "num_generations": 8, "max_completion_length": 24,
                    "learning_rate": 5e-4, "passrate_k": 4, "passrate_band": [0.0, 1.0], "l_exp": 24, "l_max": 32,
                    "val_every": 1000})
    out = call(run_grpo, p, tmp_path / "items.jsonl", str(tmp_path / "sft"), tmp_path / "rl", name="rl",
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


def test_rs_reads_the_teachers_verdicts_as_its_spec_says_and_keeps_its_reasoning(tmp_path, params):
    """An API teacher returns its reasoning apart from its answer: the SFT completion keeps it inside
    <think>…</think>, and the verdict is read with the teacher's prompt_opens_think."""
    import copy

    from tiny_fixtures import make_random_lm

    from librarm.engines.base import SampleResult
    from librarm.stages.train import run_rs

    class Teacher:          # right on even items, with reasoning; no local tokenizer (an API)
        name = "api-teacher"

        def generate(self, reqs):
            return [SampleResult("\\boxed{" + ("correct" if r.problem["label"] else "incorrect") + "}", "stop", 9, 3,
                                 reasoning=f"checked {r.problem['item_id']}") for r in reqs]

    p = copy.deepcopy(params)
    p["models"]["student"] = {"source": "path", "path": str(make_random_lm(tmp_path / "student", hidden=16))}
    p["sft"]["init"] = "student"
    p["judges"]["api"] = {"backend": "http", "kind": "generative", "model": "student", "prompt_opens_think": True}
    p["rs"].update(teacher="api", k=2, max_per_item=1, mix_ratio=0.0)
    items = [{"item_id": f"it{i}", "question": f"Compute {i}+1.", "response": f"\\boxed{{{i + 1}}}", "label": i % 2,
              "model": "gen", "subset": "s"} for i in range(6)]
    write_jsonl(tmp_path / "train.jsonl", items)
    stats = call(run_rs, p, tmp_path / "train.jsonl", [], tmp_path / "traj.jsonl", tmp_path / "sft.jsonl",
                 tmp_path / "stats.json", sampler=Teacher())
    trajs = read_jsonl(tmp_path / "traj.jsonl").records
    assert len(trajs) == 12 and all(t["accepted"] and t["status"] == "parsed" for t in trajs)
    assert trajs[0]["completion"] == "<think>checked it0</think>\n\\boxed{incorrect}"
    assert stats["prompts_over_budget"] == {"truncated": 0, "skipped": 0}
    sft = read_jsonl(tmp_path / "sft.jsonl").records
    assert sft and all(r["completion"].startswith("<think>checked ") for r in sft)


def test_grpo_rollout_passes_finish_reason_to_the_rewards(tmp_path):
    """The rollout hands TRL each completion's finish_reason (an extra field that reaches the reward
    functions): a completion cut at max_new_tokens has no EOS and earns no correctness reward."""
    from types import SimpleNamespace

    from tiny_fixtures import make_random_lm
    from transformers import AutoTokenizer

    from librarm.engines.base import SamplingConfig
    from librarm.engines.hf import HFSampler
    from librarm.judging.rewards import correctness_reward
    from librarm.stages.train import sampler_rollout

    model_dir = make_random_lm(tmp_path / "rand", hidden=16)
    sampler = HFSampler(str(model_dir), SamplingConfig(temperature=1.0, max_new_tokens=4, batch_size=8, top_p=1.0))
    tok = AutoTokenizer.from_pretrained(model_dir)
    trainer = SimpleNamespace(accelerator=SimpleNamespace(unwrap_model=lambda m: m), model=sampler.model,
                              processing_class=tok, state=SimpleNamespace(global_step=0))
    out = sampler_rollout(sampler, seed=1)([f"<|user|>q{i}<|end|><|assistant|>" for i in range(6)], trainer)
    assert len(out["finish_reason"]) == len(out["completion_ids"]) == 6
    cut = [i for i, f in enumerate(out["finish_reason"]) if f == "length"]
    assert cut, "a 4-token limit on a random model cuts some completion"
    assert all(out["completion_ids"][i][-1] != tok.eos_token_id for i in cut)
    rewards = correctness_reward(["\\boxed{correct}"] * 6, label=[1] * 6, finish_reason=out["finish_reason"])
    assert [i for i, r in enumerate(rewards) if r == 0.0] == cut


def test_l_exp_auto_is_a_quantile_of_the_starting_judges_validation_lengths(params):
    """rl.l_exp: auto puts L_exp at the rl.l_exp_quantile quantile of the starting judge's lengths
    on validation items, so the penalty bites on about 1 - quantile of them (capped at l_max)."""
    import copy

    from librarm.engines.base import SampleResult
    from librarm.stages.train import length_threshold

    class Lengths:
        name = "lengths"

        def generate(self, reqs):
            return [SampleResult("\\boxed{correct}", "stop", 5, 10 * (i + 1)) for i, _ in enumerate(reqs)]

    items = [{"item_id": f"v{i}", "question": "Q", "response": "A", "label": 1} for i in range(8)]   # lengths 10..80
    p = copy.deepcopy(params)
    p["rl"].update(l_exp="auto", l_exp_quantile=0.75, l_max=160)
    got = call(length_threshold, p, Lengths(), items, "rl")
    assert got["l_exp"] == 70 and got["val_penalised_share"] == 0.125 and got["val_length_max"] == 80
    p["rl"]["l_max"] = 50
    assert call(length_threshold, p, Lengths(), items, "rl")["l_exp"] == 50
    with pytest.raises(ValueError, match="needs validation items"):
        call(length_threshold, p, Lengths(), [], "rl")
