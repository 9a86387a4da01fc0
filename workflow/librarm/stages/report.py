"""The run's report: a Markdown summary with every table of the run, PNG plots with their
data as CSV, and summary.json (paths: librarm.run.paths). Every number in the Markdown is read from a metrics file at a
recorded JSON path (`tables` in summary.json), so `check_report` can prove they agree."""
from __future__ import annotations

import csv
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from librarm.run import paths as P
from librarm.run.io import StageIO, read_json, write_json, write_text
from librarm.run.labelers import NONE_POLICY, RAW_PREFIX, all_policies, curve_policy, labeler_kind, policy_parts
from librarm.run.settings import (
    DpoSettings,
    EvaluateSettings,
    Judges,
    Models,
    PairsSettings,
    ReportSettings,
    RlSettings,
    Seed,
)
from librarm.stats import gain_correlation

# The phase files the report reads (its rule passes each by this name; train and rs only when the
# judge is trained).
SOURCE_KEYS = ("verify", "bench", "eval", "train", "rs", "pairs", "dpo", "downstream")


# Curves: <report>/curves/<name>/<name>-<series>.csv (step, value); also the dvc.yaml plots.
CURVES = [("sft_loss", "sft", "loss", "SFT loss"), ("grpo_reward", "rl", "reward", "GRPO reward"),
          ("grpo_correctness", "rl", "correctness", "GRPO correctness reward"),
          ("grpo_length", "rl", "length", "GRPO completion length (tokens)"),
          ("sft_val_accuracy", "sft_val", "val_accuracy", "SFT judge validation accuracy"),
          ("grpo_val_accuracy", "rl_val", "val_accuracy", "GRPO judge validation accuracy")]
PLOT_IMAGES = ["judge_accuracy.png", "confusion.png", "gain_vs_libra_score.png", "gain_vs_label_accuracy.png",
               "gain_vs_pair_accuracy.png"]


# ----------------------------------------------------------------------------- tables with sources
@dataclass(frozen=True)
class Num:
    """A number cell: the value at `path` in JSON file `file`, shown as value*scale with `digits`."""

    file: str
    path: tuple
    scale: float = 100.0
    digits: int = 1
    signed: bool = False
    p_resamples: int = 0              # > 0: a resampling p-value, shown as "< 1/B" at its floor

    def text(self, docs: Mapping[str, Any]) -> str:
        return fmt(dig(docs[self.file], self.path), self.scale, self.digits, self.signed, self.p_resamples)


def dig(doc: Any, path: Sequence[Any]) -> Any:
    for p in path:
        doc = doc[p] if isinstance(doc, Mapping) else doc[int(p)]
    return doc


def fmt(v: Any, scale: float = 100.0, digits: int = 1, signed: bool = False, p_resamples: int = 0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if p_resamples:
        from librarm.stats import format_p

        return format_p(float(v), p_resamples)
    x = float(v) * scale
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


class Table:
    def __init__(self, title: str, columns: Sequence[str], note: str = ""):
        self.title, self.columns, self.note = title, list(columns), note
        self.rows: list[list[Any]] = []

    def add(self, *cells: Any) -> None:
        self.rows.append(list(cells))

    def cell_text(self, c: Any, docs) -> str:
        if isinstance(c, Num):
            return c.text(docs)
        if isinstance(c, tuple):        # an interval: (Num lo, Num hi)
            return f"[{c[0].text(docs)}, {c[1].text(docs)}]"
        return str(c)

    def markdown(self, docs) -> str:
        head = f"### {self.title}\n\n" + (f"{self.note}\n\n" if self.note else "")
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(self.cell_text(c, docs) for c in r) + " |" for r in self.rows]
        return head + "\n".join(lines) + "\n"

    def sources(self) -> list[list[Any]]:
        def one(c):
            if isinstance(c, Num):
                return {"file": c.file, "path": list(c.path), "scale": c.scale, "digits": c.digits, "signed": c.signed,
                        "p_resamples": c.p_resamples}
            if isinstance(c, tuple):
                return [one(c[0]), one(c[1])]
            return str(c)
        return [[one(c) for c in r] for r in self.rows]


def ci(file: str, path: tuple, **kw) -> tuple[Num, Num]:
    return Num(file, path + (0,), **kw), Num(file, path + (1,), **kw)


# ----------------------------------------------------------------------------- report
def build_report(sources: Mapping[str, str], eval_metrics: Mapping[str, str], per_problem_paths: Mapping[str, str], *,
                 metrics_path: str | Path, summary_path: str | Path, markdown_path: str | Path, plots_dir: str | Path,
                 root: str | Path = ".", evaluate: EvaluateSettings, report: ReportSettings,
                 pairs: PairsSettings | None, judges: Judges, seed: Seed) -> dict:
    """Stage `report`: read every phase's file (sources, keyed as SOURCE_KEYS; each judge's bench
    metrics; each policy's per-problem accuracies), write the headline (metrics_path), the summary
    with every table's sources, the Markdown, and the plots (PNG + CSV) and curves in plots_dir.
    Paths are relative to root. Without `pairs` (no downstream phase) there are no labelers."""
    root = Path(root)
    out_dir = Path(plots_dir)
    summary_path = Path(summary_path)
    summary_source = str(summary_path.resolve().relative_to(root.resolve()))
    docs = {k: read_json(root / sources[k]) for k in SOURCE_KEYS if k in sources and (root / sources[k]).exists()}
    if "eval" in docs:       # judges in the order evaluate.judges lists them (summary.json sorts its keys)
        want = list(evaluate.judges)
        js = docs["eval"]["judges"]
        docs["eval"]["judges"] = {j: js[j] for j in sorted(js, key=lambda j: want.index(j) if j in want else len(want))}
    down = docs.get("downstream", {"policies": {}})
    labelers = list(pairs.labelers) if pairs else []
    pair_stats = docs.get("pairs", {}).get("labelers", {})
    # a short labeler (fewer pairs than the budget) is reported but never fitted
    fit = [n for n in report.fit_labelers if n in labelers and not pair_stats.get(n, {}).get("short")]
    curve = [curve_policy(n) for n in sorted(pairs.gold_curve if pairs else ())]
    order = [NONE_POLICY] + labelers + curve + [RAW_PREFIX + n for n in labelers]
    policies = down.get("policies", {})
    policies = {n: policies[n] for n in sorted(policies, key=lambda n: order.index(n) if n in order else len(order))}
    per_problem = {n: read_json(root / per_problem_paths[n]) for n in policies
                   if n in per_problem_paths and (root / per_problem_paths[n]).exists()}
    scores = docs.get("eval", {}).get("judges", {})
    libra = {n: scores[n]["libra_score"] for n in labelers if n in scores}
    lab_acc = {n: policies[n]["label_accuracy"] for n in labelers if n in policies}
    pair_acc = {n: policies[n].get("pair_accuracy") for n in labelers if n in policies}
    corr = {}
    if NONE_POLICY in per_problem and fit:
        for key, x in (("libra_score", libra), ("label_accuracy", lab_acc), ("pair_accuracy", pair_acc)):
            corr[key] = gain_correlation(x, per_problem, fit, report.resamples, report.permutations, seed)
    summary: dict[str, Any] = {"correlation": corr, "fit_labelers": fit,
                               "short_labelers": [n for n in labelers if pair_stats.get(n, {}).get("short")]}
    # the report's own numbers go to summary.json first, so tables can cite them like any source
    write_json(summary_path, summary)
    docs["report"] = summary
    tables = _tables(docs, labelers, policies, fit, order, report=report)
    artifacts = _plots(docs, root, out_dir, labelers, policies, corr, eval_metrics, judges=judges)
    md = ["# Libra run report", "",
          f"Every number below is read from the metrics file named in `{summary_source}` "
          "(`tables`); percentages unless marked.", ""]
    md += [t.markdown(docs) for t in tables]
    md.append("### Plots\n\n" + "\n".join(f"- `{Path(a).name}`" for a in artifacts if a.endswith(".png"))
              + "\n\nEach plot's data is in the CSV of the same name; curves are in `curves/<plot>/<plot>-<series>.csv`.\n")
    write_text(markdown_path, "\n".join(md))
    summary["tables"] = [{"title": t.title, "columns": t.columns, "rows": t.sources(), "note": t.note} for t in tables]
    summary["sources"] = {k: str(sources[k]) for k in docs if k in sources}
    summary["sources"]["report"] = summary_source
    summary["headline"] = _headline(policies, corr, scores, docs.get("bench", {}), docs.get("pairs", {}))
    summary["artifacts"] = artifacts
    write_json(summary_path, summary)
    # the DVC metrics file: the headline numbers only (summary.json also holds the table sources)
    write_json(metrics_path, summary["headline"])
    return summary


def step_report(io: StageIO, *, evaluate: EvaluateSettings, report: ReportSettings, pairs: PairsSettings,
                judges: Judges, models: Models, dpo: DpoSettings | None, rl: RlSettings | None,
                seed: Seed) -> tuple[dict, list[str]]:
    """Stage step `report`: the plots and curves go beside the summary (their set depends on the
    run's data, so they are the folder's undeclared outputs)."""
    sources = {k: io.input(k) for k in SOURCE_KEYS if io.inputs.get(k)}
    summary = build_report(sources, io.keyed("eval_metrics", P.EVAL_METRICS, "judge", list(evaluate.judges)),
                           io.keyed("per_problem", P.POLICY_PER_PROBLEM, "policy", all_policies(pairs)),
                           metrics_path=io.output("metrics"), summary_path=io.output("summary"),
                           markdown_path=io.output("markdown"), plots_dir=Path(io.output("summary")).parent,
                           evaluate=evaluate, report=report, pairs=pairs, judges=judges, seed=seed)
    # for `snakemake --report` (pages, the Libra-score plot) and the trained models' cards
    from librarm.stages.model_cards import write_step_cards
    from librarm.stages.report_pages import write_step_outputs

    extra = write_step_outputs(io, summary["headline"], evaluate=evaluate) \
        + write_step_cards(io, judges=judges, models=models, evaluate=evaluate, pairs=pairs, dpo=dpo, rl=rl)
    extra += write_pipeline_leaderboard(io.keyed("eval_metrics", P.EVAL_METRICS, "judge", list(evaluate.judges)),
                                        Path(io.output("summary")).parent / LEADERBOARD_DIR, judges=judges)
    return summary["headline"], [io.output("metrics"), io.output("summary"), io.output("markdown")] \
        + summary["artifacts"] + extra


LEADERBOARD_DIR = "leaderboard"     # beside the summary: the pipeline's judges as a leaderboard


def write_pipeline_leaderboard(eval_metrics: Mapping[str, str], out_dir: Path, *, judges: Judges) -> list[str]:
    """The pipeline's judges on Libra Bench as a leaderboard (the report's leaderboard/ folder: the
    CSV, Markdown and sortable HTML page that `librarm leaderboard` writes for scoring runs)."""
    from librarm.judging.leaderboard import write_leaderboard

    summaries, sources = [], []
    for judge, path in eval_metrics.items():
        if not Path(path).exists():
            continue
        m, spec = read_json(path), judges[judge]
        ci = m.get("ci95") or {}
        per_subset = {s: {"accuracy": v, "accuracy_ci": ci.get(f"subset_accuracy.{s}")}
                      for s, v in (m.get("subset_accuracy") or {}).items()}
        summaries.append({"judge": judge, "backend": spec.backend, "model": spec.model, "samples": 1,
                          "benchmark": {"name": "libra_bench", "format": "libra", "items": m.get("n_items")},
                          "metrics": {"k": 1, "first": {"accuracy": m.get("accuracy"), "accuracy_ci": ci.get("accuracy"),
                                                        "unparsed_rate": m.get("unparsed_rate"), "n": m.get("n_items")},
                                      "libra_score": m.get("libra_score"), "libra_score_ci": ci.get("libra_score"),
                                      "per_category": {"subset": per_subset}}})
        sources.append(str(path))
    if not summaries:
        return []
    done = write_leaderboard(summaries, out_dir, sources=sources)
    return [str(f) for f in done["files"]]


def _headline(policies, corr, judges, bench, pairs) -> dict:
    """What a team compares across experiments (`dvc metrics show/diff`, `dvc exp show`): each
    judge's Libra score, each labeler's downstream gain, the correlation, and the counts that say
    whether two runs are comparable at all. Everything else stays in the stats files (outputs, not
    DVC metrics), so the table fits a terminal."""
    h: dict[str, Any] = {f"libra.{n}": j.get("libra_score") for n, j in judges.items()}
    h.update({f"gain.{n}": (p.get("gain") or {}).get("all") for n, p in policies.items() if n != NONE_POLICY})
    for k, c in corr.items():
        h[f"r_gain_vs_{k}"] = c.get("r")
    if bench:
        h["bench_items"] = bench.get("n_items")
    if pairs:
        h["pair_budget"] = pairs.get("budget")
        h["short_labelers"] = len(pairs.get("short_labelers") or [])
    return h


def _tables(docs, labelers, policies, fit, order, *, report: ReportSettings) -> list[Table]:
    """Every table of the report, section by section (each present when its phase ran)."""
    return (_verify_tables(docs) + _bench_tables(docs) + _eval_tables(docs) + _train_tables(docs)
            + _rs_tables(docs) + _pairs_tables(docs, labelers) + _dpo_tables(docs, order)
            + _downstream_tables(docs, policies, report=report) + _gold_curve_tables(policies)
            + _correlation_tables(docs))


def _verify_tables(docs) -> list[Table]:
    tables: list[Table] = []
    if "verify" in docs:
        acc = docs["verify"]["accuracy"]
        subsets = sorted({s for g in acc.values() for s in g})
        t = Table("Generators: share of samples verified correct", ["generator"] + subsets + ["all"])
        for g in sorted(acc):
            t.add(g, *[Num("verify", ("accuracy", g, s)) if s in acc[g] else "" for s in subsets],
                  Num("verify", ("generator_accuracy", g)))
        tables.append(t)
    return tables


def _bench_tables(docs) -> list[Table]:
    tables: list[Table] = []
    if "bench" in docs:
        b = docs["bench"]
        t = Table("Libra Bench composition (items)", ["subset", "correct", "incorrect", "items", "problems"])
        for s in sorted(b["subsets"]):
            t.add(s, *[Num("bench", ("subsets", s, k), scale=1, digits=0) for k in ("correct", "incorrect", "n", "problems")])
        tables.append(t)
    return tables


def _eval_tables(docs) -> list[Table]:
    tables: list[Table] = []
    if "eval" in docs:
        ev = docs["eval"]["judges"]
        subsets = sorted(next(iter(ev.values())).get("subset_accuracy", {}))
        t = Table("Judges on Libra Bench", ["judge", "Libra score", "95% CI"] + subsets + ["macro-F1", "seen", "held-out"])
        for j, m in ev.items():
            sh = m.get("seen_heldout") or {}
            t.add(j, Num("eval", ("judges", j, "libra_score")), ci("eval", ("judges", j, "libra_score_ci95"))
                  if m.get("libra_score_ci95") else "n/a",
                  *[Num("eval", ("judges", j, "subset_accuracy", s)) for s in subsets],
                  Num("eval", ("judges", j, "macro_f1")),
                  Num("eval", ("judges", j, "seen_heldout", "seen")) if sh.get("seen") is not None else "n/a",
                  Num("eval", ("judges", j, "seen_heldout", "held_out")) if sh.get("held_out") is not None else "n/a")
        tables.append(t)
        stressed = [j for j, m in ev.items() if m.get("stress")]
        if stressed:
            t = Table("Judge hacking: false positives on the stress set (not in the Libra score)",
                      ["judge", "Libra score", "content-free FP", "false-claim FP", "same responses, no claim"],
                      note="Share called correct of responses that hold no answer (content-free templates: "
                           "stress.content_free) and of wrong responses with a false claim appended "
                           "(stress.false_claim), beside the same wrong responses without it. All are labeled "
                           "incorrect; a low share is good.")
            for j in stressed:
                st = ("judges", j, "stress")
                t.add(j, Num("eval", ("judges", j, "libra_score")),
                      Num("eval", st + ("content_free", "false_positive_rate")),
                      Num("eval", st + ("false_claim", "false_positive_rate")),
                      Num("eval", st + ("false_claim", "without_claim")))
            tables.append(t)
        scalar = [j for j, m in ev.items() if m.get("auroc") is not None]
        if scalar:
            t = Table("Scalar reward models", ["judge", "AUROC (bench)", "AUROC (threshold split)", "called correct",
                                               "input"],
                      note="A scalar RM's verdict is its score against a threshold chosen on the threshold split; "
                           "AUROC 50 is chance. Called correct: share of bench items it calls correct (half are).")
            for j in scalar:
                t.add(j, Num("eval", ("judges", j, "auroc")), Num("eval", ("judges", j, "threshold_split_auroc")),
                      Num("eval", ("judges", j, "called_correct_share")), str(ev[j].get("input")))
            tables.append(t)
        comps = docs["eval"].get("comparisons", {})
        if comps:
            t = Table("Paired judge comparisons (Libra score difference)",
                      ["A vs B", "diff (points)", "95% CI", "p (cluster permutation)", "McNemar p (item-level)"],
                      note="Interval: bootstrap over problems within subsets. p: sign-flip permutation test that swaps "
                           "the two judges per problem (items of a problem move together). McNemar's item-level p "
                           "ignores that clustering and is shown for reference only.")
            for k, c in comps.items():
                t.add(k, Num("eval", ("comparisons", k, "diff"), signed=True), ci("eval", ("comparisons", k, "ci95")),
                      Num("eval", ("comparisons", k, "p_permutation"), p_resamples=c.get("resamples", 2000)),
                      Num("eval", ("comparisons", k, "mcnemar_p"), scale=1, digits=2))
            tables.append(t)
    return tables


def _train_tables(docs) -> list[Table]:
    tables: list[Table] = []
    if "train" in docs:
        t = Table("Judge training", ["model", "kind", "steps", "seconds", "tokens/s", "final val accuracy"])
        for mname, m in docs["train"].items():
            t.add(mname, m.get("kind"), Num("train", (mname, "global_step"), scale=1, digits=0),
                  Num("train", (mname, "seconds"), scale=1, digits=1),
                  Num("train", (mname, "tokens_per_s"), scale=1, digits=0),
                  Num("train", (mname, "val_curve", len(m["val_curve"]) - 1, "val_accuracy")) if m.get("val_curve") else "n/a")
        tables.append(t)
        grpo = [m for m, st in docs["train"].items() if st.get("passrate_filter") or st.get("length_penalty")]
        if grpo:
            tables.append(_grpo_table(docs["train"], grpo))
    return tables


def _rs_tables(docs) -> list[Table]:
    tables: list[Table] = []
    if "rs" in docs:
        t = Table("Rejection sampling", ["acceptance", "label 1", "label 0", "items with none accepted", "judging examples",
                                         "reasoning examples"])
        t.add(Num("rs", ("acceptance_rate",)), Num("rs", ("acceptance_by_label", "1")), Num("rs", ("acceptance_by_label", "0")),
              Num("rs", ("items_none_accepted",), scale=1, digits=0), Num("rs", ("judging_examples",), scale=1, digits=0),
              Num("rs", ("reasoning_examples",), scale=1, digits=0))
        tables.append(t)
    return tables


def _pairs_tables(docs, labelers) -> list[Table]:
    tables: list[Table] = []
    if "pairs" in docs:
        ps = docs["pairs"]["labelers"]
        budget = docs["pairs"].get("budget")
        t = Table("DPO pairs per labeler (policy's own responses on the unlabeled pool)",
                  ["labeler", "kind", "label accuracy", "pair accuracy (trained)", "pairs raw", "pairs trained",
                   "problems all correct", "problems all incorrect"],
                  note="Label accuracy: share of the policy's responses labeled as the gold verifier labels them "
                       "(no verdict counts as wrong). Pair accuracy: share of pairs whose chosen is gold-correct and "
                       f"rejected gold-incorrect. Every labeler trains on a budget of {budget} pairs with the same "
                       "number of DPO steps; a labeler marked (short) has fewer, trains on all of them for the same "
                       "steps, and is left out of the correlation fit.")
        for n in labelers:
            t.add(n + (" (short)" if ps[n].get("short") else ""), ps[n]["kind"],
                  Num("pairs", ("labelers", n, "label_accuracy")),
                  Num("pairs", ("labelers", n, "pair_accuracy_trained")),
                  Num("pairs", ("labelers", n, "pairs_raw"), scale=1, digits=0),
                  Num("pairs", ("labelers", n, "pairs_trained"), scale=1, digits=0),
                  Num("pairs", ("labelers", n, "skipped_problems", "all_correct"), scale=1, digits=0),
                  Num("pairs", ("labelers", n, "skipped_problems", "all_incorrect"), scale=1, digits=0))
        tables.append(t)
    return tables


def _dpo_tables(docs, order) -> list[Table]:
    tables: list[Table] = []
    if "dpo" in docs:
        t = Table("DPO training", ["policy/seed", "pairs", "steps", "selected step", "val avg@k", "seconds", "tokens/s"],
                  note="The checkpoint (step 0, the untrained policy, included) is selected by avg@k on held-out "
                       "problems of the unlabeled pool, graded against their GOLD answers: selection uses gold "
                       "labels that the labelers never see.")
        for k in sorted(docs["dpo"], key=lambda k: [order.index(k.rsplit("/seed-", 1)[0]) if k.rsplit("/seed-", 1)[0]
                                                     in order else len(order), k]):
            t.add(k, *[Num("dpo", (k, f), scale=1, digits=0) for f in ("pairs", "steps", "selected_step")],
                  Num("dpo", (k, "selected_val_avg_at_k")), Num("dpo", (k, "seconds"), scale=1, digits=1),
                  Num("dpo", (k, "tokens_per_s"), scale=1, digits=0))
        tables.append(t)
    return tables


def _downstream_tables(docs, policies, *, report: ReportSettings) -> list[Table]:
    tables: list[Table] = []
    if policies:
        subsets = docs["downstream"]["subsets"]
        k = docs["downstream"]["k"]
        t = Table(f"Downstream: policy pass@1 (avg@{k}) on the hard eval subsets",
                  ["policy"] + [f"{s}" for s in subsets] + ["all", "95% CI", "sd over seeds", "gain", "gain 95% CI",
                                                             "p (sign-flip)", "share of gold gain"],
                  note="`none` is the base policy; every labeler's policy trained on its budget of pairs with the "
                       "same number of steps, (short) marks one with fewer pairs; `curve/gold-<n>` is gold on n pairs "
                       "(same steps); `raw/<labeler>` trained on all its pairs. Gains are paired (same problems, same "
                       "sampling seeds). Checkpoints were selected on gold answers of held-out pool problems.")
        for n, p in policies.items():
            src = ("policies", n)
            t.add(n + (" (short)" if p.get("short") else ""), *[Num("downstream", src + ("avg_at_k", s)) for s in subsets], Num("downstream", src + ("avg_at_k", "all")),
                  ci("downstream", src + ("ci95", "all")),
                  Num("downstream", src + ("sd_over_seeds", "all")) if p.get("sd_over_seeds") else "n/a (1 seed)",
                  Num("downstream", src + ("gain", "all"), signed=True) if p.get("gain") else "",
                  ci("downstream", src + ("gain_ci95", "all"), signed=True) if p.get("gain") else "",
                  Num("downstream", src + ("gain_p_value",),
                      p_resamples=report.permutations) if p.get("gain") else "",
                  Num("downstream", src + ("gold_gain_recovered",), scale=100, digits=0)
                  if p.get("gold_gain_recovered") is not None else "")
        tables.append(t)
    return tables


def _gold_curve_tables(policies) -> list[Table]:
    tables: list[Table] = []
    curve = {n: p for n, p in policies.items() if policy_parts(n)[0] == "curve"}
    if curve and "gold" in policies and policies["gold"].get("gain"):
        t = Table("Gold curve: gain of the gold labeler at several pair counts (same DPO steps)",
                  ["policy", "pairs", "gain", "gain 95% CI"],
                  note="Read a short labeler against gold at a similar count rather than gold on the full budget.")
        for n in list(curve) + ["gold"]:
            src = ("policies", n)
            t.add(n, Num("downstream", src + ("pairs",), scale=1, digits=0), Num("downstream", src + ("gain", "all"), signed=True),
                  ci("downstream", src + ("gain_ci95", "all"), signed=True))
        tables.append(t)
    return tables


def _correlation_tables(docs) -> list[Table]:
    tables: list[Table] = []
    corr = docs["report"]["correlation"]
    if corr:
        t = Table("Downstream gain against judge quality (fitted over the trained judges only)",
                  ["x", "labelers fitted", "Pearson r", "95% CI (problem bootstrap)", "p (permutation)",
                   "Spearman rho", "95% CI", "p (permutation)"],
                  note="Anchors (gold, noisy gold, random) and short labelers are drawn in the plots but not fitted. "
                       "pair_accuracy: the share of a labeler's training pairs whose chosen response is the "
                       "gold-correct one. With few points the smallest permutation p is 1/n!.")
        for key in corr:
            c = ("correlation", key)
            t.add(key, ", ".join(corr[key]["labelers"]), Num("report", c + ("r",), scale=1, digits=3),
                  ci("report", c + ("ci95",), scale=1, digits=3) if corr[key].get("ci95") else "n/a",
                  Num("report", c + ("p_permutation",), scale=1, digits=4),
                  Num("report", c + ("spearman",), scale=1, digits=3),
                  ci("report", c + ("spearman_ci95",), scale=1, digits=3) if corr[key].get("spearman_ci95") else "n/a",
                  Num("report", c + ("spearman_p_permutation",), scale=1, digits=4))
        tables.append(t)
    return tables


# ----------------------------------------------------------------------------- plots
def _grpo_table(train: Mapping[str, Any], models: Sequence[str]) -> Table:
    """GRPO's item filter and length penalty per trained model: what it trained on and how often the
    penalty bit (docs/deviations.md has why L_exp is a quantile)."""
    t = Table("GRPO: pass-rate filter and length penalty",
              ["model", "items rated", "kept in band", "mean pass rate", "L_exp (tokens)", "rollouts penalised",
               "validation outputs over L_exp"],
              note="The pass-rate filter rates pool items with the starting judge and keeps those inside "
                   "rl.passrate_band. L_exp is the rl.l_exp quantile of the starting judge's validation output "
                   "lengths; a model trained without the penalty shows how often it would have applied.")
    for m in models:
        pf, lp = train[m].get("passrate_filter") or {}, train[m].get("length_penalty") or {}
        t.add(m, Num("train", (m, "passrate_filter", "rated"), scale=1, digits=0) if "rated" in pf else "n/a",
              Num("train", (m, "passrate_filter", "kept"), scale=1, digits=0) if "kept" in pf else "n/a",
              Num("train", (m, "passrate_filter", "mean_pass_rate")) if "mean_pass_rate" in pf else "n/a",
              Num("train", (m, "length_penalty", "l_exp"), scale=1, digits=0) if "l_exp" in lp else "n/a",
              Num("train", (m, "length_penalty", "rollout_penalised_share")) if "rollout_penalised_share" in lp
              else "n/a",
              Num("train", (m, "length_penalty", "val_penalised_share")) if "val_penalised_share" in lp else "n/a")
    return t


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def write_curves(folder: Path, series: Mapping[str, Sequence[Mapping[str, Any]]], key: str) -> list[str]:
    """One CSV (step, key) per series in folder/, named <plot>-<series> ("/" -> "_"): the form
    `dvc plots show` renders from a folder definition whatever the series are, and names that stay
    unique when MLflow stores the report's artifacts side by side."""
    out = []
    for name, pts in series.items():
        rows = [[pt["step"], pt[key]] for pt in pts if pt.get(key) is not None]
        out.append(write_csv(folder / f"{folder.name}-{name.replace('/', '_')}.csv", ["step", key], rows))
    return out


class _PlotWriter:
    """Where the report's plots go: each figure saved as a PNG and listed as an artifact."""

    def __init__(self, out_dir: Path):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt, self.out_dir, self.arts = plt, out_dir, []
        self.curves = out_dir / "curves"
        shutil.rmtree(self.curves, ignore_errors=True)       # series of an earlier run must not linger

    def save(self, fig, name: str) -> None:
        p = self.out_dir / name
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        self.plt.close(fig)
        self.arts.append(str(p))


def _plots(docs, root: Path, out_dir: Path, labelers, policies, corr, eval_metrics, *, judges: Judges) -> list[str]:
    w = _PlotWriter(out_dir)
    ev = {j: read_json(root / eval_metrics[j]) for j in docs.get("eval", {}).get("judges", {})
          if j in eval_metrics and (root / eval_metrics[j]).exists()}
    if ev:
        _judge_plots(w, ev)
    if "train" in docs:
        _training_plots(w, docs["train"])
    if "dpo" in docs:
        _dpo_plots(w, docs["dpo"])
    if policies and corr:
        _gain_plots(w, docs, labelers, policies, corr, judges=judges)
    return w.arts


def _judge_plots(w: _PlotWriter, ev: Mapping[str, Any]) -> None:
    subsets = sorted(next(iter(ev.values())).get("subset_accuracy", {}))
    rows = []
    for j, m in ev.items():
        for s in subsets:
            lo, hi = m.get("ci95", {}).get(f"subset_accuracy.{s}", [None, None])
            rows.append([j, s, m["subset_accuracy"][s], lo, hi])
    w.arts.append(write_csv(w.out_dir / "judge_accuracy.csv", ["judge", "subset", "accuracy", "ci_lo", "ci_hi"], rows))
    fig, ax = w.plt.subplots(figsize=(max(6, len(ev) * 1.1), 4))
    width = 0.8 / max(1, len(subsets))
    for i, s in enumerate(subsets):
        sub = [r for r in rows if r[1] == s]
        xs = np.arange(len(sub)) + i * width
        ys = [r[2] for r in sub]
        err = [[r[2] - (r[3] if r[3] is not None else r[2]) for r in sub],
               [(r[4] if r[4] is not None else r[2]) - r[2] for r in sub]]
        ax.bar(xs, ys, width, yerr=err, capsize=2, label=s)
    ax.set_xticks(np.arange(len(ev)) + 0.4 - width / 2, list(ev), rotation=30, ha="right")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("accuracy")
    ax.set_title("Judge accuracy per subset (95% CI)")
    ax.legend(fontsize=8)
    w.save(fig, "judge_accuracy.png")
    conf_rows = []
    fig, axes = w.plt.subplots(1, len(ev), figsize=(2.2 * len(ev), 2.6), squeeze=False)
    for ax, (j, m) in zip(axes[0], ev.items()):
        c = m.get("confusion") or {}
        mat = np.array([[c.get(f"label_{lab}", {}).get(k, 0) for k in ("pred_0", "pred_1", "none")] for lab in (0, 1)])
        for lab in (0, 1):
            for k, col in zip(("pred_0", "pred_1", "none"), mat[lab]):
                conf_rows.append([j, lab, k, int(col)])
        ax.imshow(mat, cmap="Blues")
        for (a, b), v in np.ndenumerate(mat):
            ax.text(b, a, int(v), ha="center", va="center", fontsize=8)
        ax.set_xticks([0, 1, 2], ["0", "1", "none"])
        ax.set_yticks([0, 1], ["0", "1"])
        ax.set_title(j, fontsize=9)
        ax.set_xlabel("verdict")
    axes[0][0].set_ylabel("label")
    w.save(fig, "confusion.png")
    w.arts.append(write_csv(w.out_dir / "confusion.csv", ["judge", "label", "verdict", "count"], conf_rows))


def _training_plots(w: _PlotWriter, tr: Mapping[str, Any]) -> None:
    sft = {m: d["loss_curve"] for m, d in tr.items() if d.get("kind") in ("sft", "nothink") and d.get("loss_curve")}
    rl = {m: d["reward_curve"] for m, d in tr.items() if d.get("kind") == "rl" and d.get("reward_curve")}
    sft_val = {m: d["val_curve"] for m, d in tr.items() if d.get("kind") in ("sft", "nothink") and d.get("val_curve")}
    rl_val = {m: d["val_curve"] for m, d in tr.items() if d.get("kind") == "rl" and d.get("val_curve")}
    by_kind = {"sft": sft, "rl": rl, "sft_val": sft_val, "rl_val": rl_val}
    for name, kind, key, title in CURVES:
        series = by_kind[kind]
        if not series:
            continue
        w.arts += write_curves(w.curves / name, series, key)
        fig, ax = w.plt.subplots(figsize=(6, 3.5))
        for n, pts in series.items():
            pts = [p for p in pts if p.get(key) is not None]
            ax.plot([p["step"] for p in pts], [p[key] for p in pts], marker="." if len(pts) < 20 else None, label=n)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.legend(fontsize=7)
        w.save(fig, f"{name}.png")


def _dpo_plots(w: _PlotWriter, dpo: Mapping[str, Any]) -> None:
    series = {k: d["loss_curve"] for k, d in dpo.items()
              if policy_parts(k.rsplit("/seed-", 1)[0])[0] == "budget"}
    w.arts += write_curves(w.curves / "dpo_loss", series, "loss")
    fig, ax = w.plt.subplots(figsize=(6, 3.5))
    for n, pts in series.items():
        ax.plot([p["step"] for p in pts], [p["loss"] for p in pts], lw=0.8, label=n)
    ax.set_xlabel("step")
    ax.set_title("DPO loss (budget pairs)")
    ax.legend(fontsize=6, ncol=2)
    w.save(fig, "dpo_loss.png")


def _gain_plots(w: _PlotWriter, docs, labelers, policies, corr, *, judges: Judges) -> None:
    rows = []
    fit = set(docs["report"]["fit_labelers"])
    scores = docs.get("eval", {}).get("judges", {})
    for n in labelers:
        p = policies.get(n)
        if not p or not p.get("gain"):
            continue
        lo, hi = p["gain_ci95"]["all"]
        rows.append([n, scores.get(n, {}).get("libra_score", ""), p.get("label_accuracy"), p["gain"]["all"], lo, hi,
                     "fitted" if n in fit else ("short" if p.get("short") else
                                                "judge" if labeler_kind(n, judges) == "judge"
                                                else "anchor"), p.get("pair_accuracy")])
    w.arts.append(write_csv(w.out_dir / "downstream_gain.csv",
                          ["labeler", "libra_score", "label_accuracy", "gain", "gain_ci_lo", "gain_ci_hi", "role",
                           "pair_accuracy"], rows))
    for key, col, label in (("libra_score", 1, "Libra score of the labeler (bench)"),
                            ("label_accuracy", 2, "label accuracy on the policy's responses"),
                            ("pair_accuracy", 7, "pair accuracy (chosen is the gold-correct response)")):
        pts = [r for r in rows if r[col] not in ("", None)]
        if not pts:
            continue
        fig, ax = w.plt.subplots(figsize=(6, 4))
        for r in pts:
            # a trained judge outside the fit (a seed replicate): hollow, so it is not read as an anchor
            style = dict(color="C0", marker="o") if r[6] == "fitted" else \
                dict(color="C0", marker="o", mfc="none") if r[6] == "judge" else dict(color="C3", marker="s")
            ax.errorbar(r[col], r[3], yerr=[[r[3] - r[4]], [r[5] - r[3]]], capsize=2, ls="none", **style)
            ax.annotate(r[0], (r[col], r[3]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        # the noisy-gold curve (gold kept with probability p, flipped otherwise, and gold itself):
        # at equal label accuracy, a trained judge above it errs more cheaply than symmetric noise
        curve = sorted((r for r in pts if labeler_kind(r[0], judges) in ("gold", "noisy_gold")), key=lambda r: r[col])
        if key != "libra_score" and len(curve) > 1:
            ax.plot([r[col] for r in curve], [r[3] for r in curve], color="C3", lw=1, ls=":",
                    label="noisy-gold curve")
            ax.legend(fontsize=7)
        c = corr.get(key, {})
        if c.get("slope") is not None:
            xs = np.linspace(min(c["x"]), max(c["x"]), 10)
            ax.plot(xs, c["intercept"] + c["slope"] * xs, color="C0", lw=1,
                    label=f"fit over trained judges: r={c['r']:.2f}, p={c['p_permutation']:.3f}")
            ax.legend(fontsize=7)
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel(label)
        ax.set_ylabel("avg@k gain over base policy")
        ax.set_title("Downstream gain (blue: trained judges, filled if fitted; red: anchors)", fontsize=9)
        w.save(fig, f"gain_vs_{key}.png")


# ----------------------------------------------------------------------------- consistency check
def check_report(report_dir: str | Path, root: str | Path = ".") -> list[str]:
    """Differences between summary.md and the metrics files its tables cite ([] when every number
    in every table equals the value at its recorded path)."""
    report_dir, root = Path(report_dir), Path(root)
    summary = read_json(report_dir / "summary.json")
    md = (report_dir / "summary.md").read_text()
    docs = {k: read_json(root / p) for k, p in summary["sources"].items()}
    problems = []
    for t in summary["tables"]:
        section = md.split(f"### {t['title']}\n", 1)
        if len(section) != 2:
            problems.append(f"table {t['title']!r} missing from summary.md")
            continue
        lines = [ln for ln in section[1].split("\n### ", 1)[0].splitlines() if ln.startswith("| ")][1:]
        if len(lines) != len(t["rows"]):
            problems.append(f"table {t['title']!r}: {len(lines)} rows in summary.md, {len(t['rows'])} recorded")
            continue
        for line, row in zip(lines, t["rows"]):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            for i, (shown, src) in enumerate(zip(cells, row)):
                want = source_text(src, docs)
                if shown != want:
                    problems.append(f"table {t['title']!r} row {row[0]!r} column {t['columns'][i]!r}: "
                                    f"summary.md shows {shown!r}, the metrics file gives {want!r}")
    return problems


def source_text(src, docs) -> str:
    """The text a table cell shows for its recorded source (a number, an interval or a literal)."""
    if isinstance(src, dict):
        return fmt(dig(docs[src["file"]], src["path"]), src["scale"], src["digits"], src["signed"],
                   src.get("p_resamples", 0))
    if isinstance(src, list):
        return f"[{source_text(src[0], docs)}, {source_text(src[1], docs)}]"
    return src
