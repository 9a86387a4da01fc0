"""Stage `seeds`: seed-aware figures of one run that trains judges with several seeds
(`report.replicates`: a group of judges that differ only in their training seed) and DPO with
several seeds (`dpo.seeds`). The `seeds` preset turns it on.

Every Libra score, judge difference, downstream gain and gain difference gets a hierarchical
bootstrap interval that resamples judge seeds, then DPO seeds, then problems
(stats.hierarchical_draws); paired differences pair replicate k of one group with replicate k of
the other (a GRPO replicate starts from the SFT replicate of the same seed), and DPO seed d with
DPO seed d. The method's orderings are tested across seeds, and the gain-vs-judge correlation is
fitted over labeler groups with intervals that resample seeds and problems. Writes seeds.json and
seeds.md beside the report."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from librarm.run import paths as P
from librarm.run.io import StageIO, read_json, read_jsonl, write_json, write_text
from librarm.run.labelers import NONE_POLICY, keep_probability, labeler_kind, policy_runs
from librarm.run.settings import CompareSettings, DpoSettings, EvaluateSettings, PairsSettings, ReportSettings, Seed
from librarm.stats import (
    draw_seed_indices,
    draw_summary,
    format_p,
    hierarchical_draws,
    interval,
    item_correct,
    pearson,
    per_problem_accuracy,
    permutation_p,
    ranks,
    spearman,
)

CLAIMS = ("gold is the best labeler", "random is not above any trained judge", "the noisy-gold curve rises",
          "rl recovers >= 50% of gold's gain", "rl - sft > 0 (Libra score)", "rl - sft > 0 (downstream gain)")


# ----------------------------------------------------------------------------- groups
def judge_groups(*, report: ReportSettings, evaluate: EvaluateSettings) -> dict[str, list[str]]:
    """Every evaluated judge's group, in seed order: report.replicates' groups, and every other
    judge alone (one seed)."""
    rep = report.replicates
    group_of = {m: g for g, members in rep.items() for m in members}
    out: dict[str, list[str]] = {}
    for j in evaluate.judges:      # in the order evaluate.judges lists them
        g = group_of.get(j, j)
        if g not in out:
            out[g] = list(rep.get(g, [j]))
    return out


def _weighted_sum(terms: Sequence[tuple[float, Mapping[str, np.ndarray]]], what: str) -> dict[str, np.ndarray]:
    """sum of weight x [S, ..., P] arrays per subset, on shared seed axes: equal seed counts pair by
    position, one seed is broadcast against many (a judge trained once against a replicated one)."""
    out = {}
    for s in terms[0][1]:
        arrays = [numer[s] for _, numer in terms]
        for dims in zip(*(a.shape for a in arrays)):
            if len(set(dims) - {1}) > 1:
                raise ValueError(f"{what}: seed counts {[a.shape[:-1] for a in arrays]} cannot be paired")
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
        out[s] = sum(w * np.broadcast_to(a, shape) for (w, _), a in zip(terms, arrays))
    return out


# ----------------------------------------------------------------------------- data
def bench_arrays(pred_paths: Mapping[str, str | Path]) -> tuple[dict, dict]:
    """Per judge: {subset: [P] correct counts}, and per subset the problem item counts [P] (every
    judge must cover the same bench items; problems in one sorted order)."""
    correct: dict[str, dict[str, np.ndarray]] = {}
    order: dict[str, list[str]] = {}
    counts: dict[str, np.ndarray] = {}
    ref_items = None
    for judge, path in pred_paths.items():
        preds = read_jsonl(path).records
        items = {(p["subset"], p["index"]) for p in preds}
        if ref_items is None:
            ref_items = items
            by: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
            for p in preds:
                by[p["subset"]][p["question"]] += 1
            order = {s: sorted(q) for s, q in by.items()}
            counts = {s: np.array([by[s][q] for q in order[s]], dtype=float) for s in order}
        elif items != ref_items:
            raise ValueError(f"{path}: judge {judge!r} was scored on other bench items than the first judge")
        acc: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for p in preds:
            acc[p["subset"]][p["question"]] += item_correct(p)
        correct[judge] = {s: np.array([acc[s][q] for q in order[s]]) for s in order}
    return correct, counts


def policy_arrays(sample_paths: Mapping[str, Mapping[str, str | Path]]) -> dict[str, dict[str, np.ndarray]]:
    """Per policy: {subset: [runs, P] avg@k per problem}, DPO runs in seed order, problems in one
    sorted order (every policy must be evaluated on the same problems)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    order: dict[str, list[str]] = {}
    for policy, runs in sample_paths.items():
        per_run = [per_problem_accuracy(read_jsonl(p).records) for p in runs.values()]
        if not order:
            order = {s: sorted(v) for s, v in per_run[0].items()}
        for pp in per_run:
            if {s: sorted(v) for s, v in pp.items()} != order:
                raise ValueError(f"policy {policy!r}: evaluated on other problems than the first policy")
        out[policy] = {s: np.array([[pp[s][q] for q in order[s]] for pp in per_run]) for s in order}
    return out


# ----------------------------------------------------------------------------- estimates
def _summary(point: float, draws: np.ndarray, seeds: Sequence[int], per_seed: Sequence[float] | None = None) -> dict:
    out = {**draw_summary(point, draws), "seeds": list(seeds)}
    if per_seed is not None:
        out["per_seed"] = [round(float(v), 6) for v in per_seed]
        out["sd_over_seeds"] = round(float(np.std(per_seed, ddof=1)), 6) if len(per_seed) > 1 else None
    return out


def verdict(ci: Sequence[float]) -> str:
    """A difference's interval against 0: holds (above), reversed (below), not established."""
    return "holds" if ci[0] > 0 else "reversed" if ci[1] < 0 else "not established"


class SeedData:
    """The run's per-seed, per-problem arrays and the draws built from them (one seed for all)."""

    def __init__(self, groups: Mapping[str, list[str]], correct, counts, policies, resamples: int, seed: int):
        self.groups, self.correct, self.counts, self.policies = groups, correct, counts, policies
        self.resamples, self.seed = resamples, seed

    # bench: [judge seeds, P] per subset
    def libra_numer(self, group: str) -> dict[str, np.ndarray]:
        members = self.groups[group]
        return {s: np.stack([self.correct[m][s] for m in members]) for s in self.counts}

    def libra(self, group: str) -> dict:
        numer = self.libra_numer(group)
        point, draws = hierarchical_draws(numer, self.counts, self.resamples, self.seed)
        per_seed = [np.mean([numer[s][k].sum() / self.counts[s].sum() for s in numer])
                    for k in range(len(self.groups[group]))]
        return _summary(point, draws, [len(self.groups[group])], per_seed)

    def libra_diff(self, a: str, b: str) -> dict:
        diff = _weighted_sum([(1.0, self.libra_numer(a)), (-1.0, self.libra_numer(b))], f"{a} - {b}")
        point, draws = hierarchical_draws(diff, self.counts, self.resamples, self.seed)
        return _summary(point, draws, list(next(iter(diff.values())).shape[:-1]))

    # downstream: [judge seeds, DPO seeds, P] per subset
    def gain_numer(self, labeler: str) -> dict[str, np.ndarray]:
        members = self.groups.get(labeler, [labeler])
        base = self.policies[NONE_POLICY]
        return {s: np.stack([self.policies[m][s] - base[s][0] for m in members]) for s in base}

    def gain(self, labeler: str) -> dict:
        numer = self.gain_numer(labeler)
        point, draws = hierarchical_draws(numer, None, self.resamples, self.seed)
        per_seed = [np.mean([numer[s][k].mean() for s in numer]) for k in range(next(iter(numer.values())).shape[0])]
        return _summary(point, draws, list(next(iter(numer.values())).shape[:-1]), per_seed)

    def gain_combination(self, terms: Mapping[str, float], what: str) -> dict:
        """sum of weight x gain over labelers (e.g. {rl: 1, gold: -0.5}), seeds paired."""
        out = _weighted_sum([(w, self.gain_numer(n)) for n, w in terms.items()], what)
        point, draws = hierarchical_draws(out, None, self.resamples, self.seed)
        return _summary(point, draws, list(next(iter(out.values())).shape[:-1]))


# ----------------------------------------------------------------------------- claims
def _all_hold(rows: Sequence[Mapping[str, Any]]) -> str:
    verdicts = [r["verdict"] for r in rows]
    if not verdicts:
        return "not tested"
    return "reversed" if "reversed" in verdicts else "holds" if set(verdicts) == {"holds"} else "not established"


def claims(data: SeedData, judge_labelers: Sequence[str], labelers: Sequence[str]) -> list[dict]:
    """The orderings the method claims, each with the differences that decide it."""
    out = []

    def diff_rows(pairs):
        rows = []
        for a, b in pairs:
            d = data.gain_combination({a: 1.0, b: -1.0}, f"{a} - {b}")
            rows.append({"comparison": f"{a} - {b}", **d, "verdict": verdict(d["ci95"])})
        return rows

    others = [n for n in labelers if n != "gold"]
    if "gold" in labelers:
        rows = diff_rows([("gold", n) for n in others])
        out.append({"claim": CLAIMS[0], "verdict": _all_hold(rows), "rows": rows})
    if "random" in labelers:
        rows = diff_rows([(j, "random") for j in judge_labelers])
        # the claim is "not above": it fails only where random is established above a judge
        v = "reversed" if any(r["verdict"] == "reversed" for r in rows) else \
            "holds" if all(r["verdict"] == "holds" for r in rows) else "not established"
        out.append({"claim": CLAIMS[1], "verdict": v if rows else "not tested", "rows": rows})
    noisy = sorted((n for n in labelers if labeler_kind(n, data.groups) == "noisy_gold"), key=keep_probability)
    if noisy:
        chain = noisy + (["gold"] if "gold" in labelers else [])
        rows = diff_rows(list(zip(chain[1:], chain[:-1])))
        out.append({"claim": CLAIMS[2], "verdict": _all_hold(rows), "rows": rows})
    if {"rl", "gold"} <= set(labelers):
        d = data.gain_combination({"rl": 1.0, "gold": -0.5}, "rl - 0.5 gold")
        rl, gold = data.gain("rl")["mean"], data.gain("gold")["mean"]
        row = {"comparison": "rl gain - 0.5 x gold gain", **d, "verdict": verdict(d["ci95"]),
               "share_of_gold_gain": round(rl / gold, 4) if gold else None}
        out.append({"claim": CLAIMS[3], "verdict": row["verdict"], "rows": [row]})
    if {"rl", "sft"} <= set(data.groups):
        d = data.libra_diff("rl", "sft")
        out.append({"claim": CLAIMS[4], "verdict": verdict(d["ci95"]),
                    "rows": [{"comparison": "rl - sft (Libra score)", **d, "verdict": verdict(d["ci95"])}]})
    if {"rl", "sft"} <= set(labelers):
        rows = diff_rows([("rl", "sft")])
        out.append({"claim": CLAIMS[5], "verdict": rows[0]["verdict"], "rows": rows})
    return out


# ----------------------------------------------------------------------------- correlation
def correlation(data: SeedData, fit: Sequence[str], label_acc: Mapping[str, Sequence[float]],
                pair_acc: Mapping[str, Sequence[float]], permutations: int) -> dict:
    """Gain against judge measure over the fitted labeler groups. Each bootstrap draw resamples
    every group's judge seeds (the same draw for its x and its y), its DPO seeds, the bench problems
    (x = Libra score) and the eval problems (y = gain); label and pair accuracy (measured on the
    policy's own pool responses) are resampled over judge seeds only."""
    if len(fit) < 3:
        return {}
    rng = np.random.default_rng([data.seed, 3])
    xs: dict[str, dict[str, np.ndarray]] = {"libra_score": {}, "label_accuracy": {}, "pair_accuracy": {}}
    points: dict[str, dict[str, float]] = {k: {} for k in xs}
    ys, ypoint = {}, {}
    for g in fit:
        gain = data.gain_numer(g)
        levels = next(iter(gain.values())).shape[:-1]
        idx = draw_seed_indices(levels, data.resamples, rng)
        ypoint[g], ys[g] = hierarchical_draws(gain, None, data.resamples, data.seed, seed_idx=idx)
        points["libra_score"][g], xs["libra_score"][g] = hierarchical_draws(
            data.libra_numer(g), data.counts, data.resamples, data.seed, seed_idx=idx[:1])
        for key, vals in (("label_accuracy", label_acc), ("pair_accuracy", pair_acc)):
            v = np.asarray(vals[g], dtype=float)
            points[key][g] = float(v.mean())
            xs[key][g] = v[idx[0]].mean(axis=1)
    out = {"labelers": list(fit), "gain": [round(ypoint[g], 6) for g in fit]}
    for key in xs:
        x = [points[key][g] for g in fit]
        y = [ypoint[g] for g in fit]
        r_draws = [pearson([xs[key][g][b] for g in fit], [ys[g][b] for g in fit]) for b in range(data.resamples)]
        rho_draws = [spearman([xs[key][g][b] for g in fit], [ys[g][b] for g in fit]) for b in range(data.resamples)]
        r_draws = np.array([v for v in r_draws if v is not None])
        rho_draws = np.array([v for v in rho_draws if v is not None])
        r, rho = pearson(x, y), spearman(x, y)
        out[key] = {"x": [round(v, 6) for v in x],
                    "pearson": round(r, 4) if r is not None else None,
                    "pearson_ci95": interval(r_draws) if len(r_draws) else None,
                    "pearson_p_permutation": permutation_p(x, y, permutations, data.seed),
                    "spearman": round(rho, 4) if rho is not None else None,
                    "spearman_ci95": interval(rho_draws) if len(rho_draws) else None,
                    "spearman_p_permutation": permutation_p(ranks(x), ranks(y), permutations, data.seed)
                    if rho is not None else None}
    return out


# ----------------------------------------------------------------------------- stage
def build_seeds_report(pred_paths: Mapping[str, str | Path], sample_paths: Mapping[str, Mapping[str, str | Path]],
                       downstream_summary: str | Path, json_path: str | Path, md_path: str | Path, *,
                       report: ReportSettings, evaluate: EvaluateSettings, pairs: PairsSettings,
                       compare: CompareSettings | None, dpo: DpoSettings, seed: Seed) -> dict:
    """Stage `seeds`: read every judge's bench predictions and every policy's per-seed samples,
    write seeds.json (every estimate with its interval) and seeds.md (its tables)."""
    groups = judge_groups(report=report, evaluate=evaluate)
    correct, counts = bench_arrays(pred_paths)
    policies = policy_arrays(sample_paths)
    # labeler groups: a replicated judge's group name stands for all its members
    labelers = []
    for n in pairs.labelers:
        g = next((g for g, ms in groups.items() if n in ms), n)
        if g not in labelers:
            labelers.append(g)
    data = SeedData(groups, correct, counts, policies, report.resamples, seed)
    down = read_json(downstream_summary)["policies"]
    judge_labelers = [n for n in labelers if labeler_kind(n, groups) == "judge" and n in groups]
    short = {g for g in labelers if any((down.get(m) or {}).get("short") for m in groups.get(g, [g]))}

    doc: dict[str, Any] = {
        "groups": groups, "dpo_seeds": list(dpo.seeds), "resamples": report.resamples,
        "judges": {g: data.libra(g) for g in groups},
        "judge_differences": {f"{a} - {b}": data.libra_diff(a, b) for a, b in (compare.pairs if compare else ())},
        "gains": {n: data.gain(n) for n in labelers},
        "short_labelers": sorted(short),
    }
    # the JSON file sorts its keys: the tables' row order is kept as lists
    doc["order"] = {"judges": list(doc["judges"]), "judge_differences": list(doc["judge_differences"]),
                    "gains": list(doc["gains"])}
    doc["claims"] = claims(data, judge_labelers, [n for n in labelers if n not in short])
    fit = [g for g in report.fit_labelers if g in labelers and g not in short]
    label_acc = {g: [down[m]["label_accuracy"] for m in groups.get(g, [g])] for g in fit}
    pair_acc = {g: [down[m]["pair_accuracy"] for m in groups.get(g, [g])] for g in fit}
    doc["correlation"] = correlation(data, fit, label_acc, pair_acc, report.permutations)
    write_json(json_path, doc)
    write_text(md_path, seeds_markdown(doc))
    return doc


def _pct(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "n/a"
    s = f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}"
    return s.replace("-", "−")


def _ci(ci: Sequence[float] | None, signed: bool = False) -> str:
    return f"[{_pct(ci[0], signed)}, {_pct(ci[1], signed)}]" if ci else "n/a"


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + \
        ["| " + " | ".join(r) + " |" for r in rows]


def seeds_markdown(doc: Mapping[str, Any]) -> str:
    """seeds.json as tables; the headline table is what the README's results block quotes (a test compares them)."""
    r = doc["resamples"]
    seeds = lambda e: " × ".join(str(n) for n in e["seeds"])  # noqa: E731
    md = ["# Seed-aware report", "",
          f"Intervals: 95% hierarchical bootstrap ({r} draws) over judge seeds, then DPO seeds "
          f"({len(doc['dpo_seeds'])}: {', '.join(map(str, doc['dpo_seeds']))}), then problems within subsets. "
          "Differences pair replicate k with replicate k and DPO seed d with DPO seed d; a group with one "
          "seed is paired with every replicate of the other. Percentage points.", ""]
    if doc.get("provenance"):      # the committed copy in docs/ (librarm results-doc --seeds) says where it came from
        from librarm.run.provenance import provenance_lines

        md += provenance_lines(doc["provenance"], doc.get("reproducibility", [])) + [""]
    md += ["## Headline", ""]
    headline = []
    for c in doc["claims"]:
        rows = c["rows"]
        # the deciding row: the first reversed one, else the weakest (lowest lower bound)
        key = next((x for x in rows if x["verdict"] == "reversed"), None) or min(rows, key=lambda x: x["ci95"][0])
        headline.append([c["claim"], f"**{c['verdict']}**", key["comparison"], _pct(key["mean"], True),
                         _ci(key["ci95"], True)])
    md += _table(["claim", "verdict", "deciding difference", "estimate", "95% CI"], headline)
    md += ["", "## Judges on Libra Bench", ""]
    md += _table(["judge", "seeds", "Libra score", "95% CI", "per seed", "sd over seeds"],
                 [[g, seeds(e), _pct(e["mean"]), _ci(e["ci95"]), ", ".join(_pct(v) for v in e["per_seed"]),
                   _pct(e["sd_over_seeds"])] for g, e in ((g, doc["judges"][g]) for g in doc["order"]["judges"])])
    if doc["judge_differences"]:
        md += ["", "## Judge differences (Libra score)", ""]
        md += _table(["A - B", "seeds", "diff", "95% CI", "p (bootstrap)", "verdict"],
                     [[k, seeds(e), _pct(e["mean"], True), _ci(e["ci95"], True), format_p(e["p_bootstrap"], r),
                       verdict(e["ci95"])]
                      for k, e in ((k, doc["judge_differences"][k]) for k in doc["order"]["judge_differences"])])
    md += ["", "## Downstream gains (avg@k over `none`)", ""]
    md += _table(["labeler", "judge seeds × DPO seeds", "gain", "95% CI", "per judge seed", "sd over judge seeds"],
                 [[n + (" (short)" if n in doc["short_labelers"] else ""), seeds(e), _pct(e["mean"], True),
                   _ci(e["ci95"], True), ", ".join(_pct(v, True) for v in e["per_seed"]), _pct(e["sd_over_seeds"])]
                  for n, e in ((n, doc["gains"][n]) for n in doc["order"]["gains"])])
    md += ["", "## Orderings, every difference", ""]
    md += _table(["claim", "A - B", "estimate", "95% CI", "verdict"],
                 [[c["claim"], x["comparison"], _pct(x["mean"], True), _ci(x["ci95"], True), x["verdict"]]
                  for c in doc["claims"] for x in c["rows"]])
    corr = doc.get("correlation") or {}
    if corr:
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}".replace("-", "−")  # noqa: E731
        ci = lambda c: "n/a" if not c else f"[{fmt(c[0])}, {fmt(c[1])}]"  # noqa: E731
        md += ["", "## Gain against judge measure (fitted labeler groups)", "",
               f"Groups: {', '.join(corr['labelers'])}. Intervals resample judge seeds, DPO seeds and problems; "
               "p: permutation of the gains among the groups.", ""]
        md += _table(["x", "Pearson r", "95% CI", "p", "Spearman rho", "95% CI", "p"],
                     [[key, fmt(e["pearson"]), ci(e["pearson_ci95"]), fmt(e["pearson_p_permutation"]),
                       fmt(e["spearman"]), ci(e["spearman_ci95"]), fmt(e["spearman_p_permutation"])]
                      for key, e in ((k, corr[k]) for k in ("libra_score", "label_accuracy", "pair_accuracy"))])
    return "\n".join(md) + "\n"


def step_replicates(io: StageIO, *, report: ReportSettings, evaluate: EvaluateSettings, pairs: PairsSettings,
                    compare: CompareSettings | None, dpo: DpoSettings, seed: Seed) -> tuple[dict, list[str]]:
    """Stage step `seeds`: the rule lists every judge's predictions and every policy run's samples."""
    judges = [m for ms in judge_groups(report=report, evaluate=evaluate).values() for m in ms]
    preds = io.keyed("predictions", P.EVAL_PREDICTIONS, "judge", judges)
    files = set(io.input_list("samples"))
    runs = dpo.seeds
    samples = {}
    for policy in [NONE_POLICY, *pairs.labelers]:
        samples[policy] = {r: P.POLICY_RUN_SAMPLES.format(policy=policy, run=r) for r in policy_runs(policy, runs)}
        missing = [p for p in samples[policy].values() if p not in files]
        if missing:
            raise ValueError(f"input 'samples': missing {missing}")
    doc = build_seeds_report(preds, samples, io.input("downstream"), io.output("json"), io.output("markdown"),
                             report=report, evaluate=evaluate, pairs=pairs, compare=compare, dpo=dpo, seed=seed)
    headline = {f"libra.{g}": e["mean"] for g, e in doc["judges"].items()}
    headline.update({f"gain.{n}": e["mean"] for n, e in doc["gains"].items()})
    return headline, [io.output("json"), io.output("markdown")]
