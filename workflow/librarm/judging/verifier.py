"""The rule verifier: answer checking with math-verify in worker processes (the verify stage, the
rule judge and the downstream grading use it).

math-verify's own timeout relies on signals, which work only in a process's main thread, and it
returns False on its timeouts; so each item is graded in a worker process (its main thread) and
the parent enforces a wall-clock and a memory limit, kills and replaces stuck workers and labels
those items `timeout`. Model output is only parsed, never evaluated as code.

Reasons (one per sample; `label` is 1 for `correct`, 0 for `wrong_answer` and `hedged`, else None):

- `correct`, `wrong_answer`: math-verify's verdict on the final part.
- `hedged`: the gold is a single value and the answer is not: a relation between different values
  (`0 = 42`), an inequality, a disjunction or implication (`41 \\lor 42`, `41 \\to 42`), or several
  candidates (`41, 42`, `41 \\text{ or } 42`, `43 \\pm 1`, an interval). math-verify grades the
  right-hand side of a relation and the last operand of a connective it cannot parse, so these
  would often be graded correct; a policy trained on such labels could learn to hedge. A genuine
  form stays math-verify's: `x = 42` (a name on one side), `6 \\times 7 = 42` (sides that agree).
  A hedged answer is a wrong answer (label 0), kept in the bench like one (see `hedge_of`).
- `no_final_answer`: nothing to grade (thinking only, unterminated, empty, nothing parseable).
- `truncated`: the output hit the length limit. `timeout`: the worker's time or memory limit.
- `gold_unparseable`: the gold answer does not parse; never scored as a match.
"""
from __future__ import annotations

import multiprocessing as mp
import re
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Mapping, Sequence

REASONS = ("correct", "wrong_answer", "hedged", "no_final_answer", "truncated", "timeout", "gold_unparseable")
GRADABLE = ("correct", "wrong_answer", "hedged")     # graded, with a label (hedged: a wrong answer)
LABELS = {"correct": 1, "wrong_answer": 0, "hedged": 0}


def extract_boxed(text: str) -> str | None:
    """Content of the last brace-balanced \\boxed{...} in text, stripped; None when absent."""
    from librarm.judging.think import boxed_spans

    spans = boxed_spans(text)
    if not spans:
        return None
    s, e = spans[-1]
    return text[s:e].strip()


def _quiet_math_verify() -> None:
    # We disable math-verify's signal timeouts on purpose (the worker pool enforces limits);
    # its warning about that would print once per item.
    import logging

    for name in ("math_verify", "math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).setLevel(logging.ERROR)


def parse_gold(gold: str):
    from math_verify import parse

    _quiet_math_verify()

    parsed = parse("\\boxed{" + gold + "}", parsing_timeout=None)
    if not _has_expr(parsed):
        parsed = parse(f"${gold}$", parsing_timeout=None)
    # math-verify appends the raw matched text as a fallback; a gold with nothing else did not
    # parse, and comparing it as a string would grade an identical string `correct`.
    return parsed if _has_expr(parsed) else []


def _has_expr(parsed) -> bool:
    return any(not isinstance(p, str) for p in parsed)


def grade_answer(gold: str, final: str) -> tuple[str, str | None]:
    """(reason, extracted prediction) for one final part; gold first, as math-verify requires.
    A single-valued gold graded against an answer that is not one value (hedge_of) is `hedged`,
    whatever math-verify would say. Runs math-verify's parse and verify without their signal
    timeouts: the caller's process limits apply."""
    from math_verify import parse, verify

    gold_parsed = parse_gold(gold)
    if not gold_parsed:
        return "gold_unparseable", None
    if not final.strip():
        return "no_final_answer", None
    pred = parse(final, parsing_timeout=None)
    if not pred:
        return "no_final_answer", None
    shown = str(pred[-1] if len(pred) > 1 else pred[0])
    try:
        hedged = single_valued(gold, gold_parsed) and hedge_of(final, pred, gold_parsed) is not None
    except MemoryError:
        raise
    except Exception:       # the hedge check failed on odd text: math-verify's verdict stands
        hedged = False
    if hedged:
        return "hedged", shown
    ok = verify(gold_parsed, pred, timeout_seconds=None)
    return ("correct" if ok else "wrong_answer"), shown


# ----------------------------------------------------------------------------- hedges
# Read on the answer's text at brace depth 0 (so `\lim_{x \to 0}` or `\sum_{k=1}` never count).
# Order relations: a range of values, never one value.
_ORDER_RE = re.compile(
    r"(?<!\\left)(?<!\\right)[<>]|\\(?:lt|gt|le|ge|leq|geq|leqq|geqq|leqslant|geqslant|ne|neq|nleq|ngeq|nless|"
    r"ngtr|ll|gg|lesssim|gtrsim|lessgtr|gtrless|prec|succ|preceq|succeq|subset|subseteq|supset|supseteq|"
    r"subsetneq|supsetneq|ni|notin|not)(?![a-zA-Z])")
# Connectives between candidates: disjunctions, conjunctions, implications and other arrows, set
# operations, divisibility, table cells and line breaks. math-verify cannot parse most of them and
# grades the last number it finds instead (`41 \lor 42` is graded 42).
_CONNECTIVE_RE = re.compile(
    r"\\(?:lor|vee|land|wedge|neg|lnot|to|rightarrow|Rightarrow|leftarrow|Leftarrow|implies|impliedby|iff|"
    r"leftrightarrow|Leftrightarrow|longrightarrow|Longrightarrow|longleftarrow|Longleftarrow|longleftrightarrow|"
    r"Longleftrightarrow|mapsto|longmapsto|gets|hookrightarrow|hookleftarrow|leadsto|rightsquigarrow|uparrow|"
    r"downarrow|Uparrow|Downarrow|updownarrow|nearrow|searrow|mid|nmid|parallel|perp|cup|cap|setminus|sqcup|"
    r"sqcap|oplus|otimes|vdash|models|therefore|because|bigvee|bigwedge|bigcup|bigcap)(?![a-zA-Z])"
    r"|&|\\\\")
# Equalities and near-equalities (and wide spaces): each side is a name or a value, and the values
# must agree (`x = 42` and `6 \times 7 = 42` are one value; `0 = 42` and `42 \approx 41` are two).
_EQUAL_RE = re.compile(
    r"(?<![<>!\\:])=|:=|\\(?:approx|simeq|sim|cong|doteq|equiv|coloneqq|eqqcolon|quad|qquad)(?![a-zA-Z])")
# Two plain numbers side by side, with only spaces between (`0 \quad 42` parses as 0 + 42), other
# than a thousands group (`10\,080`, `10 080`).
_SIDE_BY_SIDE_RE = re.compile(
    r"(?<![\d.])(\d+(?:\.\d+)?)((?:\s|\\[ ,:;!>]|\\quad|\\qquad|\\enspace|\\thinspace|~)+)(\d+(?:\.\d+)?)(?![\d.])")
_NUMBER_RE = re.compile(r"(?<![\d.])\d+(?:\.\d+)?")
# Plain-text answers (no LaTeX): two bare numbers joined by a connective (`41 or 42`, `0=42`).
_PROSE_PAIR_RE = re.compile(
    r"(?<![\w.+\-*/^×·÷\\$])(-?\d+(?:\.\d+)?)\s*(?:\bor\b|=>|->|→|⇒|⇔|≈|<=|>=|!=|==|=|<|>|≤|≥|≠|\|\|?|\\/)"
    r"\s*\(?\s*(?:[A-Za-z]+\s+){0,2}(-?\d+(?:\.\d+)?)(?![\w.+\-*/^×·÷\\%$])")
_SENTENCE_END_RE = re.compile(r"\n|[.!?](?=\s|$)")


def single_valued(gold: str, gold_parsed) -> bool:
    """The gold is one value (a number or an expression), not a relation, a set, an interval, a
    tuple or a matrix, and its own written form passes the hedge rule (a gold written
    `\\frac23 \\approx 0.67`, or one math-verify cannot read as LaTeX, is its own reference form):
    the only golds the hedge rule applies to."""
    import sympy
    from math_verify import parse

    expr = next((p for p in gold_parsed if not isinstance(p, str)), None)
    if isinstance(expr, sympy.FiniteSet) and len(expr) == 1:
        expr = next(iter(expr))
    if not isinstance(expr, sympy.Expr):
        return False
    boxed = "\\boxed{" + gold + "}"
    return hedge_of(boxed, parse(boxed, parsing_timeout=None), gold_parsed) is None


def _depth0(text: str) -> str:
    """text with every character inside (), [] or {} blanked, so that only top-level tokens match."""
    out, depth = [], 0
    for ch in text:
        if ch in "([{":
            depth += 1
            out.append(ch if depth == 1 else " ")
        elif ch in ")]}":
            depth = max(0, depth - 1)
            out.append(ch if depth == 0 else " ")
        else:
            out.append(ch if depth == 0 else " ")
    return "".join(out)


def _is_name(expr, numeric_gold: bool) -> bool:
    """A side that names what is asked (`x`, `a_n`, `f(2)`, `\\angle ABC`), never a candidate value.
    For a gold without free symbols, anything with a free symbol or an undefined function is a name."""
    import sympy
    from sympy.core.function import AppliedUndef

    if isinstance(expr, (sympy.Symbol, AppliedUndef, sympy.Indexed)):
        return True
    if isinstance(expr, sympy.Mul) and all(isinstance(a, sympy.Symbol) for a in expr.args):
        return True
    return numeric_gold and isinstance(expr, sympy.Basic) and not getattr(expr, "is_number", False)


def _same(a, b) -> bool:
    from math_verify import verify

    try:
        return bool(verify(a, b, timeout_seconds=None)) or bool(verify(b, a, timeout_seconds=None))
    except Exception:
        return False


def _several(expr, numeric_gold: bool) -> bool:
    """The parsed answer holds more than one candidate: a set or list of several values, an
    interval, an inequality, a logical combination, or an equation between different values."""
    import sympy
    from sympy.logic.boolalg import BooleanFunction

    if isinstance(expr, sympy.FiniteSet):
        return len(expr) > 1 or any(_several(e, numeric_gold) for e in expr)
    if isinstance(expr, sympy.Set):                       # Interval, Union, Intersection, ...
        return True
    if isinstance(expr, sympy.Tuple):
        return len(expr) > 1 or any(_several(e, numeric_gold) for e in expr)
    chain = expr.args if isinstance(expr, sympy.And) else (expr,)
    if all(isinstance(e, sympy.Eq) for e in chain):       # x = 1/2 = 0.5 parses as And(Eq, Eq)
        sides = [s for e in chain for s in e.args if not _is_name(s, numeric_gold)]
        return any(_several(s, numeric_gold) for s in sides) or _distinct(sides) > 1
    if isinstance(expr, (sympy.core.relational.Relational, BooleanFunction, sympy.Contains)):
        return True
    return False


def _side_values(text: str, numeric_gold: bool) -> list | None:
    """The candidate values of the sides of `text` split at top-level equalities; None when one
    side itself holds several candidates."""
    from math_verify import LatexExtractionConfig, parse

    top = _depth0(text)
    cuts = [0] + [x for m in _EQUAL_RE.finditer(top) for x in (m.start(), m.end())] + [len(text)]
    values = []
    for seg in (text[cuts[i]:cuts[i + 1]] for i in range(0, len(cuts), 2)):
        seg = seg.strip()
        if not seg:
            continue
        parsed = parse(f"${seg}$", [LatexExtractionConfig()], parsing_timeout=None)
        expr = next((p for p in parsed if not isinstance(p, str)), None)
        if expr is None:
            if _NUMBER_RE.search(seg):
                values.append(seg)            # an unreadable side with a number: its own candidate
            continue
        if _several(expr, numeric_gold):
            return None
        if not _is_name(expr, numeric_gold):
            values.append(expr)
    return values


def _distinct(values: list) -> int:
    kept: list = []
    for v in values:
        if isinstance(v, str) or not any(not isinstance(k, str) and _same(k, v) for k in kept):
            kept.append(v)
    return len(kept)


def hedge_of(final: str, pred, gold_parsed) -> str | None:
    """Why the answer math-verify grades in `final` (its parse `pred`) is not one value, or None.
    Applies to a single-valued gold (single_valued). Which match math-verify grades is replayed
    (_graded_match). When it grades LaTeX (a box, a formula), the rules are, on that LaTeX:

    - an order relation or a connective at top level (`x \\ge 42`, `41 \\lor 42`, `41 \\to 42`);
    - sides of an equality (or `\\approx`, `\\equiv`, a wide space) whose values differ (`0 = 42`,
      `x = 41 = 42`); a side that names the unknown (`x`, `f(2)`) is not a value;
    - several candidates in the parse (`41, 42`, `41 \\text{ or } 42`, `43 \\pm 1`, two boxes, an
      interval), or two numbers side by side (`0 \\quad 42`).

    When the answer it tried first (a box, an `answer:` phrase, or LaTeX around the number it
    grades) does not parse, it grades some number instead (`\\boxed{41 \\lor 42}` is graded 42):
    that unreadable answer is hedged when it has an order relation, a connective or two different
    numbers. When nothing parses (it compares text), the same rule on that text. In a plain-text
    answer, two different bare numbers in its sentence joined by `or`, `=`, an arrow or a comparison,
    one of them the number it grades (`41 or 42`, `0=42`)."""
    import sympy
    from math_verify import LatexExtractionConfig

    gold = next((p for p in gold_parsed if not isinstance(p, str)), None)
    numeric_gold = isinstance(gold, sympy.Basic) and not gold.free_symbols
    graded = _graded_match(final)
    if graded is None:          # nothing parses: math-verify compares the text it matched as a string
        return _unread_hedge(next((p for p in pred if isinstance(p, str)), ""))
    match, target, expr, text, priority, failed = graded
    at, end = _number_span(match) if not isinstance(target, LatexExtractionConfig) else match.span()
    unread = ([f for f in failed if f[3] < priority]
              or [f for f in failed if f[3] == priority and f[0].start() <= at and end <= f[0].end()])
    if unread:                  # the answer it could not read, not the stray match it grades instead
        return _unread_hedge(unread[0][2])
    if not isinstance(target, LatexExtractionConfig):
        return _prose_hedge(final, at, end)
    top = _depth0(text)
    if _ORDER_RE.search(top):
        return "order relation"
    if _CONNECTIVE_RE.search(top):
        return "connective"
    if _side_by_side(top):
        return "numbers side by side"
    if _EQUAL_RE.search(top):
        values = _side_values(text, numeric_gold)
        if values is None or _distinct(values) > 1:
            return "sides differ"
    if _several(expr, numeric_gold):
        return "several candidates"
    return None


def _side_by_side(top: str) -> bool:
    for m in _SIDE_BY_SIDE_RE.finditer(top):
        thousands = len(m.group(3)) == 3 and len(m.group(1)) <= 3 and m.group(2).strip() in ("", "\\,", "\\!")
        if not thousands:
            return True
    return False


def _unread_hedge(text: str) -> str | None:
    """An answer math-verify could not parse: hedged when it relates or joins candidates."""
    top = _depth0(text)
    if (_ORDER_RE.search(top) or _CONNECTIVE_RE.search(top) or _side_by_side(top)
            or len({float(n) for n in _NUMBER_RE.findall(text)}) > 1):
        return "unparsed candidates"
    return None


def _graded_match(final: str):
    """math-verify's parse replayed (its default targets, LaTeX then plain expressions, and its
    order: by pattern priority, then rightmost first, the first match that parses wins):
    (match, target, parsed, text, priority, the (match, target, text, priority) it tried before
    and could not parse), or None."""
    from itertools import groupby

    from math_verify import ExprExtractionConfig, LatexExtractionConfig
    from math_verify.parser import extract_match, get_extraction_regexes

    patterns = sorted(((pattern, target, priority)
                       for group, target in get_extraction_regexes([LatexExtractionConfig(), ExprExtractionConfig()])
                       for pattern, priority in group), key=lambda x: x[2])
    failed = []
    for priority, group in groupby(patterns, key=lambda x: x[2]):
        matches = sorted(((m, target) for pattern, target, _ in group for m in pattern.finditer(final)),
                         key=lambda x: (x[0].end(), -x[0].start()), reverse=True)
        for m, target in matches:
            parsed, text = extract_match(m, target)
            if parsed is not None:
                return m, target, parsed, text, priority, failed
            failed.append((m, target, text, priority))
    return None


def _number_span(match) -> tuple[int, int]:
    """Where the number (or plain expression) of a math-verify expression match is."""
    for name, value in match.groupdict().items():
        if value and (name == "expr" or name.startswith(("integer", "decimal"))):
            return match.start(name), match.end(name)
    return match.start(), match.end()


def _prose_hedge(final: str, at: int, end: int) -> str | None:
    """The sentence of a plain-text answer that holds what math-verify read (final[at:end]), checked
    for two different bare numbers joined by a connective, one of them the number it read."""
    start = max((m.end() for m in _SENTENCE_END_RE.finditer(final, 0, at)), default=0)
    end_m = _SENTENCE_END_RE.search(final, end)
    sentence = final[start:end_m.start() if end_m else len(final)]
    for m in _PROSE_PAIR_RE.finditer(sentence):
        graded_in_pair = any(start + m.start(g) <= at and end <= start + m.end(g) for g in (1, 2))
        if graded_in_pair and float(m.group(1)) != float(m.group(2)):
            return "prose candidates"
    return None


def final_answer_text(record: Mapping[str, Any]) -> str | None:
    """The only text of a sample that may be graded, derived here from the raw output
    (`response_with_cot` when present, else `response`), never trusted from the record: a
    `response` that still holds `<think>...</think>` is split again, so an answer that appears only
    inside the thinking is never graded. None: no final part (thinking only, unterminated, empty,
    or the sampler recorded an unclosed thinking block).

    A record without `think_closed` (made elsewhere) is "not known": whether its thinking was closed
    is derived from the text. A thinking block opened by the prompt leaves no opening tag, so the
    record's own evidence counts: `has_think` true, or a `response` that differs from its
    `response_with_cot` (the writer split thinking off), with no closing tag means the thinking
    never ended."""
    from librarm.judging.think import CLOSE, split_think

    closed = record.get("think_closed")
    if closed is not None and not closed:
        return None
    cot, response = record.get("response_with_cot"), record.get("response")
    text = cot or response or ""
    opened = False
    if closed is None and CLOSE not in text:
        opened = record.get("has_think") is True or (
            bool(cot) and response is not None and response.strip() != cot.strip())
    parts = split_think(text, prompt_opens_think=opened)
    return parts.final if parts.has_final else None


def precheck(record: Mapping[str, Any]) -> str | None:
    """Reasons decided without the verifier: truncated output or no closed final part."""
    if record.get("finish_reason") == "length":
        return "truncated"
    if final_answer_text(record) is None:
        return "no_final_answer"
    return None


# ----------------------------------------------------------------------------- worker pool
def _worker_main(conn, memory_mb: int | None) -> None:
    if memory_mb:
        import resource

        limit = memory_mb * 1024 * 1024
        try:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ValueError, OSError):
            pass
    import math_verify  # noqa: F401  (import once, before the first item)

    try:
        grade_answer("1", "\\boxed{1}")  # warm up math-verify's lazy parts
    except Exception:
        pass
    conn.send("ready")  # the parent starts no item's clock before this
    while True:
        msg = conn.recv()
        if msg is None:
            return
        idx, gold, final = msg
        try:
            reason, pred = grade_answer(gold, final)
        except MemoryError:
            reason, pred = "timeout", "memory limit"
        except Exception as exc:  # a parser crash on odd text is a wrong/unparseable answer, not a job crash
            reason, pred = "no_final_answer", f"error: {type(exc).__name__}"
        conn.send((idx, reason, pred))


@dataclass
class _Slot:
    proc: Any
    conn: Any
    item: int | None = None
    started: float = 0.0


class VerifierPool:
    """N worker processes; each item gets at most `timeout_s` of wall time."""

    def __init__(self, workers: int = 2, timeout_s: float = 5.0, memory_mb: int | None = 2048):
        self.workers = max(1, workers)
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.ctx = mp.get_context("spawn")
        self.killed = 0
        self.slots: list[_Slot] = []
        self.startup_timeout_s = 120.0

    def _spawn(self) -> _Slot:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker_main, args=(child, self.memory_mb), daemon=True)
        proc.start()
        child.close()
        return _Slot(proc, parent)

    def _await_ready(self, s: _Slot) -> None:
        """Wait until a worker has imported math-verify, so that start-up (about a second, more on a
        busy machine) is never charged to an item's timeout. A worker that cannot start is an error."""
        try:
            if s.conn.poll(self.startup_timeout_s) and s.conn.recv() == "ready":
                return
        except (EOFError, OSError):
            pass
        s.proc.kill()
        raise RuntimeError(f"verifier worker did not start within {self.startup_timeout_s} s "
                           f"(exit code {s.proc.exitcode}; memory_mb={self.memory_mb} too low?)")

    def __enter__(self):
        self.slots = [self._spawn() for _ in range(self.workers)]
        try:
            for s in self.slots:
                self._await_ready(s)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for s in self.slots:
            try:
                s.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        for s in self.slots:
            s.proc.join(timeout=2)
            if s.proc.is_alive():
                s.proc.kill()

    def grade(self, items: Sequence[tuple[str, str]], progress: bool = False) -> list[tuple[str, str | None]]:
        """items: (gold, final) pairs -> (reason, prediction) in the same order."""
        from tqdm import tqdm

        results: list[tuple[str, str | None] | None] = [None] * len(items)
        queue = list(range(len(items)))[::-1]
        bar = tqdm(total=len(items), desc="verify", disable=not progress, mininterval=2)
        while queue or any(s.item is not None for s in self.slots):
            for s in self.slots:
                if s.item is None and queue:
                    i = queue.pop()
                    s.item, s.started = i, time.monotonic()
                    s.conn.send((i, items[i][0], items[i][1]))
            busy = [s for s in self.slots if s.item is not None]
            deadline = min(s.started for s in busy) + self.timeout_s
            ready = wait([s.conn for s in busy] + [s.proc.sentinel for s in busy],
                         timeout=max(0.0, deadline - time.monotonic()))
            now = time.monotonic()
            for k, s in enumerate(self.slots):
                if s.item is None:
                    continue
                if s.conn in ready:
                    try:
                        idx, reason, pred = s.conn.recv()
                    except (EOFError, OSError):
                        idx, reason, pred = s.item, "timeout", "worker died"
                        self._replace(k)
                    results[idx] = (reason, pred)
                    s = self.slots[k]
                    s.item = None
                    bar.update(1)
                elif s.proc.sentinel in ready or now - s.started >= self.timeout_s:
                    results[s.item] = ("timeout", "worker killed" if s.proc.is_alive() else "worker died")
                    self._replace(k)
                    bar.update(1)
        bar.close()
        return results  # type: ignore[return-value]

    def _replace(self, k: int) -> None:
        s = self.slots[k]
        if s.proc.is_alive():
            s.proc.kill()
        s.proc.join(timeout=2)
        self.killed += 1
        self.slots[k] = self._spawn()
        self._await_ready(self.slots[k])


def grade_serial(items: Sequence[tuple[str, str]]) -> list[tuple[str, str | None]]:
    """The plain loop (no limits), kept for the benchmark against the pool."""
    return [grade_answer(g, f) for g, f in items]
