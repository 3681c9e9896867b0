"""The PostgreSQL store's search of runs: a page at a time, newest first."""

from __future__ import annotations

from ..run_search import RunPage, RunQuery, conditions
from .connection import Link
from .sql import RUN_COLS, run_row


def tag_condition(tag: str) -> tuple[str, object]:
    """The test that a run carries this tag (tags are a text array)."""
    return "%s = ANY(tags)", tag


class SearchMethods:
    """Part of PostgresStore: finding runs for a dashboard or an operator."""

    _reader: Link

    def find_runs(self, query: RunQuery) -> RunPage:
        where, params = conditions(query, "%s", tag_condition)
        ((total,),) = self._reader.read(f"SELECT count(*) FROM runs{where}", params)
        rows = self._reader.read(
            f"SELECT {RUN_COLS} FROM runs{where} ORDER BY created_at DESC, num DESC "
            "LIMIT %s OFFSET %s",
            [*params, query.limit, query.offset],
        )
        return RunPage([run_row(r) for r in rows], total, query.offset)
