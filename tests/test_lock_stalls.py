"""A process frozen while it holds SQLite's write lock must not cost healthy workers
their runs: no one can renew a lease then, so no lease may be judged lapsed for it.

Two worker processes (tests/worker_child.py) with short leases drive runs that step on
until told to stop; a third process (tests/lock_child.py) takes the write lock and
freezes (SIGSTOP) for longer than the lease, again and again. Every step execution is
logged in a ledger outside the engine: a step that ran twice was taken over.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
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

__all__ = ["workers"]  # the fixture, imported for the test below

LEASE = 2.0
FREEZE = 3.0  # seconds the write lock stays frozen: longer than a lease
FREEZES = int(os.environ.get("LOCK_STALL_FREEZES", "5"))


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
    workers.procs.append(freezer)  # type: ignore[arg-type]  # killed at teardown
    assert freezer.stdin is not None and freezer.stdout is not None
    try:
        for _ in range(FREEZES):
            steps = len(ledger_rows(ledger))
            wait_for(lambda: len(ledger_rows(ledger)) >= steps + 20, "steps between freezes", workers)  # noqa: B023
            freezer.stdin.write("freeze\n")
            freezer.stdin.flush()
            assert freezer.stdout.readline().strip() == "held"
            wait_for(lambda: process_state(freezer.pid) == "T", "the freezer to stop", workers)
            time.sleep(FREEZE)  # the stall itself: every writer waits this long
            os.kill(freezer.pid, signal.SIGCONT)
            assert freezer.stdout.readline().strip() == "released"
    finally:
        stop.touch()
    wait_for(
        lambda: query(db, "SELECT count(*) FROM runs WHERE status = 'completed'")[0][0] == 3,
        "every run to finish",
        workers,
    )
    twice = [key for key, n in Counter((r[0], r[1]) for r in ledger_rows(ledger)).items() if n > 1]
    print(f"{FREEZES} freezes, {len(ledger_rows(ledger))} steps, {len(twice)} ran twice: {twice}")
    assert twice == [], workers.report()
    assert workers.stop(a) == 0 and workers.stop(b) == 0, workers.report()
