rule bench:
    conda:
        "../envs/cpu.yaml"
    input:
        expand("results/verify/{generator}/{subset}.jsonl", generator=GENERATORS, subset=EVAL_SUBSETS),
    output:
        bench="results/bench/libra_bench.jsonl",
        stats="results/bench/stats.json",
    params:
        **job_params("bench"),
    log:
        "results/logs/bench.log",
    benchmark:
        "results/logs/benchmarks/bench/bench.tsv",
    threads: 1
    shell:
        "python -m librarm.cli stage bench --config {params.cfg} --inputs {input} --out {output.bench} > {log} 2>&1"
