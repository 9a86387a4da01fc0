# Learning to think: judge-training items (V2V on the judge pool), rejection sampling from a
# teacher judge, and the judges trained from them (SFT, verdict-only SFT, GRPO variants, scalar RM).
if LEARNING:
    rule judge_data:
        conda:
            "../envs/cpu.yaml"
        priority: 60
        input:
            verify=expand("results/verify/{generator}/{pool}.jsonl", generator=TRAIN_GENERATORS, pool=JUDGE_POOL),
            problems=expand("results/problems/{name}.jsonl", name=SET_NAMES),
        output:
            train="results/judge_data/train.jsonl",
            val="results/judge_data/val.jsonl",
            stats="results/judge_data/stats.json",
        params:
            **job_params("judge_data"),
        log:
            "results/logs/judge_data.log",
        benchmark:
            "results/logs/benchmarks/judge_data/judge_data.tsv",
        threads: 1
        shell:
            "python -m librarm.cli stage judge-data --config {params.cfg} --inputs {input.verify}"
            " --problems {input.problems} --out {output.stats} > {log} 2>&1"

    rule rs:
        conda:
            "../envs/cpu.yaml"
        priority: 60
        input:
            train="results/judge_data/train.jsonl",
            solutions=expand("results/verify/{generator}/{pool}.jsonl", generator=TRAIN_GENERATORS, pool=JUDGE_POOL),
            teacher=lambda wc: local_model_dirs(config, [config["judges"][config["rs"]["teacher"]].get("model")])
            if config["judges"][config["rs"]["teacher"]]["backend"] != "pseudo" else [],
            student=lambda wc: local_model_dirs(config, [config["sft"].get("init", "judge_base")]),
        output:
            trajectories="results/rs/trajectories.jsonl",
            sft="results/rs/sft.jsonl",
            stats="results/rs/stats.json",
        params:
            **job_params("rs", judges=lambda wc: config["judges"][config["rs"]["teacher"]]),
        log:
            "results/logs/rs.log",
        benchmark:
            "results/logs/benchmarks/rs/rs.tsv",
        threads: 1
        shell:
            "python -m librarm.cli stage rs --config {params.cfg} --inputs {input.train} {input.solutions}"
            " --out {output.stats} --threads {threads} > {log} 2>&1"

    rule train_judge:
        conda:
            "../envs/cpu.yaml"
        priority: 50
        input:
            unpack(train_inputs),
        output:
            model=directory("results/train/{model}"),
            log="results/train/{model}.json",
        wildcard_constraints:
            model=any_regex(TRAINED_MODELS),
        params:
            # each job declares only the section its kind reads (an rl edit does not rerun SFT)
            **job_params(
                "train",
                models=lambda wc: config["models"][wc.model],
                sft=lambda wc: config.get("sft") if config["models"][wc.model]["train"] in ("sft", "nothink") else None,
                rl=lambda wc: config.get("rl") if config["models"][wc.model]["train"] == "rl" else None,
                scalar_rm=lambda wc: config.get("scalar_rm") if config["models"][wc.model]["train"] == "scalar" else None,
            ),
        log:
            "results/logs/train/{model}.log",
        benchmark:
            "results/logs/benchmarks/train_judge/{model}.tsv",
        threads: 1
        shell:
            "python -m librarm.cli stage train --config {params.cfg} --model {wildcards.model}"
            " --models-dir {output.model} --out {output.log} --threads {threads} > {log} 2>&1"

    rule train_stats:
        conda:
            "../envs/cpu.yaml"
        input:
            expand("results/train/{model}.json", model=TRAINED_MODELS),
        output:
            "results/train/stats.json",
        params:
            **job_params("train"),
        log:
            "results/logs/train/stats.log",
        benchmark:
            "results/logs/benchmarks/train_stats/stats.tsv",
        threads: 1
        shell:
            "python -m librarm.cli stage train-stats --config {params.cfg} --inputs {input} --out {output} > {log} 2>&1"
