"""`contengine bench --db postgresql://...`: the engine on a PostgreSQL server against the
server's commit floor, measured from this process.

The floor is one row INSERTed and committed per transaction, synchronous_commit on, on
the same server from the same process (store/postgres/raw.py): a step of the engine
costs at least one such commit. Every round makes fresh schemas of its own and drops
them; floor and engine rounds alternate, and the table shows medians and their ratio.
Durability is "full" (synchronous_commit on) throughout.

* one run, sequential steps: steps/s against the floor (target 0.8x);
* 100 runs advancing at once: steps/s against the floor (target 10x: one statement
  and one commit carry a whole batch of runs' steps, store/postgres/batch.py);
* 200 runs of 10 steps (--runs): runs/s (the floor's cap: a run costs 11 commits one at
  a time);
* claims: 4 worker processes claim pending runs as engine.work() does (up to 8 at a
  time, each claimed run kept under a live lease) until none is left: claims/s from
  the first claim to the last, and no run claimed twice (target 1,000/s).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..engine.engine import Engine
from ..store.postgres import PostgresStore
from ..store.postgres.raw import commit_floor, drop_schema, new_schema_name, server_info
from ..store.rows import WorkerRow
from .bench import machine
from .bench_claims import Target, measure_claims, sizes
from .bench_common import WAIT, Metric, Say, child_env, loop, metric_lines
from .bench_postgres import measure_postgres

TARGET_ONE_RUN = 0.8  # steps/s of one run over floor commits/s
CONCURRENT = 100  # runs advancing at once
TARGET_CONCURRENT = 10.0  # their steps/s over floor commits/s
RUN_STEPS = 10
TARGET_CLAIMS = 1_000.0  # claims/s, 4 processes
TARGET_STARTED_RATIO = 0.4  # runs of RUN_STEPS steps started and finished /s over commits/s
CLAIMERS = 4
CLAIM_SIZE = 8  # runs per claim: engine.work()'s threads, by default
_CHILD = "from contengine.tools.bench_pg import claim_child; claim_child()"


@contextmanager
def fresh_schema(url: str) -> Iterator[str]:
    """A new schema name, dropped (with what was made in it) after the block."""
    schema = new_schema_name()
    try:
        yield schema
    finally:
        drop_schema(url, schema)


# -- what is measured ---------------------------------------------------------------


def one_run(url: str, steps: int) -> float:
    """Steps/s of one run of `steps` trivial steps (opening the engine not timed)."""
    with fresh_schema(url) as schema, Engine(url, schema=schema, workflows=[loop]) as engine:
        start = time.perf_counter()
        result = engine.run(loop, steps)
        elapsed = time.perf_counter() - start
    if result != steps:
        raise RuntimeError(f"the benchmark run returned {result!r}, not {steps}")
    return steps / elapsed


def many_runs(
    url: str, runs: int, steps: int, threads: int | None, timed_starts: bool = False
) -> float:
    """Steps/s of `runs` runs of `steps` steps, started by one start_many() and driven by
    run_until_idle(threads); the start is timed too with timed_starts."""
    with fresh_schema(url) as schema, Engine(url, schema=schema, workflows=[loop]) as engine:
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


def claims(url: str, runs: int) -> tuple[float, dict[str, Any]]:
    """Claims/s of CLAIMERS processes claiming `runs` pending runs, and the figures."""
    with fresh_schema(url) as schema:
        with Engine(url, schema=schema, durability="normal", workflows=[loop]) as engine:
            engine.start_many([(loop, (0,))] * runs)
        children = [
            subprocess.Popen(
                [sys.executable, "-c", _CHILD, url, schema, f"claimer-{i}"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=child_env(),
            )
            for i in range(CLAIMERS)
        ]
        try:
            for child in children:  # each has its store open and its worker on record
                assert child.stdout is not None and child.stdin is not None
                if child.stdout.readline().strip() != "ready":
                    raise RuntimeError("a claiming process did not start")
            for child in children:
                assert child.stdin is not None
                child.stdin.write("go\n")
                child.stdin.flush()
            reports = [json.loads(child.communicate(timeout=WAIT)[0]) for child in children]
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
    taken = collections.Counter(run_id for r in reports for run_id in r["claimed"])
    duplicates = sum(n - 1 for n in taken.values())
    if duplicates or len(taken) != runs:
        raise RuntimeError(
            f"claims went wrong: {len(taken)} of {runs} runs claimed, {duplicates} twice"
        )
    elapsed = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    figures = {
        "runs": runs,
        "processes": CLAIMERS,
        "claim_size": CLAIM_SIZE,
        "duplicates": duplicates,
        "transactions": sum(r["calls"] for r in reports),
        "per_process": [len(r["claimed"]) for r in reports],
    }
    return runs / elapsed, figures


def claim_child(argv: list[str] | None = None) -> None:
    """Child process entry: `URL SCHEMA WORKER`. Says "ready", waits for a line on stdin,
    claims until nothing is left, and prints what it claimed as JSON."""
    url, schema, worker_id = argv if argv is not None else sys.argv[1:]
    store = PostgresStore(url, schema=schema)
    try:
        now = time.time()
        worker = WorkerRow(worker_id, platform.node(), os.getpid(), None, now, now + 3600)
        store.heartbeat(worker)
        print("ready", flush=True)
        sys.stdin.readline()
        claimed: list[str] = []
        calls = 0
        start = time.time()
        while True:
            now = time.time()
            got = store.claim(worker, now, now, CLAIM_SIZE)
            calls += 1
            if not got:
                break
            claimed += [c.run.id for c in got]
        end = time.time()
    finally:
        store.close()
    print(json.dumps({"claimed": claimed, "calls": calls, "start": start, "end": end}))


# -- rounds ----------------------------------------------------------------------------


def measure(
    url: str, steps: int, rounds: int, run_count: int, claim_runs: int, say: Say
) -> list[Metric]:
    """Every measurement, rounds alternating with floor rounds (a floor round before each
    engine round of a metric with a floor)."""
    one = Metric("pg_one_run", "steps/s, one run", "steps/s", TARGET_ONE_RUN)
    per_run = max(1, steps // CONCURRENT)
    hundred = Metric(
        f"pg_concurrent_{CONCURRENT}",
        f"steps/s, {CONCURRENT} runs advancing at once",
        "steps/s",
        TARGET_CONCURRENT,
        details={"runs": CONCURRENT, "steps_per_run": per_run, "threads": CONCURRENT},
    )
    runs = Metric(
        "pg_many_runs",
        f"runs/s, {run_count:,} runs of {RUN_STEPS} steps",
        "runs/s",
        None,
        floor_cost=RUN_STEPS + 1,
        details={"runs": run_count, "steps_per_run": RUN_STEPS},
    )
    started = Metric(
        "pg_many_runs_started",
        f"runs/s, {run_count:,} runs of {RUN_STEPS} steps, start_many() timed",
        "runs/s",
        TARGET_STARTED_RATIO,
        details={"runs": run_count, "steps_per_run": RUN_STEPS},
    )
    claimed = Metric(
        "pg_claims",
        f"claims/s, {CLAIMERS} processes, {claim_runs:,} runs",
        "claims/s",
        TARGET_CLAIMS,
        target_on_median=True,
    )
    # Untimed: the first engine and the first schema pay one-off costs.
    commit_floor(url, min(steps, 100))
    one_run(url, min(steps, 100))
    rounds_of: list[tuple[Metric, Callable[[], float]]] = [
        (one, lambda: one_run(url, steps)),
        (hundred, lambda: many_runs(url, CONCURRENT, per_run, CONCURRENT)),
        (runs, lambda: many_runs(url, run_count, RUN_STEPS, None) / RUN_STEPS),
        (started, lambda: many_runs(url, run_count, RUN_STEPS, None, True) / RUN_STEPS),
    ]
    for i in range(rounds):
        for m, engine_round in rounds_of:
            say(f"round {i + 1}/{rounds}: {m.label}, the floor")
            m.floor.append(commit_floor(url, steps))
            say(f"round {i + 1}/{rounds}: {m.label}")
            m.samples.append(engine_round())
        say(f"round {i + 1}/{rounds}: {claimed.label}")
        rate, figures = claims(url, claim_runs)
        claimed.samples.append(rate)
        claimed.details = figures
    return [one, hundred, runs, started, claimed]


def measure_pg_claims(url: str, large: int, rounds: int, say: Say) -> list[Metric]:
    """bench_claims.measure_claims() in fresh schemas of the server (dropped after)."""
    targets = {n: Target(url, new_schema_name()) for n in sizes(large)}
    try:
        metrics = measure_claims(targets, rounds, say)
    finally:
        for target in targets.values():
            assert target.schema is not None
            drop_schema(url, target.schema)
    for m in metrics:
        m.name, m.label = f"pg_{m.name}", f"{m.label} (PostgreSQL)"
    return metrics


def table(metrics: list[Metric], info: dict[str, Any], params: dict[str, Any]) -> str:
    """The human-readable report."""
    server = info["server"]
    head = (
        f"contengine bench on PostgreSQL {server['version']} at {params['db']} "
        f"(synchronous_commit on, fsync {server['fsync']}): {params['steps']:,} steps x "
        f"{params['rounds']} rounds; Python {info['python']}, {info['cpus']} CPUs "
        f"({info['cpu_model'] or '?'}; Python runs {info['python_speed']} M loop "
        f"iterations/s)"
    )
    return "\n".join(
        [
            head,
            "",
            *metric_lines(metrics, "commit floor"),
            "",
            "median over rounds; floor and engine rounds alternate; spread = (max - min) / median",
            "floor: one INSERT committed per transaction, same server, same process",
        ]
    )


def _progress() -> Say:
    if not sys.stderr.isatty():
        return lambda text: None

    def say(text: str) -> None:
        sys.stderr.write(f"\r\033[Kbench: {text}")
        sys.stderr.flush()

    return say


def main(args: argparse.Namespace) -> int:
    """Run the PostgreSQL benchmark and print a table (or JSON); 0 whether or not
    targets are met."""
    from ..store.postgres.url import redacted

    for name in ("steps", "rounds", "runs", "claim_runs", "remote_signals", "claims_asleep"):
        if getattr(args, name) < 1:
            print(f"contengine bench: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    params = {
        "db": redacted(args.db),
        "steps": args.steps,
        "rounds": args.rounds,
        "runs": args.runs,
        "claim_runs": args.claim_runs,
        "remote_signals": args.remote_signals,
        "claims_asleep": args.claims_asleep,
    }
    info = machine(tempfile.gettempdir())
    info = {k: info[k] for k in ("python", "platform", "cpus", "cpu_model", "python_speed")}
    info["server"] = server_info(args.db)
    try:
        say = _progress()
        metrics = measure(args.db, args.steps, args.rounds, args.runs, args.claim_runs, say)
        metrics += measure_postgres(args.db, args.remote_signals, say)
        metrics += measure_pg_claims(args.db, args.claims_asleep, args.rounds, say)
    finally:
        if sys.stderr.isatty():
            sys.stderr.write("\r\033[K")
    if args.json:
        doc = {
            "machine": info,
            "params": params,
            "metrics": {m.name: m.as_json() for m in metrics},
        }
        print(json.dumps(doc, indent=2))
    else:
        print(table(metrics, info, params))
    return 0
