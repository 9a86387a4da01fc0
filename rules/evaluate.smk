rule evaluate:
    input:
        bench="results/bench/libra_bench.jsonl",
        model=judge_model,
    output:
        metrics="results/eval/{judge}/metrics.json",
        predictions="results/eval/{judge}/predictions.jsonl",
    wildcard_constraints:
        judge=any_regex(JUDGES),
    params:
        **rule_params(
            config,
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
        "{PY} -m librarm.cli stage evaluate --config {CONFIG} --judge {wildcards.judge} --inputs {input.bench}"
        " --out {output.metrics} --threads {threads} > {log} 2>&1"


rule eval_summary:
    input:
        expand("results/eval/{judge}/metrics.json", judge=JUDGES),
    output:
        summary="results/eval/summary.json",
        table="results/eval/table.md",
    params:
        **rule_params(config, "evaluate"),
    log:
        "results/logs/evaluate/summary.log",
    shell:
        "{PY} -m librarm.cli stage eval-summary --config {CONFIG} --inputs {input} --out {output.summary} > {log} 2>&1"
