"""The dashboard in a real browser: headless Chromium (the distribution's package, driven
by Playwright) against a `contengine serve` process, with a `contengine worker` process
driving the runs; on both stores. Without Chromium they are skipped, except under CI
(set CI), where they fail.

Set CONTENGINE_SCREENSHOTS=DIR to keep the pages' screenshots there (notes/screenshots
are made so)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dashboard_flows as flows
import pytest
from helpers import lines_of, wait_for_line
from playwright.sync_api import Browser, Page, expect, sync_playwright
from stores import current

import contengine as ce

pytestmark = pytest.mark.both_stores

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
WAIT = 120.0  # a bound against hanging, never reached when things work
CHROMIUM = os.environ.get("CONTENGINE_CHROMIUM", "/usr/bin/chromium")
# As root in a container, without a GPU, and with no network to look for updates on.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.path.exists(CHROMIUM):
        # As with the PostgreSQL server: skipped on a machine without it, but under CI
        # (which installs it) its absence fails the run.
        why = (
            f"no Chromium at {CHROMIUM}: install Debian's chromium package (.ci/run does) "
            "or set CONTENGINE_CHROMIUM to a Chromium binary"
        )
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def dashboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The address (with its token) of a dashboard over runs ok-1, bad-1 and wait-1, and
    a worker process driving them."""
    monkeypatch.delenv("CONTENGINE_TOKEN", raising=False)
    path = tmp_path / "browser.db"
    with ce.Engine(path) as engine:
        engine.start(flows.order, "ok-1", id="ok-1")
        engine.start(flows.order, "bad-1", id="bad-1")
        engine.start(flows.order, "wait-1", id="wait-1")
        engine.run_until_idle()
    db = current().target(path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(TESTS), str(REPO)))}
    env.pop("CONTENGINE_DB", None)
    base = [sys.executable, "-m", "contengine"]
    common = ["--db", db, "--import", "dashboard_flows"]
    procs = []
    try:
        serve = subprocess.Popen(
            [*base, "serve", *common, "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        procs.append(serve)
        worker = subprocess.Popen(
            [*base, "worker", *common, "--threads", "2"],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        procs.append(worker)
        assert serve.stdout is not None and worker.stderr is not None
        line = wait_for_line(lines_of(serve.stdout), "dashboard at")
        wait_for_line(lines_of(worker.stderr), "worker started")
        match = re.search(r"(http://\S+\?token=\S+)", line)
        assert match, line
        yield match.group(1)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def screenshot(page: Page, name: str) -> None:
    keep = os.environ.get("CONTENGINE_SCREENSHOTS")
    if keep:
        page.screenshot(path=str(Path(keep) / f"{name}.png"), full_page=True)


def test_runs_filter_a_failed_runs_traceback_and_a_cancel_seen_live(
    browser: Browser, dashboard: str
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    page.set_default_timeout(WAIT * 1000)
    # The address's token is traded for a cookie and leaves the address.
    page.goto(dashboard)
    assert "token=" not in page.url
    expect(page.locator("#shown")).to_have_text(re.compile(r"runs 1–3 of 3"))
    expect(page.locator("tr.run-row")).to_have_count(3)
    screenshot(page, "runs")

    # Filter by status: only the failed run is left, with its error on its row.
    page.select_option("select[name=status]", "failed")
    page.click("form#filters button[type=submit]")
    page.wait_for_url(re.compile(r"status=failed"))
    rows = page.locator("tr.run-row")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("CardDeclined: card declined for bad-1")

    # Its page shows the whole traceback, down to the step's own line.
    page.click("a[href='/runs/bad-1']")
    page.wait_for_url(re.compile(r"/runs/bad-1$"))
    trace = page.locator(".trace pre")
    expect(trace).to_contain_text("Traceback (most recent call last)")
    expect(trace).to_contain_text("dashboard_flows.py")
    expect(trace).to_contain_text("CardDeclined: card declined for bad-1")
    screenshot(page, "failed-run")

    # Cancel the waiting run: after the confirmation, its page changes in place (the
    # marker set on the page survives: nothing reloaded it).
    page.goto(dashboard.split("?")[0] + "runs/wait-1")
    status = page.locator("#run dl.meta .badge").first
    expect(status).to_have_text("waiting")
    page.evaluate("window.notReloaded = true")
    dialogs: list[str] = []

    def accept(dialog: object) -> None:
        dialogs.append(dialog.message)  # type: ignore[attr-defined]
        dialog.accept()  # type: ignore[attr-defined]

    page.on("dialog", accept)
    page.click("#cancel-form button")
    expect(page.locator("#action-message")).to_contain_text("cancel of run wait-1 requested")
    expect(status).to_have_text("cancelled")
    assert dialogs == ["Cancel run wait-1?"]
    assert page.evaluate("window.notReloaded") is True
    expect(page.locator("#live-status")).to_contain_text("live")
    screenshot(page, "cancelled-run")
    page.close()


def test_a_cancel_refused_at_the_confirmation_changes_nothing(
    browser: Browser, dashboard: str
) -> None:
    page = browser.new_page()
    page.set_default_timeout(WAIT * 1000)
    page.goto(dashboard)
    page.goto(dashboard.split("?")[0] + "runs/wait-1")
    page.on("dialog", lambda dialog: dialog.dismiss())
    page.click("#cancel-form button")
    # The page refreshes again (its clock moves on), and the run is still waiting.
    stamp = page.locator("#live-status").inner_text()
    expect(page.locator("#live-status")).not_to_have_text(stamp)
    expect(page.locator("#run dl.meta .badge").first).to_have_text("waiting")
    expect(page.locator("#action-message")).to_have_text("")
    page.close()
