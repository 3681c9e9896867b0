"""A drive whose write the database refuses for that run only (a row this SQLite build
cannot keep, say): a worker does not claim the run again at once, again and again. It
waits a growing pause before each new claim, and after a few such drives in a row it
sets the run aside with a note naming the error; a run that gets over it goes on."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Generator
from pathlib import Path
from typing import Any

from helpers import wait_until

import contengine as ce
from contengine.engine.worker import DB_ERRORS_TO_SET_ASIDE
from contengine.store.base import Progress
from contengine.store.sqlite.store import SQLiteStore

TOO_BIG = "a row is larger than SQLite keeps (string or blob too big)"


@ce.step(name="db_error_runs.add_one")
def add_one(n: int) -> int:
    return n + 1


@ce.workflow(name="db_error_runs.adds")
def adds(n: int) -> Generator[Any, Any, int]:
    a = yield add_one(n)
    return int((yield add_one(a)))


class RefusingStore(SQLiteStore):
    """Refuses every write of run 'bad' and the first `flaky` writes of run 'flaky',
    as SQLite refuses a row too big for it: the database itself is fine."""

    def __init__(self, path: Path, flaky: int = 0) -> None:
        super().__init__(path)
        self.flaky = flaky

    def commit(self, progress: Progress) -> bool:
        """Write the progress, unless it is one of the refused runs'."""
        if progress.run_id == "bad":
            raise ce.DatabaseError(f"database: {TOO_BIG}. Nothing was written.")
        if progress.run_id == "flaky" and self.flaky > 0:
            self.flaky -= 1
            raise ce.DatabaseError(f"database: {TOO_BIG}. Nothing was written.")
        return super().commit(progress)


def lease_of(path: Path, run_id: str) -> int:
    """How many times the run was claimed (its lease number grows by one per claim)."""
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT lease FROM runs WHERE id = ?", (run_id,)).fetchone()[0])
    finally:
        conn.close()


def finished(run: ce.Run[Any]) -> bool:
    return run.status == "completed"


def test_a_run_whose_writes_are_refused_is_not_claimed_again_and_again(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    engine = ce.Engine(store=RefusingStore(path), poll_interval=0.01)
    engine.start(adds, 0, id="bad")
    engine.start(adds, 1, id="good")

    def settled() -> bool:
        # Stop looking once the run is set aside, or once it was claimed far more often
        # than it may be (a claim, a write, per loop of the worker: the spin).
        return "bad" in engine.stuck() or lease_of(path, "bad") > 10 * DB_ERRORS_TO_SET_ASIDE

    with engine.worker(threads=2):
        assert wait_until(settled, timeout=120)
        assert lease_of(path, "bad") == DB_ERRORS_TO_SET_ASIDE
        for i in range(3):  # each needs a claim by the worker after the run was set aside
            later = engine.start(adds, i, id=f"later-{i}")
            assert wait_until(functools.partial(finished, later), timeout=60)
        assert engine.get_run("good").status == "completed"
    assert lease_of(path, "bad") == DB_ERRORS_TO_SET_ASIDE  # never claimed again
    bad = engine.get_run("bad")
    assert bad.status == "pending"  # kept as it is: nothing of it was lost
    assert bad.note is not None and TOO_BIG in bad.note
    assert f"{DB_ERRORS_TO_SET_ASIDE} drives in a row" in bad.note


def test_a_run_whose_writes_were_refused_a_few_times_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    flaky = DB_ERRORS_TO_SET_ASIDE - 1
    engine = ce.Engine(store=RefusingStore(path, flaky=flaky), poll_interval=0.01)
    run = engine.start(adds, 5, id="flaky")
    with engine.worker(threads=2):
        assert wait_until(functools.partial(finished, run), timeout=120)
    assert run.result() == 7 and run.note is None
    assert "flaky" not in engine.stuck()
    assert lease_of(path, "flaky") == flaky + 1  # once per refused drive, once to finish
