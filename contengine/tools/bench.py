"""`contengine bench`: steps/s against the raw SQLite commit floor, replay speed, resume time.

Every step costs one commit, so the honest yardstick for the engine is the
fastest a Python program can commit small rows to the same kind of SQLite file
(WAL, same `synchronous` setting, same directory). Floor and engine rounds
alternate so that a slow patch of the disk or a busy neighbour hits both alike.
The workers part (many runs at once, runs asleep) is in bench_workers.py, the
wake-up latency in bench_wakes.py; `--no-workers` leaves both out. What they share
(the result type, the floor, the files) is in bench_common.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Generator
from typing import Any

from ..core.workflow import step, workflow
from ..engine.engine import Engine
from . import bench_replay
from .bench_common import Metric, bump, copy_db, floor_round, fresh, loop, metric_lines, remove_db

# Engine steps/s over floor commits/s, per durability.
TARGET_RATIO = {"full": 0.8, "normal": 0.6}
TARGET_REPLAY = 200_000.0  # replayed steps/s
TARGET_RESUME_MS = 20.0  # from Engine() to the workflow body running again
_RUN_ID = "bench-crashed"
# The workers measurements' sizes, as `contengine bench` options (bench_workers.Sizes).
WORKER_SIZES = ("runs", "concurrent_steps", "asleep", "signals", "remote_signals")


class _Crash(BaseException):
    """Raised inside a step to leave its entry in flight, as a killed process would."""


class _State:
    """What the benchmark workflows share with the code that times them."""

    crash = False
    body_started: float | None = None


@step(name="contengine.bench.last")
def last(x: int) -> int:
    """The step a crashed run stops at; it "crashes" while _State.crash is set."""
    if _State.crash:
        raise _Crash
    return x


@workflow(name="contengine.bench.crashing")
def crashing(n: int) -> Generator[Any, Any, int]:
    """n trivial steps, then one that crashes the process the first time."""
    _State.body_started = time.perf_counter()
    x = 0
    for _ in range(n):
        x = yield bump(x)
    result: int = yield last(x)
    return result


# -- what is measured -------------------------------------------------------------


def engine_round(path: str, durability: str, n: int) -> float:
    """Steps/s of one run of n trivial steps on a fresh engine file (opening excluded)."""
    with Engine(path, durability=durability, workflows=[loop]) as engine:
        start = time.perf_counter()
        result = engine.run(loop, n)
        elapsed = time.perf_counter() - start
    if result != n:
        raise RuntimeError(f"the benchmark run returned {result!r}, not {n}")
    return n / elapsed


def build_crashed(path: str, n: int) -> None:
    """Write a run of n completed steps whose last request is left in flight."""
    _State.crash = True
    try:
        with Engine(path, durability="normal", workflows=[crashing]) as engine:
            try:
                engine.run(crashing, n, id=_RUN_ID)
            except _Crash:
                pass
            else:
                raise RuntimeError("the run to be replayed finished instead of crashing")
    finally:
        _State.crash = False


def resume_round(base: str, path: str, n: int) -> tuple[float, float, float]:
    """Replayed steps/s, ms to the body running, and replayed steps/s from the body's
    start (the replay itself, as the floor does it), for a new engine on a copy of base."""
    copy_db(base, path)
    _State.body_started = None
    start = time.perf_counter()
    engine = Engine(path, durability="normal", workflows=[crashing])
    try:
        report = engine.run_until_idle()
        elapsed = time.perf_counter() - start
        result = engine.get_run(_RUN_ID).result()
    finally:
        engine.close()
    body = _State.body_started
    if report.finished != [_RUN_ID] or body is None or result != n:
        raise RuntimeError(f"the crashed run did not resume as expected: {report}")
    return n / elapsed, (body - start) * 1000, n / (start + elapsed - body)


# -- results ------------------------------------------------------------------------


def measure(
    tmp: str,
    steps: int,
    rounds: int,
    replay_steps: int,
    say: Callable[[str], None],
    memory_steps: int = 100_000,
    memory_big: int = 300,
) -> list[Metric]:
    """Run every measurement in directory tmp; slow to fast order does not matter."""
    metrics = []
    for durability in ("full", "normal"):
        m = Metric(
            f"steps_{durability}",
            f"steps/s, durability {durability}",
            "steps/s",
            TARGET_RATIO[durability],
        )
        _warm_up(tmp, durability, min(steps, 100))
        for i in range(rounds):
            say(f"{durability}: round {i + 1}/{rounds}, raw SQLite")
            m.floor.append(fresh(tmp, f"floor-{durability}", floor_round, durability, steps))
            say(f"{durability}: round {i + 1}/{rounds}, engine")
            m.samples.append(fresh(tmp, f"engine-{durability}", engine_round, durability, steps))
        metrics.append(m)
    replay = Metric("replay", "replayed steps/s, normal", "steps/s", TARGET_REPLAY)
    floored = Metric(
        "replay_floor",
        "replay (from the body's start) against its floor",
        "steps/s",
        bench_replay.TARGET_FLOOR_RATIO,
        floor_unit="steps/s",
    )
    resume = Metric("resume", "time to resume", "ms", TARGET_RESUME_MS, lower_is_better=True)
    say(f"replay: writing a run of {replay_steps:,} steps")
    base = os.path.join(tmp, "crashed.db")
    build_crashed(base, replay_steps)
    for i in range(rounds):
        say(f"replay: round {i + 1}/{rounds}, floor")
        floored.floor.append(bench_replay.floor_round(base, _RUN_ID, replay_steps))
        say(f"replay: round {i + 1}/{rounds}, engine")
        path = os.path.join(tmp, "resume.db")
        rate, ms, replayed = resume_round(base, path, replay_steps)
        remove_db(path)
        replay.samples.append(rate)
        floored.samples.append(replayed)
        resume.samples.append(ms)
    remove_db(base)
    # Each round's own ratio too: engine and floor of one round share the host's state.
    floored.details["round_ratios"] = [
        e / f for e, f in zip(floored.samples, floored.floor, strict=True)
    ]
    memory = measure_memory(tmp, rounds, memory_steps, memory_big, say)
    return [*metrics, replay, floored, resume, *memory]


def measure_memory(
    tmp: str, rounds: int, steps: int, big_steps: int, say: Callable[[str], None]
) -> list[Metric]:
    """Replay's memory, each round in child processes: the resident set's peak growth
    replaying a run of `steps` trivial steps, and of `big_steps` steps of 1 MB results;
    what the live cache counts of the idle run against what tracemalloc finds it holds."""
    peak = Metric(
        "replay_peak",
        f"replay {steps:,} steps: peak RSS growth",
        "MB",
        bench_replay.TARGET_PEAK_MB,
        lower_is_better=True,
    )
    big = Metric(
        "replay_peak_big",
        f"replay {big_steps} steps of 1 MB: peak RSS growth",
        "MB",
        bench_replay.TARGET_PEAK_MB,
        lower_is_better=True,
    )
    held = Metric("cache_held", "live cache: traced, idle run", "MB", None)
    counted = Metric("cache_counted", "live cache: counted / traced", "x", 0.5)
    say(f"replay memory: writing runs of {steps:,} steps and {big_steps} of 1 MB")
    long_run, big_run = os.path.join(tmp, "long.db"), os.path.join(tmp, "big.db")
    bench_replay.build_idling(long_run, steps, 0)
    bench_replay.build_idling(big_run, big_steps, 1 << 20)
    path = os.path.join(tmp, "memory.db")
    try:
        for i in range(rounds):
            for metric, base, mode in ((peak, long_run, "rss"), (big, big_run, "rss")):
                say(f"replay memory: round {i + 1}/{rounds}, {metric.name}")
                copy_db(base, path)
                metric.samples.append(bench_replay.run_child(path, mode)["peak_mb"])
                remove_db(path)
            say(f"replay memory: round {i + 1}/{rounds}, live cache")
            copy_db(long_run, path)
            traced = bench_replay.run_child(path, "traced")
            remove_db(path)
            held.samples.append(traced["cache_mb"])
            counted.samples.append(traced["counted_mb"] / max(traced["cache_mb"], 1e-6))
    finally:
        remove_db(long_run)
        remove_db(big_run)
    return [peak, big, held, counted]


def _warm_up(tmp: str, durability: str, n: int) -> None:
    # The first pass through the code and a new file pays one-off costs
    # (imports, caches, file system metadata) that no round should carry.
    fresh(tmp, "warm-floor", floor_round, durability, n)
    fresh(tmp, "warm-engine", engine_round, durability, n)


# -- reporting ----------------------------------------------------------------------


def machine(directory: str) -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(terse=True),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python_speed": python_speed(),
        "directory": directory,
        "filesystem": _filesystem(directory),
    }


def python_speed(loops: int = 300_000, rounds: int = 5) -> float:
    """How fast this interpreter runs here: millions of iterations of a plain loop per
    second (median of a few rounds). The floor is the disk's speed, but the engine's
    cost per step is interpreter time: a ratio bound by the CPU (replay, many runs at
    once) moves with this figure from machine to machine, the disk's ratio does not."""
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        total = 0
        for i in range(loops):
            total += i
        rates.append(loops / (time.perf_counter() - start) / 1e6)
    return round(statistics.median(rates), 1)


def _cpu_model() -> str | None:
    # Linux only, best effort.
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _filesystem(directory: str) -> str | None:
    # Linux only, best effort: the mount with the longest prefix of the directory.
    try:
        with open("/proc/mounts") as f:
            mounts = [line.split()[1:3] for line in f]
    except OSError:
        return None
    real = os.path.realpath(directory)
    best: tuple[int, str | None] = (-1, None)
    for point, fstype in mounts:
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best[0]:
            best = (len(point), fstype)
    return best[1]


def table(metrics: list[Metric], info: dict[str, Any], params: dict[str, int]) -> str:
    """The human-readable report."""
    head = (
        f"contengine bench: {params['steps']:,} steps x {params['rounds']} rounds, "
        f"replay of {params['replay_steps']:,} steps; Python {info['python']}, "
        f"SQLite {info['sqlite']}, {info['cpus']} CPUs ({info['cpu_model'] or '?'}; Python "
        f"runs {info['python_speed']} M loop iterations/s), {info['filesystem'] or '?'} "
        f"at {info['directory']}"
    )
    if "runs" in params:
        head += (
            f"\nworkers (durability full): {params['runs']:,} runs, "
            f"{params['concurrent_steps']:,} steps at each concurrency, {params['asleep']:,} "
            f"runs asleep, {params['signals']} + {params['remote_signals']} signals"
        )
        head += (
            f"\nclaims (durability full): runs asleep copied from one, up to "
            f"{params['claims_asleep']:,}; ratios are round by round, same process"
        )
    lines = [head, "", *metric_lines(metrics, "raw SQLite floor")]
    lines += [
        "",
        "median over rounds; floor and engine rounds alternate; spread = (max - min) / median",
        "(no spread: measured once; a target left blank: for context)",
    ]
    return "\n".join(lines)


def _progress() -> Callable[[str], None]:
    if not sys.stderr.isatty():
        return lambda text: None

    def say(text: str) -> None:
        sys.stderr.write(f"\r\033[Kbench: {text}")
        sys.stderr.flush()

    return say


def main(args: argparse.Namespace) -> int:
    """Run the benchmark and print a table (or JSON); 0 whether or not targets are met."""
    params = {
        "steps": args.steps,
        "rounds": args.rounds,
        "replay_steps": args.replay_steps,
        "memory_steps": args.memory_steps,
        "memory_big": args.memory_big,
    }
    sizes = {name: getattr(args, name) for name in WORKER_SIZES} if args.workers else {}
    params.update(sizes)
    if sizes:
        params["claims_asleep"] = args.claims_asleep
    for name, value in params.items():
        if value < 1:
            print(f"contengine bench: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    if args.burst < 0:
        print("contengine bench: --burst must be >= 0", file=sys.stderr)
        return 2
    if args.burst:
        params["burst"] = args.burst
    if args.dir is not None and not os.path.isdir(args.dir):
        print(f"contengine bench: {args.dir!r} is not a directory", file=sys.stderr)
        return 2
    say = _progress()
    info = machine(args.dir or tempfile.gettempdir())
    with tempfile.TemporaryDirectory(prefix="contengine-bench-", dir=args.dir) as tmp:
        try:
            metrics = measure(
                tmp,
                args.steps,
                args.rounds,
                args.replay_steps,
                say,
                args.memory_steps,
                args.memory_big,
            )
            if sizes:
                from .bench_claims import measure_sqlite_claims
                from .bench_workers import Sizes, measure_workers

                metrics += measure_workers(tmp, Sizes(**sizes), args.steps, args.rounds, say)
                metrics += measure_sqlite_claims(tmp, args.claims_asleep, args.rounds, say)
            if args.burst:
                from .bench_workers import measure_burst

                metrics += measure_burst(tmp, args.burst, say)
        finally:
            if sys.stderr.isatty():
                sys.stderr.write("\r\033[K")
    if args.json:
        doc = {
            "machine": info,
            "params": {**params, "workers": bool(sizes)},
            "metrics": {m.name: m.as_json() for m in metrics},
        }
        print(json.dumps(doc, indent=2))
    else:
        print(table(metrics, info, params))
    return 0
