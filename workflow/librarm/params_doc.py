"""docs/params.md: the reference of every params.yaml key, generated from the JSON schema.

One table per top-level section of workflow/schemas/params.schema.json, in schema order: each key
(dotted; `<name>` stands for an entry of a map such as `models`, `[]` for the items of a list),
its type and default as the schema states them, its description, and the phases (phases.PHASES)
that read it: those whose declared params keys hold the key or one of its dotted prefixes. A test
checks that every key has a description and that the committed file is the render."""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from librarm.phases import PHASES
from librarm.run.paths import REPO_ROOT, SCHEMA_PATH

# Found from the package's root, so that it holds wherever this module sits in the package.
SCHEMA_FILE = str(SCHEMA_PATH.relative_to(REPO_ROOT))
PARAMS_MD = "docs/params.md"

HEADER = (f"<!-- GENERATED from {SCHEMA_FILE} by `librarm params-doc`; do not edit by hand. -->\n"
          "# params.yaml reference\n\n"
          f"GENERATED from `{SCHEMA_FILE}` by `librarm params-doc`; do not edit by hand\n"
          "(describe a key in the schema, then regenerate).\n\n"
          "One table per top-level section, in the schema's order. **key**: the dotted key; `<name>` stands\n"
          "for an entry of a map (a model's name in `models.<name>.source`), `[]` for the items of a list.\n"
          "**type** and **default** are the schema's (no default: the key is required, or optional with\n"
          "no value). **read by**: the phases (`workflow/librarm/phases.py`) that declare the key or a\n"
          "section holding it; Snakemake and DVC rerun them when it changes (empty: no phase declares it).\n")
MAX_DIFF_LINES = 40


@dataclass(frozen=True)
class Row:
    key: str                          # dotted: problems.sets[].name, models.<name>.source
    node: Mapping[str, Any]           # the key's schema as written
    schema: Mapping[str, Any]         # the same with its $ref resolved

    @property
    def section(self) -> str:
        return self.key.split(".")[0].removesuffix("[]")

    @property
    def description(self) -> str | None:
        return self.schema.get("description")


def load_schema(path: str | Path | None = None) -> dict[str, Any]:
    return json.loads(Path(path or REPO_ROOT / SCHEMA_FILE).read_text())


def resolve(node: Mapping[str, Any], root: Mapping[str, Any], _depth: int = 0) -> dict[str, Any]:
    """The node with its `$ref` (a local JSON pointer such as #/$defs/steps) merged in; the node's
    own keywords (description, default) win over the target's."""
    node = dict(node)
    ref = node.pop("$ref", None)
    if ref is None:
        return node
    if not ref.startswith("#") or _depth > 32:
        raise ValueError(f"cannot resolve $ref {ref!r} (only local references, without cycles)")
    target: Any = root
    for part in [p for p in ref[1:].split("/") if p]:
        target = target[part.replace("~1", "/").replace("~0", "~")]
    return {**resolve(target, root, _depth + 1), **node}


def rows(schema: Mapping[str, Any] | None = None) -> list[Row]:
    """Every key of the schema, depth first in schema order (a key before the keys inside it)."""
    schema = load_schema() if schema is None else schema
    seen: set[str] = set()

    def walk(node: Mapping[str, Any], prefix: str) -> Iterator[Row]:
        node = resolve(node, schema)
        for name, sub in node.get("properties", {}).items():
            key = f"{prefix}.{name}" if prefix else name
            yield from visit(key, sub)
        extra = node.get("additionalProperties")
        if isinstance(extra, Mapping):
            yield from visit(f"{prefix}.<name>", extra)
        items = node.get("items")
        if isinstance(items, Mapping):
            yield from walk(items, f"{prefix}[]")
        for alternative in node.get("oneOf", []) + node.get("anyOf", []) + node.get("allOf", []):
            yield from walk(alternative, prefix)

    def visit(key: str, sub: Mapping[str, Any]) -> Iterator[Row]:
        if key in seen:
            return
        seen.add(key)
        yield Row(key, sub, resolve(sub, schema))
        yield from walk(sub, key)

    return list(walk(schema, ""))


def missing_descriptions(schema: Mapping[str, Any] | None = None) -> list[str]:
    """Dotted keys of the schema without a description (their own or their $ref target's)."""
    return [r.key for r in rows(schema) if not (r.description or "").strip()]


def read_by(key: str, phases: Mapping[str, Any] | None = None) -> list[str]:
    """The phases that read `key`: those declaring it or one of its dotted prefixes (`judge` reads
    every judge.* key; `judge.max_prompt_tokens` only that key and the keys inside it)."""
    phases = PHASES if phases is None else phases
    parts = key.replace("[]", "").split(".")
    prefixes = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return [name for name, phase in phases.items() if prefixes & set(phase.params)]


# ----------------------------------------------------------------------------- cells
def _range(node: Mapping[str, Any]) -> str:
    """Numeric bounds: an interval when both ends are set ([0, 1], (0, 1]), else one comparison."""
    lo = next(((b, node[k]) for k, b in (("minimum", "["), ("exclusiveMinimum", "(")) if k in node), None)
    hi = next(((b, node[k]) for k, b in (("maximum", "]"), ("exclusiveMaximum", ")")) if k in node), None)
    if lo and hi:
        return f" in {lo[0]}{json.dumps(lo[1])}, {json.dumps(hi[1])}{hi[0]}"
    if lo:
        return f" {'>=' if lo[0] == '[' else '>'} {json.dumps(lo[1])}"
    if hi:
        return f" {'<=' if hi[0] == ']' else '<'} {json.dumps(hi[1])}"
    return ""


def _count(low: int | None, high: int | None, noun: str, plural: str) -> str | None:
    def n(k: int) -> str:
        return f"{k} {noun if k == 1 else plural}"

    if low is not None and low == high:
        return f"exactly {n(low)}"
    if low and high is not None:
        return f"{low} to {n(high)}"
    if low:
        return f"at least {n(low)}"
    if high is not None:
        return f"at most {n(high)}"
    return None


def _nested(text: str) -> str:
    """An item or entry type inside another, in parentheses where it has alternatives or notes."""
    return f"({text})" if " or " in text or text.endswith(")") or text.startswith("one of") else text


def type_text(node: Mapping[str, Any], root: Mapping[str, Any]) -> str:
    """The schema's type of a key in words: enum values, bounds, item types, nullability."""
    node = resolve(node, root)
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    if "enum" in node:
        return "one of " + ", ".join(f"`{json.dumps(v)}`" for v in node["enum"])
    for key in ("oneOf", "anyOf"):
        if key in node:
            return " or ".join(type_text(alt, root) for alt in node[key])
    types = node.get("type") or ("object" if "properties" in node else [])
    types = [types] if isinstance(types, str) else list(types)
    parts = []
    for t in sorted(types, key=lambda t: t == "null"):        # null last, the others in schema order
        if t in ("integer", "number"):
            parts.append(t + _range(node))
        elif t == "array":
            items = node.get("items")
            text = "array" + (f" of {_nested(type_text(items, root))}" if isinstance(items, Mapping) else "")
            notes = [c for c in (_count(node.get("minItems"), node.get("maxItems"), "item", "items"),
                                 "unique" if node.get("uniqueItems") else None) if c]
            parts.append(text + (f" ({', '.join(notes)})" if notes else ""))
        elif t == "object":
            extra = node.get("additionalProperties")
            text = (f"map of name to {_nested(type_text(extra, root))}"
                    if isinstance(extra, Mapping) and not node.get("properties") else "object")
            notes = _count(node.get("minProperties"), node.get("maxProperties"), "entry", "entries")
            parts.append(text + (f" ({notes})" if notes else ""))
        else:
            parts.append(t)
    return " or ".join(parts) or "any"


def default_text(node: Mapping[str, Any]) -> str:
    return f"`{json.dumps(node['default'])}`" if "default" in node else ""


def _cell(text: str) -> str:
    """Markdown table cell: one line, pipes escaped, and outside code spans `<` escaped (so that
    `<name>` or `<think>` is text, not an HTML tag)."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    pieces = text.split("`")
    if len(pieces) % 2 == 0:                 # an unpaired backtick: no code span to keep
        return text.replace("<", "&lt;")
    return "`".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(pieces))


# ----------------------------------------------------------------------------- the document
def render_params_md(schema: Mapping[str, Any] | None = None, phases: Mapping[str, Any] | None = None) -> str:
    """docs/params.md from the schema (default: workflow/schemas/params.schema.json) and the
    phase registry (default: phases.PHASES)."""
    schema = load_schema() if schema is None else schema
    all_rows = rows(schema)
    sections = list(schema.get("properties", {}))
    out = [HEADER, "Sections: " + ", ".join(f"[`{s}`](#{s.lower()})" for s in sections) + "\n"]
    for section in sections:
        out.append(f"## `{section}`\n")
        out.append("| key | type | default | description | read by |")
        out.append("|---|---|---|---|---|")
        for r in all_rows:
            if r.section != section:
                continue
            cells = (f"`{r.key}`", type_text(r.node, schema), default_text(r.schema), r.description or "",
                     ", ".join(read_by(r.key, phases)))
            out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        out.append("")
    return "\n".join(out)


def write_params_md(path: str | Path | None = None) -> Path:
    path = Path(path or REPO_ROOT / PARAMS_MD)
    path.write_text(render_params_md())
    return path


def check_params_md(path: str | Path | None = None) -> list[str]:
    """Differences between the committed docs/params.md and the render ([] when they agree)."""
    path = Path(path or REPO_ROOT / PARAMS_MD)
    if not path.is_file():
        return [f"{path}: missing (generate it with `librarm params-doc`)"]
    have, want = path.read_text(), render_params_md()
    if have == want:
        return []
    diff = list(difflib.unified_diff(have.splitlines(), want.splitlines(), f"{path} (committed)",
                                     "the render of the schema", n=0, lineterm=""))
    problems = [f"{path}: differs from the render of {SCHEMA_FILE} (regenerate it with `librarm params-doc`)"]
    problems += diff[:MAX_DIFF_LINES]
    if len(diff) > MAX_DIFF_LINES:
        problems.append(f"... {len(diff) - MAX_DIFF_LINES} more diff lines")
    return problems
