# Models the pipeline makes itself: tiny-world LMs (trained, or the shipped weights when their
# params hash matches) and GGUF files converted to Hugging Face folders.
if TINY_MODELS:

    rule bootstrap_tiny:
        conda:
            "../envs/cpu.yaml"
        input:
            expand("results/problems/{name}.jsonl", name=SET_NAMES),
        output:
            models=[directory(f"{MODELS_DIR}/{m}") for m in TINY_MODELS],
            stats="results/bootstrap/tiny.json",
        params:
            **job_params("bootstrap", models_dir=lambda wc, output: os.path.dirname(output.models[0])),
        log:
            "results/logs/bootstrap/tiny.log",
        benchmark:
            "results/logs/benchmarks/bootstrap_tiny/tiny.tsv",
        threads: 2
        shell:
            "python -m librarm.cli stage bootstrap-tiny --config {params.cfg} --inputs {input}"
            " --models-dir {params.models_dir} --out {output.stats} --threads {threads} > {log} 2>&1"


rule prepare_model:
    conda:
        "../envs/cpu.yaml"
    output:
        model=directory(f"{MODELS_DIR}/{{model}}"),
        info="results/bootstrap/{model}.json",
    wildcard_constraints:
        model=any_regex(GGUF_MODELS),
    params:
        **job_params("bootstrap"),
    log:
        "results/logs/bootstrap/{model}.log",
    benchmark:
        "results/logs/benchmarks/prepare_model/{model}.tsv",
    threads: 2
    shell:
        "python -m librarm.cli stage prepare-model --config {params.cfg} --model {wildcards.model}"
        " --models-dir {output.model} --out {output.info} > {log} 2>&1"


rule bootstrap_stats:
    conda:
        "../envs/cpu.yaml"
    input:
        (["results/bootstrap/tiny.json"] if TINY_MODELS else [])
        + expand("results/bootstrap/{model}.json", model=GGUF_MODELS),
    output:
        "results/bootstrap/stats.json",
    params:
        **job_params("bootstrap"),
    log:
        "results/logs/bootstrap/stats.log",
    benchmark:
        "results/logs/benchmarks/bootstrap_stats/stats.tsv",
    threads: 1
    shell:
        "python -m librarm.cli stage bootstrap-stats --config {params.cfg} --inputs {input} --out {output} > {log} 2>&1"
