rule evaluate:
    conda:
        EVAL_ENV
    input:
        bench="results/bench/libra_bench.jsonl",
        model=judge_model,
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
    threads: 2
    shell:
        "python -m librarm.cli stage evaluate --config {params.cfg} --judge {wildcards.judge} --inputs {input.bench}"
        " --out {output.metrics} --threads {threads} > {log} 2>&1"


rule eval_summary:
    conda:
        "../envs/cpu.yaml"
    input:
        expand("results/eval/{judge}/metrics.json", judge=JUDGES),
    output:
        summary="results/eval/summary.json",
        table="results/eval/table.md",
    params:
        **job_params("evaluate"),
    log:
        "results/logs/evaluate/summary.log",
    shell:
        "python -m librarm.cli stage eval-summary --config {params.cfg} --inputs {input} --out {output.summary} > {log} 2>&1"
