"""Plain PostgreSQL for `contengine bench --db postgresql://...`: the commit floor, and
schemas of the benchmark's own, made and dropped (only this package talks to psycopg)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg
from psycopg import sql

from ...errors import DatabaseError
from .connection import CONNECT_TIMEOUT, unreachable
from .url import redacted, split_url

PAYLOAD = b"x" * 100  # the floor's row: about the size of a step's log entry


def new_schema_name() -> str:
    """A schema name no one uses yet (the benchmark's own, dropped after)."""
    return f"contengine_bench_{uuid.uuid4().hex[:12]}"


def _connect(url: str) -> psycopg.Connection[Any]:
    base, _ = split_url(url, None)
    try:
        return psycopg.connect(base, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
    except psycopg.Error as exc:
        raise unreachable(redacted(url), exc, url) from exc


def drop_schema(url: str, schema: str) -> None:
    """Drop a schema the benchmark made, with everything in it."""
    with _connect(url) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def server_info(url: str) -> dict[str, str]:
    """The server's version and the settings that decide what a commit costs."""
    with _connect(url) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version'), current_setting('fsync'), "
            "current_setting('wal_sync_method'), current_setting('synchronous_commit')"
        ).fetchone()
    assert row is not None
    keys = ("version", "fsync", "wal_sync_method", "synchronous_commit_default")
    return dict(zip(keys, (str(v) for v in row), strict=True))


def commit_floor(url: str, n: int) -> float:
    """Commits/s of n one-row INSERTs, each a transaction of its own committed with
    synchronous_commit on (autocommit: the INSERT and its COMMIT are one round trip),
    into a fresh table of a fresh schema; creating it is not timed."""
    schema = new_schema_name()
    try:
        with _connect(url) as conn:
            conn.execute("SET synchronous_commit TO on")
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            table = sql.Identifier(schema, "floor")
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                    "payload bytea NOT NULL)"
                ).format(table)
            )
            insert = sql.SQL("INSERT INTO {} (payload) VALUES (%s)").format(table).as_string(conn)
            start = time.perf_counter()
            for _ in range(n):
                conn.execute(insert, (PAYLOAD,))
            return n / (time.perf_counter() - start)
    except psycopg.Error as exc:
        raise DatabaseError(f"the commit floor at {redacted(url)}: {exc}") from exc
    finally:
        drop_schema(url, schema)
