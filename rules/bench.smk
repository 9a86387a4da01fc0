rule bench:
    conda:
        "../envs/cpu.yaml"
    input:
        verified=expand(P.VERIFIED_FILE, generator=GENERATORS, subset=EVAL_SUBSETS),
    output:
        bench=P.BENCH_FILE,
        stats=P.BENCH_STATS,
        stress=[P.STRESS_FILE] if STRESS else [],
    params:
        **job_params("bench"),
    log:
        P.log("bench"),
    benchmark:
        P.benchmark("bench", "bench")
    threads: 1
    shell:
        stage("bench")
