rule verify:
    conda:
        "../envs/cpu.yaml"
    input:
        samples="results/samples/{generator}/{subset}.jsonl",
        problems="results/problems/{subset}.jsonl",
    output:
        labels="results/verify/{generator}/{subset}.jsonl",
        meta="results/verify/{generator}/{subset}.meta.json",
    wildcard_constraints:
        generator=any_regex(GENERATORS),
        subset=any_regex(SAMPLED_SUBSETS),
    params:
        **job_params("verify"),
    log:
        "results/logs/verify/{generator}/{subset}.log",
    benchmark:
        "results/logs/benchmarks/verify/{generator}/{subset}.tsv",
    threads: 1
    shell:
        "python -m librarm.cli stage verify --config {params.cfg} --inputs {input.samples} {input.problems}"
        " --generator {wildcards.generator} --subset {wildcards.subset}"
        " --out {output.labels} --threads {threads} > {log} 2>&1"


rule verify_stats:
    conda:
        "../envs/cpu.yaml"
    input:
        expand("results/verify/{generator}/{subset}.jsonl", generator=GENERATORS, subset=SAMPLED_SUBSETS),
    output:
        "results/verify/stats.json",
    params:
        **job_params("verify"),
    log:
        "results/logs/verify/stats.log",
    benchmark:
        "results/logs/benchmarks/verify_stats/stats.tsv",
    threads: 1
    shell:
        "python -m librarm.cli stage verify-stats --config {params.cfg} --inputs {input} --out {output} > {log} 2>&1"
