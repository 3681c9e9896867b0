"""Stored data changed outside contengine: a run that cannot be rebuilt is set aside as
stuck, with a note naming the cause, and everything else goes on (guarantee 4)."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_until

import contengine as ce


@ce.step(name="bad_records.add_one")
def add_one(n: int) -> int:
    return n + 1


@ce.workflow(name="bad_records.adds")
def adds(n: int) -> Generator[Any, Any, int]:
    a = yield from add_one(n)
    return (yield from add_one(a))


@ce.workflow(name="bad_records.catches")
def catches(n: int) -> Generator[Any, Any, str]:
    try:
        yield add_one(n)
    except Exception as exc:  # a workflow that would swallow a misread failure
        return f"caught {type(exc).__name__}"
    return "no failure"


@ce.workflow(name="bad_records.naps")
def naps() -> Generator[Any, Any, str]:
    yield ce.sleep(3600)
    return "woke"


@ce.workflow(name="bad_records.buggy")
def buggy(n: int) -> Generator[Any, Any, int]:
    a = yield from add_one(n)
    return len(a)  # type: ignore[arg-type]  # the workflow's own bug: a TypeError


def edit(path: Path, sql: str, *params: Any) -> None:
    """Change the file by hand, as an operator with the sqlite3 shell would."""
    conn = sqlite3.connect(path)
    try:
        conn.execute(sql, params)
        conn.commit()
    finally:
        conn.close()


def finished(run: ce.Run[Any]) -> bool:
    return run.status == "completed"


def lease_of(path: Path, run_id: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT lease FROM runs WHERE id = ?", (run_id,)).fetchone()[0])
    finally:
        conn.close()


def test_arguments_of_the_wrong_shape_leave_the_run_stuck_with_a_note(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    engine = ce.Engine(path)
    engine.start(adds, 1, id="bad")
    engine.start(adds, 2, id="good")
    edit(path, "UPDATE runs SET args = ? WHERE id = 'bad'", engine.serde.dumps(5, "five"))
    for _ in range(2):  # every call reports it; none raises
        report = engine.run_until_idle()
        assert list(report.stuck) == ["bad"]
        assert isinstance(report.stuck["bad"], ce.CorruptPayload)
    assert engine.get_run("good").result() == 4
    bad = engine.get_run("bad")
    assert bad.status == "pending"
    assert bad.note is not None and "recorded arguments decode to int 5" in bad.note


def test_a_failure_that_decodes_to_no_exception_leaves_the_run_stuck(tmp_path: Path) -> None:
    """Not a TypeError thrown into the workflow (which it could even catch) as its own."""
    path = tmp_path / "e.db"
    engine = ce.Engine(path)
    engine.start(catches, 1, id="r")
    engine.run_until_idle()
    edit(
        path,
        "UPDATE log SET status = 'failed', outcome = ? WHERE id = "
        "(SELECT num FROM runs WHERE id = 'r') << 32",
        engine.serde.dumps("not an exception", "text"),
    )
    edit(path, "UPDATE runs SET status = 'pending', result = NULL, due_at = 0 WHERE id = 'r'")
    report = ce.Engine(path).run_until_idle()
    assert isinstance(report.stuck["r"], ce.CorruptPayload)
    run = ce.Engine(path).get_run("r")
    assert run.status == "pending"
    assert run.note is not None and "decodes to str 'not an exception'" in run.note


def test_any_error_while_rebuilding_leaves_the_run_stuck_naming_it(tmp_path: Path) -> None:
    """A field of the wrong type (text where a time belongs) raises a plain TypeError
    inside the engine: the run is stuck with the TypeError in its note."""
    path = tmp_path / "e.db"
    engine = ce.Engine(path)
    engine.start(naps, id="r")
    engine.run_until_idle()
    edit(path, "UPDATE log SET due_at = 'soon'")
    edit(path, "UPDATE runs SET due_at = 0 WHERE id = 'r'")
    engine = ce.Engine(path)
    engine.start(adds, 1, id="other")
    report = engine.run_until_idle()
    assert report.finished == ["other"]
    assert list(report.stuck) == ["r"]
    assert isinstance(report.stuck["r"].__cause__, TypeError)
    note = engine.get_run("r").note
    assert note is not None and note.startswith("run 'r' cannot be driven on: TypeError")
    assert engine.get_run("r").status == "sleeping"


def test_a_workflow_bug_still_fails_the_run(tmp_path: Path) -> None:
    """The workflow's own TypeError is its result, live and after a replay."""
    engine = ce.Engine(tmp_path / "e.db")
    run = engine.start(buggy, 1, id="r")
    report = engine.run_until_idle()
    assert report.finished == ["r"] and not report.stuck
    with pytest.raises(TypeError, match="has no len"):
        run.result()
    assert run.note is None


def test_a_run_error_that_decodes_to_no_exception_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    engine = ce.Engine(path)
    run = engine.start(buggy, 1, id="r")
    engine.run_until_idle()
    edit(path, "UPDATE runs SET error = ? WHERE id = 'r'", engine.serde.dumps(7, "seven"))
    with pytest.raises(ce.CorruptPayload, match="decodes to int 7, not an exception"):
        run.result()


def test_a_worker_sets_a_run_it_cannot_rebuild_aside_and_goes_on(tmp_path: Path) -> None:
    """The run is claimed once (not again and again, a write per claim), gets a note,
    and the worker finishes the other runs on the file, including ones started later."""
    path = tmp_path / "e.db"
    engine = ce.Engine(path, poll_interval=0.01)
    engine.start(adds, 0, id="bad")
    edit(path, "UPDATE runs SET args = ? WHERE id = 'bad'", engine.serde.dumps(5, "five"))
    for i in range(4):
        engine.start(adds, i, id=f"good-{i}")

    def settled() -> bool:
        done = all(engine.get_run(f"good-{i}").status == "completed" for i in range(4))
        return done and engine.get_run("bad").note is not None

    with engine.worker(threads=2):
        assert wait_until(settled, timeout=60)
        for i in range(3):  # each needs a claim by the worker after the run was set aside
            later = engine.start(adds, i, id=f"later-{i}")
            assert wait_until(functools.partial(finished, later), timeout=60)
        assert "bad" in engine.stuck()
    assert lease_of(path, "bad") == 1
    note = engine.get_run("bad").note
    assert note is not None and "recorded arguments decode to int 5" in note
    assert engine.get_run("bad").status == "pending"


@pytest.mark.parametrize("status", ["weird", "", "COMPLETED"])
def test_an_entry_of_an_unknown_status_leaves_the_run_stuck_and_a_worker_goes_on(
    tmp_path: Path, status: str
) -> None:
    """An entry whose status is none of contengine's was taken for one in flight: its
    resumption's write was refused as a conflict (a DatabaseError, no note) and a worker
    claimed the run again and again, hundreds of times a second."""
    path = tmp_path / "e.db"
    engine = ce.Engine(path, poll_interval=0.01)
    engine.start(adds, 1, id="bad")
    engine.run_until_idle()
    edit(
        path,
        "UPDATE log SET status = ? WHERE id = (SELECT num FROM runs WHERE id = 'bad') << 32",
        status,
    )
    edit(path, "UPDATE runs SET status = 'pending', result = NULL WHERE id = 'bad'")
    engine = ce.Engine(path, poll_interval=0.01)
    report = engine.run_until_idle()
    assert list(report.stuck) == ["bad"]
    assert isinstance(report.stuck["bad"], ce.CorruptPayload)
    lease = lease_of(path, "bad")
    with engine.worker(threads=2):
        for i in range(3):  # each needs a claim by the worker after the run was set aside
            later = engine.start(adds, i, id=f"later-{i}")
            assert wait_until(functools.partial(finished, later), timeout=60)
    assert lease_of(path, "bad") <= lease + 1  # claimed once at most: it stays set aside
    bad = engine.get_run("bad")
    assert bad.status == "pending"
    assert bad.note is not None and f"unknown status {status!r}" in bad.note
