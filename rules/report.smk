# The run's report: every table (generators, bench, judges, comparisons, training, pairs, DPO,
# downstream gains and their correlation with judge quality), PNG plots and their CSV data.
if DOWNSTREAM:
    rule report:
        conda:
            "../envs/cpu.yaml"
        input:
            [p.target for p in active_phases(config) if p.name != "report"],
            expand("results/downstream/{policy}/per_problem.json", policy=POLICIES),
            expand("results/eval/{judge}/metrics.json", judge=JUDGES),
        output:
            metrics="results/report/metrics.json",
            summary="results/report/summary.json",
            markdown="results/report/summary.md",
        params:
            **job_params("report"),
        log:
            "results/logs/report.log",
        benchmark:
            "results/logs/benchmarks/report/report.tsv",
        threads: 1
        shell:
            "python -m librarm.cli stage report --config {params.cfg} --out {output.metrics} > {log} 2>&1"
