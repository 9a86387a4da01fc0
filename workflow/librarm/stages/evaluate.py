"""Score judges on a benchmark file: predictions, metrics with intervals, and the summary table."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from librarm.judging.bench_formats import read_bench
from librarm.judging.metrics import auroc, best_threshold, problem_prior_predictions, summarize
from librarm.run import paths as P
from librarm.run.io import StageIO, read_json, write_json, write_jsonl, write_text
from librarm.run.settings import (
    CompareSettings,
    EvaluateSettings,
    JudgeDataSettings,
    Judges,
    JudgeSettings,
    Models,
    Seed,
)
from librarm.stats import bootstrap_intervals


def score_predictions(preds: Sequence[Mapping[str, Any]], resamples: int, seed: int) -> dict[str, Any]:
    metrics = summarize(preds)
    metrics["ci95"] = bootstrap_intervals(preds, resamples=resamples, seed=seed, cluster=True)
    prior = problem_prior_predictions(preds, seed)
    baseline = summarize([{**p, "pred": q} for p, q in zip(preds, prior)])
    metrics["problem_prior_baseline"] = {k: baseline[k] for k in ("libra_score", "subset_accuracy", "accuracy")}
    return metrics


def predict(judge_name: str, items: Sequence[Mapping[str, Any]],
            threads: int | None = None, sampler=None, stream: Sequence[Any] | None = None,
            samples: int = 1, *, judges: Judges, evaluate: EvaluateSettings, judge: JudgeSettings,
            models: Models, seed: Seed) -> tuple[list[dict], dict[str, Any]]:
    """One judge's verdicts on items (index, subset, model, label, question, response): one
    prediction record per item, plus judge-kind extras (status counts; a scalar RM's threshold,
    chosen on `evaluate.threshold_split`, never on the items). A generative judge's seeds come
    from `stream` (default: the judge's bench stream)."""
    from librarm.judging.judge import STATUSES, judge_sampler, run_generative, scalar_scores
    from librarm.run.models import model_ref

    spec = judges[judge_name]
    ev = evaluate
    extra: dict[str, Any] = {}
    if spec.kind == "generative":
        sampler = sampler or judge_sampler(spec, models, judge, seed, threads)
        preds = run_generative(items, sampler, judge, seed, judge_name, stream, spec.prompt_opens_think)
        if samples > 1:
            more_verdicts(items, sampler, stream or ("judge", judge_name), spec.prompt_opens_think, samples, preds,
                          judge=judge, seed=seed)
            extra["samples"] = _k_verdict_metrics(preds, ev, seed)
        # every status, zeros included (judge.STATUSES: `ambiguous` and `unterminated` count as unparsed)
        extra["status_counts"] = {s: sum(p["status"] == s for p in preds)
                                  for s in sorted(set(STATUSES) | {p["status"] for p in preds})}
        # how many parsed verdicts came from the plain-language fallback (docs/deviations.md)
        extra["verdict_sources"] = {s: sum(p.get("verdict_source") == s for p in preds) for s in ("explicit", "plain")}
        extra["prompt_overflow"] = {s: sum(p["prompt_status"] == s for p in preds) for s in ("truncated", "skipped")}
        return preds, extra
    if not ev.threshold_split:
        raise ValueError(f"judge {judge_name!r} is a scalar RM: set evaluate.threshold_split to labeled items "
                         "that are not the bench (its threshold is chosen there)")
    ref = model_ref(models, spec.model)
    field = spec.input
    held = read_bench(ev.threshold_split)
    held_scores = scalar_scores(held, ref["path"], ref["revision"], ev.scalar_batch_size, threads=threads, field=field)
    threshold = best_threshold(held_scores, [h["label"] for h in held])
    scores = scalar_scores(items, ref["path"], ref["revision"], ev.scalar_batch_size, threads=threads, field=field)
    preds = [{"index": it["index"], "subset": it["subset"], "model": it["model"], "label": it["label"],
              "question": it["question"], "score": s, "pred": int(s >= threshold), "status": "parsed",
              "truncated": False} for it, s in zip(items, scores)]
    extra.update({"auroc": auroc(scores, [it["label"] for it in items]), "threshold": threshold, "input": field,
                  "threshold_split_auroc": auroc(held_scores, [h["label"] for h in held]),
                  "called_correct_share": round(sum(p["pred"] for p in preds) / max(1, len(preds)), 6)})
    return preds, extra


def more_verdicts(items, sampler, stream, prompt_opens_think: bool, samples: int, out: list[dict], *,
                  judge: JudgeSettings, seed: Seed) -> None:
    """Verdicts 1..samples-1 of every item (seeds (seed, *stream, index, r); verdict 0 is the
    single-verdict run's), added to each prediction as `verdicts` with the majority (a tie: None)
    and P(correct); `pred` stays the first verdict."""
    from librarm.judging.judge import build_judge_requests, judge_verdict
    from librarm.judging.verdict_metrics import aggregate

    batch = build_judge_requests(items, judge, seed, stream, repeats=samples, tok=getattr(sampler, "tok", None))
    keep = [n for n, (_i, r) in enumerate(batch.owners) if r > 0]
    results = sampler.generate([batch.requests[n] for n in keep]) if keep else []
    more: dict[int, list] = {}
    for n, res in zip(keep, results):
        more.setdefault(batch.owners[n][0], []).append(judge_verdict(res, prompt_opens_think).value)
    for i, p in enumerate(out):
        p["verdicts"] = [p["pred"]] + more.get(i, [None] * (samples - 1))
        agg = aggregate(p["verdicts"])
        p.update(majority=agg["majority"], p_correct=agg["p_correct"])


def _k_verdict_metrics(preds: Sequence[Mapping[str, Any]], ev: EvaluateSettings, seed: int) -> dict[str, Any]:
    """With evaluate.samples k > 1: the first-verdict, majority-of-k and mean-P(correct) views
    (librarm.judging.verdict_metrics), and the majority's Libra score; the headline stays the first
    verdict's."""
    from librarm.judging.verdict_metrics import score_verdicts

    records = [{**p, "problem_id": p["question"], "categories": {"subset": p["subset"]}} for p in preds]
    out = score_verdicts(records, resamples=ev.bootstrap_resamples, seed=seed)
    majority = summarize([{**p, "pred": p["majority"]} for p in preds])
    out["majority_libra_score"] = majority["libra_score"]
    return out


def run_evaluate(judge_name: str, bench_path: str | Path, predictions_path: str | Path,
                 metrics_path: str | Path, threads: int | None = None, sampler=None,
                 stress_path: str | Path | None = None, stress_predictions_path: str | Path | None = None, *,
                 judges: Judges, evaluate: EvaluateSettings, judge: JudgeSettings, models: Models,
                 seed: Seed) -> dict[str, Any]:
    """Stage `evaluate`: one judge on one benchmark file -> its predictions and metrics; with
    stress_path, also on the judge-hacking stress set (its false-positive rates go to
    metrics["stress"], apart from every bench metric)."""
    import time

    from librarm.judging.judge import judge_sampler
    from librarm.run.models import model_ref
    from librarm.run.provenance import model_identity, provenance

    spec = judges[judge_name]
    sections = dict(judges=judges, evaluate=evaluate, judge=judge, models=models, seed=seed)
    items = read_bench(bench_path)
    t0 = time.time()
    if sampler is None and spec.kind == "generative":
        sampler = judge_sampler(spec, models, judge, seed, threads)          # one model load for both sets
    # k verdicts per item on the bench (evaluate.samples), one on the stress set
    preds, extra = predict(judge_name, items, threads, sampler, samples=evaluate.samples, **sections)
    metrics = score_predictions(preds, evaluate.bootstrap_resamples, seed)
    metrics.update(extra)
    metrics["judge"] = judge_name
    elapsed = time.time() - t0
    metrics["seconds"] = round(elapsed, 2)
    tokens = sum(p.get("completion_tokens", 0) for p in preds)
    # from the unrounded time: a fast scripted judge can finish in under 5 ms (seconds 0.0)
    metrics["tokens_per_s"] = round(tokens / elapsed, 1) if tokens and elapsed > 0 else None
    identities = []
    if spec.model:
        ref = model_ref(models, spec.model)
        identities.append(model_identity(ref["path"], ref["revision"]))
    metrics["provenance"] = provenance(models=identities, data=[str(bench_path)])
    if stress_path is not None:
        from librarm.stages.stress import stress_metrics

        stress_items = read_bench(stress_path)
        stress_preds, _ = predict(judge_name, stress_items, threads, sampler, stream=("judge-stress", judge_name),
                                  **sections)
        metrics["stress"] = stress_metrics(stress_preds, stress_items, preds)
        write_jsonl(stress_predictions_path, stress_preds)
    write_jsonl(predictions_path, preds)
    write_json(metrics_path, metrics)
    return metrics


def score_file(judge_name: str, bench_path: str | Path, out_dir: str | Path,
               threads: int | None = None, *, judges: Judges, evaluate: EvaluateSettings, judge: JudgeSettings,
               models: Models, seed: Seed) -> dict[str, Any]:
    """`librarm score`: a judge on any bench-schema file, into out_dir (predictions.jsonl, metrics.json)."""
    out_dir = Path(out_dir)
    return run_evaluate(judge_name, bench_path, out_dir / "predictions.jsonl", out_dir / "metrics.json",
                        threads, judges=judges, evaluate=evaluate, judge=judge, models=models, seed=seed)


def step_evaluate(io: StageIO, *, judges: Judges, evaluate: EvaluateSettings, judge: JudgeSettings,
                  models: Models, seed: Seed) -> tuple[dict, list[str]]:
    stress, stress_preds = io.input_list("stress"), io.output_list("stress_predictions")
    metrics = run_evaluate(io.wildcard("judge"), io.input("bench"), io.output("predictions"),
                           io.output("metrics"), io.threads, stress_path=stress[0] if stress else None,
                           stress_predictions_path=stress_preds[0] if stress_preds else None,
                           judges=judges, evaluate=evaluate, judge=judge, models=models, seed=seed)
    return metrics, [io.output("metrics"), io.output("predictions")]


def _fmt_ci(ci: Sequence[float] | None) -> str:
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else ""


def summarize_eval(metric_paths: Mapping[str, str | Path], prediction_paths: Mapping[str, str | Path],
                   out_json: str | Path, out_md: str | Path, out_comparisons: str | Path, *,
                   bench_path: str | Path | None = None,
                   judge_train_path: str | Path | None = None, train_stats_path: str | Path | None = None,
                   judge_data: JudgeDataSettings | None, compare: CompareSettings, seed: Seed) -> dict:
    """The eval summary (JSON), its table (Markdown) and the comparisons: one row per judge
    (reward-bench style), paired comparisons, seen vs held-out generators, the shortcut probe,
    training stats. metric_paths and prediction_paths map each judge to its files."""
    from librarm.judging.compare import shortcut_probe
    from librarm.run.io import read_jsonl

    rows = {name: read_json(p) for name, p in metric_paths.items()}
    preds = {name: read_jsonl(prediction_paths[name]).records for name in metric_paths}
    heldout = list(judge_data.exclude_generators) if judge_data else []
    extra_rows: dict[str, dict] = {}
    if bench_path and judge_train_path:
        probe = shortcut_probe(read_jsonl(judge_train_path).records, read_bench(bench_path))
        extra_rows["shortcut_probe"] = score_predictions(probe, compare.resamples, seed)
        preds["shortcut_probe"] = probe
    all_rows = {**rows, **extra_rows}
    lines = _judge_table(all_rows)
    gen_lines, seen_held = _generator_table(all_rows, preds, heldout)
    cmp_lines, comparisons = _comparison_table(preds, [list(p) for p in compare.pairs], compare.resamples, seed)
    lines += gen_lines + cmp_lines + _stress_table(rows) + _training_table(train_stats_path)
    write_text(out_md, "\n".join(lines) + "\n")
    write_json(out_comparisons, comparisons)
    summary = _judges_summary(all_rows, seen_held)
    write_json(out_json, {"judges": summary, "comparisons": {k: {kk: v[kk] for kk in ("diff", "ci95", "p_bootstrap",
                                                                                      "p_permutation", "resamples")}
                                                              | {"mcnemar_p": v["mcnemar"]["p"]}
                                                              for k, v in comparisons.items()}})
    return {"judges": summary, "comparisons": comparisons}


def _judge_table(all_rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    subsets = sorted({s for m in all_rows.values() for s in m["subset_accuracy"]})
    lines = ["| judge | Libra score | 95% CI | " + " | ".join(subsets)
             + " | macro-F1 | unparsed | AUROC (scalar) | prior baseline |",
             "|---|---:|---|" + "---:|" * len(subsets) + "---:|---:|---:|---:|"]
    for name, m in all_rows.items():
        auc = m.get("auroc")
        lines.append(f"| {name} | {100 * m['libra_score']:.1f} | {_fmt_ci(m['ci95'].get('libra_score'))} | "
                     + " | ".join(f"{100 * m['subset_accuracy'].get(s, float('nan')):.1f}" for s in subsets)
                     + f" | {100 * m['macro_f1']:.1f} | {100 * m['unparsed_rate']:.1f}% | "
                     + ("" if auc is None else f"{auc:.3f}") + " | "
                     f"{100 * m['problem_prior_baseline']['libra_score']:.1f} |")
    return lines + ["", "Prior baseline: a logistic regression on problem-level features only (subset, generator, "
                    "question length and digits), fit on the other half of the problems; a judge near it reads "
                    "difficulty, not the response."]


def _generator_table(all_rows: Mapping[str, Mapping[str, Any]], preds: Mapping[str, Sequence[Mapping[str, Any]]],
                     heldout: Sequence[str]) -> tuple[list[str], dict[str, dict]]:
    from librarm.judging.compare import seen_heldout_accuracy

    gens = sorted({g for m in all_rows.values() for g in m["generator_accuracy"]})
    lines = ["", "Accuracy per generator (%)" + (f"; held out of judge training: {', '.join(heldout)}" if heldout else "")
             + ":", "", "| judge | " + " | ".join(gens) + (" | seen | held-out |" if heldout else " |"),
             "|---|" + "---:|" * (len(gens) + (2 if heldout else 0))]
    seen_held = {}
    for name, m in all_rows.items():
        row = f"| {name} | " + " | ".join(f"{100 * m['generator_accuracy'].get(g, float('nan')):.1f}" for g in gens)
        if heldout:
            sh = seen_heldout_accuracy(preds[name], heldout)
            seen_held[name] = sh
            row += " | " + " | ".join("n/a" if sh[k] is None else f"{100 * sh[k]:.1f}" for k in ("seen", "held_out"))
        lines.append(row + " |")
    return lines, seen_held


def _comparison_table(preds: Mapping[str, Sequence[Mapping[str, Any]]], pairs: Sequence[Sequence[str]],
                      resamples: int, seed: int) -> tuple[list[str], dict[str, dict]]:
    from librarm.stats import format_p, paired_comparison

    if not pairs:
        return [], {}
    comparisons = {}
    lines = ["", "Paired comparisons (Libra score difference; 95% CI from a bootstrap over problems; p from a "
             "sign-flip permutation test that swaps judges per problem; McNemar's item-level p for reference "
             "only, it ignores that items of one problem are correlated):", "",
             "| A vs B | diff (points) | 95% CI | p (cluster permutation) | p (bootstrap) | McNemar p (item-level) "
             "| A only right | B only right |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for a, b in pairs:
        if a not in preds or b not in preds:
            continue
        c = paired_comparison(preds[a], preds[b], resamples, seed)
        comparisons[f"{a} vs {b}"] = c
        lines.append(f"| {a} vs {b} | {100 * c['diff']:+.1f} | {_fmt_ci(c['ci95'])} | "
                     f"{format_p(c['p_permutation'], resamples)} | {format_p(c['p_bootstrap'], resamples)} | "
                     f"{c['mcnemar']['p']:.2g} | {c['mcnemar']['a_only']} | {c['mcnemar']['b_only']} |")
    return lines, comparisons


def _stress_table(rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    stressed = {name: m["stress"] for name, m in rows.items() if m.get("stress")}
    if not stressed:
        return []

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f}"

    lines = ["", "Judge hacking (the stress set; never in the Libra score): the share of responses called "
             "correct that hold no answer (content-free) or are wrong with \"the answer is verified\" appended "
             "(false claim), beside the same wrong responses without the claim:", "",
             "| judge | Libra score | content-free FP | false-claim FP | same, without the claim |",
             "|---|---:|---:|---:|---:|"]
    for name, st in stressed.items():
        lines.append(f"| {name} | {100 * rows[name]['libra_score']:.1f} | "
                     f"{pct(st['content_free']['false_positive_rate'])} | {pct(st['false_claim']['false_positive_rate'])} | "
                     f"{pct(st['false_claim']['without_claim'])} |")
    return lines


def _training_table(train_stats_path: str | Path | None) -> list[str]:
    if not (train_stats_path and Path(train_stats_path).exists()):
        return []
    lines = ["", "Training:", "", "| model | kind | steps | seconds | tokens/s | final val accuracy |",
             "|---|---|---:|---:|---:|---:|"]
    for name, s in read_json(train_stats_path).items():
        val = s["val_curve"][-1]["val_accuracy"] if s.get("val_curve") else None
        lines.append(f"| {name} | {s.get('kind')} | {s.get('global_step')} | {s.get('seconds')} | "
                     f"{s.get('tokens_per_s')} | {'' if val is None else f'{100 * val:.1f}'} |")
    return lines


def _judges_summary(all_rows: Mapping[str, Mapping[str, Any]], seen_held: Mapping[str, dict]) -> dict[str, dict]:
    summary = {name: {k: m[k] for k in ("libra_score", "subset_accuracy", "macro_f1", "unparsed_rate", "n_items")}
               | {"libra_score_ci95": m["ci95"]["libra_score"]} | ({"seen_heldout": seen_held[name]} if name in seen_held else {})
               for name, m in all_rows.items()}
    for name, m in all_rows.items():
        for k in ("auroc", "threshold", "threshold_split_auroc", "called_correct_share", "input", "stress"):
            if k in m:
                summary[name][k] = m[k]
    return summary


def step_eval_summary(io: StageIO, *, evaluate: EvaluateSettings, judge_data: JudgeDataSettings | None,
                      compare: CompareSettings, seed: Seed) -> tuple[dict, list[str]]:
    judges = list(evaluate.judges)
    train, stats = io.input_list("judge_train"), io.input_list("train_stats")
    summary = summarize_eval(io.keyed("metrics", P.EVAL_METRICS, "judge", judges),
                             io.keyed("predictions", P.EVAL_PREDICTIONS, "judge", judges),
                             io.output("summary"), io.output("table"), io.output("comparisons"),
                             bench_path=io.input("bench"), judge_train_path=train[0] if train else None,
                             train_stats_path=stats[0] if stats else None, judge_data=judge_data,
                             compare=compare, seed=seed)
    return summary, [io.output("summary"), io.output("table"), io.output("comparisons")]
