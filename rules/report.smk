# The run's report: every table (generators, bench, judges, comparisons, training, pairs, DPO,
# downstream gains and their correlation with judge quality), PNG plots and their CSV data.
if DOWNSTREAM:
    rule report:
        conda:
            "../envs/cpu.yaml"
        input:
            verify=P.VERIFY_STATS,
            bench=P.BENCH_STATS,
            eval=P.EVAL_SUMMARY,
            train=[P.TRAIN_STATS] if LEARNING else [],
            rs=[P.RS_STATS] if config.get("rs") else [],
            pairs=P.PAIRS_STATS,
            dpo=P.DPO_STATS,
            downstream=P.DOWNSTREAM_SUMMARY,
            eval_metrics=expand(P.EVAL_METRICS, judge=JUDGES),
            per_problem=expand(P.POLICY_PER_PROBLEM, policy=POLICIES),
            # every phase's summary (some also named above), so the report is the run's last job
            upstream=[p.target for p in active_phases(config) if p.name != "report"],
        output:
            metrics=P.REPORT_METRICS,
            summary=P.REPORT_SUMMARY,
            markdown=P.REPORT_MARKDOWN,
        params:
            **job_params("report"),
        log:
            P.log("report"),
        benchmark:
            P.benchmark("report", "report")
        threads: 1
        shell:
            stage("report")
