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
            seeds=[P.SEEDS_JSON] if PARAMS.report.replicates else [],
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

    if PARAMS.report.replicates:
        from librarm.replicates import judge_groups

        # judges trained with several seeds (report.replicates) and DPO with several (dpo.seeds): every
        # score, difference and gain with an interval over seeds, then problems (the seeds preset)
        rule seeds:
            conda:
                "../envs/cpu.yaml"
            input:
                predictions=expand(P.EVAL_PREDICTIONS, judge=[m for ms in judge_groups(config).values() for m in ms]),
                samples=[P.POLICY_RUN_SAMPLES.format(policy=p, run=r)
                         for p in [NONE_POLICY, *PARAMS.pairs.labelers] for r in policy_runs(p, DPO_SEEDS)],
                downstream=P.DOWNSTREAM_SUMMARY,
            output:
                json=P.SEEDS_JSON,
                markdown=P.SEEDS_MARKDOWN,
            params:
                **job_params("report"),
            log:
                P.log("seeds"),
            benchmark:
                P.benchmark("seeds", "seeds")
            threads: 1
            shell:
                stage("seeds")
