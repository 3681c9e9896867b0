"""The PostgreSQL store's backup: its tables read in one snapshot and written as a new
SQLite contengine database (store/sqlite/copy.py), which ce.Engine opens like any other.

The reads run on a connection of their own, in one REPEATABLE READ, READ ONLY
transaction: every table is read as of one moment, so each run's row, log, mailbox
and published values agree with each other however many workers write meanwhile
(they are not held up: a snapshot takes no locks that writes wait for). Rows come
through server-side cursors, a batch at a time, so a large store is not read into
memory whole.

Workers, their leases and step slots are not copied: they describe processes working
the server, and none of them works the copy. Its runs are free for the first engine
that opens it to claim; lease numbers are kept, so fencing goes on counting up.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql

from ...errors import DatabaseError
from ..rows import AttemptRow, CopiedRun, QueueConfig, Signal
from ..sqlite.copy import NewDatabase
from ..sqlite.ops import refuse_taken
from .connection import CONNECT_TIMEOUT, unreachable
from .sql import ATTEMPT_COLS, ENTRY_COLS, RUN_COLS, entry_row, run_row

# Rows fetched from the server at a time.
_BATCH = 1000
_CANCEL = [c.strip() for c in RUN_COLS.split(",")].index("cancel_requested")
_WIDTH = len(RUN_COLS.split(","))


def _rows(conn: psycopg.Connection[Any], query: str) -> Iterator[tuple[Any, ...]]:
    """The rows of query, through a server-side cursor (in the caller's transaction)."""
    with conn.cursor(name="contengine_backup") as cur:
        cur.itersize = _BATCH
        cur.execute(query)
        yield from cur


def backup(url: str, schema: str, shown: str, dest: str) -> None:
    """Write the store's tables, as of one snapshot, to a new SQLite database at dest."""
    refuse_taken(dest)  # before connecting: a taken name needs no server
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
    except psycopg.Error as exc:
        raise unreachable(shown, exc, url) from exc
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with NewDatabase(dest) as copy:
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
                copy.add_runs(
                    CopiedRun(run_row(r[:_WIDTH]), int(r[_CANCEL]), int(r[_WIDTH]), r[_WIDTH + 1])
                    for r in _rows(
                        conn, f"SELECT {RUN_COLS}, lease, claimed_at FROM runs ORDER BY num"
                    )
                )
                copy.add_log(
                    entry_row(r[0], r[1:])
                    for r in _rows(
                        conn, f"SELECT run_id, {ENTRY_COLS} FROM log ORDER BY run_id, position"
                    )
                )
                copy.add_attempts(
                    AttemptRow(*r)
                    for r in _rows(
                        conn,
                        f"SELECT run_id, {ATTEMPT_COLS} FROM attempts "
                        "ORDER BY run_id, position, attempt",
                    )
                )
                copy.add_mailbox(
                    Signal(int(r[0]), str(r[1]), str(r[2]), bytes(r[3]), float(r[4]))
                    for r in _rows(
                        conn, "SELECT seq, run_id, name, payload, sent_at FROM mailbox ORDER BY seq"
                    )
                )
                copy.add_published(
                    (str(r[0]), str(r[1]), bytes(r[2]))
                    for r in _rows(
                        conn, "SELECT run_id, key, value FROM published ORDER BY run_id, key"
                    )
                )
                copy.add_queues(
                    QueueConfig(*r)
                    for r in _rows(
                        conn,
                        "SELECT name, concurrency, worker_concurrency, rate_limit, rate_period "
                        "FROM queues ORDER BY name",
                    )
                )
            copy.finish()
    except psycopg.Error as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseError(
            f"backup of PostgreSQL at {shown} to {dest!r} failed: {detail}. Nothing was written."
        ) from exc
    finally:
        conn.close()
