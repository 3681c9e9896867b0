"""The SQLite store's schema, version by version, and the migrations between them."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

_SCHEMA_V1 = """
CREATE TABLE runs (
    num INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: log keys are built from it
    id TEXT NOT NULL UNIQUE,
    workflow TEXT NOT NULL,
    ref TEXT,
    status TEXT NOT NULL,
    args BLOB NOT NULL,
    args_key TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    due_at REAL,
    result BLOB,
    error BLOB,
    error_text TEXT,
    note TEXT
);
CREATE INDEX runs_by_status ON runs (status, due_at);
CREATE INDEX runs_by_workflow ON runs (workflow, status);
CREATE TABLE log (
    id INTEGER PRIMARY KEY,  -- (runs.num << 32) | position
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    key TEXT,
    text TEXT,  -- NULL when equal to key
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    crashes INTEGER NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    due_at REAL,
    outcome BLOB,
    error_text TEXT
);
"""
# Version 2: signals (a mailbox per run) and cancellation requests.
_SCHEMA_V2 = """
ALTER TABLE runs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN parent_id TEXT;
CREATE INDEX runs_by_parent ON runs (parent_id) WHERE parent_id IS NOT NULL;
CREATE TABLE mailbox (
    seq INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    payload BLOB NOT NULL,
    sent_at REAL NOT NULL
);
CREATE INDEX mailbox_by_run ON mailbox (run_id, name, seq);
ALTER TABLE runs ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
CREATE TABLE published (
    run_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (run_id, key)
) WITHOUT ROWID
"""

# Version 3: tags on runs, stored as ",a,b," so that one tag is found with LIKE.
_SCHEMA_V3 = """
ALTER TABLE runs ADD COLUMN tags TEXT
"""


# Version 4: leases (a run's owner and a fencing counter), the workers that hold
# them, and queues (name, priority, per-queue limits).
_SCHEMA_V4 = """
ALTER TABLE runs ADD COLUMN queue TEXT;
ALTER TABLE runs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN owner TEXT;
ALTER TABLE runs ADD COLUMN lease INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN claimed_at REAL;
CREATE INDEX runs_to_claim ON runs (priority DESC, num)
    WHERE status IN ('pending', 'running', 'sleeping', 'waiting');
CREATE INDEX runs_by_owner ON runs (owner) WHERE owner IS NOT NULL;
CREATE INDEX runs_by_queue ON runs (queue, claimed_at) WHERE queue IS NOT NULL;
CREATE TABLE workers (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    pid_start TEXT,
    started_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE queues (
    name TEXT PRIMARY KEY,
    concurrency INTEGER,
    worker_concurrency INTEGER,
    rate_limit INTEGER,
    rate_period REAL
);
CREATE TABLE step_slots (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    holder TEXT NOT NULL,
    acquired_at REAL NOT NULL,
    released INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX step_slots_by_queue ON step_slots (queue, released, acquired_at)
"""


# Version 5: which engines on record run a worker loop (and so claim any due run).
_SCHEMA_V5 = """
ALTER TABLE workers ADD COLUMN worker_loop INTEGER NOT NULL DEFAULT 0
"""


# Version 6: claims find due runs through an index of unfinished runs by due time (NULL,
# ready now, as minus infinity: the expression is sql.DUE), so a claim reads the runs
# that are due, not every run asleep; the claim's old index by priority goes (a claim
# sorts the due runs by priority itself, and no other query used it).
_SCHEMA_V6 = """
CREATE INDEX runs_due ON runs (ifnull(due_at, -1e999))
    WHERE status IN ('pending', 'running', 'sleeping', 'waiting');
DROP INDEX runs_to_claim
"""


# Version 7: attempt rows (store/rows.py AttemptRow), keyed as their log entry is
# ((runs.num << 32) | position) and the attempt's number; a step whose first attempt
# succeeds writes none, so the per-step path is unchanged.
_SCHEMA_V7 = """
CREATE TABLE attempts (
    id INTEGER NOT NULL,  -- the log entry's key
    attempt INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    found_at REAL,
    error_text TEXT,
    PRIMARY KEY (id, attempt)
) WITHOUT ROWID
"""


# Version 8: where a fork came from (runs.forked_from: the run engine.fork copied).
_SCHEMA_V8 = """
ALTER TABLE runs ADD COLUMN forked_from TEXT
"""


# MIGRATIONS[v] takes a schema at version v to v + 1, inside one transaction.
# A new schema version appends a function here; files are migrated on open.
def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT the open transaction first; run statement by statement.
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    0: lambda conn: _run_script(conn, _SCHEMA_V1),
    1: lambda conn: _run_script(conn, _SCHEMA_V2),
    2: lambda conn: _run_script(conn, _SCHEMA_V3),
    3: lambda conn: _run_script(conn, _SCHEMA_V4),
    4: lambda conn: _run_script(conn, _SCHEMA_V5),
    5: lambda conn: _run_script(conn, _SCHEMA_V6),
    6: lambda conn: _run_script(conn, _SCHEMA_V7),
    7: lambda conn: _run_script(conn, _SCHEMA_V8),
}
