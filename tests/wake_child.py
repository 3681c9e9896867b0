"""Workflows for tests/test_postgres_wakeups.py, and the worker process that drives them.

The worker is started as `python -c "import wake_child; wake_child.main()" URL SCHEMA
POLL` with this directory on PYTHONPATH: it opens the schema with that poll interval
(a long one: the tests look for wake-ups that come before it) and runs engine.work()
until SIGTERM.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Generator
from typing import Any

import contengine as ce


@ce.step(name="wk.one")
def one() -> int:
    """A trivial step."""
    return 1


@ce.workflow(name="wk.quick")
def quick() -> Generator[Any, Any, int]:
    """One step."""
    x: int = yield one()
    return x


@ce.workflow(name="wk.signalled")
def signalled() -> Generator[Any, Any, str]:
    """Wait for the signal "go", then a step."""
    got = yield ce.wait("go")
    yield one()
    return f"went {got}"


@ce.workflow(name="wk.parent")
def parent() -> Generator[Any, Any, str]:
    """Wait for a child run of signalled()."""
    got: str = yield signalled()
    return f"[{got}]"


@ce.workflow(name="wk.steps")
def steps(n: int) -> Generator[Any, Any, int]:
    """n steps in a row."""
    total = 0
    for _ in range(n):
        total += yield one()
    return total


WORKFLOWS = [quick, signalled, parent, steps]


def main(argv: list[str] | None = None) -> None:
    """Work the schema until SIGTERM: `URL SCHEMA POLL`."""
    url, schema, poll = argv if argv is not None else sys.argv[1:]
    logging.basicConfig(
        level=logging.WARNING, format="%(process)d %(levelname)s %(name)s: %(message)s"
    )
    with ce.Engine(url, schema=schema, poll_interval=float(poll), workflows=WORKFLOWS) as engine:
        print("WORKING", flush=True)
        engine.work(threads=2, grace=5.0)
    print("STOPPED", flush=True)
