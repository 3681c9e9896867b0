"""Workflows for tests/test_workers_processes.py, and the worker process that drives them.

The worker is started as `python -c "import worker_child; worker_child.main()" DB
THREADS LEASE GRACE` with this directory on PYTHONPATH: it opens the database with
that lease and runs `engine.work(threads=THREADS, grace=GRACE)` until SIGTERM (or
until it is killed). Every step execution appends a line to a ledger file outside
the engine (fsynced), so the tests see what really ran, where, and when.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Generator
from typing import Any

import contengine as ce

# Short, but long enough for the SIGKILLs to land inside steps: 500 runs of three
# steps keep three workers of four threads busy for some seconds.
STEP_PAUSE = 0.02
HOLD_SECONDS = 3.0  # how long the first attempt of `hold` blocks


def append(path: str, line: str) -> None:
    """Append one line to a file shared by processes and make it durable."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_lines(path: str) -> list[list[str]]:
    """The whitespace-split lines of a shared file ([] if it does not exist yet)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [line.split() for line in f if line.strip()]


def record(ledger: str, *extra: object) -> None:
    """Log this step execution in the ledger: `run_id position pid attempt extra...`."""
    s = ce.current_step()
    append(ledger, " ".join(str(x) for x in (s.run_id, s.position, os.getpid(), s.attempt, *extra)))


# -- many short runs (SIGKILL test) ----------------------------------------------


@ce.step(name="wp.add")
def add(ledger: str, x: int, y: int) -> int:
    """x + y, after a short pause."""
    record(ledger)
    time.sleep(STEP_PAUSE)
    return x + y


@ce.step(name="wp.mul")
def mul(ledger: str, x: int, y: int) -> int:
    """x * y, after a short pause."""
    record(ledger)
    time.sleep(STEP_PAUSE)
    return x * y


@ce.step(name="wp.show")
def show(ledger: str, x: int, y: int) -> str:
    """The pair as text, after a short pause."""
    record(ledger)
    time.sleep(STEP_PAUSE)
    return f"{x}:{y}"


@ce.workflow(name="wp.triple")
def triple(ledger: str, n: int) -> Generator[Any, Any, str]:
    """Three steps, each fed the previous one's result: returns expected(n)."""
    a = yield add(ledger, n, 1)
    b = yield mul(ledger, a, 3)
    shown: str = yield show(ledger, n, b)
    return shown


def expected(n: int) -> str:
    """What triple(ledger, n) returns."""
    return f"{n}:{(n + 1) * 3}"


@ce.workflow(name="wp.nested")
def nested(ledger: str, n: int) -> Generator[Any, Any, str]:
    """triple(ledger, n) as a child run: returns f"[{expected(n)}]"."""
    shown = yield triple(ledger, n)
    return f"[{shown}]"


# -- a step that blocks on its first attempt (lease loss test) ----------------------


@ce.step(name="wp.hold")
def hold(ledger: str, marks: str) -> str:
    """Say it started (and when, on the wall clock), block HOLD_SECONDS on the first
    attempt, say it ended; the result names the process."""
    attempt = ce.current_step().attempt
    # The ledger line first: a test that sees "started" may freeze the process at once,
    # and the ledger must already hold this execution (else the lines come out of order).
    record(ledger)
    append(marks, f"started {os.getpid()} {attempt} {time.time()}")
    if attempt == 1:
        time.sleep(HOLD_SECONDS)
    append(marks, f"finished {os.getpid()} {attempt}")
    return f"held by {os.getpid()}"


@ce.workflow(name="wp.held")
def held(ledger: str, marks: str) -> Generator[Any, Any, str]:
    """One blocking step; the result tells which process ran it."""
    who: str = yield hold(ledger, marks)
    return who


# -- timed steps (queue limits) ---------------------------------------------------------


@ce.step(name="wp.timed")
def timed(ledger: str, seconds: float) -> None:
    """Sleep, and log when (monotonic, shared by the processes of a host) it ran."""
    start = time.monotonic()
    time.sleep(seconds)
    record(ledger, start, time.monotonic())


@ce.workflow(name="wp.queued")
def queued(ledger: str, seconds: float) -> Generator[Any, Any, int]:
    """Two timed steps."""
    yield timed(ledger, seconds)
    yield timed(ledger, seconds)
    return 2


# -- a slow step then a quick one (graceful stop) ----------------------------------------


@ce.step(name="wp.slow")
def slow(ledger: str, marks: str, seconds: float) -> int:
    """Say it started, sleep, then log the execution once it is over; returns the pid."""
    append(marks, f"started {ce.current_step().run_id} {os.getpid()}")
    time.sleep(seconds)
    record(ledger)
    return os.getpid()


@ce.step(name="wp.quick")
def quick(ledger: str, first: int) -> str:
    """Log the execution; say who ran the slow step and who ran this one."""
    record(ledger)
    return f"{first}>{os.getpid()}"


@ce.workflow(name="wp.slow_then_quick")
def slow_then_quick(ledger: str, marks: str, seconds: float) -> Generator[Any, Any, str]:
    """A slow step, then a quick one fed its result."""
    first = yield slow(ledger, marks, seconds)
    both: str = yield quick(ledger, first)
    return both


def main(argv: list[str] | None = None) -> None:
    """Work the database until SIGTERM: `DB THREADS LEASE GRACE`."""
    db, threads, lease, grace = argv if argv is not None else sys.argv[1:]
    # The engine's warnings (a lease taken over, a late step) go to stderr, where the
    # tests read them.
    logging.basicConfig(
        level=logging.WARNING, format="%(process)d %(levelname)s %(name)s: %(message)s"
    )
    with ce.Engine(db, lease=float(lease)) as engine:
        print(f"WORKING {os.getpid()}", flush=True)
        engine.work(threads=int(threads), grace=float(grace))
    print(f"STOPPED {os.getpid()}", flush=True)
