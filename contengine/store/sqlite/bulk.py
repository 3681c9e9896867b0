"""The group commit's fast path: the plain step progress of many runs in a few statements.

Most of a busy batch is runs moving from one step to the next: the previous
step's outcome, the next step in flight, perhaps the run's status back to
running. Written one by one, each costs a savepoint, a lease check, two or three
statements and a release. Here the whole batch's leases are checked with one
query and its rows written with one executemany() per statement. Anything else
in the batch (a run's end, children, signals, values recorded) is written one by
one as before; so is the whole batch when something is off (a lease taken, an
entry raced), so that each progress gets its own error.

(Multi-row statements - an upsert joined with the runs, UPDATE ... FROM VALUES -
were measured too: fewer calls into SQLite, but more work inside it, and slower
here, where one thread both drives runs and writes their batches.)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from ...errors import LeaseLost
from ..base import E_COMPLETED, E_RUNNING, RUNNING, Progress
from ..group_commit import Slot
from .sql import (
    CANCEL_PENDING,
    COMPLETE_ENTRY,
    INSERT_NEW_ENTRY,
    INSERT_NEW_KEYED,
    POSITION_BITS,
    SHORT_BLOB,
    UPDATE_RUN,
    checked_position,
    without_error_text,
)

# Runs per lease query: under the 999 host parameters of SQLite builds older than 3.32.
_CHUNK = 500


class Redo(Exception):
    """The bulk write met something unexpected: write the batch one by one instead."""


def plain(p: Progress) -> bool:
    """Whether p is a plain step progress (the fast path writes it)."""
    if (
        p.lease is None or p.recorded or p.consume is not None or p.new_runs or p.publish
        or p.send
        or p.restart is not None or p.expect_generation is not None or p.attempts
    ):  # fmt: skip
        return False
    u = p.update
    if u is not None and (u.status != E_COMPLETED or u.due_at is not None):
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
    Redo (or a sqlite3 error) when a row could not be written as expected (a lease
    taken, an entry raced): the caller rolls the transaction back and writes the batch
    one by one, which tells each progress what became of it."""
    nums = [num_of(slot.progress.run_id) for slot in slots]
    held: dict[int, tuple[str, int]] = {}
    cancels: set[int] = set()
    for i in range(0, len(nums), _CHUNK):
        part = nums[i : i + _CHUNK]
        marks = ",".join("?" * len(part))
        for num, owner, lease, cancel in conn.execute(
            f"SELECT num, owner, lease, cancel_requested FROM runs WHERE num IN ({marks})", part
        ):
            held[num] = (owner, lease)
            if cancel == CANCEL_PENDING:
                cancels.add(num)
    # Rows in the variants without a NULL or bytes parameter where they can (sql.py says
    # why); the rest in the general statements.
    completes: list[tuple[object, ...]] = []
    clean_completes: list[tuple[object, ...]] = []
    inserts: list[tuple[object, ...]] = []
    keyed_inserts: list[tuple[object, ...]] = []
    runs: list[tuple[object, ...]] = []
    for slot, num in zip(slots, nums, strict=True):
        p = slot.progress
        if held.get(num) != p.lease:
            raise Redo(f"the lease of run {p.run_id!r} was taken")
        slot.cancel = num in cancels  # (plain progress delivers no cancel)
        if slot.cancel and p.unless_cancelled:
            # Not written (CancelArrived): the one-by-one write tells that progress so.
            raise Redo(f"run {p.run_id!r} asks for a cancel its progress must not pass")
        base = num << POSITION_BITS
        u = p.update
        # fmt: off
        if u is not None:
            outcome: bytes | bytearray | None = u.outcome
            if outcome is not None and len(outcome) <= SHORT_BLOB:
                outcome = bytearray(outcome)
            if u.error_text is None:
                clean_completes.append((
                    u.attempts, u.crashes, u.finished_at, outcome, base | u.position,
                    p.expect_attempts,
                ))
            else:
                completes.append((
                    u.attempts, u.crashes, u.finished_at, outcome, u.error_text,
                    base | u.position, p.expect_attempts,
                ))
        e = p.insert
        if e is not None:
            if e.text == e.key:
                keyed_inserts.append((
                    base | checked_position(e.position), e.kind, e.name, e.key, e.started_at,
                ))
            else:
                inserts.append((
                    base | checked_position(e.position), e.kind, e.name, e.key, e.text,
                    e.started_at,
                ))
        r = p.run
        if r is not None:
            runs.append((
                r.status, r.updated_at, r.due_at, r.finished_at, r.result, r.error,
                r.error_text, r.clear_cancel, p.run_id,
            ))
        # fmt: on
    for sql, rows in (
        (without_error_text(COMPLETE_ENTRY), clean_completes),
        (COMPLETE_ENTRY, completes),
    ):
        if rows and conn.executemany(sql, rows).rowcount != len(rows):
            raise Redo("an entry is no longer in flight with the attempts its driver wrote")
    if keyed_inserts:
        conn.executemany(INSERT_NEW_KEYED, keyed_inserts)
    if inserts:
        conn.executemany(INSERT_NEW_ENTRY, inserts)
    if runs and conn.executemany(UPDATE_RUN, runs).rowcount != len(runs):
        raise Redo("a run row is missing")
