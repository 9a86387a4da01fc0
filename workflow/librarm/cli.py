"""Command line: `librarm stage ...` (what the Snakemake rules call), `librarm score` (any bench
file, any judge, outside the DAG), `librarm dvc-yaml`, `librarm validate`, `librarm train-tiny`."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from librarm import engines
from librarm.engines.http import MODELS_MAX_BYTES  # GET /models: the http backend's byte cap, named in errors
from librarm.run.config import ConfigError, load_params, validate_params
from librarm.run.paths import BENCHMARKS
from librarm.run.settings import (
    BootstrapSettings,
    Judges,
    JudgeSettings,
    JudgeSpec,
    LaunchSettings,
    Models,
    TrackingSettings,
    call,
)
from librarm.run.tracking import CURVE_KEYS

log = logging.getLogger("librarm")


def _load_config(path: str) -> dict:
    p = Path(path)
    cfg = json.loads(p.read_text()) if p.suffix == ".json" else load_params(p)
    validate_params(cfg, source=str(p))
    return cfg


def _threads(n: int | None) -> int | None:
    if n:
        import os

        os.environ.setdefault("OMP_NUM_THREADS", str(n))
    return n


# Every `librarm stage` step: the module and function that run it, each `f(io, *, <sections>) ->
# (metrics, artifacts)`, given the params sections it names by `settings.call`. Paths, defaults and stage arguments live with the stages; the step's phase
# comes from the registry (phases.STEP_PHASE).
STEPS: dict[str, tuple[str, str]] = {
    "problems": ("stages.problems", "step_problems"),
    "bootstrap-tiny": ("stages.bootstrap_tiny", "step_bootstrap_tiny"),
    "prepare-model": ("stages.bootstrap_gguf", "step_prepare_model"),
    "bootstrap-stats": ("stages.bootstrap_gguf", "step_bootstrap_stats"),
    "sample": ("stages.sample", "step_sample"),
    "sample-stats": ("stages.sample", "step_sample_stats"),
    "verify": ("stages.verify", "step_verify"),
    "verify-stats": ("stages.verify", "step_verify_stats"),
    "bench": ("stages.bench", "step_bench"),
    "evaluate": ("stages.evaluate", "step_evaluate"),
    "eval-summary": ("stages.evaluate", "step_eval_summary"),
    "judge-data": ("stages.train", "step_judge_data"),
    "rs": ("stages.train", "step_rs"),
    "train": ("stages.train", "step_train"),
    "train-stats": ("stages.train", "step_train_stats"),
    "pairs-split": ("stages.downstream", "step_pairs_split"),
    "pairs-sample": ("stages.downstream", "step_pairs_sample"),
    "pairs-verify": ("stages.downstream", "step_pairs_verify"),
    "pairs-label": ("stages.downstream", "step_pairs_label"),
    "pairs-build": ("stages.downstream", "step_pairs_build"),
    "dpo": ("stages.dpo", "step_dpo"),
    "dpo-stats": ("stages.dpo", "step_dpo_stats"),
    "policy-eval": ("stages.downstream", "step_policy_eval"),
    "policy-metrics": ("stages.downstream", "step_policy_metrics"),
    "downstream-summary": ("stages.downstream", "step_downstream_summary"),
    "report": ("stages.report", "step_report"),
    "replicates": ("stages.replicates", "step_replicates"),
}


# The steps that judge a benchmark: the input that holds it. Their job runs get it as an MLflow
# dataset input, named as `librarm score --mlflow` names its benchmark (here, not in the stage: the
# stages' code, and so their results' code hashes, stay free of the tracking module).
STEP_BENCH = {"evaluate": "bench"}


def _named(groups: Sequence[Sequence[str]] | None, flag: str) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for name, *files in groups or ():
        if name in out:
            raise ValueError(f"{flag} {name}: given twice")
        out[name] = tuple(files)
    return out


def cmd_stage(a: argparse.Namespace) -> int:
    import importlib

    from librarm.phases import STEP_PHASE, declared_params
    from librarm.run import launch, reads, tracking
    from librarm.run.io import StageIO

    cfg = _load_config(a.config)
    settings = launch.settings_for_step(LaunchSettings.from_params(cfg), a.step)
    if settings and not launch.inside_launch():
        # a training step in N processes: this process only starts them and returns their status
        return launch.run_launched(settings, a.cli_args, a.threads)
    module, function = STEPS[a.step]
    wildcards = dict(w.split("=", 1) for w in a.wildcard or ())
    threads = max(1, a.threads // launch.world_size()) if a.threads else a.threads
    io = StageIO(_named(a.inputs, "--in"), _named(a.outputs, "--out"), wildcards, _threads(threads))
    step_fn = getattr(importlib.import_module(f"librarm.{module}"), function)
    if not launch.is_main():
        # the other processes of a launched step train alongside rank 0; rank 0 writes and logs
        call(step_fn, cfg, io)
        return 0
    pipeline = tracking.pipeline_context(cfg) if tracking.enabled(TrackingSettings.from_params(cfg)) else None
    with tracking.stage_run(pipeline, a.step, declared_params(cfg, STEP_PHASE[a.step]), wildcards) as run:
        # the step sees a recording view of the config when LIBRARM_RECORD_READS is set
        view, log = reads.recording(cfg)
        metrics, artifacts = call(step_fn, view, io)
        reads.save(a.step, log)
        run.log_metrics(metrics)
        for art in artifacts:
            run.log_artifact(art)
        if run.active and a.step in STEP_BENCH:
            from librarm.scoring import bench_identity

            bench = io.input(STEP_BENCH[a.step])
            run.log_dataset(bench_identity(bench, {"format": "libra", "items": metrics.get("n_items")}, None))
    print(_summary_line(a.step, wildcards, metrics))
    print(json.dumps(_headline(metrics), indent=1, sort_keys=True, default=str))
    return 0


def _summary_line(step: str, wildcards: Mapping[str, str], metrics: Mapping[str, Any]) -> str:
    """One line a job's log opens with: the step, its wildcards and its scalar numbers (e.g. the
    problems step's count of quarantined lines)."""
    scalars = [f"{k}={v}" for k, v in sorted(metrics.items()) if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    where = " ".join(f"{k}={v}" for k, v in wildcards.items())
    return f"librarm {step}{' ' + where if where else ''}: {', '.join(scalars) or 'done'}"


def _headline(metrics: Mapping[str, Any]) -> dict:
    return {k: v for k, v in metrics.items()
            if k not in ("provenance", "train_log", "cells", "overlap", "ci95", *CURVE_KEYS)}


def _key_value(item: str, flag: str) -> tuple[str, Any]:
    """KEY=VALUE with VALUE read as YAML (0.1 is a number, float32 a string, true a bool)."""
    import yaml

    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"{flag} {item}: expected KEY=VALUE")
    return key, yaml.safe_load(value)


def score_judge_name(a: argparse.Namespace) -> str:
    """The judge `librarm score` scores: --judge, else the --model folder's name, else the backend
    (a backend that needs no model, e.g. rule)."""
    if a.judge:
        return a.judge
    if a.model:
        return Path(a.model.rstrip("/")).name or a.model
    if not engines.get(a.backend).needs_model:
        return a.backend
    raise ConfigError("name a judge: --judge KEY (a key of params 'judges') or --model PATH/NAME (any model), "
                      "or --backend rule (math-verify against the reference)")


def score_overlay(a: argparse.Namespace) -> dict:
    """The params a `librarm score` run lays over the params file: the judge given on the command line
    (a models entry and a judges entry), the judge settings given as flags, and --set KEY=VALUE."""
    name = score_judge_name(a)
    overlay: dict[str, Any] = {}
    if a.model or not engines.get(a.backend).needs_model:
        overlay = _judge_overlay(a, name)
    judge = {"max_prompt_tokens": a.max_prompt_tokens, "max_new_tokens": a.max_new_tokens, "temperature": a.temperature}
    judge = {k: v for k, v in judge.items() if v is not None}
    if judge:
        overlay["judge"] = judge
    if a.concurrency is not None:
        overlay.setdefault("judges", {}).setdefault(name, {})["concurrency"] = a.concurrency
    for item in a.set or ():
        key, value = _key_value(item, "--set")
        cur = overlay
        *parents, leaf = key.split(".")
        for part in parents:
            cur = cur.setdefault(part, {})
            if not isinstance(cur, dict):
                raise ConfigError(f"--set {item}: {part} is not a section")
        cur[leaf] = value
    return overlay


def _judge_overlay(a: argparse.Namespace, name: str) -> dict:
    judge: dict[str, Any] = {"backend": a.backend, "kind": a.kind}
    if a.vllm_arg:
        if a.backend != "vllm":
            raise ConfigError("--vllm-arg: only with --backend vllm")
        judge["vllm_args"] = dict(_key_value(item, "--vllm-arg") for item in a.vllm_arg)
    if not engines.get(a.backend).needs_model:
        return {"judges": {name: judge}}
    judge["model"] = f"cli_{name}"
    if a.backend == "http":
        if not a.base_url:
            raise ConfigError("--base-url: required with --backend http (the server's /v1 URL)")
        model = {"source": "path", "path": a.model}           # http: the name the server serves it under
        judge["base_url"] = a.base_url
        if a.api_key_env:
            judge["api_key_env"] = a.api_key_env
    elif Path(a.model).is_dir():
        model = {"source": "path", "path": a.model}
    elif a.revision:
        model = {"source": "hub", "id": a.model, "revision": a.revision}
    else:
        raise ConfigError(f"--model {a.model}: not a local folder; for a hub id pin a revision with --revision")
    return {"models": {f"cli_{name}": {**model, "role": "judge"}}, "judges": {name: judge}}


MODELS_SHOWN = 20                   # served ids an error lists


def served_models(base_url: str, api_key: str | None = None) -> list[str]:
    """The model ids an OpenAI-compatible server lists at GET {base_url}/models ([] when it has no
    such endpoint: any status but 200, 401 or 403). The reply is read under a deadline and a byte
    cap and checked field by field; whatever is wrong is one line naming the URL."""
    from librarm.engines.http import ReplyError, get_model_list, json_kind, server_text

    url = base_url.rstrip("/") + "/models"
    try:
        reply = get_model_list(base_url, api_key)
    except ReplyError as exc:
        raise ConfigError(f"--base-url {base_url}: no answer from {url} ({exc})") from None
    if reply.status in (401, 403):
        raise ConfigError(f"--api-key-env: {url} refused the key (HTTP {reply.status})")
    if reply.status != 200:
        return []
    where = f"--base-url {base_url}: {url} is not an OpenAI model list"
    if reply.over_cap:
        raise ConfigError(f"{where} (a reply over {MODELS_MAX_BYTES} bytes)")
    try:
        payload = json.loads(reply.body)
    except (ValueError, RecursionError) as exc:
        what = "nested too deeply" if isinstance(exc, RecursionError) else server_text(exc, 80)
        raise ConfigError(f"{where} (HTTP 200 but not JSON: {what}; {len(reply.body)} bytes: "
                          f"{server_text(reply.body, 80, (api_key,))})") from None
    if not isinstance(payload, dict):
        raise ConfigError(f"{where} (the body is {json_kind(payload)}, not an object with 'data')")
    data = payload.get("data")
    if data is None:
        return []
    if not isinstance(data, list):
        raise ConfigError(f"{where} ('data' is {json_kind(data)}, not an array)")
    ids = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            what = json_kind(entry) if not isinstance(entry, dict) else f"an object whose 'id' is {json_kind(entry.get('id'))}"
            raise ConfigError(f"{where} (data[{i}] is {what}, not an object with a string 'id')")
        ids.append(entry["id"])
    return ids


def check_judge_reachable(judge: str, judges: Judges, models: Models) -> None:
    """Fail before scoring, with one line naming the setting: an unset API-key variable, a server
    that does not answer or does not serve the model, a pipeline model not built yet."""
    from librarm.run.models import model_ref

    spec = judges[judge]
    if not engines.get(spec.backend).needs_model:
        return
    m = models[spec.model]
    ref = model_ref(models, spec.model)
    if spec.backend == "http":
        import os

        var = spec.api_key_env
        if var and not os.environ.get(var):
            raise ConfigError(f"--api-key-env {var}: the environment variable {var} is not set")
        served = served_models(spec.base_url, os.environ[var] if var else None)
        # a local folder may be absent from the list: `transformers serve` loads folders on first request
        if served and ref["path"] not in served and not Path(ref["path"]).is_dir():
            from librarm.engines.http import server_text

            shown = ", ".join(server_text(s, 120) for s in served[:MODELS_SHOWN])
            more = f" and {len(served) - MODELS_SHOWN} more" if len(served) > MODELS_SHOWN else ""
            raise ConfigError(f"--model {ref['path']}: not served at {spec.base_url} (it serves: {shown}{more})")
    elif m.source in ("tiny", "trained", "gguf") and not Path(ref["path"]).is_dir():
        raise ConfigError(f"judge {judge!r}: its model {ref['path']} does not exist yet; build it with "
                          f"`snakemake --cores 2 {ref['path']}` (or pass --model PATH)")


def cmd_score(a: argparse.Namespace) -> int:
    """Score a judge on a benchmark file of the field (librarm.scoring): a judge from params, or a
    model folder, hub id or served model given on the command line, or the rule verifier."""
    from librarm.judging.bench_formats import fetch_bench, has_reference, read_items
    from librarm.judging.verdict_metrics import format_table, unparsed_warning
    from librarm.scoring import ScoreError, ScoreRun, bench_identity, score_benchmark

    presets = [] if a.preset in (None, ["none"]) else a.preset
    name = score_judge_name(a)
    if a.params is None:
        from librarm.run.paths import REPO_ROOT

        a.params = "params.yaml" if Path("params.yaml").exists() else str(REPO_ROOT / "params.yaml")
    cfg = load_params(a.params, presets, [score_overlay(a)])
    judges = JudgeSpec.registry(cfg.get("judges"))
    if name not in judges:
        raise ConfigError(f"judge {name!r} is not in params 'judges' ({', '.join(judges)}); "
                          "pass --model PATH (or --backend http --base-url URL --model NAME) to score any judge")
    spec = judges[name]
    bench, digest = fetch_bench(a.bench, a.bench_sha256)
    items, info = read_items(bench, a.format, a.fields)
    if a.limit:
        items = items[:a.limit]
    if not engines.get(spec.backend).needs_model and spec.backend == "rule" and not has_reference(info["format"]):
        raise ConfigError(f"--backend rule: {info['format']} has no reference answers to verify against; "
                          "score it with a model judge")
    call(check_judge_reachable, cfg, name)
    if spec.kind == "scalar":
        # a scalar reward model: one score per item, thresholded as the evaluate stage does
        from librarm.stages.evaluate import score_file

        if info["format"] != "libra" or a.samples != 1:
            raise ConfigError(f"judges.{name}: a scalar judge scores Libra-schema files with --samples 1")
        print(json.dumps(_headline(call(score_file, cfg, name, bench, a.out, a.threads)), indent=1, sort_keys=True,
                         default=str))
        return 0
    j = JudgeSettings.from_params(cfg)
    print(f"budgets ({'+'.join(presets) or 'params.yaml'}): judge.max_prompt_tokens={j.max_prompt_tokens} "
          f"judge.overflow={j.overflow} judge.max_new_tokens={j.max_new_tokens} "
          f"judge.temperature={j.temperature} samples={a.samples}", flush=True)
    print(f"bench: {bench} ({info['format']}: {len(items)} items{', first ' + str(a.limit) if a.limit else ''})"
          + (f" (sha256 {digest})" if digest else ""), flush=True)
    chunk = a.concurrency or (spec.concurrency if spec.backend == "http" else j.batch_size)
    run = ScoreRun(Path(a.out), samples=a.samples, limit=a.limit, chunk=chunk, overwrite=a.overwrite,
                   threads=a.threads, progress=sys.stderr.isatty() or a.progress)
    try:
        summary = call(score_benchmark, cfg, name, items, bench_identity(bench, info, digest), run)
    except ScoreError as exc:
        raise ConfigError(str(exc)) from None
    m, usage = summary["metrics"], summary["usage"]
    overflow = m.get("prompt_overflow") or {}
    if "unchecked" in overflow:
        print(f"prompts over judge.max_prompt_tokens: not checked, the {overflow['unchecked']} prompts were sent "
              f"whole ({overflow['reason']})")
    else:
        print(f"prompts over judge.max_prompt_tokens: {overflow.get('truncated', 0)} truncated, "
              f"{overflow.get('skipped', 0)} skipped (of {len(items)})")
    print(f"requests: {usage['requests']} sent, {usage['reused']} reused from {a.out}/verdicts.jsonl; "
          f"tokens: {usage['prompt_tokens']} prompt, {usage['completion_tokens']} completion")
    print(format_table(m))
    if m.get("libra_score") is not None:
        ci = m.get("libra_score_ci") or [None, None]
        print(f"Libra score (first verdict): {100 * m['libra_score']:.1f}%"
              + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci[0] is not None else ""))
    warning = unparsed_warning(m)
    if warning:
        print(f"warning: {warning}")
    print(f"wrote {a.out}/summary.json, predictions.jsonl, verdicts.jsonl, metrics.json")
    if a.mlflow:
        from librarm.run.tracking import SCORE_EXPERIMENT, log_scoring_run

        print(f"mlflow: run {log_scoring_run(summary, a.out)} in experiment {SCORE_EXPERIMENT}")
    return 0


def cmd_leaderboard(a: argparse.Namespace) -> int:
    from librarm.judging.leaderboard import build_leaderboard

    done = build_leaderboard([Path(r) for r in a.runs], Path(a.out))
    print(f"{done['rows']} rows: " + ", ".join(done["files"][:3]))
    return 0


def cmd_dvc_yaml(a: argparse.Namespace) -> int:
    from librarm.phases import check_dvc_yaml, render_dvc_yaml

    if a.check:
        problems = check_dvc_yaml(a.path)
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    Path(a.path).write_text(render_dvc_yaml())
    return 0


def cmd_params_doc(a: argparse.Namespace) -> int:
    from librarm.params_doc import check_params_md, write_params_md

    if a.check:
        problems = check_params_md()
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    print(f"wrote {write_params_md()}")
    return 0


def cmd_validate(a: argparse.Namespace) -> int:
    cfg = load_params(a.params, a.preset or ())
    print(f"{a.params} + presets {a.preset or []}: valid ({len(cfg['generators'])} generators, "
          f"{len(cfg['judges'])} judges)")
    return 0


def cmd_params(a: argparse.Namespace) -> int:
    import yaml

    cfg = load_params(a.params, a.preset or ())
    text = yaml.safe_dump(cfg, sort_keys=False, width=120)
    if a.write:
        Path(a.write).write_text(text)
    else:
        print(text)
    return 0


def cmd_seeds(a: argparse.Namespace) -> int:
    from librarm.seeds import run_seed_summary

    text = run_seed_summary(a.exp_json)
    if a.out:
        Path(a.out).write_text(text)
    else:
        print(text)
    return 0


def cmd_profile(a: argparse.Namespace) -> int:
    from librarm.profile import latest_log, profile_report
    from librarm.run.warm import WARM_LOG

    print(profile_report(a.log or latest_log(), a.cores, a.benchmarks, WARM_LOG), end="")
    return 0


def cmd_after_pull(a: argparse.Namespace) -> int:
    """After `dvc pull`: touch the results for Snakemake only when DVC says they are current."""
    from librarm.run.pulled import NotCurrentError, after_pull

    try:
        after_pull()
    except NotCurrentError as exc:
        print(exc, file=sys.stderr)
        return 1
    print("dvc status is clean: Snakemake now sees the pulled results as current")
    return 0


def cmd_train_tiny(a: argparse.Namespace) -> int:
    """Retrain the tiny models from params and (with --ship) store them as the shipped weights."""
    from librarm.stages.bootstrap_tiny import retrain_tiny

    cfg = load_params(a.params, a.preset or ())
    stats = call(retrain_tiny, cfg, a.workdir, a.threads, ship=a.ship)
    print(json.dumps({k: v for k, v in stats["models"].items()}, indent=1))
    if a.ship:
        print(f"shipped to {BootstrapSettings.from_params(cfg).shipped_dir}")
    return 0


def cmd_track_flush(a: argparse.Namespace) -> int:
    from librarm.run.tracking import SPOOL_DIR, flush_spool, tracking_uri

    n = flush_spool()
    print(f"{n} job records from {SPOOL_DIR} imported into {tracking_uri()}")
    return 0


def cmd_results_doc(a: argparse.Namespace) -> int:
    from librarm import results_doc as R
    from librarm.run.io import read_json

    if a.check:
        golden = Path(a.golden)
        if not golden.exists():
            raise FileNotFoundError(f"{golden}: no golden to compare with (librarm results-doc writes it)")
        changed = R.drift(read_json(golden), a.run)
        if changed:
            print(f"results drift: {len(changed)} keys differ from {golden} (a commit that changes results on "
                  "purpose regenerates it with `librarm results-doc` and says so in its message):")
            print("\n".join("  " + c for c in changed))
            return 1
        print(f"no drift: the run in {a.run} reproduces {golden} (headline and file digests)")
        return 0
    if a.render:
        written = R.render_documents(a.repo)
    elif a.seeds:
        written = R.write_seeds_report(a.run, a.repo, preset=a.preset if a.preset != "default" else "seeds")
    else:
        written = R.write_results(a.run, a.repo, preset=a.preset, repro_files=a.repro or ())
    print("wrote " + ", ".join(written))
    return 0


def cmd_push_model(a: argparse.Namespace) -> int:
    """Upload a trained judge or DPO policy with its model card (the report's model_cards folder)
    as README.md, in one commit, to a Hugging Face repo."""
    from librarm.stages.model_cards import push_model

    info = push_model(a.model, a.repo_id, private=a.private, revision=a.revision, commit_message=a.message)
    print(f"pushed {a.model} to {a.repo_id}: {getattr(info, 'commit_url', info)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="librarm", description=__doc__)
    ap.add_argument("--debug", action="store_true", help="show the traceback of an expected error too "
                                                          "(or set LIBRARM_DEBUG=1)")
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("stage", help="run one pipeline step (called by the Snakemake rules)")
    s.add_argument("step")
    s.add_argument("--config", required=True, help="effective config (JSON written by the Snakefile, or a params YAML)")
    s.add_argument("--in", dest="inputs", nargs="+", action="append", metavar=("NAME", "PATH"),
                   help="a named input and its paths (repeat per input; a name may have no path)")
    s.add_argument("--out", dest="outputs", nargs="+", action="append", metavar=("NAME", "PATH"),
                   help="a named output and its paths (repeat per output)")
    s.add_argument("--wildcard", action="append", metavar="NAME=VALUE", help="the job's wildcards")
    s.add_argument("--threads", type=int, default=None)
    s.set_defaults(func=cmd_stage)

    sc = sub.add_parser(
        "score", help="score a judge on a benchmark (Libra Bench, VerifyBench, VerifierBench, PPE, RewardBench 2, any JSONL)",
        description="Score one judge on one benchmark file. Writes OUT/summary.json (the metrics; what `librarm "
                    "leaderboard` reads), OUT/predictions.jsonl (one record per item), OUT/verdicts.jsonl (one line "
                    "per verdict, kept as it arrives: a rerun resumes) and OUT/metrics.json. See docs/scoring.md.")
    sc.add_argument("--bench", required=True,
                    help="the benchmark: a JSONL, JSON or parquet file, a parquet or datasets save_to_disk folder, or "
                         "hf://datasets/OWNER/NAME@REVISION/PATH (a pinned file in a hub dataset repo)")
    sc.add_argument("--format", choices=["libra", "verifybench", "verifierbench", "ppe-math", "rewardbench2", "jsonl"],
                    help="the benchmark's schema (default: inferred from its fields)")
    sc.add_argument("--fields", help="--format jsonl: the field mapping, e.g. question=q,reference=a,response=r,label=y,category=c")
    sc.add_argument("--bench-sha256", help="the bench file's expected sha256 (a mismatch stops before scoring)")
    sc.add_argument("--judge", help="a key of params 'judges'; with --model, the name to give it (default: the model's name)")
    sc.add_argument("--model", help="hf/vllm: a model folder or hub id; http: the name the server serves")
    sc.add_argument("--revision", help="the pinned revision of a hub --model")
    sc.add_argument("--backend", default="hf", choices=[n for n in engines.names() if not engines.get(n).reads_labels],
                    help="the engine that runs the judge (rule: math-verify against the reference, no model)")
    sc.add_argument("--base-url", help="http: the OpenAI-compatible server's URL, e.g. http://127.0.0.1:8000/v1")
    sc.add_argument("--api-key-env", help="http: the environment variable that holds the API key")
    sc.add_argument("--vllm-arg", action="append", metavar="KEY=VALUE",
                    help="vllm: a keyword argument of vllm.LLM (repeat), e.g. dtype=float32 "
                         "gpu_memory_utilization=0.1 (on CPU, the share of RAM vLLM reserves)")
    sc.add_argument("--kind", default="generative", choices=["generative", "scalar"])
    sc.add_argument("--samples", type=int, default=1, metavar="K",
                    help="verdicts per item (seeded per item and sample): metrics for the first, the majority and the "
                         "mean P(correct), with calibration when K > 1 (default 1)")
    sc.add_argument("--limit", type=int, metavar="N", help="score the first N items only (a quick look)")
    sc.add_argument("--concurrency", type=int, metavar="N",
                    help="http: requests in flight (default: the judge's `concurrency`, 8); others: requests per batch")
    sc.add_argument("--max-prompt-tokens", type=int, help="judge.max_prompt_tokens (longer prompts: judge.overflow)")
    sc.add_argument("--max-new-tokens", type=int, help="judge.max_new_tokens")
    sc.add_argument("--temperature", type=float, help="judge.temperature")
    sc.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="any params key, e.g. --set judge.top_p=0.95 (VALUE read as YAML; repeat)")
    sc.add_argument("--params", help="the params file whose `judge` section and judges are used (default: ./params.yaml, "
                                     "else this checkout's params.yaml)")
    sc.add_argument("--preset", action="append",
                    help="presets over the params file, on request only (e.g. paper: the paper's judge prompt and budgets)")
    sc.add_argument("--out", required=True, help="the run's folder (a rerun with the same settings resumes in it)")
    sc.add_argument("--overwrite", action="store_true", help="replace a folder that holds another scoring run")
    sc.add_argument("--progress", action="store_true", help="a progress bar on stderr even when it is not a terminal")
    sc.add_argument("--mlflow", action="store_true",
                    help="log the run to MLflow (experiment librarm-score): params, metrics, the benchmark as a dataset "
                         "input, the verdicts as artifacts (store: MLFLOW_TRACKING_URI, else ./mlflow)")
    sc.add_argument("--threads", type=int, default=None)
    sc.set_defaults(func=cmd_score)

    pd = sub.add_parser("params-doc", help="write (or --check) docs/params.md, the parameter reference, from the schema")
    pd.add_argument("--check", action="store_true", help="exit 1 when docs/params.md differs from the schema's render")
    pd.set_defaults(func=cmd_params_doc)

    lb = sub.add_parser("leaderboard", help="judges side by side: leaderboard.csv, .md and a sortable .html from scoring runs",
                        description="Reads each OUT/summary.json that `librarm score` wrote; writes DIR/leaderboard.csv, "
                                    "DIR/leaderboard.md, DIR/leaderboard.html and DIR/categories/*.html.")
    lb.add_argument("runs", nargs="+", metavar="OUT", help="scoring run folders (each with summary.json)")
    lb.add_argument("--out", required=True, metavar="DIR")
    lb.set_defaults(func=cmd_leaderboard)

    d = sub.add_parser("dvc-yaml", help="write (or --check) dvc.yaml from the phase registry")
    d.add_argument("--check", action="store_true")
    d.add_argument("--path", default="dvc.yaml")
    d.set_defaults(func=cmd_dvc_yaml)

    for name, fn, helptext in (("validate", cmd_validate, "validate params.yaml (+ presets)"),
                               ("check-config", cmd_validate, "check params.yaml (+ presets): YAML syntax errors as "
                                                              "file:line:col, schema and cross-reference errors by key"),
                               ("params", cmd_params, "print params.yaml merged with presets")):
        v = sub.add_parser(name, help=helptext)
        v.add_argument("--params", default="params.yaml")
        v.add_argument("--preset", action="append")
        if name == "params":
            v.add_argument("--write", help="write the merged params to this file instead of printing")
        v.set_defaults(func=fn)

    sd = sub.add_parser("seeds", help="mean +- sd over DVC experiments that differ only in seeds")
    sd.add_argument("--exp-json", help="a saved `dvc exp show --json` (default: run it)")
    sd.add_argument("--out", help="write the Markdown here instead of printing it")
    sd.set_defaults(func=cmd_seeds)

    pf = sub.add_parser("profile", help="where a DAG run's time went: per phase and rule, critical path, idle cores")
    pf.add_argument("--log", help="a Snakemake log (default: the newest .snakemake/log/*.snakemake.log)")
    pf.add_argument("--cores", type=int, default=2)
    pf.add_argument("--benchmarks", default=BENCHMARKS)
    pf.set_defaults(func=cmd_profile)

    pl = sub.add_parser("after-pull", help="after `dvc pull`: if `dvc status` is clean, mark the results current "
                                             "for Snakemake (mtimes and its records); else list what is stale")
    pl.set_defaults(func=cmd_after_pull)

    tf = sub.add_parser("track-flush", help="import the spooled job records (mlflow/spool) into the MLflow store")
    tf.set_defaults(func=cmd_track_flush)

    rd = sub.add_parser("results-doc", help="write docs/results.{json,md} (and the README's results block) from a "
                                             "finished run, or --check a run against the committed golden")
    rd.add_argument("--run", default=".", help="the checkout whose results folder to read (default: .)")
    rd.add_argument("--repo", default=".", help="where docs/ and README.md are (default: .)")
    rd.add_argument("--preset", default="default", help="the preset the run used, for the provenance header")
    rd.add_argument("--repro", action="append", metavar="FILE",
                    help="a JSON list written by scripts/repro_ci.sh --json (repeat): quoted in the provenance")
    rd.add_argument("--golden", default="docs/results.json", help="--check: the committed golden")
    mode = rd.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="compare the run's headline metrics and result digests with the golden; exit 1 and "
                           "list the changed keys on any difference")
    mode.add_argument("--seeds", action="store_true",
                      help="write docs/seeds_report.{json,md} from a seeds run (its report/seeds.json) instead")
    mode.add_argument("--render", action="store_true",
                      help="only re-render docs/results.md and the README block from docs/results.json")
    rd.set_defaults(func=cmd_results_doc)

    t = sub.add_parser("train-tiny", help="retrain the tiny-world models (and --ship them)")
    t.add_argument("--params", default="params.yaml")
    t.add_argument("--preset", action="append")
    t.add_argument("--ship", action="store_true")
    t.add_argument("--workdir")
    t.add_argument("--threads", type=int, default=2)
    t.set_defaults(func=cmd_train_tiny)

    pm = sub.add_parser("push-model", help="upload a trained judge or DPO policy with its model card as README.md "
                                           "to a Hugging Face repo (huggingface_hub; HF_TOKEN or `hf auth login`)")
    pm.add_argument("model", help="a card name (libra-judge-rl, libra-policy-gold), judge, model or policy name")
    pm.add_argument("repo_id", help="the Hugging Face repo: NAME or OWNER/NAME (created when missing)")
    pm.add_argument("--private", action="store_true", help="create the repo private")
    pm.add_argument("--revision", help="the branch to commit to (default: main)")
    pm.add_argument("--message", help="the commit message")
    pm.set_defaults(func=cmd_push_model)
    return ap


def _error_line(exc: BaseException) -> str:
    """The one line `librarm` prints for an expected failure."""
    if isinstance(exc, KeyError):
        return f"missing key {exc}"
    text = str(exc)
    if isinstance(exc, (RecursionError, MemoryError)):
        text = f"{type(exc).__name__}{': ' + text if text else ''} (an input too large or nested too deeply)"
    elif isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and type(exc).__name__ not in text:
        text = f"{type(exc).__name__}: {text}"
    return text or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import os

    from librarm.run.io import InputError

    args = build_parser().parse_args(argv)
    args.cli_args = list(sys.argv[1:] if argv is None else argv)      # what a launcher re-runs
    from librarm.run import launch

    # A backend that must run under another interpreter (vLLM) re-runs this command there: only
    # when this process is the command (not main() called in-process), and only while it runs.
    launch.RUNNING_ARGV = args.cli_args if argv is None else None
    try:
        return args.func(args)
    except (ConfigError, InputError, ValueError, KeyError, OSError, RecursionError, MemoryError) as exc:
        # expected failures (bad params, bad input, a missing or unreadable file, a setting that cannot
        # work, an input too large or nested too deeply for a reader) get one line that names the file,
        # line or key; anything else keeps its traceback
        if args.debug or os.environ.get("LIBRARM_DEBUG", "").lower() in ("1", "true", "yes"):
            raise
        print(f"error: {_error_line(exc)}  (librarm --debug ... shows the traceback)", file=sys.stderr)
        return 2
    finally:
        launch.RUNNING_ARGV = None


def run_command() -> int:
    """`python -m librarm.cli ...`: a stage job forks from the run's warm server when there is one
    (librarm/run/warm.py), otherwise runs here."""
    from librarm.run import launch, warm

    if sys.argv[1:2] == ["stage"] and not launch.inside_launch():
        code = warm.run_through_server(sys.argv[1:])
        if code is not None:
            return code
    return main()


if __name__ == "__main__":
    sys.exit(run_command())
