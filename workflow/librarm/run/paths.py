"""Every path under results/: the one place an output is named. Rules take their inputs and
outputs from here (patterns keep Snakemake's `{wildcard}` fields; Python code fills them with
str.format), and pass each one to `librarm stage` by name, so stage code never works out a path.
Renaming an output is one edit here."""
from __future__ import annotations

from pathlib import Path

# ------------------------------------------------------------------ the checkout
PACKAGE_DIR = Path(__file__).resolve().parents[1]     # workflow/librarm
WORKFLOW_DIR = PACKAGE_DIR.parent
REPO_ROOT = WORKFLOW_DIR.parent
SCHEMA_PATH = WORKFLOW_DIR / "schemas" / "params.schema.json"
PRESETS_DIR = WORKFLOW_DIR / "presets"

RESULTS = "results"

# ------------------------------------------------------------------ problems
PROBLEMS = f"{RESULTS}/problems"
PROBLEM_SET = f"{PROBLEMS}/{{subset}}.jsonl"
PROBLEM_QUARANTINE = f"{PROBLEMS}/{{subset}}.quarantine.jsonl"
PROBLEMS_STATS = f"{PROBLEMS}/stats.json"

# ------------------------------------------------------------------ models the pipeline makes
BOOTSTRAP = f"{RESULTS}/bootstrap"
MODELS_DIR = f"{BOOTSTRAP}/models"
MODEL_DIR = f"{MODELS_DIR}/{{model}}"
TINY_BOOTSTRAP_STATS = f"{BOOTSTRAP}/tiny.json"
PREPARED_MODEL_INFO = f"{BOOTSTRAP}/{{model}}.json"
BOOTSTRAP_STATS = f"{BOOTSTRAP}/stats.json"

# ------------------------------------------------------------------ samples and their grades
SAMPLES = f"{RESULTS}/samples"
SAMPLE_FILE = f"{SAMPLES}/{{generator}}/{{subset}}.jsonl"
SAMPLE_META = f"{SAMPLES}/{{generator}}/{{subset}}.meta.json"
SAMPLES_STATS = f"{SAMPLES}/stats.json"

VERIFY = f"{RESULTS}/verify"
VERIFIED_FILE = f"{VERIFY}/{{generator}}/{{subset}}.jsonl"
VERIFIED_META = f"{VERIFY}/{{generator}}/{{subset}}.meta.json"
VERIFY_STATS = f"{VERIFY}/stats.json"

# ------------------------------------------------------------------ Libra Bench
BENCH = f"{RESULTS}/bench"
BENCH_FILE = f"{BENCH}/libra_bench.jsonl"
BENCH_STATS = f"{BENCH}/stats.json"
STRESS_FILE = f"{BENCH}/stress.jsonl"           # the judge-hacking stress set (never in the Libra score)

# ------------------------------------------------------------------ learning to think
JUDGE_DATA = f"{RESULTS}/judge_data"
JUDGE_TRAIN = f"{JUDGE_DATA}/train.jsonl"
JUDGE_VAL = f"{JUDGE_DATA}/val.jsonl"
JUDGE_RL_POOL = f"{JUDGE_DATA}/rl_pool.jsonl"
JUDGE_DATA_STATS = f"{JUDGE_DATA}/stats.json"

RS = f"{RESULTS}/rs"
RS_TRAJECTORIES = f"{RS}/trajectories.jsonl"
RS_SFT = f"{RS}/sft.jsonl"
RS_STATS = f"{RS}/stats.json"

TRAIN = f"{RESULTS}/train"
TRAINED_MODEL = f"{TRAIN}/{{model}}"
TRAIN_LOG = f"{TRAIN}/{{model}}.json"
TRAIN_STATS = f"{TRAIN}/stats.json"

# ------------------------------------------------------------------ judges on the bench
EVAL = f"{RESULTS}/eval"
EVAL_METRICS = f"{EVAL}/{{judge}}/metrics.json"
EVAL_PREDICTIONS = f"{EVAL}/{{judge}}/predictions.jsonl"
EVAL_STRESS_PREDICTIONS = f"{EVAL}/{{judge}}/stress_predictions.jsonl"
EVAL_SUMMARY = f"{EVAL}/summary.json"
EVAL_TABLE = f"{EVAL}/table.md"
EVAL_COMPARISONS = f"{EVAL}/comparisons.json"

# ------------------------------------------------------------------ downstream: pairs, DPO, policies
PAIRS = f"{RESULTS}/pairs"
PAIRS_TRAIN_PROBLEMS = f"{PAIRS}/train_problems.jsonl"
PAIRS_VAL_PROBLEMS = f"{PAIRS}/val_problems.jsonl"
PAIRS_SAMPLES = f"{PAIRS}/samples.jsonl"
PAIRS_SAMPLES_META = f"{PAIRS}/samples.meta.json"
PAIRS_VERIFIED = f"{PAIRS}/verified.jsonl"
PAIRS_VERIFIED_META = f"{PAIRS}/verified.meta.json"
PAIRS_LABELS = f"{PAIRS}/labels/{{judge}}.jsonl"
PAIRS_FILE = f"{PAIRS}/{{policy}}.jsonl"                  # a labeler's budget pairs, or a gold-curve point
PAIRS_RAW = f"{PAIRS}/raw/{{labeler}}.jsonl"              # every pair a labeler gives
PAIRS_STATS = f"{PAIRS}/stats.json"

DPO = f"{RESULTS}/dpo"
DPO_MODEL = f"{DPO}/{{policy}}/seed-{{seed}}/model"
DPO_LOG = f"{DPO}/{{policy}}/seed-{{seed}}/log.json"
DPO_STATS = f"{DPO}/stats.json"

DOWNSTREAM = f"{RESULTS}/downstream"
POLICY_RUN_EVAL = f"{DOWNSTREAM}/{{policy}}/{{run}}/eval.json"
POLICY_RUN_SAMPLES = f"{DOWNSTREAM}/{{policy}}/{{run}}/samples.jsonl"
POLICY_METRICS = f"{DOWNSTREAM}/{{policy}}/metrics.json"
POLICY_PER_PROBLEM = f"{DOWNSTREAM}/{{policy}}/per_problem.json"
DOWNSTREAM_SUMMARY = f"{DOWNSTREAM}/summary.json"

# ------------------------------------------------------------------ the report
REPORT = f"{RESULTS}/report"
REPORT_METRICS = f"{REPORT}/metrics.json"       # the one DVC metrics file: the run's headline
REPORT_SUMMARY = f"{REPORT}/summary.json"
REPORT_MARKDOWN = f"{REPORT}/summary.md"
REPORT_CURVES = f"{REPORT}/curves"
SEEDS_JSON = f"{REPORT}/seeds.json"             # the seeds stage (report.replicates): seed-aware intervals
SEEDS_MARKDOWN = f"{REPORT}/seeds.md"

# ------------------------------------------------------------------ not results: logs, working state
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{LOGS}/benchmarks"
RESUME = f"{RESULTS}/.resume"                   # working state of interrupted jobs (never a DVC output)
RESUME_SAMPLES = f"{RESUME}/samples"
RESUME_TRAIN = f"{RESUME}/train"
RESUME_BOOTSTRAP = f"{RESUME}/bootstrap"
EFFECTIVE_CONFIG = f"{RESULTS}/.config/effective.json"


def log(name: str) -> str:
    """A rule's log file: results/logs/<name>.log."""
    return f"{LOGS}/{name}.log"


def benchmark(rule: str, name: str) -> str:
    """A rule's `benchmark:` file: results/logs/benchmarks/<rule>/<name>.tsv."""
    return f"{BENCHMARKS}/{rule}/{name}.tsv"


def fill(pattern: str, **wildcards: object) -> str:
    """A pattern with its wildcards filled: fill(EVAL_METRICS, judge="rl")."""
    return pattern.format(**wildcards)
