rule bench:
    input:
        expand("results/verify/{generator}/{subset}.jsonl", generator=GENERATORS, subset=EVAL_SUBSETS),
    output:
        bench="results/bench/libra_bench.jsonl",
        stats="results/bench/stats.json",
    params:
        **rule_params(config, "bench"),
    log:
        "results/logs/bench.log",
    shell:
        "{PY} -m librarm.cli stage bench --config {CONFIG} --inputs {input} --out {output.bench} > {log} 2>&1"
