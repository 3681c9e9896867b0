"""Leases in the file: workers on record, heartbeats, clean release, idempotent starts."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import contengine as ce
from contengine.store.base import WorkerRow
from contengine.store.sqlite_claims import HOST, alive

GATE = threading.Event()
STARTED = threading.Event()


@ce.step(name="leases.hold")
def hold() -> str:
    """Signal that the step runs, then wait for the gate."""
    STARTED.set()
    GATE.wait(10)
    return "held"


@ce.workflow(name="leases.holder")
def holder() -> Generator[Any, Any, str]:
    """One step that blocks until the test lets it go."""
    return (yield hold())


def owners(path: Path) -> list[Any]:
    """Every run's owner, read straight from the file."""
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT owner FROM runs ORDER BY num")]


def test_a_driving_engine_is_on_record_and_renews_its_lease(tmp_path: Path) -> None:
    """While a step runs, the run names its engine, whose row the heartbeat keeps alive."""
    path = tmp_path / "l.db"
    GATE.clear()
    STARTED.clear()
    engine = ce.Engine(path, lease=0.4)
    try:
        run = engine.start(holder)
        result: list[str] = []
        driver = threading.Thread(target=lambda: result.append(run.result()))
        driver.start()
        assert STARTED.wait(5)
        (worker,) = engine.store.workers()
        assert owners(path) == [worker.id] and worker.host == HOST
        first = worker.expires_at
        time.sleep(0.5)  # longer than the lease: only renewals keep it alive
        (worker,) = engine.store.workers()
        assert worker.expires_at > first and alive(worker, time.time())
        GATE.set()
        driver.join(5)
        assert result == ["held"]
        assert owners(path) == [None]  # a finished run's last write let it go
    finally:
        GATE.set()
        engine.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM workers").fetchone()[0] == 0


def test_liveness_follows_expiry_and_the_process(tmp_path: Path) -> None:
    """Expired is dead; on this host, a pid that no longer runs is dead at once."""
    now = time.time()
    me = WorkerRow("w", HOST, 1, None, now, now + 60)
    assert alive(me, now)  # pid 1 runs (and belongs to someone else)
    assert not alive(WorkerRow("w", HOST, 1, None, now, now - 1), now)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert not alive(WorkerRow("w", HOST, gone.pid, None, now, now + 60), now)
    # Elsewhere, only the expiry can tell.
    assert alive(WorkerRow("w", "another-host", gone.pid, None, now, now + 60), now)


START_SAME_ID = """
import sys, contengine as ce
sys.path.insert(0, sys.argv[2])
import test_leases
with ce.Engine(sys.argv[1]) as engine:
    for _ in range(30):
        engine.start(test_leases.holder, id="the-one")
"""


def test_a_start_by_id_is_idempotent_across_processes(tmp_path: Path) -> None:
    """Four processes start the same id at once: one run."""
    path = tmp_path / "l.db"
    ce.Engine(path).close()  # the schema first, so the processes race on the start only
    here = str(Path(__file__).parent)
    procs = [
        subprocess.Popen([sys.executable, "-c", START_SAME_ID, str(path), here]) for _ in range(4)
    ]
    assert [p.wait(60) for p in procs] == [0, 0, 0, 0]
    with ce.Engine(path) as engine:
        assert [r.id for r in engine.runs()] == ["the-one"]
