"""Workflows for tests/test_cancel_kill.py, driven by worker processes (tests/worker_child.py).

Steps say what they do in files outside the engine (fsynced lines), so the test sees
what really ran and in which process, and the test tells a step to end with a file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator
from typing import Any

from worker_child import append

import contengine as ce

WAIT = 60.0  # seconds a step waits for the test at most


@ce.step(name="kc.long")
def long_step(marks: str, go: str) -> str:
    """Say it started, then run until the test creates the file `go`."""
    append(marks, f"long {os.getpid()} {ce.current_step().attempt}")
    deadline = time.monotonic() + WAIT
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.01)
    return "long done"


@ce.step(name="kc.cleanup")
def cleanup(marks: str) -> str:
    """Say it started; the first attempt then blocks until its process is killed."""
    attempt = ce.current_step().attempt
    append(marks, f"cleanup {os.getpid()} {attempt}")
    if attempt == 1:
        time.sleep(WAIT)
    return "cleaned"


@ce.workflow(name="kc.try_finally")
def try_finally(marks: str, go: str) -> Generator[Any, Any, str]:
    """The cancel comes while long_step runs; the cleanup in finally must run."""
    try:
        value: str = yield long_step(marks, go)
        return value
    finally:
        yield cleanup(marks)
