"""Test doubles shared by the test modules."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Any

from stores import OnCurrentStore

import contengine as ce
from contengine.store.base import Progress, Store
from contengine.testing import VirtualClock


class FakeClock:
    """A virtual clock: sleeping records the delay and moves time on at once."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.t = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        """Virtual wall time."""
        return self.t

    def monotonic(self) -> float:
        """Virtual monotonic time (the same as wall time here)."""
        return self.t

    def sleep(self, seconds: float) -> None:
        """Record the delay and jump ahead."""
        self.sleeps.append(seconds)
        self.t += max(seconds, 0.0)


class Crash(BaseException):
    """Stands in for the process dying: the engine does not catch it."""


def at_commit(k: int) -> Callable[[Progress, int], bool]:
    """Picks the k-th commit (counted from 1)."""
    return lambda _, n: n == k


class CrashingStore(OnCurrentStore):
    """The test's store (SQLite or PostgreSQL), counting commits: raises Crash before or
    after the first one `chosen` picks (given the progress and the commit's number, from 1)."""

    def __init__(
        self,
        path: Path | str,
        chosen: Callable[[Progress, int], bool] = lambda _, n: False,
        when: str = "before",
    ) -> None:
        super().__init__(path, durability="normal")
        self.chosen = chosen
        self.when = when
        self.commits = 0
        self.crashed = False

    def commit(self, progress: Progress) -> None:
        """Write the progress, unless this is the commit planned to crash."""
        self.commits += 1
        hit = not self.crashed and self.chosen(progress, self.commits)
        if hit and self.when == "before":
            self.crashed = True
            raise Crash
        super().commit(progress)
        if hit and self.when == "after":
            self.crashed = True
            raise Crash


def crash_at(path: Path | str, when: str | None = None, k: int = 0) -> CrashingStore:
    """A CrashingStore that crashes before or after the k-th commit (when None: never)."""
    if when is None:
        return CrashingStore(path)
    return CrashingStore(path, at_commit(k), when)


def engine_on(path: Path, clock: VirtualClock, store: Store | None = None) -> ce.Engine:
    """A fresh engine on the file, as a restarted process would open it."""
    return ce.Engine(path, durability="normal", clock=clock, store=store)


def wait_until(test: Callable[[], object], timeout: float = 5.0, pause: float = 0.002) -> bool:
    """Poll test() until it is true or timeout seconds have passed; its last verdict."""
    deadline = time.monotonic() + timeout
    while not test() and time.monotonic() < deadline:
        time.sleep(pause)
    return bool(test())


def stop_in_background(block: AbstractContextManager[Any], engine: ce.Engine) -> threading.Thread:
    """Leave an entered `engine.worker()` block in another thread (the stop waits out its
    grace period there); returns once the stop has begun. The caller joins the thread."""
    stopping = threading.Thread(target=block.__exit__, args=(None, None, None))
    stopping.start()
    assert wait_until(engine._runner.stopping.is_set)
    return stopping


LINE_WAIT = 120.0  # a bound against hanging, never reached when things work


def lines_of(stream: IO[str]) -> queue.Queue[str]:
    """The stream's lines as they come, read by a thread of their own."""
    got: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stream:
            got.put(line)

    threading.Thread(target=read, daemon=True).start()
    return got


def wait_for_line(lines: queue.Queue[str], text: str, seen: list[str] | None = None) -> str:
    """The next line holding text (lines before it go to seen, if given)."""
    seen = [] if seen is None else seen
    while True:
        try:
            line = lines.get(timeout=LINE_WAIT)
        except queue.Empty:
            raise AssertionError(f"no line with {text!r} within {LINE_WAIT} s: {seen}") from None
        seen.append(line)
        if text in line:
            return line


def first_line(proc: subprocess.Popen[str]) -> str:
    """The child's next stdout line; a watchdog kills a child that says nothing in time."""
    watchdog = threading.Timer(LINE_WAIT, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        return proc.stdout.readline()
    finally:
        watchdog.cancel()


def reap(procs: list[subprocess.Popen[str]]) -> None:
    """Kill the children still running, wait for each and close its pipes."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def fail_first_calls(calls: dict[str, int], key: str, times: int, word: str) -> None:
    """Count a call under key; the first `times` calls raise ValueError("<word> <n>")."""
    calls[key] = calls.get(key, 0) + 1
    if calls[key] <= times:
        raise ValueError(f"{word} {calls[key]}")


def kill_then_finish(argv: list[str]) -> str:
    """Run argv with HANG=1 until it prints HANG, SIGKILL it, then run it again with
    HANG=0 to its end (exit 0); the second run's first line."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for hang in ("1", "0"):
            proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env={**os.environ, "HANG": hang},
            )  # fmt: skip
            procs.append(proc)
            line = first_line(proc)
            why = proc.stderr.read() if proc.stderr and not line.strip() else line
            if hang == "1":
                assert line.strip() == "HANG", why
                os.kill(proc.pid, signal.SIGKILL)
                assert proc.wait(LINE_WAIT) == -signal.SIGKILL
            else:
                assert proc.wait(LINE_WAIT) == 0, proc.stderr.read() if proc.stderr else ""
                return line.strip()
    finally:
        reap(procs)
    raise AssertionError("not reached")
