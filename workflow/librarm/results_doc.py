"""The results a user reads, generated from a finished run and checked against it: `docs/results.json`
(provenance, the headline metrics, the digests of the bench, predictions and weights, every report
table with its cells resolved) and `docs/results.md`, rendered from that JSON alone. The same JSON is
the golden of CI's drift check (`librarm results-doc --check`): a run whose headline or digests
differ fails with the changed keys. The README quotes a block rendered from the same JSON.

    librarm results-doc                 # write docs/results.{json,md} and the README block from ./results
    librarm results-doc --check         # compare ./results with the committed docs/results.json
    librarm results-doc --render        # only re-render docs/results.md and the README block from the JSON
"""
from __future__ import annotations

import datetime as dt
import fnmatch
import os
import platform
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from librarm.run import paths as P
from librarm.run.io import file_sha256, read_json, stable_hash, write_json, write_text
from librarm.run.provenance import provenance_lines
from librarm.stages.report_pages import headline_text

RESULTS_JSON = "docs/results.json"
RESULTS_MD = "docs/results.md"
SEEDS_JSON = "docs/seeds_report.json"
SEEDS_MD = "docs/seeds_report.md"
README = "README.md"
README_BLOCK = re.compile(r"(<!-- results:begin -->\n)(.*?)(<!-- results:end -->)", re.S)

# What the drift check compares: the headline metrics (the DVC metric, P.REPORT_METRICS)
# and the bytes of the files that carry results. Weights are compared by their safetensors and
# config.json; training_args.bin holds the resume path, and the provenance blocks the commit.
DIGESTED = (P.BENCH_FILE, P.EVAL_PREDICTIONS.format(judge="*"), P.EVAL_STRESS_PREDICTIONS.format(judge="*"),
            f"{P.RESULTS}/**/model.safetensors", f"{P.RESULTS}/**/config.json")
NOT_DIGESTED = (f"{P.RESUME}/**", f"{P.LOGS}/**", f"{Path(P.EFFECTIVE_CONFIG).parent}/**")


class DriftError(Exception):
    """The run's results differ from the committed golden; the message lists the changed keys."""


# ----------------------------------------------------------------------------- collecting
def result_digests(root: str | Path = ".") -> dict[str, str]:
    """sha256 of every file of the run that carries results (DIGESTED), keyed by its path."""
    root = Path(root)
    base = root / P.RESULTS
    out: dict[str, str] = {}
    for f in sorted(base.rglob("*")) if base.exists() else ():
        rel = f.relative_to(root).as_posix()
        if not f.is_file() or any(fnmatch.fnmatch(rel, pat) for pat in NOT_DIGESTED):
            continue
        if any(fnmatch.fnmatch(rel, pat) for pat in DIGESTED):
            out[rel] = file_sha256(f)
    return out


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cores": os.cpu_count(), "memory_gib": mem}


def run_provenance(root: Path, preset: str) -> dict[str, Any]:
    """Where the run's figures come from: the commit and libraries its jobs recorded (the bench
    stage's provenance block), the hash of the effective params the jobs read, this machine, the
    day the headline was written."""
    stats = read_json(root / P.BENCH_STATS)
    prov = stats.get("provenance", {})
    effective = root / P.EFFECTIVE_CONFIG
    metrics = root / P.REPORT_METRICS
    return {"git_commit": prov.get("git_commit"),
            "params_hash": stable_hash(read_json(effective)) if effective.exists() else None,
            "preset": preset,
            "libraries": {k: v for k, v in sorted((prov.get("libraries") or {}).items())},
            "machine": machine(),
            "run_date": dt.datetime.fromtimestamp(metrics.stat().st_mtime, dt.timezone.utc).strftime("%Y-%m-%d"),
            "command": "snakemake --cores 2" if preset == "default" else
                       f"snakemake --cores 2 --configfile workflow/presets/{preset}.yaml"}


def resolved_tables(root: Path) -> list[dict[str, Any]]:
    """The report's tables (P.REPORT_SUMMARY) with every cell as the text the report
    shows, read again from the metrics file each cell cites (so a stale summary.md cannot leak in)."""
    from librarm.stages.report import source_text

    summary = read_json(root / P.REPORT_SUMMARY)
    docs = {k: read_json(root / p) for k, p in summary["sources"].items()}
    return [{"title": t["title"], "columns": t["columns"], "note": t.get("note", ""),
             "rows": [[source_text(c, docs) for c in row] for row in t["rows"]]} for t in summary["tables"]]


def build_results(root: str | Path = ".", preset: str = "default",
                  repro: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    root = Path(root)
    for need in (P.REPORT_METRICS, P.REPORT_SUMMARY, P.BENCH_STATS):
        if not (root / need).exists():
            raise FileNotFoundError(f"{root / need}: no finished run here (run `make run` first)")
    return {"provenance": run_provenance(root, preset), "reproducibility": list(repro),
            "headline": read_json(root / P.REPORT_METRICS), "digests": result_digests(root),
            "tables": resolved_tables(root)}


# ----------------------------------------------------------------------------- the drift check
def drift(golden: Mapping[str, Any], root: str | Path = ".") -> list[str]:
    """The keys whose values differ between the committed golden and the run in root: headline
    metrics by name, digests by path ([] when the run reproduces the golden)."""
    root = Path(root)
    return (_changed("headline", golden.get("headline", {}), read_json(root / P.REPORT_METRICS), show=True)
            + _changed("file", golden.get("digests", {}), result_digests(root), show=False))


def _changed(kind: str, want: Mapping[str, Any], got: Mapping[str, Any], show: bool) -> list[str]:
    """One line per key of either mapping whose value differs; `show`: quote the values (metrics,
    not digests)."""
    out = []
    for k in sorted(set(want) | set(got)):
        if k not in got:
            out.append(f"{kind} {k}: missing from the run" + (f" (golden {want[k]!r})" if show else ""))
        elif k not in want:
            out.append(f"{kind} {k}: not in the golden" + (f" (run {got[k]!r})" if show else ""))
        elif got[k] != want[k]:
            out.append(f"{kind} {k}: " + (f"golden {want[k]!r}, run {got[k]!r}" if show else "bytes differ"))
    return out


# ----------------------------------------------------------------------------- rendering
def _md_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _fmt_headline(key: str, v: Any) -> str:
    return headline_text(key, v, units=False)


def results_markdown(doc: Mapping[str, Any]) -> str:
    """docs/results.md from docs/results.json alone (a test regenerates it and compares)."""
    md = ["# Results of the default run", "",
          "Generated by `librarm results-doc` from the run's files; do not edit by hand (a test regenerates "
          "this page from `docs/results.json`, and CI's drift check compares a fresh run's headline and "
          "file digests with that JSON).", "",
          "**One seed.** Every interval below resamples problems, not training seeds; the seed-aware "
          "figures are in [seeds_report.md](seeds_report.md). Choices made after seeing results are "
          "listed in [deviations.md](deviations.md).", ""]
    md += provenance_lines(doc["provenance"], doc.get("reproducibility", []))
    md += ["", f"## Headline (`{P.REPORT_METRICS}`, the DVC metric)", ""]
    md += _md_table(["key", "value"], [[f"`{k}`", _fmt_headline(k, v)] for k, v in doc["headline"].items()])
    md += ["", "Libra scores are percentages, gains percentage points of avg@k over the base policy, "
           "r a Pearson correlation over the fitted judges.", ""]
    for t in doc["tables"]:
        md += [f"## {t['title']}", ""] + ([t["note"], ""] if t.get("note") else [])
        md += _md_table(t["columns"], t["rows"])
        md.append("")
    md += ["## Digests", "",
           f"{len(doc['digests'])} result files (bench, predictions, weights and model configs) are pinned by "
           "sha256 in `docs/results.json` (`digests`).", ""]
    return "\n".join(md)


def readme_block(doc: Mapping[str, Any], seeds: Mapping[str, Any] | None) -> str:
    """The README's generated block: the headline Libra scores and gains of the default run, and
    the seed-aware verdicts (the seeds report's headline table, verbatim)."""
    h = doc["headline"]
    # judges in the report's order (its judges table), then the labelers that are not judges
    judges = next((list(dict.fromkeys(str(r[0]) for r in t["rows"])) for t in doc["tables"]
                   if t["title"] == "Judges on Libra Bench"), [])
    names = [n for n in judges if f"libra.{n}" in h] + \
        [k.removeprefix("gain.") for k in h if k.startswith("gain.") and "/" not in k
         and f"libra.{k.removeprefix('gain.')}" not in h]
    prov = doc["provenance"]
    lines = [f"Default run at `{str(prov.get('git_commit'))[:12]}`, one seed "
             "([docs/results.md](docs/results.md): every table, intervals, provenance). Gain: avg@k points of the "
             "policy DPO-trained on that labeler's pairs, over the base policy.", ""]
    lines += _md_table(["judge or labeler", "Libra score (%)", "downstream gain"],
                       [[n, *("—" if h.get(k) is None else _fmt_headline(k, h[k]) for k in (f"libra.{n}", f"gain.{n}"))]
                        for n in names])
    if seeds is not None:
        from librarm.stages.replicates import seeds_markdown

        tables = re.findall(r"(?:^\|.*\|\n)+", seeds_markdown(seeds), re.M)
        lines += ["", "Across seeds ([docs/seeds_report.md](docs/seeds_report.md)):", "", tables[0].rstrip("\n")]
    return "\n".join(lines) + "\n"


def render_documents(repo: str | Path = ".") -> list[str]:
    """Write docs/results.md and the README block from docs/results.json (and the seeds report's
    JSON); return the paths written."""
    repo = Path(repo)
    doc = read_json(repo / RESULTS_JSON)
    seeds = read_json(repo / SEEDS_JSON) if (repo / SEEDS_JSON).exists() else None
    write_text(repo / RESULTS_MD, results_markdown(doc))
    written = [str(repo / RESULTS_MD)]
    readme = repo / README
    text = readme.read_text(encoding="utf-8")
    if not README_BLOCK.search(text):
        raise ValueError(f"{readme}: no <!-- results:begin --> ... <!-- results:end --> block to fill")
    new = README_BLOCK.sub(lambda m: m.group(1) + readme_block(doc, seeds) + m.group(3), text)
    if new != text:
        write_text(readme, new)
        written.append(str(readme))
    return written


def write_seeds_report(root: str | Path = ".", repo: str | Path = ".", preset: str = "seeds") -> list[str]:
    """docs/seeds_report.{json,md} from a seeds run's seeds report (P.SEEDS_JSON), with its provenance."""
    from librarm.stages.replicates import seeds_markdown

    root, repo = Path(root), Path(repo)
    src = root / P.SEEDS_JSON
    if not src.exists():
        raise FileNotFoundError(f"{src}: no seeds report in this run (the `seeds` preset writes it)")
    doc = {**read_json(src), "provenance": run_provenance(root, preset)}
    write_json(repo / SEEDS_JSON, doc)
    write_text(repo / SEEDS_MD, seeds_markdown(doc))
    return [str(repo / SEEDS_JSON), str(repo / SEEDS_MD)] + render_documents(repo)


def write_results(root: str | Path = ".", repo: str | Path = ".", preset: str = "default",
                  repro_files: Sequence[str | Path] = ()) -> list[str]:
    repro = [r for f in repro_files for r in read_json(f)]
    write_json(Path(repo) / RESULTS_JSON, build_results(root, preset, repro))
    return [str(Path(repo) / RESULTS_JSON)] + render_documents(repo)
