"""`contengine bench`, claims part: what finding due work costs with many runs asleep.

Runs asleep are made quickly: one run is driven to a durable sleep far in the future,
then its row and its log are copied (in SQL) under new ids, each copy due a little
later than the one before. The copies are runs like any other (a drive would replay
them), made in seconds rather than in the minutes that driving each would take.

Measured in this process, two files side by side, rounds interleaved (small, large,
small, large, ...), medians compared:

* `run_until_idle()` with nothing due: SMALL runs asleep against LARGE (target <= 2x);
* `engine.start()` of a run: in the same two files (target <= 2x);
* the empty claim (a worker's poll that finds nothing) at 0, and at each size given.
"""

from __future__ import annotations

import datetime
import os
import sqlite3
import statistics
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from ..core.timers import sleep_until
from ..core.workflow import Workflow, step, workflow
from ..engine.engine import Engine
from ..store.base import Store
from ..store.liveness import HOST, process_start
from ..store.opening import open_store
from ..store.rows import WorkerRow
from .bench_common import Metric, Say, remove_db

SMALL = 100  # runs asleep in the small file
TARGET_IDLE_RATIO = 2.0  # run_until_idle() with LARGE asleep over SMALL asleep
TARGET_START_RATIO = 2.0  # engine.start() likewise
DORMANT_DAYS = 30.0  # how far in the future the copies are due
_TEMPLATE = "bench-dormant"
POSITION_BITS = 32
STEP = 0.001  # seconds between the due times of two copies


@step(name="contengine.bench.mark")
def mark() -> int:
    """A step before the sleep (so that a copy has a log of a few entries)."""
    return 1


@workflow(name="contengine.bench.dormant")
def dormant(at: float) -> Generator[Any, Any, int]:
    """A step, then a durable sleep until `at` (epoch seconds)."""
    yield mark()
    yield sleep_until(datetime.datetime.fromtimestamp(at, datetime.UTC))
    return 1


@workflow(name="contengine.bench.started")
def started() -> Generator[Any, Any, int]:
    """What the start rounds start (never driven: only its start is timed)."""
    yield mark()
    return 1


WORKFLOWS: list[Workflow[Any, Any]] = [dormant, started]


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})")]


@dataclass(frozen=True)
class Target:
    """Where the runs are: an SQLite file (path), or a schema on a PostgreSQL server."""

    path: str  # a file, or a postgresql:// URL
    schema: str | None = None

    def engine(self, durability: str = "normal") -> Engine:
        """An engine on it that knows the benchmark's workflows."""
        return Engine(self.path, durability=durability, schema=self.schema, workflows=WORKFLOWS)

    def store(self) -> Store:
        """A store on it (no engine)."""
        return open_store(self.path, "normal", 5.0, self.schema)


def populate(target: Target, count: int) -> None:
    """Put `count` runs asleep in the target (made if missing)."""
    with target.engine() as engine:
        if count <= 0:
            return
        at = time.time() + DORMANT_DAYS * 86400
        engine.start(dormant, at, id=_TEMPLATE)
        engine.run_until_idle(threads=1)
        if engine.get_run(_TEMPLATE).status != "sleeping":
            raise RuntimeError("the template run did not fall asleep")
    if count == 1:
        return
    if target.schema is not None:
        from ..store.postgres.raw import clone_run

        clone_run(target.path, target.schema, _TEMPLATE, count - 1, STEP)
    else:
        _clone_sqlite(target.path, count - 1)


def _clone_sqlite(path: str, count: int) -> None:
    """Copy the template run (row and log) count times, copy i due i * STEP later."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        cols = [c for c in _columns(conn, "runs") if c not in ("num", "id")]
        picked = [f"due_at + n.i * {STEP!r}" if c == "due_at" else f"runs.{c}" for c in cols]
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            f"INSERT INTO runs (id, {', '.join(cols)}) "
            f"SELECT ? || n.i, {', '.join(picked)} FROM runs, n WHERE runs.id = ? "
            "ORDER BY n.i",
            (count, f"{_TEMPLATE}-", _TEMPLATE),
        )
        (base,) = conn.execute("SELECT num FROM runs WHERE id = ?", (_TEMPLATE,)).fetchone()
        log_cols = [c for c in _columns(conn, "log") if c != "id"]
        picked_log = [
            f"log.due_at + (runs.num - {base}) * {STEP!r}" if c == "due_at" else f"log.{c}"
            for c in log_cols
        ]
        mask = (1 << POSITION_BITS) - 1
        conn.execute(
            f"INSERT INTO log (id, {', '.join(log_cols)}) "
            f"SELECT (runs.num << {POSITION_BITS}) | (log.id & {mask}), {', '.join(picked_log)} "
            f"FROM runs, log WHERE runs.id LIKE ? AND log.id BETWEEN ? AND ?",
            (f"{_TEMPLATE}-%", base << POSITION_BITS, (base << POSITION_BITS) | mask),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


def _worker() -> WorkerRow:
    now = time.time()
    pid = os.getpid()
    return WorkerRow(f"{HOST}:{pid}:bench", HOST, pid, process_start(pid), now, now + 3600)


def empty_claim_ms(target: Target, calls: int = 200) -> float:
    """Median ms of a claim that finds nothing due (the worker already on record)."""
    store = target.store()
    try:
        worker = _worker()
        store.claim(worker, time.time(), time.time(), 8)  # on record; takes nothing
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            got = store.claim(worker, time.time(), time.time(), 8)
            times.append(time.perf_counter() - start)
            if got:
                raise RuntimeError(f"an empty claim took {len(got)} runs")
        return statistics.median(times) * 1000
    finally:
        store.close()


def idle_ms(engine: Engine, calls: int) -> float:
    """Median ms of run_until_idle() that finds nothing due."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        report = engine.run_until_idle()
        times.append(time.perf_counter() - start)
        if report.driven:
            raise RuntimeError(f"run_until_idle() drove {report.driven} runs; none was due")
    return statistics.median(times) * 1000


def start_ms(engine: Engine, calls: int) -> float:
    """Median ms of engine.start() of a new run."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        engine.start(started)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _interleaved(
    small: Engine, large: Engine, fn: Callable[[Engine, int], float], rounds: int, calls: int
) -> tuple[list[float], list[float]]:
    a: list[float] = []
    b: list[float] = []
    for _ in range(rounds):
        a.append(fn(small, calls))
        b.append(fn(large, calls))
    return a, b


def measure_claims(
    targets: dict[int, Target], rounds: int, say: Say, durability: str = "full"
) -> list[Metric]:
    """The empty claim with each number of runs asleep (targets: by that number, runs
    not yet there), and run_until_idle() and start() with the smallest number above
    0 against the largest (interleaved rounds, in this process)."""
    for n, target in targets.items():
        say(f"claims: putting {n:,} runs asleep")
        populate(target, n)
    metrics: list[Metric] = []
    say("claims: empty claims")
    for n, target in targets.items():
        m = Metric(
            f"empty_claim_{n}",
            f"empty claim, {n:,} runs asleep",
            "ms",
            None,
            lower_is_better=True,
            details={"asleep": n},
        )
        for _ in range(rounds):
            m.samples.append(empty_claim_ms(target))
        metrics.append(m)
    small, large = min(n for n in targets if n > 0), max(targets)
    with targets[small].engine(durability) as few, targets[large].engine(durability) as many:
        say(f"claims: run_until_idle(), {small:,} against {large:,} asleep")
        idle_ms(few, 5), idle_ms(many, 5)  # warm-up
        a, b = _interleaved(few, many, idle_ms, rounds, 50)
        idle = "run_until_idle(), nothing due"
        metrics += _pair("idle", idle, a, b, small, large, TARGET_IDLE_RATIO)
        say(f"claims: start(), {small:,} against {large:,} asleep")
        a, b = _interleaved(few, many, start_ms, rounds, 50)
        metrics += _pair("start", "start()", a, b, small, large, TARGET_START_RATIO)
    return metrics


def sizes(large: int) -> list[int]:
    """The numbers of runs asleep measured: none, SMALL (fewer if large is small), large."""
    return sorted({0, min(SMALL, max(1, large // 10)), large})


def measure_sqlite_claims(tmp: str, large: int, rounds: int, say: Say) -> list[Metric]:
    """measure_claims() on SQLite files in tmp (durability full)."""
    targets = {n: Target(os.path.join(tmp, f"asleep-{n}.db")) for n in sizes(large)}
    try:
        return measure_claims(targets, rounds, say)
    finally:
        for target in targets.values():
            remove_db(target.path)


def _pair(
    name: str,
    label: str,
    small: list[float],
    large: list[float],
    few: int,
    many: int,
    target: float,
) -> list[Metric]:
    """The two files' metrics and the ratio of their medians, round by round (judged by
    the target on the median of the rounds' ratios)."""
    a = Metric(
        f"{name}_few", f"{label}, {few:,} asleep", "ms", None, small, details={"asleep": few}
    )
    b = Metric(
        f"{name}_many", f"{label}, {many:,} asleep", "ms", None, large, details={"asleep": many}
    )
    ratio = Metric(
        f"{name}_ratio",
        f"{label}: {many:,} asleep over {few:,}",
        "x",
        target,
        [y / x for x, y in zip(small, large, strict=True)],
        lower_is_better=True,
        details={"few": few, "many": many, "median_few_ms": a.median, "median_many_ms": b.median},
    )
    return [a, b, ratio]
