"""The tiny world's models: a byte-level tokenizer with a chat template, tiny Llama-style causal
LMs trained from scratch on CPU, and the corpora that give each model its skill.

Skill comes from data, not from a dial at inference time: a generator is trained on traces in
which each arithmetic step is wrong with probability `step_noise`, so it makes that kind of slip
when it samples. The base judge starts from the base policy and is tuned only to the judging format
on its *own* solve-then-compare traces (no correctness labels), so its accuracy is what it is.
Saved folders are ordinary Hugging Face folders; later stages load them with from_pretrained.
"""
from __future__ import annotations

import math
import random
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from librarm.engines.base import SamplingConfig
from librarm.run.io import StageIO, read_json, set_tree_mode, stable_hash, stable_seed, tree_sha256, write_json
from librarm.run.paths import MODEL_DIR, RESUME_BOOTSTRAP
from librarm.run.settings import BootstrapSettings, JudgeSettings, Models, ModelSpec, ProblemsSettings, Seed
from librarm.stages.problems import ArithmeticProblem, in_problem_region, random_arithmetic

# Bump when the meaning of the bootstrap params changes (corpus format, training recipe).
TINY_WORLD_VERSION = 1
# Bump when the judging trace format changes (retrains the judges only, not the core or generators).
JUDGE_TRACE_FORMAT = 3
SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer():
    """Byte-level tokenizer (total: any string encodes), with chat special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(SPECIAL_TOKENS)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<|pad|>", eos_token="<|end|>",
                                  additional_special_tokens=SPECIAL_TOKENS[2:])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_model(arch: Mapping[str, int], vocab_size: int, pad_id: int, eos_id: int, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=arch["hidden_size"], intermediate_size=arch["intermediate_size"],
        num_hidden_layers=arch["num_layers"], num_attention_heads=arch["num_heads"],
        num_key_value_heads=arch["num_heads"], max_position_embeddings=arch["max_positions"],
        tie_word_embeddings=True, pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=None,
    )
    return LlamaForCausalLM(cfg)


# ----------------------------------------------------------------------------- corpora
def noisy_trace(prob: ArithmeticProblem, rng: random.Random, step_noise: float, malformed_rate: float) -> str:
    """A solution trace whose steps slip with probability step_noise (errors propagate)."""
    cur = prob.start
    lines = []
    for op, b in prob.ops:
        res = cur + b if op == "+" else cur - b
        if rng.random() < step_noise:
            res = max(0, res + rng.choice([-2, -1, 1, 2]))
            if res == (cur + b if op == "+" else cur - b):
                res += 1
        lines.append(f"{cur}{op}{b}={res}")
        cur = res
    r = rng.random()
    if r < malformed_rate / 2:            # thinking only: stops after the block, no final answer
        return "<think>" + "\n".join(lines) + "</think>"
    if r < malformed_rate:                # rambling: re-checks forever (truncated at sampling time)
        return "<think>" + "\n".join(lines + ["wait, check " + lines[-1]] * 5) + "</think>\n\\boxed{" + str(cur) + "}"
    return "<think>" + "\n".join(lines) + "</think>\n\\boxed{" + str(cur) + "}"


def corpus_problem(rng: random.Random, max_value: int, max_operand: int) -> ArithmeticProblem:
    """A training-corpus problem: never in the region the problem sets are drawn from."""
    while True:
        prob = random_arithmetic(rng, rng.randint(1, 5), max_value, max_operand)
        if not in_problem_region(prob):
            return prob


# ----------------------------------------------------------------------------- training
def encode_pair(tok, prompt: str, completion: str, max_len: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) with the prompt masked; the completion ends with EOS."""
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    c = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = (p + c)[:max_len]
    labels = ([-100] * len(p) + c)[:max_len]
    return ids, labels


def train_lm(model, tok, examples: Sequence[tuple[str, str]], steps: int, batch_size: int, lr: float,
             seed: int, max_len: int, desc: str = "train", log_every: int = 100) -> list[dict]:
    """Plain AdamW with warmup + cosine decay on (prompt, completion) pairs, prompt tokens masked."""
    import torch
    from tqdm import tqdm

    rng = random.Random(seed)
    torch.manual_seed(seed)
    encoded = [encode_pair(tok, p, c, max_len) for p, c in examples]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    model.train()
    pad = tok.pad_token_id
    curve = []
    for step in tqdm(range(steps), desc=desc, mininterval=5):
        batch = [encoded[rng.randrange(len(encoded))] for _ in range(batch_size)]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((batch_size, width), pad, dtype=torch.long)
        labels = torch.full((batch_size, width), -100, dtype=torch.long)
        for i, (x, y) in enumerate(batch):
            ids[i, : len(x)] = torch.tensor(x)
            labels[i, : len(y)] = torch.tensor(y)
        # Right padding under a causal mask: real tokens never attend to pads, and pad positions
        # carry no label, so no attention mask is needed (and SDPA keeps its fast causal path).
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % log_every == 0 or step == steps - 1:
            curve.append({"step": step, "loss": round(loss.item(), 4)})
    model.eval()
    return curve


def save_model(model, tok, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    set_tree_mode(tmp)              # safetensors writes 0600
    tmp.rename(out_dir)


# ----------------------------------------------------------------------------- bootstrap stage
def bootstrap_hash(*, bootstrap: BootstrapSettings, judge: JudgeSettings, problems: ProblemsSettings,
                   models: Models, seed: Seed) -> str:
    """Everything that determines the tiny models' weights."""
    return stable_hash(TINY_WORLD_VERSION, JUDGE_TRACE_FORMAT, seed,
                       {k: v for k, v in bootstrap.as_written().items()
                        if k not in ("shipped_dir", "eval_samples", "skill_bands")},
                       {k: v.as_written() for k, v in tiny_models(models=models).items()},
                       problems.synthetic.as_written(), judge.prompt_template,
                       judge.system_prompt)


def tiny_models(*, models: Models) -> dict[str, ModelSpec]:
    """The models the bootstrap stage makes (source `tiny`), by name."""
    return {k: v for k, v in models.items() if v.source == "tiny"}


def train_tiny_models(out_root: str | Path, threads: int | None = None,
                      cache_dir: str | Path | None = RESUME_BOOTSTRAP, *, bootstrap: BootstrapSettings,
                      problems: ProblemsSettings, judge: JudgeSettings, models: Models, seed: Seed) -> dict:
    """Train every tiny model of `models` into out_root/<name>: core -> noisy fine-tunes -> judge."""
    import copy

    import torch

    if threads:
        torch.set_num_threads(threads)
    b = bootstrap
    syn = problems.synthetic
    max_value, max_operand = syn.max_value, syn.max_operand
    tok = build_tokenizer()
    max_len = b.architecture["max_positions"]
    out_root = Path(out_root)
    tiny = tiny_models(models=models)
    log: dict[str, Any] = {}

    def gen_examples(noise: float, n: int, tag: str) -> list[tuple[str, str]]:
        rng = random.Random(stable_seed(seed, "corpus", tag))
        ex = []
        for _ in range(n):
            prob = corpus_problem(rng, max_value, max_operand)
            prompt = tok.apply_chat_template([{"role": "user", "content": prob.text()}], tokenize=False,
                                             add_generation_prompt=True)
            ex.append((prompt, noisy_trace(prob, rng, noise, b.malformed_rate)))
        return ex

    t0 = time.time()
    # The shared core (clean traces) is the slow part; it is cached outside the DVC outputs so that
    # changing a model's step_noise retrains only the short fine-tunes.
    keys = cache_keys(bootstrap=bootstrap, problems=problems, judge=judge, models=models, seed=seed)
    core_key = keys["_core"]
    core_dir = Path(cache_dir) / f"core-{core_key}" if cache_dir else None
    if core_dir is not None and (core_dir / "config.json").exists():
        from transformers import AutoModelForCausalLM

        core = AutoModelForCausalLM.from_pretrained(core_dir)
        log["core"] = read_json(core_dir / "train_log.json")
        log["core"]["cached"] = True
    else:
        core = build_model(b.architecture, len(tok), tok.pad_token_id, tok.eos_token_id, stable_seed(seed, "init"))
        core_curve = train_lm(core, tok, gen_examples(0.0, 20000, "core"), b.core_steps, b.batch_size,
                              b.learning_rate, stable_seed(seed, "train", "core"), max_len, "core")
        log["core"] = {"loss_curve": core_curve, "seconds": round(time.time() - t0, 1)}
        if core_dir is not None:
            save_model(core, tok, core_dir)
            write_json(core_dir / "train_log.json", log["core"])
    trained = {}
    for name, spec in tiny.items():
        if spec.role not in ("generator", "policy", "teacher") or spec.step_noise is None:
            continue
        key = keys[name]
        model, entry = _cached_model(cache_dir, key)
        if model is None:
            t0 = time.time()
            model = copy.deepcopy(core)
            curve = train_lm(model, tok, gen_examples(spec.step_noise, 8000, name), b.finetune_steps,
                             b.batch_size, b.learning_rate / 3, stable_seed(seed, "train", name), max_len, name)
            entry = {"loss_curve": curve, "seconds": round(time.time() - t0, 1)}
            _store_model(cache_dir, key, model, tok, entry)
        save_model(model, tok, out_root / name)
        trained[name] = (model, key)
        log[name] = entry
    for name, spec in tiny.items():
        if spec.role != "judge":
            continue
        init, _ = trained[spec.init]
        key = keys[name]
        model, entry = _cached_model(cache_dir, key)
        if model is None:
            t0 = time.time()
            examples, agree = judge_format_traces(init, tok, max_value, max_operand, b.judge_traces,
                                                  stable_seed(seed, "judge-traces", name), judge=judge)
            model = copy.deepcopy(init)
            curve = train_lm(model, tok, examples, b.judge_steps, b.batch_size, b.learning_rate / 3,
                             stable_seed(seed, "train", name), max_len, name)
            entry = {"loss_curve": curve, "seconds": round(time.time() - t0, 1), "traces": len(examples),
                     "own_answer_agreement_rate": agree}
            _store_model(cache_dir, key, model, tok, entry)
        save_model(model, tok, out_root / name)
        log[name] = entry
    return log


def cache_keys(*, bootstrap: BootstrapSettings, problems: ProblemsSettings, judge: JudgeSettings, models: Models,
               seed: Seed) -> dict[str, str]:
    """Cache key of the shared core ("_core") and of every tiny model: everything its weights depend on."""
    b = bootstrap
    syn = problems.synthetic
    keys = {"_core": stable_hash(TINY_WORLD_VERSION, seed, b.architecture, b.core_steps, b.batch_size,
                                 b.learning_rate, b.malformed_rate, syn.max_value, syn.max_operand)}
    tiny = tiny_models(models=models)
    for name, spec in tiny.items():
        if spec.role in ("generator", "policy", "teacher") and spec.step_noise is not None:
            keys[name] = stable_hash(keys["_core"], name, spec.as_written(), b.finetune_steps)
    for name, spec in tiny.items():
        if spec.role == "judge":
            keys[name] = stable_hash(keys[spec.init], name, spec.as_written(), JUDGE_TRACE_FORMAT, b.judge_steps,
                                     b.judge_traces, judge.prompt_template, judge.system_prompt)
    return keys


def _cached_model(cache_dir, key):
    """(model, train log) from the bootstrap cache, or (None, None)."""
    d = Path(cache_dir) / f"model-{key}" if cache_dir else None
    if d is None or not (d / "config.json").exists():
        return None, None
    from transformers import AutoModelForCausalLM

    entry = read_json(d / "train_log.json")
    entry["cached"] = True
    return AutoModelForCausalLM.from_pretrained(d), entry


def _store_model(cache_dir, key, model, tok, entry) -> None:
    if cache_dir:
        d = Path(cache_dir) / f"model-{key}"
        save_model(model, tok, d)
        write_json(d / "train_log.json", entry)


def compare_line(mine: str, theirs: str) -> str:
    """The judge's comparison step on zero-padded answers, digit pairs written side by side, then
    a per-digit match ("mine=043 theirs=044 digits=0/0,4/4,3/4 match=yyn"). Whole-number equality,
    and matching digits far apart, were not learned by the tiny judges (they sat near chance);
    copying digits and comparing adjacent ones is."""
    width = max(3, len(mine), len(theirs))
    a, b = mine.zfill(width), theirs.zfill(width)
    pairs = ",".join(f"{x}/{y}" for x, y in zip(a, b))
    return f"mine={a} theirs={b} digits={pairs} match={''.join('y' if x == y else 'n' for x, y in zip(a, b))}"


def judge_format_traces(policy, tok, max_value, max_operand, n, seed, *, judge: JudgeSettings):
    """The base judge's training data: for a problem and a candidate response, the policy's OWN
    sampled solution, then a comparison of its answer with the response's (prompted as `judge`
    says). No correctness label enters: the verdict is agreement with the policy's own attempt.
    `seed` is this draw's seed (derived from the run's)."""
    from librarm.engines.base import SampleRequest
    from librarm.engines.hf import HFSampler
    from librarm.judging.judge import judge_prompts
    from librarm.judging.think import split_think
    from librarm.judging.verifier import extract_boxed

    rng = random.Random(seed)
    probs = [corpus_problem(rng, max_value, max_operand) for _ in range(n)]
    # Candidate responses to judge: traces of a random skill level (their correctness is not used).
    candidates = [noisy_trace(p, rng, rng.choice([0.0, 0.1, 0.3, 0.5]), 0.0) for p in probs]
    sampler = HFSampler("policy", SamplingConfig(temperature=1.0, max_new_tokens=96, batch_size=256, top_p=1.0),
                        model=policy, tokenizer=tok)
    own = sampler.generate([SampleRequest([{"role": "user", "content": p.text()}], stable_seed(seed, i))
                            for i, p in enumerate(probs)])
    examples = []
    agree = 0
    for prob, cand, mine in zip(probs, candidates, own):
        parts = split_think(mine.text)
        my_answer = extract_boxed(parts.final) if parts.has_final and mine.finish_reason == "stop" else None
        their_answer = extract_boxed(split_think(cand).final)
        if my_answer is None or their_answer is None:
            continue
        verdict = "correct" if my_answer == their_answer else "incorrect"
        agree += verdict == "correct"
        (msgs,), _ = judge_prompts([{"question": prob.text(), "response": split_think(cand).final}], judge)
        prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        completion = f"<think>{parts.thinking}\n{compare_line(my_answer, their_answer)}</think>\n\\boxed{{{verdict}}}"
        examples.append((prompt, completion))
    return examples, round(agree / max(1, len(examples)), 4)


def run_bootstrap(problem_files: Sequence[str | Path], out_root: str | Path,
                  stats_path: str | Path, threads: int | None = None, force_train: bool = False,
                  cache_dir: str | Path | None = RESUME_BOOTSTRAP, *, bootstrap: BootstrapSettings,
                  problems: ProblemsSettings, judge: JudgeSettings, models: Models, seed: Seed) -> dict:
    """Stage `bootstrap`: tiny models (shipped weights when their params hash matches, else trained),
    then skill bands measured on the eval subsets and written to stats.json."""
    from librarm.run.provenance import model_identity, provenance

    if threads:     # measure_skill runs the models on either path; Snakemake's OMP_NUM_THREADS follows --cores
        import torch

        torch.set_num_threads(threads)
    out_root = Path(out_root)
    names = list(tiny_models(models=models))
    phash = bootstrap_hash(bootstrap=bootstrap, judge=judge, problems=problems, models=models, seed=seed)
    shipped = bootstrap.shipped_dir
    manifest = Path(shipped) / "manifest.json" if shipped else None
    origin = "trained"
    train_log: dict = {}
    if (not force_train and manifest and manifest.exists() and read_json(manifest)["params_hash"] == phash
            and all((Path(shipped) / n).is_dir() for n in names)):
        for n in names:
            if (out_root / n).exists():
                shutil.rmtree(out_root / n)
            shutil.copytree(Path(shipped) / n, out_root / n)
        origin = "shipped"
        train_log = read_json(manifest).get("train_log", {})
    elif names:
        train_log = train_tiny_models(out_root, threads, cache_dir, bootstrap=bootstrap, problems=problems,
                                      judge=judge, models=models, seed=seed)
    bands = measure_skill(problem_files, out_root, names, bootstrap=bootstrap, problems=problems, judge=judge,
                          models=models, seed=seed)
    stats = {
        "params_hash": phash, "origin": origin, "models": bands,
        "train_log": train_log,
        "provenance": provenance(models=[model_identity(str(out_root / n)) for n in names]),
    }
    write_json(stats_path, stats)
    return stats


def step_bootstrap_tiny(io: StageIO, *, bootstrap: BootstrapSettings, problems: ProblemsSettings,
                        judge: JudgeSettings, models: Models, seed: Seed) -> tuple[dict, list[str]]:
    """Stage step `bootstrap-tiny`: every tiny model into its output folder (one parent folder)."""
    names = list(tiny_models(models=models))
    io.keyed("models", MODEL_DIR, "model", names, output=True)   # the rule's folders are MODEL_DIR's, one per model
    root = Path(MODEL_DIR).parent                  # the models are trained side by side in one folder
    stats = run_bootstrap(io.input_list("problems"), root, io.output("stats"), io.threads, bootstrap=bootstrap,
                          problems=problems, judge=judge, models=models, seed=seed)
    return {"models": {k: v.get("accuracy") for k, v in stats["models"].items()}}, [io.output("stats")]




def measure_skill(problem_files, out_root, names, *, bootstrap: BootstrapSettings, problems: ProblemsSettings,
                  judge: JudgeSettings, models: Models, seed: Seed) -> dict:
    """Accuracy of each tiny generator/policy (sampled as in the sample stage) on the eval subsets
    (generators) or the unlabeled pool (policy), and whether it lands in its band."""
    from librarm.engines.base import SampleRequest
    from librarm.engines.hf import HFSampler
    from librarm.judging.think import split_think
    from librarm.judging.verifier import extract_boxed
    from librarm.stages.problems import load_problem_sets

    loaded = load_problem_sets(problem_files)
    b = bootstrap
    # Fixed decoding (temperature 1, as generators sample by default) so that the bands do not
    # move when sampling params change, and the bootstrap does not depend on them.
    cfg = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=128, batch_size=128)
    out = {}
    for name in names:
        role = models[name].role
        if role == "judge":
            out[name] = {"role": role, **measure_judge(Path(out_root) / name, cfg, problems=problems, judge=judge,
                                                       seed=seed)}
            continue
        if role not in ("generator", "policy", "teacher"):
            out[name] = {"role": role}
            continue
        want_role = "dpo_pool" if role == "policy" else "eval"
        by_set: dict[str, list[dict]] = {}
        for rec in loaded.values():
            if rec["role"] == want_role:
                by_set.setdefault(rec["set"], []).append(rec)
        sampler = HFSampler(str(Path(out_root) / name), cfg)
        acc = {}
        for set_name, recs in sorted(by_set.items()):
            recs = recs[: b.eval_samples]
            res = sampler.generate([SampleRequest([{"role": "user", "content": r["problem"]}],
                                                  stable_seed(seed, "skill", name, r["id"])) for r in recs])
            ok = 0
            for r, s in zip(recs, res):
                parts = split_think(s.text)
                ok += s.finish_reason == "stop" and parts.has_final and extract_boxed(parts.final) == r["answer"]
            acc[set_name] = round(ok / len(recs), 4)
        mean = round(sum(acc.values()) / len(acc), 4)
        band = b.skill_bands.get(name)
        out[name] = {"role": role, "accuracy": acc, "mean_accuracy": mean, "band": band,
                     "in_band": None if band is None else band[0] <= mean <= band[1]}
    return out


def measure_judge(model_dir, cfg: SamplingConfig, n: int = 200, *, problems: ProblemsSettings, judge: JudgeSettings,
                  seed: Seed) -> dict:
    """A tiny judge's accuracy on balanced synthetic items from the corpus region (never an eval
    or pool problem): half the candidate answers right, half off by a small slip. Labels are used
    only to measure here, never to train."""
    from librarm.engines.hf import HFSampler
    from librarm.judging.judge import build_judge_requests, judge_verdict

    syn = problems.synthetic
    rng = random.Random(stable_seed(seed, "judge-skill"))
    items = []
    for i in range(n):
        prob = corpus_problem(rng, syn.max_value, syn.max_operand)
        label = i % 2
        answer = prob.answer if label else prob.answer + rng.choice([-2, -1, 1, 2])
        items.append({"index": i, "question": prob.text(), "response": f"\\boxed{{{answer}}}", "label": label})
    sampler = HFSampler(str(model_dir), cfg)
    batch = build_judge_requests(items, judge, seed, ("judge-skill",), tok=sampler.tok)
    verdicts: list[int | None] = [None] * n
    for (i, _), s in zip(batch.owners, sampler.generate(batch.requests)):
        verdicts[i] = judge_verdict(s).value
    acc = sum(v == it["label"] for v, it in zip(verdicts, items)) / n
    return {"judge_accuracy_synthetic": round(acc, 4), "unparsed_rate": round(sum(v is None for v in verdicts) / n, 4)}


def retrain_tiny(workdir: str | Path | None, threads: int | None, ship: bool = False, *,
                 bootstrap: BootstrapSettings, problems: ProblemsSettings, judge: JudgeSettings, models: Models,
                 seed: Seed) -> dict:
    """`librarm train-tiny`: the problem sets and the tiny models trained from scratch in workdir
    (a fresh temporary folder when None); with ship, stored as bootstrap.shipped_dir."""
    import tempfile

    from librarm.stages.problems import run_problems

    work = Path(workdir or tempfile.mkdtemp(prefix="librarm-tiny-"))
    names = problems.names()
    sets = {n: work / "problems" / f"{n}.jsonl" for n in names}
    run_problems(sets, {n: work / "problems" / f"{n}.quarantine.jsonl" for n in names},
                 work / "problems" / "stats.json", problems=problems, seed=seed)
    stats = run_bootstrap([str(p) for p in sets.values()], work / "models", work / "stats.json", threads,
                          force_train=True, cache_dir=work / "cache", bootstrap=bootstrap, problems=problems,
                          judge=judge, models=models, seed=seed)
    if ship:
        ship_models(work / "models", stats["train_log"], bootstrap=bootstrap, judge=judge, problems=problems,
                    models=models, seed=seed)
    return stats


def ship_models(trained_root: str | Path, train_log: Mapping[str, Any], *, bootstrap: BootstrapSettings,
                judge: JudgeSettings, problems: ProblemsSettings, models: Models, seed: Seed) -> None:
    """Copy trained tiny models into bootstrap.shipped_dir with a manifest naming their params hash."""
    shipped = Path(bootstrap.shipped_dir)
    names = list(tiny_models(models=models))
    if shipped.exists():
        shutil.rmtree(shipped)
    shipped.mkdir(parents=True)
    for n in names:
        shutil.copytree(Path(trained_root) / n, shipped / n)
    write_json(shipped / "manifest.json", {
        "params_hash": bootstrap_hash(bootstrap=bootstrap, judge=judge, problems=problems, models=models, seed=seed),
        "tiny_world_version": TINY_WORLD_VERSION,
        "models": {n: tree_sha256(shipped / n) for n in names}, "train_log": train_log,
    })
