"""The PostgreSQL store's group commit: a batch of many runs' progress in one statement.

A batch is the progress of many runs, one each (every driver waits for its write).
Most of it is runs moving on: an entry's outcome, the next entry in flight, entries
complete when first written, the run's new state, perhaps its end. All of that, for
the whole batch, is one statement (FAST) over arrays, sent on its own (its own
transaction: one round trip and one commit for the batch). In it, in order:

* `held` locks the batch's runs' rows, in id order (two batches that share runs lock
  them in the same order: no deadlock between them). Under READ COMMITTED a row
  lock waits for a writer of the row and then reads the row as it committed, so
  the checks below see the newest owner, lease number and cancel flag, never the
  statement's older snapshot (a check done as a plain read is not safe: a claim
  committed in between would go unseen).
* `verdict` checks each progress against its locked row as writes.write() does:
  the lease (owner and number), a cancel its progress must not pass
  (unless_cancelled), the generation. A run that fails a check drops out.
* `updated` completes (or changes) entry N of the runs left, if still in flight with
  the attempts the driver expected; a run whose entry is not drops out too.
* `inserted` and `written` write the runs left: their new entries, their rows, and
  the wake-up of the parent of each run that ended (in one UPDATE with the runs'
  own rows: a row may change once per statement).
* The result says, per run, what became of it: each slot is told (LeaseLost,
  CancelArrived, DatabaseError) exactly as the one-by-one write would tell it.

Progress that starts child runs, publishes, takes a signal, continues as new or has
no lease is written one by one (writes.write()) in the same transaction. If the
statement fails (an entry already there: a writer's bug, or a deadlock with a
parent's wake-up), the batch is written one by one, which gives each progress its
own error.
"""

from __future__ import annotations

from typing import Any

import psycopg

from ...errors import DatabaseError
from ..group_commit import Slot
from ..rows import Progress
from .connection import Link, database_error
from .sql import CANCEL_DELIVERED, CANCEL_PENDING, FINISHED_SQL
from .writes import (
    entry_raced,
    generation_moved,
    lease_lost,
    lock_runs,
    was_cancelled,
    write,
)

# The arrays of FAST: one element per progress, and one per entry inserted.
_RUN_ARRAYS = (
    ("id", "text"), ("owner", "text"), ("lease", "bigint"), ("unless", "boolean"),
    ("gen", "integer"), ("u_pos", "integer"), ("u_status", "text"),
    ("u_attempts", "integer"), ("u_crashes", "integer"), ("u_finished", "float8"),
    ("u_due", "float8"), ("u_outcome", "bytea"), ("u_error", "text"), ("u_expect", "integer"),
    ("r_status", "text"), ("r_updated_at", "float8"), ("r_due_at", "float8"),
    ("r_finished_at", "float8"), ("r_result", "bytea"), ("r_error", "bytea"),
    ("r_error_text", "text"), ("r_clear", "boolean"),
)  # fmt: skip
_ENTRY_ARRAYS = (
    ("run_id", "text"), ("position", "integer"), ("kind", "text"), ("name", "text"),
    ("key", "text"), ("text", "text"), ("status", "text"), ("attempts", "integer"),
    ("crashes", "integer"), ("started_at", "float8"), ("finished_at", "float8"),
    ("due_at", "float8"), ("outcome", "bytea"), ("error_text", "text"),
)  # fmt: skip


def _unnest(arrays: tuple[tuple[str, str], ...], prefix: str, more: str = "") -> str:
    marks = ", ".join(f"%({prefix}{name})s::{kind}[]" for name, kind in arrays)
    names = ", ".join([n for n, _ in arrays] + ([more] if more else []))
    return f"unnest({marks}){' WITH ORDINALITY' if more else ''} AS {prefix.rstrip('_')}({names})"


def _kept(column: str) -> str:
    # A run row's column: the progress's value if it updates the run, else as it is.
    return f"{column} = CASE WHEN c.r_status IS NULL THEN runs.{column} ELSE c.r_{column} END"


FAST = f"""
WITH p AS (
    SELECT * FROM {_unnest(_RUN_ARRAYS, "p_", "n")}
), held AS MATERIALIZED (
    SELECT id, owner, lease, cancel_requested, generation, parent_id FROM runs
    WHERE id = ANY(%(p_id)s::text[]) ORDER BY id FOR UPDATE
), verdict AS MATERIALIZED (
    SELECT p.*, h.id IS NOT NULL AS found, h.owner AS held_owner, h.lease AS held_lease,
        h.cancel_requested AS flag, h.parent_id,
        CASE WHEN h.id IS NULL OR h.owner IS DISTINCT FROM p.owner OR h.lease <> p.lease
                THEN 'lease'
            WHEN p.unless AND h.cancel_requested = {CANCEL_PENDING} THEN 'cancel'
            WHEN p.gen IS NOT NULL AND h.generation <> p.gen THEN 'generation'
            ELSE 'ok' END AS verdict
    FROM p LEFT JOIN held AS h ON h.id = p.id
), updated AS (
    UPDATE log SET status = v.u_status, attempts = v.u_attempts, crashes = v.u_crashes,
        finished_at = v.u_finished, due_at = v.u_due, outcome = v.u_outcome,
        error_text = v.u_error
    FROM verdict AS v
    WHERE v.verdict = 'ok' AND v.u_pos IS NOT NULL AND log.run_id = v.id
        AND log.position = v.u_pos AND log.status IN ('running', 'retrying')
        AND log.attempts = coalesce(v.u_expect, log.attempts)
    RETURNING log.run_id
), go AS MATERIALIZED (
    SELECT * FROM verdict AS v WHERE v.verdict = 'ok'
        AND (v.u_pos IS NULL OR v.id IN (SELECT run_id FROM updated))
), inserted AS (
    INSERT INTO log (run_id, position, kind, name, key, text, status, attempts, crashes,
        started_at, finished_at, due_at, outcome, error_text)
    SELECT * FROM {_unnest(_ENTRY_ARRAYS, "e_")} WHERE e.run_id IN (SELECT id FROM go)
), wakes AS (
    -- The time of the last run in the batch to end (as one write after another would).
    SELECT parent_id AS id, (array_agg(r_updated_at ORDER BY n DESC))[1] AS wake FROM go
    WHERE r_status IN ({FINISHED_SQL}) AND parent_id IS NOT NULL GROUP BY parent_id
), changes AS (
    SELECT coalesce(g.id, w.id) AS id, g.r_status, g.r_updated_at, g.r_due_at, g.r_finished_at,
        g.r_result, g.r_error, g.r_error_text, g.r_clear, w.wake
    FROM (SELECT * FROM go WHERE r_status IS NOT NULL) AS g FULL JOIN wakes AS w ON w.id = g.id
), written AS (
    UPDATE runs SET status = coalesce(c.r_status, runs.status), {_kept("updated_at")},
        due_at = CASE WHEN c.wake IS NOT NULL
                AND coalesce(c.r_status, runs.status) = 'waiting' THEN c.wake
            WHEN c.r_status IS NULL THEN runs.due_at ELSE c.r_due_at END,
        {_kept("finished_at")}, {_kept("result")}, {_kept("error")}, {_kept("error_text")},
        cancel_requested = CASE WHEN c.r_clear AND runs.cancel_requested = {CANCEL_PENDING}
            THEN {CANCEL_DELIVERED} ELSE runs.cancel_requested END,
        owner = CASE WHEN c.r_status IN ({FINISHED_SQL}) THEN NULL ELSE runs.owner END
    FROM changes AS c
    WHERE runs.id = c.id AND (c.r_status IS NOT NULL OR runs.status = 'waiting')
)
SELECT v.id, v.verdict, v.found, v.held_owner, v.held_lease, v.flag,
    v.id IN (SELECT id FROM go) FROM verdict AS v
"""


def fits(p: Progress) -> bool:
    """Whether FAST writes p: leased progress that touches no other table than the
    log and runs rows (no child runs, published values, signal taken or restart)."""
    return (
        p.lease is not None and p.consume is None and not p.new_runs and not p.publish
        and p.restart is None
    )  # fmt: skip


def fast_params(progress: list[Progress]) -> dict[str, list[Any]]:
    """FAST's arrays for these runs' progress (each fits())."""
    cols: dict[str, list[Any]] = {f"p_{n}": [] for n, _ in _RUN_ARRAYS}
    cols.update({f"e_{n}": [] for n, _ in _ENTRY_ARRAYS})
    for p in progress:
        assert p.lease is not None
        r, u = p.run, p.update
        unless = p.unless_cancelled or (r is not None and r.unless_cancelled)
        run_values: tuple[object, ...] = (p.run_id, p.lease[0], p.lease[1], unless,
            p.expect_generation)  # fmt: skip
        if u is None:
            run_values += (None,) * 9
        else:
            run_values += (
                u.position, u.status, u.attempts, u.crashes, u.finished_at, u.due_at,
                u.outcome, u.error_text, p.expect_attempts,
            )  # fmt: skip
        if r is None:
            run_values += (None,) * 8
        else:
            run_values += (
                r.status, r.updated_at, r.due_at, r.finished_at, r.result, r.error,
                r.error_text, r.clear_cancel,
            )  # fmt: skip
        for (name, _), value in zip(_RUN_ARRAYS, run_values, strict=True):
            cols[f"p_{name}"].append(value)
        for e in (*p.recorded, *([p.insert] if p.insert is not None else [])):
            entry_values = (
                p.run_id, e.position, e.kind, e.name, e.key, e.text, e.status, e.attempts,
                e.crashes, e.started_at, e.finished_at, e.due_at, e.outcome, e.error_text,
            )  # fmt: skip
            for (name, _), value in zip(_ENTRY_ARRAYS, entry_values, strict=True):
                cols[f"e_{name}"].append(value)
    return cols


def settle(slots: list[Slot], rows: list[tuple[Any, ...]], shown: str) -> None:
    """Tell each slot what FAST did with its progress (rows: its result): the cancel
    flag of a written one, the error of one that dropped out (it wrote nothing)."""
    by_id = {row[0]: row for row in rows}
    for slot in slots:
        p = slot.progress
        assert p.lease is not None
        _, verdict, found, owner, lease, flag, written = by_id[p.run_id]
        if written:
            slot.cancel = flag == CANCEL_PENDING and not (p.run is not None and p.run.clear_cancel)
        elif verdict == "lease":
            slot.fail(lease_lost(p.run_id, p.lease, (owner, lease) if found else None))
        elif verdict == "cancel":
            slot.fail(was_cancelled(p.run_id))
        elif verdict == "generation":
            slot.fail(generation_moved(p.run_id))
        elif p.update is not None:
            slot.fail(entry_raced(p.update, shown))
        else:  # cannot happen: a progress without an update that passed is written
            slot.fail(DatabaseError(f"run {p.run_id!r}: its progress was not written"))


class _Redo(Exception):
    """FAST failed inside the batch's transaction: write the batch one by one instead."""


def write_slots(link: Link, batch: list[Slot]) -> None:
    """GroupCommit.write_batch: every slot's progress in one transaction; what fits()
    in FAST, the rest one by one, each in a savepoint of its own (a failing one is
    rolled back alone and told why)."""
    with link.lock:
        try:
            conn = link.connect()
        except DatabaseError as exc:
            for slot in batch:
                slot.fail(exc)
            return
        # One progress per run (its driver waits for each write) is what FAST and the
        # rows locked up front rely on; a batch that has two writes each one by one.
        ids = [slot.progress.run_id for slot in batch]
        unique = len(set(ids)) == len(ids)
        quick = [slot for slot in batch if unique and fits(slot.progress)]
        if quick and len(quick) == len(batch):
            try:
                # On its own: one round trip, its own transaction.
                rows = conn.execute(FAST, fast_params([s.progress for s in quick])).fetchall()
            except psycopg.Error as exc:
                if conn.broken:
                    for slot in batch:
                        slot.fail(database_error(link.shown, exc))
                    return
            else:
                settle(quick, rows, link.shown)
                for slot in quick:
                    slot.done = True
                return
            quick = []  # FAST failed: each one by one, to be told its own error
        try:
            _one_by_one(link, conn, batch, quick, unique)
        except _Redo:
            _one_by_one(link, conn, batch, [], unique)


def _one_by_one(
    link: Link, conn: psycopg.Connection[Any], batch: list[Slot], quick: list[Slot], unique: bool
) -> None:
    """The batch in one transaction: quick's progress in FAST, the rest one by one."""
    alone = len(batch) == 1
    fast = {id(slot) for slot in quick}
    rest = [slot for slot in batch if id(slot) not in fast]
    try:
        with conn.transaction():
            held = lock_runs(conn, [slot.progress.run_id for slot in batch])
            if quick:
                try:
                    rows = conn.execute(FAST, fast_params([s.progress for s in quick])).fetchall()
                except psycopg.Error as exc:
                    if conn.broken:
                        raise
                    raise _Redo from exc
                settle(quick, rows, link.shown)
            for slot in rest:
                p = slot.progress
                try:
                    if not unique:
                        held.update(lock_runs(conn, [p.run_id]))
                    if alone:
                        slot.cancel = write(conn, p, held.get(p.run_id), link.shown)
                    else:
                        with conn.transaction():  # a savepoint
                            slot.cancel = write(conn, p, held.get(p.run_id), link.shown)
                except Exception as exc:
                    if alone or conn.broken:
                        raise
                    slot.fail(
                        database_error(link.shown, exc) if isinstance(exc, psycopg.Error) else exc
                    )
    except _Redo:
        raise  # nothing was told to any slot yet: the caller writes them one by one
    except BaseException as exc:
        failure: BaseException = (
            database_error(link.shown, exc) if isinstance(exc, psycopg.Error) else exc
        )
        for slot in batch:
            slot.fail(failure if isinstance(failure, Exception) else DatabaseError(str(failure)))
        if not isinstance(exc, Exception):
            raise
        return
    for slot in batch:
        slot.done = True
