"""Score judges on a benchmark file: predictions, metrics with intervals, and the summary table."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from .bench import read_bench
from .io import read_json, write_json, write_jsonl, write_text
from .metrics import auroc, best_threshold, bootstrap_intervals, problem_prior_predictions, summarize


def score_predictions(preds: Sequence[Mapping[str, Any]], resamples: int, seed: int) -> dict[str, Any]:
    metrics = summarize(preds)
    metrics["ci95"] = bootstrap_intervals(preds, resamples=resamples, seed=seed, cluster=True)
    prior = problem_prior_predictions(preds)
    baseline = summarize([{**p, "pred": q} for p, q in zip(preds, prior)])
    metrics["problem_prior_baseline"] = {k: baseline[k] for k in ("libra_score", "subset_accuracy", "accuracy")}
    return metrics


def run_evaluate(params: Mapping[str, Any], judge_name: str, bench_path: str | Path, out_dir: str | Path,
                 threads: int | None = None, sampler=None) -> dict[str, Any]:
    """Stage `evaluate`: one judge on one benchmark file -> predictions.jsonl + metrics.json."""
    import time

    from .config import model_ref
    from .judge import run_generative, scalar_scores
    from .provenance import model_identity, provenance

    out_dir = Path(out_dir)
    spec = params["judges"][judge_name]
    items = read_bench(bench_path)
    ev = params["evaluate"]
    t0 = time.time()
    extra: dict[str, Any] = {}
    if spec["kind"] == "generative":
        preds = run_generative(items, spec, params, judge_name, threads, sampler)
        extra["status_counts"] = {s: sum(p["status"] == s for p in preds)
                                  for s in sorted({p["status"] for p in preds})}
        extra["prompt_overflow"] = {s: sum(p["prompt_status"] == s for p in preds) for s in ("truncated", "skipped")}
    else:
        if not ev.get("threshold_split"):
            raise ValueError(f"judge {judge_name!r} is a scalar RM: set evaluate.threshold_split to labeled items "
                             "that are not the bench (its threshold is chosen there)")
        ref = model_ref(params, spec["model"])
        held = read_bench(ev["threshold_split"])
        threshold = best_threshold(scalar_scores(held, ref["path"], ref["revision"], threads=threads),
                                   [h["label"] for h in held])
        scores = scalar_scores(items, ref["path"], ref["revision"], threads=threads)
        preds = [{"index": it["index"], "subset": it["subset"], "model": it["model"], "label": it["label"],
                  "question": it["question"], "score": s, "pred": int(s >= threshold), "status": "parsed",
                  "truncated": False} for it, s in zip(items, scores)]
        extra.update({"auroc": auroc(scores, [it["label"] for it in items]), "threshold": threshold})
    metrics = score_predictions(preds, ev.get("bootstrap_resamples", 2000), params["seed"])
    metrics.update(extra)
    metrics["judge"] = judge_name
    metrics["seconds"] = round(time.time() - t0, 2)
    tokens = sum(p.get("completion_tokens", 0) for p in preds)
    metrics["tokens_per_s"] = round(tokens / metrics["seconds"], 1) if tokens else None
    ident = model_identity(*(lambda r: (r["path"], r["revision"]))(model_ref(params, spec["model"])))
    metrics["provenance"] = provenance(models=[ident], data=[str(bench_path)])
    write_jsonl(out_dir / "predictions.jsonl", preds)
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def _fmt_ci(ci: Sequence[float] | None) -> str:
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else ""


def summarize_eval(metric_paths: Mapping[str, str | Path], out_json: str | Path, out_md: str | Path) -> dict:
    """results/eval/summary.json and table.md: one row per judge, reward-bench style."""
    rows = {name: read_json(p) for name, p in metric_paths.items()}
    subsets = sorted({s for m in rows.values() for s in m["subset_accuracy"]})
    gens = sorted({g for m in rows.values() for g in m["generator_accuracy"]})
    lines = ["| judge | Libra score | 95% CI | " + " | ".join(subsets) + " | macro-F1 | unparsed | prior baseline |",
             "|---|---:|---|" + "---:|" * len(subsets) + "---:|---:|---:|"]
    for name, m in rows.items():
        lines.append(f"| {name} | {100 * m['libra_score']:.1f} | {_fmt_ci(m['ci95'].get('libra_score'))} | "
                     + " | ".join(f"{100 * m['subset_accuracy'].get(s, float('nan')):.1f}" for s in subsets)
                     + f" | {100 * m['macro_f1']:.1f} | {100 * m['unparsed_rate']:.1f}% | "
                     f"{100 * m['problem_prior_baseline']['libra_score']:.1f} |")
    lines += ["", "Accuracy per generator (%):", "",
              "| judge | " + " | ".join(gens) + " |", "|---|" + "---:|" * len(gens)]
    for name, m in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * m['generator_accuracy'].get(g, float('nan')):.1f}"
                                                  for g in gens) + " |")
    md = "\n".join(lines) + "\n"
    write_text(out_md, md)
    summary = {name: {k: m[k] for k in ("libra_score", "subset_accuracy", "macro_f1", "unparsed_rate", "n_items")}
               | {"libra_score_ci95": m["ci95"]["libra_score"]} for name, m in rows.items()}
    write_json(out_json, summary)
    return summary
