"""The sample phase: resumable sampling of each generator on each problem set.

Every sample has its own seed derived from (seed, generator, problem id, sample index), so a
sample does not depend on which batch, chunk or rerun produced it.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from librarm import engines
from librarm.engines.base import Sampler, SampleRequest, SampleResult, SamplingConfig
from librarm.judging.think import split_think
from librarm.run.io import StageIO, read_jsonl, stable_hash, stable_seed, write_json, write_jsonl
from librarm.run.paths import RESUME_SAMPLES
from librarm.run.settings import Generators, GeneratorSpec, Models, SamplingSettings, Seed


# ----------------------------------------------------------------------------- sample stage
def problem_messages(problem: Mapping[str, Any], system_prompt: str | None, template: str | None = None) -> list[dict]:
    content = (template or "{problem}").format(problem=problem["problem"])
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return msgs + [{"role": "user", "content": content}]


def sample_seed(seed: int, generator: str, problem_id: str, idx: int) -> int:
    return stable_seed(seed, "sample", generator, problem_id, idx)


def run_sample(generator: str, subset: str, problems_path: str | Path,
               out_path: str | Path, meta_path: str | Path, store_root: str | Path = RESUME_SAMPLES,
               threads: int | None = None, sampler: Sampler | None = None,
               progress: bool = True, spec: GeneratorSpec | None = None, *,
               sampling: SamplingSettings, seed: Seed, generators: Generators, models: Models) -> dict:
    """Stage `sample`: n samples per problem for one (generator, subset) to out_path; counts,
    speed and provenance to meta_path.

    Work is cut into fixed chunks (a block of `batch_size` problems x one sample index). A finished
    chunk is stored atomically under `store_root` (outside the DVC outputs), keyed by everything
    that changes a sample except `n`; so a rerun after an interruption, or after raising n, only
    generates the missing chunks, and the final file is the same as a clean run's. spec defaults
    to `generators[generator]`; `sampling` is the `sampling` section, or the caller's own (the
    policy passes its own).
    """
    from tqdm import tqdm

    from librarm.run.provenance import model_identity, provenance
    gspec = spec or generators[generator]
    scfg = sampling
    cfg = SamplingConfig(temperature=scfg.temperature, top_p=scfg.top_p, batch_size=scfg.batch_size,
                         max_new_tokens=gspec.max_new_tokens or scfg.max_new_tokens)
    n = scfg.n
    problems = read_jsonl(problems_path, {"id": "str", "problem": "str", "answer": "str"}, id_field="id").records
    if gspec.backend == "pseudo":
        ident = {"model": f"pseudo:{gspec.pseudo}"}
    else:
        from librarm.run.models import model_ref

        ref = model_ref(models, gspec.model)
        ident = model_identity(ref["path"], ref["revision"])
    system_prompt = scfg.system_prompt
    template = scfg.problem_template
    key = stable_hash(ident, asdict(cfg), system_prompt, template, seed, generator, subset,
                      [p["id"] for p in problems], gspec.prompt_opens_think)
    store = Path(store_root) / generator / subset / key
    store.mkdir(parents=True, exist_ok=True)
    bs = cfg.batch_size
    chunks = [(g, k) for k in range(n) for g in range(0, len(problems), bs)]
    todo = [c for c in chunks if not (store / f"chunk-{c[0]:06d}-{c[1]:04d}.jsonl").exists()]
    started = time.time()
    generated = 0
    gen_tokens = 0
    if todo:
        sampler = sampler or engines.make_sampler(gspec, models, cfg, seed, threads)
        for g, k in tqdm(todo, desc=f"sample {generator}/{subset}", disable=not progress):
            block = problems[g:g + bs]
            reqs = [SampleRequest(problem_messages(p, system_prompt, template),
                                  sample_seed(seed, generator, p["id"], k), p) for p in block]
            results = sampler.generate(reqs)
            recs = [_sample_record(p, k, r, res, generator, subset, cfg, gspec) for p, r, res in zip(block, reqs, results)]
            write_jsonl(store / f"chunk-{g:06d}-{k:04d}.jsonl", recs)
            generated += len(recs)
            gen_tokens += sum(r["completion_tokens"] for r in recs)
    elapsed = time.time() - started
    by_key = {}
    for g, k in chunks:
        for rec in read_jsonl(store / f"chunk-{g:06d}-{k:04d}.jsonl").records:
            by_key[(rec["problem_id"], rec["sample_idx"])] = rec
    order = {p["id"]: i for i, p in enumerate(problems)}
    records = sorted(by_key.values(), key=lambda r: (order[r["problem_id"]], r["sample_idx"]))
    write_jsonl(out_path, records)
    meta = {
        "generator": generator, "subset": subset, "n": n, "n_records": len(records),
        "generated_now": generated, "reused": len(records) - generated,
        "tokens_per_s": round(gen_tokens / elapsed, 1) if generated and elapsed > 0 else None,
        "finish_length": sum(r["finish_reason"] == "length" for r in records),
        "has_think": sum(r["has_think"] for r in records),
        "store_key": key, "sampling": asdict(cfg),
        "provenance": provenance(models=[ident], data=[str(problems_path)]),
    }
    write_json(meta_path, meta)
    return meta


def step_sample(io: StageIO, *, sampling: SamplingSettings, seed: Seed, generators: Generators,
                models: Models) -> tuple[dict, list[str]]:
    meta = run_sample(io.wildcard("generator"), io.wildcard("subset"), io.input("problems"),
                      io.output("samples"), io.output("meta"), threads=io.threads, sampling=sampling, seed=seed,
                      generators=generators, models=models)
    return meta, []


def _sample_record(problem, idx, req, res: SampleResult, generator, subset, cfg: SamplingConfig, gspec) -> dict:
    parts = split_think(res.text, prompt_opens_think=gspec.prompt_opens_think, reasoning=res.reasoning)
    with_cot = res.text if res.reasoning is None else f"<think>{res.reasoning}</think>\n{res.text}"
    return {
        "sample_id": f"{generator}|{problem['id']}|{idx}",
        "problem_id": problem["id"], "subset": subset, "generator": generator, "sample_idx": idx,
        "seed": req.seed, "question": problem["problem"],
        "response_with_cot": with_cot, "response": parts.final, "has_think": parts.has_think,
        "think_closed": parts.closed, "finish_reason": res.finish_reason,
        "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
        "sampling": {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens},
    }


def summarize_samples(meta_paths: Sequence[str | Path], out_path: str | Path) -> dict:
    metas = [json.loads(Path(p).read_text()) for p in meta_paths]
    stats = {
        "jobs": {f"{m['generator']}/{m['subset']}": {k: m[k] for k in ("n_records", "generated_now", "reused",
                                                                       "finish_length", "has_think", "tokens_per_s")}
                 for m in metas},
        "n_records": sum(m["n_records"] for m in metas),
        "truncated_rate": (sum(m["finish_length"] for m in metas) / max(1, sum(m["n_records"] for m in metas))),
    }
    write_json(out_path, stats)
    return stats


def step_sample_stats(io: StageIO) -> tuple[dict, list[str]]:
    return summarize_samples(io.input_list("meta"), io.output("stats")), [io.output("stats")]
