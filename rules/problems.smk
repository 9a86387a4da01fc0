rule problems:
    output:
        sets=expand("results/problems/{name}.jsonl", name=SET_NAMES),
        stats="results/problems/stats.json",
    params:
        **rule_params(config, "problems"),
    log:
        "results/logs/problems.log",
    threads: 1
    shell:
        "{PY} -m librarm.cli stage problems --config {CONFIG} --out {output.stats} > {log} 2>&1"
