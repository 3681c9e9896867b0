"""`contengine bench`, workers part: many runs at once, runs asleep, wake-up latency.

All with durability "full". Throughput is set against the same raw SQLite commit
floor as the single-run figures (bench_common.floor_round, a round of floor before each
round of engine): many runs advancing at once share their commits (group commit),
so they can beat one commit per step. Memory is measured in a child process of
its own, so that what this process did before does not count. The wake-up latency
is in bench_wakes.py.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from ..core.timers import sleep_until
from ..core.workflow import step, workflow
from ..engine.engine import Engine
from .bench_common import WAIT, Metric, Say, child_env, floor_round, fresh, loop, remove_db
from .bench_wakes import measure_wakes

TARGET_RUNS = 1_000.0  # runs of RUN_STEPS steps finished per second
# Runs of RUN_STEPS steps, started and finished per second, over the floor's commits/s.
TARGET_STARTED_RATIO = 0.4
RUN_STEPS = 10
RUN_COMMITS = RUN_STEPS + 1  # what one run costs one commit at a time: the floor's cap
CONCURRENCY = (1, 10, 100)
TARGET_CONCURRENT_RATIO = 5.0  # the largest concurrency: steps/s over floor commits/s
TARGET_ASLEEP_MB = 300.0  # resident memory with every run asleep
TARGET_ASLEEP_GROWTH_MB = 100.0  # what the process grew by from before the engine opened
BURST_CHUNK = 1_000  # runs a start_many() of the burst records
_CHILD_MEASURE = "from contengine.tools.bench_workers import measure_child; measure_child()"


@dataclass
class Sizes:
    """How much each workers measurement does (small ones for the tests)."""

    runs: int = 200  # runs of RUN_STEPS steps, all at once
    concurrent_steps: int = 2400  # steps in all for each concurrency
    asleep: int = 10_000  # runs asleep at once, in the child process
    signals: int = 100  # wake-ups timed in this process
    remote_signals: int = 40  # wake-ups timed across processes


# -- workflows ---------------------------------------------------------------------


@step(name="contengine.bench.noop")
def noop() -> None:
    """A step that does nothing."""


class _Nap:
    """The epoch second every nap run sleeps until, set once all are started."""

    at = 0.0


@step(name="contengine.bench.due")
def due() -> float:
    """The common due time (a step, so that a replay sees the same one)."""
    return _Nap.at


@workflow(name="contengine.bench.nap")
def nap() -> Generator[Any, Any, int]:
    """One step (the due time), a durable sleep until then, one step."""
    at = yield due()
    yield sleep_until(datetime.datetime.fromtimestamp(at, datetime.UTC))
    yield noop()
    return 1


# -- throughput ----------------------------------------------------------------------


def many_runs_round(
    path: str, runs: int, steps: int, threads: int | None, timed_starts: bool = False
) -> float:
    """Steps/s of `runs` runs of `steps` steps, started by one start_many() and driven by
    run_until_idle(threads); the start is timed too with timed_starts."""
    with Engine(path, durability="full", workflows=[loop]) as engine:
        start = time.perf_counter()
        engine.start_many([(loop, (steps,))] * runs)
        if not timed_starts:
            start = time.perf_counter()
        report = engine.run_until_idle(threads=threads)
        elapsed = time.perf_counter() - start
        done = len(engine.runs(status="completed"))
    if len(report.finished) != runs or done != runs:
        raise RuntimeError(f"{done} of {runs} benchmark runs finished: {report}")
    return runs * steps / elapsed


def throughput(tmp: str, sizes: Sizes, steps: int, rounds: int, say: Say) -> list[Metric]:
    """Runs/s of many short runs, and steps/s of 1, 10 and 100 runs at once, with floors."""
    runs = Metric(
        "many_runs",
        f"runs/s, {sizes.runs:,} runs of {RUN_STEPS} steps",
        "runs/s",
        TARGET_RUNS,
        floor_cost=RUN_COMMITS,
        target_on_median=True,
        details={"runs": sizes.runs, "steps_per_run": RUN_STEPS},
    )
    started = Metric(
        "many_runs_started",
        f"runs/s, {sizes.runs:,} runs of {RUN_STEPS} steps, start_many() timed",
        "runs/s",
        TARGET_STARTED_RATIO,
        details={"runs": sizes.runs, "steps_per_run": RUN_STEPS},
    )
    concurrent = []
    for n in CONCURRENCY:
        per_run = max(1, sizes.concurrent_steps // n)
        concurrent.append(
            Metric(
                f"concurrent_{n}",
                f"steps/s, {n} run{'s' if n > 1 else ''} advancing at once",
                "steps/s",
                TARGET_CONCURRENT_RATIO if n == CONCURRENCY[-1] else None,
                details={"runs": n, "steps_per_run": per_run, "threads": n},
            )
        )
    # Untimed: the first engine and the first file pay one-off costs.
    fresh(tmp, "warm-floor", floor_round, "full", min(steps, 100))
    many_runs_round(os.path.join(tmp, "warm.db"), 10, 2, None)
    remove_db(os.path.join(tmp, "warm.db"))
    for i in range(rounds):
        say(f"workers: round {i + 1}/{rounds}, {sizes.runs} runs")
        runs.floor.append(fresh(tmp, "floor-runs", floor_round, "full", steps))
        path = os.path.join(tmp, "runs.db")
        runs.samples.append(many_runs_round(path, sizes.runs, RUN_STEPS, None) / RUN_STEPS)
        remove_db(path)
        say(f"workers: round {i + 1}/{rounds}, {sizes.runs} runs, starts timed")
        started.floor.append(fresh(tmp, "floor-started", floor_round, "full", steps))
        started.samples.append(
            many_runs_round(path, sizes.runs, RUN_STEPS, None, timed_starts=True) / RUN_STEPS
        )
        remove_db(path)
        for n, m in zip(CONCURRENCY, concurrent, strict=True):
            say(f"workers: round {i + 1}/{rounds}, {n} runs at once")
            m.floor.append(fresh(tmp, f"floor-{n}", floor_round, "full", steps))
            path = os.path.join(tmp, f"concurrent-{n}.db")
            m.samples.append(many_runs_round(path, n, m.details["steps_per_run"], n))
            remove_db(path)
    return [runs, started, *concurrent]


# -- runs asleep (child process) ----------------------------------------------------


def _memory() -> dict[str, float]:
    """VmRSS and VmHWM of this process in MB (Linux; empty elsewhere)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) / 1024  # kB
    except OSError:
        pass
    return out


# Exit status of a child whose runs woke before all were asleep: the due time it chose
# was too early for this machine, and the parent tries again with a wider margin.
_TOO_SLOW = 3
# How many times the start time the runs are given to get to sleep, try after try.
_ASLEEP_MARGINS = (5, 20, 80)


class _TooSlow(RuntimeError):
    """The due time was too early: runs woke before the others were asleep."""


def asleep(path: str, count: int, margin: float = _ASLEEP_MARGINS[0]) -> dict[str, Any]:
    """Start `count` runs of nap, drive them all to sleep, measure memory, then time the
    wake-up of all of them from their common due time; run in a fresh process."""
    base = _memory()
    with Engine(path, durability="full", workflows=[nap]) as engine:
        t0 = time.perf_counter()
        wall0 = time.time()
        engine.start_many([(nap, ())] * count)
        started = time.perf_counter() - t0
        # One due time for all, after every run is asleep: driving a run to its sleep
        # takes 3 to 5 times as long as starting it (notes/benchmarks.md); a run woken
        # before the others sleep would spoil the measure, so that is refused below
        # and the parent tries again with a wider margin.
        at = _Nap.at = time.time() + 1.0 + margin * started
        report = engine.run_until_idle()
        to_sleep = time.perf_counter() - t0 - started
        sleeping = len(engine.runs(status="sleeping"))
        if report.finished or time.time() >= at:
            raise _TooSlow(
                f"only {sleeping} of {count} runs were asleep at once (the machine is "
                f"slower than the due time allowed for, {margin}x the start time): "
                f"{len(report.finished)} finished early"
            )
        if sleeping != count:
            raise RuntimeError(f"{sleeping} of {count} runs fell asleep: {report}")
        memory = _memory()
        time.sleep(max(at - time.time(), 0.0))
        deadline = time.monotonic() + WAIT
        finished = 0
        while finished < count and time.monotonic() < deadline:
            finished += len(engine.run_until_idle().finished)
        wake = time.time() - at
        completed = len(engine.runs(status="completed"))
    if completed != count:
        raise RuntimeError(f"{completed} of {count} runs finished after their sleep")
    return {
        "runs": count,
        "start_s": started,
        "to_sleep_s": to_sleep,
        "due_after_s": at - wall0,
        "rss_mb": memory.get("VmRSS"),
        "hwm_mb": memory.get("VmHWM"),
        "base_rss_mb": base.get("VmRSS"),
        "after_rss_mb": _memory().get("VmRSS"),
        "wake_s": wake,
        "completed": completed,
        "margin": margin,
    }


def measure_child(argv: list[str] | None = None) -> None:
    """Child process entry: `asleep DB COUNT MARGIN` or `burst DB COUNT`; prints the
    figures as JSON on stdout (exit status _TOO_SLOW: try again with a wider margin)."""
    what, db, count, *more = argv if argv is not None else sys.argv[1:]
    try:
        if what == "asleep":
            figures = asleep(db, int(count), *(float(m) for m in more))
        elif what == "burst" and not more:
            figures = burst(db, int(count))
        else:
            raise ValueError(f"unknown measure {[what, *more]!r}")
    except _TooSlow as exc:
        print(exc, file=sys.stderr)
        sys.exit(_TOO_SLOW)
    print(json.dumps(figures), flush=True)


def _in_child(what: str, tmp: str, count: int, timeout: float, *more: str) -> dict[str, Any]:
    """Run asleep() or burst() in a fresh process (so that its memory is its own)."""
    path = os.path.join(tmp, f"{what}.db")
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD_MEASURE, what, path, str(count), *more],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=timeout,
    )
    remove_db(path)
    if proc.returncode == _TOO_SLOW:
        raise _TooSlow(proc.stderr.strip()[-2000:])
    if proc.returncode != 0:
        raise RuntimeError(f"the child process failed: {proc.stderr.strip()[-2000:]}")
    figures: dict[str, Any] = json.loads(proc.stdout)
    return figures


def measure_asleep(tmp: str, count: int, say: Say) -> list[Metric]:
    """Memory with `count` runs asleep, and the time to wake them all, from a child process."""
    say(f"workers: {count:,} runs asleep, in a child process")
    for n, margin in enumerate(_ASLEEP_MARGINS, 1):
        # To start, to fall asleep (margin times the start), to wake: WAIT at most each.
        timeout = (3 + max(margin, 0) / 5) * WAIT
        try:
            figures = _in_child("asleep", tmp, count, timeout, str(margin))
        except _TooSlow:
            if n == len(_ASLEEP_MARGINS):
                raise
            say(f"workers: {count:,} runs asleep, again with more time to fall asleep")
            continue
        break
    else:
        raise RuntimeError("no margin to measure runs asleep with")
    if figures["rss_mb"] is None:
        raise RuntimeError("resident memory cannot be read here (no /proc/self/status)")
    what = f"{count:,} runs asleep"
    return [
        Metric(
            "asleep_rss",
            f"RSS, {what}",
            "MB",
            TARGET_ASLEEP_MB,
            samples=[figures["rss_mb"]],
            lower_is_better=True,
            details=figures,
        ),
        Metric(
            "asleep_growth",
            f"RSS growth, {what}",
            "MB",
            TARGET_ASLEEP_GROWTH_MB,
            samples=[figures["rss_mb"] - figures["base_rss_mb"]],
            lower_is_better=True,
        ),
        Metric("asleep_peak", f"peak RSS (VmHWM), {what}", "MB", None, [figures["hwm_mb"]]),
        Metric(
            "asleep_wake",
            f"{what}: due time to all finished",
            "s",
            None,
            [figures["wake_s"]],
            lower_is_better=True,
        ),
    ]


# -- a burst of started runs (child process) ------------------------------------------


@workflow(name="contengine.bench.pair")
def pair() -> Generator[Any, Any, int]:
    """Two steps."""
    yield noop()
    yield noop()
    return 2


def burst(path: str, count: int) -> dict[str, Any]:
    """Start `count` runs (start_many(), BURST_CHUNK a transaction), then work through
    all of them with run_until_idle(); memory before, after starting, and at the peak."""
    base = _memory()
    with Engine(path, durability="full", workflows=[pair]) as engine:
        t0 = time.perf_counter()
        for at in range(0, count, BURST_CHUNK):
            engine.start_many([(pair, ())] * min(BURST_CHUNK, count - at))
        started = time.perf_counter() - t0
        after_start = _memory()
        t1 = time.perf_counter()
        finished = len(engine.run_until_idle().finished)
        work = time.perf_counter() - t1
    if finished != count:
        raise RuntimeError(f"{finished} of {count} started runs finished")
    return {
        "runs": count,
        "start_s": started,
        "work_s": work,
        "runs_per_s": count / work,
        "base_rss_mb": base.get("VmRSS"),
        "started_rss_mb": after_start.get("VmRSS"),
        "hwm_mb": _memory().get("VmHWM"),
    }


def measure_burst(tmp: str, count: int, say: Say) -> list[Metric]:
    """Peak memory while a child process works through `count` runs started at once."""
    say(f"workers: a burst of {count:,} started runs, in a child process")
    figures = _in_child("burst", tmp, count, max(3 * WAIT, count / 50))
    what = f"a burst of {count:,} started runs"
    return [
        Metric(
            "burst_peak",
            f"peak RSS (VmHWM), {what}",
            "MB",
            None,
            [figures["hwm_mb"]],
            lower_is_better=True,
            details=figures,
        ),
        Metric(
            "burst_rate", f"runs/s working through {what}", "runs/s", None, [figures["runs_per_s"]]
        ),
    ]


# -- all of it ---------------------------------------------------------------------------


def measure_workers(tmp: str, sizes: Sizes, steps: int, rounds: int, say: Say) -> list[Metric]:
    """Every workers measurement, in directory tmp."""
    return [
        *throughput(tmp, sizes, steps, rounds, say),
        *measure_asleep(tmp, sizes.asleep, say),
        *measure_wakes(tmp, sizes.signals, sizes.remote_signals, say),
    ]
