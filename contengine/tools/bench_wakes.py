"""`contengine bench`, wake-up latency: from signal() to the run going on, in this process
(a worker of 4 threads) and across processes (a child running engine.work(); on
PostgreSQL woken by LISTEN/NOTIFY, or, to compare, by polling alone).

All with durability "full".
"""

from __future__ import annotations

import math
import os
import queue
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Generator
from typing import Any

from ..core.timers import wait
from ..core.workflow import current_step, step, workflow
from ..engine.engine import Engine, Run
from ..store.base import Listening
from ..store.postgres.url import is_postgres_url
from .bench_common import WAIT, Metric, Say, child_env, remove_db

TARGET_WAKE_MS = 5.0  # same process: median from signal() to the next step starting
REMOTE_SLACK_MS = 50.0  # across processes: p99 within the poll interval plus this
_CHILD_WORK = "from contengine.tools.bench_wakes import work_child; work_child()"

# Where the step after a wait says when it started: (run id, time.perf_counter()).
_woken: queue.Queue[tuple[str, float]] = queue.Queue()


@step(name="contengine.bench.woke")
def woke() -> None:
    """Record when the step after the wait started, for the latency measured in this process."""
    _woken.put((current_step().run_id, time.perf_counter()))


@workflow(name="contengine.bench.woken")
def woken() -> Generator[Any, Any, int]:
    """Wait for the signal "go", then one step."""
    yield wait("go")
    yield woke()
    return 1


def _until(test: Callable[[], bool], what: str, pause: float = 0.01) -> None:
    """Poll test() until true; RuntimeError after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while not test():
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what}")
        time.sleep(pause)


def _all_waiting(engine: Engine, n: int) -> Callable[[], bool]:
    return lambda: len(engine.runs(status="waiting", workflow=woken)) == n


def local_wakes(path: str, n: int) -> tuple[list[float], list[float]]:
    """Ms from signal() to the step after the wait starting, and to the run completed, with a
    worker of 4 threads in this process; n runs, signalled one at a time."""
    to_step, to_done = [], []
    with Engine(path, durability="full", workflows=[woken]) as engine, engine.worker(threads=4):
        runs = engine.start_many([(woken, ())] * n)
        _until(_all_waiting(engine, n), f"{n} runs to wait for their signal")
        while not _woken.empty():  # left by an earlier call
            _woken.get_nowait()
        for run in runs:
            start = time.perf_counter()
            engine.signal(run.id, "go")
            run_id, at = _woken.get(timeout=WAIT)
            if run_id != run.id:
                raise RuntimeError(f"signalled run {run.id!r} but run {run_id!r} woke")
            run.result(timeout=WAIT)
            to_done.append((time.perf_counter() - start) * 1000)
            to_step.append((at - start) * 1000)
    return to_step, to_done


def remote_wakes(path: str, n: int, listen: bool = True) -> tuple[list[float], float]:
    """Ms from signal() here to the run seen completed (polled every 1 ms), with engine.work()
    in a child process; n runs, signalled one at a time; also the child's poll interval.
    Without listen the child's store hears no wake-ups (PostgreSQL): it polls."""
    latencies = []
    with Engine(path, durability="full", workflows=[woken]) as engine:
        poll = engine.poll_interval  # the child's too: both use the default
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD_WORK, path, "listen" if listen else "poll"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=child_env(),
        )
        try:
            runs = engine.start_many([(woken, ())] * n)
            _until(_all_waiting(engine, n), f"the worker process to drive {n} runs to their wait")
            rng = random.Random(0)
            for run in runs:
                # A signal lands anywhere in the worker's poll interval, as it would in use;
                # sent right after the last run finished, it would land at its start.
                time.sleep(rng.uniform(0, poll))
                start = time.perf_counter()
                engine.signal(run.id, "go")
                _until(_completed(run), "a woken run", 0.001)
                latencies.append((time.perf_counter() - start) * 1000)
        finally:
            _stop(child)
    return latencies, poll


def _completed(run: Run[Any]) -> Callable[[], bool]:
    return lambda: run.status == "completed"


def work_child(argv: list[str] | None = None) -> None:
    """Child process entry: `DB [listen|poll]`; engine.work() with the defaults until
    SIGTERM (with poll, on PostgreSQL, without hearing wake-ups)."""
    db, mode = [*(argv if argv is not None else sys.argv[1:]), "listen"][:2]
    with _engine(db, listen=mode == "listen") as engine:
        engine.work()


def _engine(db: str, listen: bool) -> Engine:
    """An engine on db for the worker process; without listen, one that only polls."""
    if listen or not is_postgres_url(db):
        return Engine(db, durability="full", workflows=[woken])
    from ..store.postgres.store import PostgresStore

    class Deaf(PostgresStore):
        """A PostgresStore that hears no wake-ups (as a store without LISTEN)."""

        def listen(self, woken: Callable[[], None]) -> Listening | None:
            return None

    return Engine(store=Deaf(db, durability="full"), workflows=[woken])


def _stop(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM the worker process (it stops cleanly), SIGKILL it if it lingers."""
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
    try:
        _, err = child.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        child.kill()
        _, err = child.communicate()
    if child.returncode not in (0, -signal.SIGTERM):
        raise RuntimeError(f"the worker process failed: {err.decode(errors='replace')[-2000:]}")


def percentile(values: list[float], pct: float) -> float:
    """The nearest-rank percentile: the smallest value with pct % of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def measure_wakes(tmp: str, signals: int, remote_signals: int, say: Say) -> list[Metric]:
    """Wake-up latency after a signal: `signals` in this process, `remote_signals` across
    processes."""
    say(f"workers: {signals} wake-ups in this process")
    path = os.path.join(tmp, "wake-local.db")
    to_step, to_done = local_wakes(path, signals)
    remove_db(path)
    say(f"workers: {remote_signals} wake-ups across processes")
    path = os.path.join(tmp, "wake-remote.db")
    remote, poll = remote_wakes(path, remote_signals)
    remove_db(path)
    local_details = {"signals": signals, "to_step_ms": to_step, "to_completed_ms": to_done}
    remote_details = {"signals": remote_signals, "poll_s": poll, "to_completed_ms": remote}
    return [
        Metric(
            "wake_local",
            "wake-up, same process: signal to next step (median)",
            "ms",
            TARGET_WAKE_MS,
            [statistics.median(to_step)],
            lower_is_better=True,
            details=local_details,
        ),
        Metric(
            "wake_local_p99",
            "wake-up, same process: signal to next step (p99)",
            "ms",
            None,
            [percentile(to_step, 99)],
            lower_is_better=True,
        ),
        Metric(
            "wake_local_done",
            "wake-up, same process: signal to completed (median)",
            "ms",
            None,
            [statistics.median(to_done)],
            lower_is_better=True,
        ),
        Metric(
            "wake_remote",
            "wake-up, across processes: signal to completed (median)",
            "ms",
            None,
            [statistics.median(remote)],
            lower_is_better=True,
            details=remote_details,
        ),
        Metric(
            "wake_remote_p99",
            "wake-up, across processes: signal to completed (p99)",
            "ms",
            poll * 1000 + REMOTE_SLACK_MS,
            [percentile(remote, 99)],
            lower_is_better=True,
        ),
    ]
