"""`show --html` and `runs --html`: self-contained pages, checked by parsing their structure."""

from __future__ import annotations

import re
from collections.abc import Generator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

import contengine as ce
from contengine.cli.main import main
from contengine.cli.timeline import render_run, render_runs
from contengine.testing import VirtualClock

SVG_NS = "http://www.w3.org/2000/svg"
_tl_calls: dict[str, int] = {}


class Jammed(Exception):
    """A step's own failure."""


@ce.step(retries=2, backoff=1.0)
def tl_flaky(tag: str) -> str:
    """Fails on its first attempt, then succeeds."""
    _tl_calls[tag] = _tl_calls.get(tag, 0) + 1
    if _tl_calls[tag] == 1:
        raise ConnectionError("reset by peer")
    return tag


@ce.step
def tl_add(a: int, b: int) -> int:
    """Adds."""
    return a + b


@ce.step
def tl_jam(doc: str) -> None:
    """Always fails, with markup in its message."""
    raise Jammed(f"<b>jammed</b> on {doc}")


@ce.workflow(name="tl.kid")
def tl_kid(n: int) -> Generator[Any, Any, int]:
    """A child run of one step."""
    total: int = yield tl_add(n, 1)
    return total


@ce.workflow(name="tl.main")
def tl_main(doc: str) -> Generator[Any, Any, None]:
    """A step with markup in its argument, a retry, a sleep, a gather, a child, a failure."""
    yield tl_flaky(doc)
    yield ce.sleep(30)
    yield from ce.gather(tl_add(1, 1), tl_add(2, 2))
    yield tl_kid(5)
    yield tl_jam(doc)


@ce.workflow(name="tl.waits")
def tl_waits() -> Generator[Any, Any, None]:
    """Waits for a signal that never comes."""
    yield tl_add(0, 0)
    yield ce.wait("go")


class Page(HTMLParser):
    """The tags of a page with their attributes and where they sit, and its text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str], tuple[str, ...]]] = []
        self.text: list[str] = []
        self._stack: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a, tuple(self._stack)))
        if tag != "meta":  # the only void element the pages use without "/>"
            marker = f"{tag}#{a['id']}" if "id" in a else tag
            self._stack.append(marker)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}, tuple(self._stack)))

    def handle_endtag(self, tag: str) -> None:
        while self._stack:
            if self._stack.pop().split("#")[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def find(
        self, tag: str, cls: str | None = None, inside: str | None = None
    ) -> list[dict[str, str]]:
        """Attributes of every tag, with class cls, nested in inside (a tag or tag#id)."""
        return [
            a
            for t, a, stack in self.tags
            if t == tag
            and (cls is None or cls in a.get("class", "").split())
            and (inside is None or inside in stack)
        ]


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A failed run (with a child), a waiting run and a completed child, on a virtual clock."""
    path = str(tmp_path / "tl.db")
    _tl_calls.clear()
    clock = VirtualClock()
    with ce.Engine(path, clock=clock, workflows=[tl_main, tl_kid, tl_waits]) as engine:
        engine.start(tl_main, "<script>alert(1)</script>", id="main")
        engine.start(tl_waits, id="waiter")
        engine.run_until_idle(until=clock.now() + 3600)
    return path


def show_html(capsys: pytest.CaptureFixture[str], db: str, run_id: str, out: Path) -> str:
    code = main(["show", "--db", db, run_id, "--html", str(out)])
    stdout, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert stdout.strip() == str(out.resolve())
    return out.read_text(encoding="utf-8")


def test_show_html_draws_one_row_per_entry_and_marks_failures(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ce.Engine(db) as engine:
        entries = engine.history("main")
    text = show_html(capsys, db, "main", tmp_path / "main.html")
    page = Page(text)
    assert len(page.find("svg")) == 1
    rows = page.find("g", "entry", inside="svg")
    assert [int(a["data-position"]) for a in rows] == [e.position for e in entries]
    failed = [int(a["data-position"]) for a in rows if "failed" in a["class"].split()]
    assert failed == [e.position for e in entries if e.status == "failed"] != []
    assert [e.kind for e in entries][-1] == "step" and failed[-1] == entries[-1].position
    # The retried step shows one mark per attempt, the first one failed (the last step,
    # which failed at once, its one attempt).
    marks = page.find("circle", "try", inside="svg")
    retried = [m["class"] for m in marks if m["cy"] == marks[0]["cy"]]
    assert retried == ["try failed", "try completed"] and len(marks) == 3
    assert "attempt 1 failed: " in text and "attempt 2 completed" in text
    assert len(page.find("tr", "entry-row", inside="table#log")) == len(entries)
    assert len(page.find("tr", "failed", inside="table#log")) == len(failed)


def test_show_html_has_a_readable_axis_header_and_child_runs(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page_text = show_html(capsys, db, "main", tmp_path / "main.html")
    page = Page(page_text)
    words = " ".join(page.text)
    assert "tl.main" in words and "failed" in words
    assert "Jammed: <b>jammed</b> on <script>alert(1)</script>" in words  # the run's error
    # The run slept 30 s after a 1 s backoff: ticks label offsets such as +10s.
    assert {"+10s", "+20s", "+30s"} <= {t.strip() for t in page.text}
    child_id = "main/5"
    assert child_id in words
    child_rows = page.find("g", "child-entry", inside="svg")
    assert len(child_rows) == 1 and "kind-step" in child_rows[0]["class"]
    assert len(page.find("tr", "run-row")) == 1  # the child runs table


def test_show_html_is_self_contained_and_escaped(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = show_html(capsys, db, "main", tmp_path / "main.html")
    assert re.findall(r"https?://[^\s\"'<>]*", text) == [SVG_NS]
    assert "<script" not in text.lower() and "<b>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    page = Page(text)
    assert not page.find("link") and not page.find("img") and not page.find("script")
    assert "url(" not in text and "@import" not in text


def test_show_html_marks_entries_in_flight(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = Page(show_html(capsys, db, "waiter", tmp_path / "waiter.html"))
    rows = page.find("g", "entry", inside="svg")
    assert ["inflight" in a["class"].split() for a in rows] == [False, True]
    assert "in flight" in " ".join(page.text)


def test_show_html_of_a_missing_run_fails_and_writes_nothing(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "none.html"
    code = main(["show", "--db", db, "nope", "--html", str(out)])
    _, err = capsys.readouterr()
    assert code == 1 and "no run with id 'nope'" in err and not out.exists()
    with ce.Engine(db) as engine, pytest.raises(LookupError):
        render_run(engine, "nope")


def test_runs_html_has_a_section_per_status_present(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "runs.html"
    code = main(["runs", "--db", db, "--html", str(out)])
    stdout, err = capsys.readouterr()
    assert (code, err, stdout.strip()) == (0, "", str(out.resolve()))
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    sections = {a["id"]: a for a in page.find("section")}
    assert set(sections) == {"status-failed", "status-waiting", "status-completed"}
    ids = {s: [t.strip() for t in _cells(text, s)] for s in ("failed", "waiting", "completed")}
    assert ids == {"failed": ["main"], "waiting": ["waiter"], "completed": ["main/5"]}
    assert re.findall(r"https?://[^\s\"'<>]*", text) == []


def test_runs_html_shows_a_failed_runs_error_in_its_row(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "runs.html"
    assert main(["runs", "--db", db, "--html", str(out)]) == 0
    capsys.readouterr()
    section = out.read_text().split('id="status-failed"', 1)[1].split("</section>", 1)[0]
    # From the stored traceback (escaped: the message holds markup).
    assert '<span class="error">test_timeline.Jammed: &lt;b&gt;jammed&lt;/b&gt; on' in section


def test_runs_html_says_when_it_shows_only_the_newest_runs(db: str) -> None:
    with ce.Engine(db) as engine:
        every = render_runs(engine)
        newest = render_runs(engine, limit=2)
    assert "3 most recent runs, as of" in every
    assert "the 2 most recent of 3 runs (<code>contengine runs</code> lists them all)" in newest


def test_runs_html_keeps_the_status_filter(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "runs.html"
    assert main(["runs", "--db", db, "--status", "waiting", "--html", str(out)]) == 0
    capsys.readouterr()
    assert {a["id"] for a in Page(out.read_text()).find("section")} == {"status-waiting"}


def _cells(text: str, status: str) -> list[str]:
    """The id column of a status section's table."""
    section = text.split(f'id="status-{status}"', 1)[1].split("</section>", 1)[0]
    return re.findall(r'<tr class="run-row [a-z]+"[^>]*><td class="mono">([^<]*)</td>', section)


@ce.workflow(name="tl.again")
def tl_again(round_: int) -> Generator[Any, Any, int]:
    """Starts a child in each of two generations (continue_as_new between them)."""
    total: int = yield tl_kid(round_)
    if round_ == 0:
        return ce.continue_as_new(1)
    return total


def test_show_html_nests_the_child_of_a_continued_run(tmp_path: Path) -> None:
    """A run past continue_as_new started its child as run/g1/0: the timeline finds it."""
    path = tmp_path / "again.db"
    with ce.Engine(path, workflows=[tl_again, tl_kid]) as engine:
        assert engine.run(tl_again, 0, id="again") == 2
        assert engine.get_run("again/g1/0").status == "completed"
        page = Page(render_run(engine, "again"))
    child_rows = page.find("g", "child-entry", inside="svg")
    assert len(child_rows) == 1 and "kind-step" in child_rows[0]["class"]
    words = " ".join(page.text)
    # This generation's child, not the one the first generation started at the same position.
    assert "child run again/g1/0: step tl_add(1, 1)" in words
    assert "child run again/0:" not in words
