rule sample:
    input:
        problems="results/problems/{subset}.jsonl",
        model=generator_model,
    output:
        samples="results/samples/{generator}/{subset}.jsonl",
        meta="results/samples/{generator}/{subset}.meta.json",
    wildcard_constraints:
        generator=any_regex(GENERATORS),
        subset=any_regex(EVAL_SUBSETS),
    params:
        # Per-job values, so editing one generator reruns only its jobs.
        **rule_params(
            config,
            "sample",
            generators=lambda wc: config["generators"][wc.generator],
            models=lambda wc: config["models"].get(config["generators"][wc.generator].get("model"), {}),
        ),
    resources:
        gpu=lambda wc: config["generators"][wc.generator].get("gpus", 0),
    log:
        "results/logs/sample/{generator}/{subset}.log",
    threads: 2
    shell:
        "{PY} -m librarm.cli stage sample --config {CONFIG} --generator {wildcards.generator}"
        " --subset {wildcards.subset} --inputs {input.problems} --out {output.samples}"
        " --threads {threads} > {log} 2>&1"


rule sample_stats:
    input:
        expand("results/samples/{generator}/{subset}.meta.json", generator=GENERATORS, subset=EVAL_SUBSETS),
    output:
        "results/samples/stats.json",
    params:
        **rule_params(config, "sample"),
    log:
        "results/logs/sample/stats.log",
    shell:
        "{PY} -m librarm.cli stage sample-stats --config {CONFIG} --inputs {input} --out {output} > {log} 2>&1"
