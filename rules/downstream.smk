# Downstream: the base policy samples the unlabeled pool, every labeler labels the responses, DPO
# trains one policy per labeler (and seed), and every policy is scored on the hard eval subsets.
if DOWNSTREAM:
    rule pairs_split:
        conda:
            "../envs/cpu.yaml"
        input:
            f"results/problems/{DPO_POOL}.jsonl",
        output:
            train="results/pairs/train_problems.jsonl",
            val="results/pairs/val_problems.jsonl",
        params:
            **job_params("pairs", **UNUSED("models", "judges", "judge", "evaluate.threshold_split", "sampling", "verify")),
        log:
            "results/logs/pairs/split.log",
        benchmark:
            "results/logs/benchmarks/pairs_split/split.tsv",
        threads: 1
        shell:
            "python -m librarm.cli stage pairs-split --config {params.cfg} --inputs {input} --out {output.train} > {log} 2>&1"

    rule pairs_sample:
        conda:
            SAMPLE_ENV
        input:
            problems="results/pairs/train_problems.jsonl",
            model=local_model_dirs(config, [config["pairs"]["policy"]]),
        output:
            samples="results/pairs/samples.jsonl",
            meta="results/pairs/samples.meta.json",
        params:
            **job_params("pairs", **UNUSED("judges", "judge", "evaluate.threshold_split", "verify")),
        log:
            "results/logs/pairs/sample.log",
        benchmark:
            "results/logs/benchmarks/pairs_sample/sample.tsv",
        threads: 1
        shell:
            "python -m librarm.cli stage pairs-sample --config {params.cfg} --inputs {input.problems}"
            " --out {output.samples} --threads {threads} > {log} 2>&1"

    rule pairs_verify:
        conda:
            "../envs/cpu.yaml"
        input:
            samples="results/pairs/samples.jsonl",
            problems=f"results/problems/{DPO_POOL}.jsonl",
        output:
            verified="results/pairs/verified.jsonl",
            meta="results/pairs/verified.meta.json",
        params:
            **job_params("pairs", **UNUSED("models", "judges", "judge", "evaluate.threshold_split", "sampling")),
        log:
            "results/logs/pairs/verify.log",
        benchmark:
            "results/logs/benchmarks/pairs_verify/verify.tsv",
        threads: 1
        shell:
            "python -m librarm.cli stage pairs-verify --config {params.cfg} --inputs {input.samples} {input.problems}"
            " --out {output.verified} --threads {threads} > {log} 2>&1"

    rule pairs_label:
        conda:
            EVAL_ENV
        priority: 40
        input:
            verified="results/pairs/verified.jsonl",
            model=judge_model,
            threshold=threshold_split,
        output:
            "results/pairs/labels/{judge}.jsonl",
        wildcard_constraints:
            judge=any_regex(JUDGE_LABELERS),
        params:
            **job_params(
                "pairs",
                **UNUSED("pairs", "sampling", "verify"),
                judges=lambda wc: config["judges"][wc.judge],
                models=lambda wc: config["models"].get(config["judges"][wc.judge]["model"], {}),
            ),
        log:
            "results/logs/pairs/label-{judge}.log",
        benchmark:
            "results/logs/benchmarks/pairs_label/label-{judge}.tsv",
        threads: 1
        shell:
            "python -m librarm.cli stage pairs-label --config {params.cfg} --judge {wildcards.judge}"
            " --inputs {input.verified} --out {output} --threads {threads} > {log} 2>&1"

    rule pairs_build:
        conda:
            "../envs/cpu.yaml"
        priority: 40
        input:
            verified="results/pairs/verified.jsonl",
            labels=expand("results/pairs/labels/{judge}.jsonl", judge=JUDGE_LABELERS),
        output:
            stats="results/pairs/stats.json",
            pairs=expand("results/pairs/{labeler}.jsonl", labeler=LABELERS),
            raw=expand("results/pairs/raw/{labeler}.jsonl", labeler=LABELERS),
            curve=expand("results/pairs/{policy}.jsonl", policy=CURVE_POLICIES),
        params:
            **job_params("pairs", **UNUSED("models", "judge", "evaluate.threshold_split", "sampling", "verify")),
        log:
            "results/logs/pairs/build.log",
        benchmark:
            "results/logs/benchmarks/pairs_build/build.tsv",
        threads: 1
        shell:
            "python -m librarm.cli stage pairs-build --config {params.cfg} --inputs {input.verified}"
            " --extra {input.labels} --out {output.stats} > {log} 2>&1"

    rule dpo:
        conda:
            "../envs/cpu.yaml"
        priority: 30
        input:
            pairs="results/pairs/{policy}.jsonl",
            val="results/pairs/val_problems.jsonl",
            init=local_model_dirs(config, [config["pairs"]["policy"]]),
        output:
            model=directory("results/dpo/{policy}/seed-{seed}/model"),
            log="results/dpo/{policy}/seed-{seed}/log.json",
        wildcard_constraints:
            policy=any_regex(DPO_POLICIES),
            seed=r"\d+",
        params:
            **job_params("dpo", **UNUSED("pairs.labelers", "pairs.raw_labelers", "pairs.gold_curve"),
                         models=config["models"][config["pairs"]["policy"]]),
        log:
            "results/logs/dpo/{policy}/seed-{seed}.log",
        benchmark:
            "results/logs/benchmarks/dpo/{policy}/seed-{seed}.tsv",
        threads: 1
        shell:
            "python -m librarm.cli stage dpo --config {params.cfg} --policy {wildcards.policy} --seed {wildcards.seed}"
            " --inputs {input.pairs} {input.val} --models-dir {output.model} --out {output.log}"
            " --threads {threads} > {log} 2>&1"

    rule dpo_stats:
        conda:
            "../envs/cpu.yaml"
        input:
            expand("results/dpo/{policy}/seed-{seed}/log.json", policy=DPO_POLICIES, seed=DPO_SEEDS),
        output:
            "results/dpo/stats.json",
        params:
            **job_params("dpo"),
        log:
            "results/logs/dpo/stats.log",
        benchmark:
            "results/logs/benchmarks/dpo_stats/stats.tsv",
        threads: 1
        shell:
            "python -m librarm.cli stage dpo-stats --config {params.cfg} --inputs {input} --out {output} > {log} 2>&1"

    rule policy_eval:
        conda:
            SAMPLE_ENV
        priority: 20
        input:
            problems=expand("results/problems/{name}.jsonl", name=POLICY_EVAL_SETS),
            model=policy_eval_model,
        output:
            metrics="results/downstream/{policy}/{run}/eval.json",
            samples="results/downstream/{policy}/{run}/samples.jsonl",
        wildcard_constraints:
            policy=any_regex(POLICIES),
            run=r"base|seed-\d+",
        params:
            **job_params("evaluate_policy", models_dir=policy_eval_model_path, **UNUSED("pairs.labelers", "pairs.raw_labelers", "pairs.gold_curve", "dpo.seeds",
                                                                                      "report.permutations")),
        log:
            "results/logs/downstream/{policy}/{run}.log",
        benchmark:
            "results/logs/benchmarks/policy_eval/{policy}/{run}.tsv",
        threads: 1
        shell:
            "python -m librarm.cli stage policy-eval --config {params.cfg} --policy {wildcards.policy}"
            " --models-dir {params.models_dir} --inputs {input.problems} --out {output.metrics}"
            " --threads {threads} > {log} 2>&1"

    rule policy_metrics:
        conda:
            "../envs/cpu.yaml"
        input:
            runs=lambda wc: expand("results/downstream/{policy}/{run}/eval.json", policy=wc.policy,
                                   run=policy_runs(wc.policy)),
            pairs="results/pairs/stats.json",
        output:
            metrics="results/downstream/{policy}/metrics.json",
            per_problem="results/downstream/{policy}/per_problem.json",
        wildcard_constraints:
            policy=any_regex(POLICIES),
        params:
            **job_params("evaluate_policy", **UNUSED("report.permutations")),
        log:
            "results/logs/downstream/{policy}/metrics.log",
        benchmark:
            "results/logs/benchmarks/policy_metrics/{policy}/metrics.tsv",
        threads: 1
        shell:
            "python -m librarm.cli stage policy-metrics --config {params.cfg} --policy {wildcards.policy}"
            " --inputs {input.runs} --extra {input.pairs} --out {output.metrics} > {log} 2>&1"

    rule downstream_summary:
        conda:
            "../envs/cpu.yaml"
        input:
            expand("results/downstream/{policy}/metrics.json", policy=POLICIES),
        output:
            "results/downstream/summary.json",
        params:
            **job_params("evaluate_policy"),
        log:
            "results/logs/downstream/summary.log",
        benchmark:
            "results/logs/benchmarks/downstream_summary/summary.tsv",
        threads: 1
        shell:
            "python -m librarm.cli stage downstream-summary --config {params.cfg} --inputs {input} --out {output} > {log} 2>&1"
