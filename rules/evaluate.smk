rule evaluate:
    conda:
        EVAL_ENV
    input:
        bench="results/bench/libra_bench.jsonl",
        model=judge_model,
        threshold=threshold_split,
    output:
        metrics="results/eval/{judge}/metrics.json",
        predictions="results/eval/{judge}/predictions.jsonl",
    wildcard_constraints:
        judge=any_regex(JUDGES),
    params:
        **job_params(
            "evaluate",
            judges=lambda wc: config["judges"][wc.judge],
            models=lambda wc: config["models"].get(config["judges"][wc.judge]["model"], {}),
        ),
    resources:
        gpu=lambda wc: config["judges"][wc.judge].get("gpus", 0),
    log:
        "results/logs/evaluate/{judge}.log",
    benchmark:
        "results/logs/benchmarks/evaluate/{judge}.tsv",
    threads: 1
    shell:
        "python -m librarm.cli stage evaluate --config {params.cfg} --judge {wildcards.judge} --inputs {input.bench}"
        " --out {output.metrics} --threads {threads} > {log} 2>&1"


rule eval_summary:
    conda:
        "../envs/cpu.yaml"
    input:
        metrics=expand("results/eval/{judge}/metrics.json", judge=JUDGES),
        predictions=expand("results/eval/{judge}/predictions.jsonl", judge=JUDGES),
        bench="results/bench/libra_bench.jsonl",
        extra=(["results/judge_data/train.jsonl", "results/train/stats.json"] if LEARNING else []),
    output:
        summary="results/eval/summary.json",
        table="results/eval/table.md",
        comparisons="results/eval/comparisons.json",
    params:
        **job_params("evaluate"),
    log:
        "results/logs/evaluate/summary.log",
    benchmark:
        "results/logs/benchmarks/eval_summary/summary.tsv",
    threads: 1
    shell:
        "python -m librarm.cli stage eval-summary --config {params.cfg} --inputs {input.metrics}"
        " --bench {input.bench} --extra {input.extra} --out {output.summary} > {log} 2>&1"
