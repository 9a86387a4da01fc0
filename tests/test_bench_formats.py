"""librarm.judging.bench_formats: each benchmark's reader on a small file in its exact schema (every
mapped field, labels, categories, best-of-K groups), format inference, one-line errors naming file,
row and field for malformed rows, the generic jsonl mapping and its label forms, VerifierBench's C
judgment, RewardBench 2's skipped non-Math rows, PPE-MATH's K responses per row."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from librarm.judging.bench_formats import (
    FORMATS,
    REQUIRED,
    has_reference,
    infer_format,
    parse_fields,
    read_items,
)
from librarm.run.io import InputError

ITEM_KEYS = {"index", "question", "response", "reference", "label", "subset", "model", "response_with_cot",
             "problem_id", "categories"}


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- rows in each schema
def libra_rows():
    return [{"index": 0, "question": "1+1?", "response": "2", "label": 1, "model": "gen-a", "reference": "2",
             "subset": "arith", "response_with_cot": "<think>t</think>2"},
            {"index": 1, "question": "1+1?", "response": "3", "label": "false", "subset": "arith"},
            {"index": 2, "question": "2*3?", "response": "6", "label": True, "reference": 6, "subset": "mul",
             "model": None, "extra": "dropped"}]


def verifybench_rows():
    return [{"id": 17, "question": "How many?", "answer": "12", "completion": "The answer is 12",
             "gold_correct": True, "answer_type": "Numeric Values", "answer_subtype": "Integer"},
            {"uid": "u-2", "question": "Which?", "answer": "B", "completion": "A", "gold_correct": False,
             "answer_type": "Multi-choice", "answer_subtype": "Single"},
            {"question": "Simplify", "answer": "x+1", "completion": "1+x", "gold_correct": True,
             "answer_type": "Expressions", "answer_subtype": "Algebraic", "model": "gen-b"}]


def verifierbench_rows():
    base = {"question": "Find f(8).", "gold_answer": "8", "data_source": "math", "domain": "Math",
            "answer_type": "Numerical"}
    return [dict(base, llm_response="The answer is 8.", gold_judgment="A"),
            dict(base, llm_response="The answer is 9.", gold_judgment="B"),
            dict(base, question="Name it.", gold_answer="Paris", llm_response="", gold_judgment="C",
                 data_source="triviaqa", domain="Knowledge", answer_type="Short Text")]


def ppe_rows():
    return [{"question_id": "q7", "problem": "Solve x+1=2.", "sanitized_solution": "x=1", "response_1": "x=1",
             "response_2": "x=2", "response_3": "x = 1", "scores": [True, False, True], "model_name": "gen-c",
             "level": "Level 2", "type": "Algebra"},
            {"problem": "Area of unit circle?", "sanitized_solution": "\\pi", "response_1": "pi",
             "response_2": "2pi", "scores": [True, False], "model_name": "gen-d", "level": 3, "type": "Geometry"}]


def rb2_rows():
    return [{"id": "m1", "prompt": "Integrate 2x.", "chosen": ["x^2 + C"], "rejected": ["2x^2", "x^2"],
             "num_correct": 1, "num_incorrect": 2, "total_completions": 3, "models": ["ga", "gb", "gc"],
             "subset": "Math"},
            {"id": "f1", "prompt": "Tell me a joke.", "chosen": ["..."], "rejected": ["..."], "subset": "Focus"},
            {"id": "s1", "prompt": "How do I ...", "chosen": ["no"], "rejected": ["yes"], "subset": "Safety"},
            {"id": "m2", "prompt": "Derivative of x^3?", "chosen": ["3x^2"], "rejected": ["x^2"], "models": ["g"],
             "subset": "Math"}]


def write(fmt, tmp_path, rows=None):
    """A file of `fmt` in its original container (VerifierBench a JSON array, the others JSONL)."""
    rows = rows if rows is not None else BUILDERS[fmt]()
    if fmt == "verifierbench":
        p = tmp_path / "verifierbench.json"
        p.write_text(json.dumps(rows, indent=1))
        return p
    return jsonl(tmp_path / f"{fmt}.jsonl", rows)


BUILDERS = {"libra": libra_rows, "verifybench": verifybench_rows, "verifierbench": verifierbench_rows,
            "ppe-math": ppe_rows, "rewardbench2": rb2_rows}


# ----------------------------------------------------------------------------- each format
def test_libra_is_read_bench_plus_the_cluster_and_categories(tmp_path):
    """The Libra schema is read one way (read_bench, the pipeline's reader: int index, extra fields
    pass through), plus the problem cluster and the categories."""
    from librarm.judging.bench_formats import read_bench

    p = write("libra", tmp_path)
    items, info = read_items(p, "libra")
    assert info == {"format": "libra", "rows": 3, "items": 3, "skipped": {}, "card": FORMATS["libra"].card}
    assert items == [{**b, "problem_id": b["question"], "categories": {"subset": b["subset"], "model": b["model"]}}
                     for b in read_bench(p)]
    assert items[0]["index"] == 0 and items[0]["reference"] == "2" and items[0]["label"] == 1
    assert [(it["label"], it["model"], it.get("reference"), it["response_with_cot"]) for it in items[1:]] == [
        (0, "unknown", None, "3"), (1, "unknown", "6", "6")]
    assert items[0]["problem_id"] == items[1]["problem_id"] != items[2]["problem_id"]


def test_verifybench(tmp_path):
    items, info = read_items(write("verifybench", tmp_path), "verifybench")
    assert info["rows"] == info["items"] == 3 and has_reference("verifybench")
    assert items[0] == {"index": "17", "question": "How many?", "response": "The answer is 12", "reference": "12",
                        "label": 1, "subset": "Numeric Values", "model": "unknown",
                        "response_with_cot": "The answer is 12", "problem_id": "How many?",
                        "categories": {"answer_type": "Numeric Values", "answer_subtype": "Integer"}}
    assert [(it["index"], it["label"], it["subset"], it["model"]) for it in items[1:]] == [
        ("u-2", 0, "Multi-choice", "unknown"), ("3", 1, "Expressions", "gen-b")]   # no id: the line number


def test_verifierbench_c_is_incorrect_and_marked_invalid(tmp_path):
    items, info = read_items(write("verifierbench", tmp_path), "verifierbench")
    assert info["rows"] == 3
    assert items[0] == {"index": "1", "question": "Find f(8).", "response": "The answer is 8.", "reference": "8",
                        "label": 1, "subset": "Math", "model": "unknown", "response_with_cot": "The answer is 8.",
                        "problem_id": "Find f(8).", "invalid": False,
                        "categories": {"data_source": "math", "domain": "Math", "answer_type": "Numerical"}}
    assert [(it["label"], it["invalid"]) for it in items] == [(1, False), (0, False), (0, True)]
    assert items[2]["subset"] == "Knowledge" and items[2]["categories"]["data_source"] == "triviaqa"


def test_ppe_math_explodes_k_responses_per_problem(tmp_path):
    items, info = read_items(write("ppe-math", tmp_path), "ppe-math")
    assert info["rows"] == 2 and info["items"] == 5
    assert items[0] == {"index": "q7:0", "question": "Solve x+1=2.", "response": "x=1", "reference": "x=1",
                        "label": 1, "subset": "Algebra", "model": "gen-c", "response_with_cot": "x=1",
                        "problem_id": "q7", "group": "q7", "group_pos": 0,
                        "categories": {"type": "Algebra", "level": "Level 2", "model_name": "gen-c"}}
    assert [(it["index"], it["group"], it["group_pos"], it["label"]) for it in items] == [
        ("q7:0", "q7", 0, 1), ("q7:1", "q7", 1, 0), ("q7:2", "q7", 2, 1),
        ("2:0", "2", 0, 1), ("2:1", "2", 1, 0)]                     # no id: the row's line number
    assert items[3]["categories"]["level"] == "3" and items[4]["problem_id"] == "2"


def test_ppe_math_parquet_with_null_padded_responses(tmp_path):
    """The original is one parquet table: a row with fewer responses has the others null."""
    rows = [dict(r, question_id=f"q{i}", level=str(r["level"])) for i, r in enumerate(ppe_rows())]
    p = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), p)
    items, info = read_items(p)
    assert info["format"] == "ppe-math" and info["items"] == 5
    assert [it["index"] for it in items] == ["q0:0", "q0:1", "q0:2", "q1:0", "q1:1"]
    bad = [rows[0], dict(rows[1], scores=[True])]
    pq.write_table(pa.Table.from_pylist(bad), p)
    with pytest.raises(InputError, match=r"train-00000-of-00001\.parquet:row 2: field 'scores': 1 scores for 2 "):
        read_items(p, "ppe-math")


def test_rewardbench2_keeps_math_rows_and_counts_the_others(tmp_path):
    items, info = read_items(write("rewardbench2", tmp_path), "rewardbench2")
    assert info["rows"] == 4 and info["items"] == 5 and info["skipped"] == {"non_math": 2}
    assert not has_reference("rewardbench2")
    assert items[0] == {"index": "m1:0", "question": "Integrate 2x.", "response": "x^2 + C", "reference": None,
                        "label": 1, "subset": "Math", "model": "ga", "response_with_cot": "x^2 + C",
                        "problem_id": "m1", "group": "m1", "group_pos": 0, "categories": {"subset": "Math"}}
    assert [(it["index"], it["label"], it["group_pos"], it["model"]) for it in items] == [
        ("m1:0", 1, 0, "ga"), ("m1:1", 0, 1, "gb"), ("m1:2", 0, 2, "gc"),
        ("m2:0", 1, 0, "unknown"), ("m2:1", 0, 1, "unknown")]      # `models` not one per completion: unknown
    p = tmp_path / "test-00000.parquet"
    pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in ("id", "prompt", "chosen", "rejected", "subset")}
                                         for r in rb2_rows()]), p)
    assert read_items(p)[1]["skipped"] == {"non_math": 2}
    only_other = jsonl(tmp_path / "other.jsonl", rb2_rows()[1:3])
    with pytest.raises(InputError, match=r"other\.jsonl: no items \(2 rows skipped: non_math\)"):
        read_items(only_other, "rewardbench2")


@pytest.mark.parametrize("value, label", [(1, 1), (0, 0), (True, 1), (False, 0), ("true", 1), ("False", 0),
                                          ("correct", 1), (" Incorrect ", 0), ("1", 1), (1.0, 1)])
def test_jsonl_mapping_and_label_forms(tmp_path, value, label):
    rows = [{"qid": "a", "q": "Q1", "a": 5, "r": "R1", "y": value, "c": "easy", "gen": "g1"},
            {"qid": "b", "q": "Q2", "a": None, "r": "R2", "y": 1, "c": "hard"}]
    p = jsonl(tmp_path / "mine.jsonl", rows)
    items, info = read_items(p, fields="question=q, reference=a,response=r,label=y,category=c,id=qid,model=gen")
    assert info["format"] == "jsonl" and has_reference("jsonl")
    assert items[0] == {"index": "a", "question": "Q1", "response": "R1", "reference": "5", "label": label,
                        "subset": "easy", "model": "g1", "response_with_cot": "R1", "problem_id": "Q1",
                        "categories": {"c": "easy"}}
    assert (items[1]["reference"], items[1]["model"]) == (None, "unknown")
    minimal, _ = read_items(p, "jsonl", "question=q,response=r,label=y")
    assert [(it["index"], it["subset"], it["reference"], it["categories"]) for it in minimal] == [
        ("1", "all", None, {}), ("2", "all", None, {})]


@pytest.mark.parametrize("spec, words", [
    ("question=q,response=r", "missing label"),
    ("question=q,response=r,label=y,gold=a", "unknown key 'gold'"),
    ("question=q,response=r,label", "'label' is not KEY=FIELD"),
    ("question=q,question=p,response=r,label=y", "key 'question' given twice"),
])
def test_jsonl_bad_mapping(spec, words):
    with pytest.raises(ValueError, match=words):
        parse_fields(spec)


def test_jsonl_format_needs_a_mapping_and_only_it_takes_one(tmp_path):
    p = jsonl(tmp_path / "x.jsonl", [{"q": "Q", "r": "R", "y": 1}])
    with pytest.raises(ValueError, match="needs a field mapping"):
        read_items(p, "jsonl")
    with pytest.raises(ValueError, match="a field mapping is for the jsonl format, not verifybench"):
        read_items(p, "verifybench", "question=q,response=r,label=y")
    with pytest.raises(ValueError, match="unknown bench format 'nope'"):
        read_items(p, "nope")


# ----------------------------------------------------------------------------- inference
@pytest.mark.parametrize("fmt", list(BUILDERS))
def test_infer_format(tmp_path, fmt):
    p = write(fmt, tmp_path)
    assert infer_format(p) == fmt
    assert read_items(p)[1]["format"] == fmt


def test_a_file_matching_no_format_names_them_all(tmp_path):
    p = jsonl(tmp_path / "odd.jsonl", [{"prompt": "x", "output": "y"}])
    with pytest.raises(InputError) as err:
        infer_format(p)
    msg = str(err.value)
    first = msg.splitlines()[0]
    assert str(p) in first and "matches no bench format" in first and "output, prompt" in first
    for name, need in REQUIRED.items():
        assert f"  {name}: {', '.join(need)}" in msg
    assert "jsonl: any fields" in msg
    with pytest.raises(InputError, match="matches no bench format"):
        read_items(p)


# ----------------------------------------------------------------------------- malformed rows
def _set(rows, i, **change):
    rows[i] = {k: v for k, v in {**rows[i], **change}.items() if v is not _DROP}
    return rows


_DROP = object()

# (format, the row to break (0-based), change, where (row as the file names it), field, words)
BAD = [
    ("libra", 1, {"label": "maybe"}, ":2", "label", "expected 0/1"),
    ("libra", 2, {"question": _DROP}, ":3", "question", "missing"),
    ("libra", 1, {"index": 0}, ":2", "index", "duplicate id 0"),
    ("libra", 0, {"model": 7}, ":1", "model", "expected a string"),
    ("verifybench", 1, {"gold_correct": "yes"}, ":2", "gold_correct", "expected true/false, got 'yes'"),
    ("verifybench", 2, {"completion": ["a"]}, ":3", "completion", "expected str, got list"),
    ("verifybench", 0, {"answer_subtype": _DROP}, ":1", "answer_subtype", "missing"),
    ("verifybench", 1, {"uid": _DROP, "id": 17}, ":2", "id", "duplicate id '17'"),
    ("verifierbench", 1, {"gold_judgment": "D"}, ":row 2", "gold_judgment", "expected 'A', 'B' or 'C'"),
    ("verifierbench", 2, {"domain": None}, ":row 3", "domain", "is null"),
    ("verifierbench", 0, {"llm_response": 3}, ":row 1", "llm_response", "expected str, got int"),
    ("ppe-math", 0, {"scores": [True, False]}, ":1", "scores", "2 scores for 3 responses"),
    ("ppe-math", 1, {"scores": [True, "no"]}, ":2", "scores", "element 1: expected true/false"),
    ("ppe-math", 0, {"response_2": _DROP}, ":1", "response_2", "missing, but response_3 is present"),
    ("ppe-math", 1, {"model_name": _DROP}, ":2", "model_name", "missing"),
    ("rewardbench2", 0, {"chosen": "x^2"}, ":1", "chosen", "expected a list of strings"),
    ("rewardbench2", 3, {"rejected": [1]}, ":4", "rejected", "element 0: expected str"),
    ("rewardbench2", 3, {"id": "m1"}, ":4", "id", "duplicate id 'm1'"),
    ("rewardbench2", 2, {"subset": _DROP}, ":3", "subset", "missing"),
]


@pytest.mark.parametrize("fmt, i, change, where, field, words", BAD,
                         ids=[f"{b[0]}-{b[4]}-{n}" for n, b in enumerate(BAD)])
def test_a_malformed_row_is_one_line_naming_file_row_and_field(tmp_path, fmt, i, change, where, field, words):
    p = write(fmt, tmp_path, _set(BUILDERS[fmt](), i, **change))
    with pytest.raises(InputError) as err:
        read_items(p, fmt)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{p}{where}: field '{field}': ") and words in msg, msg


def test_jsonl_malformed_rows(tmp_path):
    fields = "question=q,response=r,label=y,category=c,id=k"
    good = {"k": 1, "q": "Q", "r": "R", "y": 1, "c": "s"}
    for change, field, words in [({"y": "maybe"}, "y", "expected 0/1, true/false or 'correct'/'incorrect'"),
                                 ({"q": None}, "q", "is null"), ({"c": ""}, "c", "empty"),
                                 ({"k": 1}, "k", "duplicate id '1'"), ({"k": None}, "k", "is null")]:
        p = jsonl(tmp_path / "m.jsonl", [good, {**good, "k": 2, **change}])
        with pytest.raises(InputError) as err:
            read_items(p, fields=fields)
        assert str(err.value).startswith(f"{p}:2: field '{field}': ") and words in str(err.value), str(err.value)


def test_container_errors(tmp_path):
    p = tmp_path / "verifierbench.json"
    p.write_text('[{"question": "q"}, 3]')
    with pytest.raises(InputError, match=r"verifierbench\.json:row 2: field '<row>': expected a JSON object"):
        read_items(p, "verifierbench")
    p.write_text('[{"question": ')
    with pytest.raises(InputError, match=r"verifierbench\.json:1: field '<file>': invalid JSON"):
        read_items(p, "verifierbench")
    bad_line = tmp_path / "v.jsonl"
    bad_line.write_text(json.dumps(verifybench_rows()[0]) + "\n{not json\n")
    with pytest.raises(InputError, match=r"v\.jsonl:2: field '<line>': invalid JSON"):
        read_items(bad_line, "verifybench")
    pq.write_table(pa.Table.from_pylist(verifybench_rows()[:1]), tmp_path / "v.parquet")
    with pytest.raises(InputError, match="verifybench format is read from JSONL or a JSON array, not parquet"):
        read_items(tmp_path / "v.parquet", "verifybench")
    with pytest.raises(InputError, match="not found"):
        read_items(tmp_path / "absent.jsonl", "libra")


def test_every_format_declares_its_card():
    assert set(FORMATS) == set(REQUIRED) | {"jsonl"}
    assert all(f.card and f.name == name for name, f in FORMATS.items())
    assert [name for name in FORMATS if not has_reference(name)] == ["rewardbench2"]
