"""`snakemake --report report.html` shows the run's results: the summary and its tables (HTML pages
made from summary.md, by phase), every plot of the report and the judges' Libra-score plot, and the
model cards, each under its phase's category with a caption from workflow/report/*.rst.

Unit level: the pages (librarm.stages.report_pages) from a fixture report. On the ci run: the report's
content, then the report in a browser (Playwright + the OS's Chromium): it loads without console
errors and shows the Libra-score plot and the summary table."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import REPO, run

from librarm.run import paths as P
from librarm.stages.report_pages import (
    LIBRA_SCORE_PLOT,
    SUMMARY_HTML,
    TABLE_PAGE,
    TABLE_PAGES,
    ensure_plots,
    libra_score_plot,
    page_of,
    split_tables,
    write_pages,
)

# the browser fixtures (browser, page): Playwright with the OS's Chromium
pytest_plugins = ("browser",)


@pytest.fixture
def fixture_report(tmp_path, params):
    """A report built from test_report's small fixture run: (root, report folder, summary, params)."""
    import copy

    from test_report import _fixture_run

    from librarm.run.labelers import all_policies
    from librarm.run.settings import PairsSettings, call
    from librarm.stages.report import build_report

    p = copy.deepcopy(params)
    p["pairs"]["labelers"] = ["base", "rl", "sft", "gold", "random"]
    p["report"].update(fit_labelers=["base", "rl", "sft"], resamples=200, permutations=500)
    _fixture_run(tmp_path, p)
    out = tmp_path / P.REPORT
    sources = {"verify": P.VERIFY_STATS, "bench": P.BENCH_STATS, "eval": P.EVAL_SUMMARY, "train": P.TRAIN_STATS,
               "rs": P.RS_STATS, "pairs": P.PAIRS_STATS, "dpo": P.DPO_STATS, "downstream": P.DOWNSTREAM_SUMMARY}
    summary = call(build_report, p, sources, {j: P.EVAL_METRICS.format(judge=j) for j in p["evaluate"]["judges"]},
                           {n: P.POLICY_PER_PROBLEM.format(policy=n) for n in all_policies(PairsSettings.from_params(p))},
                           metrics_path=out / "metrics.json", summary_path=out / "summary.json",
                           markdown_path=out / "summary.md", plots_dir=out, root=tmp_path)
    return tmp_path, out, summary, p


def test_every_table_goes_to_the_page_of_its_phase(fixture_report, tmp_path):
    root, out, summary, _ = fixture_report
    md = (out / "summary.md").read_text()
    titles = [t for t, _ in split_tables(md)]
    assert titles == [t["title"] for t in summary["tables"]]
    # each title is placed by a prefix of its page, not by the fallback
    for title in titles:
        assert any(title.startswith(prefixes) for _, prefixes in TABLE_PAGES.values()), title
    pages = {p: tmp_path / f"{p}.html" for p in TABLE_PAGES}
    write_pages(out / "summary.md", tmp_path / "summary.html", pages, summary["headline"])
    seen = []
    for name, path in pages.items():
        html = path.read_text()
        mine = [t for t in titles if page_of(t) == name]
        assert html.count("<table>") == len(mine), name
        seen += [t for t in titles if f"<h3>{t.replace('&', '&amp;').replace(chr(39), '&#x27;')}</h3>" in html
                 or f"<h3>{t}</h3>" in html]
    assert sorted(seen) == sorted(titles)
    assert page_of("Judges on Libra Bench") == "judges" and page_of("DPO training") == "downstream"
    assert page_of("GRPO: pass-rate filter and length penalty") == "training"


def test_the_summary_page_is_summary_md_with_the_headline_first(fixture_report, tmp_path):
    _, out, summary, _ = fixture_report
    write_pages(out / "summary.md", tmp_path / "summary.html", {}, summary["headline"])
    html = (tmp_path / "summary.html").read_text()
    tables = len(split_tables((out / "summary.md").read_text()))
    assert html.count("<table") == tables + 1                       # + the headline
    assert html.index("Headline") < html.index("Judges on Libra Bench")
    for key in summary["headline"]:
        assert f"<code>{key}</code>" in html
    # every number of the Judges table is the one summary.md shows
    row = next(ln for ln in (out / "summary.md").read_text().splitlines() if ln.startswith("| rl |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert "<td>" + "</td>\n<td>".join(cells) + "</td>" in html


def test_the_libra_score_plot_and_stand_ins(fixture_report, tmp_path):
    root, _, _, p = fixture_report
    out = libra_score_plot(root / P.EVAL_SUMMARY, tmp_path / "libra_score.png", p["evaluate"]["judges"])
    assert Path(out).stat().st_size > 5000
    present = tmp_path / "libra_score.png"
    missing = tmp_path / "gain_vs_pair_accuracy.png"
    assert ensure_plots([present, missing]) == [str(missing)]
    assert missing.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- on the ci run
def report_plots(root: Path) -> list[str]:
    """Every plot file of the ci run's report folder (the report's own and the Libra-score plot)."""
    return sorted(p.name for p in (root / P.REPORT).glob("*.png"))


@pytest.fixture(scope="module")
def snakemake_report(ci_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("snakemake-report") / "report.html"
    run(f"snakemake --report {out}", ci_run)
    return out


def _results(report: Path) -> dict:
    """The report's result entries (the JSON objects the page's app reads): path -> entry, with
    the entry's category added."""
    text = report.read_text()
    found = {}
    for name in ("results", "categories"):
        m = re.search(rf"var {name} = (\{{.*?\}});\s*\n", text, flags=re.S)
        assert m, f"no {name} object in the report"
        found[name] = json.loads(m.group(1))
    for cat, subcats in found["categories"].items():
        for paths in subcats.values():
            for path in paths:
                found["results"][path]["category"] = cat
    return found["results"]


@pytest.mark.slow
def test_the_snakemake_report_holds_the_summary_tables_plots_and_cards(ci_run, snakemake_report):
    results = _results(snakemake_report)
    by_name = {Path(k).as_posix(): v for k, v in results.items()}
    want = [SUMMARY_HTML, P.REPORT_MARKDOWN, LIBRA_SCORE_PLOT] + \
        [TABLE_PAGE.format(page=p) for p in TABLE_PAGES] + [f"{P.REPORT}/{n}" for n in report_plots(ci_run)]
    missing = [w for w in want if w not in by_name]
    assert not missing, f"not in the report: {missing}"
    cards = [k for k in by_name if k.startswith(f"{P.REPORT}/model_cards/")]
    assert cards and all(k.endswith("/README.md") for k in cards)
    cats = {v["category"] for v in by_name.values()}
    assert {"Summary", "Bench", "Judges", "Judge training", "Downstream", "Model cards"} <= cats
    assert by_name[LIBRA_SCORE_PLOT]["category"] == "Judges"
    assert by_name[f"{P.REPORT}/dpo_loss.png"]["category"] == "Downstream"
    # each result carries its caption (workflow/report/<name>.rst)
    caption = (REPO / "workflow/report/libra_score.rst").read_text().split()[:4]
    assert all(w.strip("*") in by_name[LIBRA_SCORE_PLOT]["caption"] for w in caption)


@pytest.mark.slow
@pytest.mark.engines
def test_the_report_opens_and_shows_the_libra_score_plot_and_the_summary_table(ci_run, snakemake_report, page):
    metrics = json.loads((ci_run / P.REPORT_METRICS).read_text())
    page.goto(snakemake_report.as_uri())
    page.get_by_role("link", name="Judges", exact=True).click()
    page.get_by_role("link", name="Plots", exact=True).click()
    page.locator("tr", has_text=LIBRA_SCORE_PLOT).locator("a[iconname=eye]").click()
    img = page.locator("img[src^='data:image/png']").first
    img.wait_for(timeout=30_000)
    assert img.evaluate("e => e.naturalWidth") > 300
    page.keep("snakemake-report-libra-score")

    page.get_by_role("link", name="Results", exact=True).first.click()
    page.get_by_role("link", name="Summary", exact=True).click()
    page.locator("tr", has_text=SUMMARY_HTML).locator("a[iconname=eye]").click()
    frame = page.frame_locator("iframe")
    table = frame.locator("h3", has_text="Judges on Libra Bench").locator("xpath=following-sibling::table[1]")
    table.wait_for(timeout=30_000)
    rows = {r.split("\t")[0]: r.split("\t") for r in table.inner_text().splitlines()[1:]}
    judges = {k.removeprefix("libra."): v for k, v in metrics.items() if k.startswith("libra.")}
    assert set(rows) == set(judges)
    for judge, score in judges.items():
        assert rows[judge][1] == f"{100 * score:.1f}", (judge, rows[judge])
    page.keep("snakemake-report-summary")
    assert page.errors == [], page.errors
