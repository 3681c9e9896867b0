"""A process frozen while it holds SQLite's write lock must not cost healthy workers
their runs: no one can renew a lease then, so no lease may be judged lapsed for it.

Two worker processes (tests/worker_child.py) with short leases drive runs that step on
until told to stop; a third process (tests/lock_child.py) takes the write lock and
freezes (SIGSTOP) for longer than the lease, again and again. Every step execution is
logged in a ledger outside the engine: a step that ran twice was taken over.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import lock_child as lc
from test_workers_processes import (
    TESTS,
    Workers,
    ledger_rows,
    process_state,
    query,
    wait_for,
    workers,
)

import contengine as ce
from contengine.store.base import WorkerRow
from contengine.store.liveness import HOST, process_start
from contengine.store.sqlite.store import SQLiteStore

__all__ = ["workers"]  # the fixture, imported for the test below

LEASE = 2.0
FREEZE = 3.0  # seconds the write lock stays frozen: longer than a lease
HOLD = 2.0  # seconds a store holds its transaction open (frozen in it)
FREEZES = int(os.environ.get("LOCK_STALL_FREEZES", "5"))


def more_steps(ledger: Path, n: int) -> Callable[[], bool]:
    """A check that n more steps than now have run."""
    start = len(ledger_rows(ledger))
    return lambda: len(ledger_rows(ledger)) >= start + n


def test_a_process_frozen_holding_the_write_lock_costs_no_worker_its_runs(
    tmp_path: Path, workers: Workers
) -> None:
    """Over FREEZES freezes of the write lock, each longer than the workers' lease, no
    step runs twice (no run changes hands), and every run finishes."""
    db, ledger, stop = tmp_path / "stall.db", tmp_path / "ledger", tmp_path / "stop"
    with ce.Engine(db) as engine:
        for n in range(3):  # three runs on four threads: a worker always has one to claim with
            engine.start(lc.ticking, str(ledger), str(stop), id=f"r{n}")
    a = workers.spawn(db, threads=2, lease=LEASE, grace=5.0)
    b = workers.spawn(db, threads=2, lease=LEASE, grace=5.0)
    wait_for(lambda: workers.working(a) and workers.working(b), "both workers to work", workers)
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    freezer = subprocess.Popen(
        [sys.executable, "-c", "import lock_child; lock_child.freezer()", str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert freezer.stdin is not None and freezer.stdout is not None
    try:
        for _ in range(FREEZES):
            wait_for(more_steps(ledger, 20), "steps between freezes", workers)
            freezer.stdin.write("freeze\n")
            freezer.stdin.flush()
            assert freezer.stdout.readline().strip() == "held"
            wait_for(lambda: process_state(freezer.pid) == "T", "the freezer to stop", workers)
            time.sleep(FREEZE)  # the stall itself: every writer waits this long
            os.kill(freezer.pid, signal.SIGCONT)
            assert freezer.stdout.readline().strip() == "released"
    finally:
        stop.touch()
        if freezer.poll() is None:
            freezer.kill()
            os.kill(freezer.pid, signal.SIGCONT)
        freezer.wait()
        freezer.stdin.close()
        freezer.stdout.close()
    wait_for(
        lambda: query(db, "SELECT count(*) FROM runs WHERE status = 'completed'")[0][0] == 3,
        "every run to finish",
        workers,
    )
    twice = [key for key, n in Counter((r[0], r[1]) for r in ledger_rows(ledger)).items() if n > 1]
    print(f"{FREEZES} freezes, {len(ledger_rows(ledger))} steps, {len(twice)} ran twice: {twice}")
    assert twice == [], workers.report()
    assert workers.stop(a) == 0 and workers.stop(b) == 0, workers.report()


def test_a_store_frozen_in_its_transaction_takes_over_no_lease_it_stalled(tmp_path: Path) -> None:
    """A store whose transaction held the write lock past another worker's expiry (it
    was frozen in it) judges that worker's lease later by the stall; once the worker
    writes a new expiry, that one counts as it is."""
    db = tmp_path / "held.db"
    with ce.Engine(db) as engine:
        engine.start(lc.ticking, "ledger", "stop", id="r")
    frozen, other = SQLiteStore(db), SQLiteStore(db)
    try:
        now = time.time()
        # Same host and a live pid: only the expiry says whether these workers are alive.
        b = WorkerRow("b", HOST, os.getpid(), process_start(os.getpid()), now, now + HOLD / 2)
        a = WorkerRow("a", HOST, os.getpid(), process_start(os.getpid()), now, now + 60)
        assert [c.run.id for c in other.claim(b, now, now, 1)] == ["r"]
        with frozen._tx():
            time.sleep(HOLD)  # frozen while holding the write lock: b's lease ran out
        assert time.time() > b.expires_at
        assert frozen.claim(a, time.time(), time.time(), 1) == []
        # b writes a new expiry (already past): judged on it, b's run is taken over.
        other.heartbeat(dataclasses.replace(b, expires_at=time.time() - 1))
        assert [c.run.id for c in frozen.claim(a, time.time(), time.time(), 1)] == ["r"]
    finally:
        frozen.close()
        other.close()


def test_a_renewal_that_waited_for_the_write_lock_counts_its_lease_from_its_write(
    tmp_path: Path,
) -> None:
    """A heartbeat asked for while another connection holds the write lock (frozen in
    its transaction) writes, once it gets the lock, an expiry a lease from then, not
    one that ran out while it waited: the others would judge it dead at once."""
    db = tmp_path / "renew.db"
    ce.Engine(db).close()
    frozen, other = SQLiteStore(db), SQLiteStore(db)
    lease = 1.0

    def beat() -> None:
        now = time.time()
        other.heartbeat(WorkerRow("b", HOST, os.getpid(), None, now, now + lease))

    try:
        with frozen._tx():
            renewal = threading.Thread(target=beat)
            renewal.start()
            time.sleep(HOLD)  # frozen while holding the write lock
            released = time.time()
        renewal.join()
        ((expires_at,),) = query(db, "SELECT expires_at FROM workers WHERE id = 'b'")
        assert expires_at >= released + lease / 2, (expires_at, released)
    finally:
        frozen.close()
        other.close()
