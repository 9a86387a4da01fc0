# Learning to think: judge-training items (V2V on the judge pool), rejection sampling from a
# teacher judge, and the judges trained from them (SFT, verdict-only SFT, GRPO variants, scalar RM).
if LEARNING:
    rule judge_data:
        conda:
            "../envs/cpu.yaml"
        priority: 60
        input:
            verified=expand(P.VERIFIED_FILE, generator=TRAIN_GENERATORS, subset=JUDGE_POOL),
            problems=expand(P.PROBLEM_SET, subset=SET_NAMES),
        output:
            train=P.JUDGE_TRAIN,
            val=P.JUDGE_VAL,
            rl_pool=P.JUDGE_RL_POOL,
            stats=P.JUDGE_DATA_STATS,
        params:
            **job_params("judge_data"),
        log:
            P.log("judge_data"),
        benchmark:
            P.benchmark("judge_data", "judge_data")
        threads: 1
        shell:
            stage("judge-data")

    rule rs:
        conda:
            "../envs/cpu.yaml"
        priority: 60
        input:
            train=P.JUDGE_TRAIN,
            solutions=expand(P.VERIFIED_FILE, generator=TRAIN_GENERATORS, subset=JUDGE_POOL),
            teacher=lambda wc: engines.model_dirs(PARAMS.models, PARAMS.judges[PARAMS.rs.teacher]),
            student=lambda wc: local_model_dirs(PARAMS.models, [PARAMS.sft.init]),
        output:
            trajectories=P.RS_TRAJECTORIES,
            sft=P.RS_SFT,
            stats=P.RS_STATS,
        params:
            **job_params("rs", judges=lambda wc: config["judges"][config["rs"]["teacher"]]),
        log:
            P.log("rs"),
        benchmark:
            P.benchmark("rs", "rs")
        threads: 1
        shell:
            stage("rs")

    rule train_judge:
        conda:
            TRAIN_ENV
        priority: 50
        input:
            unpack(train_inputs),
        output:
            model=directory(P.TRAINED_MODEL),
            log=P.TRAIN_LOG,
        wildcard_constraints:
            model=any_regex(TRAINED_MODELS),
        params:
            # each job declares only the section its kind reads (an rl edit does not rerun SFT)
            **job_params(
                "train",
                models=lambda wc: config["models"][wc.model],
                sft=lambda wc: config.get("sft") if PARAMS.models[wc.model].train in ("sft", "nothink") else None,
                rl=lambda wc: config.get("rl") if PARAMS.models[wc.model].train == "rl" else None,
                scalar_rm=lambda wc: config.get("scalar_rm") if PARAMS.models[wc.model].train == "scalar" else None,
            ),
        log:
            P.log("train/{model}"),
        benchmark:
            P.benchmark("train_judge", "{model}")
        resources:
            gpu=TRAIN_GPUS,
        threads: TRAIN_THREADS
        shell:
            stage("train", threads=TRAIN_THREADS)

    rule train_stats:
        conda:
            "../envs/cpu.yaml"
        input:
            logs=expand(P.TRAIN_LOG, model=TRAINED_MODELS),
        output:
            stats=P.TRAIN_STATS,
        params:
            **job_params("train"),
        log:
            P.log("train/stats"),
        benchmark:
            P.benchmark("train_stats", "stats")
        threads: 1
        shell:
            stage("train-stats")
