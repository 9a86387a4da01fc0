# The run's report: every table (generators, bench, judges, comparisons, training, pairs, DPO,
# downstream gains and their correlation with judge quality), PNG plots and their CSV data, and a
# model card per trained judge and DPO policy. `snakemake --report report.html` shows the summary,
# the tables by phase, every plot and the cards (report() below; captions in workflow/report/).
if DOWNSTREAM:
    from librarm.stages.model_cards import MODEL_CARDS, dpo_policies, judge_training_files, trained_judges
    from librarm.stages.report import CURVES, PLOT_IMAGES
    from librarm.stages.report_pages import LIBRA_SCORE_PLOT, SUMMARY_HTML, TABLE_PAGE, TABLE_PAGES

    REPORT_DOCS = "../workflow/report"
    # every plot librarm.stages.report draws, with the category (phase) it shows in; curves need training
    REPORT_PLOTS = {
        "judge_accuracy": "Judges", "confusion": "Judges",
        **({name: "Judge training" for name, *_ in CURVES} if LEARNING else {}),
        "dpo_loss": "Downstream",
        **{img.removesuffix(".png"): "Downstream" for img in PLOT_IMAGES if img.startswith("gain_vs_")},
    }
    TABLE_CATEGORIES = {"bench": "Bench", "judges": "Judges", "training": "Judge training", "downstream": "Downstream"}
    REPORT_TABLES = [p for p in TABLE_PAGES if p != "training" or LEARNING]
    CARD_MODELS = [P.TRAINED_MODEL.format(model=m) for m in call(trained_judges, PARAMS).values()]
    CARD_POLICIES = [P.DPO_MODEL.format(policy=p, seed=s) for p, s in call(dpo_policies, PARAMS)]

    rule report:
        conda:
            "../envs/cpu.yaml"
        input:
            verify=P.VERIFY_STATS,
            bench=P.BENCH_STATS,
            eval=P.EVAL_SUMMARY,
            train=[P.TRAIN_STATS] if LEARNING else [],
            rs=[P.RS_STATS] if config.get("rs") else [],
            pairs=P.PAIRS_STATS,
            dpo=P.DPO_STATS,
            downstream=P.DOWNSTREAM_SUMMARY,
            eval_metrics=expand(P.EVAL_METRICS, judge=JUDGES),
            per_problem=expand(P.POLICY_PER_PROBLEM, policy=POLICIES),
            # every phase's summary (some also named above), so the report is the run's last job
            upstream=[p.target for p in active_phases(config) if p.name != "report"],
            seeds=[P.SEEDS_JSON] if PARAMS.report.replicates else [],
            # what the model cards name with its digest
            bench_file=P.BENCH_FILE,
            models=CARD_MODELS + CARD_POLICIES,
            train_data=call(judge_training_files, PARAMS),
            dpo_pairs=[P.PAIRS_FILE.format(policy=p) for p in DPO_POLICIES],
        output:
            metrics=P.REPORT_METRICS,
            summary=P.REPORT_SUMMARY,
            markdown=report(P.REPORT_MARKDOWN, caption=f"{REPORT_DOCS}/summary_md.rst", category="Summary"),
            html=report(SUMMARY_HTML, caption=f"{REPORT_DOCS}/summary.rst", category="Summary"),
            tables=[report(TABLE_PAGE.format(page=p), caption=f"{REPORT_DOCS}/tables_{p}.rst",
                           category=TABLE_CATEGORIES[p], subcategory="Tables") for p in REPORT_TABLES],
            libra_plot=report(LIBRA_SCORE_PLOT, caption=f"{REPORT_DOCS}/libra_score.rst", category="Judges",
                              subcategory="Plots"),
            plots=[report(f"{P.REPORT}/{name}.png", caption=f"{REPORT_DOCS}/{name}.rst", category=cat,
                          subcategory="Plots") for name, cat in REPORT_PLOTS.items()],
            cards=report(directory(MODEL_CARDS), patterns=["{card}/README.md"], caption=f"{REPORT_DOCS}/model_card.rst",
                         category="Model cards", labels={"model": "{card}"}),
        params:
            **job_params("report"),
        log:
            P.log("report"),
        benchmark:
            P.benchmark("report", "report")
        threads: 1
        shell:
            stage("report")

    if PARAMS.report.replicates:
        from librarm.stages.replicates import judge_groups

        # judges trained with several seeds (report.replicates) and DPO with several (dpo.seeds): every
        # score, difference and gain with an interval over seeds, then problems (the seeds preset)
        rule replicates:
            conda:
                "../envs/cpu.yaml"
            input:
                predictions=expand(P.EVAL_PREDICTIONS, judge=[m for ms in call(judge_groups, PARAMS).values() for m in ms]),
                samples=[P.POLICY_RUN_SAMPLES.format(policy=p, run=r)
                         for p in [NONE_POLICY, *PARAMS.pairs.labelers] for r in policy_runs(p, DPO_SEEDS)],
                downstream=P.DOWNSTREAM_SUMMARY,
            output:
                json=P.SEEDS_JSON,
                markdown=P.SEEDS_MARKDOWN,
            params:
                **job_params("report"),
            log:
                P.log("replicates"),
            benchmark:
                P.benchmark("replicates", "replicates")
            threads: 1
            shell:
                stage("replicates")
