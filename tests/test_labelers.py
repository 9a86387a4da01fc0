"""librarm.run.labelers: labeler kinds (judge, gold, noisy gold, random) and their errors, the noisy-gold
keep probability, the policy names (budget, gold curve, raw) and the pairs each policy's DPO steps
are counted from."""
import pytest

from librarm.run.labelers import downstream_policies, dpo_step_pairs, keep_probability, labeler_kind, policy_parts


def test_labeler_kinds_and_errors():
    judges = {"rl": {}, "base": {}}
    assert labeler_kind("rl", judges) == "judge"
    assert labeler_kind("gold", judges) == "gold"
    assert labeler_kind("gold_p70", judges) == "noisy_gold"
    assert labeler_kind("random", judges) == "random"
    with pytest.raises(ValueError, match="not a key of 'judges'"):
        labeler_kind("sft", judges)
    assert keep_probability("gold_p60") == pytest.approx(0.6)
    with pytest.raises(ValueError):
        keep_probability("gold")


def test_policy_names_and_steps():
    from librarm.run.settings import PairsSettings

    cfg = PairsSettings(pool="p", policy="policy", n=2, val_fraction=0.2, per_problem=1, budget=10,
                        labelers=("rl", "gold"), gold_curve=(50, 100), raw_labelers=("gold",))
    assert downstream_policies(cfg) == ["rl", "gold", "curve/gold-50", "curve/gold-100", "raw/gold"]
    assert downstream_policies(cfg.replace(labelers=("rl",), raw_labelers=())) == ["rl"]
    assert policy_parts("none") == ("none", None, None)
    assert policy_parts("curve/gold-50") == ("curve", "gold", 50)
    assert policy_parts("raw/rl") == ("raw", "rl", None)
    assert policy_parts("rl") == ("budget", "rl", None)
    # a short labeler and a curve point take the budget's steps; a raw run its own count
    assert dpo_step_pairs("scalar", 37, 400) == dpo_step_pairs("curve/gold-50", 50, 400) == 400
    assert dpo_step_pairs("raw/gold", 612, 400) == 612
