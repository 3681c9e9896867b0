"""The group commit's fast path: the plain step progress of many runs in a few statements.

Most of a busy batch is runs moving from one step to the next: the previous
step's outcome, the next step in flight, perhaps the run's status back to
running. Written one by one, each costs a savepoint, a lease check, two or three
statements and a release. Here the whole batch is one statement (an upsert of
its entries, joined with the runs to check the leases), plus one for the runs
whose status changes. That matters less for SQLite's own work than for the
interpreter lock: every call into SQLite lets it go and must take it back from
the threads driving runs, and under load each of those hand-offs costs more than
the statement. Anything else in the batch (a run's end, children, signals,
values recorded) is written one by one as before.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from ..errors import LeaseLost
from .base import E_COMPLETED, E_RUNNING, RUNNING, Progress
from .group_commit import Slot
from .sqlite_sql import POSITION_BITS, _checked_position

# Rows per statement: under the 999 host parameters of SQLite builds older than
# 3.32 (15 parameters a row).
_CHUNK = 64
# UPDATE ... FROM needs SQLite 3.33; older builds write the rows one by one.
_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33, 0)

# A step's outcome and the next step in flight, for a whole batch, in one statement:
# new entries are inserted, entries in flight (same id) are completed. Only rows of
# runs still leased to their driver are written (the join with runs), and an entry
# is completed only if still in flight with the attempts its driver wrote (the
# upsert's WHERE): a row left out makes the count fall short, and the batch is
# written one by one instead (which says which progress failed, and why).
_UPSERT_MANY = (
    "INSERT INTO log (id, kind, name, key, text, status, attempts, crashes, started_at, "
    "finished_at, outcome, error_text) "
    "SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7, "
    "v.column8, v.column9, v.column10, v.column11, v.column12 "
    "FROM (VALUES {rows}) AS v "
    "JOIN runs ON runs.num = v.column13 AND runs.owner = v.column14 AND runs.lease = v.column15 "
    "WHERE true "  # (an INSERT ... SELECT with an upsert clause needs a WHERE)
    "ON CONFLICT (id) DO UPDATE SET status = 'completed', attempts = excluded.attempts, "
    "crashes = excluded.crashes, finished_at = excluded.finished_at, due_at = NULL, "
    "outcome = excluded.outcome, error_text = excluded.error_text "
    "WHERE excluded.status = 'completed' AND log.status IN ('running', 'retrying') "
    "AND log.attempts = excluded.attempts"
)
_UPSERT_ROW = "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
_RUNNING_MANY = (
    "UPDATE runs SET status = v.column2, updated_at = v.column3, due_at = v.column4 "
    "FROM (VALUES {rows}) AS v WHERE runs.num = v.column1"
)


def _many(conn: sqlite3.Connection, sql: str, row: str, rows: list[tuple[object, ...]]) -> int:
    """Run sql once per chunk of rows, all of a chunk's rows in one statement (one
    call into SQLite, so the interpreter lock is let go once, not once a row)."""
    changed = 0
    for i in range(0, len(rows), _CHUNK):
        part = rows[i : i + _CHUNK]
        params = [x for r in part for x in r]
        cur = conn.execute(sql.format(rows=",".join([row] * len(part))), params)
        changed += cur.rowcount
    return changed


class Redo(Exception):
    """The bulk write met something unexpected: write the batch one by one instead."""


def plain(p: Progress) -> bool:
    """Whether p is a plain step progress (the fast path writes it)."""
    if (
        p.lease is None or p.recorded or p.consume is not None or p.new_runs or p.publish
        or p.restart is not None or p.expect_generation is not None
    ):  # fmt: skip
        return False
    u = p.update
    if u is not None and (
        u.status != E_COMPLETED or u.due_at is not None
        or (p.expect_attempts is not None and p.expect_attempts != u.attempts)
    ):  # fmt: skip
        return False
    e = p.insert
    if e is not None and (
        e.status != E_RUNNING or e.attempts != 1 or e.crashes != 0 or e.finished_at is not None
        or e.due_at is not None or e.outcome is not None or e.error_text is not None
    ):  # fmt: skip
        return False
    # Only a run going on running: that touches no other run's row (a parent's wake-up
    # looks for a waiting run), so these may be written before the rest of the batch.
    r = p.run
    return r is None or (
        r.status == RUNNING and not r.clear_cancel and r.finished_at is None
        and r.result is None and r.error is None and r.error_text is None
    )  # fmt: skip


def lease_lost(run_id: str, lease: tuple[str, int], held: tuple[str, int] | None) -> LeaseLost:
    """The error of a progress whose driver no longer holds the run's lease."""
    return LeaseLost(
        f"run {run_id!r} is no longer leased to this driver (lease {lease[1]} of "
        f"{lease[0]}; now {held and held[1]} of {held and held[0]}): another worker took "
        f"it over, so nothing was written and this driver lets the run go"
    )


def write_plain(conn: sqlite3.Connection, slots: list[Slot], num_of: Callable[[str], int]) -> None:
    """Write the slots' plain progress in bulk, inside the caller's transaction. Raises
    Redo (or a sqlite3 error) when a row could not be written as expected: the caller
    rolls the transaction back and writes the batch one by one."""
    if not _UPDATE_FROM:
        raise Redo("this SQLite has no UPDATE ... FROM")
    rows: list[tuple[object, ...]] = []
    runs: list[tuple[object, ...]] = []
    for slot in slots:
        p = slot.progress
        num = num_of(p.run_id)
        base = num << POSITION_BITS
        assert p.lease is not None  # plain() says so
        owner, lease = p.lease
        u = p.update
        # fmt: off
        if u is not None:
            rows.append((
                base | u.position, u.kind, u.name, u.key, None if u.text == u.key else u.text,
                E_COMPLETED, u.attempts, u.crashes, u.started_at, u.finished_at, u.outcome,
                u.error_text, num, owner, lease,
            ))
        e = p.insert
        if e is not None:
            rows.append((
                base | _checked_position(e.position), e.kind, e.name, e.key,
                None if e.text == e.key else e.text, E_RUNNING, 1, 0, e.started_at, None, None,
                None, num, owner, lease,
            ))
        # fmt: on
        r = p.run
        if r is not None:
            runs.append((num, r.status, r.updated_at, r.due_at))
    if rows and _many(conn, _UPSERT_MANY, _UPSERT_ROW, rows) != len(rows):
        raise Redo("a lease was taken, or an entry is no longer in flight as expected")
    if runs and _many(conn, _RUNNING_MANY, "(?,?,?,?)", runs) != len(runs):
        raise Redo("a run row is missing")
