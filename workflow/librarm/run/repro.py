"""Same params, same bytes: compare two run folders file by file. JSON and JSONL files are compared
after removing the keys that measure time (listed in TIMING_KEYS / TIMING_SUFFIXES); paths under
EXCLUDED_PATHS are skipped (logs, benchmark timings, resumable working state). Every other file
must be byte-identical. `scripts/repro_check.sh A B` runs this on two checkouts."""
from __future__ import annotations

import argparse
import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from librarm.run.paths import LOGS, RESUME

# Keys whose values are wall-clock measurements, never results.
TIMING_KEYS = ("seconds", "tokens_per_s", "step_time", "train_runtime", "total_flos")
TIMING_SUFFIXES = ("_per_second",)
# Columns of Markdown tables (eval/table.md, report/summary.md) that print those measurements.
TIMING_COLUMNS = ("seconds", "tokens/s")
# With --across-commits (runs of two commits, e.g. a refactor checked to change no result), the
# commit each output records in its provenance is expected to differ and is dropped too.
COMMIT_KEY = "git_commit"
# Paths (relative to the run folder) that are not results: logs and per-rule benchmark timings,
# the resumable working state of training jobs (checkpoints carry step times and RNG snapshots),
# and the MLflow store (run ids and timestamps; files stay the source of truth).
EXCLUDED_PATHS = (f"{LOGS}/**", f"{RESUME}/**", "mlflow/**", ".snakemake/**")


def is_timing_key(key: str) -> bool:
    return key in TIMING_KEYS or key.endswith(TIMING_SUFFIXES)


def strip_timing(obj: Any, drop: Sequence[str] = ()) -> Any:
    if isinstance(obj, dict):
        return {k: strip_timing(v, drop) for k, v in obj.items() if not is_timing_key(k) and k not in drop}
    if isinstance(obj, list):
        return [strip_timing(v, drop) for v in obj]
    return obj


def _load_structured(path: Path, drop: Sequence[str] = ()) -> Any:
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [strip_timing(json.loads(line), drop) for line in text.splitlines() if line.strip()]
    return strip_timing(json.loads(text), drop)


def _timing_columns(markdown: str, drop: bool) -> str:
    """Every table's TIMING_COLUMNS (found in its first row, the header) emptied, or dropped."""
    out: list[str] = []
    timing: set[int] | None = None          # column indexes of the current table; None: no table yet
    for line in markdown.splitlines():
        if not line.startswith("|"):
            timing = None
            out.append(line)
            continue
        cells = line.split("|")
        if timing is None:
            timing = {i for i, c in enumerate(cells) if c.strip().lower() in TIMING_COLUMNS}
        out.append("|".join(c for i, c in enumerate(cells) if i not in timing) if drop
                   else "|".join("" if i in timing else c for i, c in enumerate(cells)))
    return "\n".join(out)


def strip_timing_columns(markdown: str) -> str:
    """The Markdown text with the cells of TIMING_COLUMNS emptied in every table (what repro_check
    compares)."""
    return _timing_columns(markdown, drop=False)


def drop_timing_columns(markdown: str) -> str:
    """The Markdown text without the TIMING_COLUMNS of its tables: for pages generated from a
    report (the Snakemake report's HTML), which must be the same bytes in every run."""
    return _timing_columns(markdown, drop=True) + ("\n" if markdown.endswith("\n") else "")


def _first_difference(a: Any, b: Any, where: str = "") -> str:
    if type(a) is not type(b):
        return f"{where or '/'}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{where}/{k}: only in {'B' if k not in a else 'A'}"
            if a[k] != b[k]:
                return _first_difference(a[k], b[k], f"{where}/{k}")
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{where or '/'}: {len(a)} vs {len(b)} entries"
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return _first_difference(x, y, f"{where}[{i}]")
    return f"{where or '/'}: {str(a)[:80]!r} vs {str(b)[:80]!r}"


@dataclass
class RunComparison:
    files_compared: int = 0
    files_excluded: int = 0
    differences: list[str] = field(default_factory=list)
    excluded: dict = field(default_factory=lambda: {"paths": list(EXCLUDED_PATHS), "json_keys": list(TIMING_KEYS),
                                                    "json_key_suffixes": list(TIMING_SUFFIXES),
                                                    "markdown_columns": list(TIMING_COLUMNS)})


def _files(root: Path, sub: str) -> dict[str, Path]:
    base = root / sub
    return {str(p.relative_to(root)): p for p in sorted(base.rglob("*")) if p.is_file()} if base.exists() else {}


def compare_runs(a: str | Path, b: str | Path, sub: str = "results", across_commits: bool = False) -> RunComparison:
    """Compare the `sub` folders of two run roots (checkouts)."""
    a, b = Path(a), Path(b)
    fa, fb = _files(a, sub), _files(b, sub)
    out = RunComparison()
    drop = (COMMIT_KEY,) if across_commits else ()
    if across_commits:
        out.excluded["json_keys"] = out.excluded["json_keys"] + [COMMIT_KEY]
    for rel in sorted(set(fa) | set(fb)):
        if any(fnmatch.fnmatch(rel, pat) for pat in EXCLUDED_PATHS):
            out.files_excluded += 1
            continue
        if rel not in fa or rel not in fb:
            out.differences.append(f"{rel}: only in {'B' if rel not in fa else 'A'}")
            continue
        out.files_compared += 1
        pa, pb = fa[rel], fb[rel]
        if pa.read_bytes() == pb.read_bytes():
            continue
        if pa.suffix in (".json", ".jsonl"):
            try:
                da, db = _load_structured(pa, drop), _load_structured(pb, drop)
            except (ValueError, UnicodeDecodeError) as exc:
                out.differences.append(f"{rel}: differs and does not parse ({exc})")
                continue
            if da != db:
                out.differences.append(f"{rel}: {_first_difference(da, db)}")
            continue
        if pa.suffix == ".md" and strip_timing_columns(pa.read_text()) == strip_timing_columns(pb.read_text()):
            continue
        out.differences.append(f"{rel}: bytes differ")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m librarm.run.repro",
                                 description="Compare the results folders of two runs; exit 1 on any difference "
                                             "outside the listed exclusions.")
    ap.add_argument("run_a")
    ap.add_argument("run_b")
    ap.add_argument("--across-commits", action="store_true",
                    help=f"the runs are of two commits: also drop the `{COMMIT_KEY}` their provenance records")
    ap.add_argument("--label", help="what the two runs differ in (e.g. '--cores 1 vs --cores 2'), for --json")
    ap.add_argument("--json", help="append the outcome {what, result, files_compared, differences} to this "
                                   "JSON list (librarm results-doc --repro quotes it in docs/results.md)")
    a = ap.parse_args(argv)
    res = compare_runs(a.run_a, a.run_b, across_commits=a.across_commits)
    if a.json:
        out = Path(a.json)
        done = json.loads(out.read_text()) if out.exists() else []
        done.append({"what": a.label or f"{a.run_a} vs {a.run_b}",
                     "result": "same bytes" if not res.differences and res.files_compared else "differ",
                     "files_compared": res.files_compared, "differences": res.differences[:50]})
        out.write_text(json.dumps(done, indent=2) + "\n")
    print("excluded paths:     " + ", ".join(res.excluded["paths"]))
    print("excluded JSON keys: " + ", ".join(res.excluded["json_keys"]) + ", *" + ", *".join(TIMING_SUFFIXES))
    print("excluded Markdown table columns: " + ", ".join(res.excluded["markdown_columns"]))
    print(f"compared {res.files_compared} files ({res.files_excluded} excluded)")
    for d in res.differences:
        print("DIFF " + d)
    print("same bytes" if not res.differences else f"{len(res.differences)} files differ")
    return 0 if not res.differences and res.files_compared else 1


if __name__ == "__main__":
    raise SystemExit(main())
