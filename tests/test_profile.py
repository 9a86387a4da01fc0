"""`librarm profile`: jobs, phases, the critical path and idle cores from a Snakemake log."""
from __future__ import annotations

from librarm.profile import critical_path, parse_snakemake_log, profile_report

LOG = """Building DAG of jobs...
[Thu Nov 26 15:00:00 2026]
localrule problems:
    output: results/problems/a.jsonl, results/problems/stats.json
    log: results/logs/problems.log
    jobid: 1
    resources: tmpdir=/tmp
[Thu Nov 26 15:00:10 2026]
Finished jobid: 1 (Rule: problems)
[Thu Nov 26 15:00:10 2026]
localrule sample:
    input: results/problems/a.jsonl
    output: results/samples/g/a.jsonl
    jobid: 2
    threads: 1
[Thu Nov 26 15:00:10 2026]
localrule bench:
    input: results/problems/stats.json
    output: results/bench/libra_bench.jsonl
    jobid: 3
[Thu Nov 26 15:00:20 2026]
Finished jobid: 3 (Rule: bench)
[Thu Nov 26 15:01:10 2026]
Finished jobid: 2 (Rule: sample)
[Thu Nov 26 15:01:10 2026]
localrule verify:
    input: results/samples/g/a.jsonl, results/problems/a.jsonl
    output: results/verify/g/a.jsonl
    jobid: 4
    threads: 2
[Thu Nov 26 15:01:40 2026]
Finished jobid: 4 (Rule: verify)
"""


def test_profile_from_a_snakemake_log(tmp_path):
    log = tmp_path / "run.snakemake.log"
    log.write_text(LOG)
    jobs = parse_snakemake_log(log)
    assert {j.rule: j.seconds for j in jobs} == {"problems": 10, "sample": 60, "bench": 10, "verify": 30}
    assert [j.rule for j in critical_path(jobs)] == ["problems", "sample", "verify"]
    text = profile_report(log, cores=2)
    # wall 100 s on 2 cores = 200 core-s; busy 10 + 60 + 10 + 30*2 = 140 -> idle 30%
    assert "wall 1.7 min on 2 cores; cores idle 30%" in text
    assert "critical path: 1.7 min" in text and "| sample | 1 | 60 |" in text
    # a job forked from the warm server: its peak RSS comes from the server's log
    warm_log = tmp_path / "warm.log"
    warm_log.write_text('ready at /tmp/x/sock\nforked stage verify as 7\n'
                        '{"pid": 7, "outputs": ["results/verify/g/a.jsonl"], "exit": 0, "cpu_s": 1.5, "max_rss_mb": 412.3}\n')
    assert "| verify | 1 | 30 | 30.0 | 30 | 412 |" in profile_report(log, cores=2, warm_log=warm_log)


def test_latest_log_skips_logs_without_a_finished_job(tmp_path):
    import pytest

    from librarm.profile import latest_log

    logs = tmp_path / ".snakemake" / "log"
    logs.mkdir(parents=True)
    (logs / "2026-11-26T150000.000000.snakemake.log").write_text(LOG)
    (logs / "2026-11-26T160000.000000.snakemake.log").write_text("Building DAG of jobs...\nNothing to be done.\n")
    assert latest_log(tmp_path).name.startswith("2026-11-26T150000")
    (logs / "2026-11-26T150000.000000.snakemake.log").write_text("Building DAG of jobs...\n")
    with pytest.raises(FileNotFoundError, match="none with a finished job"):
        latest_log(tmp_path)
