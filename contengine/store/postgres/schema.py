"""The PostgreSQL store's schema, version by version, created and migrated on open.

Everything lives in one PostgreSQL schema of its own (default "contengine"), with a
`meta` table that records the version. Opening takes a transaction-level advisory
lock on the schema's name, so that processes opening a new database at once create
it once, and refuses a schema written by a newer contengine.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from ...errors import DatabaseError
from .connection import CONNECT_TIMEOUT, database_error, unreachable
from .url import redacted, split_url

SCHEMA_VERSION = 4

# Times are float8 seconds (as the engine's clock gives them; 'Infinity' is a wait
# without a timeout); values are bytea, never read by the server.
_SCHEMA_V1 = """
CREATE TABLE meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE runs (
    num bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- creation order
    id text NOT NULL UNIQUE,
    workflow text NOT NULL,
    ref text,
    status text NOT NULL,
    args bytea NOT NULL,
    args_key text,
    created_at float8 NOT NULL,
    updated_at float8 NOT NULL,
    finished_at float8,
    due_at float8,
    result bytea,
    error bytea,
    error_text text,
    note text,
    -- 0 never cancelled, 1 a cancel waits to be delivered, 2 delivered
    cancel_requested smallint NOT NULL DEFAULT 0,
    parent_id text,
    generation integer NOT NULL DEFAULT 0,
    tags text[] NOT NULL DEFAULT '{}',
    queue text,
    priority integer NOT NULL DEFAULT 0,
    owner text,
    lease bigint NOT NULL DEFAULT 0,
    claimed_at float8
);
CREATE INDEX runs_by_status ON runs (status, due_at);
CREATE INDEX runs_by_workflow ON runs (workflow, status);
CREATE INDEX runs_by_parent ON runs (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX runs_to_claim ON runs (priority DESC, num)
    WHERE status IN ('pending', 'running', 'sleeping', 'waiting');
CREATE INDEX runs_by_owner ON runs (owner) WHERE owner IS NOT NULL;
CREATE INDEX runs_by_queue ON runs (queue, claimed_at) WHERE queue IS NOT NULL;
CREATE TABLE log (
    run_id text NOT NULL,
    position integer NOT NULL,
    kind text NOT NULL,
    name text NOT NULL,
    key text,
    text text NOT NULL,
    status text NOT NULL,
    attempts integer NOT NULL,
    crashes integer NOT NULL,
    started_at float8 NOT NULL,
    finished_at float8,
    due_at float8,
    outcome bytea,
    error_text text,
    PRIMARY KEY (run_id, position)
);
CREATE TABLE mailbox (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id text NOT NULL,
    name text NOT NULL,
    payload bytea NOT NULL,
    sent_at float8 NOT NULL
);
CREATE INDEX mailbox_by_run ON mailbox (run_id, name, seq);
CREATE TABLE published (
    run_id text NOT NULL,
    key text NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE TABLE workers (
    id text PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    pid_start text,
    started_at float8 NOT NULL,
    expires_at float8 NOT NULL,
    worker_loop boolean NOT NULL DEFAULT false
);
CREATE TABLE queues (
    name text PRIMARY KEY,
    concurrency integer,
    worker_concurrency integer,
    rate_limit integer,
    rate_period float8
);
CREATE TABLE step_slots (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue text NOT NULL,
    holder text NOT NULL,
    acquired_at float8 NOT NULL,
    released boolean NOT NULL DEFAULT false
);
CREATE INDEX step_slots_by_queue ON step_slots (queue, released, acquired_at)
"""

# Version 2: claims find due runs through an index of unfinished runs by due time (NULL,
# ready now, as minus infinity; finished runs NULL: the expression is sql.DUE), so that a
# claim, runnable() and next_due() read the runs that are due (or the next one), not
# every run asleep. runs_to_claim stays: with a backlog of due runs the planner walks it
# in priority order and stops at the claim's limit, rather than sorting the backlog.
_SCHEMA_V2 = """
CREATE INDEX runs_due ON runs ((CASE WHEN status IN ('pending', 'running', 'sleeping',
    'waiting') THEN coalesce(due_at, '-Infinity'::float8) END))
"""

# Version 3: attempt rows (store/rows.py AttemptRow): written only where an attempt
# failed, was found lost in a crash, or began after one, so the per-step path is unchanged.
_SCHEMA_V3 = """
CREATE TABLE attempts (
    run_id text NOT NULL,
    position integer NOT NULL,
    attempt integer NOT NULL,
    outcome text NOT NULL,
    started_at float8 NOT NULL,
    ended_at float8,
    found_at float8,
    error_text text,
    PRIMARY KEY (run_id, position, attempt)
)
"""

# Version 4: where a fork came from (runs.forked_from: the run engine.fork copied).
_SCHEMA_V4 = """
ALTER TABLE runs ADD COLUMN forked_from text
"""

# MIGRATIONS[v] takes the schema from version v to v + 1 (statements run in order, in
# the opening transaction). A new version appends its script here.
MIGRATIONS: dict[int, str] = {0: _SCHEMA_V1, 1: _SCHEMA_V2, 2: _SCHEMA_V3, 3: _SCHEMA_V4}


def stored_version(conn: psycopg.Connection[Any], schema: str, shown: str) -> int | None:
    """The version in the schema's meta table; 0 for no schema or an empty one, None
    for a schema that holds tables but no contengine meta table (someone else's).
    DatabaseError for a meta table without a version that is a number."""
    found = conn.execute(
        "SELECT count(*) FROM pg_tables WHERE schemaname = %s", (schema,)
    ).fetchone()
    if found is None or found[0] == 0:
        return 0
    if conn.execute("SELECT to_regclass(%s)", (f'"{schema}".meta',)).fetchone() == (None,):
        return None
    row = conn.execute(
        sql.SQL("SELECT value FROM {}.meta WHERE key = 'version'").format(sql.Identifier(schema))
    ).fetchone()
    value = None if row is None else str(row[0])
    if value is None or not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise DatabaseError(
            f"the schema {schema!r} at {shown} has a contengine meta table whose version "
            f"is {'missing' if value is None else repr(value)}, not a schema version; "
            f"contengine left it untouched. Restore the schema from a backup, or give "
            f"the engine another schema."
        )
    return int(value)


def prepare(conn: psycopg.Connection[Any], schema: str, shown: str, create: bool = True) -> int:
    """Create or migrate the schema in one transaction; its version. DatabaseError if it
    belongs to a newer contengine or to another application (left untouched), or, with
    create false, if it holds no contengine database yet (then nothing is created)."""
    with conn.transaction():
        # Held to the end of the transaction: one opener migrates, the others wait and
        # then find the schema current.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"contengine:{schema}",))
        version = stored_version(conn, schema, shown)
        if version is None:
            raise DatabaseError(
                f"the schema {schema!r} at {shown} holds tables of another application "
                f"(it has no contengine meta table); contengine left it untouched. Give "
                f"the engine a schema of its own: schema='...' or ?schema=... in the URL."
            )
        if version > SCHEMA_VERSION:
            raise DatabaseError(
                f"the schema {schema!r} at {shown} was written by a newer contengine "
                f"(schema version {version}; this one knows up to {SCHEMA_VERSION}). It "
                f"was left untouched: upgrade contengine to open it."
            )
        if version == SCHEMA_VERSION:
            return version
        if version == 0 and not create:
            raise DatabaseError(
                f"there is no contengine database in the schema {schema!r} at {shown}; "
                f"nothing was created. Check the URL and its ?schema= (an engine or a "
                f"worker started on it, or `contengine import`, creates it)"
            )
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        while version < SCHEMA_VERSION:
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    conn.execute(statement)
            version += 1
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('version', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(version),),
        )
        return version


def drop_schema(url: str, schema: str) -> None:
    """Drop the schema with everything in it (one that `contengine bench` made for itself)."""
    target, name = split_url(url, schema)
    try:
        conn = psycopg.connect(target, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
    except psycopg.Error as exc:
        raise unreachable(redacted(url), exc, url) from exc
    with conn:
        try:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            raise database_error(redacted(url), exc) from exc
