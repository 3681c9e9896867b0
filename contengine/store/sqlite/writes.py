"""The SQLite store's progress writes: one progress, and a group commit's batch.

This is the per-step write path: each statement here runs once per step or per batch.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence

from ...errors import DatabaseError, IdConflict
from ..base import E_COMPLETED, E_RUNNING, FINISHED, CancelArrived, EntryRow, Progress
from ..group_commit import Slot
from . import bulk as sqlite_bulk
from .sql import (
    CANCEL_PENDING,
    COMPLETE_ENTRY,
    INSERT_ENTRY,
    INSERT_NEW_ENTRY,
    INSERT_NEW_KEYED,
    POSITION_BITS,
    POSITION_MASK,
    PUT_ATTEMPT,
    RUN_COLS,
    RUN_MARKS,
    SHORT_BLOB,
    UPDATE_ENTRY,
    UPDATE_RUN,
    Executes,
    SQLiteParts,
    attempt_params,
    checked_position,
    run_params,
    with_fence,
    without_error_text,
)


class WriteMethods(SQLiteParts):
    """SQLiteStore's writes of progress: write_batch (group commit's primitive) and commit_many."""

    def commit_many(self, batch: Sequence[Progress]) -> None:
        """Write several runs' progress in one transaction (no savepoints: all or none)."""
        with self._tx() as conn:
            for progress in batch:
                self._write(conn, progress)

    def write_batch(self, batch: list[Slot]) -> None:
        """Write each slot's progress in one transaction; a progress that fails (fenced
        out, raced) is rolled back alone, to its savepoint, and gets its own error.
        Plain step progress goes first, in bulk (sqlite_bulk.py), when there is more
        than one; if the bulk write gives up, the whole batch is written one by one."""
        with self._lock:
            rest: list[Slot] | None = None
            # A run has one progress in a batch (its driver waits for each write); the bulk
            # path, which writes plain progress first, relies on it.
            if len(batch) > 1 and len({slot.progress.run_id for slot in batch}) == len(batch):
                plain: list[Slot] = []
                rest = []
                for slot in batch:
                    (plain if sqlite_bulk.plain(slot.progress) else rest).append(slot)
                if len(plain) < 2:
                    rest = None
            if rest is not None and self._write_slots(batch, plain, rest):
                return
            self._write_slots(batch, [], batch)

    def write_alone(self, progress: Progress) -> bool:
        """One progress in a transaction of its own, without a slot: what write_batch
        does for a batch of one, and raises the same errors."""
        with self._lock:
            conn = self._conn
            cur = self._wcur
            try:
                got = self._begin(cur)
            except DatabaseError:
                raise
            except Exception as exc:
                raise DatabaseError(str(exc)) from exc
            try:
                cancel = self._write(cur, progress)
                self._commit(cur, got)
            except BaseException as exc:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                self._forget_children(progress)
                if isinstance(exc, sqlite3.Error):
                    raise self._translate(exc) from exc
                raise
            return cancel

    def _write_slots(self, batch: list[Slot], plain: list[Slot], rest: list[Slot]) -> bool:
        """One transaction: plain in bulk, then rest one by one. False (nothing written,
        no slot told) if the bulk write gave up."""
        conn = self._conn
        try:
            got = self._begin(conn)
        except Exception as exc:
            error = exc if isinstance(exc, DatabaseError) else DatabaseError(str(exc))
            for slot in batch:
                slot.fail(error)
            return True
        alone = len(batch) == 1
        try:
            if plain:
                try:
                    sqlite_bulk.write_plain(conn, plain, lambda run_id: self._num(conn, run_id))
                except (sqlite_bulk.Redo, sqlite3.Error, DatabaseError):
                    conn.execute("ROLLBACK")
                    return False
            for slot in rest:
                if not alone:
                    conn.execute("SAVEPOINT progress")
                try:
                    slot.cancel = self._write(conn, slot.progress)
                except Exception as exc:
                    self._forget_children(slot.progress)
                    if alone:
                        raise
                    conn.execute("ROLLBACK TO progress")
                    slot.fail(self._translate(exc) if isinstance(exc, sqlite3.Error) else exc)
                if not alone:
                    conn.execute("RELEASE progress")
            self._commit(conn, got)
        except BaseException as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # every slot is failed below anyway
                    conn.execute("ROLLBACK")
            failure: BaseException = self._translate(exc) if isinstance(exc, sqlite3.Error) else exc
            for slot in batch:
                self._forget_children(slot.progress)
                slot.fail(
                    failure if isinstance(failure, Exception) else DatabaseError(str(failure))
                )
            if not isinstance(exc, Exception):
                raise
            return True
        for slot in batch:
            slot.done = True
        return True

    def _raced(self, e: EntryRow) -> DatabaseError:
        return DatabaseError(
            f"entry {e.position} of run {e.run_id!r} changed underneath this writer "
            f"in {self.path!r}: it is no longer in flight with the attempts this "
            f"writer expected, so another engine is driving the same run. Nothing "
            f"was written; let one engine drive a file at a time."
        )

    def _forget_children(self, p: Progress) -> None:
        # Numbers remembered for child runs whose insert was rolled back are wrong.
        for child in p.new_runs:
            self._nums.pop(child.id, None)

    def _write(self, conn: Executes, p: Progress) -> bool:
        """Write one progress; True if the run's row asks for a cancel (see commit())."""
        num = self._nums.get(p.run_id)
        if num is None:
            num = self._num(conn, p.run_id)
        base = num << POSITION_BITS
        cancel = False
        flag = None
        u = p.update
        unless_cancelled = p.unless_cancelled or (p.run is not None and p.run.unless_cancelled)
        # A step's outcome under a lease (the common write) is fenced by its UPDATE itself:
        # the statement changes the entry only while the run's row holds this lease, and
        # reads the cancel flag with it. Anything else reads the lease first.
        fenced = p.lease is not None and u is not None and p.expect_generation is None
        if p.lease is not None and not fenced:
            held = conn.execute(
                "SELECT owner, lease, cancel_requested FROM runs WHERE num = ?", (num,)
            ).fetchone()
            if held is None or (held[0], held[1]) != p.lease:
                raise sqlite_bulk.lease_lost(
                    p.run_id, p.lease, None if held is None else (held[0], held[1])
                )
            flag = held[2]
            cancel = flag == CANCEL_PENDING and not (p.run is not None and p.run.clear_cancel)
        if unless_cancelled and not fenced:
            # Checked before anything is written: the step (or the run's end) is
            # cancelled instead.
            if flag is None:
                row = conn.execute("SELECT cancel_requested FROM runs WHERE num = ?", (num,))
                flag = (row.fetchone() or (0,))[0]
            if flag == CANCEL_PENDING:
                raise CancelArrived(f"run {p.run_id!r} was cancelled; nothing was written")
        if p.expect_generation is not None:
            current = conn.execute(
                "SELECT generation FROM runs WHERE id = ?", (p.run_id,)
            ).fetchone()
            if current is None or current[0] != p.expect_generation:
                raise DatabaseError(
                    f"run {p.run_id!r} has moved to another generation; nothing was written"
                )
        if u is not None:
            e = u
            params: tuple[object, ...]
            if e.status == E_COMPLETED and e.due_at is None:
                outcome: bytes | bytearray | None = e.outcome
                if outcome is not None and len(outcome) <= SHORT_BLOB:
                    outcome = bytearray(outcome)  # bound without an adapter lookup (sql.py)
                if e.error_text is None:
                    sql, params = without_error_text(COMPLETE_ENTRY), (
                        e.attempts, e.crashes, e.finished_at, outcome, base | e.position,
                        p.expect_attempts,
                    )  # fmt: skip
                else:
                    sql, params = COMPLETE_ENTRY, (
                        e.attempts, e.crashes, e.finished_at, outcome, e.error_text,
                        base | e.position, p.expect_attempts,
                    )  # fmt: skip
            else:
                sql, params = UPDATE_ENTRY, (
                    e.status, e.attempts, e.crashes, e.finished_at, e.due_at, e.outcome,
                    e.error_text, base | e.position, p.expect_attempts,
                )  # fmt: skip
            if fenced:
                assert p.lease is not None
                if conn.execute(with_fence(sql), (*params, *p.lease, num)).rowcount != 1:
                    # Nothing changed: say why, in the order of the checks above (rare:
                    # a lease lost, a cancel asked for, an entry raced).
                    held = conn.execute(
                        "SELECT owner, lease, cancel_requested FROM runs WHERE num = ?", (num,)
                    ).fetchone()
                    if held is None or (held[0], held[1]) != p.lease:
                        raise sqlite_bulk.lease_lost(
                            p.run_id, p.lease, None if held is None else (held[0], held[1])
                        )
                    if held[2] != CANCEL_PENDING:
                        raise self._raced(e)
                    if unless_cancelled:
                        raise CancelArrived(f"run {p.run_id!r} was cancelled; nothing was written")
                    cancel = not (p.run is not None and p.run.clear_cancel)
                    if conn.execute(sql, params).rowcount != 1:  # the lease was read above
                        raise self._raced(e)
            elif conn.execute(sql, params).rowcount != 1:
                raise self._raced(e)
        for e in p.recorded:
            conn.execute(
                INSERT_ENTRY,
                (
                    base | checked_position(e.position), e.kind, e.name, e.key,
                    None if e.text == e.key else e.text, e.status, e.attempts, e.crashes,
                    e.started_at, e.finished_at, e.due_at, e.outcome, e.error_text,
                ),
            )  # fmt: skip
        if p.insert is not None:
            e = p.insert
            position = e.position
            if not 0 <= position <= POSITION_MASK:  # checked_position, inline: every step
                checked_position(position)
            key = base | position
            text = None if e.text == e.key else e.text
            if (
                e.status == E_RUNNING and e.attempts == 1 and e.crashes == 0
                and e.finished_at is None and e.due_at is None and e.outcome is None
                and e.error_text is None
            ):  # fmt: skip
                if text is None:
                    conn.execute(INSERT_NEW_KEYED, (key, e.kind, e.name, e.key, e.started_at))
                else:
                    conn.execute(INSERT_NEW_ENTRY, (key, e.kind, e.name, e.key, text, e.started_at))
            else:
                conn.execute(
                    INSERT_ENTRY,
                    (
                        key, e.kind, e.name, e.key, text, e.status, e.attempts, e.crashes,
                        e.started_at, e.finished_at, e.due_at, e.outcome, e.error_text,
                    ),
                )  # fmt: skip
        if p.run is not None:
            r = p.run
            conn.execute(
                UPDATE_RUN,
                (
                    r.status,
                    r.updated_at,
                    r.due_at,
                    r.finished_at,
                    r.result,
                    r.error,
                    r.error_text,
                    r.clear_cancel,
                    p.run_id,
                ),
            )
        if p.run is not None and p.run.status in FINISHED:
            # A child that ends wakes its parent, which waits for it.
            conn.execute(
                "UPDATE runs SET due_at = ? WHERE id = (SELECT parent_id FROM runs WHERE id = ?) "
                "AND status = 'waiting'",
                (p.run.updated_at, p.run_id),
            )
        for child in p.new_runs:
            cur = conn.execute(
                f"INSERT INTO runs ({RUN_COLS}) VALUES ({RUN_MARKS}) ON CONFLICT (id) DO NOTHING",
                run_params(child),
            )
            if cur.rowcount == 1:
                self._remember_num(child.id, cur.lastrowid)
                continue
            owner = conn.execute("SELECT parent_id FROM runs WHERE id = ?", (child.id,)).fetchone()
            if owner is None or owner[0] != p.run_id:
                raise IdConflict(
                    f"child run id {child.id!r} is taken by a run that is not a child of "
                    f"{p.run_id!r}; nothing was written"
                )
        for published_key, value in p.publish:
            conn.execute(
                "INSERT INTO published (run_id, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value",
                (p.run_id, published_key, value),
            )
        for target, name, payload, sent_at in p.send:
            # ce.send: the message, and the target woken if it waits (it finds out for
            # itself whether this is its signal), in the commit that logs the send.
            conn.execute(
                "INSERT INTO mailbox (run_id, name, payload, sent_at) VALUES (?, ?, ?, ?)",
                (target, name, payload, sent_at),
            )
            conn.execute(
                "UPDATE runs SET due_at = ? WHERE id = ? AND status = 'waiting'",
                (sent_at, target),
            )
        if p.restart is not None:
            # continue_as_new: this generation's log goes; the run starts afresh
            # with new arguments under the same id (mailbox and published values stay).
            conn.execute("DELETE FROM log WHERE id BETWEEN ? AND ?", (base, base | POSITION_MASK))
            conn.execute(
                "DELETE FROM attempts WHERE id BETWEEN ? AND ?", (base, base | POSITION_MASK)
            )
            conn.execute(
                "UPDATE runs SET args = ?, status = 'pending', due_at = NULL, "
                "generation = generation + 1 WHERE id = ?",
                (p.restart, p.run_id),
            )
        if p.attempts:
            conn.executemany(PUT_ATTEMPT, [attempt_params(base, a) for a in p.attempts])
        if p.consume is not None:
            deleted = conn.execute("DELETE FROM mailbox WHERE seq = ?", (p.consume,)).rowcount
            if deleted != 1:
                raise DatabaseError(
                    f"signal {p.consume} of run {p.run_id!r} was already taken (another engine "
                    f"is driving the same run); nothing was written"
                )
        return cancel
