"""The schema versions that brought attempt rows (SQLite 7, PostgreSQL 3): a database of
the version before is migrated on open, and its runs' old retried steps still read."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
from postgres_server import fresh_schema, pg_schemas, server_url

import contengine as ce
from contengine.store.base import A_FAILED, AttemptRow, RunRow
from contengine.store.postgres import PostgresStore
from contengine.store.postgres.schema import MIGRATIONS as PG_MIGRATIONS
from contengine.store.postgres.schema import SCHEMA_VERSION as PG_SCHEMA_VERSION
from contengine.store.sqlite.schema import MIGRATIONS as SQLITE_MIGRATIONS
from contengine.store.sqlite.store import APPLICATION_ID
from contengine.store.sqlite.store import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION

__all__ = ["pg_schemas"]  # the fixture, used by name


def test_a_version_6_file_gains_attempt_rows_and_its_old_retries_still_read(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v6.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    for version in range(6):
        SQLITE_MIGRATIONS[version](conn)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 6")
    conn.execute("COMMIT")
    num = conn.execute(
        "INSERT INTO runs (id, workflow, status, args, created_at, updated_at, finished_at) "
        "VALUES ('old', 'w', 'completed', x'00', 1, 9, 9)"
    ).lastrowid
    assert num is not None
    # A step that took two attempts, logged before attempts had rows.
    conn.execute(
        "INSERT INTO log (id, kind, name, key, status, attempts, crashes, started_at, "
        "finished_at, outcome) VALUES (?, 'step', 's', 'k', 'completed', 2, 0, 2, 8, x'00')",
        (num << 32,),
    )
    conn.close()
    with ce.Engine(str(path)) as engine:
        assert engine.store.schema_version == SQLITE_SCHEMA_VERSION >= 7  # type: ignore[attr-defined]
        first, last = engine.attempts("old", 0)
        assert (first.number, first.outcome, first.started_at, first.ended_at) == (
            1,
            "failed",
            2.0,
            None,
        )
        assert (last.number, last.outcome, last.ended_at) == (2, "completed", 8.0)
        assert engine.store.load_attempts("old") == []
    with sqlite3.connect(path) as check:
        tables = {r[0] for r in check.execute("SELECT name FROM sqlite_master")}
    assert "attempts" in tables


def test_a_version_2_postgres_schema_gains_attempt_rows(pg_schemas: list[str]) -> None:
    url = server_url()
    schema = fresh_schema(pg_schemas)
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'SET LOCAL search_path TO "{schema}"')
        for version in (0, 1):
            for statement in PG_MIGRATIONS[version].split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute("INSERT INTO meta (key, value) VALUES ('version', '2')")
    store = PostgresStore(url, schema=schema)
    try:
        assert store.schema_version == PG_SCHEMA_VERSION >= 3
        run = RunRow("copied", "w", None, "completed", b"\x00", None, 1.0, 9.0, 9.0)
        tried = AttemptRow("copied", 0, 1, A_FAILED, 2.0, 3.0, None, "ValueError: x\x00y")
        store.insert_run(run, (), (), None, [tried])
        (back,) = store.load_attempts("copied")
        # A NUL in a text for people is kept as \x00 (PostgreSQL's text refuses it).
        assert back == AttemptRow("copied", 0, 1, A_FAILED, 2.0, 3.0, None, "ValueError: x\\x00y")
        assert store.load_attempts("copied", 1) == []
    finally:
        store.close()
