"""`contengine bench --db postgresql://...`: what is measured on a PostgreSQL server.

Everything runs in a schema of its own (contengine_bench_<random>), made for the
run and dropped afterwards. Measured so far: the wake-up latency after a signal
across processes, with the worker process woken by LISTEN/NOTIFY and, on the same
server in the same run, by polling alone (its store hears no wake-ups).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import uuid
from typing import Any

from ..store.postgres.url import is_postgres_url, redacted, with_schema
from .bench_common import Metric, Say, metric_lines
from .bench_wakes import percentile, remote_wakes

TARGET_NOTIFY_P99_MS = 20.0  # signal to completed across processes, woken by NOTIFY
# Rounds of each way, alternating (notify, poll, notify, poll, ...), so that a change in
# the server's load lands on both.
ROUNDS = 2


def measure_postgres(url: str, remote_signals: int, say: Say) -> list[Metric]:
    """Wake-ups across processes on the server at url: remote_signals with LISTEN/NOTIFY
    and as many by polling, in ROUNDS alternating rounds."""
    from ..store.postgres.schema import drop_schema

    schema = f"contengine_bench_{uuid.uuid4().hex[:12]}"
    target = with_schema(url, schema)
    heard: list[float] = []
    polled: list[float] = []
    poll = 0.0
    sizes = [remote_signals // ROUNDS + (i < remote_signals % ROUNDS) for i in range(ROUNDS)]
    try:
        for i, n in enumerate(sizes):
            if not n:
                continue
            say(f"postgres: round {i + 1}/{ROUNDS}, {n} wake-ups by LISTEN/NOTIFY")
            latencies, poll = remote_wakes(target, n, listen=True)
            heard += latencies
            say(f"postgres: round {i + 1}/{ROUNDS}, {n} wake-ups by polling")
            latencies, poll = remote_wakes(target, n, listen=False)
            polled += latencies
    finally:
        drop_schema(url, schema)
    details: dict[str, Any] = {"signals": remote_signals, "poll_s": poll, "schema": schema}
    return [
        Metric(
            "pg_wake_notify",
            "wake-up across processes, LISTEN/NOTIFY: signal to completed (median)",
            "ms",
            None,
            [statistics.median(heard)],
            lower_is_better=True,
            details={**details, "to_completed_ms": heard},
        ),
        Metric(
            "pg_wake_notify_p99",
            "wake-up across processes, LISTEN/NOTIFY (p99)",
            "ms",
            TARGET_NOTIFY_P99_MS,
            [percentile(heard, 99)],
            lower_is_better=True,
        ),
        Metric(
            "pg_wake_poll",
            f"wake-up across processes, polling every {poll:g} s (median)",
            "ms",
            None,
            [statistics.median(polled)],
            lower_is_better=True,
            details={**details, "to_completed_ms": polled},
        ),
        Metric(
            "pg_wake_poll_p99",
            f"wake-up across processes, polling every {poll:g} s (p99)",
            "ms",
            None,
            [percentile(polled, 99)],
            lower_is_better=True,
        ),
    ]


def main(args: argparse.Namespace, say: Say) -> int:
    """`contengine bench --db URL`: measure on the server, print a table (or JSON)."""
    if not is_postgres_url(args.db):
        print(
            "contengine bench: --db takes a PostgreSQL URL (postgresql://...); SQLite is "
            "measured on files of the benchmark's own (see --dir)",
            file=sys.stderr,
        )
        return 2
    if args.remote_signals < 1:
        print("contengine bench: --remote-signals must be >= 1", file=sys.stderr)
        return 2
    metrics = measure_postgres(args.db, args.remote_signals, say)
    shown = redacted(args.db)
    if args.json:
        doc = {
            "server": shown,
            "params": {"remote_signals": args.remote_signals, "rounds": ROUNDS},
            "metrics": {m.name: m.as_json() for m in metrics},
        }
        print(json.dumps(doc, indent=2))
        return 0
    head = (
        f"contengine bench on PostgreSQL at {shown}: {args.remote_signals} wake-ups across "
        f"processes each way, {ROUNDS} alternating rounds (durability full)"
    )
    print("\n".join([head, "", *metric_lines(metrics, "floor")]))
    return 0
