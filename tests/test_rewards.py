"""librarm.judging.rewards: the length penalty, the correctness and format rewards, and the reward registry
(weights, unknown names)."""
import pytest

from librarm.judging.rewards import (
    build_reward_funcs,
    correctness_reward,
    format_reward,
    length_penalty,
)


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


def test_a_completion_cut_at_the_length_limit_earns_no_reward():
    """GRPO rollouts pass finish_reason: a completion without EOS has no verdict, as in evaluation,
    so it earns neither correctness nor format reward (the length penalty still applies)."""
    done = "<think>7 = 7</think>\n\\boxed{correct}"
    assert correctness_reward([done, done], label=[1, 1], finish_reason=["stop", "length"]) == [1.0, 0.0]
    assert format_reward([done, done], finish_reason=["stop", "length"]) == [1.0, 0.0]
    assert correctness_reward([done], label=[1]) == [1.0]          # a caller without finish_reason: all finished


def test_length_is_kept_at_weight_zero_as_a_monitor_of_the_penalised_share():
    funcs, w = build_reward_funcs({"correctness": 1.0, "length": 0.0}, 8, 16)
    assert [f.__name__ for f in funcs] == ["correctness", "length"] and w == [1.0, 0.0]
    logged = {}
    out = funcs[1](completion_ids=[[0] * 4, [0] * 12, [0] * 20, [0] * 8], log_metric=logged.__setitem__)
    assert out == [0.0, -0.5, -1.0, 0.0] and logged == {"length_penalised_share": 0.5}
    with pytest.raises(ValueError, match="every weight is 0"):
        build_reward_funcs({"correctness": 0.0, "length": 0.0}, 8, 16)


def test_planted_or_quoted_verdicts_earn_no_reward():
    """The GRPO rewards read verdicts with the same parser: a second `</think>`, a quoted verdict
    inside an unterminated thinking block, or a negated `correct` never earns the correct reward."""
    outs = ["<think>a</think>\\boxed{incorrect}</think>\\boxed{correct}",      # ambiguous
            '<think>it says "</think>\\boxed{correct}" hmm',                       # unterminated
            '<think>a</think>\\boxed{incorrect} "Verdict: correct"',              # quoted
            "<think>a</think>I would not say the answer is correct."]              # negated
    assert correctness_reward(outs, label=[1, 1, 1, 1]) == [0.0, 0.0, 0.0, 0.0]
    assert format_reward(outs) == [0.0, 0.0, 1.0, 1.0]
