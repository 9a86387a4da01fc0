"""Command line: `librarm stage ...` (what the Snakemake rules call), `librarm score` (any bench
file, any judge, outside the DAG), `librarm dvc-yaml`, `librarm validate`, `librarm train-tiny`."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from .config import ConfigError, load_params, validate_params
from .tracking import CURVE_KEYS

log = logging.getLogger("librarm")


def _load_config(path: str) -> dict:
    p = Path(path)
    cfg = json.loads(p.read_text()) if p.suffix == ".json" else load_params(p)
    validate_params(cfg, source=str(p))
    return cfg


def _sections(cfg: Mapping[str, Any], phase: str) -> dict:
    from .phases import PHASES, lookup

    return {k: lookup(cfg, k) for k in PHASES[phase].params}


def _threads(n: int | None) -> int | None:
    if n:
        import os

        os.environ.setdefault("OMP_NUM_THREADS", str(n))
    return n


# Every `librarm stage` step and the phase (registry entry) it belongs to.
STEP_PHASE = {"problems": "problems", "bootstrap-tiny": "bootstrap", "prepare-model": "bootstrap",
              "bootstrap-stats": "bootstrap", "sample": "sample", "sample-stats": "sample", "verify": "verify",
              "verify-stats": "verify", "bench": "bench", "evaluate": "evaluate", "eval-summary": "evaluate",
              "judge-data": "judge_data", "rs": "rs", "train": "train", "train-stats": "train",
              "pairs-split": "pairs", "pairs-sample": "pairs", "pairs-verify": "pairs", "pairs-label": "pairs",
              "pairs-build": "pairs", "dpo": "dpo", "dpo-stats": "dpo", "policy-eval": "evaluate_policy",
              "policy-metrics": "evaluate_policy", "downstream-summary": "evaluate_policy", "report": "report"}


def cmd_stage(a: argparse.Namespace) -> int:
    from . import tracking

    cfg = _load_config(a.config)
    step = a.step
    threads = _threads(a.threads)
    phase = STEP_PHASE[step]
    wildcards = {k: v for k, v in (("generator", a.generator), ("subset", a.subset), ("judge", a.judge),
                                   ("model", a.model), ("policy", a.policy), ("seed", a.seed)) if v is not None}
    from . import reads

    with tracking.stage_run(cfg, step, _sections(cfg, phase), wildcards) as run:
        # the step sees a recording view of the config when LIBRARM_RECORD_READS is set
        view, log = reads.recording(cfg)
        metrics, artifacts = _run_step(step, view, a, threads)
        reads.save(step, log)
        run.log_metrics(metrics)
        for art in artifacts:
            run.log_artifact(art)
    print(json.dumps(_headline(metrics), indent=1, sort_keys=True, default=str))
    return 0


def _headline(metrics: Mapping[str, Any]) -> dict:
    return {k: v for k, v in metrics.items()
            if k not in ("provenance", "train_log", "cells", "overlap", "ci95", *CURVE_KEYS)}


def _run_step(step: str, cfg: dict, a: argparse.Namespace, threads: int | None) -> tuple[dict, list[str]]:
    out = a.out
    if step == "problems":
        from .problems import run_problems

        stats = run_problems(cfg, Path(out).parent)
        return stats, [out]
    if step == "bootstrap-tiny":
        from .tinyworld import run_bootstrap

        stats = run_bootstrap(cfg, a.inputs, a.models_dir, out, threads)
        return {"models": {k: v.get("accuracy") for k, v in stats["models"].items()}}, [out]
    if step == "prepare-model":
        from .gguf import run_prepare_model
        from .io import write_json

        info = run_prepare_model(cfg, a.model, a.models_dir)
        write_json(out, info)
        return {"parameters": info["parameters"]}, [out]
    if step == "bootstrap-stats":
        from .io import read_json, write_json

        stats: dict[str, Any] = {"models": {}, "origin": None}
        for p in a.inputs:
            d = read_json(p)
            if "params_hash" in d:          # the tiny-world bootstrap
                stats.update(d)
            else:
                stats["models"][Path(p).stem] = d
        write_json(out, stats)
        return {"models": {k: v.get("mean_accuracy") for k, v in stats["models"].items()}}, [out]
    if step == "sample":
        from .sampling import run_sample

        meta = run_sample(cfg, a.generator, a.subset, a.inputs[0], out, threads=threads)
        return meta, []
    if step == "sample-stats":
        from .sampling import summarize_samples

        return summarize_samples(a.inputs, out), [out]
    if step == "verify":
        from .verify import run_verify

        v = cfg["verify"]
        meta = run_verify(a.inputs[0], a.inputs[1:], out, workers=threads or 1,
                          timeout_s=v["timeout_s"], memory_mb=v["memory_mb"])
        return meta, []
    if step == "verify-stats":
        from .verify import summarize_verify

        return summarize_verify(a.inputs, out), [out]
    if step == "bench":
        from .bench import run_bench

        stats = run_bench(cfg, a.inputs, out, Path(out).with_name("stats.json"))
        return stats, [str(Path(out).with_name("stats.json"))]
    if step == "evaluate":
        from .evaluate import run_evaluate

        metrics = run_evaluate(cfg, a.judge, a.inputs[0], Path(out).parent, threads)
        return metrics, [out]
    if step == "eval-summary":
        from .evaluate import summarize_eval

        paths = {Path(p).parent.name: p for p in a.inputs}
        extra = {Path(p).name: p for p in a.extra}
        summary = summarize_eval(paths, out, Path(out).with_name("table.md"), params=cfg, bench_path=a.bench,
                                 judge_train_path=extra.get("train.jsonl"), train_stats_path=extra.get("stats.json"))
        return summary, [out, str(Path(out).with_name("table.md")), str(Path(out).with_name("comparisons.json"))]
    if step == "judge-data":
        from .train import run_judge_data

        stats = run_judge_data(cfg, a.inputs, a.problems, Path(out).parent)
        return stats, [out]
    if step == "rs":
        from .train import run_rs

        stats = run_rs(cfg, a.inputs[0], a.inputs[1:], Path(out).parent, threads)
        return stats, [out]
    if step == "train":
        from .train import train_judge

        data = {"train": "results/judge_data/train.jsonl", "val": "results/judge_data/val.jsonl",
                "sft": "results/rs/sft.jsonl"}
        kind = cfg["models"][a.model]["train"]
        log = train_judge(cfg, kind, a.model, data, a.models_dir, out, threads)
        # the curves go to the job's MLflow run as step metrics (tracking.curve_points)
        return {k: log[k] for k in ("global_step", "seconds", "tokens_per_s", *CURVE_KEYS) if k in log} | \
            {"final_val_accuracy": (log["val_curve"][-1]["val_accuracy"] if log.get("val_curve") else None)}, [out]
    if step == "train-stats":
        from .io import read_json, write_json

        stats = {}
        for p in a.inputs:
            d = read_json(p)
            stats[Path(p).stem] = {k: d.get(k) for k in ("kind", "init", "global_step", "seconds", "tokens_per_s",
                                                         "val_curve", "passrate_filter", "zero_advantage_share",
                                                         "reward_curve", "pairs")}
            stats[Path(p).stem]["loss_curve"] = [{"step": h.get("step"), "loss": h.get("loss")}
                                                 for h in d.get("log_history", []) if "loss" in h]
        write_json(out, stats)
        return {k: {"final_val_accuracy": (v["val_curve"][-1]["val_accuracy"] if v.get("val_curve") else None),
                    "seconds": v["seconds"], "tokens_per_s": v["tokens_per_s"]} for k, v in stats.items()}, [out]
    if step.startswith(("pairs-", "dpo", "policy-", "downstream-")):
        return _run_downstream_step(step, cfg, a, threads)
    if step == "report":
        from .report import build_report

        summary = build_report(cfg, Path(out).parent)
        return summary["headline"], [str(Path(out).with_name(n)) for n in ("metrics.json", "summary.json", "summary.md")] \
            + summary["artifacts"]
    raise SystemExit(f"unknown step {step}")


def _run_downstream_step(step: str, cfg: dict, a: argparse.Namespace, threads: int | None) -> tuple[dict, list[str]]:
    from . import downstream as ds

    out = a.out
    if step == "pairs-split":
        return ds.run_pool_split(cfg, a.inputs[0], Path(out).parent), []
    if step == "pairs-sample":
        from .sampling import run_sample

        pc = cfg["pairs"]
        sp = ds.policy_sampling_params(cfg, pc["policy"], pc["n"], pc.get("temperature", 1.0))
        meta = run_sample(sp, "policy", pc["pool"], a.inputs[0], out, threads=threads, progress=False)
        return {k: meta[k] for k in ("n_records", "generated_now", "reused", "tokens_per_s")}, []
    if step == "pairs-verify":
        from .verify import run_verify

        v = cfg["verify"]
        meta = run_verify(a.inputs[0], a.inputs[1:], out, workers=threads or 1, timeout_s=v["timeout_s"],
                          memory_mb=v["memory_mb"], progress=False)
        return {"accuracy": meta["accuracy"], "reasons": meta["reasons"]}, []
    if step == "pairs-label":
        return ds.run_judge_labels(cfg, a.judge, a.inputs[0], out, threads), []
    if step == "pairs-build":
        labels = {Path(p).stem: p for p in a.extra}
        stats = ds.run_build_pairs(cfg, a.inputs[0], labels, Path(out).parent)
        return {name: {k: v[k] for k in ("pairs_raw", "pairs_trained", "short", "label_accuracy")}
                for name, v in stats["labelers"].items()}, [out]
    if step == "dpo":
        from .config import model_ref
        from .dpo import run_dpo
        from .io import write_json

        init = model_ref(cfg, cfg["pairs"]["policy"])["path"]
        log = run_dpo(cfg, a.inputs[0], a.inputs[1], init, a.models_dir, name=a.policy, seed=int(a.seed),
                      threads=threads, budget=int(cfg["pairs"]["budget"]))
        write_json(out, log)
        return {k: log[k] for k in ("pairs", "steps", "selected_step", "selected_val_avg_at_k", "seconds",
                                    "tokens_per_s", "loss_curve", "val_curve")}, [out]
    if step == "dpo-stats":
        from .io import read_json, write_json

        stats = {}
        for p in a.inputs:
            d = read_json(p)
            stats[f"{d['labeler']}/seed-{d['seed']}"] = d
        write_json(out, stats)
        return {k: {"selected_val_avg_at_k": v["selected_val_avg_at_k"], "seconds": v["seconds"]}
                for k, v in stats.items()}, [out]
    if step == "policy-eval":
        m = ds.run_policy_eval(cfg, a.policy, a.models_dir, a.inputs, Path(out).parent, threads)
        return {"avg_at_k": m["avg_at_k"], "seconds": m["seconds"]}, [out]
    if step == "policy-metrics":
        m = ds.summarize_policy(cfg, a.policy, [Path(p).parent for p in a.inputs],
                                a.extra[0] if a.extra else None, out)
        return {"avg_at_k": m["avg_at_k"], "pairs": m["pairs"], "label_accuracy": m["label_accuracy"]}, [out]
    if step == "downstream-summary":
        s = ds.summarize_downstream(cfg, a.inputs, out)
        return {"gain_all": {k: v["gain"].get("all") for k, v in s["policies"].items() if v.get("gain")}}, [out]
    raise SystemExit(f"unknown step {step}")


def cmd_score(a: argparse.Namespace) -> int:
    """Score any file in the public Libra Bench schema with any judge from params."""
    from .evaluate import run_evaluate

    overlays = []
    if a.model:
        name = a.judge
        overlays.append({"models": {f"cli_{name}": {"source": "path", "path": a.model}},
                         "judges": {name: {"model": f"cli_{name}", "backend": a.backend, "kind": a.kind}}})
    cfg = load_params(a.params, a.preset or (), overlays)
    if a.judge not in cfg["judges"]:
        raise ConfigError(f"judge {a.judge!r} is not in params 'judges' ({', '.join(cfg['judges'])}); "
                          "pass --model PATH to score a model folder directly")
    metrics = run_evaluate(cfg, a.judge, a.bench, a.out, a.threads)
    print(json.dumps(_headline(metrics), indent=1, sort_keys=True, default=str))
    return 0


def cmd_dvc_yaml(a: argparse.Namespace) -> int:
    from .phases import check_dvc_yaml, render_dvc_yaml

    if a.check:
        problems = check_dvc_yaml(a.path)
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    Path(a.path).write_text(render_dvc_yaml())
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
    from .seeds import run_seed_summary

    text = run_seed_summary(a.exp_json)
    if a.out:
        Path(a.out).write_text(text)
    else:
        print(text)
    return 0


def cmd_profile(a: argparse.Namespace) -> int:
    from .profile import latest_log, profile_report

    print(profile_report(a.log or latest_log(), a.cores, a.benchmarks), end="")
    return 0


def cmd_train_tiny(a: argparse.Namespace) -> int:
    """Retrain the tiny models from params and (with --ship) store them as the shipped weights."""
    import tempfile

    from .problems import run_problems
    from .tinyworld import run_bootstrap, ship_models

    cfg = load_params(a.params, a.preset or ())
    work = Path(a.workdir or tempfile.mkdtemp(prefix="librarm-tiny-"))
    run_problems(cfg, work / "problems")
    files = [str(work / "problems" / f"{s['name']}.jsonl") for s in cfg["problems"]["sets"]]
    stats = run_bootstrap(cfg, files, work / "models", work / "stats.json", a.threads, force_train=True,
                          cache_dir=work / "cache")
    print(json.dumps({k: v for k, v in stats["models"].items()}, indent=1))
    if a.ship:
        ship_models(cfg, work / "models", stats["train_log"])
        print(f"shipped to {cfg['bootstrap']['shipped_dir']}")
    return 0


def cmd_track_flush(a: argparse.Namespace) -> int:
    from .tracking import SPOOL_DIR, flush_spool, tracking_uri

    n = flush_spool()
    print(f"{n} job records from {SPOOL_DIR} imported into {tracking_uri()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="librarm", description=__doc__)
    ap.add_argument("--debug", action="store_true", help="show the traceback of an expected error too "
                                                          "(or set LIBRARM_DEBUG=1)")
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("stage", help="run one pipeline step (called by the Snakemake rules)")
    s.add_argument("step")
    s.add_argument("--config", required=True, help="effective config (JSON written by the Snakefile, or a params YAML)")
    s.add_argument("--inputs", nargs="*", default=[])
    s.add_argument("--problems", nargs="*", default=[])
    s.add_argument("--bench")
    s.add_argument("--extra", nargs="*", default=[])
    s.add_argument("--out", required=True)
    s.add_argument("--models-dir")
    for w in ("generator", "subset", "judge", "model", "policy", "seed"):
        s.add_argument(f"--{w}")
    s.add_argument("--threads", type=int, default=None)
    s.set_defaults(func=cmd_stage)

    sc = sub.add_parser("score", help="score a Libra-Bench-schema file with a judge")
    sc.add_argument("--bench", required=True)
    sc.add_argument("--judge", required=True, help="a key of params 'judges' (or a new name with --model)")
    sc.add_argument("--model", help="a model folder to use as the judge")
    sc.add_argument("--backend", default="hf", choices=["hf", "vllm", "http"])
    sc.add_argument("--kind", default="generative", choices=["generative", "scalar"])
    sc.add_argument("--params", default="params.yaml")
    sc.add_argument("--preset", action="append")
    sc.add_argument("--out", required=True)
    sc.add_argument("--threads", type=int, default=None)
    sc.set_defaults(func=cmd_score)

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
    pf.add_argument("--benchmarks", default="results/logs/benchmarks")
    pf.set_defaults(func=cmd_profile)

    tf = sub.add_parser("track-flush", help="import the spooled job records (mlflow/spool) into the MLflow store")
    tf.set_defaults(func=cmd_track_flush)

    t = sub.add_parser("train-tiny", help="retrain the tiny-world models (and --ship them)")
    t.add_argument("--params", default="params.yaml")
    t.add_argument("--preset", action="append")
    t.add_argument("--ship", action="store_true")
    t.add_argument("--workdir")
    t.add_argument("--threads", type=int, default=2)
    t.set_defaults(func=cmd_train_tiny)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import os

    from .io import InputError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, InputError, FileNotFoundError, ValueError, KeyError) as exc:
        # expected failures (bad params, bad input, a missing file, a setting that cannot work) get one
        # line that names the file, line or key; anything else keeps its traceback
        if args.debug or os.environ.get("LIBRARM_DEBUG", "").lower() in ("1", "true", "yes"):
            raise
        msg = str(exc) if not isinstance(exc, KeyError) else f"missing key {exc}"
        print(f"error: {msg}  (librarm --debug ... shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
