"""`contengine bench --db postgresql://...`: what is measured on a PostgreSQL server.

Everything runs in a schema of its own (contengine_bench_<random>), made for the
run and dropped afterwards. Measured so far: the wake-up latency after a signal
across processes, with the worker process woken by LISTEN/NOTIFY and, on the same
server in the same run, by polling alone (its store hears no wake-ups).
"""

from __future__ import annotations

import statistics
import uuid
from typing import Any

from ..store.postgres.url import with_schema
from .bench_common import Metric, Say
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
