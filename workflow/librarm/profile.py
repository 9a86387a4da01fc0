"""Where a DAG run's time went, from Snakemake's own log (job start and finish times, threads,
inputs and outputs) and the per-rule `benchmark:` files (paths.benchmark):
per-phase and per-rule totals, the critical path (the longest chain of dependent jobs), and the
share of core-time the cores sat idle. `librarm profile` prints it."""
from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Sequence

_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
_RULE = re.compile(r"^(?:local)?rule (\w+):$")
_FINISHED = re.compile(r"^Finished job(?:id)? (\d+)\.?|^Finished jobid: (\d+)")


@dataclass
class Job:
    jobid: int
    rule: str
    start: float
    end: float | None = None
    threads: int = 1
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return (self.end or self.start) - self.start


def parse_snakemake_log(path: str | Path) -> list[Job]:
    """Jobs of one `snakemake` run, from its log (.snakemake/log/*.snakemake.log)."""
    jobs: dict[int, Job] = {}
    stamp = None
    pending: dict = {}
    for raw in Path(path).read_text(errors="replace").splitlines():
        line = raw.strip()
        m = _STAMP.match(line)
        if m:
            stamp = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y").timestamp()
            continue
        m = _RULE.match(line)
        if m:
            pending = {"rule": m.group(1), "start": stamp}
            continue
        if pending and line.startswith(("input:", "output:", "jobid:", "threads:")):
            key, _, value = line.partition(":")
            value = value.strip()
            if key == "jobid":
                jid = int(value)
                jobs[jid] = Job(jid, pending["rule"], pending["start"] or 0.0,
                                inputs=pending.get("input", []), outputs=pending.get("output", []))
                pending["job"] = jobs[jid]
            elif key == "threads" and "job" in pending:
                pending["job"].threads = int(value)
            elif key in ("input", "output"):
                pending[key] = [v.strip() for v in value.split(",") if v.strip()]
            continue
        m = _FINISHED.match(line)
        if m:
            jid = int(m.group(1) or m.group(2))
            if jid in jobs:
                jobs[jid].end = stamp
    return [j for j in jobs.values() if j.end is not None and j.rule != "all"]


def critical_path(jobs: Sequence[Job]) -> list[Job]:
    """The chain of dependent jobs (a job depends on the jobs that wrote its inputs) with the
    largest total duration."""
    writer: dict[str, Job] = {}
    for j in jobs:
        for o in j.outputs:
            writer[o.rstrip("/")] = j

    def deps(j: Job) -> list[Job]:
        out = []
        for i in j.inputs:
            i = i.rstrip("/")
            w = writer.get(i) or next((writer[o] for o in writer if i.startswith(o + "/")), None)
            if w is not None and w is not j:
                out.append(w)
        return out

    best: dict[int, tuple[float, list[Job]]] = {}
    for j in sorted(jobs, key=lambda j: j.end or 0):
        prev = max((best[d.jobid] for d in deps(j) if d.jobid in best), key=lambda t: t[0], default=(0.0, []))
        best[j.jobid] = (prev[0] + j.seconds, prev[1] + [j])
    return max(best.values(), key=lambda t: t[0])[1] if best else []


def read_benchmarks(root: str | Path) -> dict[str, dict[str, float]]:
    """rule -> {jobs, s (wall), max_rss (MB, the largest)} from the benchmark TSVs (their sampled
    cpu_time is left out: see profile_report)."""
    out: dict[str, dict[str, float]] = defaultdict(lambda: {"jobs": 0, "s": 0.0, "max_rss": 0.0})
    for tsv in sorted(Path(root).glob("*/**/*.tsv")):
        rule = tsv.relative_to(root).parts[0]
        with tsv.open() as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                d = out[rule]
                d["jobs"] += 1
                d["s"] += float(row.get("s") or 0)
                rss = row.get("max_rss")
                if rss not in (None, "", "NA", "-"):
                    d["max_rss"] = max(d["max_rss"], float(rss))
    return dict(out)


def usage_by_output(log_path: str | Path) -> dict[str, dict[str, float]]:
    """From a warm server's log (warm.py writes one JSON line per forked job): each job output's
    cpu seconds and peak RSS (MB), the latest run's."""
    usage: dict[str, dict[str, float]] = {}
    p = Path(log_path)
    for line in p.read_text(errors="replace").splitlines() if p.exists() else ():
        if line.startswith("{"):
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            for out in rec.get("outputs", []):
                usage[out] = {"cpu_s": rec.get("cpu_s"), "max_rss_mb": rec.get("max_rss_mb")}
    return usage


def phase_of(job: Job) -> str:
    from librarm.phases import PHASES

    for o in job.outputs:
        for p in PHASES.values():
            if o.startswith(p.out.rstrip("/") + "/"):
                return p.name
    return "?"


def profile_report(log_path: str | Path, cores: int, bench_root: str | Path | None = None,
                   warm_log: str | Path | None = None) -> str:
    """`warm_log`: the warm server's log (warm.py), whose per-job peak RSS counts beside the benchmark
    file's (which, for a job forked by the server, measures only its small client)."""
    jobs = parse_snakemake_log(log_path)
    if not jobs:
        raise ValueError(f"{log_path}: no finished job in this Snakemake log")
    t0, t1 = min(j.start for j in jobs), max(j.end for j in jobs)
    wall = t1 - t0
    busy = sum(j.seconds * min(j.threads, cores) for j in jobs)
    idle = 1 - busy / (cores * wall) if wall > 0 else 0.0
    lines = [f"run: {len(jobs)} jobs, wall {wall / 60:.1f} min on {cores} cores; cores idle {100 * idle:.0f}% of "
             f"the core-time (busy = sum of job seconds x threads)", "",
             "| phase | jobs | job-seconds | share |", "|---|---:|---:|---:|"]
    by_phase: dict[str, list[Job]] = defaultdict(list)
    for j in jobs:
        by_phase[phase_of(j)].append(j)
    total = sum(j.seconds for j in jobs) or 1
    for ph, js in sorted(by_phase.items(), key=lambda kv: -sum(j.seconds for j in kv[1])):
        s = sum(j.seconds for j in js)
        lines.append(f"| {ph} | {len(js)} | {s:.0f} | {100 * s / total:.0f}% |")
    by_rule: dict[str, list[Job]] = defaultdict(list)
    for j in jobs:
        by_rule[j.rule].append(j)
    bench = read_benchmarks(bench_root) if bench_root and Path(bench_root).exists() else {}
    forked = usage_by_output(warm_log) if warm_log else {}
    # Snakemake samples a job's CPU time periodically and misses what it did between samples: its
    # cpu_time read about half the wall time for jobs that timed at 100% CPU by hand, so only the
    # wall seconds and the peak memory are shown.
    lines += ["", "| rule | jobs | job-seconds | mean s | max s | max RSS MB |",
              "|---|---:|---:|---:|---:|---:|"]
    for rule, js in sorted(by_rule.items(), key=lambda kv: -sum(j.seconds for j in kv[1])):
        s = [j.seconds for j in js]
        rss = [bench[rule]["max_rss"]] if rule in bench else []
        rss += [forked[o]["max_rss_mb"] for j in js for o in j.outputs if o in forked]
        lines.append(f"| {rule} | {len(js)} | {sum(s):.0f} | {sum(s) / len(s):.1f} | {max(s):.0f} | "
                     f"{max(rss, default=float('nan')):.0f} |")
    path = critical_path(jobs)
    cp = sum(j.seconds for j in path)
    lines += ["", f"critical path: {cp / 60:.1f} min of {wall / 60:.1f} min wall "
                  f"({len(path)} jobs; the wall can shrink toward it with more cores, not below it)", ""]
    lines += [f"  {j.rule:<20} {j.seconds:7.0f} s  {', '.join(j.outputs[:1])}" for j in path]
    return "\n".join(lines) + "\n"


def latest_log(root: str | Path = ".") -> Path:
    """The newest Snakemake log that ran a job: a dry run or a run with nothing to do (e.g. the one
    `dvc repro` leaves) writes a log too, and profiling that one would only fail."""
    logs = sorted((Path(root) / ".snakemake" / "log").glob("*.snakemake.log"))
    if not logs:
        raise FileNotFoundError(f"{root}/.snakemake/log: no Snakemake log (run snakemake first)")
    for log in reversed(logs):
        if parse_snakemake_log(log):
            return log
    raise FileNotFoundError(f"{root}/.snakemake/log: {len(logs)} Snakemake logs, none with a finished job")
