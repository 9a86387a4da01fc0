rule problems:
    conda:
        "../envs/cpu.yaml"
    output:
        sets=expand("results/problems/{name}.jsonl", name=SET_NAMES),
        quarantine=expand("results/problems/{name}.quarantine.jsonl", name=SET_NAMES),
        stats="results/problems/stats.json",
    params:
        **job_params("problems"),
    log:
        "results/logs/problems.log",
    benchmark:
        "results/logs/benchmarks/problems/problems.tsv",
    threads: 1
    shell:
        "python -m librarm.cli stage problems --config {params.cfg} --out {output.stats} > {log} 2>&1"
