"""Readers for the judge-evaluation benchmarks of the field, each mapping its files to the pointwise
items `librarm score` scores.

Every reader returns one dict per item: `index` (unique in the file: the Libra schema's int, else
str), `question`, `response`,
`reference` (str, or None where the benchmark has none), `label` (1 = the response is correct),
`subset` (the main category), `model` (the generator, "unknown" when absent), `response_with_cot`,
`problem_id` (the cluster for intervals: the items of one problem share it), `categories` (every
category field of the benchmark, as text), and for the best-of-K benchmarks `group` (the problem)
and `group_pos` (the response's position 0..K-1). VerifierBench items also carry `invalid` (its
judgment C). A bad row is an InputError whose one line names the file, the row (`file:LINE` for
JSONL, `file:row N` counted from 1 for JSON arrays and parquet) and the field; no row is dropped
silently (RewardBench 2's non-Math rows are skipped by design and counted in info["skipped"]).

The real files are not reachable offline: each format's `card` says which dataset card revision
and fields its reader follows.

The `libra` format is the public Libra Bench schema the pipeline writes and reads (`read_bench`,
with `fetch_bench` for a pinned hub file), here so that the pipeline's evaluate stage and `librarm
score` read a bench one way.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, NoReturn, Sequence

from librarm.run.io import InputError, read_jsonl, read_table

# ----------------------------------------------------------------------------- dataset cards followed
LIBRA_CARD = ("Libra Bench public schema (librarm.stages.bench BENCH_SCHEMA/BENCH_OPTIONAL): index, question, "
              "response, label, subset; model, reference, response_with_cot optional")
VERIFYBENCH_CARD = ("ZJU-REAL/VerifyBench dataset card @868c07d (verify_bench.jsonl, verify_bench_hard.jsonl), "
                    "fields as of 2025-06: question, answer, completion, gold_correct, answer_type, answer_subtype")
VERIFIERBENCH_CARD = ("opencompass/VerifierBench dataset card @a0f7af7 (verifierbench.json, one JSON array), fields "
                      "as of 2025-08: question, gold_answer, llm_response, gold_judgment A/B/C, data_source, domain, "
                      "answer_type")
PPE_MATH_CARD = ("lmarena-ai/PPE-MATH-Best-of-K dataset card @c46ce3c (data/train-00000-of-00001.parquet), fields "
                 "as of 2024-10: problem, sanitized_solution, response_1..response_K, scores, model_name, level, type")
REWARDBENCH2_CARD = ("allenai/reward-bench-2 dataset card @7ff0885 (data/test-*.parquet), fields as of 2025-06: "
                     "id, prompt, chosen, rejected, models, subset (Math rows only)")
JSONL_CARD = "generic JSONL with a field mapping (question=...,response=...,label=...[,reference,category,id,model])"

# Required fields per format: what each reader checks, and what format inference looks for.
REQUIRED = {
    "libra": ("index", "question", "response", "label", "subset"),
    "verifybench": ("question", "answer", "completion", "gold_correct", "answer_type", "answer_subtype"),
    "verifierbench": ("question", "gold_answer", "llm_response", "gold_judgment", "data_source", "domain",
                      "answer_type"),
    "ppe-math": ("problem", "sanitized_solution", "response_1", "scores", "model_name", "level", "type"),
    "rewardbench2": ("id", "prompt", "chosen", "rejected", "subset"),
}


# ----------------------------------------------------------------------------- rows and their errors
@dataclass(frozen=True)
class Row:
    """One input row and where it is (`file:LINE` or `file:row N`); every check names it."""

    where: str
    num: int            # the file line (JSONL) or the row counted from 1 (JSON array, parquet)
    rec: dict

    def fail(self, field: str, msg: str) -> NoReturn:
        raise InputError(f"{self.where}: field '{field}': {msg}")

    def value(self, field: str, *, optional: bool = False) -> Any:
        if field not in self.rec:
            if optional:
                return None
            self.fail(field, "missing")
        value = self.rec[field]
        if value is None and not optional:
            self.fail(field, "is null")
        return value

    def text(self, field: str, *, optional: bool = False, numeric: bool = False, nonempty: bool = False) -> str | None:
        """A string field; with numeric, an int or float is taken as its text (a numeric answer)."""
        value = self.value(field, optional=optional)
        if value is None:
            return None
        ok = isinstance(value, str) or (numeric and isinstance(value, (int, float)) and not isinstance(value, bool))
        if not ok:
            want = "str, int or float" if numeric else "str"
            self.fail(field, f"expected {want}, got {type(value).__name__} {_show(value)}")
        if nonempty and not str(value).strip():
            self.fail(field, "empty")
        return str(value)

    def strings(self, field: str) -> list[str]:
        value = self.value(field)
        if not isinstance(value, list):
            self.fail(field, f"expected a list of strings, got {type(value).__name__} {_show(value)}")
        for i, v in enumerate(value):
            if not isinstance(v, str):
                self.fail(field, f"element {i}: expected str, got {type(v).__name__} {_show(v)}")
        return value

    def ident(self, fields: Sequence[str]) -> tuple[str, str | None]:
        """The row's id from the first of `fields` present (a str or int), else its row number:
        (the field it came from, the id)."""
        for f in fields:
            if self.rec.get(f) is not None:
                value = self.rec[f]
                if isinstance(value, bool) or not isinstance(value, (str, int)):
                    self.fail(f, f"expected str or int, got {type(value).__name__} {_show(value)}")
                return f, str(value)
        return "<row>", str(self.num)


class _Ids:
    """Ids already given in one file: a second row with the same id is an error naming that row."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def claim(self, row: Row, field: str, key: str) -> str:
        if key in self.seen:
            row.fail(field, f"duplicate id {key!r} (first at {self.seen[key]})")
        self.seen[key] = row.where
        return key


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# Label forms: the Libra Bench ones (read_bench's), and the loose ones of the generic jsonl format.
_LIBRA_WORDS = {"1": 1, "true": 1, "True": 1, "TRUE": 1, "0": 0, "false": 0, "False": 0, "FALSE": 0}
_LOOSE_WORDS = {"1": 1, "true": 1, "correct": 1, "0": 0, "false": 0, "incorrect": 0}


def _to_label(value: Any, words: Mapping[str, int], fold: bool = False) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str):
        key = value.strip()
        return words.get(key.lower() if fold else key)
    return None


def _label(row: Row, field: str, words: Mapping[str, int], forms: str, fold: bool = False) -> int:
    value = row.value(field)
    label = _to_label(value, words, fold)
    if label is None:
        row.fail(field, f"expected {forms}, got {_show(value)}")
    return label


def _item(row_index: str, question: str, response: str, reference: str | None, label: int, subset: str,
          model: str | None, problem_id: str, categories: Mapping[str, Any], response_with_cot: str | None = None,
          **extra: Any) -> dict:
    return {"index": row_index, "question": question, "response": response, "reference": reference,
            "label": int(label), "subset": subset, "model": model or "unknown",
            "response_with_cot": response_with_cot or response, "problem_id": problem_id,
            "categories": {k: str(v) for k, v in categories.items()}, **extra}


# ----------------------------------------------------------------------------- loading files
def _load(path: Path, parquet: bool, name: str) -> list[Row]:
    """Rows of a JSONL file, a JSON array file, or (where the format's original is parquet) a
    parquet file, a folder of them or a `datasets` save_to_disk folder."""
    if not path.exists():
        raise InputError(f"{path}: not found")
    if path.is_dir() or path.suffix == ".parquet":
        if not parquet:
            raise InputError(f"{path}: the {name} format is read from JSONL or a JSON array, not parquet")
        report = read_table(path)
    elif _first_char(path) == "[":
        return _json_array(path)
    else:
        report = read_jsonl(path)
    return [Row(w, n, r) for w, n, r in zip(report.where, report.lines, report.records)]


def _first_char(path: Path) -> str:
    with open(path, "rb") as fh:
        for raw in fh:
            text = raw.decode("utf-8", errors="replace").lstrip("\ufeff").strip()
            if text:
                return text[0]
    return ""


def _json_array(path: Path) -> list[Row]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: field '<file>': not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}: field '<file>': invalid JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise InputError(f"{path}: field '<file>': JSON nested too deeply") from None
    if not isinstance(data, list):
        raise InputError(f"{path}: field '<file>': expected a JSON array of objects, got {type(data).__name__}")
    rows = []
    for i, rec in enumerate(data, start=1):
        if not isinstance(rec, dict):
            raise InputError(f"{path}:row {i}: field '<row>': expected a JSON object, got {type(rec).__name__}")
        rows.append(Row(f"{path}:row {i}", i, rec))
    return rows


def _first_row(path: Path) -> dict:
    if path.is_file() and path.suffix != ".parquet" and _first_char(path) == "{":
        with open(path, "rb") as fh:                    # JSONL: the first non-blank line is enough
            for lineno, raw in enumerate(fh, start=1):
                if raw.strip():
                    try:
                        rec = json.loads(raw)
                    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                        break                           # let the full read name the problem
                    if isinstance(rec, dict):
                        return rec
                    break
    rows = _load(path, True, "any")
    if not rows:
        raise InputError(f"{path}: no rows")
    return rows[0].rec


# ----------------------------------------------------------------------------- the readers
Skipped = dict[str, int]


def _read_verifybench(rows: list[Row], fields: str | None) -> tuple[list[dict], Skipped]:
    ids, items = _Ids(), []
    for row in rows:
        question, reference = row.text("question"), row.text("answer", numeric=True)
        response = row.text("completion")
        label = _label(row, "gold_correct", {}, "true/false")
        answer_type = row.text("answer_type", nonempty=True)
        subtype = row.text("answer_subtype")
        field, key = row.ident(("id", "uid"))
        items.append(_item(ids.claim(row, field, key), question, response, reference, label, answer_type,
                           row.text("model", optional=True), question,
                           {"answer_type": answer_type, "answer_subtype": subtype}))
    return items, {}


_JUDGMENTS = {"A": 1, "B": 0, "C": 0}     # A correct, B incorrect, C invalid (scored as incorrect)


def _read_verifierbench(rows: list[Row], fields: str | None) -> tuple[list[dict], Skipped]:
    ids, items = _Ids(), []
    for row in rows:
        question, reference = row.text("question"), row.text("gold_answer", numeric=True)
        response = row.text("llm_response")
        judgment = row.text("gold_judgment").strip()
        if judgment not in _JUDGMENTS:
            row.fail("gold_judgment", f"expected 'A', 'B' or 'C', got {_show(row.rec['gold_judgment'])}")
        domain = row.text("domain", nonempty=True)
        cats = {"data_source": row.text("data_source"), "domain": domain, "answer_type": row.text("answer_type")}
        field, key = row.ident(("id", "uid"))
        items.append(_item(ids.claim(row, field, key), question, response, reference, _JUDGMENTS[judgment], domain,
                           row.text("model", optional=True), question, cats, invalid=judgment == "C"))
    return items, {}


_RESPONSE_FIELD = re.compile(r"response_(\d+)")


def _ppe_responses(row: Row) -> list[str]:
    """response_1..response_K: as many as present (a null one counts as absent), with no gap."""
    present = sorted(int(m.group(1)) for f, v in row.rec.items()
                     if v is not None and (m := _RESPONSE_FIELD.fullmatch(f)))
    for want, got in enumerate(present, start=1):
        if got != want:
            row.fail(f"response_{want}", f"missing, but response_{got} is present")
    if not present:
        row.value("response_1")
    return [row.text(f"response_{k}") for k in present]


def _read_ppe_math(rows: list[Row], fields: str | None) -> tuple[list[dict], Skipped]:
    ids, items = _Ids(), []
    for row in rows:
        question, reference = row.text("problem"), row.text("sanitized_solution", numeric=True)
        responses = _ppe_responses(row)
        scores = row.value("scores")
        if not isinstance(scores, list):
            row.fail("scores", f"expected a list of true/false, got {type(scores).__name__} {_show(scores)}")
        if len(scores) != len(responses):
            row.fail("scores", f"{len(scores)} scores for {len(responses)} responses (response_1..response_"
                               f"{len(responses)})")
        labels = [_to_label(s, {}) for s in scores]
        for k, (s, lab) in enumerate(zip(scores, labels)):
            if lab is None:
                row.fail("scores", f"element {k}: expected true/false, got {_show(s)}")
        model, kind = row.text("model_name"), row.text("type", nonempty=True)
        level = row.text("level", numeric=True)
        field, key = row.ident(("question_id", "id", "uid"))
        group = ids.claim(row, field, key)
        cats = {"type": kind, "level": level, "model_name": model}
        items.extend(_item(f"{group}:{k}", question, resp, reference, lab, kind, model, group, cats,
                           group=group, group_pos=k) for k, (resp, lab) in enumerate(zip(responses, labels)))
    return items, {}


def _read_rewardbench2(rows: list[Row], fields: str | None) -> tuple[list[dict], Skipped]:
    ids, items, skipped = _Ids(), [], Counter()
    for row in rows:
        if row.text("subset") != "Math":
            skipped["non_math"] += 1
            continue
        group = ids.claim(row, "id", row.text("id", numeric=True))
        question = row.text("prompt")
        chosen = row.strings("chosen")
        if not chosen:
            row.fail("chosen", "empty: a Math row has at least one correct completion")
        responses = [(r, 1) for r in chosen] + [(r, 0) for r in row.strings("rejected")]
        models = row.rec.get("models")          # one per completion, chosen first, when the row has them
        if not (isinstance(models, list) and len(models) == len(responses)
                and all(isinstance(m, str) for m in models)):
            models = [None] * len(responses)
        items.extend(_item(f"{group}:{k}", question, resp, None, lab, "Math", models[k], group, {"subset": "Math"},
                           group=group, group_pos=k) for k, (resp, lab) in enumerate(responses))
    return items, dict(skipped)


FIELD_KEYS = {"question": True, "response": True, "label": True,          # key -> required
              "reference": False, "category": False, "id": False, "model": False}


def parse_fields(spec: str) -> dict[str, str]:
    """`question=q,reference=a,response=r,label=y,category=c` -> {"question": "q", ...}: the item
    field each source field fills (question, response and label required)."""
    mapping: dict[str, str] = {}
    for part in (p.strip() for p in spec.split(",")):
        key, eq, src = (s.strip() for s in part.partition("="))
        if not (eq and key and src):
            raise ValueError(f"fields {spec!r}: {part!r} is not KEY=FIELD (keys: {', '.join(FIELD_KEYS)})")
        if key not in FIELD_KEYS:
            raise ValueError(f"fields {spec!r}: unknown key {key!r} (keys: {', '.join(FIELD_KEYS)})")
        if key in mapping:
            raise ValueError(f"fields {spec!r}: key {key!r} given twice")
        mapping[key] = src
    missing = [k for k, req in FIELD_KEYS.items() if req and k not in mapping]
    if missing:
        raise ValueError(f"fields {spec!r}: missing {', '.join(missing)} (question, response and label are required)")
    return mapping


def _read_jsonl(rows: list[Row], fields: str | None) -> tuple[list[dict], Skipped]:
    m = parse_fields(fields or "")
    ids, items = _Ids(), []
    for row in rows:
        question, response = row.text(m["question"]), row.text(m["response"])
        label = _label(row, m["label"], _LOOSE_WORDS, "0/1, true/false or 'correct'/'incorrect'", fold=True)
        reference = row.text(m["reference"], numeric=True, optional=True) if "reference" in m else None
        category = row.text(m["category"], nonempty=True) if "category" in m else None
        if "id" in m:
            row.value(m["id"])                   # a mapped id must be there
        field, key = row.ident((m["id"],)) if "id" in m else ("<row>", str(row.num))
        model = row.text(m["model"], optional=True) if "model" in m else None
        items.append(_item(ids.claim(row, field, key), question, response, reference, label, category or "all",
                           model, question, {m["category"]: category} if category is not None else {}))
    return items, {}


# ----------------------------------------------------------------------------- the public Libra Bench schema
HUB_PREFIX = "hf://datasets/"


def fetch_bench(source: str, sha256: str | None = None) -> tuple[Path, str | None]:
    """A bench given as a local path, or as `hf://datasets/OWNER/NAME@REVISION/PATH` (a file in a
    Hugging Face dataset repo at a pinned revision; honours HF_HUB_OFFLINE and the hub cache):
    (the local path, the file's sha256). With sha256, a file whose hash differs is an InputError."""
    from librarm.run.io import file_sha256

    if source.startswith(HUB_PREFIX):
        owner, _, rest = source[len(HUB_PREFIX):].partition("/")
        name_rev, _, inner = rest.partition("/")
        name, _, revision = name_rev.partition("@")
        if not (owner and name and revision and inner):
            raise InputError(f"--bench {source}: expected {HUB_PREFIX}OWNER/NAME@REVISION/PATH with a pinned revision")
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(f"{owner}/{name}", inner, repo_type="dataset", revision=revision))
    else:
        path = Path(source)
    digest = file_sha256(path) if path.is_file() else None
    if sha256 and digest != sha256.lower():
        raise InputError(f"--bench-sha256: {source} has sha256 {digest}, not {sha256}")
    return path, digest


_TRUE = {"1", "true", "True", "TRUE"}
_FALSE = {"0", "false", "False", "FALSE"}


def parse_label(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    if isinstance(value, float) and value in (0.0, 1.0):
        return int(value)
    if isinstance(value, str) and value.strip() in _TRUE | _FALSE:
        return 1 if value.strip() in _TRUE else 0
    return None


# The public schema's field types: required fields, then optional ones (missing or null is allowed:
# `model` becomes "unknown", `response_with_cot` the response, `reference` stays None).
BENCH_SCHEMA = {"index": "int", "question": "str", "response": "str", "subset": "str"}
BENCH_OPTIONAL = {"model": (str,), "response_with_cot": (str,), "reference": (str, int, float)}


def read_bench(path: str | Path) -> list[dict]:
    """Read a benchmark in the public Libra Bench schema: a JSONL file, a parquet file or folder, or
    a `datasets` save_to_disk folder (the published files as they are, `response_with_cot`
    included). Labels may be 0/1, bool or 'true'/'false' strings. Every field of the schema is
    type-checked (BENCH_SCHEMA, BENCH_OPTIONAL; a numeric `reference` is kept as text); anything
    else is an InputError naming file, line (or row) and field. Other fields pass through."""
    rows = []
    report = read_table(path, BENCH_SCHEMA, id_field="index")
    for where, row in zip(report.where, report.records):   # file lines: blank lines are counted
        if "label" not in row:
            raise InputError(f"{where}: field 'label': missing")
        label = parse_label(row["label"])
        if label is None:
            raise InputError(f"{where}: field 'label': expected 0/1, true/false or 'true'/'false', "
                             f"got {_show(row['label'])}")
        if not row["subset"].strip():
            raise InputError(f"{where}: field 'subset': empty")
        for name, types in BENCH_OPTIONAL.items():
            value = row.get(name)
            if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
                want = " or ".join(t.__name__.replace("str", "string") for t in types)
                raise InputError(f"{where}: field '{name}': expected a {want} (or null), "
                                 f"got {type(value).__name__} {_show(value)}")
        reference = row.get("reference")
        rows.append({**row, "label": label, "model": row.get("model") or "unknown",
                     "response_with_cot": row.get("response_with_cot") or row["response"],
                     **({"reference": str(reference)} if reference is not None else {})})
    if not rows:
        raise InputError(f"{path}: no items")
    return rows


# ----------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class BenchFormat:
    """A benchmark format: `FORMATS[name](path)` reads a file to (items, info)."""

    name: str
    card: str                 # the dataset card revision and fields the reader follows
    read_rows: Callable[[list[Row], str | None], tuple[list[dict], Skipped]] | None   # None: libra (read_bench)
    reference: bool = True    # the items carry a reference answer
    parquet: bool = False     # the original is parquet: .parquet files and folders are read too

    def __call__(self, path: str | Path, fields: str | None = None) -> tuple[list[dict], dict]:
        path = Path(path)
        if fields is None and self.name == "jsonl":
            raise ValueError("the jsonl format needs a field mapping, e.g. fields='question=q,response=r,label=y'")
        if fields is not None and self.name != "jsonl":
            raise ValueError(f"a field mapping is for the jsonl format, not {self.name}")
        if self.name == "jsonl":
            parse_fields(fields)                 # a bad mapping is reported before the file is read
        if self.read_rows is None:
            items = [{**it, "problem_id": it["question"], "categories": {"subset": it["subset"], "model": it["model"]}}
                     for it in read_bench(path)]
            return items, {"format": self.name, "rows": len(items), "items": len(items), "skipped": {},
                           "card": self.card}
        rows = _load(path, self.parquet, self.name)
        items, skipped = self.read_rows(rows, fields)
        if not items:
            note = f" ({', '.join(f'{n} rows skipped: {k}' for k, n in skipped.items())})" if skipped else ""
            raise InputError(f"{path}: no items{note}")
        return items, {"format": self.name, "rows": len(rows), "items": len(items), "skipped": skipped,
                       "card": self.card}


FORMATS: dict[str, BenchFormat] = {
    "libra": BenchFormat("libra", LIBRA_CARD, None, parquet=True),
    "verifybench": BenchFormat("verifybench", VERIFYBENCH_CARD, _read_verifybench),
    "verifierbench": BenchFormat("verifierbench", VERIFIERBENCH_CARD, _read_verifierbench),
    "ppe-math": BenchFormat("ppe-math", PPE_MATH_CARD, _read_ppe_math, parquet=True),
    "rewardbench2": BenchFormat("rewardbench2", REWARDBENCH2_CARD, _read_rewardbench2, reference=False, parquet=True),
    "jsonl": BenchFormat("jsonl", JSONL_CARD, _read_jsonl),
}


def _format(name: str) -> BenchFormat:
    if name not in FORMATS:
        raise ValueError(f"unknown bench format {name!r} (formats: {', '.join(FORMATS)})")
    return FORMATS[name]


def has_reference(format: str) -> bool:
    """Whether the format's items carry a reference answer (all but rewardbench2)."""
    return _format(format).reference


def infer_format(path: str | Path) -> str:
    """The format whose required fields the first row has, when exactly one has them (the generic
    jsonl format is never inferred: it needs a field mapping)."""
    path = Path(path)
    keys = set(_first_row(path))
    matches = [name for name, need in REQUIRED.items() if keys >= set(need)]
    if len(matches) == 1:
        return matches[0]
    wants = "\n".join(f"  {name}: {', '.join(need)}" for name, need in REQUIRED.items())
    if matches:
        raise InputError(f"{path}: the first row matches several bench formats ({', '.join(matches)}); "
                         f"name one\n{wants}")
    raise InputError(f"{path}: the first row matches no bench format (its fields: {', '.join(sorted(keys)) or 'none'})"
                     f"; the formats need:\n{wants}\n  jsonl: any fields, with a mapping "
                     "fields='question=...,response=...,label=...[,reference=...,category=...,id=...]'")


def read_items(path: str | Path, format: str | None = None, fields: str | None = None) -> tuple[list[dict], dict]:
    """A benchmark file's items and info {"format", "rows", "items", "skipped": {reason: count},
    "card"}. Without `format`, the generic jsonl format when `fields` is given, else infer_format."""
    if format is None:
        format = "jsonl" if fields else infer_format(path)
    return _format(format)(path, fields)
