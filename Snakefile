# Libra pipeline: raw problems -> samples -> verification -> Libra Bench -> judge training -> judge scores
# -> judge-labeled DPO pairs -> DPO policies -> policy scores on the hard subsets -> report.
# Table of contents only: the rules live in rules/*.smk, the logic in the librarm package.
# Values come from params.yaml (the same file DVC reads); presets overlay it with
#   snakemake --cores 2 --configfile workflow/presets/ci.yaml
from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


# `snakemake --report report.html`: this page, then the results marked with report() (rules/report.smk)
report: "workflow/report/workflow.rst"


include: "rules/common.smk"
include: "rules/problems.smk"
include: "rules/bootstrap.smk"
include: "rules/sample.smk"
include: "rules/verify.smk"
include: "rules/bench.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/downstream.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        PHASE_TARGETS,


# A local run's jobs fork from one process that imported torch, transformers and TRL once
# (librarm/run/warm.py; LIBRARM_WARM=0 turns it off).
onstart:
    start_for_workflow(workflow)


# Jobs spool their MLflow records; one import when the run ends (see librarm/run/tracking.py).
onsuccess:
    stop_for_workflow()
    flush_at_end()


onerror:
    stop_for_workflow()
    flush_at_end()
