# Models the pipeline makes itself: tiny-world LMs (trained, or the shipped weights when their
# params hash matches) and GGUF files converted to Hugging Face folders.
if TINY_MODELS:

    rule bootstrap_tiny:
        conda:
            "../envs/cpu.yaml"
        input:
            problems=expand(P.PROBLEM_SET, subset=SET_NAMES),
        output:
            models=[directory(P.MODEL_DIR.format(model=m)) for m in TINY_MODELS],
            stats=P.TINY_BOOTSTRAP_STATS,
        params:
            **job_params("bootstrap"),
        log:
            P.log("bootstrap/tiny"),
        benchmark:
            P.benchmark("bootstrap_tiny", "tiny")
        threads: 2
        shell:
            # the shipped weights' accuracy is measured with 2 threads whatever --cores says
            stage("bootstrap-tiny", threads=2)


rule prepare_model:
    conda:
        "../envs/cpu.yaml"
    output:
        model=directory(P.MODEL_DIR),
        info=P.PREPARED_MODEL_INFO,
    wildcard_constraints:
        model=any_regex(GGUF_MODELS),
    params:
        # a GGUF conversion reads only its own models entry (not the judge prompt, not other models)
        **job_params("bootstrap", **UNUSED("judge.prompt_template", "judge.system_prompt", "judge.max_prompt_tokens",
                                           "judge.overflow", "problems", "seed", "bootstrap"),
                     models=lambda wc: config["models"][wc.model]),
    log:
        P.log("bootstrap/{model}"),
    benchmark:
        P.benchmark("prepare_model", "{model}")
    threads: 2
    shell:
        stage("prepare-model", threads=2)


rule bootstrap_stats:
    conda:
        "../envs/cpu.yaml"
    input:
        tiny=[P.TINY_BOOTSTRAP_STATS] if TINY_MODELS else [],
        prepared=expand(P.PREPARED_MODEL_INFO, model=GGUF_MODELS),
    output:
        stats=P.BOOTSTRAP_STATS,
    params:
        **job_params("bootstrap"),
    log:
        P.log("bootstrap/stats"),
    benchmark:
        P.benchmark("bootstrap_stats", "stats")
    threads: 1
    shell:
        stage("bootstrap-stats")
