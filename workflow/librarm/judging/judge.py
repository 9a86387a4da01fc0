"""Judges: the prompt, verdict parsing, and the generative and scalar (classifier) reward models."""
from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from librarm.judging.think import CLOSE, OPEN, mask_quoted
from librarm.run.io import stable_seed
from librarm.run.settings import JudgeSettings, JudgeSpec, Models

# A verdict is \boxed{correct|incorrect} (or yes/no, true/false) or "Verdict: correct"; a negation
# inside it ("\boxed{not correct}", "Verdict: not correct") is read by _read_verdict.
_VERDICT_RE = re.compile(
    r"\\boxed\{\s*(?:\\text(?:bf|rm|it|normal)?\{\s*)?(?P<bneg>not\s+)?(?P<box>correct|incorrect|yes|no|true|false)"
    r"\s*\}?\s*\}"
    r"|verdict\s*[:=]\s*\**\s*(?P<lneg>not\s+)?(?P<label>correct|incorrect|yes|no|true|false)\b",
    re.IGNORECASE,
)
# Plain-language fallback for small chat models ("The answer is correct.", "... isn't correct"),
# used only when no explicit verdict is present.
_PLAIN_RE = re.compile(
    r"\b(?:is|was|are|seems|looks|appears)(?P<pneg>n't|\s+not)?\s+"
    r"(?:(?:really|entirely|fully|completely|quite|actually|indeed|definitely|clearly|certainly|absolutely|also)\s+)?"
    r"(?P<pneg2>not\s+)?(?P<plain>correct|incorrect|right|wrong)\b",
    re.IGNORECASE,
)
_POSITIVE = {"correct", "yes", "true", "right"}
# Negation: a negating word earlier in the same clause, with only these words between it and the
# verdict ("not correct", "I would not say the answer is correct", "I am not sure it is correct").
_CLAUSE_END_RE = re.compile(r"[.!?;:,\n]|\b(?:but|so|hence|thus|therefore|however|although|though|yet|whereas|"
                            r"because|since)\b", re.IGNORECASE)
_NEGATION = {"not", "no", "never", "cannot", "hardly", "barely", "neither", "nor", "without"}
_BRIDGE = {
    "say", "said", "think", "believe", "consider", "considered", "call", "called", "deem", "deemed", "judge",
    "judged", "find", "found", "rate", "mark", "label", "would", "could", "should", "will", "can", "may", "might",
    "must", "do", "does", "did", "be", "been", "being", "is", "are", "was", "were", "am", "it", "this", "that",
    "the", "a", "an", "its", "their", "answer", "response", "solution", "final", "result", "output", "claim",
    "quite", "really", "entirely", "fully", "completely", "exactly", "necessarily", "actually", "strictly",
    "totally", "all", "as", "i", "we", "you", "to", "seem", "seems", "appear", "appears", "look", "looks",
    "sure", "certain", "convinced", "confident", "given", "here", "verdict", "my", "our",
}
_WORD_RE = re.compile(r"[A-Za-z']+")

STATUSES = ("parsed", "truncated", "unterminated", "ambiguous", "no_verdict", "overflow_skipped")


def judge_messages(template: str, question: str, response: str, system_prompt: str | None = None) -> list[dict]:
    """The chat messages of one judging request: the template filled with the question and the
    response, after an optional system prompt."""
    content = template.format(question=question, response=response)
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [{"role": "user", "content": content}]


@dataclass(frozen=True)
class Verdict:
    """value 1 correct, 0 incorrect, None no verdict. status (STATUSES): parsed | truncated (cut at
    the length limit) | unterminated (the thinking never closed) | ambiguous (more than one
    `</think>`, or a thinking tag after it) | no_verdict | overflow_skipped (the prompt was over
    budget; set by run_generative). Every status but `parsed` has no value and counts as
    unparsed. source: explicit (a boxed or `Verdict:` verdict) | plain (the plain-language
    fallback) | None."""

    value: int | None
    status: str
    source: str | None = None


def _negation(visible: str, start: int) -> str | None:
    """How the clause that ends at `start` negates what follows: `direct` (a negating word with only
    bridge words between: "not correct", "I would not say the answer is correct"), `distant` (a
    negating word earlier in the clause, other words between: "I do not think the reasoning and
    the answer are correct"), or None."""
    clause_start = max((m.end() for m in _CLAUSE_END_RE.finditer(visible, 0, start)), default=0)
    words = [w.lower() for w in _WORD_RE.findall(visible[clause_start:start])]
    bridged = True
    for w in reversed(words):
        if w in _NEGATION or w.endswith("n't"):
            return "direct" if bridged else "distant"
        bridged = bridged and w in _BRIDGE
    return None


def _read_verdict(final: str) -> Verdict:
    """The last verdict of a final part, reading only what is not quoted (mask_quoted). A negation
    never yields `correct`: a directly negated `correct` ("not correct", "would not say ...
    correct") is `incorrect`; a negated `incorrect` ("not incorrect") and a plain-language verdict
    with a negation further back in its clause are not verdicts (skipped: the one before counts).
    Explicit verdicts first; the plain-language fallback only when there is none."""


    visible = mask_quoted(final)
    for regex, source in ((_VERDICT_RE, "explicit"), (_PLAIN_RE, "plain")):
        for m in reversed(list(regex.finditer(visible))):
            if source == "explicit":
                word, inner = m.group("box") or m.group("label"), m.group("bneg") or m.group("lneg")
            else:
                word, inner = m.group("plain"), m.group("pneg") or m.group("pneg2")
            positive = word.lower() in _POSITIVE
            negation = "direct" if inner else _negation(visible, m.start())
            if negation == "distant" and source == "explicit":
                negation = None            # a formatted verdict is negated only by a word that governs it
            if negation is None:
                return Verdict(int(positive), "parsed", source)
            if positive and negation == "direct":
                return Verdict(0, "parsed", source)
    return Verdict(None, "no_verdict")


def parse_verdict(text: str, finish_reason: str = "stop", prompt_opens_think: bool = False,
                  reasoning: str | None = None) -> Verdict:
    """The LAST verdict after the end of the thinking block. Rules, in order:

    - cut at the length limit: `truncated`;
    - two or more `</think>` (a second one can only be quoted or planted): `ambiguous`;
    - thinking opened (`<think>` in the text, or by the prompt) and no `</think>` outside quoted
      text: `unterminated`, whatever the thinking contains (a quoted `"</think>\\boxed{correct}"`
      inside it ends nothing);
    - a `<think>` after the `</think>`: `ambiguous`;
    - the verdict is read from the text after the `</think>` (all of it when no thinking was
      opened), never from quoted text (quotes, backticks, code fences, `>` lines); negated verdicts
      never count as correct (_read_verdict); none found: `no_verdict`.

    With `reasoning` (an API that returns the thinking apart), `text` is the final part; a thinking
    tag in it is `ambiguous`. A verdict inside the thinking never counts (first-match parsers are
    biased toward early, tentative verdicts)."""
    if finish_reason == "length":
        return Verdict(None, "truncated")
    if reasoning is not None:
        return Verdict(None, "ambiguous") if CLOSE in text or OPEN in text else _read_verdict(text)
    closes = [m.start() for m in re.finditer(re.escape(CLOSE), text)]
    if len(closes) >= 2:
        return Verdict(None, "ambiguous")
    if closes and mask_quoted(text[:closes[0] + len(CLOSE)])[closes[0]:].strip():
        at = closes[0]
        final = text[at + len(CLOSE):]
        if OPEN in mask_quoted(final):
            return Verdict(None, "ambiguous")
        return _read_verdict(final)
    if prompt_opens_think or OPEN in mask_quoted(text):
        return Verdict(None, "unterminated")
    return _read_verdict(text)


_TOKEN_CHARS: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()


def max_token_chars(tok) -> int:
    """An upper bound on the characters one token of `tok` covers: its longest vocabulary entry
    (byte-level entries spell one symbol per byte, so they are never shorter than the text they
    stand for), doubled for normalisers that drop characters. A text longer than
    `max_tokens * max_token_chars(tok)` characters cannot fit in max_tokens tokens."""
    try:
        return _TOKEN_CHARS[tok]
    except (KeyError, TypeError):
        pass
    try:
        longest = max((len(t) for t in tok.get_vocab()), default=1)
    except Exception:               # a tokenizer without a vocabulary to read: a generous bound
        longest = 64
    bound = 2 * max(1, longest)
    try:
        _TOKEN_CHARS[tok] = bound
    except TypeError:
        pass
    return bound


def prompt_tokens(tok, messages: Sequence[Mapping[str, str]]) -> int:
    """The tokens of chat messages as a backend sends them: the chat template rendered with the
    generation prompt, no special tokens added on top (what judge.max_prompt_tokens counts)."""
    from librarm.engines.hf import render_chat

    return len(tok(render_chat(tok, messages), add_special_tokens=False)["input_ids"])


def fit_prompt(tok, template: str, system_prompt: str | None, question: str, response: str,
               max_tokens: int, overflow: str) -> tuple[list[dict] | None, str]:
    """Chat messages for one item within max_tokens: (messages, status) with status ok|truncated|skipped.
    truncate_response keeps the END of the response (where the answer is) behind a '[...]' marker.

    The cost is bounded by the budget, not by the response: a response longer than
    max_tokens * max_token_chars(tok) characters cannot fit, so it is never tokenized whole; only
    that many characters of its tail are, and the longest fitting tail is searched among at most
    max_tokens of their tokens (a 50 MB response costs what a 50 KB one does: benchmarks/judge_prompt_budget.py)."""
    def count(resp: str) -> int:
        return prompt_tokens(tok, judge_messages(template, question, resp, system_prompt))

    limit = max(1, max_tokens) * max_token_chars(tok)
    cut = len(response) > limit
    if not cut and count(response) <= max_tokens:
        return judge_messages(template, question, response, system_prompt), "ok"
    if overflow == "skip":
        return None, "skipped"
    ids = tok(response[-limit:] if cut else response, add_special_tokens=False)["input_ids"]
    if cut:
        ids = ids[1:]             # the first token of a cut tail may be part of a longer one
    lo, hi = 0, min(len(ids), max_tokens)          # find the longest tail that fits
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


def judge_prompts(items: Sequence[Mapping[str, Any]], judge: JudgeSettings,
                  tok=None) -> tuple[list[list[dict] | None], list[str]]:
    """The judging messages of items with `question` and `response` (judge.prompt_template,
    judge.system_prompt), held to judge.max_prompt_tokens (judge.overflow) when a tokenizer is
    given (a remote judge without one is sent as is): (messages or None, ok|truncated|skipped)."""
    j = judge
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


def build_judge_requests(items: Sequence[Mapping[str, Any]], judge: JudgeSettings, seed: int, stream: Sequence[Any] = (),
                         *, key: str = "index", repeats: int | None = None, tok=None) -> JudgeRequests:
    """The requests of judge_prompts: each request's seed is stable_seed(seed, *stream, item[key])
    or, with repeats, stable_seed(seed, *stream, item[key], r) for r < repeats. The item rides
    along in each request for data-built (pseudo) judges."""
    from librarm.engines.base import SampleRequest

    messages, status = judge_prompts(items, judge, tok)
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


def judge_sampler(spec: JudgeSpec, models: Models, judge: JudgeSettings, seed: int, threads: int | None = None):
    """A generative judge's sampler, decoding as `judge` says (temperature, top_p, budgets)."""
    from librarm.engines import make_sampler

    return make_sampler(spec, models, judge_sampling(judge), seed, threads)


def judge_sampling(judge: JudgeSettings):
    """The SamplingConfig a generative judge decodes with (the `judge` section)."""
    from librarm.engines.base import SamplingConfig

    j = judge
    return SamplingConfig(temperature=j.temperature, top_p=j.top_p, max_new_tokens=j.max_new_tokens,
                          batch_size=j.batch_size)


def run_generative(items: Sequence[Mapping[str, Any]], sampler, judge: JudgeSettings, seed: int, judge_name: str,
                   stream: Sequence[Any] | None = None, prompt_opens_think: bool = False) -> list[dict]:
    """Judge every item with `sampler` (judge_sampler); returns one prediction record per item (same
    order). Seeds come from (seed, *stream, item index); stream defaults to ("judge", judge_name)."""
    batch = build_judge_requests(items, judge, seed, stream or ("judge", judge_name), tok=getattr(sampler, "tok", None))
    results = dict(zip((i for i, _ in batch.owners), sampler.generate(batch.requests))) if batch.requests else {}
    out = []
    for i, it in enumerate(items):
        base = {"index": it["index"], "subset": it["subset"], "model": it["model"], "label": it["label"],
                "question": it["question"], "prompt_status": batch.prompt_status[i]}
        if i not in results:
            out.append({**base, "pred": None, "status": "overflow_skipped", "verdict_source": None, "truncated": False,
                        "output": None, "completion_tokens": 0})
            continue
        res = results[i]
        v = judge_verdict(res, prompt_opens_think)
        out.append({**base, "pred": v.value, "status": v.status, "verdict_source": v.source,
                    "truncated": res.finish_reason == "length", "output": res.text,
                    "completion_tokens": res.completion_tokens})
    return out


# ----------------------------------------------------------------------------- scalar RM
def scalar_scores(items: Sequence[Mapping[str, Any]], path: str, revision: str | None,
                  batch_size: int, threads: int | None = None, field: str = "response") -> list[float]:
    """Score (question, item[field]) with AutoModelForSequenceClassification: the positive-class
    logit margin for 2-label heads, the single logit for 1-label heads. `field` is `response` (the
    final part) or `response_with_cot` (with its reasoning); an item without it is an error."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(path, revision=revision)
    from librarm.engines.hf import on_inference_device

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
