"""What engine.stats() reads from a store: runs by status, recent step entries, and the
runnable runs no live worker holds (Store.stats_rows; the same SQL on both stores)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ContengineError
from .rows import FINISHED, RUN_STATUSES

__all__ = ["StatsSource", "StoreStats", "read_stats"]

Read = Callable[[str, Sequence[object]], list[tuple[Any, ...]]]

_UNFINISHED = ", ".join(f"'{s}'" for s in RUN_STATUSES if s not in FINISHED)


@dataclass(frozen=True)
class StoreStats:
    """runs: how many runs have each status; steps: (seconds from logged to outcome,
    attempts, crashes, status) of the newest step entries that got their outcome in the
    window; runnable: per queue (None: no queue), how many runs are due and held by no
    live worker, and the oldest of their due times."""

    runs: dict[str, int]
    steps: list[tuple[float, int, int, str]]
    runnable: dict[str | None, tuple[int, float]]


class StatsSource:
    """The part of a Store that engine.stats() reads (a base of AdminStore)."""

    def stats_rows(self, now: float, wall: float, since: float, limit: int) -> StoreStats:
        """Runs by status, up to limit of the newest step entries that got their outcome
        since `since`, and per queue the runs due by now held by no worker alive at wall
        (clock time). Stores that keep no statistics (a test's wrapper) refuse."""
        raise ContengineError(
            f"{type(self).__name__} keeps no statistics; engine.stats() needs an SQLite "
            f"or PostgreSQL store"
        )


def read_stats(
    read: Read, mark: str, now: float, wall: float, since: float, limit: int
) -> StoreStats:
    """The numbers, by three reads (read(sql, params); mark: the store's placeholder)."""
    runs = {
        str(s): int(n) for s, n in read("SELECT status, count(*) FROM runs GROUP BY status", ())
    }
    # No index has finished_at: this reads the whole log. A scrape every few seconds on
    # a log of millions of entries should use a shorter window or a larger interval.
    steps = [
        (max(0.0, float(took)), int(attempts), int(crashes), str(status))
        for took, attempts, crashes, status in read(
            "SELECT finished_at - started_at, attempts, crashes, status FROM log "
            f"WHERE kind = 'step' AND finished_at >= {mark} "
            "AND status IN ('completed', 'failed') "
            f"ORDER BY finished_at DESC LIMIT {mark}",
            (since, limit),
        )
    ]
    # Due: a due time passed, or none (due at once; its last change stands in for it).
    # Held: leased to a worker whose row is not expired (a dead one's runs are free).
    runnable = {
        queue: (int(count), float(oldest))
        for queue, count, oldest in read(
            "SELECT queue, count(*), min(coalesce(due_at, updated_at)) FROM runs "
            f"WHERE status IN ({_UNFINISHED}) AND coalesce(due_at, updated_at) <= {mark} "
            "AND (owner IS NULL OR owner NOT IN "
            f"(SELECT id FROM workers WHERE expires_at > {mark})) GROUP BY queue",
            (now, wall),
        )
    }
    return StoreStats(runs, steps, runnable)
