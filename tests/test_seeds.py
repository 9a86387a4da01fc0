"""Mean ± sd over seed experiments, read from `dvc exp show --json` output."""
import json

import pytest

from librarm.seeds import experiment_records, run_seed_summary, seed_groups, seed_table


def _rev(name, seed, lr, score, gain):
    params = {"seed": 1, "sft": {"seed": seed, "learning_rate": lr}, "rl": {"seed": seed}, "dpo": {"seeds": [seed]}}
    metrics = {"results/report/metrics.json": {"data": {"libra.rl": score, "gain.rl": gain, "bench_items": 1080}}}
    return {"rev": f"sha-{name}", "name": name, "data": {"rev": f"sha-{name}", "params": {"params.yaml": {"data": params}},
                                                         "metrics": metrics}}


def _exp_show():
    # the shape of `dvc exp show --json`: baselines, each with its experiments and their revs
    base = _rev("main", 0, 0.1, 0.80, 0.10)
    base["experiments"] = [{"name": n, "revs": [_rev(n, s, 0.1, sc, g)]}
                           for n, s, sc, g in (("exp-a", 1, 0.82, 0.12), ("exp-b", 2, 0.78, 0.08))]
    base["experiments"].append({"name": "exp-lr", "revs": [_rev("exp-lr", 0, 0.2, 0.5, 0.0)]})
    return [_rev("workspace", 0, 0.1, 0.80, 0.10), base]


def test_groups_differ_only_in_seeds_and_count_each_revision_once():
    recs = list(experiment_records(_exp_show()))
    assert len(recs) == 5
    groups = sorted(seed_groups(recs), key=len)
    assert [len(g) for g in groups] == [1, 3]           # workspace == main; exp-lr is another experiment
    t = seed_table(groups[1])
    assert t["libra_score rl"]["mean"] == pytest.approx(0.80) and t["libra_score rl"]["n"] == 3
    assert t["libra_score rl"]["sd"] == pytest.approx(0.02)
    assert t["downstream gain rl"]["mean"] == pytest.approx(0.10)
    assert set(t) == {"libra_score rl", "downstream gain rl"}     # counts are not averaged over seeds


def test_seed_summary_markdown(tmp_path):
    path = tmp_path / "exp.json"
    path.write_text(json.dumps(_exp_show()))
    text = run_seed_summary(str(path))
    assert "| libra_score rl | 80.0 | 2.0 | 3 |" in text
    assert "| libra_score rl | 50.0 | n/a | 1 |" in text
