"""Workflows for tests/test_litestream.py, and the worker process that drives them.

The worker is started as `python -c "import litestream_child; litestream_child.main()"
DB` with this directory on PYTHONPATH: it runs `engine.work(threads=4)` on DB until it
is killed. Each run has three steps; the second and the third wait for a gate file the
test creates, so the test decides where every run stands when the worker dies. Every
step execution appends a line to a ledger file outside the engine (fsynced):
`run_id position pid attempt idempotency_key label`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Generator
from typing import Any

import contengine as ce

GATE_WAIT = 120.0  # a bound against hanging: a gate the test never opens fails the step


def append(path: str, line: str) -> None:
    """Append one line to a file shared by processes and make it durable."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def ledger_rows(path: str) -> list[tuple[str, int, int, int, str, str]]:
    """The ledger's lines: (run_id, position, pid, attempt, key, label); [] before any."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        rows = [line.split() for line in f if line.strip()]
    return [(r, int(p), int(pid), int(a), k, label) for r, p, pid, a, k, label in rows]


def record(ledger: str, label: str) -> None:
    """Log this step execution in the ledger."""
    s = ce.current_step()
    line = f"{s.run_id} {s.position} {os.getpid()} {s.attempt} {s.idempotency_key} {label}"
    append(ledger, line)


def gate_path(gates: str, gate: str, run_id: str) -> str:
    """The file that lets `gate` of run `run_id` through once it exists."""
    return os.path.join(gates, f"{gate}-{run_id}")


@ce.step(name="litestream.prepare")
def prepare(ledger: str, n: int) -> int:
    """n + 1, at once."""
    record(ledger, "prepare")
    return n + 1


@ce.step(name="litestream.gated")
def gated(ledger: str, gates: str, gate: str, value: int) -> int:
    """value, once the gate file of this run exists (an open gate: at once)."""
    record(ledger, gate)
    path = gate_path(gates, gate, ce.current_step().run_id)
    deadline = time.monotonic() + GATE_WAIT
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} was never opened")
        time.sleep(0.01)
    return value


@ce.workflow(name="litestream.job")
def job(ledger: str, gates: str, n: int) -> Generator[Any, Any, str]:
    """prepare, then two gated steps: returns expected(n)."""
    a = yield prepare(ledger, n)
    b = yield gated(ledger, gates, "b", a * 10)
    c = yield gated(ledger, gates, "c", b + 7)
    return f"{n}:{c}"


def expected(n: int) -> str:
    """What job(ledger, gates, n) returns."""
    return f"{n}:{(n + 1) * 10 + 7}"


def main() -> None:
    """The worker process: drive the runs of sys.argv[1] until killed."""
    with ce.Engine(sys.argv[1]) as engine:
        engine.work(threads=4)


@ce.step(name="litestream.increment")
def increment(n: int) -> int:
    """n + 1."""
    return n + 1


@ce.workflow(name="litestream.job_once")
def job_once(n: int) -> Generator[Any, Any, int]:
    """One step: n + 1."""
    return (yield increment(n))


@ce.step(name="litestream.bulky")
def bulky(n: int, size: int) -> str:
    """A long text (about `size` bytes) made from n."""
    return f"{n}:" + "x" * size


@ce.workflow(name="litestream.bulk")
def bulk(n: int, size: int) -> Generator[Any, Any, int]:
    """Two long outcomes: returns their total length."""
    a = yield bulky(n, size)
    b = yield bulky(n + 1, size)
    return len(a) + len(b)
