"""Judges: the prompt, verdict parsing, and the generative and scalar (classifier) reward models."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .io import stable_seed
from .settings import JudgeSpec, seed_of
from .think import split_think

# A verdict is \boxed{correct|incorrect} (or yes/no, true/false) or "Verdict: correct".
_VERDICT_RE = re.compile(
    r"\\boxed\{\s*(?:\\text\{\s*)?(correct|incorrect|yes|no|true|false)\s*\}?\s*\}"
    r"|verdict\s*[:=]\s*\**\s*(correct|incorrect|yes|no|true|false)\b",
    re.IGNORECASE,
)
# Plain-language fallback for small chat models ("The answer is correct.", "... is not correct"),
# used only when no explicit verdict is present; negation flips it.
_PLAIN_RE = re.compile(r"\b(?:is|was|seems|looks|appears)\s+(not\s+)?(correct|incorrect|right|wrong)\b", re.IGNORECASE)
_POSITIVE = {"correct", "yes", "true", "right"}


def judge_messages(template: str, question: str, response: str, system_prompt: str | None = None) -> list[dict]:
    """The chat messages of one judging request: the template filled with the question and the
    response, after an optional system prompt."""
    content = template.format(question=question, response=response)
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [{"role": "user", "content": content}]


@dataclass(frozen=True)
class Verdict:
    value: int | None      # 1 correct, 0 incorrect, None no verdict
    status: str            # parsed | truncated | unterminated | no_verdict | overflow_skipped


def parse_verdict(text: str, finish_reason: str = "stop", prompt_opens_think: bool = False,
                  reasoning: str | None = None) -> Verdict:
    """The LAST verdict after the end of the thinking block. A truncated output or a thinking block
    with no closing tag has no verdict (counted), never a guess; a verdict inside the thinking
    does not count (first-match parsers are biased toward early, tentative verdicts)."""
    if finish_reason == "length":
        return Verdict(None, "truncated")
    parts = split_think(text, prompt_opens_think=prompt_opens_think, reasoning=reasoning)
    if not parts.closed:
        return Verdict(None, "unterminated")
    matches = list(_VERDICT_RE.finditer(parts.final))
    if matches:
        word = (matches[-1].group(1) or matches[-1].group(2)).lower()
        return Verdict(int(word in _POSITIVE), "parsed")
    plain = list(_PLAIN_RE.finditer(parts.final))
    if plain:
        negated, word = plain[-1].group(1), plain[-1].group(2).lower()
        return Verdict(int((word in _POSITIVE) != bool(negated)), "parsed")
    return Verdict(None, "no_verdict")


def fit_prompt(tok, template: str, system_prompt: str | None, question: str, response: str,
               max_tokens: int, overflow: str) -> tuple[list[dict] | None, str]:
    """Chat messages for one item within max_tokens: (messages, status) with status ok|truncated|skipped.
    truncate_response keeps the END of the response (where the answer is) behind a '[...]' marker."""
    from .sampling import render_chat

    def count(resp: str) -> int:
        msgs = judge_messages(template, question, resp, system_prompt)
        return len(tok(render_chat(tok, msgs), add_special_tokens=False)["input_ids"])

    if count(response) <= max_tokens:
        return judge_messages(template, question, response, system_prompt), "ok"
    if overflow == "skip":
        return None, "skipped"
    ids = tok(response, add_special_tokens=False)["input_ids"]
    lo, hi = 0, len(ids)          # find the longest tail that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count("[...]" + tok.decode(ids[len(ids) - mid:])) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        return None, "skipped"
    return judge_messages(template, question, "[...]" + tok.decode(ids[len(ids) - lo:]), system_prompt), "truncated"


@dataclass(frozen=True)
class JudgeRequests:
    """Every judging request of a batch of items, built one way for every stage that judges
    (evaluation, rejection sampling, GRPO pass rates and prompts, the tiny world's own checks)."""

    messages: list[list[dict] | None]    # per item: the chat messages, None when over the budget
    prompt_status: list[str]             # per item: ok | truncated | skipped
    requests: list[Any]                  # SampleRequests, one per (kept item, repeat)
    owners: list[tuple[int, int]]        # (item position, repeat) of each request


def judge_prompts(items: Sequence[Mapping[str, Any]], params: Mapping[str, Any],
                  tok=None) -> tuple[list[list[dict] | None], list[str]]:
    """The judging messages of items with `question` and `response` (judge.prompt_template,
    judge.system_prompt), held to judge.max_prompt_tokens (judge.overflow) when a tokenizer is
    given (a remote judge without one is sent as is): (messages or None, ok|truncated|skipped)."""
    from .settings import JudgeSettings

    j = JudgeSettings.from_params(params)
    messages: list[list[dict] | None] = []
    status: list[str] = []
    for it in items:
        if tok is None:
            msgs, st = judge_messages(j.prompt_template, it["question"], it["response"], j.system_prompt), "ok"
        else:
            msgs, st = fit_prompt(tok, j.prompt_template, j.system_prompt, it["question"],
                                  it["response"], j.max_prompt_tokens, j.overflow)
        messages.append(msgs)
        status.append(st)
    return messages, status


def build_judge_requests(items: Sequence[Mapping[str, Any]], params: Mapping[str, Any], stream: Sequence[Any] = (),
                         *, key: str = "index", repeats: int | None = None, tok=None) -> JudgeRequests:
    """The requests of judge_prompts: each request's seed is stable_seed(seed, *stream, item[key])
    or, with repeats, stable_seed(seed, *stream, item[key], r) for r < repeats. The item rides
    along in each request for data-built (pseudo) judges."""
    from .sampling import SampleRequest

    messages, status = judge_prompts(items, params, tok)
    seed = seed_of(params)
    requests, owners = [], []
    for i, (it, msgs) in enumerate(zip(items, messages)):
        if msgs is None:
            continue
        for r in range(repeats or 1):
            parts = (it[key],) if repeats is None else (it[key], r)
            requests.append(SampleRequest(msgs, stable_seed(seed, *stream, *parts), it))
            owners.append((i, r))
    return JudgeRequests(messages, status, requests, owners)


def judge_verdict(result, prompt_opens_think: bool = False) -> Verdict:
    """The verdict of one judge output (a SampleResult): its reasoning kept apart by an API, or
    opened by the judge's chat template (the judge spec's `prompt_opens_think`), is honoured."""
    return parse_verdict(result.text, result.finish_reason, prompt_opens_think, result.reasoning)


def with_reasoning(result) -> str:
    """A judge output with an API's separate reasoning put back inside <think>…</think>."""
    return result.text if result.reasoning is None else f"<think>{result.reasoning}</think>\n{result.text}"


def judge_sampler(spec: JudgeSpec, params: Mapping[str, Any], threads: int | None = None):
    """A generative judge's sampler, decoding as `judge` says (temperature, top_p, budgets)."""
    from .sampling import make_sampler

    return make_sampler(spec, params, judge_sampling(params), threads)


def judge_sampling(params: Mapping[str, Any]):
    """The SamplingConfig a generative judge decodes with (the `judge` section)."""
    from .sampling import SamplingConfig
    from .settings import JudgeSettings

    j = JudgeSettings.from_params(params)
    return SamplingConfig(temperature=j.temperature, top_p=j.top_p, max_new_tokens=j.max_new_tokens,
                          batch_size=j.batch_size)


def run_generative(items: Sequence[Mapping[str, Any]], sampler, params: Mapping[str, Any], judge_name: str,
                   stream: Sequence[Any] | None = None, prompt_opens_think: bool = False) -> list[dict]:
    """Judge every item with `sampler` (judge_sampler); returns one prediction record per item (same
    order). Seeds come from (seed, *stream, item index); stream defaults to ("judge", judge_name)."""
    batch = build_judge_requests(items, params, stream or ("judge", judge_name), tok=getattr(sampler, "tok", None))
    results = dict(zip((i for i, _ in batch.owners), sampler.generate(batch.requests))) if batch.requests else {}
    out = []
    for i, it in enumerate(items):
        base = {"index": it["index"], "subset": it["subset"], "model": it["model"], "label": it["label"],
                "question": it["question"], "prompt_status": batch.prompt_status[i]}
        if i not in results:
            out.append({**base, "pred": None, "status": "overflow_skipped", "truncated": False, "output": None,
                        "completion_tokens": 0})
            continue
        res = results[i]
        v = judge_verdict(res, prompt_opens_think)
        out.append({**base, "pred": v.value, "status": v.status, "truncated": res.finish_reason == "length",
                    "output": res.text, "completion_tokens": res.completion_tokens})
    return out


# ----------------------------------------------------------------------------- scalar RM
def scalar_scores(items: Sequence[Mapping[str, Any]], path: str, revision: str | None = None,
                  batch_size: int = 16, threads: int | None = None, field: str = "response") -> list[float]:
    """Score (question, item[field]) with AutoModelForSequenceClassification: the positive-class
    logit margin for 2-label heads, the single logit for 1-label heads. `field` is `response` (the
    final part) or `response_with_cot` (with its reasoning); an item without it is an error."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(path, revision=revision)
    from .sampling import on_inference_device

    model = on_inference_device(AutoModelForSequenceClassification.from_pretrained(path, revision=revision))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    texts = []
    for it in items:
        if it.get(field) is None:
            raise ValueError(f"scalar judge reads {field!r}, which item {it.get('index')!r} does not have")
        msgs = [{"role": "user", "content": it["question"]}, {"role": "assistant", "content": it[field]}]
        if getattr(tok, "chat_template", None):
            texts.append(tok.apply_chat_template(msgs, tokenize=False))
        else:
            texts.append(f"{it['question']}\n\n{it[field]}")
    scores: list[float] = []
    tok.padding_side = "right"
    with torch.inference_mode():
        for s in range(0, len(texts), batch_size):
            enc = tok(texts[s:s + batch_size], return_tensors="pt", padding=True, truncation=True,
                      max_length=getattr(model.config, "max_position_embeddings", 2048), add_special_tokens=False)
            logits = model(**{k: v.to(model.device) for k, v in enc.items()}).logits.float()
            vals = logits[:, 1] - logits[:, 0] if logits.shape[-1] == 2 else logits[:, 0]
            scores.extend(float(v) for v in vals)
    return scores
