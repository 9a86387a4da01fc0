"""Libra Bench assembly: drop malformed records, deduplicate, balance correct/incorrect per cell,
select deterministically by hashing ids, write the 8-field public file and stats."""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from librarm.run.io import StageIO, read_jsonl, stable_hash, write_json, write_jsonl
from librarm.run.settings import BenchSettings, ProblemsSettings, Seed, StressSettings

PUBLIC_FIELDS = ("index", "question", "response", "label", "model", "reference", "subset", "response_with_cot")


class ShortfallError(ValueError):
    """A balance cell has fewer items of a label than required (bench.balance.on_shortfall: error)."""


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def cell_key(rec: Mapping[str, Any], unit: str) -> tuple:
    if unit == "subset_generator":
        return (rec["subset"], rec["generator"])
    if unit == "problem_generator":
        return (rec["subset"], rec["problem_id"], rec["generator"])
    if unit == "subset":        # pools generators: for sets where each generator is one-sided (smoke-real)
        return (rec["subset"],)
    raise ValueError(f"unknown balance unit {unit!r}")


def assemble(records: Sequence[Mapping[str, Any]], *, seed: int, unit: str, per_label: int | None,
             on_shortfall: str, subset_order: Sequence[str],
             per_label_by_subset: Mapping[str, int] | None = None) -> tuple[list[dict], dict]:
    """Pure function: verified sample records -> (public bench rows, stats). A record is kept when it
    has a label: `correct` (1), `wrong_answer` or `hedged` (0: a hedge is a wrong answer, and a
    judge that accepts it is the judge a hedging policy would exploit); the others are dropped as
    malformed. stats["label_reasons"] counts the chosen items by reason."""
    stats: dict[str, Any] = {"input": len(records)}
    dropped = Counter(r["reason"] for r in records if r["label"] is None)
    stats["dropped_malformed"] = dict(sorted(dropped.items()))
    gradable = [r for r in records if r["label"] is not None]
    seen: set = set()
    unique = []
    for r in sorted(gradable, key=lambda r: r["sample_id"]):
        k = (r["problem_id"], r["generator"], _norm(r["response_with_cot"]))
        if k in seen:
            continue
        seen.add(k)
        unique.append(r)
    stats["dropped_duplicates"] = len(gradable) - len(unique)
    cells: dict[tuple, dict[int, list]] = defaultdict(lambda: {0: [], 1: []})
    for r in unique:
        cells[cell_key(r, unit)][int(r["label"])].append(r)
    chosen = []
    outcome = Counter()
    short_cells = []
    for key in sorted(cells):
        by_label = cells[key]
        for lab in (0, 1):   # deterministic, order-free: rank by a hash of the sample id
            by_label[lab].sort(key=lambda r: stable_hash(seed, "bench", r["sample_id"]))
        avail = min(len(by_label[0]), len(by_label[1]))
        want = (per_label_by_subset or {}).get(key[0], per_label)
        target = want if want is not None else avail
        short = avail < target or avail == 0
        if short:
            short_cells.append({"cell": list(key), "correct": len(by_label[1]), "incorrect": len(by_label[0])})
            if on_shortfall == "error":
                continue
            if on_shortfall == "drop_cell":
                outcome["dropped"] += 1
                continue
            outcome["partial" if avail else "empty"] += 1
        else:
            outcome["full"] += 1
        k = min(avail, target)
        chosen.extend(by_label[0][:k] + by_label[1][:k])
    if short_cells and on_shortfall == "error":
        sample = "; ".join(f"{'/'.join(map(str, c['cell']))} (correct={c['correct']}, incorrect={c['incorrect']})"
                           for c in short_cells[:5])
        raise ShortfallError(f"{len(short_cells)} balance cell(s) below per_label={per_label}: {sample}"
                             " (set bench.balance.on_shortfall to take_available or drop_cell)")
    rank = {s: i for i, s in enumerate(subset_order)}
    chosen.sort(key=lambda r: (rank.get(r["subset"], len(rank)), r["subset"], r["problem_id"], r["generator"],
                               r["sample_idx"]))
    rows = [{"index": i, "question": r["question"], "response": r["response"], "label": int(r["label"]),
             "model": r["generator"], "reference": r["gold"], "subset": r["subset"],
             "response_with_cot": r["response_with_cot"]} for i, r in enumerate(chosen)]
    stats["cells"] = {"total": len(cells), **{k: outcome.get(k, 0) for k in ("full", "partial", "empty", "dropped")}}
    stats["shortfall_cells"] = short_cells
    stats["n_items"] = len(rows)
    by_subset: dict = defaultdict(Counter)
    for r in rows:
        by_subset[r["subset"]][r["label"]] += 1
    stats["subsets"] = {s: {"n": c[0] + c[1], "correct": c[1], "incorrect": c[0],
                            "problems": len({r["question"] for r in rows if r["subset"] == s})}
                        for s, c in by_subset.items()}
    stats["generators"] = dict(Counter(r["model"] for r in rows))
    stats["label_reasons"] = dict(sorted(Counter(r["reason"] for r in chosen).items()))
    return rows, stats


def run_bench(verify_paths: Sequence[str | Path], out_path: str | Path, stats_path: str | Path,
              stress_path: str | Path | None = None, *, bench: BenchSettings, problems: ProblemsSettings,
              stress: StressSettings | None, seed: Seed) -> dict:
    """Stage `bench`: read the verify files, write the bench (balanced as `bench.balance` says)
    and its stats; with stress_path (params `stress` set), the judge-hacking stress set drawn
    from the bench as `stress` says."""
    from librarm.run.provenance import provenance

    records = []
    for p in verify_paths:
        records.extend(read_jsonl(p, {"sample_id": "str", "problem_id": "str", "subset": "str", "generator": "str",
                                      "reason": "str", "label": "int?", "response": "str",
                                      "response_with_cot": "str", "gold": "str", "question": "str",
                                      "sample_idx": "int"}, id_field="sample_id").records)
    bal = bench.balance
    rows, stats = assemble(records, seed=seed, unit=bal.unit, per_label=bal.per_label,
                           on_shortfall=bal.on_shortfall, subset_order=problems.names("eval"),
                           per_label_by_subset=bal.per_label_by_subset)
    if not rows:
        raise ValueError("the bench is empty: no cell had both correct and incorrect responses")
    write_jsonl(out_path, rows)
    if stress_path is not None:
        from librarm.stages.stress import build_stress_set

        if stress is None:      # no `stress` section: its first required key, as building it would say
            stress = StressSettings.from_section(None)
        items = build_stress_set(rows, stress, seed)
        write_jsonl(stress_path, items)
        stats["stress"] = dict(Counter(it["subset"] for it in items))
    stats["balance"] = {k: v for k, v in asdict(bal).items() if v is not None}
    stats["provenance"] = provenance(data=[str(p) for p in verify_paths])
    write_json(stats_path, stats)
    return stats


def step_bench(io: StageIO, *, bench: BenchSettings, problems: ProblemsSettings, stress: StressSettings | None,
               seed: Seed) -> tuple[dict, list[str]]:
    stress_out = io.output_list("stress")
    stats = run_bench(io.input_list("verified"), io.output("bench"), io.output("stats"),
                      stress_out[0] if stress_out else None, bench=bench, problems=problems, stress=stress, seed=seed)
    return stats, [io.output("stats")]
