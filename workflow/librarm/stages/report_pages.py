"""The report's pages for `snakemake --report`: the summary and its tables as HTML, the judges'
Libra-score plot, and a stand-in image for a declared plot that a run's data does not give.

Snakemake's report shows images and HTML (other files only as downloads), and includes only
declared outputs marked with report(): rules/report.smk declares every plot of
librarm.stages.report (PLOTS), the pages here and the model cards; workflow/report/*.rst are their
captions. Nothing here changes the report's numbers: the pages are summary.md rendered, table by
table, and the plot reads the evaluate phase's summary."""
from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from librarm.run import paths as P
from librarm.run.io import read_json, write_text
from librarm.run.settings import EvaluateSettings

SUMMARY_HTML = f"{P.REPORT}/summary.html"
TABLES_DIR = f"{P.REPORT}/tables"
TABLE_PAGE = f"{TABLES_DIR}/{{page}}.html"
LIBRA_SCORE_PLOT = f"{P.REPORT}/libra_score.png"

# The table pages, in the order of the pipeline: each table of summary.md goes to the page of the
# phase that makes it (a title no prefix matches goes to the last page whose keyword it holds,
# else to "judges").
TABLE_PAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "bench": ("Libra Bench: generators and composition", ("Generators", "Libra Bench composition")),
    "judges": ("Judges on Libra Bench", ("Judges on Libra Bench", "Judge hacking", "Scalar reward models",
                                         "Paired judge comparisons")),
    "training": ("Judge training (learning to think)", ("Judge training", "GRPO", "Rejection sampling")),
    "downstream": ("Downstream: judge-labelled DPO", ("DPO", "Downstream", "Gold curve")),
}


def page_of(title: str) -> str:
    for page, (_, prefixes) in TABLE_PAGES.items():
        if title.startswith(prefixes):
            return page
    return "downstream" if re.search(r"DPO|[Dd]ownstream|policy", title) else "judges"


# ----------------------------------------------------------------------------- HTML
_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 1.5em; color: #1f2328; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; } h3 { font-size: 1.05em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.88em; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; }
th { background: #f6f8fa; } td { text-align: right; } td:first-child { text-align: left; }
code { background: #f6f8fa; padding: 0 3px; }
"""


def markdown_html(text: str) -> str:
    """GitHub-style Markdown (tables included) as HTML; raw HTML in the text is escaped."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def html_page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head>\n<body>\n{body}</body></html>\n")


def split_tables(markdown: str) -> list[tuple[str, str]]:
    """summary.md's sections as (title, Markdown), in order; the plot list is not a table."""
    parts = re.split(r"^### ", markdown, flags=re.M)
    out = []
    for part in parts[1:]:
        title = part.split("\n", 1)[0].strip()
        if title != "Plots":
            out.append((title, "### " + part))
    return out


def write_pages(markdown_path: str | Path, summary_html: str | Path, table_pages: Mapping[str, str | Path],
                headline: Mapping[str, Any] | None = None) -> list[str]:
    """summary.html (summary.md as a page, the headline metrics first) and one page per phase
    with that phase's tables (table_pages: page name -> path)."""
    from librarm.run.repro import drop_timing_columns

    # wall-clock columns (seconds, tokens/s) stay in summary.md, where repro_check blanks them; these
    # pages are results and must be the same bytes in every run
    md = drop_timing_columns(Path(markdown_path).read_text(encoding="utf-8"))
    head = ""
    if headline:
        rows = "".join(f"<tr><td><code>{html.escape(k)}</code></td><td>{html.escape(headline_text(k, v))}</td></tr>"
                       for k, v in headline.items())
        head = (f"<h2>Headline ({P.REPORT_METRICS}, the DVC metric)</h2>\n"
                f"<table class=\"headline\"><tr><th>metric</th><th>value</th></tr>{rows}</table>\n")
    body = markdown_html(md)
    # the first heading is the page title; the headline goes right under it
    first = body.find("</h1>")
    body = body[:first + 5] + "\n" + head + body[first + 5:] if first >= 0 else head + body
    write_text(summary_html, html_page("Libra run report", body))
    written = [str(summary_html)]
    sections = split_tables(md)
    for page, path in table_pages.items():
        title = TABLE_PAGES.get(page, (page, ()))[0]
        mine = [text for t, text in sections if page_of(t) == page]
        content = "".join(markdown_html(text) for text in mine) or \
            "<p>This run has no table of this phase (the phase is off in its params).</p>\n"
        write_text(path, html_page(title, f"<h1>{html.escape(title)}</h1>\n"
                                          "<p>Percentages unless marked; every number is read from the metrics file "
                                          f"that <code>{P.REPORT_SUMMARY}</code> names for it.</p>\n" + content))
        written.append(str(path))
    return written


def headline_text(key: str, v: Any, units: bool = True) -> str:
    """A headline metric as people read it: Libra scores in percent, gains in signed points, counts
    as they are, correlations to three places (docs/results.md shows them without units)."""
    if v is None:
        return "n/a"
    if isinstance(v, bool) or isinstance(v, int):
        return str(v)
    if key.startswith("libra."):
        return f"{100 * v:.1f}" + ("%" if units else "")
    if key.startswith("gain."):
        return f"{100 * v:+.1f}" + (" points" if units else "")
    return f"{v:.3f}"


# ----------------------------------------------------------------------------- plots
def libra_score_plot(eval_summary: str | Path, out: str | Path, order: Iterable[str] = ()) -> str:
    """Each judge's Libra score with its 95% interval (the evaluate phase's summary), chance at 50%."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judges = read_json(eval_summary).get("judges", {})
    order = [j for j in order if j in judges] + sorted(j for j in judges if j not in set(order))
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * max(3, len(order)) + 1.2))
    ys = list(range(len(order)))[::-1]
    for y, j in zip(ys, order):
        s = judges[j].get("libra_score")
        if s is None:
            continue
        lo, hi = judges[j].get("libra_score_ci95") or (s, s)
        ax.barh(y, 100 * s, color="C0", height=0.6)
        ax.errorbar(100 * s, y, xerr=[[100 * (s - lo)], [100 * (hi - s)]], color="black", capsize=3, lw=1)
        ax.text(100 * hi + 1, y, f"{100 * s:.1f}", va="center", fontsize=8)
    ax.axvline(50, color="grey", lw=0.8, ls="--")
    ax.set_yticks(ys, order)
    ax.set_xlim(0, 105)
    ax.set_xlabel("Libra score (%), 95% CI; dashed: chance")
    ax.set_title("Judges on Libra Bench: Libra score")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return str(out)


def stand_in_plot(path: str | Path, reason: str) -> str:
    """An image that says why a declared plot has no data in this run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 1.6))
    ax.axis("off")
    ax.text(0.5, 0.5, f"{Path(path).stem}: no data in this run\n{reason}", ha="center", va="center", fontsize=9,
            wrap=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


def ensure_plots(paths: Iterable[str | Path]) -> list[str]:
    """Declared plots the report did not draw (its data decides, e.g. no fitted labeler leaves no
    correlation): a stand-in image each, so the declared outputs exist. Returns the stand-ins."""
    made = []
    for p in paths:
        if not Path(p).exists():
            made.append(stand_in_plot(p, "the phase that feeds it did not produce a series for it"))
    return made


def write_step_outputs(io, headline: Mapping[str, Any], *, evaluate: EvaluateSettings) -> list[str]:
    """The report step's pages and plots for `snakemake --report` (the outputs its rule declares
    under these names: html, tables, libra_plot, plots; the plot's judges in evaluate.judges'
    order). Returns the files written."""
    out: list[str] = []
    if io.outputs.get("html"):
        pages = {Path(p).stem: p for p in io.outputs.get("tables", ())}
        out += write_pages(io.output("markdown"), io.output("html"), pages, headline)
    if io.outputs.get("libra_plot"):
        out.append(libra_score_plot(io.input("eval"), io.output("libra_plot"), evaluate.judges))
    if io.outputs.get("plots"):
        out += ensure_plots(io.output_list("plots"))
    return out
