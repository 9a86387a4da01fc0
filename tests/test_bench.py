"""librarm.stages.bench: assembling Libra Bench (balanced per cell, the public schema, malformed and
duplicate responses dropped and counted, the problem-generator unit, shortfall policies,
deterministic and stable when a generator is added) and reading a bench file (label forms, a bad
label named by file:line)."""
import json

import pytest

from librarm.judging.bench_formats import parse_label, read_bench
from librarm.run.io import InputError
from librarm.stages.bench import (
    PUBLIC_FIELDS,
    ShortfallError,
    assemble,
)


def rec(gen, pid, idx, label, subset="s1", reason=None, text=None):
    return {"sample_id": f"{gen}|{pid}|{idx}", "problem_id": pid, "generator": gen, "subset": subset,
            "sample_idx": idx, "label": label, "reason": reason or ("correct" if label else "wrong_answer"),
            "question": f"Q {pid}", "response": f"\\boxed{{{idx}}}", "gold": "1",
            "response_with_cot": text or f"<think>{gen} {pid} {idx}</think>\\boxed{{{idx}}}"}


def make(n_gen=2, n_prob=5, n=6, p_correct=0.5):
    out = []
    for g in range(n_gen):
        for p in range(n_prob):
            for i in range(n):
                out.append(rec(f"g{g}", f"p{p}", i, int(i < n * p_correct)))
    return out


def test_balanced_per_cell_and_public_schema():
    rows, stats = assemble(make(), seed=1, unit="subset_generator", per_label=None, on_shortfall="error",
                           subset_order=["s1"])
    assert all(tuple(r) == PUBLIC_FIELDS or set(r) == set(PUBLIC_FIELDS) for r in rows)
    for g in ("g0", "g1"):
        labels = [r["label"] for r in rows if r["model"] == g]
        assert labels.count(0) == labels.count(1) == 15
    assert [r["index"] for r in rows] == list(range(len(rows)))
    assert all(isinstance(r["label"], int) for r in rows)


def test_malformed_dropped_and_counted():
    recs = make() + [rec("g0", "p0", 99, None, reason="truncated"), rec("g0", "p1", 98, None, reason="no_final_answer")]
    rows, stats = assemble(recs, seed=1, unit="subset_generator", per_label=None, on_shortfall="error",
                           subset_order=["s1"])
    assert stats["dropped_malformed"] == {"no_final_answer": 1, "truncated": 1}
    assert all(r["response_with_cot"].find(" 99<") < 0 for r in rows)


def test_hedged_answers_are_kept_as_wrong_answers_and_counted():
    """A hedged answer (verify's reason `hedged`, label 0) is a wrong answer: kept in the bench like
    one, and counted in stats["label_reasons"] (a judge that accepts it is the one a hedging policy
    would exploit)."""
    recs = make()
    for r in recs:
        if r["label"] == 0 and r["sample_idx"] == 3:
            r["reason"] = "hedged"
    rows, stats = assemble(recs, seed=1, unit="subset_generator", per_label=None, on_shortfall="error",
                           subset_order=["s1"])
    assert stats["dropped_malformed"] == {}
    assert stats["label_reasons"]["hedged"] == 10 and len(rows) == len(make())
    assert sum(stats["label_reasons"].values()) == len(rows)
    assert {r["label"] for r in rows if r["response"] == "\\boxed{3}"} == {0}


def test_duplicates_removed_per_problem_generator():
    recs = make() + [rec("g0", "p0", 50, 1, text="<think>g0 p0 0</think>\\boxed{0}")]
    _, stats = assemble(recs, seed=1, unit="subset_generator", per_label=None, on_shortfall="error",
                        subset_order=["s1"])
    assert stats["dropped_duplicates"] == 1


def test_problem_generator_unit():
    recs = make(n_prob=3, n=4, p_correct=0.25)   # each (problem, generator): 1 correct, 3 incorrect
    rows, stats = assemble(recs, seed=1, unit="problem_generator", per_label=None, on_shortfall="error",
                           subset_order=["s1"])
    assert len(rows) == 2 * 3 * 2 and stats["cells"]["total"] == 6


@pytest.mark.parametrize("policy", ["error", "take_available", "drop_cell"])
def test_shortfall_policies(policy):
    recs = make(n_gen=1) + [rec("g9", "p0", i, 1) for i in range(4)] + [rec("g9", "p0", 9, 0)]
    kwargs = dict(seed=1, unit="subset_generator", per_label=3, on_shortfall=policy, subset_order=["s1"])
    if policy == "error":
        with pytest.raises(ShortfallError, match="s1/g9"):
            assemble(recs, **kwargs)
        return
    rows, stats = assemble(recs, **kwargs)
    g9 = [r for r in rows if r["model"] == "g9"]
    if policy == "take_available":
        assert len(g9) == 2 and stats["cells"]["partial"] == 1
    else:
        assert g9 == [] and stats["cells"]["dropped"] == 1
    assert len([r for r in rows if r["model"] == "g0"]) == 6


def test_deterministic_and_adding_generator_keeps_others():
    base = make(n_gen=2)
    rows1, _ = assemble(base, seed=3, unit="subset_generator", per_label=5, on_shortfall="error", subset_order=["s1"])
    rows2, _ = assemble(list(reversed(base)), seed=3, unit="subset_generator", per_label=5, on_shortfall="error",
                        subset_order=["s1"])
    assert rows1 == rows2
    more = base + [rec("g7", f"p{p}", i, i % 2) for p in range(5) for i in range(6)]
    rows3, _ = assemble(more, seed=3, unit="subset_generator", per_label=5, on_shortfall="error", subset_order=["s1"])
    pick = lambda rows: sorted(r["response_with_cot"] for r in rows if r["model"] in ("g0", "g1"))
    assert pick(rows1) == pick(rows3)


@pytest.mark.parametrize("value,expected", [(1, 1), (0, 0), (True, 1), (False, 0), ("true", 1), ("False", 0),
                                            ("1", 1), ("yes", None), (2, None), (None, None)])
def test_label_forms(value, expected):
    assert parse_label(value) == expected


def test_read_bench_rejects_bad_label(tmp_path):
    p = tmp_path / "b.jsonl"
    row = {"index": 0, "question": "q", "response": "r", "label": "true", "model": "m", "reference": "1",
           "subset": "s", "response_with_cot": "r"}
    p.write_text(json.dumps(row) + "\n" + json.dumps(dict(row, index=1, label="maybe")) + "\n")
    with pytest.raises(InputError, match=r"b.jsonl:2: field 'label'"):
        read_bench(p)


_ROW = {"index": 0, "question": "q", "response": "r", "label": 1, "model": "m", "reference": "1", "subset": "s",
        "response_with_cot": "r"}


@pytest.mark.parametrize("field,value,words", [
    ("model", {"name": "m"}, "field 'model': expected a string (or null), got dict"),
    ("model", 7, "field 'model': expected a string"),
    ("response_with_cot", 5, "field 'response_with_cot': expected a string (or null), got int 5"),
    ("response_with_cot", ["a"], "field 'response_with_cot'"),
    ("reference", {"x": 1}, "field 'reference': expected a string or int or float"),
    ("reference", True, "field 'reference'"),
    ("question", 3, "field 'question': expected str"),
    ("response", None, "field 'response': is null"),
    ("subset", ["s"], "field 'subset': expected str"),
    ("index", "0", "field 'index': expected int"),
])
def test_read_bench_checks_every_schema_field(tmp_path, field, value, words):
    p = tmp_path / "b.jsonl"
    p.write_text(json.dumps(_ROW) + "\n" + json.dumps({**_ROW, "index": 1, field: value}) + "\n")
    with pytest.raises(InputError) as err:
        read_bench(p)
    assert f"b.jsonl:2: {words}" in str(err.value)


def test_read_bench_optional_fields(tmp_path):
    p = tmp_path / "b.jsonl"
    rows = [dict(_ROW, index=0, model=None, response_with_cot=None, reference=42),
            {k: v for k, v in dict(_ROW, index=1).items() if k not in ("model", "response_with_cot", "reference")}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = read_bench(p)
    assert [(r["model"], r["response_with_cot"], r.get("reference")) for r in got] == [("unknown", "r", "42"),
                                                                                     ("unknown", "r", None)]


def test_a_deeply_nested_bench_line_is_one_clear_error(tmp_path):
    p = tmp_path / "b.jsonl"
    p.write_text(json.dumps(_ROW) + "\n" + '{"index": 1, "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(InputError, match=r"b.jsonl:2: field '<line>': JSON nested too deeply"):
        read_bench(p)


def test_read_bench_takes_jsonl_parquet_and_a_datasets_folder_alike(tmp_path):
    """The published Libra Bench as it is shipped (parquet, or a `datasets` save_to_disk folder,
    `response_with_cot` included) reads to the same items as its JSONL; a bad row is named by
    file and row."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from librarm.judging.bench_formats import read_bench
    from librarm.run.io import InputError, write_jsonl

    rows = [{"index": i, "question": f"q{i}", "response": f"r{i}", "response_with_cot": f"<think>t</think>r{i}",
             "label": i % 2 == 0, "subset": "s", "model": "m"} for i in range(5)]
    write_jsonl(tmp_path / "bench.jsonl", rows)
    want = read_bench(tmp_path / "bench.jsonl")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bench.parquet")
    (tmp_path / "shards").mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:2]), tmp_path / "shards" / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist(rows[2:]), tmp_path / "shards" / "part-1.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    for source in ("bench.parquet", "shards", "saved"):
        assert read_bench(tmp_path / source) == want, source
    bad = [dict(r, label=int(r["label"])) for r in rows]
    bad[3]["label"] = 2
    pq.write_table(pa.Table.from_pylist(bad[2:]), tmp_path / "shards" / "part-1.parquet")
    with pytest.raises(InputError, match=r"part-1\.parquet:row 2: field 'label': expected 0/1"):
        read_bench(tmp_path / "shards")
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(InputError, match=r"a datasets DatasetDict; pass one split's folder \(test\)"):
        read_bench(tmp_path / "dd")


def test_a_hub_bench_is_read_offline_from_the_cache_at_its_pinned_revision(tmp_path, monkeypatch):
    """hf://datasets/OWNER/NAME@REVISION/PATH with HF_HUB_OFFLINE=1 against a hub cache built here
    (the layout huggingface_hub reads): the pinned file is found, its sha256 is checked, an
    unpinned source and a wrong hash are one line each."""
    import huggingface_hub.constants as hub_constants

    from librarm.judging.bench_formats import fetch_bench, read_bench
    from librarm.run.io import InputError, file_sha256, write_jsonl

    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "hub" / "datasets--org--libra-bench" / "snapshots" / commit / "data"
    snapshot.mkdir(parents=True)
    write_jsonl(snapshot / "test.jsonl", [{"index": 0, "question": "q", "response": "r", "label": 1, "subset": "s"}])
    (tmp_path / "hub" / "datasets--org--libra-bench" / "refs").mkdir()
    (tmp_path / "hub" / "datasets--org--libra-bench" / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    source = f"hf://datasets/org/libra-bench@{commit}/data/test.jsonl"
    path, digest = fetch_bench(source)
    assert path.resolve() == (snapshot / "test.jsonl").resolve() and digest == file_sha256(snapshot / "test.jsonl")
    assert read_bench(path)[0]["label"] == 1
    assert fetch_bench(source, digest.upper())[0] == path
    with pytest.raises(InputError, match=r"--bench-sha256: .* has sha256 [0-9a-f]{64}, not 00"):
        fetch_bench(source, "00")
    with pytest.raises(InputError, match="with a pinned revision"):
        fetch_bench("hf://datasets/org/libra-bench/data/test.jsonl")
