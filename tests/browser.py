"""A headless browser for the tests that open what a researcher opens (the Snakemake report, the
MLflow UI): Playwright driving the OS's Chromium (Debian's `chromium` package, which `make setup`
installs; Playwright's own browser download is not used). A test module takes the fixtures with

    pytest_plugins = ("browser",)

`page` is a fresh page that records console errors and uncaught page errors (`page.errors`);
`page.keep(name)` saves a screenshot under LIBRARM_SCREENSHOTS (a folder) when it is set.
Without Playwright or the browser the tests skip with the reason (a failure under
LIBRARM_REQUIRE_ENGINES=1, see conftest)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("LIBRARM_CHROMIUM", "/usr/bin/chromium")
# headless, no sandbox (root in a container), and nothing that reaches the network on its own
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path() -> str | None:
    path = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    return path if path and os.access(path, os.X_OK) else None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (make setup installs it)")
    path = chromium_path()
    if path is None:
        pytest.skip(f"no Chromium at {CHROMIUM} (make setup installs Debian's chromium as root)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


class Page:
    """A Playwright page and the errors it logged: console messages of type error and uncaught
    exceptions, each as text."""

    def __init__(self, page):
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda msg: self.errors.append(f"console: {msg.text}") if msg.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))

    def __getattr__(self, name):
        return getattr(self.page, name)

    def keep(self, name: str) -> Path | None:
        """A full-page screenshot as LIBRARM_SCREENSHOTS/<name>.png (nothing when it is unset)."""
        folder = os.environ.get("LIBRARM_SCREENSHOTS")
        if not folder:
            return None
        path = Path(folder) / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        yield Page(context.new_page())
    finally:
        context.close()
