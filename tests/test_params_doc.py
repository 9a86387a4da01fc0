"""docs/params.md, the parameter reference generated from workflow/schemas/params.schema.json:
every key described, the committed file current, and the tables' types, defaults and readers."""
from __future__ import annotations

import json
from pathlib import Path

from librarm.params_doc import check_params_md, missing_descriptions, read_by, render_params_md, rows, type_text
from librarm.phases import PHASES

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((REPO / "workflow/schemas/params.schema.json").read_text())


def table_row(md: str, key: str) -> list[str]:
    """The cells of the row of `key` (its first cell is `key` in backticks)."""
    hits = [line for line in md.splitlines() if line.startswith(f"| `{key}` |")]
    assert len(hits) == 1, f"{key}: {len(hits)} rows"
    return [c.strip() for c in hits[0].strip("|").split(" | ")]


def test_every_schema_key_has_a_description():
    assert missing_descriptions() == []


def test_missing_descriptions_names_the_key():
    schema = {"type": "object", "properties": {
        "a": {"type": "object", "description": "section a", "properties": {"b": {"type": "integer"}}},
        "m": {"type": "object", "description": "a map", "additionalProperties": {
            "type": "object", "properties": {"x": {"type": "string", "description": "x"}}}},
        "l": {"type": "array", "description": "a list", "items": {
            "type": "object", "properties": {"y": {"type": "string"}}}}}}
    assert missing_descriptions(schema) == ["a.b", "m.<name>", "l[].y"]


def test_committed_params_md_is_the_render():
    assert check_params_md(REPO / "docs/params.md") == []


def test_check_reports_drift_and_a_missing_file(tmp_path):
    stale = tmp_path / "params.md"
    stale.write_text(render_params_md().replace("token budget", "token allowance", 1))
    problems = check_params_md(stale)
    assert problems and "librarm params-doc" in problems[0]
    assert any(line.startswith("-") and "token allowance" in line for line in problems)
    assert "missing" in check_params_md(tmp_path / "absent.md")[0]


def test_render_is_deterministic_and_marked_generated():
    md = render_params_md()
    assert md == render_params_md()
    assert "GENERATED from workflow/schemas/params.schema.json by `librarm params-doc`" in md.splitlines()[0]


def test_every_top_level_section_has_a_table_in_schema_order():
    md = render_params_md()
    headings = [line[len("## `"):-1] for line in md.splitlines() if line.startswith("## `")]
    assert headings == list(SCHEMA["properties"])
    for section in SCHEMA["properties"]:
        assert table_row(md, section)[0] == f"`{section}`"


def test_every_schema_key_is_a_row():
    md = render_params_md()
    keys = [r.key for r in rows()]
    assert len(keys) == len(set(keys))
    for key in keys:
        table_row(md, key)


def test_declared_phase_reads_show_in_the_row():
    md = render_params_md()
    assert "sample" in table_row(md, "sampling.max_new_tokens")[4].split(", ")
    # `judge.max_prompt_tokens` is declared by bootstrap (which does not read all of `judge`)
    assert "bootstrap" in table_row(md, "judge.max_prompt_tokens")[4].split(", ")
    assert "bootstrap" not in table_row(md, "judge.max_new_tokens")[4].split(", ")
    # a declared prefix covers the keys inside maps and lists
    assert "sample" in table_row(md, "generators.<name>.backend")[4].split(", ")
    assert "problems" in table_row(md, "problems.sets[].name")[4].split(", ")


def test_read_by_follows_the_registry():
    for key in ("seed", "judge.overflow", "pairs.engine.base_url", "rl.variants.<name>.init", "problems.sets[].n"):
        parts = key.replace("[]", "").split(".")
        prefixes = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
        assert read_by(key) == [n for n, p in PHASES.items() if prefixes & set(p.params)]
    # every key a phase declares is a key of the schema, so it shows as a reader somewhere
    keys = {r.key for r in rows()}
    for phase in PHASES.values():
        for declared in phase.params:
            assert declared in keys, f"{phase.name} declares {declared!r}, which the schema lacks"
            assert phase.name in read_by(declared)


def test_types_and_defaults_come_from_the_schema():
    md = render_params_md()
    on_bad = table_row(md, "problems.on_bad_line")
    assert on_bad[1] == 'one of `"error"`, `"quarantine"`' and on_bad[2] == '`"error"`'
    assert table_row(md, "sampling.system_prompt")[1:3] == ["string or null", "`null`"]
    assert table_row(md, "rl.passrate_band")[1:3] == ["array of number in [0, 1] (exactly 2 items)", "`[0.1, 0.9]`"]
    assert table_row(md, "sampling.top_p")[1:3] == ["number in (0, 1]", ""]
    assert table_row(md, "rl.l_exp")[1] == 'integer >= 1 or `"auto"`'


def test_refs_are_resolved():
    md = render_params_md()
    # `$ref: #/$defs/backend`: the enum comes from the definition, the default from the key
    assert table_row(md, "pairs.backend")[1:3] == ['one of `"hf"`, `"vllm"`, `"http"`, `"pseudo"`, `"rule"`', '`"hf"`']
    steps = SCHEMA["properties"]["problems"]["properties"]["sets"]["items"]["properties"]["steps"]
    assert steps["$ref"] == "#/$defs/steps"
    assert type_text(steps, SCHEMA).startswith("integer in [1, 8] or array of")
    # keys inside a referenced definition are listed under the referring key
    schema = {"type": "object", "$defs": {"engine": {"type": "object", "description": "an engine", "properties": {
        "url": {"type": "string", "description": "where it listens", "default": "http://x"}}}},
        "properties": {"serve": {"$ref": "#/$defs/engine"}}}
    md = render_params_md(schema, phases={})
    assert table_row(md, "serve")[3] == "an engine"
    assert table_row(md, "serve.url")[1:4] == ["string", '`"http://x"`', "where it listens"]
    assert missing_descriptions(schema) == []


def test_cells_escape_pipes_and_html():
    schema = {"type": "object", "properties": {"k": {"type": "string", "description": "a|b opens <think>, `x|<y>`"}}}
    row = table_row(render_params_md(schema, phases={}), "k")
    assert row[3] == "a\\|b opens &lt;think>, `x\\|<y>`"
