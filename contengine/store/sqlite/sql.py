"""The SQLite store's statements and row conversions, shared by its modules."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from ...errors import DatabaseError
from ..base import FINISHED, RUN_STATUSES, AttemptRow, EntryRow, RunRow

if TYPE_CHECKING:
    from .guard import FileGuard, LockStalls

# A log entry's key packs its run's number and its position into one integer,
# so the log is a plain rowid table: the cheapest insert and lookup SQLite has
# (this keeps the per-step write close to the raw commit floor).
POSITION_BITS = 32
POSITION_MASK = (1 << POSITION_BITS) - 1
# What runs a statement: a connection, or a cursor kept for the direct write path.
Executes = sqlite3.Connection | sqlite3.Cursor


RUN_COLS = (
    "id, workflow, ref, status, args, args_key, created_at, updated_at, "
    "finished_at, due_at, result, error, error_text, note, cancel_requested, parent_id, "
    "generation, tags, queue, priority, forked_from"
)
RUN_MARKS = ", ".join("?" * 21)
LOG_COLS = (
    "id, kind, name, key, text, status, attempts, crashes, "
    "started_at, finished_at, due_at, outcome, error_text"
)
INSERT_ENTRY = f"INSERT INTO log ({LOG_COLS}) VALUES ({', '.join('?' * 13)})"
# The two writes every step makes get statements of their own with the constant
# parts spelled out: binding fewer parameters is measurably cheaper per step.
INSERT_NEW_ENTRY = (
    "INSERT INTO log (id, kind, name, key, text, status, attempts, crashes, started_at) "
    "VALUES (?, ?, ?, ?, ?, 'running', 1, 0, ?)"
)
COMPLETE_ENTRY = (
    "UPDATE log SET status = 'completed', attempts = ?, crashes = ?, finished_at = ?, "
    "due_at = NULL, outcome = ?, error_text = ? WHERE id = ? "
    "AND status IN ('running', 'retrying') AND attempts = coalesce(?, attempts)"
)
# Only an entry still in flight may change: a finished outcome is final, and a
# write that finds none was raced by another writer of the same run.
UPDATE_ENTRY = (
    "UPDATE log SET status = ?, attempts = ?, crashes = ?, finished_at = ?, due_at = ?, "
    "outcome = ?, error_text = ? WHERE id = ? "
    "AND status IN ('running', 'retrying') AND attempts = coalesce(?, attempts)"
)
# Python's sqlite3 binds int, float, str and bytearray parameters directly, but looks up
# an adapter for any other type (bytes and None among them), at a cost of about a
# tenth of a statement each. The step path therefore spells its common NULLs out in the
# statement (the variants below) and binds a short outcome as a bytearray (the same
# BLOB), where a copy costs less than the lookup.
SHORT_BLOB = 4096
# INSERT_NEW_ENTRY for an entry whose text is its key (stored as NULL).
INSERT_NEW_KEYED = (
    "INSERT INTO log (id, kind, name, key, text, status, attempts, crashes, started_at) "
    "VALUES (?, ?, ?, ?, NULL, 'running', 1, 0, ?)"
)
_CLEAN: dict[str, str] = {}
# An attempt row: a new one, or the end of one whose start was written (its start kept,
# unless the attempt began again: a start given back and taken up later).
PUT_ATTEMPT = (
    "INSERT INTO attempts (id, attempt, outcome, started_at, ended_at, found_at, error_text) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id, attempt) DO UPDATE SET "
    "outcome = excluded.outcome, ended_at = excluded.ended_at, found_at = excluded.found_at, "
    "error_text = excluded.error_text, started_at = CASE WHEN excluded.outcome = 'started' "
    "THEN excluded.started_at ELSE attempts.started_at END"
)


def without_error_text(sql: str) -> str:
    """COMPLETE_ENTRY (or a variant of it) for an entry without an error text: the text
    is NULL in the statement, not a parameter (made once)."""
    out = _CLEAN.get(sql)
    if out is None:
        if sql.count("error_text = ?") != 1:  # another shape: its parameters would shift
            raise ValueError(f"not a statement with one error_text parameter: {sql}")
        out = _CLEAN[sql] = sql.replace("error_text = ?", "error_text = NULL")
    return out


# COMPLETE_ENTRY or UPDATE_ENTRY fenced: the entry changes only while the run's row
# (num) holds the writer's lease (owner, lease) and asks for no cancel; no row changed
# says to look why (writes.py). One statement where a lease SELECT and the UPDATE were
# two; the fence is the same, checked inside the same write transaction. (A RETURNING
# of the cancel flag instead of its test here costs SQLite more than the SELECT did.)
_FENCE = (
    " AND (SELECT owner = ? AND lease = ? AND cancel_requested IS NOT 1 FROM runs WHERE num = ?)"
)
_FENCED: dict[str, str] = {}


def with_fence(sql: str) -> str:
    """COMPLETE_ENTRY or UPDATE_ENTRY (or a variant of them) with the fence, made once."""
    out = _FENCED.get(sql)
    if out is None:
        out = _FENCED[sql] = sql + _FENCE
    return out


# A finished run lets go of its lease in the same statement: no one drives it again.
# cancel_requested: 0 never cancelled, 1 a cancel waits to be delivered, 2 delivered (the
# run still counts as cancelled for its queue's limits: CANCEL_DELIVERED).
UPDATE_RUN = (
    "UPDATE runs SET status = ?, updated_at = ?, due_at = ?, finished_at = ?, result = ?, "
    "error = ?, error_text = ?, "
    "cancel_requested = CASE WHEN ? AND cancel_requested = 1 THEN 2 ELSE cancel_requested END, "
    "owner = CASE WHEN ?1 IN ('completed', 'failed', 'cancelled') THEN NULL ELSE owner END "
    "WHERE id = ?"
)
CANCEL_PENDING, CANCEL_DELIVERED = 1, 2
NUM_CACHE = 10_000
# Listed positively so that SQLite can use the (status, due_at) index.
UNFINISHED_SQL = ", ".join(f"'{s}'" for s in RUN_STATUSES if s not in FINISHED)
# A run's due time as the runs_due index (schema version 6) holds it: NULL (ready now,
# or running under a lease) as minus infinity, so that every run due by a time t is one
# range of the index, DUE <= t; a wait without a timeout is due at +infinity, never in
# that range. A query must spell the expression exactly so for SQLite to use the index.
# Without statistics SQLite prefers probing runs_by_status (status = each unfinished
# status) to a range: a read of every run asleep. Queries of due runs name the index.
DUE = "ifnull(due_at, -1e999)"
DUE_RUNS = "runs INDEXED BY runs_due"
# A run gc may delete once its children are gone: finished before ?, and not the child
# of an unfinished run (the parent's replay reads the child's row).
_MAY_GO = (
    "r.status IN ("
    + ", ".join(f"'{s}'" for s in RUN_STATUSES if s in FINISHED)
    + ") AND r.finished_at < ? "
    "AND NOT EXISTS (SELECT 1 FROM runs AS p WHERE p.id = r.parent_id "
    f"AND p.status IN ({UNFINISHED_SQL}))"
)
# Such runs with no children left, oldest first, at most ? of them.
DELETABLE = (
    f"SELECT num, id FROM runs AS r WHERE {_MAY_GO} "
    "AND NOT EXISTS (SELECT 1 FROM runs AS c WHERE c.parent_id = r.id) "
    "ORDER BY num LIMIT ?"
)
# How many runs a gc before ? would delete, deleting leaves first: every run that may
# go, less those with a descendant that may not (gc --dry-run). NOT IN: SQLite builds an
# index on the CTE for it (200,000 runs: 2 s); joins to the CTE instead re-evaluate it
# per row here (PostgreSQL wants the joins: store/postgres/sql.py).
DELETABLE_COUNT = (
    f"WITH RECURSIVE may_go(id) AS (SELECT r.id FROM runs AS r WHERE {_MAY_GO}), "
    "kept(id) AS ("
    "SELECT c.parent_id FROM runs AS c WHERE c.parent_id IN (SELECT id FROM may_go) "
    "AND c.id NOT IN (SELECT id FROM may_go) "
    "UNION SELECT r.parent_id FROM runs AS r JOIN kept AS k ON r.id = k.id "
    "WHERE r.parent_id IN (SELECT id FROM may_go)) "
    "SELECT count(*) FROM may_go WHERE id NOT IN (SELECT id FROM kept)"
)


def checked_position(position: int) -> int:
    """position, if a log key can hold it; else DatabaseError."""
    if not 0 <= position <= POSITION_MASK:
        raise DatabaseError(f"log position {position} is out of range")
    return position


MAX_PAGES = 2**31 - 1


def checked_autocheckpoint(pages: int | None) -> int | None:
    """pages, if it is a wal_autocheckpoint (None: SQLite's default); else ValueError."""
    # Pages of WAL after which a commit checkpoints (SQLite's default: 1000); 0 leaves
    # every checkpoint to another process, as Litestream asks (notes/durability.md).
    # SQLite reads a value past a 32-bit int as 0 (never): refused, not silently so.
    if pages is not None and (type(pages) is not int or not 0 <= pages <= MAX_PAGES):
        raise ValueError(
            f"wal_autocheckpoint must be a number of pages from 0 to {MAX_PAGES} (0: no "
            f"automatic checkpoints), or None for SQLite's default (1000), not {pages!r}"
        )
    return pages


def attempt_params(base: int, a: AttemptRow) -> tuple[object, ...]:
    """PUT_ATTEMPT's values for an attempt row of the run whose first log key is base."""
    return (
        base | checked_position(a.position), a.attempt, a.outcome, a.started_at, a.ended_at,
        a.found_at, a.error_text,
    )  # fmt: skip


ATTEMPT_COLS = "id & 4294967295, attempt, outcome, started_at, ended_at, found_at, error_text"


def run_params(run: RunRow) -> tuple[object, ...]:
    """The run's values in RUN_COLS order, as written."""
    return (
        run.id, run.workflow, run.ref, run.status, run.args, run.args_key, run.created_at,
        run.updated_at, run.finished_at, run.due_at, run.result, run.error, run.error_text,
        run.note, int(run.cancel_requested), run.parent_id, run.generation,
        _tags_text(run.tags), run.queue, run.priority, run.forked_from,
    )  # fmt: skip


# A new run's row has about ten NULLs (no ref, result, error, note, parent, tags...):
# bound as parameters, each would cost an adapter lookup (see SHORT_BLOB). The INSERT of
# a new run spells them out instead: one statement per pattern of NULLs, made once.
_RUN_INSERTS: dict[int, str] = {}


def insert_run(run: RunRow) -> tuple[str, tuple[object, ...]]:
    """The INSERT of a new run (nothing if its id is taken) and its parameters: its NULLs
    written in the statement, a short blob bound as a bytearray (the same BLOB)."""
    params = run_params(run)
    nulls = 0
    bound: list[object] = []
    for i, value in enumerate(params):
        if value is None:
            nulls |= 1 << i
        elif type(value) is bytes and len(value) <= SHORT_BLOB:
            bound.append(bytearray(value))
        else:
            bound.append(value)
    sql = _RUN_INSERTS.get(nulls)
    if sql is None:
        marks = ", ".join("NULL" if nulls >> i & 1 else "?" for i in range(len(params)))
        sql = f"INSERT INTO runs ({RUN_COLS}) VALUES ({marks}) ON CONFLICT (id) DO NOTHING"
        if len(_RUN_INSERTS) < 1024:  # patterns are few; a bound all the same
            _RUN_INSERTS[nulls] = sql
    return sql, tuple(bound)


def _tags_text(tags: tuple[str, ...]) -> str | None:
    return "," + ",".join(tags) + "," if tags else None


def run_row(row: tuple[Any, ...]) -> RunRow:
    """A runs row as read; tags come back from their ",a,b," form."""
    *fields, tags, queue, priority, forked_from = row
    run = RunRow(*fields)
    run.cancel_requested = run.cancel_requested == CANCEL_PENDING  # not one delivered
    run.tags = tuple(t for t in (tags or "").split(",") if t)
    run.queue, run.priority, run.forked_from = queue, priority, forked_from
    return run


def run_in(conn: sqlite3.Connection, run_id: str) -> RunRow | None:
    """The run's row as this connection sees it (inside its transaction)."""
    row = conn.execute(f"SELECT {RUN_COLS} FROM runs WHERE id = ?", (run_id,)).fetchone()
    return None if row is None else run_row(row)


def log_in(conn: sqlite3.Connection, run_id: str, base: int) -> list[EntryRow]:
    """The run's whole log (its first key is base) as this connection sees it."""
    rows = conn.execute(
        "SELECT id & ?, kind, name, key, coalesce(text, key), status, attempts, crashes, "
        "started_at, finished_at, due_at, outcome, error_text FROM log "
        "WHERE id BETWEEN ? AND ? ORDER BY id",
        (POSITION_MASK, base, base | POSITION_MASK),
    )
    return [EntryRow(run_id, *r) for r in rows]


class SQLiteParts:
    """What the store's method modules use of SQLiteStore (declared for the type checker only)."""

    if TYPE_CHECKING:
        path: str
        busy_timeout: float
        _lock: threading.RLock
        _conn: sqlite3.Connection
        _nums: dict[str, int]
        _stalls: LockStalls
        _guard: FileGuard
        _reader: sqlite3.Connection
        _rlock: Any
        _claimed_full: set[str]

        def _tx(self) -> AbstractContextManager[sqlite3.Connection]: ...

        _wcur: sqlite3.Cursor

        def _begin(self, conn: Executes) -> float: ...
        def _commit(self, conn: Executes, got: float) -> None: ...
        def _translate(self, exc: sqlite3.Error) -> DatabaseError: ...
        def _num(self, conn: Executes, run_id: str) -> int: ...
        def _key(self, conn: sqlite3.Connection, run_id: str, position: int) -> int: ...
        def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]: ...
        def _remember_num(self, run_id: str, num: int | None) -> None: ...
