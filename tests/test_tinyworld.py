"""librarm.stages.bootstrap_tiny: the pretraining corpus never draws from the problem region, the judge's
digit-wise compare line, and the noisy traces (slip rate, malformed forms)."""
from conftest import SYNTHETIC_SPECS

from librarm.stages.bootstrap_tiny import corpus_problem
from librarm.stages.problems import in_problem_region, parse_arithmetic, random_arithmetic, synthesize_sets


def test_corpus_never_draws_from_the_problem_region():
    import random

    rng = random.Random(0)
    assert not any(in_problem_region(corpus_problem(rng, 99, 9)) for _ in range(2000))
    sets = synthesize_sets(SYNTHETIC_SPECS, seed=3)
    assert all(in_problem_region(parse_arithmetic(r["problem"])) for recs in sets.values() for r in recs)


def test_judge_compare_line_is_digitwise():
    from librarm.stages.bootstrap_tiny import compare_line

    assert compare_line("73", "75") == "mine=073 theirs=075 digits=0/0,7/7,3/5 match=yyn"
    assert compare_line("7", "7") == "mine=007 theirs=007 digits=0/0,0/0,7/7 match=yyy"
    assert compare_line("101", "99") == "mine=101 theirs=099 digits=1/0,0/9,1/9 match=nnn"


def test_noisy_trace_slip_rate_and_malformed_forms():
    import random

    from librarm.stages.bootstrap_tiny import noisy_trace

    rng = random.Random(0)
    probs = [random_arithmetic(rng, 3, 99, 9) for _ in range(2000)]
    clean = sum(noisy_trace(p, rng, 0.0, 0.0).endswith("\\boxed{" + str(p.answer) + "}") for p in probs)
    assert clean == 2000
    right = sum(noisy_trace(p, rng, 0.3, 0.0).endswith("\\boxed{" + str(p.answer) + "}") for p in probs)
    assert abs(right / 2000 - 0.7 ** 3) < 0.05          # each step slips with probability 0.3
    malformed = [noisy_trace(p, rng, 0.0, 1.0) for p in probs[:200]]
    assert any(m.endswith("</think>") for m in malformed) and any("wait, check" in m for m in malformed)
