"""The PostgreSQL store's operator writes: gc, retry's rewind, import."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from ...errors import ContengineError, IdConflict, RunNotFound
from ..rows import CANCELLED, FAILED, AttemptRow, EntryRow, Rewind, RunRow, Signal, run_digest
from .sql import (
    ATTEMPT_COLS,
    DELETABLE,
    ENTRY_COLS,
    INSERT_ENTRY,
    INSERT_RUN,
    PUT_ATTEMPT,
    SELECT_RUN,
    attempt_params,
    entry_params,
    entry_row,
    run_params,
    run_row,
)

Conn = psycopg.Connection[Any]


def delete_finished(conn: Conn, before: float, limit: int) -> int:
    """AdminStore.delete_finished inside the caller's transaction."""
    deleted = 0
    # Children go before their parents, so a tree of old runs is deleted leaves first:
    # look again after each round until the batch is full or none is left.
    while deleted < limit:
        ids = [str(r[0]) for r in conn.execute(DELETABLE, (before, limit - deleted))]
        if not ids:
            break
        for table in ("log", "attempts", "mailbox", "published"):
            conn.execute(f"DELETE FROM {table} WHERE run_id = ANY(%s)", (ids,))
        conn.execute("DELETE FROM runs WHERE id = ANY(%s)", (ids,))
        deleted += len(ids)
    return deleted


def rewind_one(conn: Conn, r: Rewind, now: float) -> None:
    """Rewind one run inside the caller's transaction (see AdminStore.rewind)."""
    run_id = r.run_id
    row = conn.execute(SELECT_RUN + " FOR UPDATE", (run_id,)).fetchone()
    if row is None:
        raise RunNotFound(f"no run with id {run_id!r}; nothing was changed")
    run = run_row(row)
    if run.status not in (FAILED, CANCELLED):
        raise ContengineError(
            f"run {run_id!r} is {run.status}, not failed or cancelled; only those can "
            f"be retried, so nothing was changed"
        )
    log = [
        entry_row(run_id, e)
        for e in conn.execute(
            f"SELECT {ENTRY_COLS} FROM log WHERE run_id = %s ORDER BY position", (run_id,)
        )
    ]
    # What the plan was made from, read again with the row locked: a plan of another
    # state could discard steps that completed since.
    if run_digest(run, log) != r.seen:
        raise ContengineError(
            f"run {run_id!r} changed since the retry was planned; nothing was changed, retry again"
        )
    conn.execute("DELETE FROM log WHERE run_id = %s AND position >= %s", (run_id, r.position))
    conn.execute("DELETE FROM attempts WHERE run_id = %s AND position >= %s", (run_id, r.position))
    conn.execute(
        "UPDATE runs SET status = 'pending', updated_at = %s, due_at = NULL, "
        "finished_at = NULL, result = NULL, error = NULL, error_text = NULL, "
        "note = NULL, cancel_requested = 0, owner = NULL, lease = lease + 1 WHERE id = %s",
        (now, run_id),
    )


def insert_run(
    conn: Conn,
    run: RunRow,
    entries: Sequence[EntryRow],
    mailbox: Sequence[Signal],
    published: dict[str, bytes],
    attempts: Sequence[AttemptRow] = (),
) -> None:
    """AdminStore.insert_run inside the caller's transaction."""
    if conn.execute(INSERT_RUN, run_params(run)).rowcount != 1:
        raise IdConflict(f"a run with id {run.id!r} already exists; nothing was written")
    with conn.cursor() as cur:
        if entries:
            cur.executemany(INSERT_ENTRY, [entry_params(e) for e in entries])
        if mailbox:
            cur.executemany(
                "INSERT INTO mailbox (run_id, name, payload, sent_at) VALUES (%s, %s, %s, %s)",
                [(run.id, m.name, m.payload, m.sent_at) for m in mailbox],
            )
        if published:
            cur.executemany(
                "INSERT INTO published (run_id, key, value) VALUES (%s, %s, %s)",
                [(run.id, k, v) for k, v in published.items()],
            )
        if attempts:
            cur.executemany(PUT_ATTEMPT, [attempt_params(a) for a in attempts])


def attempts_of(
    read: Callable[[str, Sequence[object]], list[tuple[Any, ...]]],
    run_id: str,
    position: int | None,
) -> list[AttemptRow]:
    """RunStore.load_attempts, read with read(sql, params)."""
    sql = f"SELECT {ATTEMPT_COLS} FROM attempts WHERE run_id = %s"
    if position is not None:
        rows = read(sql + " AND position = %s ORDER BY attempt", (run_id, position))
    else:
        rows = read(sql + " ORDER BY position, attempt", (run_id,))
    return [AttemptRow(run_id, *r) for r in rows]
