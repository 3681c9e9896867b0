"""The SQLite store's reads of due runs, and its signals, cancels and notes."""

from __future__ import annotations

from ...errors import ContengineError, RunNotFound
from ..base import FINISHED, Signal
from .sql import DUE, DUE_RUNS, UNFINISHED_SQL, SQLiteParts


class RunMethods(SQLiteParts):
    """Part of SQLiteStore: which runs are due, and the writes that wake or mark a run."""

    def runnable(self, now: float, limit: int | None = None) -> list[str]:
        # The runs_due index's range of runs due by now (claims.py does the same).
        sql = (
            f"SELECT id FROM {DUE_RUNS} WHERE status IN ({UNFINISHED_SQL}) AND {DUE} <= ? "
            "ORDER BY num"
        )
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [str(r[0]) for r in self._read(sql, (now,))]

    def next_due(self, after: float | None = None) -> float | None:
        # The first entry of the runs_due index past `after` (a run without a due time
        # is at minus infinity there, never past it).
        rows = self._read(
            f"SELECT due_at FROM {DUE_RUNS} WHERE status IN ({UNFINISHED_SQL}) AND {DUE} > ? "
            f"ORDER BY {DUE} LIMIT 1",
            (float("-inf") if after is None else after,),
        )
        value = rows[0][0] if rows else None
        # A wait without a timeout is due "never" (infinity): no time will wake it.
        return float(value) if value is not None and value != float("inf") else None

    def send_signal(self, run_id: str, name: str, payload: bytes, now: float) -> None:
        with self._tx() as conn:
            row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFound(f"no run with id {run_id!r}: the signal {name!r} was not sent")
            if row[0] in FINISHED:
                raise ContengineError(
                    f"run {run_id!r} is {row[0]}: it will never wait again, so the signal "
                    f"{name!r} was not sent"
                )
            conn.execute(
                "INSERT INTO mailbox (run_id, name, payload, sent_at) VALUES (?, ?, ?, ?)",
                (run_id, name, payload, now),
            )
            # Wake a waiting run now; it finds out for itself whether this is its signal.
            conn.execute(
                "UPDATE runs SET due_at = ? WHERE id = ? AND status = 'waiting'", (now, run_id)
            )

    def peek_signal(self, run_id: str, name: str) -> Signal | None:
        rows = self._read(
            "SELECT seq, run_id, name, payload, sent_at FROM mailbox "
            "WHERE run_id = ? AND name = ? ORDER BY seq LIMIT 1",
            (run_id, name),
        )
        return Signal(*rows[0]) if rows else None

    def request_cancel(self, run_id: str, now: float) -> bool:
        with self._tx() as conn:
            row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFound(f"no run with id {run_id!r} to cancel")
            if row[0] in FINISHED:
                return False
            # The run and, recursively, its unfinished children.
            conn.execute(
                "WITH RECURSIVE tree(id) AS (SELECT ? UNION ALL "
                "SELECT runs.id FROM runs JOIN tree ON runs.parent_id = tree.id) "
                "UPDATE runs SET cancel_requested = 1, due_at = ? "
                f"WHERE id IN (SELECT id FROM tree) AND status IN ({UNFINISHED_SQL})",
                (run_id, now),
            )
            return True

    def published(self, run_id: str) -> dict[str, bytes]:
        rows = self._read("SELECT key, value FROM published WHERE run_id = ?", (run_id,))
        return {str(k): bytes(v) for k, v in rows}

    def set_note(self, run_id: str, note: str | None) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE runs SET note = ? WHERE id = ?", (note, run_id))
