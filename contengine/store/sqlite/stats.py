"""The SQLite store's part of engine.stats() (store/stats.py has the reads)."""

from __future__ import annotations

from ..stats import StoreStats, read_stats
from .sql import SQLiteParts


class StatsMethods(SQLiteParts):
    """Part of SQLiteStore: the numbers engine.stats() reports."""

    def stats_rows(self, now: float, wall: float, since: float, limit: int) -> StoreStats:
        return read_stats(self._read, "?", now, wall, since, limit)
