"""`librarm leaderboard`: judges side by side across benchmarks, from the summary.json of scoring
runs (one folder per judge x benchmark run).

Each row is one judge on one benchmark, read at its headline view: the majority vote when the run
drew k > 1 samples per item, else the first sample. Any metric may be absent from a summary (an
older run, a benchmark without categories, k == 1 without calibration): its cell stays empty.
Two runs of the same judge on the same benchmark (a rerun) both stay, told apart by their source
folder.

Outputs, all under one folder:
  leaderboard.csv   one row per judge x benchmark (CSV_COLUMNS), numbers rounded to 4 decimals
  leaderboard.md    a Markdown table of the headline numbers, percentages with one decimal
  leaderboard.html  one self-contained page (inline CSS and JS, no external URL): the rows,
                    sortable by any column, filtered by a judge/benchmark substring, each judge
                    linking to its per-category page
  categories/<judge>__<benchmark>.html
                    one page per row: a table per category name, a row per category value

`build_leaderboard` reads folders; `rows_from_summaries` and `write_leaderboard` take summaries
already loaded (the pipeline's report stage builds its judges' summaries in memory)."""
from __future__ import annotations

import csv
import html
import io
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import quote

from librarm.run.io import write_text

SUMMARY = "summary.json"
CSV_FILE = "leaderboard.csv"
MD_FILE = "leaderboard.md"
HTML_FILE = "leaderboard.html"
CATEGORIES_DIR = "categories"

# the headline view's metrics with a 95% CI (the summary's "<name>_ci": [low, high])
CI_METRICS = ("accuracy", "balanced_accuracy", "f1", "harmonic_mean")
CSV_COLUMNS = (
    "judge", "backend", "model", "benchmark", "items", "k",
    *(f"{m}{s}" for m in CI_METRICS for s in ("", "_low", "_high")),
    "unparsed_rate", "libra_score", "libra_score_low", "libra_score_high",
    "best_of_k", "brier", "tokens", "source",
)
INT_COLUMNS = ("items", "k", "tokens")
TEXT_COLUMNS = ("judge", "backend", "model", "benchmark", "source")

# (column, header, kind): the HTML table's columns; a "pct" column shows its CI when it has one
HTML_COLUMNS = (
    ("judge", "judge", "text"), ("backend", "backend", "text"), ("model", "model", "text"),
    ("benchmark", "benchmark", "text"), ("items", "items", "int"), ("k", "k", "int"),
    ("accuracy", "accuracy", "pct"), ("balanced_accuracy", "balanced accuracy", "pct"),
    ("f1", "F1", "pct"), ("harmonic_mean", "harmonic mean", "pct"), ("unparsed_rate", "unparsed", "pct"),
    ("libra_score", "Libra score", "pct"), ("best_of_k", "best of k", "pct"), ("brier", "Brier", "num"),
    ("tokens", "tokens", "int"), ("source", "source", "text"),
)
HEADLINE_NOTE = "Headline view: the majority vote when k > 1, else the first sample; CIs are 95%."


# --- reading ------------------------------------------------------------------------------------

def load_summary(folder: str | Path) -> dict:
    """A scoring run's summary.json (the folder, or the file itself), checked for judge and
    benchmark.name. ValueError naming the folder and file when it is absent or not a JSON object."""
    folder = Path(folder)
    path = folder if folder.name == SUMMARY and folder.is_file() else folder / SUMMARY
    if not path.is_file():
        raise ValueError(f"{folder}: no {SUMMARY} (expected {path}); is it a scoring run's output folder?")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(summary, dict):
        raise ValueError(f"{path}: not a JSON object")
    _identity(summary, str(path))
    return summary


def _identity(summary: Mapping[str, Any], where: str) -> tuple[str, str]:
    """(judge, benchmark name), or a ValueError naming `where` and the missing field."""
    if not isinstance(summary, Mapping):
        raise ValueError(f"{where}: not a JSON object")
    judge = summary.get("judge")
    if not isinstance(judge, str) or not judge:
        raise ValueError(f"{where}: missing field 'judge' (a non-empty string)")
    bench = summary.get("benchmark")
    name = bench.get("name") if isinstance(bench, Mapping) else None
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: missing field 'benchmark.name' (a non-empty string)")
    return judge, name


def _num(x: Any) -> float | None:
    """A finite number, else None (absent, null, a string, a bool, NaN)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def _int(x: Any) -> int | None:
    v = _num(x)
    return int(v) if v is not None and v == int(v) else None


def _dict(x: Any) -> Mapping[str, Any]:
    return x if isinstance(x, Mapping) else {}


def _ci(block: Mapping[str, Any], name: str) -> tuple[float | None, float | None]:
    ci = block.get(f"{name}_ci")
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        return _num(ci[0]), _num(ci[1])
    return None, None


def _text(x: Any) -> str:
    return "" if x is None else str(x)


def headline_view(metrics: Mapping[str, Any], samples: Any = None) -> str:
    """"majority" when the run drew k > 1 samples per item, else "first"."""
    k = _int(metrics.get("k"))
    if k is None:
        k = _int(samples)
    return "majority" if k is not None and k > 1 else "first"


def summary_row(summary: Mapping[str, Any], source: str = "", where: str = "summary") -> dict:
    """One leaderboard row from one summary: the CSV_COLUMNS, plus "n" (the headline view's item
    count, else the benchmark's) and "view" (which view the numbers are)."""
    judge, bench_name = _identity(summary, where)
    bench = _dict(summary.get("benchmark"))
    metrics = _dict(summary.get("metrics"))
    view = headline_view(metrics, summary.get("samples"))
    block = _dict(metrics.get(view))
    usage = _dict(summary.get("usage"))
    k = _int(metrics.get("k"))
    n = _int(block.get("n"))
    row: dict[str, Any] = {
        "judge": judge, "backend": _text(summary.get("backend")), "model": _text(summary.get("model")),
        "benchmark": bench_name, "items": _int(bench.get("items")),
        "k": k if k is not None else _int(summary.get("samples")),
    }
    for name in CI_METRICS:
        row[name] = _num(block.get(name))
        row[f"{name}_low"], row[f"{name}_high"] = _ci(block, name)
    row["unparsed_rate"] = _num(block.get("unparsed_rate"))
    row["libra_score"] = _num(metrics.get("libra_score"))
    row["libra_score_low"], row["libra_score_high"] = _ci(metrics, "libra_score")
    row["best_of_k"] = _num(_dict(metrics.get("best_of_k")).get("best_of_k"))
    row["brier"] = _num(_dict(metrics.get("mean_p")).get("brier"))
    tokens = [_int(usage.get(t)) for t in ("prompt_tokens", "completion_tokens")]
    row["tokens"] = None if all(t is None for t in tokens) else sum(t or 0 for t in tokens)
    row["source"] = _text(source)
    row["n"] = n if n is not None else row["items"]
    row["view"] = view
    return row


def _order(row: Mapping[str, Any]) -> tuple:
    acc = row.get("accuracy")
    return (row["benchmark"], acc is None, -(acc or 0.0), row["judge"], row["source"])


def _records(summaries: Sequence[Mapping[str, Any]], sources: Sequence[Any] | None,
             wheres: Sequence[str] | None = None) -> list[tuple[dict, Mapping[str, Any]]]:
    if sources is not None and len(sources) != len(summaries):
        raise ValueError(f"{len(summaries)} summaries but {len(sources)} sources")
    out = []
    for i, s in enumerate(summaries):
        source = _text(sources[i]) if sources is not None else _text(_dict(s).get("source"))
        where = wheres[i] if wheres else (source or f"summary #{i + 1}")
        out.append((summary_row(s, source, where), s))
    out.sort(key=lambda r: _order(r[0]))
    return out


def rows_from_summaries(summaries: Sequence[Mapping[str, Any]], sources: Sequence[Any] | None = None) -> list[dict]:
    """The leaderboard's rows from summaries already loaded, sorted by benchmark, then accuracy
    descending (absent accuracy last), then judge and source. `sources` names each summary's
    folder (the "source" column); without it, a summary's own "source" key, else empty."""
    return [row for row, _ in _records(summaries, sources)]


# --- formatting ---------------------------------------------------------------------------------

def _csv_value(row: Mapping[str, Any], col: str) -> Any:
    v = row.get(col)
    if v is None:
        return ""
    if col in INT_COLUMNS:
        return int(v)
    if col in TEXT_COLUMNS:
        return v
    return round(float(v), 4)


def leaderboard_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for row in rows:
        w.writerow([_csv_value(row, c) for c in CSV_COLUMNS])
    return buf.getvalue()


def pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def pct_ci(row: Mapping[str, Any], name: str) -> str:
    """"71.2% [65.0, 77.0]" (the CI when the row has both ends), "" when absent."""
    v = row.get(name)
    if v is None:
        return ""
    lo, hi = row.get(f"{name}_low"), row.get(f"{name}_high")
    return pct(v) + (f" [{100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None and hi is not None else "")


def _labels(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each row's judge, with its source when another row has the same judge and benchmark."""
    seen: dict[tuple[str, str], int] = {}
    for r in rows:
        seen[(r["judge"], r["benchmark"])] = seen.get((r["judge"], r["benchmark"]), 0) + 1
    return [f"{r['judge']} ({r['source'] or 'unnamed'})" if seen[(r["judge"], r["benchmark"])] > 1 else r["judge"]
            for r in rows]


def _md_cell(text: str) -> str:
    return re.sub(r"\s+", " ", text).replace("\\", "\\\\").replace("|", "\\|")


def leaderboard_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    head = ("benchmark", "judge", "n", "k", "accuracy [95% CI]", "balanced acc", "F1", "harmonic", "unparsed",
            "Libra score")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for row, label in zip(rows, _labels(rows)):
        cells = [_md_cell(row["benchmark"]), _md_cell(label), _text(row.get("n")), _text(row.get("k")),
                 pct_ci(row, "accuracy"), pct(row.get("balanced_accuracy")), pct(row.get("f1")),
                 pct(row.get("harmonic_mean")), pct(row.get("unparsed_rate")), pct_ci(row, "libra_score")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + HEADLINE_NOTE + "\n"


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip(".")
    return s[:80] or "_"


def category_pages(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each row's per-category page, relative to the output folder: categories/<judge>__<benchmark>.html
    (characters other than letters, digits, ".", "_", "-" become "_"; a second row with the same
    name gets "__2", and so on)."""
    used: set[str] = set()
    out = []
    for r in rows:
        base = f"{_slug(r['judge'])}__{_slug(r['benchmark'])}"
        name, i = base, 1
        while name.lower() in used:
            i += 1
            name = f"{base}__{i}"
        used.add(name.lower())
        out.append(f"{CATEGORIES_DIR}/{name}.html")
    return out


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em;color:#1d2430}
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.5em 0 .4em}
p.note{color:#555;margin:.2em 0 1em}
table{border-collapse:collapse;margin-bottom:1em}
th,td{padding:.3em .6em;border-bottom:1px solid #dde;text-align:left;vertical-align:top}
td.n{text-align:right;white-space:nowrap}
th{background:#f3f5f9;position:sticky;top:0}
th button{all:unset;cursor:pointer;font-weight:600}
th button:focus-visible{outline:2px solid #36c}
th[aria-sort=ascending] button::after{content:" \\25B2"}
th[aria-sort=descending] button::after{content:" \\25BC"}
tr:hover td{background:#fafbfd}
small{color:#667;display:block;font-size:.8em}
input[type=search]{font:inherit;padding:.3em .5em;width:22em;margin-right:1em}
a{color:#2451a6}
"""

_JS = """
(function () {
  var table = document.getElementById('board');
  var body = table.tBodies[0];
  var heads = table.tHead.rows[0].cells;
  var state = {col: -1, dir: 1};
  function value(row, i) { return row.cells[i].getAttribute('data-v'); }
  function sortBy(i) {
    var numeric = heads[i].getAttribute('data-type') !== 'text';
    state.dir = state.col === i ? -state.dir : 1;
    state.col = i;
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a, i), y = value(b, i);
      var ex = x === null || x === '', ey = y === null || y === '';
      var tie = Number(a.getAttribute('data-i')) - Number(b.getAttribute('data-i'));
      if (ex || ey) { return ex === ey ? tie : (ex ? 1 : -1); }
      var d = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y, undefined, {sensitivity: 'base'});
      return d * state.dir || tie;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    for (var j = 0; j < heads.length; j++) {
      heads[j].setAttribute('aria-sort', j === i ? (state.dir > 0 ? 'ascending' : 'descending') : 'none');
    }
  }
  Array.prototype.forEach.call(heads, function (th, i) {
    th.querySelector('button').addEventListener('click', function () { sortBy(i); });
  });
  var box = document.getElementById('filter'), count = document.getElementById('count');
  function filter() {
    var q = box.value.trim().toLowerCase(), shown = 0;
    Array.prototype.forEach.call(body.rows, function (r) {
      var hide = q !== '' && r.getAttribute('data-filter').indexOf(q) < 0;
      r.hidden = hide;
      if (!hide) { shown++; }
    });
    count.textContent = shown + ' of ' + body.rows.length + ' rows';
  }
  box.addEventListener('input', filter);
  filter();
})();
"""


def _page(title: str, body: str, script: str = "") -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<link rel=\"icon\" href=\"data:,\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n"
            + (f"<script>{script}</script>\n" if script else "") + "</body>\n</html>\n")


def _esc(x: Any) -> str:
    return html.escape(_text(x))


def _cell(row: Mapping[str, Any], col: str, kind: str) -> str:
    v = row.get(col)
    if v is None:
        return '<td class="n" data-v=""></td>' if kind != "text" else '<td data-v=""></td>'
    if kind == "text":
        return f'<td data-v="{_esc(v)}">{_esc(v)}</td>'
    if kind == "int":
        return f'<td class="n" data-v="{int(v)}">{int(v):,}</td>'
    if kind == "num":
        return f'<td class="n" data-v="{v!r}">{v:.3f}</td>'
    lo, hi = row.get(f"{col}_low"), row.get(f"{col}_high")
    ci = f"<small>[{100 * lo:.1f}, {100 * hi:.1f}]</small>" if lo is not None and hi is not None else ""
    return f'<td class="n" data-v="{v!r}">{pct(v)}{ci}</td>'


def leaderboard_html(rows: Sequence[Mapping[str, Any]], pages: Sequence[str]) -> str:
    labels = _labels(rows)
    head = "".join(f'<th data-key="{c}" data-type="{"text" if k == "text" else "num"}" aria-sort="none">'
                   f'<button type="button">{html.escape(h)}</button></th>' for c, h, k in HTML_COLUMNS)
    body = []
    for i, (row, page, label) in enumerate(zip(rows, pages, labels)):
        cells = []
        for col, _, kind in HTML_COLUMNS:
            if col == "judge":
                extra = f"<small>{_esc(row['source'])}</small>" if label != row["judge"] else ""
                cells.append(f'<td data-v="{_esc(row["judge"])}"><a href="{html.escape(quote(page))}">'
                             f'{_esc(row["judge"])}</a>{extra}</td>')
            else:
                cells.append(_cell(row, col, kind))
        key = f"{row['judge']}\n{row['benchmark']}".lower()
        body.append(f'<tr data-i="{i}" data-filter="{html.escape(key)}">' + "".join(cells) + "</tr>")
    n_bench = len({r["benchmark"] for r in rows})
    content = (
        "<h1>Judge leaderboard</h1>\n"
        f'<p class="note">{len(rows)} runs, {len({r["judge"] for r in rows})} judges, {n_bench} benchmarks. '
        f"{html.escape(HEADLINE_NOTE)} Click a column header to sort; click a judge for its per-category "
        "numbers.</p>\n"
        '<p><input type="search" id="filter" placeholder="filter by judge or benchmark" '
        'aria-label="filter by judge or benchmark"><span id="count"></span></p>\n'
        f'<table id="board">\n<thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(body) + "\n</tbody>\n</table>"
    )
    return _page("Judge leaderboard", content, _JS)


def category_html(row: Mapping[str, Any], summary: Mapping[str, Any], label: str, back: str) -> str:
    """A row's per-category page: one table per category name, a row per value."""
    per = _dict(_dict(summary.get("metrics")).get("per_category"))
    parts = [f"<h1>{_esc(label)} on {_esc(row['benchmark'])}</h1>",
             f'<p class="note"><a href="{html.escape(back)}">back to the leaderboard</a> &middot; '
             f"source {_esc(row['source']) or 'unnamed'} &middot; headline {pct_ci(row, 'accuracy') or 'n/a'} "
             f"accuracy ({_esc(row['view'])} view). Per-category CIs are 95%.</p>"]
    tables = 0
    for cat, values in per.items():
        if not isinstance(values, Mapping) or not values:
            continue
        tables += 1
        lines = ["<tr><th>value</th><th>n</th><th>accuracy [95% CI]</th><th>balanced accuracy</th>"
                 "<th>F1</th><th>unparsed</th></tr>"]
        for value, m in values.items():
            m = _dict(m)
            r = {name: _num(m.get(name)) for name in ("accuracy", "balanced_accuracy", "f1", "unparsed_rate")}
            r["accuracy_low"], r["accuracy_high"] = _ci(m, "accuracy")
            n = _int(m.get("n"))
            lines.append(f"<tr><td>{_esc(value)}</td><td class=\"n\">{'' if n is None else n}</td>"
                         f"<td class=\"n\">{pct_ci(r, 'accuracy')}</td><td class=\"n\">{pct(r['balanced_accuracy'])}</td>"
                         f"<td class=\"n\">{pct(r['f1'])}</td><td class=\"n\">{pct(r['unparsed_rate'])}</td></tr>")
        parts.append(f"<h2>{_esc(cat)}</h2>\n<table>\n" + "\n".join(lines) + "\n</table>")
    if not tables:
        parts.append('<p class="note">This summary has no per-category metrics.</p>')
    return _page(f"{label} on {row['benchmark']}", "\n".join(parts))


# --- writing ------------------------------------------------------------------------------------

def write_leaderboard(summaries: Sequence[Mapping[str, Any]], out: str | Path,
                      sources: Sequence[Any] | None = None, wheres: Sequence[str] | None = None) -> dict:
    """Write the leaderboard of summaries already loaded under `out`: {"rows": n, "files": [paths]}."""
    if not summaries:
        raise ValueError("a leaderboard needs at least one summary")
    records = _records(summaries, sources, wheres)
    rows = [r for r, _ in records]
    pages = category_pages(rows)
    out = Path(out)
    (out / CATEGORIES_DIR).mkdir(parents=True, exist_ok=True)
    files = []

    def put(rel: str, text: str) -> None:
        write_text(out / rel, text)
        files.append(str(out / rel))

    put(CSV_FILE, leaderboard_csv(rows))
    put(MD_FILE, leaderboard_markdown(rows))
    put(HTML_FILE, leaderboard_html(rows, pages))
    for (row, summary), page, label in zip(records, pages, _labels(rows)):
        put(page, category_html(row, summary, label, f"../{HTML_FILE}"))
    return {"rows": len(rows), "files": files}


def build_leaderboard(out_dirs: Sequence[str | Path], out: str | Path) -> dict:
    """`librarm leaderboard OUT1 OUT2 ... --out DIR`: read each scoring folder's summary.json and
    write the leaderboard under `out`. ValueError for a folder without summary.json or a summary
    without judge or benchmark.name."""
    if not out_dirs:
        raise ValueError("no scoring folders given (each holds a summary.json)")
    summaries = [load_summary(d) for d in out_dirs]
    wheres = [str(Path(d) / SUMMARY) if Path(d).name != SUMMARY else str(d) for d in out_dirs]
    sources = [str(Path(d).parent) if Path(d).name == SUMMARY else str(d) for d in out_dirs]
    return write_leaderboard(summaries, out, sources, wheres)
