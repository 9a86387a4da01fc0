"""`librarm leaderboard`: judges side by side across benchmarks from scoring runs' summary.json.

Unit level: the CSV (rows, order, columns, rounding, empty cells), the Markdown table, the escaping
of a judge name that is HTML, the per-category pages, a rerun's two rows, and the errors for a
folder without summary.json and a summary without judge or benchmark.name. In a headless browser
(Playwright + the OS's Chromium): the page loads without console errors, sorts by a header click
both ways with empty cells last, filters rows, and links a judge to its category page."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from librarm.judging.leaderboard import (
    CSV_COLUMNS,
    build_leaderboard,
    category_pages,
    load_summary,
    rows_from_summaries,
)

# the browser fixtures (browser, page): Playwright with the OS's Chromium
pytest_plugins = ("browser",)

EVIL = "<b>x</b>"


def _view(acc, lo, hi, n, **extra):
    v = {"accuracy": acc, "accuracy_ci": [lo, hi], "balanced_accuracy": acc - 0.01,
         "balanced_accuracy_ci": [lo - 0.01, hi - 0.01], "f1": acc - 0.02, "f1_ci": [lo - 0.02, hi - 0.02],
         "harmonic_mean": acc - 0.03, "harmonic_mean_ci": [lo - 0.03, hi - 0.03], "unparsed_rate": 0.02, "n": n}
    v.update(extra)
    return v


def summary(judge, bench, k, first, majority=None, items=120, **metrics):
    m = {"k": k, "first": first, **metrics}
    if majority is not None:
        m["majority"] = majority
    return {"judge": judge, "model": f"models/{judge}", "backend": "hf", "samples": k,
            "benchmark": {"name": bench, "format": bench, "path": f"benchmarks/{bench}.jsonl", "sha256": None,
                          "items": items},
            "metrics": m,
            "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "requests": items, "requests_per_s": 3.1}}


def _write(folder: Path, s: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(s))
    return folder


@pytest.fixture
def runs(tmp_path):
    """Three scoring folders: rl on verifybench (k = 8: majority is its headline), the HTML-named
    judge on verifybench (k = 1, no F1), rl on libra (k = 1, a Libra score, per-category metrics,
    no balanced accuracy)."""
    rl_vb = summary("rl", "verifybench", 8, _view(0.70, 0.6, 0.8, 120),
                    majority=_view(0.812345678, 0.75, 0.87, 120),
                    mean_p={"brier": 0.18, "ece": 0.05, "auroc": 0.8},
                    best_of_k={"best_of_k": 0.6, "groups": 10, "oracle": 0.9, "random": 0.4},
                    per_category={"answer_type": {"numeric": _view(0.9, 0.8, 0.95, 40),
                                                  "symbolic": _view(0.7, 0.6, 0.8, 80)}})
    evil_first = _view(0.60, 0.5, 0.7, 120)
    del evil_first["f1"], evil_first["f1_ci"]
    evil_vb = summary(EVIL, "verifybench", 1, evil_first,
                      per_category={"domain": {"<i>alg</i>": _view(0.5, 0.4, 0.6, 10)}})
    libra_first = _view(0.55, 0.45, 0.65, 200)
    del libra_first["balanced_accuracy"]
    rl_libra = summary("rl", "libra", 1, libra_first, items=200, libra_score=0.62, libra_score_ci=[0.58, 0.66],
                       per_category={"source": {"math": _view(0.5, 0.4, 0.6, 100), "code": _view(0.6, 0.5, 0.7, 100)},
                                     "difficulty": {"hard": _view(0.4, 0.3, 0.5, 50)}})
    dirs = [_write(tmp_path / "score_rl_vb", rl_vb), _write(tmp_path / "score_evil_vb", evil_vb),
            _write(tmp_path / "score_rl_libra", rl_libra)]
    return dirs


def _csv(out: Path) -> list[dict]:
    with open(out / "leaderboard.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_the_csv_has_one_row_per_run_sorted_by_benchmark_then_accuracy(runs, tmp_path):
    out = tmp_path / "board"
    res = build_leaderboard(runs, out)
    assert res["rows"] == 3
    assert {Path(f).relative_to(out).as_posix() for f in res["files"]} >= {
        "leaderboard.csv", "leaderboard.md", "leaderboard.html"}
    with open(out / "leaderboard.csv", newline="") as fh:
        assert next(csv.reader(fh)) == list(CSV_COLUMNS)
    rows = _csv(out)
    assert [(r["benchmark"], r["judge"]) for r in rows] == [
        ("libra", "rl"), ("verifybench", "rl"), ("verifybench", EVIL)]
    libra, rl, evil = rows
    # k > 1: the majority view, rounded to 4 decimals; its CI and the calibration/best-of-k columns
    assert rl["k"] == "8" and rl["accuracy"] == "0.8123" and (rl["accuracy_low"], rl["accuracy_high"]) == ("0.75", "0.87")
    assert rl["brier"] == "0.18" and rl["best_of_k"] == "0.6" and rl["tokens"] == "1500" and rl["items"] == "120"
    assert rl["backend"] == "hf" and rl["model"] == "models/rl" and rl["source"] == str(runs[0])
    assert rl["libra_score"] == "" and rl["libra_score_low"] == ""
    # k == 1: the first view; a missing metric is an empty cell
    assert evil["accuracy"] == "0.6" and evil["f1"] == evil["f1_low"] == evil["f1_high"] == ""
    assert evil["brier"] == "" and evil["best_of_k"] == "" and evil["balanced_accuracy"] == "0.59"
    assert libra["balanced_accuracy"] == "" and libra["libra_score"] == "0.62"
    assert (libra["libra_score_low"], libra["libra_score_high"]) == ("0.58", "0.66")
    assert libra["unparsed_rate"] == "0.02" and libra["items"] == "200"


def test_the_markdown_table(runs, tmp_path):
    build_leaderboard(runs, tmp_path / "board")
    md = (tmp_path / "board" / "leaderboard.md").read_text()
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert lines[0] == ("| benchmark | judge | n | k | accuracy [95% CI] | balanced acc | F1 | harmonic | unparsed "
                        "| Libra score |")
    assert len(lines) == 2 + 3
    assert lines[2] == "| libra | rl | 200 | 1 | 55.0% [45.0, 65.0] |  | 53.0% | 52.0% | 2.0% | 62.0% [58.0, 66.0] |"
    assert lines[3] == "| verifybench | rl | 120 | 8 | 81.2% [75.0, 87.0] | 80.2% | 79.2% | 78.2% | 2.0% |  |"
    assert lines[4].startswith(f"| verifybench | {EVIL} | 120 | 1 | 60.0% [50.0, 70.0] | 59.0% |  | 57.0% |")


def test_a_judge_name_is_escaped_everywhere_in_html(runs, tmp_path):
    out = tmp_path / "board"
    build_leaderboard(runs, out)
    page = (out / "leaderboard.html").read_text()
    assert EVIL not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "http://" not in page and "https://" not in page and '<link rel="icon" href="data:,">' in page
    for f in (out / "categories").glob("*.html"):
        text = f.read_text()
        assert "<b>" not in text and "<i>" not in text, f
    # a category value from the input is escaped too
    evil_page = out / category_pages(rows_from_summaries([load_summary(runs[1])]))[0]
    assert "&lt;i&gt;alg&lt;/i&gt;" in evil_page.read_text()


def test_each_row_has_a_category_page_with_a_table_per_category(runs, tmp_path):
    out = tmp_path / "board"
    build_leaderboard(runs, out)
    names = sorted(p.name for p in (out / "categories").glob("*.html"))
    assert names == sorted(["rl__libra.html", "rl__verifybench.html", "_b_x_b___verifybench.html"])
    page = (out / "leaderboard.html").read_text()
    for name in names:
        assert f'href="categories/{name}"' in page
    libra = (out / "categories" / "rl__libra.html").read_text()
    assert re.findall(r"<h2>(.*?)</h2>", libra) == ["source", "difficulty"]
    assert libra.count("<table>") == 2 and "<td>math</td><td class=\"n\">100</td>" in libra
    assert "50.0% [40.0, 60.0]" in libra and 'href="../leaderboard.html"' in libra


def test_a_rerun_keeps_both_rows_told_apart_by_source(runs, tmp_path):
    again = _write(tmp_path / "rerun", json.loads((runs[0] / "summary.json").read_text()))
    out = tmp_path / "board"
    assert build_leaderboard([*runs, again], out)["rows"] == 4
    rows = [r for r in _csv(out) if r["judge"] == "rl" and r["benchmark"] == "verifybench"]
    assert sorted(r["source"] for r in rows) == sorted([str(runs[0]), str(again)])
    md = (out / "leaderboard.md").read_text()
    assert f"| rl ({again}) |" in md and f"| rl ({runs[0]}) |" in md
    assert len(list((out / "categories").glob("rl__verifybench*.html"))) == 2


def test_rows_from_summaries_in_memory():
    s = [summary("a", "b", 1, _view(0.5, 0.4, 0.6, 10)), summary("c", "b", 3, _view(0.1, 0, 0.2, 10))]
    del s[1]["metrics"]["first"]                         # k = 3 but no majority view: empty cells
    rows = rows_from_summaries(s, sources=["x", "y"])
    assert [(r["judge"], r["source"], r["view"]) for r in rows] == [("a", "x", "first"), ("c", "y", "majority")]
    assert rows[1]["accuracy"] is None and rows[1]["k"] == 3
    assert rows_from_summaries([{"judge": "j", "benchmark": {"name": "n"}}])[0]["accuracy"] is None


def test_errors_name_the_folder_file_and_field(runs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=rf"{re.escape(str(empty))}.*summary\.json"):
        build_leaderboard([runs[0], empty], tmp_path / "board")
    no_judge = summary("j", "b", 1, _view(0.5, 0.4, 0.6, 10))
    del no_judge["judge"]
    bad = _write(tmp_path / "nojudge", no_judge)
    with pytest.raises(ValueError, match=rf"{re.escape(str(bad / 'summary.json'))}.*'judge'"):
        build_leaderboard([bad], tmp_path / "board")
    no_bench = summary("j", "b", 1, _view(0.5, 0.4, 0.6, 10))
    del no_bench["benchmark"]["name"]
    bad2 = _write(tmp_path / "nobench", no_bench)
    with pytest.raises(ValueError, match=rf"{re.escape(str(bad2 / 'summary.json'))}.*'benchmark\.name'"):
        build_leaderboard([bad2], tmp_path / "board")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "summary.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        build_leaderboard([tmp_path / "broken"], tmp_path / "board")
    with pytest.raises(ValueError, match="'benchmark.name'"):
        rows_from_summaries([{"judge": "j"}])


# --- in a browser -------------------------------------------------------------------------------

def _column(page, key: str, visible_only: bool = True) -> list[str]:
    """The data-v of column `key` for the table's rows, top to bottom."""
    return page.evaluate(
        """([key, visibleOnly]) => {
             const heads = [...document.querySelectorAll('#board thead th')];
             const i = heads.findIndex(th => th.dataset.key === key);
             return [...document.querySelectorAll('#board tbody tr')]
               .filter(r => !visibleOnly || !r.hidden).map(r => r.cells[i].dataset.v);
           }""", [key, visible_only])


@pytest.mark.engines
def test_the_page_sorts_filters_and_links_to_categories(runs, tmp_path, page):
    # a fourth run without accuracy: its empty cell sorts last both ways
    no_acc = summary("zero", "verifybench", 1, {"n": 120, "unparsed_rate": 1.0})
    out = tmp_path / "board"
    build_leaderboard([*runs, _write(tmp_path / "score_zero", no_acc)], out)
    page.goto((out / "leaderboard.html").as_uri())
    assert _column(page, "judge") == ["rl", "rl", EVIL, "zero"]
    assert page.locator("#count").inner_text() == "4 of 4 rows"

    header = page.locator("th[data-key=accuracy] button")
    header.click()
    acc = _column(page, "accuracy")
    assert acc[-1] == "" and [float(a) for a in acc[:-1]] == sorted(float(a) for a in acc[:-1])
    assert [Path(s).name for s in _column(page, "source")] == [
        "score_rl_libra", "score_evil_vb", "score_rl_vb", "score_zero"]
    assert page.locator("th[data-key=accuracy]").get_attribute("aria-sort") == "ascending"
    header.click()
    acc = _column(page, "accuracy")
    assert acc[-1] == "" and [float(a) for a in acc[:-1]] == sorted((float(a) for a in acc[:-1]), reverse=True)
    assert [Path(s).name for s in _column(page, "source")] == [
        "score_rl_vb", "score_evil_vb", "score_rl_libra", "score_zero"]
    assert page.locator("th[data-key=accuracy]").get_attribute("aria-sort") == "descending"
    # a text column sorts too
    page.locator("th[data-key=judge] button").click()
    assert _column(page, "judge") == sorted(["rl", "rl", EVIL, "zero"], key=str.lower)
    page.keep("leaderboard-sorted")

    box = page.locator("#filter")
    box.fill("libra")
    assert _column(page, "benchmark") == ["libra"] and page.locator("tbody tr:visible").count() == 1
    assert page.locator("#count").inner_text() == "1 of 4 rows"
    box.fill("<B>")                                     # the judge's name as typed, case-insensitive
    assert _column(page, "judge") == [EVIL]
    box.fill("")
    assert len(_column(page, "judge")) == 4

    page.get_by_role("link", name=EVIL, exact=True).click()
    page.wait_for_load_state()
    assert page.url.endswith("/categories/_b_x_b___verifybench.html")
    assert page.locator("h1").inner_text() == f"{EVIL} on verifybench"
    assert page.locator("h2").all_inner_texts() == ["domain"]
    assert page.locator("table tr").nth(1).locator("td").first.inner_text() == "<i>alg</i>"
    page.keep("leaderboard-category")
    assert page.errors == [], page.errors
