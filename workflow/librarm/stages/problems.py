"""Problem sets: the tiny-world synthesiser, real loaders (local JSONL or a pinned HF dataset),
normalisation and the disjointness / decontamination check.

A normalised problem record: {"id", "set", "role", "problem", "answer", "solution"|None, "meta"}.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from librarm.run import paths as P
from librarm.run.io import (
    InputError,
    StageIO,
    read_jsonl,
    stable_hash,
    stable_seed,
    write_json,
    write_jsonl,
)
from librarm.run.settings import ProblemSet, ProblemsSettings, Seed

PROBLEM_SCHEMA = {"id": "str", "set": "str", "role": "str", "problem": "str", "answer": "str"}
SOURCE_SCHEMA = {"id": "str", "problem": "str", "answer": "str"}


# ----------------------------------------------------------------------------- tiny world
@dataclass(frozen=True)
class ArithmeticProblem:
    """start, then (op, operand) steps evaluated left to right; every value stays in range."""

    start: int
    ops: tuple[tuple[str, int], ...]

    @property
    def key(self) -> tuple:
        return (self.start, self.ops)

    def text(self) -> str:
        return "Compute " + str(self.start) + "".join(f"{op}{b}" for op, b in self.ops) + "."

    def values(self) -> list[int]:
        vals = [self.start]
        for op, b in self.ops:
            vals.append(vals[-1] + b if op == "+" else vals[-1] - b)
        return vals

    @property
    def answer(self) -> int:
        return self.values()[-1]

    def trace_lines(self) -> list[str]:
        vals = self.values()
        return [f"{vals[i]}{op}{b}={vals[i + 1]}" for i, (op, b) in enumerate(self.ops)]


def random_arithmetic(rng: random.Random, steps: int, max_value: int, max_operand: int) -> ArithmeticProblem:
    a = rng.randint(0, max_value)
    cur = a
    ops = []
    for _ in range(steps):
        choices = []
        if cur + 1 <= max_value:
            choices.append("+")
        if cur - 1 >= 0:
            choices.append("-")
        op = rng.choice(choices)
        room = (max_value - cur) if op == "+" else cur
        b = rng.randint(1, min(max_operand, room))
        cur = cur + b if op == "+" else cur - b
        ops.append((op, b))
    return ArithmeticProblem(a, tuple(ops))


_PROBLEM_RE = re.compile(r"^Compute (\d+)((?:[+-]\d+)+)\.$")


def parse_arithmetic(text: str) -> ArithmeticProblem | None:
    """Inverse of ArithmeticProblem.text (used to key tiny problems for disjointness)."""
    m = _PROBLEM_RE.match(text.strip())
    if not m:
        return None
    ops = tuple((op, int(b)) for op, b in re.findall(r"([+-])(\d+)", m.group(2)))
    return ArithmeticProblem(int(m.group(1)), ops)


def in_problem_region(prob: ArithmeticProblem) -> bool:
    """The problem space is split by a hash of the operand tuple: one quarter holds every problem
    set (eval subsets and pools), the rest is for the tiny models' training corpora. So no corpus
    problem can ever be an eval problem, whatever the set sizes (and presets can shrink the sets
    without invalidating the shipped models)."""
    return int(stable_hash("tiny-region", prob.key), 16) % 4 == 0


def synthesize_sets(set_specs: Sequence[ProblemSet], seed: int, max_value: int = 99,
                    max_operand: int = 9, exclude: set | None = None) -> dict[str, list[dict]]:
    """Draw every synthetic set in params order without replacement across sets, so that
    no operand tuple appears in two sets (the tiny twin of decontamination)."""
    used: set = set(exclude or ())
    out: dict[str, list[dict]] = {}
    for spec in set_specs:
        steps = list(spec.steps) if isinstance(spec.steps, tuple) else [spec.steps]
        rng = random.Random(stable_seed(seed, "problems", spec.name))
        records = []
        attempts = 0
        while len(records) < spec.n:
            attempts += 1
            if attempts > 200 * spec.n + 1000:
                raise ValueError(f"set {spec.name!r}: cannot draw {spec.n} distinct problems "
                                 f"with steps {steps}; raise max_value or lower n")
            k = steps[len(records) % len(steps)]
            prob = random_arithmetic(rng, k, max_value, max_operand)
            if prob.key in used or not in_problem_region(prob):
                continue
            used.add(prob.key)
            records.append({
                "id": f"{spec.name}-{len(records):04d}",
                "set": spec.name, "role": spec.role,
                "problem": prob.text(), "answer": str(prob.answer),
                "solution": "<think>" + "\n".join(prob.trace_lines()) + "</think>\n\\boxed{" + str(prob.answer) + "}",
                "meta": {"source": "synthetic", "steps": k},
            })
        out[spec.name] = records
    return out


# ----------------------------------------------------------------------------- real data
DEFAULT_FIELDS = {"id": "id", "problem": "problem", "answer": "answer", "solution": "solution", "level": "level"}


def load_jsonl_set(spec: ProblemSet, seed: int, on_bad: str = "error") -> tuple[list[dict], list[dict]]:
    """A local JSONL file in the shared schema (id, problem, answer[, solution, level]); returns the
    records and the quarantined lines ({file, line, field, reason})."""
    fields = {**DEFAULT_FIELDS, **spec.fields}
    schema = {fields["id"]: "str", fields["problem"]: "str", fields["answer"]: "str"}
    path = Path(spec.path)
    if not path.exists():
        raise InputError(f"{path}: problem file not found (problems.sets[{spec.name}].path)")
    if not path.is_file():
        raise InputError(f"{path}: a folder, not a JSONL file (problems.sets[{spec.name}].path)")
    report = read_jsonl(path, schema, id_field=fields["id"], on_bad=on_bad)
    bad = [{"file": str(path), "line": q["line"], "field": q["field"], "reason": q["error"]} for q in report.quarantined]
    return _normalise(report.records, spec, fields, seed), bad


def load_hf_set(spec: ProblemSet, seed: int) -> tuple[list[dict], list[dict]]:
    """A Hugging Face dataset pinned to a revision (needs network on first use)."""
    import datasets

    ds = datasets.load_dataset(spec.hf_id, spec.hf_config, split=spec.split, revision=spec.revision)
    fields = {**DEFAULT_FIELDS, **spec.fields}
    rows, bad = [], []
    for i, row in enumerate(ds):
        row = dict(row)
        if fields["id"] not in row:
            row[fields["id"]] = f"{spec.name}-{i}"
        if not isinstance(row.get(fields["problem"]), str) or row.get(fields["answer"]) is None:
            field = fields["problem"] if not isinstance(row.get(fields["problem"]), str) else fields["answer"]
            bad.append({"file": f"{spec.hf_id}@{spec.revision}:{spec.split}", "line": i + 1,
                        "field": field, "reason": "missing or not a string"})
            continue
        row[fields["id"]] = str(row[fields["id"]])
        row[fields["answer"]] = str(row[fields["answer"]])
        rows.append(row)
    return _normalise(rows, spec, fields, seed), bad


def _normalise(rows: list[dict], spec: ProblemSet, fields: Mapping[str, str], seed: int) -> list[dict]:
    level = spec.level
    out = []
    for row in rows:
        if level is not None and row.get(fields["level"]) != level:
            continue
        out.append({
            "id": str(row[fields["id"]]), "set": spec.name, "role": spec.role,
            "problem": normalise_text(row[fields["problem"]]), "answer": str(row[fields["answer"]]).strip(),
            "solution": row.get(fields["solution"]),
            "meta": {"source": spec.source, "level": row.get(fields["level"])},
        })
    if spec.limit:
        # Deterministic subset: rank by a hash of (seed, set, id), keep file order among the chosen.
        chosen = set(sorted((r["id"] for r in out), key=lambda i: stable_hash(seed, spec.name, i))[: spec.limit])
        out = [r for r in out if r["id"] in chosen]
    return out


def normalise_text(text: str) -> str:
    return re.sub(r"[ \t]+", " ", text.replace("\r\n", "\n")).strip()


# ----------------------------------------------------------------------------- overlap checks
def _canon(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^0-9a-z+\-*/=^ ]", " ", text.lower())).strip()


def ngrams(text: str, n: int = 13) -> set[str]:
    words = _canon(text).split()
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def problem_key(rec: Mapping[str, Any]) -> Any:
    """Exact-duplicate key: the operand tuple for tiny problems, the canonical text otherwise."""
    prob = parse_arithmetic(rec["problem"])
    return ("arith", prob.key) if prob is not None else ("text", _canon(rec["problem"]))


def overlap_report(sets: Mapping[str, list[dict]], ngram: int = 13) -> dict[str, dict[str, int]]:
    """Pairwise overlap counts between sets: exact (operand tuple / normalised text) and 13-gram."""
    keys = {name: {problem_key(r) for r in recs} for name, recs in sets.items()}
    grams = {name: [ngrams(r["problem"], ngram) for r in recs] for name, recs in sets.items()}
    names = list(sets)
    report: dict[str, dict[str, int]] = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            exact = len(keys[a] & keys[b])
            all_b = set().union(*grams[b]) if grams[b] else set()
            gram_hits = sum(1 for g in grams[a] if g & all_b)
            report[f"{a}|{b}"] = {"exact": exact, "ngram13": gram_hits}
    return report


def decontaminate(pool: list[dict], against: list[dict], ngram: int = 13) -> tuple[list[dict], int]:
    """Drop pool problems that repeat an eval problem exactly or share a 13-gram with one."""
    keys = {problem_key(r) for r in against}
    grams = set().union(*(ngrams(r["problem"], ngram) for r in against)) if against else set()
    kept = [r for r in pool if problem_key(r) not in keys and not (ngrams(r["problem"], ngram) & grams)]
    return kept, len(pool) - len(kept)


# ----------------------------------------------------------------------------- stage
def run_problems(set_paths: Mapping[str, str | Path], quarantine_paths: Mapping[str, str | Path],
                 stats_path: str | Path, *, problems: ProblemsSettings, seed: Seed) -> dict:
    """Stage `problems`: write every set (set_paths[name]), its quarantined lines
    (quarantine_paths[name]) and the stats."""
    from librarm.run.provenance import provenance

    pcfg = problems
    specs = pcfg.sets
    synthetic = synthesize_sets([s for s in specs if s.source == "synthetic"], seed,
                                pcfg.synthetic.max_value, pcfg.synthetic.max_operand)
    sets: dict[str, list[dict]] = {}
    quarantined: dict[str, list[dict]] = {}
    for spec in specs:
        if spec.source == "synthetic":
            sets[spec.name] = synthetic[spec.name]
            quarantined[spec.name] = []
        elif spec.source == "jsonl":
            sets[spec.name], quarantined[spec.name] = load_jsonl_set(spec, seed, pcfg.on_bad_line)
        else:
            sets[spec.name], quarantined[spec.name] = load_hf_set(spec, seed)
    eval_recs = [r for s in specs if s.role == "eval" for r in sets[s.name]]
    removed = {}
    for spec in specs:
        if spec.role != "eval":
            sets[spec.name], removed[spec.name] = decontaminate(sets[spec.name], eval_recs)
    overlaps = overlap_report(sets)
    bad_pairs = {k: v for k, v in overlaps.items() if v["exact"]}
    synthetic_names = {s.name for s in specs if s.source == "synthetic"}
    for pair in bad_pairs:
        a, b = pair.split("|")
        if a in synthetic_names and b in synthetic_names:
            raise AssertionError(f"synthetic sets overlap: {pair} share {bad_pairs[pair]['exact']} problems")
    # every set has its quarantine file (a declared output), empty when no line was dropped; written
    # first, so that an empty set's reasons are on disk (and in the error) when the stage fails
    for name in sets:
        write_jsonl(quarantine_paths[name], quarantined[name])
    empty = [name for name, recs in sets.items() if not recs]
    if empty:
        raise InputError("; ".join(_empty_set_message(pcfg.by_name(n), quarantined[n], quarantine_paths[n],
                                                      removed.get(n, 0)) for n in empty))
    for name, recs in sets.items():
        write_jsonl(set_paths[name], recs)
    stats = {
        "sets": {n: {"n": len(r), "role": pcfg.by_name(n).role,
                     "quarantined": len(quarantined[n]), "decontaminated": removed.get(n, 0)} for n, r in sets.items()},
        "quarantined": sum(len(q) for q in quarantined.values()),
        "overlap": overlaps,
        "provenance": provenance(data=[s.path or s.hf_id or "synthetic" for s in specs],
                                 revisions={s.name: s.revision for s in specs}),
    }
    write_json(stats_path, stats)
    return stats


def _source_name(spec: ProblemSet) -> str:
    if spec.source == "jsonl":
        return str(spec.path)
    if spec.source == "synthetic":
        return "synthetic"
    return f"{spec.hf_id}@{spec.revision}:{spec.split}"


def _empty_set_message(spec: ProblemSet, quarantined: Sequence[Mapping[str, Any]], quarantine_path: str | Path,
                       decontaminated: int) -> str:
    """Why a problem set came out empty, naming its source file and its quarantine file."""
    why = []
    if quarantined:
        first = quarantined[0]
        why.append(f"{len(quarantined)} line(s) quarantined (first: line {first['line']}, field "
                   f"'{first['field']}': {first['reason']}; all in {quarantine_path})")
    if spec.level is not None:
        why.append(f"level filter {spec.level!r}")
    if decontaminated:
        why.append(f"{decontaminated} removed as overlapping an eval set")
    return (f"{_source_name(spec)}: problem set {spec.name!r} is empty after loading and filtering"
            + (f" ({'; '.join(why)})" if why else " (no problem in it)"))


def step_problems(io: StageIO, *, problems: ProblemsSettings, seed: Seed) -> tuple[dict, list[str]]:
    names = problems.names()
    stats = run_problems(io.keyed("sets", P.PROBLEM_SET, "subset", names, output=True),
                         io.keyed("quarantine", P.PROBLEM_QUARANTINE, "subset", names, output=True), io.output("stats"),
                         problems=problems, seed=seed)
    return stats, [io.output("stats")]


def load_problem_sets(paths: Sequence[str | Path]) -> dict[str, dict]:
    """Read normalised problem files into {problem id: record}; ids are unique across sets."""
    out: dict[str, dict] = {}
    for path in paths:
        for rec in read_jsonl(path, PROBLEM_SCHEMA, id_field="id").records:
            if rec["id"] in out:
                raise InputError(f"{path}: field 'id': {rec['id']!r} already appears in another set")
            out[rec["id"]] = rec
    return out
