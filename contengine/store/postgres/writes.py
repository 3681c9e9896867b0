"""The PostgreSQL store's progress writes one by one (a group commit's batch: batch.py).

Fencing: a check of a run's lease done as a plain read is not safe here (a claim in
another session could commit between the read and the write), so every progress
write first locks its run's row (SELECT ... FOR UPDATE) in the transaction that
writes its entries, and checks the lease, the generation and the cancel flag on the
locked row. A claim that comes later skips the locked row (SKIP LOCKED) or, once the
write commits, sees it; a claim that came first has changed the lease number, which
the locked read sees, and the write is refused (LeaseLost) for that run alone.

Plain step progress sends no NOTIFY (see listen.py); a child's end that wakes its
waiting parent, and a child's start, do, in the transaction that writes them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

import psycopg

from ...errors import DatabaseError, IdConflict, LeaseLost
from ..rows import FINISHED, CancelArrived, EntryRow, Progress
from .connection import Link
from .sql import (
    CANCEL_PENDING,
    INSERT_ENTRY,
    INSERT_RUN,
    NOTIFY,
    PUT_ATTEMPT,
    UPDATE_ENTRY,
    UPDATE_RUN,
    WAKE_PARENT,
    as_text,
    attempt_params,
    channel_of,
    entry_params,
    run_params,
)

# A run's row as a write locks it: (owner, lease, cancel_requested, generation).
Held = tuple[str | None, int, int, int]


def lock_runs(conn: psycopg.Connection[Any], run_ids: Collection[str]) -> dict[str, Held]:
    """Lock the runs' rows for the rest of the transaction, in id order (two batches
    that share runs lock them in the same order: no deadlock between them)."""
    rows = conn.execute(
        "SELECT id, owner, lease, cancel_requested, generation FROM runs "
        "WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
        (sorted(set(run_ids)),),
    ).fetchall()
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}


def lease_lost(
    run_id: str, lease: tuple[str, int], held: tuple[str | None, int] | None
) -> LeaseLost:
    """The error of a progress whose driver no longer holds the run's lease."""
    return LeaseLost(
        f"run {run_id!r} is no longer leased to this driver (lease {lease[1]} of "
        f"{lease[0]}; now {held and held[1]} of {held and held[0]}): another worker took "
        f"it over, so nothing was written and this driver lets the run go"
    )


def was_cancelled(run_id: str) -> CancelArrived:
    """The error of a progress written unless cancelled that met a cancel request."""
    return CancelArrived(f"run {run_id!r} was cancelled; nothing was written")


def generation_moved(run_id: str) -> DatabaseError:
    """The error of a progress for a generation the run has left (continue_as_new)."""
    return DatabaseError(f"run {run_id!r} has moved to another generation; nothing was written")


def entry_raced(e: EntryRow, shown: str) -> DatabaseError:
    """The error of an update that found its entry no longer in flight as expected."""
    return DatabaseError(
        f"entry {e.position} of run {e.run_id!r} changed underneath this writer at "
        f"{shown}: it is no longer in flight with the attempts this writer expected, "
        f"so another engine is driving the same run. Nothing was written."
    )


def write(
    conn: psycopg.Connection[Any], p: Progress, held: Held | None, shown: str, channel: str
) -> bool:
    """Write one progress whose run row is locked (held: as locked, None: no such run);
    True if the run's row asks for a cancel (see RunStore.commit). channel: where a
    wake-up goes (a child's end or start)."""
    if held is None:
        if p.lease is not None:
            raise lease_lost(p.run_id, p.lease, None)
        raise DatabaseError(f"no run {p.run_id!r} at {shown}; nothing was written")
    owner, lease, flag, generation = held
    cancel = False
    if p.lease is not None:
        if (owner, lease) != p.lease:
            raise lease_lost(p.run_id, p.lease, (owner, lease))
        cancel = flag == CANCEL_PENDING and not (p.run is not None and p.run.clear_cancel)
    if (p.unless_cancelled or (p.run is not None and p.run.unless_cancelled)) and (
        flag == CANCEL_PENDING
    ):
        # Checked before anything is written: the step (or the run's end) is cancelled
        # instead.
        raise was_cancelled(p.run_id)
    if p.expect_generation is not None and generation != p.expect_generation:
        raise generation_moved(p.run_id)
    if p.update is not None:
        e = p.update
        cur = conn.execute(
            UPDATE_ENTRY,
            (
                e.status, e.attempts, e.crashes, e.finished_at, e.due_at, e.outcome,
                as_text(e.error_text), p.run_id, e.position, p.expect_attempts,
            ),
        )  # fmt: skip
        if cur.rowcount != 1:
            raise entry_raced(e, shown)
    entries = [*p.recorded, *([p.insert] if p.insert is not None else [])]
    if entries:
        with conn.cursor() as cur:
            cur.executemany(INSERT_ENTRY, [entry_params(e) for e in entries])
    if p.run is not None:
        r = p.run
        conn.execute(
            UPDATE_RUN,
            {
                "status": r.status, "updated_at": r.updated_at, "due_at": r.due_at,
                "finished_at": r.finished_at, "result": r.result, "error": r.error,
                "error_text": as_text(r.error_text), "clear": r.clear_cancel, "id": p.run_id,
            },
        )  # fmt: skip
        if r.status in FINISHED:
            # A child that ends wakes its parent, which waits for it.
            conn.execute(WAKE_PARENT, (r.updated_at, p.run_id, channel))
    started = False
    for child in p.new_runs:
        if conn.execute(INSERT_RUN, run_params(child)).rowcount == 1:
            started = True
            continue
        parent = conn.execute("SELECT parent_id FROM runs WHERE id = %s", (child.id,)).fetchone()
        if parent is None or parent[0] != p.run_id:
            raise IdConflict(
                f"child run id {child.id!r} is taken by a run that is not a child of "
                f"{p.run_id!r}; nothing was written"
            )
    if started:  # workers elsewhere may take the new child runs
        conn.execute(NOTIFY, (channel, "start"))
    if p.publish:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO published (run_id, key, value) VALUES (%s, %s, %s) "
                "ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value",
                [(p.run_id, key, value) for key, value in p.publish],
            )
    for target, name, payload, sent_at in p.send:
        # ce.send: the message, and the target woken if it waits (with its NOTIFY), in
        # the commit that logs the send. The target's row is locked with the batch's
        # (locked_ids), in id order: two runs sending to each other do not deadlock.
        conn.execute(
            "WITH sent AS (INSERT INTO mailbox (run_id, name, payload, sent_at) "
            "VALUES (%s, %s, %s, %s)), woken AS (UPDATE runs SET due_at = %s "
            "WHERE id = %s AND status = 'waiting' RETURNING 1) "
            "SELECT pg_notify(%s, 'signal') FROM woken",
            (target, name, payload, sent_at, sent_at, target, channel),
        )
    if p.restart is not None:
        # continue_as_new: this generation's log goes; the run starts afresh with new
        # arguments under the same id (mailbox and published values stay).
        conn.execute("DELETE FROM log WHERE run_id = %s", (p.run_id,))
        conn.execute("DELETE FROM attempts WHERE run_id = %s", (p.run_id,))
        conn.execute(
            "UPDATE runs SET args = %s, status = 'pending', due_at = NULL, "
            "generation = generation + 1 WHERE id = %s",
            (p.restart, p.run_id),
        )
    if p.attempts:
        with conn.cursor() as cur:
            cur.executemany(PUT_ATTEMPT, [attempt_params(a) for a in p.attempts])
    if p.consume is not None:
        gone = conn.execute("DELETE FROM mailbox WHERE seq = %s", (p.consume,)).rowcount
        if gone != 1:
            raise DatabaseError(
                f"signal {p.consume} of run {p.run_id!r} was already taken (another engine "
                f"is driving the same run); nothing was written"
            )
    return cancel


def locked_ids(batch: Iterable[Progress]) -> list[str]:
    """The runs a batch's transaction locks first: its own, and the targets of its sends."""
    ids: list[str] = []
    for p in batch:
        ids.append(p.run_id)
        ids.extend(target for target, *_ in p.send)
    return ids


def write_all(link: Link, batch: list[Progress]) -> None:
    """Several runs' progress in one transaction, all or none (commit_many)."""
    with link.transaction() as conn:
        held = lock_runs(conn, locked_ids(batch)) if batch else {}
        channel = channel_of(link.schema)
        for p in batch:
            held.update(lock_runs(conn, [p.run_id]))
            write(conn, p, held.get(p.run_id), link.shown, channel)
