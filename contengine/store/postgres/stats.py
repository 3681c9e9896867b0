"""The PostgreSQL store's part of engine.stats() (store/stats.py has the reads)."""

from __future__ import annotations

from ..stats import StoreStats, read_stats
from .connection import Link


class StatsMethods:
    """Part of PostgresStore: the numbers engine.stats() reports."""

    _reader: Link

    def stats_rows(self, now: float, wall: float, since: float, limit: int) -> StoreStats:
        return read_stats(self._reader.read, "%s", now, wall, since, limit)
