"""`librarm score`: one judge on one benchmark of the field (librarm.judging.bench_formats), with k
sampled verdicts per item, a resumable verdict store and the metrics papers report
(librarm.judging.verdict_metrics).

OUT/verdicts.jsonl holds one line per (item, sample) as results arrive, keyed by the item's index,
the sample index k and a hash of the whole request (messages, backend, model, decoding settings,
seed). A rerun reuses every line whose key matches and sends only the rest, so a killed run loses at
most the requests in flight; at the end the file is rewritten sorted by (item, k). OUT/run.json
records what the run is (judge, model, backend, decoding, benchmark digest): a rerun with other
settings refuses to touch OUT unless --overwrite. OUT/summary.json is what `librarm leaderboard`
reads; OUT/predictions.jsonl has one record per item (the first verdict's fields, as the pipeline's
evaluate stage writes them, plus every verdict, the majority and P(correct)).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from librarm.run.io import file_sha256, read_jsonl, write_json, write_jsonl
from librarm.run.settings import EvaluateSettings, Judges, JudgeSettings, Models, Seed

VERDICTS = "verdicts.jsonl"
RUN = "run.json"
SUMMARY = "summary.json"
PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"


class ScoreError(ValueError):
    """A scoring run cannot start (a refused overwrite, a judge that cannot score this benchmark)."""


@dataclass(frozen=True)
class ScoreRun:
    """What one `librarm score` run does beyond the params: its folder and its limits."""

    out: Path
    samples: int = 1                 # verdicts per item (k)
    limit: int | None = None         # the first N items only (a quick look)
    chunk: int = 8                   # requests per call to the sampler (http: the requests in flight)
    overwrite: bool = False
    threads: int | None = None
    progress: bool = True


def request_key(messages: Any, identity: Mapping[str, Any], seed: int, k: int) -> str:
    """The hash a verdict is stored under: everything that makes the request what it is."""
    doc = {"messages": messages, "identity": identity, "seed": seed, "k": k}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:24]


class VerdictStore:
    """OUT/verdicts.jsonl: read what a previous run stored (a torn last line from a kill is dropped),
    append each result as it arrives, rewrite sorted at the end."""

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[tuple[str, int], dict] = {}
        self.torn = 0
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    self.records[(str(rec["index"]), int(rec["k"]))] = rec
                except (ValueError, KeyError, TypeError):
                    self.torn += 1

    def get(self, index: Any, k: int, key: str) -> dict | None:
        rec = self.records.get((str(index), k))
        return rec if rec is not None and rec.get("request") == key else None

    def append(self, records: Sequence[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            for rec in records:
                self.records[(str(rec["index"]), int(rec["k"]))] = rec
                fh.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
            fh.flush()

    def rewrite_sorted(self, keep: set[tuple[str, int]]) -> None:
        """Only the verdicts of this run's requests, sorted by (item, k): the same bytes whether the
        run was interrupted or not."""
        rows = [self.records[key] for key in sorted(keep, key=lambda t: (_index_order(t[0]), t[1]))
                if key in self.records]
        write_jsonl(self.path, rows)


def _index_order(index: str):
    return (0, int(index), "") if index.lstrip("-").isdigit() else (1, 0, index)


def run_identity(judge: str, *, judges: Judges, models: Models, judge_settings: JudgeSettings) -> dict[str, Any]:
    """The judge as a request sees it: backend, model (path or served name, revision) and decoding."""
    from librarm.run.models import model_ref

    spec = judges[judge]
    j = judge_settings
    model = model_ref(models, spec.model) if spec.model else {"path": None, "revision": None}
    return {"backend": spec.backend, "model": model["path"], "revision": model["revision"],
            "temperature": j.temperature, "top_p": j.top_p, "max_new_tokens": j.max_new_tokens,
            "prompt_template": j.prompt_template, "system_prompt": j.system_prompt,
            "max_prompt_tokens": j.max_prompt_tokens, "overflow": j.overflow, "extra_body": dict(spec.extra_body)}


def refuse_out_dir(run: ScoreRun, doc: Mapping[str, Any]) -> bool:
    """Raise ScoreError when OUT holds another run (other judge, settings or benchmark) or other
    files and --overwrite is not given; True when it holds a run of the same settings (a resume)."""
    path = run.out / RUN
    if path.exists():
        before = json.loads(path.read_text())
        if before == json.loads(json.dumps(doc)):
            return True
        if not run.overwrite:
            changed = sorted(k for k in set(before) | set(doc) if before.get(k) != json.loads(json.dumps(doc)).get(k))
            raise ScoreError(f"{run.out}: holds another scoring run (differs in: {', '.join(changed)}); "
                             "pass --overwrite to replace it, or another --out")
    elif run.out.exists() and any(run.out.iterdir()) and not run.overwrite:
        raise ScoreError(f"{run.out}: not empty and not a scoring run's folder; pass --overwrite or another --out")
    return False


def claim_out_dir(run: ScoreRun, doc: Mapping[str, Any]) -> bool:
    """Make OUT this run's folder: True when it resumes a run of the same settings. A folder of
    another run (other judge, settings or benchmark) is refused unless --overwrite."""
    if refuse_out_dir(run, doc):
        return True
    if (run.out / RUN).exists():
        shutil.rmtree(run.out)
    run.out.mkdir(parents=True, exist_ok=True)
    write_json(run.out / RUN, doc)
    return False


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="verdicts", unit="req", file=sys.stderr, disable=not enabled or total == 0,
                dynamic_ncols=True)


def collect_verdicts(judge: str, items: Sequence[Mapping[str, Any]], run: ScoreRun,
                     sampler, prompts: tuple[list, list[str]] | None = None, *, seed: Seed, judges: Judges,
                     models: Models, judge_settings: JudgeSettings
                     ) -> tuple[dict[tuple[int, int], dict], list[str], dict[str, Any]]:
    """Every (item position, k) verdict: reused from the store when its request matches, else sent
    in chunks and appended as each chunk returns. `prompts`: judge_prompts' (messages, status) when
    already built. Returns (verdicts, prompt status per item, usage)."""
    from librarm.engines.base import SampleRequest
    from librarm.judging.judge import judge_prompts, judge_verdict, with_reasoning
    from librarm.run.io import stable_seed

    spec = judges[judge]
    stream = ("judge", judge)
    identity = run_identity(judge, judges=judges, models=models, judge_settings=judge_settings)
    messages, status = prompts or judge_prompts(items, judge_settings, getattr(sampler, "tok", None))
    store = VerdictStore(run.out / VERDICTS)
    done: dict[tuple[int, int], dict] = {}
    pending: list[tuple[int, int, str, Any]] = []
    for i, (it, msgs) in enumerate(zip(items, messages)):
        if msgs is None:
            continue
        for k in range(run.samples):
            # sample 0 keeps the pipeline's seed for this item (evaluate.samples 1 is today's run)
            s = stable_seed(seed, *stream, it["index"]) if k == 0 else stable_seed(seed, *stream, it["index"], k)
            key = request_key(msgs, identity, s, k)
            rec = store.get(it["index"], k, key)
            if rec is not None:
                done[(i, k)] = rec
            else:
                pending.append((i, k, key, SampleRequest(msgs, s, it)))
    usage = {"requests": len(pending), "reused": len(done), "prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.0}
    bar = _progress(len(pending), run.progress)
    started = time.monotonic()
    for a in range(0, len(pending), run.chunk):
        part = pending[a:a + run.chunk]
        results = sampler.generate([p[3] for p in part])
        fresh = []
        for (i, k, key, _req), res in zip(part, results):
            v = judge_verdict(res, spec.prompt_opens_think)
            rec = {"index": items[i]["index"], "k": k, "request": key, "pred": v.value, "status": v.status,
                   "verdict_source": v.source, "truncated": res.finish_reason == "length",
                   "output": with_reasoning(res), "prompt_tokens": res.prompt_tokens,
                   "completion_tokens": res.completion_tokens}
            done[(i, k)] = rec
            fresh.append(rec)
            usage["prompt_tokens"] += res.prompt_tokens
            usage["completion_tokens"] += res.completion_tokens
        store.append(fresh)
        bar.update(len(part))
    bar.close()
    usage["seconds"] = round(time.monotonic() - started, 3)
    usage["requests_per_s"] = round(usage["requests"] / usage["seconds"], 3) if usage["requests"] and usage["seconds"] else None
    store.rewrite_sorted({(str(items[i]["index"]), k) for i, k in done})
    return done, status, usage


def item_predictions(items: Sequence[Mapping[str, Any]], verdicts: Mapping[tuple[int, int], dict],
                     status: Sequence[str], samples: int) -> list[dict]:
    """One record per item: the first verdict's fields (as the evaluate stage writes them) plus every
    verdict, the majority (a tie is no verdict) and P(correct)."""
    from librarm.judging.verdict_metrics import aggregate

    out = []
    for i, it in enumerate(items):
        base = {"index": it["index"], "subset": it.get("subset"), "model": it.get("model"), "label": it["label"],
                "question": it["question"], "prompt_status": status[i], "problem_id": it.get("problem_id"),
                "categories": it.get("categories") or {}}
        for extra in ("group", "group_pos", "invalid"):
            if extra in it:
                base[extra] = it[extra]
        first = verdicts.get((i, 0))
        if first is None:
            base.update(pred=None, status="overflow_skipped", verdict_source=None, truncated=False, output=None,
                        completion_tokens=0, verdicts=[None] * samples)
        else:
            base.update({k: first[k] for k in ("pred", "status", "verdict_source", "truncated", "output",
                                                "completion_tokens")})
            base["verdicts"] = [verdicts[(i, k)]["pred"] if (i, k) in verdicts else None for k in range(samples)]
        agg = aggregate(base["verdicts"])
        base.update(majority=agg["majority"], p_correct=agg["p_correct"])
        out.append(base)
    return out


def score_benchmark(judge: str, items: Sequence[Mapping[str, Any]], bench: Mapping[str, Any], run: ScoreRun,
                    sampler=None, *, seed: Seed, judges: Judges, models: Models, judge_settings: JudgeSettings,
                    evaluate: EvaluateSettings) -> dict[str, Any]:
    """Score `items` (read by bench_formats) with a generative judge into run.out; returns the summary."""
    from librarm import engines
    from librarm.judging.judge import judge_prompts, judge_sampler
    from librarm.judging.verdict_metrics import score_verdicts
    from librarm.stages.evaluate import score_predictions

    spec = judges[judge]
    if spec.kind != "generative":
        raise ScoreError(f"judges.{judge}: a scalar judge scores one score per item (use --samples 1 and a "
                         "Libra-schema file: the pipeline's evaluate stage)")
    identity = run_identity(judge, judges=judges, models=models, judge_settings=judge_settings)
    doc = {"judge": judge, "identity": identity, "samples": run.samples, "limit": run.limit,
           "seed": seed, "benchmark": dict(bench)}
    refuse_out_dir(run, doc)                 # before the model loads
    sampler = sampler or judge_sampler(spec, models, judge_settings, seed, run.threads)
    tok = prompt_tokenizer(sampler, identity["model"] if spec.backend == "http" else None)
    messages, status = judge_prompts(items, judge_settings, tok)
    # before OUT is claimed: budgets that do not fit leave no run.json that a corrected rerun would
    # have to --overwrite
    note = check_context_budgets(sampler, messages, tok, judge=judge_settings)
    if note:
        print(note, file=sys.stderr, flush=True)
    claim_out_dir(run, doc)
    verdicts, status, usage = collect_verdicts(judge, items, run, sampler, (messages, status), seed=seed,
                                               judges=judges, models=models, judge_settings=judge_settings)
    preds = item_predictions(items, verdicts, status, run.samples)
    write_jsonl(run.out / PREDICTIONS, preds)
    resamples = evaluate.bootstrap_resamples
    metrics = score_verdicts(preds, resamples=resamples, seed=seed)
    legacy: dict[str, Any] = {}
    if bench.get("format") == "libra":
        # the evaluate stage's metrics on the first verdict (the paper's single sample): the Libra
        # score, its subset and generator views, the confusion and their intervals
        legacy = score_predictions(preds, resamples, seed)
        metrics["libra_score"] = legacy["libra_score"]
        metrics["libra_score_ci"] = (legacy.get("ci95") or {}).get("libra_score")
    metrics["status_counts"] = {s: sum(p["status"] == s for p in preds) for s in sorted({p["status"] for p in preds})}
    metrics["verdict_sources"] = {s: sum(p.get("verdict_source") == s for p in preds) for s in ("explicit", "plain")}
    if tok is None and engines.get(spec.backend).needs_model:
        # prompts sent whole: "0 truncated" would claim a check that never ran
        metrics["prompt_overflow"] = {"unchecked": len(items), "reason": f"no tokenizer for {spec.backend} model "
                                      f"{identity['model']!r} (a local folder's is used when --model is one)"}
    else:
        metrics["prompt_overflow"] = {s: status.count(s) for s in ("truncated", "skipped")}
    summary = {"judge": judge, "model": identity["model"], "backend": identity["backend"], "samples": run.samples,
               "benchmark": dict(bench), "metrics": with_flat_intervals(metrics), "usage": usage}
    write_json(run.out / SUMMARY, summary)
    extras = {k: metrics[k] for k in ("status_counts", "verdict_sources", "prompt_overflow")}
    write_json(run.out / METRICS, {**(legacy or metrics), **extras, "judge": judge, "n_items": len(preds),
                                   "samples": run.samples})
    return summary


def prompt_tokenizer(sampler, served_folder: str | None = None):
    """The tokenizer that holds prompts to judge.max_prompt_tokens: the sampler's (hf, vllm), else
    that of `served_folder`, a served model's local folder (`transformers serve` and vLLM's server
    take a folder as the model's name, and render prompts with its chat template); None when there
    is none (an API's model: its prompts go out whole)."""
    tok = getattr(sampler, "tok", None)
    if tok is not None or not served_folder or not Path(served_folder).is_dir():
        return tok
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(served_folder)
    except Exception as exc:  # a folder without a usable tokenizer: the prompts go out whole, said in the summary
        print(f"note: {served_folder}: no tokenizer to hold prompts to judge.max_prompt_tokens "
              f"({type(exc).__name__}); they are sent whole", file=sys.stderr)
        return None


def check_context_budgets(sampler, messages: Sequence[Any], tok, *, judge: JudgeSettings) -> str | None:
    """Before the first request: judge.max_prompt_tokens + judge.max_new_tokens against the model's
    context (the sampler's context_window(): a model's config, vLLM's max_model_len, a server's
    /models max_model_len). Budgets that do not fit raise ScoreError naming the keys, the numbers
    and the fix, unless every prompt of this benchmark is known to fit with judge.max_new_tokens
    (measured with the tokenizer that held them to the budget; the tiny world's 384-position
    models under its 384 + 160 budgets): then the run goes on and the returned note says so.
    Returns a note for stderr (also when the context is unknown), or None."""
    from librarm.judging.judge import prompt_tokens

    window_of = getattr(sampler, "context_window", None)
    if window_of is None:                   # a judge without a model (rule, pseudo)
        return None
    window = window_of()
    j = judge
    total = j.max_prompt_tokens + j.max_new_tokens
    if window is None:
        return (f"note: {sampler.name}: the model's context is unknown (no max_model_len in the server's /models, "
                f"or no context length in the model's config): judge.max_prompt_tokens + judge.max_new_tokens = "
                f"{total} is not checked against it")
    if total <= window.tokens:
        return None
    over = (f"judge.max_prompt_tokens ({j.max_prompt_tokens}) + judge.max_new_tokens ({j.max_new_tokens}) = {total} "
            f"> the model's context {window.tokens} ({window.source})")
    fix = "lower --max-prompt-tokens or --max-new-tokens (or --set judge.max_prompt_tokens=N)"
    if tok is None:
        raise ScoreError(f"{over}: {fix}")
    longest = max((prompt_tokens(tok, m) for m in messages if m is not None), default=0)
    if longest + j.max_new_tokens > window.tokens:
        raise ScoreError(f"{over}, and this benchmark's longest prompt has {longest} tokens: {fix}")
    return (f"note: {over}, but every prompt of this benchmark fits with judge.max_new_tokens (the longest has "
            f"{longest} tokens), so the run goes on; for budgets that fit any benchmark, {fix}")


def _flat(view: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(view)
    out.update({f"{k}_ci": v for k, v in (view.get("ci95") or {}).items()})
    return out


def with_flat_intervals(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The summary as the leaderboard reads it: each metric's interval beside it (`accuracy_ci`), in
    every view and category, and the calibration's Brier score and ECE at the top of `mean_p`."""
    out = dict(metrics)
    for view in ("first", "majority", "invalid"):
        if view in out:
            out[view] = _flat(out[view])
    out["per_category"] = {name: {value: _flat(m) for value, m in values.items()}
                           for name, values in (metrics.get("per_category") or {}).items()}
    cal = (metrics.get("mean_p") or {}).get("calibration")
    if cal:
        out["mean_p"] = {**metrics["mean_p"], "brier": cal.get("brier"), "ece": cal.get("ece")}
    return out


def bench_identity(path: Path, info: Mapping[str, Any], digest: str | None) -> dict[str, Any]:
    """The benchmark as summary.json names it."""
    return {"name": Path(str(path)).stem, "format": info.get("format"), "path": str(path),
            "sha256": digest or (file_sha256(path) if Path(path).is_file() else None), "items": info.get("items"),
            "card": info.get("card")}


def read_predictions(out: Path) -> list[dict]:
    return read_jsonl(out / PREDICTIONS).records
