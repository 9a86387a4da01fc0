# Models the pipeline makes itself: tiny-world LMs (trained, or the shipped weights when their
# params hash matches) and GGUF files converted to Hugging Face folders.
if TINY_MODELS:

    rule bootstrap_tiny:
        input:
            expand("results/problems/{name}.jsonl", name=SET_NAMES),
        output:
            models=[directory(f"{MODELS_DIR}/{m}") for m in TINY_MODELS],
            stats="results/bootstrap/tiny.json",
        params:
            **rule_params(config, "bootstrap"),
        log:
            "results/logs/bootstrap/tiny.log",
        threads: 2
        shell:
            "{PY} -m librarm.cli stage bootstrap-tiny --config {CONFIG} --inputs {input}"
            " --models-dir {MODELS_DIR} --out {output.stats} --threads {threads} > {log} 2>&1"


rule prepare_model:
    output:
        model=directory(f"{MODELS_DIR}/{{model}}"),
        info="results/bootstrap/{model}.json",
    wildcard_constraints:
        model=any_regex(GGUF_MODELS),
    params:
        **rule_params(config, "bootstrap"),
    log:
        "results/logs/bootstrap/{model}.log",
    threads: 2
    shell:
        "{PY} -m librarm.cli stage prepare-model --config {CONFIG} --model {wildcards.model}"
        " --models-dir {output.model} --out {output.info} > {log} 2>&1"


rule bootstrap_stats:
    input:
        (["results/bootstrap/tiny.json"] if TINY_MODELS else [])
        + expand("results/bootstrap/{model}.json", model=GGUF_MODELS),
    output:
        "results/bootstrap/stats.json",
    params:
        **rule_params(config, "bootstrap"),
    log:
        "results/logs/bootstrap/stats.log",
    shell:
        "{PY} -m librarm.cli stage bootstrap-stats --config {CONFIG} --inputs {input} --out {output} > {log} 2>&1"
