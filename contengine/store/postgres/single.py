"""One run's progress alone (a batch of one): the statement of batch.py with plain values.

A run driven on its own (engine.run(), a run with no company) writes a batch of one
at every step. batch.FAST would write it, but reading arrays out of JSON and the
joins that a batch needs cost the server about as much again as the writes
themselves; ONE does the same work with one value per parameter: lock the run's
row, check it (lease, cancel, generation), complete entry N if still in flight as
expected, insert entry N+1, write the run's row and wake its parent if it ended.
Its result is a row of FAST's result, and batch.settle() reads it.
"""

from __future__ import annotations

from typing import Any

from ..rows import Progress
from .sql import CANCEL_DELIVERED, CANCEL_PENDING, FINISHED_SQL, as_text

_ONE = f"""
WITH held AS MATERIALIZED (
    SELECT owner, lease, cancel_requested, generation, parent_id FROM runs
    WHERE id = %(id)s::text FOR UPDATE
), verdict AS MATERIALIZED (
    SELECT *, CASE WHEN owner IS DISTINCT FROM %(owner)s::text OR lease <> %(lease)s::bigint
            THEN 'lease'
        WHEN %(unless)s::boolean AND cancel_requested = {CANCEL_PENDING} THEN 'cancel'
        WHEN generation <> coalesce(%(gen)s::integer, generation) THEN 'generation'
        ELSE 'ok' END AS verdict
    FROM held
), updated AS (
    UPDATE log SET status = %(u_status)s::text, attempts = %(u_attempts)s::integer,
        crashes = %(u_crashes)s::integer, finished_at = %(u_finished)s::float8,
        due_at = %(u_due)s::float8, outcome = %(u_outcome)s::bytea,
        error_text = %(u_error)s::text
    WHERE run_id = %(id)s::text AND position = %(u_pos)s::integer
        AND status IN ('running', 'retrying')
        AND attempts = coalesce(%(u_expect)s::integer, attempts)
        AND (SELECT verdict FROM verdict) = 'ok'
    RETURNING 1
), go AS MATERIALIZED (
    SELECT parent_id FROM verdict WHERE verdict = 'ok'
        AND (%(u_pos)s::integer IS NULL OR EXISTS (SELECT FROM updated))
), inserted AS (
    INSERT INTO log (run_id, position, kind, name, key, text, status, attempts, crashes,
        started_at, finished_at, due_at, outcome, error_text)
    SELECT %(id)s::text, %(e_pos)s::integer, %(e_kind)s::text, %(e_name)s::text,
        %(e_key)s::text, %(e_text)s::text, %(e_status)s::text, %(e_attempts)s::integer,
        %(e_crashes)s::integer, %(e_started)s::float8, %(e_finished)s::float8,
        %(e_due)s::float8, %(e_outcome)s::bytea, %(e_error)s::text
    FROM go WHERE %(e_pos)s::integer IS NOT NULL
), written AS (
    UPDATE runs SET status = %(r_status)s::text, updated_at = %(r_updated_at)s::float8,
        due_at = %(r_due_at)s::float8, finished_at = %(r_finished_at)s::float8,
        result = %(r_result)s::bytea, error = %(r_error)s::bytea,
        error_text = %(r_error_text)s::text,
        cancel_requested = CASE WHEN %(r_clear)s::boolean
            AND cancel_requested = {CANCEL_PENDING} THEN {CANCEL_DELIVERED}
            ELSE cancel_requested END,
        owner = CASE WHEN %(r_status)s::text IN ({FINISHED_SQL}) THEN NULL ELSE owner END
    WHERE id = %(id)s::text AND %(r_status)s::text IS NOT NULL AND EXISTS (SELECT FROM go)
), woken AS (
    UPDATE runs SET due_at = %(r_updated_at)s::float8
    WHERE id = (SELECT parent_id FROM go) AND status = 'waiting'
        AND %(r_status)s::text IN ({FINISHED_SQL})
    RETURNING 1
), notified AS (
    SELECT pg_notify(%(chan)s::text, 'child') FROM woken
)
SELECT %(id)s::text, coalesce((SELECT verdict FROM verdict), 'lease'),
    EXISTS (SELECT FROM held), (SELECT owner FROM held), (SELECT lease FROM held),
    (SELECT cancel_requested FROM held), EXISTS (SELECT FROM go)
WHERE (SELECT count(*) FROM notified) >= 0
"""
# On one line: psycopg caches its parse of a query text of up to 4,096 characters.
ONE = " ".join(_ONE.split())


def fits_alone(p: Progress) -> bool:
    """Whether ONE writes p (which batch.fits()): one entry inserted at most."""
    return not p.recorded


_UPDATE = ("u_pos", "u_status", "u_attempts", "u_crashes", "u_finished", "u_due", "u_outcome",
           "u_error")  # fmt: skip
_INSERT = ("e_pos", "e_kind", "e_name", "e_key", "e_text", "e_status", "e_attempts",
           "e_crashes", "e_started", "e_finished", "e_due", "e_outcome", "e_error")  # fmt: skip
_RUN = ("r_status", "r_updated_at", "r_due_at", "r_finished_at", "r_result", "r_error",
        "r_error_text", "r_clear")  # fmt: skip


def one_params(p: Progress, channel: str) -> dict[str, Any]:
    """ONE's parameters for p (channel: where a parent's wake-up is announced)."""
    assert p.lease is not None
    u, e, r = p.update, p.insert, p.run
    params: dict[str, Any] = {
        "id": p.run_id, "owner": p.lease[0], "lease": p.lease[1],
        "unless": p.unless_cancelled or (r is not None and r.unless_cancelled),
        "gen": p.expect_generation, "u_expect": p.expect_attempts, "chan": channel,
    }  # fmt: skip
    params.update(
        zip(_UPDATE, (None,) * 8 if u is None else (
            u.position, u.status, u.attempts, u.crashes, u.finished_at, u.due_at, u.outcome,
            as_text(u.error_text),
        ), strict=True)
    )  # fmt: skip
    params.update(
        zip(_INSERT, (None,) * 13 if e is None else (
            e.position, e.kind, e.name, e.key, e.text, e.status, e.attempts, e.crashes,
            e.started_at, e.finished_at, e.due_at, e.outcome, as_text(e.error_text),
        ), strict=True)
    )  # fmt: skip
    params.update(
        zip(_RUN, (None,) * 7 + (False,) if r is None else (
            r.status, r.updated_at, r.due_at, r.finished_at, r.result, r.error,
            as_text(r.error_text), r.clear_cancel,
        ), strict=True)
    )  # fmt: skip
    return params
