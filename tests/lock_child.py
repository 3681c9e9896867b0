"""For tests/test_lock_stalls.py: a workflow that runs until told to stop, and a process
that takes SQLite's write lock and freezes itself (SIGSTOP) while holding it.

The freezer is started as `python -c "import lock_child; lock_child.freezer()" DB`: for
each line "freeze" on its stdin it takes the write lock (BEGIN IMMEDIATE), prints "held"
and stops itself; once continued (SIGCONT) it commits and prints "released".
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import time
from collections.abc import Generator
from typing import Any

import worker_child as wc

import contengine as ce

STEP_PAUSE = 0.02


@ce.step(name="lc.tick")
def tick(ledger: str, stop: str) -> bool:
    """Log the execution, pause, and say whether the stop file exists."""
    wc.record(ledger)
    time.sleep(STEP_PAUSE)
    return os.path.exists(stop)


@ce.workflow(name="lc.ticking")
def ticking(ledger: str, stop: str) -> Generator[Any, Any, int]:
    """Steps one after another until one finds the stop file; returns how many ran."""
    n = 1
    while not (yield tick(ledger, stop)):
        n += 1
    return n


def freezer() -> None:
    """Take the write lock and SIGSTOP this process, once per "freeze" line on stdin."""
    conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60.0)
    for line in sys.stdin:
        if line.strip() != "freeze":
            continue
        conn.execute("BEGIN IMMEDIATE")
        print("held", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
        conn.execute("COMMIT")
        print("released", flush=True)
