# Downstream: the base policy samples the unlabeled pool, every labeler labels the responses, DPO
# trains one policy per labeler (and seed), and every policy is scored on the hard eval subsets.
if DOWNSTREAM:
    rule pairs_split:
        conda:
            "../envs/cpu.yaml"
        input:
            pool=P.PROBLEM_SET.format(subset=DPO_POOL),
        output:
            train=P.PAIRS_TRAIN_PROBLEMS,
            val=P.PAIRS_VAL_PROBLEMS,
        params:
            **job_params("pairs", **UNUSED("models", "judges", "judge", "evaluate.threshold_split", "evaluate.scalar_batch_size", "sampling", "verify")),
        log:
            P.log("pairs/split"),
        benchmark:
            P.benchmark("pairs_split", "split")
        threads: 1
        shell:
            stage("pairs-split")

    rule pairs_sample:
        conda:
            SAMPLE_ENV
        input:
            problems=P.PAIRS_TRAIN_PROBLEMS,
            model=local_model_dirs(PARAMS.models, [PARAMS.pairs.policy]),
        output:
            samples=P.PAIRS_SAMPLES,
            meta=P.PAIRS_SAMPLES_META,
        params:
            **job_params("pairs", **UNUSED("judges", "judge", "evaluate.threshold_split", "evaluate.scalar_batch_size", "verify")),
        log:
            P.log("pairs/sample"),
        benchmark:
            P.benchmark("pairs_sample", "sample")
        resources:
            gpu=PARAMS.pairs.policy_engine().scheduler_gpus,
        threads: 1
        shell:
            stage("pairs-sample")

    rule pairs_verify:
        conda:
            "../envs/cpu.yaml"
        input:
            samples=P.PAIRS_SAMPLES,
            problems=P.PROBLEM_SET.format(subset=DPO_POOL),
        output:
            verified=P.PAIRS_VERIFIED,
            meta=P.PAIRS_VERIFIED_META,
        params:
            **job_params("pairs", **UNUSED("models", "judges", "judge", "evaluate.threshold_split", "evaluate.scalar_batch_size", "sampling")),
        log:
            P.log("pairs/verify"),
        benchmark:
            P.benchmark("pairs_verify", "verify")
        threads: 1
        shell:
            stage("pairs-verify")

    rule pairs_label:
        conda:
            EVAL_ENV
        priority: 40
        input:
            verified=P.PAIRS_VERIFIED,
            model=judge_model,
            threshold=threshold_split,
        output:
            labels=P.PAIRS_LABELS,
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
            P.log("pairs/label-{judge}"),
        benchmark:
            P.benchmark("pairs_label", "label-{judge}")
        resources:
            gpu=lambda wc: PARAMS.judges[wc.judge].scheduler_gpus,
        threads: 1
        shell:
            stage("pairs-label")

    rule pairs_build:
        conda:
            "../envs/cpu.yaml"
        priority: 40
        input:
            verified=P.PAIRS_VERIFIED,
            labels=expand(P.PAIRS_LABELS, judge=JUDGE_LABELERS),
        output:
            stats=P.PAIRS_STATS,
            pairs=expand(P.PAIRS_FILE, policy=LABELERS),
            raw=expand(P.PAIRS_RAW, labeler=LABELERS),
            curve=expand(P.PAIRS_FILE, policy=CURVE_POLICIES),
        params:
            **job_params("pairs", **UNUSED("models", "judge", "evaluate.threshold_split", "evaluate.scalar_batch_size", "sampling", "verify")),
        log:
            P.log("pairs/build"),
        benchmark:
            P.benchmark("pairs_build", "build")
        threads: 1
        shell:
            stage("pairs-build")

    rule dpo:
        conda:
            DPO_ENV
        priority: 30
        input:
            pairs=P.PAIRS_FILE,
            val=P.PAIRS_VAL_PROBLEMS,
            init=local_model_dirs(PARAMS.models, [PARAMS.pairs.policy]),
        output:
            model=directory(P.DPO_MODEL),
            log=P.DPO_LOG,
        wildcard_constraints:
            policy=any_regex(DPO_POLICIES),
            seed=r"\d+",
        params:
            **job_params("dpo", **UNUSED("pairs.labelers", "pairs.raw_labelers", "pairs.gold_curve"),
                         models=config["models"][config["pairs"]["policy"]]),
        log:
            P.log("dpo/{policy}/seed-{seed}"),
        benchmark:
            P.benchmark("dpo", "{policy}/seed-{seed}")
        resources:
            gpu=TRAIN_GPUS,
        threads: TRAIN_THREADS
        shell:
            stage("dpo", threads=TRAIN_THREADS)

    rule dpo_stats:
        conda:
            "../envs/cpu.yaml"
        input:
            logs=expand(P.DPO_LOG, policy=DPO_POLICIES, seed=DPO_SEEDS),
        output:
            stats=P.DPO_STATS,
        params:
            **job_params("dpo"),
        log:
            P.log("dpo/stats"),
        benchmark:
            P.benchmark("dpo_stats", "stats")
        threads: 1
        shell:
            stage("dpo-stats")

    rule policy_eval:
        conda:
            SAMPLE_ENV
        priority: 20
        input:
            problems=expand(P.PROBLEM_SET, subset=POLICY_EVAL_SETS),
            model=policy_eval_model,
        output:
            metrics=P.POLICY_RUN_EVAL,
            samples=P.POLICY_RUN_SAMPLES,
        wildcard_constraints:
            policy=any_regex(POLICIES),
            run=r"base|seed-\d+",
        params:
            # the base policy's run reads its models entry (a hub or path policy is not an input)
            **job_params("evaluate_policy", **UNUSED("pairs.labelers", "pairs.raw_labelers", "pairs.gold_curve",
                                                     "dpo.seeds", "report.permutations"),
                         models=lambda wc: config["models"][config["pairs"]["policy"]] if wc.policy == NONE_POLICY else None,
                         pairs__policy=lambda wc: config["pairs"]["policy"] if wc.policy == NONE_POLICY else None),
        log:
            P.log("downstream/{policy}/{run}"),
        benchmark:
            P.benchmark("policy_eval", "{policy}/{run}")
        resources:
            gpu=PARAMS.pairs.policy_engine().scheduler_gpus,
        threads: 1
        shell:
            stage("policy-eval")

    rule policy_metrics:
        conda:
            "../envs/cpu.yaml"
        input:
            evals=lambda wc: expand(P.POLICY_RUN_EVAL, policy=wc.policy, run=policy_runs(wc.policy, DPO_SEEDS)),
            samples=lambda wc: expand(P.POLICY_RUN_SAMPLES, policy=wc.policy, run=policy_runs(wc.policy, DPO_SEEDS)),
            pairs_stats=P.PAIRS_STATS,
        output:
            metrics=P.POLICY_METRICS,
            per_problem=P.POLICY_PER_PROBLEM,
        wildcard_constraints:
            policy=any_regex(POLICIES),
        params:
            **job_params("evaluate_policy", **UNUSED("report.permutations", "models", "pairs.policy")),
        log:
            P.log("downstream/{policy}/metrics"),
        benchmark:
            P.benchmark("policy_metrics", "{policy}/metrics")
        threads: 1
        shell:
            stage("policy-metrics")

    rule downstream_summary:
        conda:
            "../envs/cpu.yaml"
        input:
            metrics=expand(P.POLICY_METRICS, policy=POLICIES),
            per_problem=expand(P.POLICY_PER_PROBLEM, policy=POLICIES),
        output:
            summary=P.DOWNSTREAM_SUMMARY,
        params:
            **job_params("evaluate_policy", **UNUSED("models", "pairs.policy")),
        log:
            P.log("downstream/summary"),
        benchmark:
            P.benchmark("downstream_summary", "summary")
        threads: 1
        shell:
            stage("downstream-summary")
