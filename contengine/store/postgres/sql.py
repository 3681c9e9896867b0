"""The PostgreSQL store's statements and row conversions, shared by its modules."""

from __future__ import annotations

import hashlib
from typing import Any

from ..rows import FINISHED, RUN_STATUSES, AttemptRow, EntryRow, RunRow

RUN_COLS = (
    "id, workflow, ref, status, args, args_key, created_at, updated_at, "
    "finished_at, due_at, result, error, error_text, note, cancel_requested, parent_id, "
    "generation, tags, queue, priority, forked_from"
)
RUN_MARKS = ", ".join(["%s"] * 21)
INSERT_RUN = f"INSERT INTO runs ({RUN_COLS}) VALUES ({RUN_MARKS}) ON CONFLICT (id) DO NOTHING"
SELECT_RUN = f"SELECT {RUN_COLS} FROM runs WHERE id = %s"
# A new run, and its NOTIFY (listen.py) if it is new: one row back if it was inserted.
START_RUN = f"WITH made AS ({INSERT_RUN} RETURNING 1) SELECT pg_notify(%s, 'start') FROM made"
ENTRY_COLS = (
    "position, kind, name, key, text, status, attempts, crashes, "
    "started_at, finished_at, due_at, outcome, error_text"
)
INSERT_ENTRY = f"INSERT INTO log (run_id, {ENTRY_COLS}) VALUES ({', '.join(['%s'] * 14)})"
# Only an entry still in flight may change: a finished outcome is final, and a write
# that finds none was raced by another writer of the same run.
UPDATE_ENTRY = (
    "UPDATE log SET status = %s, attempts = %s, crashes = %s, finished_at = %s, "
    "due_at = %s, outcome = %s, error_text = %s WHERE run_id = %s AND position = %s "
    "AND status IN ('running', 'retrying') AND attempts = coalesce(%s::integer, attempts)"
)
# An attempt row: a new one, or the end of one whose start was written (its start kept,
# unless the attempt began again: a start given back and taken up later).
ATTEMPT_COLS = "position, attempt, outcome, started_at, ended_at, found_at, error_text"
PUT_ATTEMPT = (
    f"INSERT INTO attempts (run_id, {ATTEMPT_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (run_id, position, attempt) DO UPDATE SET outcome = excluded.outcome, "
    "ended_at = excluded.ended_at, found_at = excluded.found_at, "
    "error_text = excluded.error_text, started_at = CASE WHEN excluded.outcome = 'started' "
    "THEN excluded.started_at ELSE attempts.started_at END"
)


def attempt_params(a: AttemptRow) -> tuple[object, ...]:
    """PUT_ATTEMPT's values for an attempt row."""
    return (
        a.run_id, a.position, a.attempt, a.outcome, a.started_at, a.ended_at, a.found_at,
        as_text(a.error_text),
    )  # fmt: skip


# A finished run lets go of its lease in the same statement: no one drives it again.
UPDATE_RUN = (
    "UPDATE runs SET status = %(status)s, updated_at = %(updated_at)s, due_at = %(due_at)s, "
    "finished_at = %(finished_at)s, result = %(result)s, error = %(error)s, "
    "error_text = %(error_text)s, cancel_requested = CASE WHEN %(clear)s::boolean "
    "AND cancel_requested = 1 THEN 2 ELSE cancel_requested END, owner = CASE WHEN "
    "%(status)s IN ('completed', 'failed', 'cancelled') THEN NULL ELSE owner END "
    "WHERE id = %(id)s"
)
CANCEL_PENDING, CANCEL_DELIVERED = 1, 2
UNFINISHED_SQL = ", ".join(f"'{s}'" for s in RUN_STATUSES if s not in FINISHED)
# A run's due time as the runs_due index (schema version 2) holds it: NULL (ready now,
# or running under a lease) as minus infinity, so that the runs due by a time t are one
# range of the index, DUE <= t; a wait without a timeout is due at +infinity, never in
# that range; a finished run is NULL there, in no range at all. The index is on this
# expression over the whole table, not a partial one: the planner has statistics of an
# expression index only when it is not partial, and with them it walks the runs due
# when few are, and runs_to_claim in priority order when many are (a backlog). Queries
# spell the expression exactly so, for the planner to match it with the index.
DUE = f"(CASE WHEN status IN ({UNFINISHED_SQL}) THEN coalesce(due_at, '-Infinity'::float8) END)"
FINISHED_SQL = ", ".join(f"'{s}'" for s in RUN_STATUSES if s in FINISHED)
# Finished runs that finished before %s, oldest first, at most %s of them: not one whose
# parent is unfinished (its replay reads the child's row), nor one with children left.
_MAY_GO = (
    f"r.status IN ({FINISHED_SQL}) AND r.finished_at < %s "
    "AND NOT EXISTS (SELECT 1 FROM runs AS p WHERE p.id = r.parent_id "
    f"AND p.status IN ({UNFINISHED_SQL}))"
)
DELETABLE = (
    f"SELECT id FROM runs AS r WHERE {_MAY_GO} "
    "AND NOT EXISTS (SELECT 1 FROM runs AS c WHERE c.parent_id = r.id) "
    "ORDER BY num LIMIT %s"
)
# How many runs a gc before %s would delete, leaves first (gc --dry-run): every run that
# may go, less those with a descendant that may not.
DELETABLE_COUNT = (
    f"WITH RECURSIVE may_go(id) AS (SELECT r.id FROM runs AS r WHERE {_MAY_GO}), "
    # a run that may go, kept by a child that may not (then its parent, and so on up)
    "kept(id) AS ("
    "SELECT c.parent_id FROM runs AS c JOIN may_go AS m ON m.id = c.parent_id "
    "WHERE NOT EXISTS (SELECT 1 FROM may_go AS g WHERE g.id = c.id) "
    "UNION SELECT r.parent_id FROM runs AS r JOIN kept AS k ON r.id = k.id "
    "JOIN may_go AS m ON m.id = r.parent_id) "
    # anti-joins, not NOT IN: the server hashes them (NOT IN over a CTE rescans it per
    # row: 100,000 runs took over 100 s; now 200,000 take 2-3 s)
    "SELECT count(*) FROM may_go AS m WHERE NOT EXISTS (SELECT 1 FROM kept AS k WHERE k.id = m.id)"
)
# A wake-up for the listeners on the schema's channel (listen.py), delivered at commit.
NOTIFY = "SELECT pg_notify(%s, %s)"
# A child that ends wakes its parent if it waits, and (only then) the parent's driver,
# wherever it is.
WAKE_PARENT = (
    "WITH woken AS (UPDATE runs SET due_at = %s WHERE id = (SELECT parent_id FROM runs "
    "WHERE id = %s) AND status = 'waiting' RETURNING 1) SELECT pg_notify(%s, 'child') "
    "FROM woken"
)
# The run and, recursively, its child runs.
TREE = (
    "WITH RECURSIVE tree(id) AS (SELECT %s::text UNION ALL "
    "SELECT runs.id FROM runs JOIN tree ON runs.parent_id = tree.id) "
)


def channel_of(schema: str) -> str:
    """The NOTIFY channel of a schema's wake-ups (one per schema; a channel name, like
    any PostgreSQL name, keeps at most 63 bytes: a long schema name is hashed)."""
    name = f"contengine:{schema}"
    if len(name.encode()) <= 63:
        return name
    return "contengine:" + hashlib.sha256(schema.encode()).hexdigest()[:40]


def as_text(text: str | None) -> str | None:
    """An error text or note as the store keeps it: a NUL character, which PostgreSQL's
    text refuses, as the four characters \\x00 (as repr() shows it). Only these
    texts, written for people, are changed so; the exception itself is kept whole
    (pickled), and names and ids with a NUL are refused before anything is written."""
    return text if text is None or "\x00" not in text else text.replace("\x00", "\\x00")


def run_params(run: RunRow) -> tuple[object, ...]:
    """The run's values in RUN_COLS order, as written."""
    return (
        run.id, run.workflow, run.ref, run.status, run.args, run.args_key, run.created_at,
        run.updated_at, run.finished_at, run.due_at, run.result, run.error, as_text(run.error_text),
        as_text(run.note), int(run.cancel_requested), run.parent_id, run.generation,
        list(run.tags), run.queue, run.priority, run.forked_from,
    )  # fmt: skip


def run_row(row: tuple[Any, ...]) -> RunRow:
    """A runs row (RUN_COLS) as read."""
    *fields, tags, queue, priority, forked_from = row
    run = RunRow(*fields)
    run.args = bytes(run.args)
    run.result = None if run.result is None else bytes(run.result)
    run.error = None if run.error is None else bytes(run.error)
    run.cancel_requested = run.cancel_requested == CANCEL_PENDING  # not one delivered
    run.tags = tuple(tags or ())
    run.queue, run.priority, run.forked_from = queue, priority, forked_from
    return run


def entry_params(e: EntryRow) -> tuple[object, ...]:
    """The entry's values in INSERT_ENTRY order."""
    return (
        e.run_id, e.position, e.kind, e.name, e.key, e.text, e.status, e.attempts,
        e.crashes, e.started_at, e.finished_at, e.due_at, e.outcome, as_text(e.error_text),
    )  # fmt: skip


def entry_row(run_id: str, row: tuple[Any, ...]) -> EntryRow:
    """A log row (ENTRY_COLS) as read."""
    e = EntryRow(run_id, *row)
    if e.outcome is not None:
        e.outcome = bytes(e.outcome)
    return e
