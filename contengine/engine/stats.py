"""engine.stats(): runs by status, recent step latency and attempts, queue depth and
claim lag, from one narrow read of the store (Store.stats_rows)."""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ..clock import Clock
from ..store.base import RUN_STATUSES, Store

__all__ = ["BUCKETS", "EngineStats", "StepStats", "engine_stats"]

# Upper bounds (seconds) of the step latency histogram's buckets (and +Inf after them).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# Step entries read at most: a busy window is summed over its newest ones.
STEP_LIMIT = 100_000


@dataclass(frozen=True)
class StepStats:
    """Steps that got their outcome in the window: how many (completed, failed), their
    seconds from logged to outcome (a retry's backoff included) as sum, percentiles and
    cumulative histogram buckets (upper bound, count), and their attempts and crashes."""

    count: int
    completed: int
    failed: int
    seconds_sum: float
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None
    buckets: tuple[tuple[float, int], ...]
    attempts: int
    retried: int  # steps that took more than one attempt
    crashes: int


@dataclass(frozen=True)
class EngineStats:
    """What engine.stats() reports; time is when it was read (engine clock)."""

    time: float
    window: float
    runs: dict[str, int]
    steps: StepStats
    queue_depth: dict[str, int]  # runnable runs no live worker holds, by queue ("" none)
    claim_lag: float  # seconds since the oldest of those became due; 0.0 if none
    claim_lag_by_queue: dict[str, float]
    truncated: bool  # more step entries than STEP_LIMIT ended in the window

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the same numbers as plain dicts and lists."""
        data = asdict(self)
        data["steps"]["buckets"] = [[le, n] for le, n in self.steps.buckets]
        return data


def percentile(ordered: list[float], q: float) -> float | None:
    """The q-quantile (0..1) of sorted values, nearest rank; None for none."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def engine_stats(
    store: Store, clock: Clock, window: float, wall: Callable[[], float] = time.time
) -> EngineStats:
    """Read the store once and sum it up (see EngineStats)."""
    if not window > 0 or math.isinf(window):
        raise ValueError(f"window must be a positive, finite number of seconds, not {window!r}")
    now = clock.now()
    rows = store.stats_rows(now, wall(), now - window, STEP_LIMIT)
    runs = {status: rows.runs.get(status, 0) for status in RUN_STATUSES}
    took = sorted(t for t, _, _, _ in rows.steps)
    buckets = tuple((le, bisect.bisect_right(took, le)) for le in BUCKETS)
    completed = sum(1 for *_, status in rows.steps if status == "completed")
    steps = StepStats(
        count=len(took),
        completed=completed,
        failed=len(took) - completed,
        seconds_sum=sum(took),
        p50=percentile(took, 0.5),
        p90=percentile(took, 0.9),
        p99=percentile(took, 0.99),
        max=took[-1] if took else None,
        buckets=buckets,
        attempts=sum(a for _, a, _, _ in rows.steps),
        retried=sum(1 for _, a, _, _ in rows.steps if a > 1),
        crashes=sum(c for _, _, c, _ in rows.steps),
    )
    depth = {q or "": n for q, (n, _) in rows.runnable.items()}
    lags = {q or "": max(0.0, now - oldest) for q, (_, oldest) in rows.runnable.items()}
    return EngineStats(
        time=now,
        window=float(window),
        runs=runs,
        steps=steps,
        queue_depth=depth,
        claim_lag=max(lags.values(), default=0.0),
        claim_lag_by_queue=lags,
        truncated=len(rows.steps) >= STEP_LIMIT,
    )
