"""Downstream: the base policy's responses on the unlabeled pool, labeled by every labeler
(trained judges, the gold verifier, noisy-gold and random anchors), turned into DPO pairs; and the
policies' pass@1 (avg@k) on the hard eval subsets with problem-bootstrap intervals."""
from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from librarm.engines.base import SamplingConfig
from librarm.run import paths as P
from librarm.run.io import StageIO, read_json, read_jsonl, stable_hash, stable_seed, write_json, write_jsonl
from librarm.run.labelers import (
    NONE_POLICY,
    RAW_PREFIX,
    all_policies,
    curve_policies,
    curve_policy,
    keep_probability,
    labeler_kind,
    policy_parts,
    policy_runs,
)
from librarm.run.settings import (
    DpoSettings,
    EvaluatePolicySettings,
    EvaluateSettings,
    Generators,
    Judges,
    JudgeSettings,
    Models,
    PairsSettings,
    ReportSettings,
    SamplingSettings,
    Seed,
    VerifySettings,
)
from librarm.stats import bootstrap_means, per_problem_accuracy, sign_flip_p


# ----------------------------------------------------------------------------- labelers
def _uniform(*parts: Any) -> float:
    return (stable_seed(*parts) % (2 ** 53)) / 2 ** 53


def builtin_labels(name: str, gold: Sequence[int], sample_ids: Sequence[str], seed: int) -> list[int]:
    """Labels of the model-free labelers; seeded per sample, so adding a labeler never moves another's."""
    if name == "gold":
        return list(gold)
    if name == "random":
        return [int(_uniform(seed, "random-labeler", sid) < 0.5) for sid in sample_ids]
    p = keep_probability(name)
    return [g if _uniform(seed, "noisy-gold", name, sid) < p else 1 - g for g, sid in zip(gold, sample_ids)]


def gold_label(record: Mapping[str, Any]) -> int:
    """The hidden gold label of a verified response: a response without a gradable answer is wrong."""
    return 1 if record.get("reason") == "correct" else 0


# ----------------------------------------------------------------------------- policy pool
def split_pool(problems: Sequence[Mapping[str, Any]], seed: int, val_fraction: float) -> tuple[list, list]:
    """(train, val) by id hash. Val problems never give pairs; their gold answers are used only to
    pick a DPO checkpoint."""
    ranked = sorted(problems, key=lambda p: stable_hash(seed, "dpo-val", p["id"]))
    n_val = int(round(val_fraction * len(problems)))
    val_ids = {p["id"] for p in ranked[:n_val]}
    return [p for p in problems if p["id"] not in val_ids], [p for p in problems if p["id"] in val_ids]


def run_pool_split(pool_path: str | Path, train_path: str | Path, val_path: str | Path, *,
                   pairs: PairsSettings, seed: Seed) -> dict:
    """Stage step `pairs-split`: the pool's problems that are paired (train) and those whose
    answers only pick the DPO checkpoint (val)."""
    problems = read_jsonl(pool_path, {"id": "str", "problem": "str", "answer": "str"}, id_field="id").records
    train, val = split_pool(problems, seed, pairs.val_fraction)
    write_jsonl(train_path, train)
    write_jsonl(val_path, val)
    return {"train_problems": len(train), "val_problems": len(val)}


def step_pairs_split(io: StageIO, *, pairs: PairsSettings, seed: Seed) -> tuple[dict, list[str]]:
    return run_pool_split(io.input("pool"), io.output("train"), io.output("val"), pairs=pairs, seed=seed), []


def step_pairs_sample(io: StageIO, *, pairs: PairsSettings, sampling: SamplingSettings, seed: Seed,
                      generators: Generators, models: Models) -> tuple[dict, list[str]]:
    """Stage step `pairs-sample`: the policy samples `pairs.n` responses per pool problem."""
    from librarm.stages.sample import run_sample

    pc = pairs
    # the generators' code path with the policy's own engine, response count and temperature
    policy_sampling = sampling.replace(n=pc.n, temperature=pc.temperature)
    meta = run_sample("policy", pc.pool, io.input("problems"), io.output("samples"), io.output("meta"),
                      threads=io.threads, progress=False, spec=pc.policy_engine(), sampling=policy_sampling,
                      seed=seed, generators=generators, models=models)
    return {k: meta[k] for k in ("n_records", "generated_now", "reused", "tokens_per_s")}, []


def step_pairs_verify(io: StageIO, *, verify: VerifySettings) -> tuple[dict, list[str]]:
    from librarm.stages.verify import run_verify

    v = verify
    meta = run_verify(io.input("samples"), io.input_list("problems"), io.output("verified"), io.output("meta"),
                      workers=io.threads or 1, timeout_s=v.timeout_s, memory_mb=v.memory_mb, progress=False)
    return {"accuracy": meta["accuracy"], "reasons": meta["reasons"]}, []




def judge_items(verified: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Policy responses in the shape judges read (the bench's fields)."""
    return [{"index": i, "subset": r["subset"], "model": r["generator"], "label": gold_label(r),
             "question": r["question"], "response": r["response"], "response_with_cot": r["response_with_cot"],
             "sample_id": r["sample_id"]} for i, r in enumerate(verified)]


def run_judge_labels(labeler: str, verified_path: str | Path, out_path: str | Path,
                     threads: int | None = None, sampler=None, *, judges: Judges, evaluate: EvaluateSettings,
                     judge: JudgeSettings, models: Models, seed: Seed) -> dict:
    """Stage step `pairs-label`: one trained judge labels every policy response (verdict or None)."""
    from librarm.stages.evaluate import predict

    verified = read_jsonl(verified_path).records
    items = judge_items(verified)
    t0 = time.time()
    preds, extra = predict(labeler, items, threads, sampler, judges=judges, evaluate=evaluate, judge=judge,
                           models=models, seed=seed)
    rows = [{"sample_id": it["sample_id"], "pred": p["pred"], "status": p["status"]} for it, p in zip(items, preds)]
    write_jsonl(out_path, rows)
    acc = label_accuracy([r["pred"] for r in rows], [it["label"] for it in items])
    return {"labeler": labeler, "n": len(rows), "label_accuracy": acc, "seconds": round(time.time() - t0, 1),
            **{k: v for k, v in extra.items() if k in ("status_counts", "threshold")}}


def step_pairs_label(io: StageIO, *, judges: Judges, evaluate: EvaluateSettings, judge: JudgeSettings,
                     models: Models, seed: Seed) -> tuple[dict, list[str]]:
    return run_judge_labels(io.wildcard("judge"), io.input("verified"), io.output("labels"), io.threads,
                            judges=judges, evaluate=evaluate, judge=judge, models=models, seed=seed), []


def label_accuracy(labels: Sequence[int | None], gold: Sequence[int]) -> float | None:
    """Share of responses labeled as the gold verifier labels them; no verdict counts as wrong."""
    if not gold:
        return None
    return round(sum(lab == g for lab, g in zip(labels, gold)) / len(gold), 4)


# ----------------------------------------------------------------------------- pairs
def build_pairs(verified: Sequence[Mapping[str, Any]], labels: Sequence[int | None], *, labeler: str, seed: int,
                per_problem: int) -> tuple[list[dict], dict]:
    """DPO pairs: per problem, a judged-correct response as chosen and a judged-incorrect one as
    rejected, up to `per_problem` pairs, each response used once, picked by seeded hash.

    A pair whose two responses are the same text is a tie (nothing to prefer) and is skipped;
    problems without a judged-correct or without a judged-incorrect response give no pair; a
    response without a verdict (None) is in neither side. All of these are counted."""
    groups: dict[str, dict[int, list]] = defaultdict(lambda: {0: [], 1: []})
    order: list[str] = []
    unjudged = 0
    for rec, lab in zip(verified, labels):
        pid = rec["problem_id"]
        if pid not in groups:
            order.append(pid)
        g = groups[pid]
        if lab is None:
            unjudged += 1
            continue
        g[int(lab)].append(rec)
    pairs: list[dict] = []
    skipped = {"all_correct": 0, "all_incorrect": 0, "no_verdicts": 0, "only_ties": 0}
    ties = 0
    for pid in order:
        pos = sorted(groups[pid][1], key=lambda r: stable_hash(seed, "chosen", labeler, r["sample_id"]))
        neg = sorted(groups[pid][0], key=lambda r: stable_hash(seed, "rejected", labeler, r["sample_id"]))
        if not pos and not neg:
            skipped["no_verdicts"] += 1
            continue
        if not neg:
            skipped["all_correct"] += 1
            continue
        if not pos:
            skipped["all_incorrect"] += 1
            continue
        made, used_neg = 0, set()
        for c in pos:
            if made == per_problem:
                break
            for j, r in enumerate(neg):
                if j in used_neg:
                    continue
                if c["response_with_cot"] == r["response_with_cot"]:
                    ties += 1
                    continue
                used_neg.add(j)
                pairs.append(_pair(c, r, labeler))
                made += 1
                break
        if made == 0:
            skipped["only_ties"] += 1
    stats = {"pairs": len(pairs), "problems": len(order), "problems_with_pairs": len({p["problem_id"] for p in pairs}),
             "skipped_problems": skipped, "tied_candidates": ties, "unjudged_responses": unjudged,
             "pair_accuracy": pair_accuracy(pairs)}
    return pairs, stats


def pair_accuracy(pairs: Sequence[Mapping[str, Any]]) -> float | None:
    """Share of pairs whose chosen response is gold-correct and rejected one gold-incorrect."""
    if not pairs:
        return None
    return round(sum(p["chosen_gold"] == 1 and p["rejected_gold"] == 0 for p in pairs) / len(pairs), 4)


def _pair(chosen: Mapping[str, Any], rejected: Mapping[str, Any], labeler: str) -> dict:
    return {"pair_id": stable_hash(labeler, chosen["sample_id"], rejected["sample_id"]),
            "problem_id": chosen["problem_id"], "question": chosen["question"],
            "chosen": chosen["response_with_cot"], "rejected": rejected["response_with_cot"],
            "chosen_sample_id": chosen["sample_id"], "rejected_sample_id": rejected["sample_id"],
            "chosen_gold": gold_label(chosen), "rejected_gold": gold_label(rejected)}


def take_budget(pairs: Sequence[dict], budget: int, seed: int, labeler: str) -> list[dict]:
    """The first `budget` of a labeler's pairs in a seeded hash order of its own (file order kept).
    It depends on nothing but this labeler's pairs, so one labeler's count never moves another's;
    smaller budgets give nested subsets (the gold curve)."""
    keep = sorted(pairs, key=lambda p: stable_hash(seed, "budget", labeler, p["pair_id"]))[:budget]
    ids = {p["pair_id"] for p in keep}
    return [p for p in pairs if p["pair_id"] in ids]


def run_build_pairs(verified_path: str | Path, label_paths: Mapping[str, str | Path],
                    pairs_paths: Mapping[str, str | Path], raw_paths: Mapping[str, str | Path],
                    curve_paths: Mapping[str, str | Path], stats_path: str | Path, *,
                    pairs: PairsSettings, judges: Judges, seed: Seed) -> dict:
    """Stage step `pairs-build`: per labeler, its DPO training set (pairs_paths: at most
    `pairs.budget` pairs; a labeler with fewer is "short" and keeps all it has) and every pair it
    gives (raw_paths); the gold curve (curve_paths, keyed by policy name); the stats."""
    cfg = pairs
    verified = read_jsonl(verified_path).records
    gold = [gold_label(r) for r in verified]
    sids = [r["sample_id"] for r in verified]
    raw: dict[str, list[dict]] = {}
    stats: dict[str, Any] = {"labelers": {}, "responses": len(verified),
                             "policy_accuracy": round(sum(gold) / len(gold), 4) if gold else None}
    for name in cfg.labelers:
        kind = labeler_kind(name, judges)
        if kind == "judge":
            rows = read_jsonl(label_paths[name]).records
            by_id = {r["sample_id"]: r["pred"] for r in rows}
            missing = [s for s in sids if s not in by_id]
            if missing:
                raise ValueError(f"{label_paths[name]}: no label for {len(missing)} responses (first {missing[0]!r})")
            labels = [by_id[s] for s in sids]
        else:
            labels = builtin_labels(name, gold, sids, seed)
        made, st = build_pairs(verified, labels, labeler=name, seed=seed, per_problem=cfg.per_problem)
        raw[name] = made
        stats["labelers"][name] = {"kind": kind, "label_accuracy": label_accuracy(labels, gold),
                                   "judged_correct_share": round(sum(lab == 1 for lab in labels) / len(labels), 4)
                                   if labels else None, **st}
    budget = cfg.budget
    for name in cfg.labelers:
        trained = take_budget(raw[name], budget, seed, name)
        write_jsonl(raw_paths[name], raw[name])
        write_jsonl(pairs_paths[name], trained)
        st = stats["labelers"][name]
        st["pairs_raw"] = len(raw[name])
        st["pairs_trained"] = len(trained)
        st["short"] = len(trained) < budget
        st["pair_accuracy_trained"] = pair_accuracy(trained)
    stats["gold_curve"] = {}
    if "gold" in raw:
        for n in cfg.gold_curve:
            curve = take_budget(raw["gold"], int(n), seed, "gold")
            write_jsonl(curve_paths[curve_policy(n)], curve)
            stats["gold_curve"][str(int(n))] = {"pairs_trained": len(curve), "short": len(curve) < int(n),
                                                "pair_accuracy_trained": pair_accuracy(curve)}
    stats["budget"] = budget
    stats["short_labelers"] = [n for n in cfg.labelers if stats["labelers"][n]["short"]]
    stats["labelers_without_pairs"] = sorted(n for n, v in raw.items() if not v)
    write_json(stats_path, stats)
    return stats


def step_pairs_build(io: StageIO, *, pairs: PairsSettings, judges: Judges, seed: Seed) -> tuple[dict, list[str]]:
    pc = pairs
    judge_labelers = [n for n in pc.labelers if labeler_kind(n, judges) == "judge"]
    stats = run_build_pairs(io.input("verified"), io.keyed("labels", P.PAIRS_LABELS, "judge", judge_labelers),
                            io.keyed("pairs", P.PAIRS_FILE, "policy", list(pc.labelers), output=True),
                            io.keyed("raw", P.PAIRS_RAW, "labeler", list(pc.labelers), output=True),
                            io.keyed("curve", P.PAIRS_FILE, "policy", curve_policies(pc), output=True), io.output("stats"),
                            pairs=pairs, judges=judges, seed=seed)
    return {name: {k: v[k] for k in ("pairs_raw", "pairs_trained", "short", "label_accuracy")}
            for name, v in stats["labelers"].items()}, [io.output("stats")]


# ----------------------------------------------------------------------------- avg@k
def avg_at_k(per_problem: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """pass@1 estimated as avg@k: per subset the mean over problems of the per-problem share
    correct; `all` is the mean over subsets (each subset weighs the same)."""
    out = {s: round(float(np.mean(list(v.values()))), 4) for s, v in sorted(per_problem.items())}
    if out:
        out["all"] = round(float(np.mean([out[s] for s in per_problem])), 4)
    return out


def policy_decoding(*, evaluate_policy: EvaluatePolicySettings, sampling: SamplingSettings):
    """How a policy decodes when it is evaluated (and validated during DPO): evaluate_policy's
    temperature, top_p and budget (else sampling.max_new_tokens), sampling's batch size."""

    ev = evaluate_policy
    return SamplingConfig(temperature=ev.temperature, top_p=ev.top_p, batch_size=sampling.batch_size,
                          max_new_tokens=ev.max_new_tokens or sampling.max_new_tokens)


def sample_and_grade(sampler, problems: Sequence[Mapping[str, Any]], k: int, seed: int, tag: str,
                     pool, *, sampling: SamplingSettings) -> list[dict]:
    """k samples per problem, graded by math-verify against the problem's answer. Seeds depend on
    (tag, problem, sample index) only, so every policy sees the same random numbers (paired)."""
    from librarm.engines.base import SampleRequest
    from librarm.judging.think import split_think
    from librarm.stages.sample import problem_messages

    scfg = sampling
    reqs = [SampleRequest(problem_messages(p, scfg.system_prompt, scfg.problem_template),
                          stable_seed(seed, tag, p["id"], j), p)
            for p in problems for j in range(k)]
    results = sampler.generate(reqs)
    finals = [split_think(r.text, reasoning=r.reasoning).final for r in results]
    grades = pool.grade([(q.problem["answer"], f) for q, f in zip(reqs, finals)])
    out = []
    for i, (q, r, f, (reason, pred)) in enumerate(zip(reqs, results, finals, grades)):
        p = q.problem
        out.append({"problem_id": p["id"], "subset": p.get("subset", "val"), "sample_idx": i % k,
                    "response_with_cot": r.text, "response": f, "pred": pred, "reason": reason,
                    "correct": reason == "correct", "finish_reason": r.finish_reason,
                    "completion_tokens": r.completion_tokens})
    return out


def run_policy_eval(policy: str, model_path: str, problem_paths: Mapping[str, str | Path],
                    samples_path: str | Path, eval_path: str | Path, threads: int | None = None,
                    sampler=None, *, evaluate_policy: EvaluatePolicySettings, sampling: SamplingSettings,
                    verify: VerifySettings, pairs: PairsSettings, models: Models, seed: Seed) -> dict:
    """Stage step `policy-eval`: one policy's avg@k on the hard eval subsets (problem_paths:
    {subset: file}); its graded samples and metrics."""
    from librarm.judging.verifier import VerifierPool
    from librarm.run.provenance import model_identity, provenance
    from librarm.stages.problems import load_problem_sets

    ev = evaluate_policy
    problems = []
    for subset, path in problem_paths.items():
        problems += [dict(p, subset=subset) for p in load_problem_sets([path]).values()]
    t0 = time.time()
    if sampler is None:
        sampler = _policy_sampler(model_path, policy_decoding(evaluate_policy=evaluate_policy, sampling=sampling),
                                  threads, pairs=pairs, models=models, seed=seed)
    v = verify
    with VerifierPool(max(1, threads or 1), v.timeout_s, v.memory_mb) as pool:
        graded = sample_and_grade(sampler, problems, ev.k, seed, "policy-eval", pool, sampling=sampling)
    per_problem = per_problem_accuracy(graded)
    metrics = {"policy": policy, "k": ev.k, "avg_at_k": avg_at_k(per_problem),
               "ci95": bootstrap_means(per_problem, ev.bootstrap_resamples, seed),
               "problems": {s: len(v) for s, v in per_problem.items()},
               "no_answer_share": round(sum(r["pred"] is None for r in graded) / max(1, len(graded)), 4),
               "mean_completion_tokens": round(float(np.mean([r["completion_tokens"] for r in graded])), 1) if graded else None,
               "seconds": round(time.time() - t0, 1),
               "provenance": provenance(models=[model_identity(model_path, None)], data=[str(p) for p in problem_paths.values()])}
    write_jsonl(samples_path, graded)
    write_json(eval_path, metrics)
    return metrics


def policy_folder(local: Sequence[str], *, pairs: PairsSettings, models: Models) -> str:
    """A policy to load: the folder its rule passes (one the pipeline made), else the base policy
    `pairs.policy` names (a hub id or a path, which is not a rule input)."""
    from librarm.run.models import model_ref

    return local[0] if local else model_ref(models, pairs.policy)["path"]


def step_policy_eval(io: StageIO, *, evaluate_policy: EvaluatePolicySettings, sampling: SamplingSettings,
                     verify: VerifySettings, pairs: PairsSettings, models: Models, seed: Seed) -> tuple[dict, list[str]]:
    """Stage step `policy-eval`: the base policy (a hub id or the folder the pipeline made) or a
    DPO policy's run (its `model` input)."""
    policy = io.wildcard("policy")
    model_path = policy_folder(io.input_list("model"), pairs=pairs, models=models)
    problems = io.keyed("problems", P.PROBLEM_SET, "subset", list(evaluate_policy.subsets))
    m = run_policy_eval(policy, model_path, problems, io.output("samples"), io.output("metrics"), io.threads,
                        evaluate_policy=evaluate_policy, sampling=sampling, verify=verify, pairs=pairs, models=models,
                        seed=seed)
    return {"avg_at_k": m["avg_at_k"], "seconds": m["seconds"]}, [io.output("metrics")]


def _policy_sampler(model_path, cfg: SamplingConfig, threads, *, pairs: PairsSettings, models: Models, seed: int):
    """The policy at model_path behind the backend `pairs.backend` names (the generators' factory)."""
    from librarm.engines import make_sampler

    return make_sampler(pairs.policy_engine(), models, cfg, seed, threads, model_path=model_path)


def summarize_policy(policy: str, runs: Mapping[str, tuple[str | Path, str | Path]],
                     pairs_stats_path: str | Path | None, out_path: str | Path, per_problem_path: str | Path, *,
                     evaluate_policy: EvaluatePolicySettings, seed: Seed) -> dict:
    """A policy's metrics: avg@k averaged over DPO seeds (per-problem accuracies are averaged
    first, then bootstrapped), the per-seed values and their sd, and the labeler's pair count and
    label accuracy (0 / null for `none`); runs maps each run to its (eval, samples) files. The
    mean per-problem accuracies go to per_problem_path (the paired gain tests read them)."""
    ev = evaluate_policy
    seeds: dict[str, dict] = {}
    per_seed_problem: list[dict] = []
    for run, (eval_path, samples_path) in runs.items():
        seeds[run] = read_json(eval_path)["avg_at_k"]
        per_seed_problem.append(per_problem_accuracy(read_jsonl(samples_path).records))
    mean_pp = {s: {p: float(np.mean([pp[s][p] for pp in per_seed_problem])) for p in per_seed_problem[0][s]}
               for s in per_seed_problem[0]}
    kind, labeler, count = policy_parts(policy)
    pstats = read_json(pairs_stats_path) if pairs_stats_path else {}
    if kind == "curve":
        lab_stats = {**pstats.get("labelers", {}).get("gold", {}), **pstats.get("gold_curve", {}).get(str(count), {})}
    else:
        lab_stats = pstats.get("labelers", {}).get(labeler, {}) if labeler else {}
    raw = kind == "raw"
    metrics = {"policy": policy, "labeler": labeler, "k": ev.k,
               "avg_at_k": avg_at_k(mean_pp),
               "ci95": bootstrap_means(mean_pp, ev.bootstrap_resamples, seed),
               "seeds": seeds,
               "sd_over_seeds": ({s: round(float(np.std([v[s] for v in seeds.values()], ddof=1)), 4)
                                  for s in next(iter(seeds.values()))} if len(seeds) > 1 else None),
               "pairs": 0 if kind == NONE_POLICY else lab_stats.get("pairs_raw" if raw else "pairs_trained"),
               "short": False if kind in (NONE_POLICY, "raw") else bool(lab_stats.get("short")),
               "label_accuracy": None if kind == NONE_POLICY else lab_stats.get("label_accuracy"),
               "pair_accuracy": None if kind == NONE_POLICY else lab_stats.get(
                   "pair_accuracy" if raw else "pair_accuracy_trained")}
    write_json(out_path, metrics)
    write_json(per_problem_path, mean_pp)
    return metrics


def step_policy_metrics(io: StageIO, *, dpo: DpoSettings, evaluate_policy: EvaluatePolicySettings,
                        seed: Seed) -> tuple[dict, list[str]]:
    policy = io.wildcard("policy")
    names = policy_runs(policy, dpo.seeds)
    evals = io.keyed("evals", P.POLICY_RUN_EVAL, "run", names, policy=policy)
    samples = io.keyed("samples", P.POLICY_RUN_SAMPLES, "run", names, policy=policy)
    pairs = io.input_list("pairs_stats")
    m = summarize_policy(policy, {r: (evals[r], samples[r]) for r in names}, pairs[0] if pairs else None,
                         io.output("metrics"), io.output("per_problem"), evaluate_policy=evaluate_policy, seed=seed)
    return {"avg_at_k": m["avg_at_k"], "pairs": m["pairs"], "label_accuracy": m["label_accuracy"]}, \
        [io.output("metrics")]


def summarize_downstream(policy_files: Mapping[str, tuple[str | Path, str | Path]], out_path: str | Path, *,
                         evaluate_policy: EvaluatePolicySettings, report: ReportSettings, seed: Seed) -> dict:
    """The downstream summary: every policy's avg@k, and its gain over `none` with a paired (same
    problems, same sampling seeds) bootstrap interval and sign-flip p-value; the share of the gold
    labeler's gain each labeler recovers. policy_files maps each policy to its (metrics,
    per-problem) files."""
    ev = evaluate_policy
    metrics, per_problem = {}, {}
    for metrics_path, per_problem_path in policy_files.values():
        m = read_json(metrics_path)
        metrics[m["policy"]] = m
        per_problem[m["policy"]] = read_json(per_problem_path)
    if NONE_POLICY not in metrics:
        raise ValueError(f"downstream summary: the base policy {NONE_POLICY!r} is missing from the inputs")
    base = per_problem[NONE_POLICY]
    out: dict[str, Any] = {"k": ev.k, "subsets": sorted(base), "policies": {}}
    for name, m in metrics.items():
        row = {k: m.get(k) for k in ("labeler", "avg_at_k", "ci95", "sd_over_seeds", "pairs", "short",
                                     "label_accuracy", "pair_accuracy")}
        row["seeds"] = len(m.get("seeds") or {})
        if name != NONE_POLICY:
            diff = {s: {pid: per_problem[name][s][pid] - base[s][pid] for pid in base[s]} for s in base}
            row["gain"] = {s: round(m["avg_at_k"][s] - metrics[NONE_POLICY]["avg_at_k"][s], 4) for s in m["avg_at_k"]}
            row["gain_ci95"] = bootstrap_means(diff, ev.bootstrap_resamples, seed)
            flat = np.array([v for s in sorted(diff) for v in diff[s].values()])
            row["gain_p_value"] = sign_flip_p(flat, report.permutations, seed)
        out["policies"][name] = row
    curve = {policy_parts(n)[2]: r for n, r in out["policies"].items() if policy_parts(n)[0] == "curve"}
    for name, row in out["policies"].items():
        # raw policies are set against the raw gold policy, budget ones against gold on the same budget
        kind = policy_parts(name)[0]
        if kind == "curve":
            continue
        gold = out["policies"].get(RAW_PREFIX + "gold" if kind == "raw" else "gold", {})
        gold_gain = (gold.get("gain") or {}).get("all")
        if name != NONE_POLICY and gold_gain:
            row["gold_gain_recovered"] = round(row["gain"]["all"] / gold_gain, 4)
        if kind == "budget" and row.get("short") and row.get("pairs"):
            # a short labeler is read against gold at the nearest curve count
            if curve:
                n = min(curve, key=lambda c: (abs(c - row["pairs"]), c))
                row["gold_at_similar_count"] = {"pairs": n, "gain": curve[n]["gain"]["all"]}
    write_json(out_path, out)
    return out


def step_downstream_summary(io: StageIO, *, pairs: PairsSettings, evaluate_policy: EvaluatePolicySettings,
                            report: ReportSettings, seed: Seed) -> tuple[dict, list[str]]:
    policies = all_policies(pairs)
    metrics = io.keyed("metrics", P.POLICY_METRICS, "policy", policies)
    per_problem = io.keyed("per_problem", P.POLICY_PER_PROBLEM, "policy", policies)
    s = summarize_downstream({p: (metrics[p], per_problem[p]) for p in policies}, io.output("summary"),
                             evaluate_policy=evaluate_policy, report=report, seed=seed)
    return {"gain_all": {k: v["gain"].get("all") for k, v in s["policies"].items() if v.get("gain")}}, \
        [io.output("summary")]
