rule problems:
    conda:
        "../envs/cpu.yaml"
    output:
        sets=expand(P.PROBLEM_SET, subset=SET_NAMES),
        quarantine=expand(P.PROBLEM_QUARANTINE, subset=SET_NAMES),
        stats=P.PROBLEMS_STATS,
    params:
        **job_params("problems"),
    log:
        P.log("problems"),
    benchmark:
        P.benchmark("problems", "problems")
    threads: 1
    shell:
        stage("problems")
