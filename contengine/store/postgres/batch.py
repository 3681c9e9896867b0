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

import json
from typing import Any

import psycopg

from ...errors import DatabaseError
from ..group_commit import Slot
from ..rows import Progress
from .connection import Link, database_error
from .single import ONE, fits_alone, one_params
from .sql import CANCEL_DELIVERED, CANCEL_PENDING, FINISHED_SQL, as_text, channel_of
from .writes import (
    entry_raced,
    generation_moved,
    lease_lost,
    lock_runs,
    locked_ids,
    was_cancelled,
    write,
)

# FAST's input: one JSON array of values per progress and one per entry inserted
# (json.dumps is C, where psycopg dumps each of many arrays in Python), and the
# bytea columns as arrays sent in binary, in the same order.
_RUN_FIELDS = (
    ("id", "text"), ("owner", "text"), ("lease", "bigint"), ("unless", "boolean"),
    ("gen", "integer"), ("u_pos", "integer"), ("u_status", "text"),
    ("u_attempts", "integer"), ("u_crashes", "integer"), ("u_finished", "float8"),
    ("u_due", "float8"), ("u_error", "text"), ("u_expect", "integer"),
    ("r_status", "text"), ("r_updated_at", "float8"), ("r_due_at", "float8"),
    ("r_finished_at", "float8"), ("r_error_text", "text"), ("r_clear", "boolean"),
)  # fmt: skip
_RUN_BYTES = ("u_outcome", "r_result", "r_error")
_ENTRY_FIELDS = (
    ("run_id", "text"), ("position", "integer"), ("kind", "text"), ("name", "text"),
    ("key", "text"), ("text", "text"), ("status", "text"), ("attempts", "integer"),
    ("crashes", "integer"), ("started_at", "float8"), ("finished_at", "float8"),
    ("due_at", "float8"), ("error_text", "text"),
)  # fmt: skip
_ENTRY_BYTES = ("outcome",)


def _rows(param: str, fields: tuple[tuple[str, str], ...], raw: tuple[str, ...], n: str) -> str:
    """The rows of a JSON parameter and its bytea arrays (n: and their number, from 1)."""
    cols = [
        f"j.r->>{i} {name}" if kind == "text" else f"(j.r->>{i})::{kind} {name}"
        for i, (name, kind) in enumerate(fields)
    ]
    arrays = ", ".join(f"%({param}_{name})b::bytea[]" for name in raw)
    return (
        f"SELECT {n}{', '.join(cols)}, {', '.join(raw)} "
        f"FROM jsonb_array_elements(%({param})s::jsonb) WITH ORDINALITY j(r, n) "
        f"JOIN unnest({arrays}) WITH ORDINALITY b({', '.join(raw)}, n) ON b.n = j.n"
    )


# written: the runs' rows; a run that ends lets go of its lease in the same statement.
# wakes: the parent of a run that ended wakes at the time of the last run of the batch
# to end (as one write after another would leave it); in `written` if it has progress
# of its own (a row changes once per statement), else in `woken`.
_FAST = f"""
WITH p AS ({_rows("p", _RUN_FIELDS, _RUN_BYTES, "j.n, ")}
), held AS MATERIALIZED (
    SELECT id, owner, lease, cancel_requested, generation, parent_id FROM runs
    WHERE id IN (SELECT id FROM p) ORDER BY id FOR UPDATE
), verdict AS MATERIALIZED (
    SELECT p.*, h.id IS NOT NULL found, h.owner held_owner, h.lease held_lease,
        h.cancel_requested flag, h.parent_id,
        CASE WHEN h.id IS NULL OR h.owner IS DISTINCT FROM p.owner OR h.lease <> p.lease
                THEN 'lease'
            WHEN p.unless AND h.cancel_requested = {CANCEL_PENDING} THEN 'cancel'
            WHEN p.gen IS NOT NULL AND h.generation <> p.gen THEN 'generation'
            ELSE 'ok' END verdict
    FROM p LEFT JOIN held h ON h.id = p.id
), updated AS (
    UPDATE log SET status = v.u_status, attempts = v.u_attempts, crashes = v.u_crashes,
        finished_at = v.u_finished, due_at = v.u_due, outcome = v.u_outcome,
        error_text = v.u_error
    FROM verdict v
    WHERE v.verdict = 'ok' AND v.u_pos IS NOT NULL AND log.run_id = v.id
        AND log.position = v.u_pos AND log.status IN ('running', 'retrying')
        AND log.attempts = coalesce(v.u_expect, log.attempts)
    RETURNING log.run_id
), go AS MATERIALIZED (
    SELECT * FROM verdict v WHERE v.verdict = 'ok'
        AND (v.u_pos IS NULL OR v.id IN (SELECT run_id FROM updated))
), inserted AS (
    INSERT INTO log ({", ".join([n for n, _ in _ENTRY_FIELDS] + list(_ENTRY_BYTES))})
    SELECT * FROM ({_rows("e", _ENTRY_FIELDS, _ENTRY_BYTES, "")}) e
    WHERE e.run_id IN (SELECT id FROM go)
), wakes AS (
    SELECT parent_id id, (array_agg(r_updated_at ORDER BY n DESC))[1] wake FROM go
    WHERE r_status IN ({FINISHED_SQL}) AND parent_id IS NOT NULL GROUP BY parent_id
), written AS (
    UPDATE runs SET status = g.r_status, updated_at = g.r_updated_at,
        due_at = CASE WHEN g.r_status = 'waiting' AND w.wake IS NOT NULL THEN w.wake
            ELSE g.r_due_at END,
        finished_at = g.r_finished_at, result = g.r_result, error = g.r_error,
        error_text = g.r_error_text,
        cancel_requested = CASE WHEN g.r_clear AND runs.cancel_requested = {CANCEL_PENDING}
            THEN {CANCEL_DELIVERED} ELSE runs.cancel_requested END,
        owner = CASE WHEN g.r_status IN ({FINISHED_SQL}) THEN NULL ELSE runs.owner END
    FROM go g LEFT JOIN wakes w ON w.id = g.id
    WHERE runs.id = g.id AND g.r_status IS NOT NULL
    RETURNING g.r_status = 'waiting' AND w.wake IS NOT NULL woke
), woken AS (
    UPDATE runs SET due_at = w.wake FROM wakes w
    WHERE runs.id = w.id AND runs.status = 'waiting'
        AND w.id NOT IN (SELECT id FROM go WHERE r_status IS NOT NULL)
    RETURNING 1
), notified AS (
    SELECT pg_notify(%(chan)s::text, 'child') FROM (
        SELECT 1 FROM woken UNION ALL SELECT 1 FROM written WHERE woke LIMIT 1) x
)
SELECT id, verdict, found, held_owner, held_lease, flag, id IN (SELECT id FROM go)
FROM verdict WHERE (SELECT count(*) FROM notified) >= 0
"""
# On one line: psycopg caches its parse of a query text of up to 4,096 characters.
FAST = " ".join(_FAST.split())


def fits(p: Progress) -> bool:
    """Whether FAST writes p: leased progress that touches no other table than the
    log and runs rows (no child runs, published values, signal taken or restart)."""
    return (
        p.lease is not None and p.consume is None and not p.new_runs and not p.publish
        and p.restart is None and not p.attempts and not p.send
    )  # fmt: skip


def _t(x: float | None) -> float | str | None:
    # A time as JSON has it: JSON has no infinity (a wait without a timeout is due
    # "never"), and the server reads the text "inf" as one.
    return x if x is None or -INF < x < INF else repr(x)


INF = float("inf")


def fast_params(progress: list[Progress], channel: str) -> dict[str, Any]:
    """FAST's parameters for these runs' progress (each fits())."""
    runs: list[list[Any]] = []
    entries: list[list[Any]] = []
    u_outcome: list[bytes | None] = []
    r_result: list[bytes | None] = []
    r_error: list[bytes | None] = []
    e_outcome: list[bytes | None] = []
    for p in progress:
        assert p.lease is not None
        r, u = p.run, p.update
        unless = p.unless_cancelled or (r is not None and r.unless_cancelled)
        row: list[Any] = [p.run_id, p.lease[0], p.lease[1], unless, p.expect_generation]
        if u is None:
            row += (None,) * 8
            u_outcome.append(None)
        else:
            row += (
                u.position, u.status, u.attempts, u.crashes, _t(u.finished_at), _t(u.due_at),
                as_text(u.error_text), p.expect_attempts,
            )  # fmt: skip
            u_outcome.append(u.outcome)
        if r is None:
            row += (None,) * 6
            r_result.append(None)
            r_error.append(None)
        else:
            row += (
                r.status, _t(r.updated_at), _t(r.due_at), _t(r.finished_at),
                as_text(r.error_text), r.clear_cancel,
            )  # fmt: skip
            r_result.append(r.result)
            r_error.append(r.error)
        runs.append(row)
        for e in (*p.recorded, *([p.insert] if p.insert is not None else [])):
            entries.append([
                p.run_id, e.position, e.kind, e.name, e.key, e.text, e.status, e.attempts,
                e.crashes, _t(e.started_at), _t(e.finished_at), _t(e.due_at),
                as_text(e.error_text),
            ])  # fmt: skip
            e_outcome.append(e.outcome)
    return {
        "p": json.dumps(runs), "p_u_outcome": u_outcome, "p_r_result": r_result,
        "p_r_error": r_error, "e": json.dumps(entries), "e_outcome": e_outcome,
        "chan": channel,
    }  # fmt: skip


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
        chan = channel_of(link.schema)
        quick = [slot for slot in batch if unique and fits(slot.progress)]
        if quick and len(quick) == len(batch):
            try:
                # On its own: one round trip, its own transaction.
                if len(quick) == 1 and fits_alone(quick[0].progress):
                    rows = conn.execute(ONE, one_params(quick[0].progress, chan)).fetchall()
                else:
                    rows = conn.execute(
                        FAST, fast_params([s.progress for s in quick], chan)
                    ).fetchall()
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
    chan = channel_of(link.schema)
    fast = {id(slot) for slot in quick}
    rest = [slot for slot in batch if id(slot) not in fast]
    try:
        with conn.transaction():
            held = lock_runs(conn, locked_ids(slot.progress for slot in batch))
            if quick:
                try:
                    rows = conn.execute(
                        FAST, fast_params([s.progress for s in quick], chan)
                    ).fetchall()
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
                        slot.cancel = write(conn, p, held.get(p.run_id), link.shown, chan)
                    else:
                        with conn.transaction():  # a savepoint
                            slot.cancel = write(conn, p, held.get(p.run_id), link.shown, chan)
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
