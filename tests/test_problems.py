"""librarm.stages.problems: synthetic sets (pairwise disjoint and seeded; a planted duplicate is caught), the
problems stage (sets, stats, the quarantine file), real MATH-500 with a level filter and a limit,
decontamination against a real eval set, a bad line named by file:line:field, and the HF loader's
pinned revision."""
import copy

import pytest
from conftest import SHARED_DATA, SYNTHETIC_SPECS, needs_shared_data

from librarm.run.io import InputError
from librarm.run.settings import ProblemSet, call
from librarm.stages.problems import (
    decontaminate,
    load_jsonl_set,
    overlap_report,
    parse_arithmetic,
    run_problems,
    synthesize_sets,
)


def test_synthetic_sets_are_pairwise_disjoint_and_seeded():
    sets = synthesize_sets(SYNTHETIC_SPECS, seed=7)
    report = overlap_report(sets)
    assert all(v["exact"] == 0 for v in report.values()), report
    assert synthesize_sets(SYNTHETIC_SPECS, seed=7) == sets
    assert synthesize_sets(SYNTHETIC_SPECS, seed=8) != sets
    for rec in sets["c"]:
        prob = parse_arithmetic(rec["problem"])
        assert len(prob.ops) == 4 and str(prob.answer) == rec["answer"]
        assert all(0 <= v <= 99 for v in prob.values())


def test_overlap_check_detects_planted_duplicate():
    # Negative twin of the disjointness guard: a planted repeat must be counted.
    sets = synthesize_sets(SYNTHETIC_SPECS[:2], seed=7)
    planted = copy.deepcopy(sets)
    planted["b"].append(dict(planted["a"][0], id="b-planted", set="b"))
    assert overlap_report(planted)["a|b"]["exact"] == 1


def run_problems_into(params, folder):
    """run_problems with every output in one folder (<set>.jsonl, <set>.quarantine.jsonl, stats.json)."""
    names = [s["name"] for s in params["problems"]["sets"]]
    return call(run_problems, params, {n: folder / f"{n}.jsonl" for n in names},
                {n: folder / f"{n}.quarantine.jsonl" for n in names}, folder / "stats.json")


def test_run_problems_writes_sets_and_stats(tmp_path, params):
    stats = run_problems_into(params, tmp_path)
    for s in params["problems"]["sets"]:
        assert (tmp_path / f"{s['name']}.jsonl").exists()
        assert stats["sets"][s["name"]]["n"] == s["n"]
    assert all(v["exact"] == 0 for v in stats["overlap"].values())
    assert stats["provenance"]["libraries"]["torch"]


@needs_shared_data()
def test_real_math500_level_filter_and_limit():
    spec = {"name": "m5", "role": "eval", "source": "jsonl", "path": str(SHARED_DATA / "math500.jsonl"), "level": 5}
    recs, bad = load_jsonl_set(ProblemSet.from_section(spec), seed=0)
    assert bad == [] and len(recs) == 134 and all(r["meta"]["level"] == 5 for r in recs)
    limited = ProblemSet.from_section({**spec, "limit": 5})
    few, _ = load_jsonl_set(limited, seed=0)
    assert len(few) == 5 and few == load_jsonl_set(limited, seed=0)[0]


@needs_shared_data()
def test_decontamination_against_real_eval():
    evalset, _ = load_jsonl_set(ProblemSet(name="e", role="eval", source="jsonl",
                                           path=str(SHARED_DATA / "math500.jsonl")), seed=0)
    pool = [dict(evalset[0], id="dup", set="pool")] + [
        {"id": "x", "set": "pool", "problem": "What is 2+2?", "answer": "4"}]
    kept, removed = decontaminate(pool, evalset)
    assert removed == 1 and [r["id"] for r in kept] == ["x"]


def test_bad_problem_line_names_file_line_field(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"id": "1", "problem": "x", "answer": "1"}\n{"id": "2", "problem": "y"}\n')
    spec = ProblemSet(name="s", role="eval", source="jsonl", path=str(p))
    with pytest.raises(InputError, match=r"p.jsonl:2: field 'answer': missing"):
        load_jsonl_set(spec, seed=0)
    recs, bad = load_jsonl_set(spec, seed=0, on_bad="quarantine")
    assert len(recs) == 1 and bad == [{"file": str(p), "line": 2, "field": "answer", "reason": bad[0]["reason"]}]
    assert "missing" in bad[0]["reason"]


def test_problems_stage_writes_the_quarantine_file(tmp_path, params):
    """Quarantined lines are kept with file, line, field and reason (a declared output of the
    problems rule), not only counted; the stage's summary carries the count."""
    import copy

    from librarm.run.io import read_jsonl

    src = tmp_path / "mine.jsonl"
    src.write_text('{"id": "1", "problem": "What is 1+1?", "answer": "2"}\n\n{"id": "2", "problem": 3, "answer": "1"}\n'
                   '{"id": "3", "problem": "What is 2+2?", "answer": "4"}\n')
    p = copy.deepcopy(params)
    p["problems"]["on_bad_line"] = "quarantine"
    p["problems"]["sets"] = [{"name": "mine", "role": "eval", "source": "jsonl", "path": str(src)},
                             {"name": "pool", "role": "judge_pool", "source": "synthetic", "n": 5, "steps": 2}]
    stats = run_problems_into(p, tmp_path / "out")
    q = read_jsonl(tmp_path / "out" / "mine.quarantine.jsonl").records
    assert [(r["line"], r["field"]) for r in q] == [(3, "problem")] and q[0]["file"] == str(src)
    assert read_jsonl(tmp_path / "out" / "pool.quarantine.jsonl").records == []
    assert stats["quarantined"] == 1 and stats["sets"]["mine"]["quarantined"] == 1


def test_hf_loader_uses_pinned_revision(monkeypatch):
    import datasets

    from librarm.stages.problems import load_hf_set

    seen = {}

    def fake_load(name, config=None, split=None, revision=None):
        seen.update(name=name, split=split, revision=revision)
        return [{"unique_id": "u1", "problem": "p", "answer": 3, "level": 5}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    recs, bad = load_hf_set(ProblemSet(name="h", role="eval", source="hf", hf_id="org/ds", revision="abc123",
                                       split="test", fields={"id": "unique_id"}), seed=0)
    assert seen == {"name": "org/ds", "split": "test", "revision": "abc123"}
    assert recs[0]["id"] == "u1" and recs[0]["answer"] == "3"


def test_a_folder_as_problem_file_is_one_clear_error(tmp_path, params):
    (tmp_path / "data").mkdir()
    spec = ProblemSet(name="s", role="eval", source="jsonl", path=str(tmp_path / "data"))
    with pytest.raises(InputError, match=r"data: a folder, not a JSONL file \(problems.sets\[s\].path\)"):
        load_jsonl_set(spec, seed=0)
    p = copy.deepcopy(params)
    p["problems"]["sets"] = [{"name": "s", "role": "eval", "source": "jsonl", "path": str(tmp_path / "data")}]
    with pytest.raises(InputError, match="a folder"):
        run_problems_into(p, tmp_path / "out")


def test_an_empty_set_names_its_file_and_still_writes_the_quarantine(tmp_path, params):
    """Every line bad (quarantined) leaves the set empty: the error names the source file, the
    quarantine file and the first reason, and the quarantine file is on disk."""
    from librarm.run.io import read_jsonl

    src = tmp_path / "bad.jsonl"
    src.write_text('{"id": "1", "problem": 3, "answer": "2"}\n{"id": "2", "problem": "y"}\n')
    p = copy.deepcopy(params)
    p["problems"]["on_bad_line"] = "quarantine"
    p["problems"]["sets"] = [{"name": "bad", "role": "eval", "source": "jsonl", "path": str(src)},
                             {"name": "pool", "role": "judge_pool", "source": "synthetic", "n": 5, "steps": 2}]
    out = tmp_path / "out"
    with pytest.raises(InputError) as err:
        run_problems_into(p, out)
    msg = str(err.value)
    assert msg.startswith(f"{src}: problem set 'bad' is empty") and "2 line(s) quarantined" in msg
    assert "line 1, field 'problem'" in msg and str(out / "bad.quarantine.jsonl") in msg
    assert [r["line"] for r in read_jsonl(out / "bad.quarantine.jsonl").records] == [1, 2]
    assert not (out / "bad.jsonl").exists()


def test_a_level_filter_that_keeps_nothing_is_named(tmp_path, params):
    src = tmp_path / "lv.jsonl"
    src.write_text('{"id": "1", "problem": "x", "answer": "2", "level": 3}\n')
    p = copy.deepcopy(params)
    p["problems"]["sets"] = [{"name": "lv", "role": "eval", "source": "jsonl", "path": str(src), "level": 5}]
    with pytest.raises(InputError, match=r"lv.jsonl: problem set 'lv' is empty .*level filter 5"):
        run_problems_into(p, tmp_path / "out")
    assert (tmp_path / "out" / "lv.quarantine.jsonl").exists()
