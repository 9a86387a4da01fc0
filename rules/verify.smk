rule verify:
    conda:
        "../envs/cpu.yaml"
    input:
        samples=P.SAMPLE_FILE,
        problems=P.PROBLEM_SET,
    output:
        labels=P.VERIFIED_FILE,
        meta=P.VERIFIED_META,
    wildcard_constraints:
        generator=any_regex(GENERATORS),
        subset=any_regex(SAMPLED_SUBSETS),
    params:
        **job_params("verify"),
    log:
        P.log("verify/{generator}/{subset}"),
    benchmark:
        P.benchmark("verify", "{generator}/{subset}")
    threads: 1
    shell:
        stage("verify")


rule verify_stats:
    conda:
        "../envs/cpu.yaml"
    input:
        labels=expand(P.VERIFIED_FILE, generator=GENERATORS, subset=SAMPLED_SUBSETS),
    output:
        stats=P.VERIFY_STATS,
    params:
        **job_params("verify"),
    log:
        P.log("verify/stats"),
    benchmark:
        P.benchmark("verify_stats", "stats")
    threads: 1
    shell:
        stage("verify-stats")
