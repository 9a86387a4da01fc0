rule sample:
    conda:
        SAMPLE_ENV
    input:
        problems=P.PROBLEM_SET,
        model=generator_model,
    output:
        samples=P.SAMPLE_FILE,
        meta=P.SAMPLE_META,
    wildcard_constraints:
        generator=any_regex(GENERATORS),
        subset=any_regex(SAMPLED_SUBSETS),
    params:
        # Per-job values, so editing one generator reruns only its jobs.
        **job_params(
            "sample",
            generators=lambda wc: config["generators"][wc.generator],
            models=lambda wc: config["models"].get(config["generators"][wc.generator].get("model"), {}),
        ),
    resources:
        gpu=lambda wc: PARAMS.generators[wc.generator].scheduler_gpus,
    log:
        P.log("sample/{generator}/{subset}"),
    benchmark:
        P.benchmark("sample", "{generator}/{subset}")
    # Model jobs take one thread: two 1-thread jobs side by side beat one 2-thread job on the tiny
    # models (two bench evaluations: 34 s vs 55 s, measured); raise with --set-threads on big nodes.
    threads: 1
    shell:
        stage("sample")


rule sample_stats:
    conda:
        "../envs/cpu.yaml"
    input:
        meta=expand(P.SAMPLE_META, generator=GENERATORS, subset=SAMPLED_SUBSETS),
    output:
        stats=P.SAMPLES_STATS,
    params:
        **job_params("sample"),
    log:
        P.log("sample/stats"),
    benchmark:
        P.benchmark("sample_stats", "stats")
    threads: 1
    shell:
        stage("sample-stats")
