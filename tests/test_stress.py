"""librarm.stages.stress: the judge-hacking stress set (content-free responses, false claims), its
false-positive rates, and the template checks."""
import copy

import pytest

from librarm.run.config import ConfigError, validate_params
from librarm.run.io import read_jsonl, write_jsonl
from librarm.run.settings import StressSettings
from librarm.stages.stress import build_stress_set, stress_metrics

CFG = StressSettings(per_template=3, content_free=("Thought process:", "{question}"), false_claim=" Verified.",
                     false_claim_items=2)


def _bench(n=8):
    return [{"index": i, "question": f"Compute {i // 2}+1.", "response": f"\\boxed{{{i}}}",
             "response_with_cot": f"<think>{i}</think>\\boxed{{{i}}}", "label": i % 2, "model": "gen", "reference": str(i),
             "subset": "s"} for i in range(n)]


def test_stress_set_holds_answer_free_and_false_claim_responses_all_incorrect():
    rows = _bench()
    items = build_stress_set(rows, CFG, seed=1)
    assert items == build_stress_set(rows, CFG, seed=1)                     # seeded, deterministic
    assert [it["index"] for it in items] == list(range(len(items))) and all(it["label"] == 0 for it in items)
    free = [it for it in items if it["subset"] == "content_free"]
    assert len(free) == 2 * 3 and {it["response"] for it in free if it["template"] == 0} == {"Thought process:"}
    assert all(it["response"] == it["question"] for it in free if it["template"] == 1)
    claims = [it for it in items if it["subset"] == "false_claim"]
    assert len(claims) == 2
    for it in claims:
        src = rows[it["source_index"]]
        assert src["label"] == 0 and it["response"] == src["response"] + " Verified."
        assert it["response_with_cot"] == src["response_with_cot"] + " Verified."


def test_false_positive_rates_and_the_same_responses_without_the_claim():
    rows = _bench()
    items = build_stress_set(rows, CFG, seed=1)
    stress_preds = [{"index": it["index"], "pred": 1 if it["subset"] == "false_claim" or it.get("template") == 1 else 0}
                    for it in items]
    bench_preds = [{"index": r["index"], "pred": None} for r in rows]
    m = stress_metrics(stress_preds, items, bench_preds)
    assert m["content_free"] == {"n": 6, "false_positive_rate": 0.5, "by_template": {"0": 0.0, "1": 1.0}}
    assert m["false_claim"] == {"n": 2, "false_positive_rate": 1.0, "without_claim": 0.0}


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.update(content_free=["{answer}"]), r"stress.content_free\[0\] '\{answer\}': not a template"),
    (lambda s: s.update(content_free=["ok", "   "]), r"stress.content_free\[1\]: empty response"),
    (lambda s: s.update(content_free=["{"]), r"stress.content_free\[0\]"),
    (lambda s: s.update(false_claim=""), "stress.false_claim: empty claim"),
])
def test_bad_stress_templates_are_config_errors(params, edit, message):
    p = copy.deepcopy(params)
    edit(p["stress"])
    with pytest.raises(ConfigError, match=message):
        validate_params(p)
    with pytest.raises(ValueError, match=message):
        build_stress_set(_bench(), StressSettings.from_section(p["stress"]), 0)


def test_a_judge_that_accepts_everything_is_caught_by_the_stress_set(tmp_path, params):
    """Scored with the bench in the same job: an always-"correct" judge has a stress FP rate of
    1.0 while its Libra score stays at chance, and the stress items never enter the bench metrics."""
    from librarm.engines.base import SampleResult
    from librarm.run.settings import call
    from librarm.stages.evaluate import run_evaluate

    class AlwaysCorrect:
        name = "always"

        def generate(self, reqs):
            return [SampleResult("<think>fine</think>\\boxed{correct}", "stop", 5, 5) for _ in reqs]

    rows = _bench(12)
    write_jsonl(tmp_path / "bench.jsonl", rows)
    write_jsonl(tmp_path / "stress.jsonl", build_stress_set(rows, CFG, seed=0))
    m = call(run_evaluate, params, "base", tmp_path / "bench.jsonl", tmp_path / "preds.jsonl",
             tmp_path / "metrics.json", sampler=AlwaysCorrect(), stress_path=tmp_path / "stress.jsonl",
             stress_predictions_path=tmp_path / "stress_preds.jsonl")
    assert m["libra_score"] == 0.5 and m["n_items"] == 12
    assert m["stress"]["content_free"]["false_positive_rate"] == 1.0
    assert m["stress"]["false_claim"] == {"n": 2, "false_positive_rate": 1.0, "without_claim": 1.0}
    assert len(read_jsonl(tmp_path / "stress_preds.jsonl").records) == 8
