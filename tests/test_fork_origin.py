"""Where a fork came from: engine.fork records the run it copied (Run.forked_from), which
`show`, `show --json`, `runs --json`, the run page, export and import carry; databases of
the schema version before it (SQLite 7, PostgreSQL 3) gain the column on open."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Generator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from postgres_server import fresh_schema, pg_schemas, server_url
from stores import current

import contengine as ce
from contengine.cli.main import main
from contengine.cli.timeline import render_run
from contengine.store.postgres import PostgresStore
from contengine.store.postgres.schema import MIGRATIONS as PG_MIGRATIONS
from contengine.store.postgres.schema import SCHEMA_VERSION as PG_SCHEMA_VERSION
from contengine.store.sqlite.schema import MIGRATIONS as SQLITE_MIGRATIONS
from contengine.store.sqlite.store import APPLICATION_ID
from contengine.store.sqlite.store import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION

pytestmark = pytest.mark.both_stores

__all__ = ["pg_schemas"]  # the fixture, used by name


@ce.step(name="fork_origin.add")
def add(x: int) -> int:
    """Adds one."""
    return x + 1


@ce.workflow(name="fork_origin.twice")
def twice(x: int) -> Generator[Any, Any, int]:
    """Two steps."""
    a = yield add(x)
    return (yield add(a))


def test_a_fork_records_its_origin_and_every_view_shows_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "f.db"
    with ce.Engine(db) as engine:
        assert engine.run(twice, 1, id="origin") == 3
        fork = engine.fork("origin", 1, new_id="copy")
        assert fork.forked_from == "origin"
        assert engine.get_run("origin").forked_from is None
        assert fork.result() == 3
        page = render_run(engine, "copy")
        assert "<dt>forked from</dt><dd><code>origin</code></dd>" in page
        exported = engine.export_run("copy")
    assert exported["run"]["forked_from"] == "origin"
    target = current().target(db)
    capsys.readouterr()
    assert main(["show", "copy", "--db", target]) == 0
    assert "forked    from origin" in capsys.readouterr().out
    assert main(["show", "copy", "--db", target, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["forked_from"] == "origin"
    assert main(["runs", "--db", target, "--json"]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert (rows["origin"]["forked_from"], rows["copy"]["forked_from"]) == (None, "origin")

    # Export and import keep it; an export made before the field existed imports too.
    with ce.Engine(tmp_path / "other.db") as other:
        assert other.import_run(exported, id="moved").forked_from == "origin"
        del exported["run"]["forked_from"]
        assert other.import_run(exported, id="older").forked_from is None


@pytest.mark.sqlite_only(reason="the SQLite file format's migration")
def test_a_version_7_file_gains_the_column_and_its_runs_still_read(tmp_path: Path) -> None:
    path = tmp_path / "v7.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    for version in range(7):
        SQLITE_MIGRATIONS[version](conn)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 7")
    conn.execute("COMMIT")
    conn.execute(
        "INSERT INTO runs (id, workflow, status, args, created_at, updated_at, finished_at) "
        "VALUES ('old', 'w', 'completed', x'00', 1, 9, 9)"
    )
    conn.close()
    with ce.Engine(str(path)) as engine:
        assert engine.store.schema_version == SQLITE_SCHEMA_VERSION == 8  # type: ignore[attr-defined]
        assert engine.get_run("old").forked_from is None
        assert engine.get_run("old").status == "completed"


@pytest.mark.sqlite_only(reason="makes its own PostgreSQL schema")
def test_a_version_3_postgres_schema_gains_the_column(pg_schemas: list[str]) -> None:
    url = server_url()
    schema = fresh_schema(pg_schemas)
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'SET LOCAL search_path TO "{schema}"')
        for version in (0, 1, 2):
            for statement in PG_MIGRATIONS[version].split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute("INSERT INTO meta (key, value) VALUES ('version', '3')")
        conn.execute(
            "INSERT INTO runs (id, workflow, status, args, created_at, updated_at) "
            "VALUES ('old', 'w', 'pending', '\\x00', 1, 1)"
        )
    store = PostgresStore(url, schema=schema)
    try:
        assert store.schema_version == PG_SCHEMA_VERSION == 4
        row = store.get_run("old")
        assert row is not None and row.forked_from is None and row.status == "pending"
    finally:
        store.close()
