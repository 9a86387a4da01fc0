rule evaluate:
    conda:
        EVAL_ENV
    input:
        bench=P.BENCH_FILE,
        stress=[P.STRESS_FILE] if STRESS else [],
        model=judge_model,
        threshold=threshold_split,
    output:
        metrics=P.EVAL_METRICS,
        predictions=P.EVAL_PREDICTIONS,
        stress_predictions=[P.EVAL_STRESS_PREDICTIONS] if STRESS else [],
    wildcard_constraints:
        judge=any_regex(JUDGES),
    params:
        **job_params(
            "evaluate",
            judges=lambda wc: config["judges"][wc.judge],
            models=lambda wc: config["models"].get(config["judges"][wc.judge]["model"], {}),
        ),
    resources:
        gpu=lambda wc: PARAMS.judges[wc.judge].scheduler_gpus,
    log:
        P.log("evaluate/{judge}"),
    benchmark:
        P.benchmark("evaluate", "{judge}")
    threads: 1
    shell:
        stage("evaluate")


rule eval_summary:
    conda:
        "../envs/cpu.yaml"
    input:
        metrics=expand(P.EVAL_METRICS, judge=JUDGES),
        predictions=expand(P.EVAL_PREDICTIONS, judge=JUDGES),
        bench=P.BENCH_FILE,
        judge_train=[P.JUDGE_TRAIN] if LEARNING else [],
        train_stats=[P.TRAIN_STATS] if LEARNING else [],
    output:
        summary=P.EVAL_SUMMARY,
        table=P.EVAL_TABLE,
        comparisons=P.EVAL_COMPARISONS,
    params:
        **job_params("evaluate"),
    log:
        P.log("evaluate/summary"),
    benchmark:
        P.benchmark("eval_summary", "summary")
    threads: 1
    shell:
        stage("eval-summary")
