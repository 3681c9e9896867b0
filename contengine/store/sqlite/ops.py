"""The SQLite store's operator methods: gc, retry's rewind, import, mailbox, backup."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Sequence

from ...errors import ContengineError, DatabaseError, IdConflict, RunNotFound
from ..base import CANCELLED, FAILED, AttemptRow, EntryRow, Rewind, RunRow, Signal, run_digest
from ..run_search import RunPage, RunQuery, conditions, like_escaped
from .sql import (
    ATTEMPT_COLS,
    DELETABLE,
    DELETABLE_COUNT,
    INSERT_ENTRY,
    POSITION_BITS,
    POSITION_MASK,
    PUT_ATTEMPT,
    RUN_COLS,
    RUN_MARKS,
    SQLiteParts,
    attempt_params,
    checked_position,
    log_in,
    run_in,
    run_params,
    run_row,
)


def refuse_taken(dest: str) -> None:
    """ContengineError if dest exists, or a -wal or -journal file beside it: a backup
    never overwrites a file, and SQLite would read a leftover one as part of the new file."""
    for path in (dest, f"{dest}-wal", f"{dest}-journal"):
        if os.path.lexists(path):
            raise ContengineError(
                f"{path!r} already exists; a backup never overwrites a file, so nothing "
                f"was written. Choose a new path."
            )


def tag_condition(tag: str) -> tuple[str, object]:
    """The test that a run carries this tag: tags are stored as ",a,b,"."""
    return "tags LIKE ? ESCAPE '\\'", f"%,{like_escaped(tag)},%"


class OperatorMethods(SQLiteParts):
    """Part of SQLiteStore: what the operator commands need of the file."""

    def find_runs(self, query: RunQuery) -> RunPage:
        where, params = conditions(query, "?", tag_condition)
        ((total,),) = self._read(f"SELECT count(*) FROM runs{where}", params)
        rows = self._read(
            f"SELECT {RUN_COLS} FROM runs{where} ORDER BY created_at DESC, num DESC "
            "LIMIT ? OFFSET ?",
            [*params, query.limit, query.offset],
        )
        return RunPage([run_row(r) for r in rows], total, query.offset)

    def delete_finished(self, before: float, limit: int) -> int:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit!r}")
        deleted = 0
        with self._tx() as conn:
            # Children go before their parents, so a tree of old runs is deleted leaves
            # first: look again after each round until the batch is full or none is left.
            while deleted < limit:
                rows = conn.execute(DELETABLE, (before, limit - deleted)).fetchall()
                if not rows:
                    break
                self._delete_runs(conn, [(int(num), str(run_id)) for num, run_id in rows])
                deleted += len(rows)
        return deleted

    def count_deletable(self, before: float) -> int:
        return int(self._read(DELETABLE_COUNT, (before,))[0][0])

    def _delete_runs(self, conn: sqlite3.Connection, runs: list[tuple[int, str]]) -> None:
        spans = [(num << POSITION_BITS, (num << POSITION_BITS) | POSITION_MASK) for num, _ in runs]
        conn.executemany("DELETE FROM log WHERE id BETWEEN ? AND ?", spans)
        conn.executemany("DELETE FROM attempts WHERE id BETWEEN ? AND ?", spans)
        ids = [(run_id,) for _, run_id in runs]
        conn.executemany("DELETE FROM mailbox WHERE run_id = ?", ids)
        conn.executemany("DELETE FROM published WHERE run_id = ?", ids)
        conn.executemany("DELETE FROM runs WHERE id = ?", ids)
        for _, run_id in runs:
            self._nums.pop(run_id, None)

    def rewind(self, runs: Sequence[Rewind], now: float) -> None:
        with self._tx() as conn:
            for r in runs:  # any refusal rolls back the runs before it
                self._rewind_one(conn, r, now)

    def _rewind_one(self, conn: sqlite3.Connection, r: Rewind, now: float) -> None:
        run_id = r.run_id
        run = run_in(conn, run_id)
        if run is None:
            raise RunNotFound(f"no run with id {run_id!r}; nothing was changed")
        if run.status not in (FAILED, CANCELLED):
            raise ContengineError(
                f"run {run_id!r} is {run.status}, not failed or cancelled; only those can "
                f"be retried, so nothing was changed"
            )
        base = self._key(conn, run_id, 0)
        # What the plan was made from, read again inside this transaction: a plan of
        # another state (another retry re-ran the run and it failed elsewhere) could
        # discard steps that completed since.
        if run_digest(run, log_in(conn, run_id, base)) != r.seen:
            raise ContengineError(
                f"run {run_id!r} changed since the retry was planned; nothing was changed, "
                f"retry again"
            )
        span = (base + checked_position(r.position), base | POSITION_MASK)
        conn.execute("DELETE FROM log WHERE id BETWEEN ? AND ?", span)
        conn.execute("DELETE FROM attempts WHERE id BETWEEN ? AND ?", span)
        conn.execute(
            "UPDATE runs SET status = 'pending', updated_at = ?, due_at = NULL, "
            "finished_at = NULL, result = NULL, error = NULL, error_text = NULL, "
            "note = NULL, cancel_requested = 0, owner = NULL, lease = lease + 1 "
            "WHERE id = ?",
            (now, run_id),
        )

    def insert_run(
        self,
        run: RunRow,
        entries: Sequence[EntryRow] = (),
        mailbox: Sequence[Signal] = (),
        published: dict[str, bytes] | None = None,
        attempts: Sequence[AttemptRow] = (),
    ) -> None:
        with self._tx() as conn:
            cur = conn.execute(
                f"INSERT INTO runs ({RUN_COLS}) VALUES ({RUN_MARKS}) ON CONFLICT (id) DO NOTHING",
                run_params(run),
            )
            if cur.rowcount != 1:
                raise IdConflict(f"a run with id {run.id!r} already exists; nothing was written")
            base = int(cur.lastrowid or 0) << POSITION_BITS
            conn.executemany(
                INSERT_ENTRY,
                [
                    (
                        base | checked_position(e.position), e.kind, e.name, e.key,
                        None if e.text == e.key else e.text, e.status, e.attempts, e.crashes,
                        e.started_at, e.finished_at, e.due_at, e.outcome, e.error_text,
                    )
                    for e in entries
                ],
            )  # fmt: skip
            conn.executemany(
                "INSERT INTO mailbox (run_id, name, payload, sent_at) VALUES (?, ?, ?, ?)",
                [(run.id, m.name, m.payload, m.sent_at) for m in mailbox],
            )
            conn.executemany(
                "INSERT INTO published (run_id, key, value) VALUES (?, ?, ?)",
                [(run.id, k, v) for k, v in (published or {}).items()],
            )
            conn.executemany(PUT_ATTEMPT, [attempt_params(base, a) for a in attempts])
            num = cur.lastrowid
        self._remember_num(run.id, num)

    def load_attempts(self, run_id: str, position: int | None = None) -> list[AttemptRow]:
        rows = self._read("SELECT num FROM runs WHERE id = ?", (run_id,))
        if not rows:
            return []
        base = int(rows[0][0]) << POSITION_BITS
        low, high = (base, base | POSITION_MASK) if position is None else (base | position,) * 2
        found = self._read(
            f"SELECT {ATTEMPT_COLS} FROM attempts WHERE id BETWEEN ? AND ? ORDER BY id, attempt",
            (low, high),
        )
        return [AttemptRow(run_id, *r) for r in found]

    def mailbox(self, run_id: str) -> list[Signal]:
        rows = self._read(
            "SELECT seq, run_id, name, payload, sent_at FROM mailbox WHERE run_id = ? ORDER BY seq",
            (run_id,),
        )
        return [Signal(int(q), str(r), str(n), bytes(p), float(t)) for q, r, n, p, t in rows]

    def backup(self, dest_path: str | os.PathLike[str]) -> None:
        dest = os.fspath(dest_path)
        refuse_taken(dest)
        try:
            # O_EXCL claims the name: a file that appeared since the check is not overwritten.
            os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            raise ContengineError(f"{dest!r} already exists; nothing was written") from None
        except OSError as exc:
            raise DatabaseError(f"cannot create the backup file {dest!r}: {exc}") from exc
        try:
            self._copy_to(dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(dest)
            raise

    def _copy_to(self, dest: str) -> None:
        try:
            target = sqlite3.connect(dest, isolation_level=None)
            try:
                if self.path == ":memory:":
                    with self._lock:
                        self._conn.backup(target)
                    return
                # A connection of its own, so the engine's writes go on meanwhile (WAL:
                # a reader does not block writers). pages=-1 copies in one step, inside
                # one read transaction: the copy is one snapshot of the file.
                source = sqlite3.connect(self.path, timeout=self.busy_timeout)
                try:
                    source.backup(target, pages=-1)
                finally:
                    source.close()
            finally:
                target.close()
        except sqlite3.Error as exc:
            raise DatabaseError(f"backup of {self.path!r} to {dest!r} failed: {exc}") from exc
