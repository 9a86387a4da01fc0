rule sample:
    conda:
        SAMPLE_ENV
    input:
        problems="results/problems/{subset}.jsonl",
        model=generator_model,
    output:
        samples="results/samples/{generator}/{subset}.jsonl",
        meta="results/samples/{generator}/{subset}.meta.json",
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
        gpu=lambda wc: config["generators"][wc.generator].get("gpus", 0),
    log:
        "results/logs/sample/{generator}/{subset}.log",
    benchmark:
        "results/logs/benchmarks/sample/{generator}/{subset}.tsv",
    # Model jobs take one thread: two 1-thread jobs side by side beat one 2-thread job on the tiny
    # models (two bench evaluations: 34 s vs 55 s, measured); raise with --set-threads on big nodes.
    threads: 1
    shell:
        "python -m librarm.cli stage sample --config {params.cfg} --generator {wildcards.generator}"
        " --subset {wildcards.subset} --inputs {input.problems} --out {output.samples}"
        " --threads {threads} > {log} 2>&1"


rule sample_stats:
    conda:
        "../envs/cpu.yaml"
    input:
        expand("results/samples/{generator}/{subset}.meta.json", generator=GENERATORS, subset=SAMPLED_SUBSETS),
    output:
        "results/samples/stats.json",
    params:
        **job_params("sample"),
    log:
        "results/logs/sample/stats.log",
    benchmark:
        "results/logs/benchmarks/sample_stats/stats.tsv",
    threads: 1
    shell:
        "python -m librarm.cli stage sample-stats --config {params.cfg} --inputs {input} --out {output} > {log} 2>&1"
