"""Workflows for tests/test_many_hosts.py, and the worker process that drives them.

A worker is started in namespaces of its own (`unshare --uts --net`) as

    python -c BOOT HOST URL THREADS LEASE

where BOOT (below) names the process's host HOST before contengine is imported (so
it records itself as a worker of that host), then runs `engine.work(threads=THREADS)`
on the PostgreSQL server at URL (its Unix socket: the new network namespace has no
way to 127.0.0.1) until SIGTERM or a kill. Every step execution appends a line to a
ledger file outside the engine (O_APPEND, fsynced) before it does anything else, so
the test sees what really ran, where, and when.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Generator
from typing import Any

import contengine as ce

# Names the host, then becomes the worker (the name must be set before contengine
# reads it at import).
BOOT = "import socket, sys; socket.sethostname(sys.argv[1]); import hosts_child; hosts_child.main()"
STEP_PAUSE = 0.01  # long enough for a SIGKILL or SIGSTOP to land inside steps
NAP = 0.2  # the durable sleep of every run, in seconds
SIGNAL = "go"


def append(path: str, line: str) -> None:
    """Append one line to a file shared by processes (one write, O_APPEND) and sync it."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_lines(path: str) -> list[list[str]]:
    """The whitespace-split lines of a shared file ([] if it does not exist yet)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [line.split() for line in f if line.strip()]


def record(ledger: str) -> None:
    """Log this step execution: `run_id position pid attempt host started_at`."""
    s = ce.current_step()
    host = os.uname().nodename
    append(ledger, f"{s.run_id} {s.position} {os.getpid()} {s.attempt} {host} {time.time()!r}")


@ce.step(name="mh.add")
def add(ledger: str, x: int, y: int) -> int:
    """x + y, after a short pause."""
    record(ledger)
    time.sleep(STEP_PAUSE)
    return x + y


@ce.step(name="mh.mul")
def mul(ledger: str, x: int, y: int) -> int:
    """x * y, after a short pause."""
    record(ledger)
    time.sleep(STEP_PAUSE)
    return x * y


@ce.step(name="mh.show")
def show(ledger: str, n: int, total: int) -> str:
    """The run's number and total as text, after a short pause."""
    record(ledger)
    time.sleep(STEP_PAUSE)
    return f"{n}:{total}"


@ce.workflow(name="mh.leaf")
def leaf(ledger: str, n: int) -> Generator[Any, Any, int]:
    """A child run of one step: 5n."""
    five: int = yield mul(ledger, n, 5)
    return five


def naps(n: int) -> bool:
    """Whether run n sleeps (half of them do)."""
    return n % 2 == 0


def gathers(n: int) -> bool:
    """Whether run n gathers two steps (a third of them do; the others run one)."""
    return n % 3 == 0


def has_child(n: int) -> bool:
    """Whether run n starts a child run (two in five do)."""
    return n % 5 < 2


def waits(n: int) -> bool:
    """Whether run n waits for a signal (a quarter of them do)."""
    return n % 4 == 0


def payload(n: int) -> int:
    """What the signal to run n carries."""
    return 1000 * n


@ce.workflow(name="mh.mixed")
def mixed(ledger: str, n: int) -> Generator[Any, Any, str]:
    """A step; as n says, a durable sleep, a gather of two steps (else one step), a
    child run, a signal; a last step fed with all of it: returns expected(n)."""
    a = yield add(ledger, n, 1)
    if naps(n):
        yield ce.sleep(NAP)
    if gathers(n):
        b, c = yield ce.gather(mul(ledger, a, 3), add(ledger, n, n))
    else:
        b, c = (yield mul(ledger, a, 3)), 2 * n
    d = (yield leaf(ledger, n)) if has_child(n) else 5 * n
    got = (yield ce.wait(SIGNAL)) if waits(n) else 0
    shown: str = yield show(ledger, n, b + c + d + got)
    return shown


def expected(n: int) -> str:
    """What mixed(ledger, n) returns."""
    return f"{n}:{(n + 1) * 3 + 2 * n + 5 * n + (payload(n) if waits(n) else 0)}"


def main(argv: list[str] | None = None) -> None:
    """Work the server until SIGTERM: `HOST URL THREADS LEASE` (HOST is already set)."""
    _, url, threads, lease = argv if argv is not None else sys.argv[1:]
    logging.basicConfig(
        level=logging.WARNING, format="%(process)d %(levelname)s %(name)s: %(message)s"
    )
    # A supervisor's part: a worker started while the server restarts waits for it.
    deadline = time.monotonic() + 60
    while True:
        try:
            engine = ce.Engine(url, lease=float(lease), poll_interval=0.05)
            break
        except ce.DatabaseError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    with engine:
        print(f"WORKING {os.getpid()} {os.uname().nodename}", flush=True)
        engine.work(threads=int(threads), grace=10.0)
    print(f"STOPPED {os.getpid()}", flush=True)
