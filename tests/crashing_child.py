"""Workflows for tests/test_crash.py, and the child process that runs them until it is killed.

The child is started as `python -c "import crashing_child; crashing_child.main()" DB
DURABILITY RUN_ID WORKFLOW ARGS_JSON` with this directory on PYTHONPATH. With
CRASH_HANG_IN=<label> in its environment, the step execution with that label
records itself in the ledger, prints `HANG <label>` and waits to be killed.
Every step execution appends `label pid attempt` to the ledger file (fsynced),
which lives outside the engine and so shows what really ran.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Generator
from typing import Any

import contengine as ce

HANG_ENV = "CRASH_HANG_IN"
HANG_SECONDS = 60.0  # far longer than any test waits: the parent kills us first


def record(ledger: str, label: str) -> None:
    """Append this step execution to the ledger and make it durable."""
    line = f"{label} {os.getpid()} {ce.current_step().attempt}\n"
    with open(ledger, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_ledger(ledger: str) -> list[tuple[str, int, int]]:
    """Every step execution recorded so far as (label, pid, attempt)."""
    if not os.path.exists(ledger):
        return []
    with open(ledger, encoding="utf-8") as f:
        rows = [line.split() for line in f if line.strip()]
    return [(label, int(pid), int(attempt)) for label, pid, attempt in rows]


def _execute(ledger: str, label: str, acc: str) -> str:
    record(ledger, label)
    if os.environ.get(HANG_ENV) == label:
        print(f"HANG {label}", flush=True)
        time.sleep(HANG_SECONDS)
    return f"{acc}>{label}"


@ce.step(name="crashing_child.work")
def work(ledger: str, label: str, acc: str) -> str:
    """Record the execution, hang if told to, and extend the accumulated path."""
    return _execute(ledger, label, acc)


@ce.step(max_crashes=1)
def fragile(ledger: str, label: str, acc: str) -> str:
    """Like work, but given up after its process dies during it twice."""
    return _execute(ledger, label, acc)


@ce.workflow(name="crash.pipeline")
def pipeline(ledger: str, n: int) -> Generator[Any, Any, str]:
    """n steps s0..s{n-1}, each fed the previous one's result."""
    acc = "start"
    for i in range(n):
        acc = yield work(ledger, f"s{i}", acc)
    return acc


@ce.workflow(name="crash.doomed")
def doomed(ledger: str, catch: bool) -> Generator[Any, Any, str]:
    """A step that keeps getting its process killed; optionally catch the CrashLoop."""
    acc = yield work(ledger, "before", "start")
    try:
        acc = yield fragile(ledger, "doomed", acc)
    except ce.CrashLoop:
        if not catch:
            raise
        acc = yield work(ledger, "after", f"{acc}>gave up")
    return acc


WORKFLOWS = {"pipeline": pipeline, "doomed": doomed}


def main(argv: list[str] | None = None) -> None:
    """Start (or find) the run and drive it to its end, unless killed first."""
    db, durability, run_id, name, args_json = argv if argv is not None else sys.argv[1:]
    engine = ce.Engine(db, durability=durability)
    result = engine.start(WORKFLOWS[name], *json.loads(args_json), id=run_id).result()
    print(f"DONE {result}", flush=True)
