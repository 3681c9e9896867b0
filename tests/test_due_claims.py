"""How claims find due work: the runs_due index, the read before a claim's write, and
the schema versions that brought them (SQLite 6, PostgreSQL 2)."""

from __future__ import annotations

import math
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from postgres_server import drop_schema, fresh_schema, pg_schemas, server_url

import contengine as ce
from contengine.store.base import FINISHED, RUN_STATUSES, RunRow, Store, WorkerRow
from contengine.store.postgres import PostgresStore
from contengine.store.postgres.schema import MIGRATIONS as PG_MIGRATIONS
from contengine.store.postgres.schema import SCHEMA_VERSION as PG_SCHEMA_VERSION
from contengine.store.sqlite.schema import MIGRATIONS as SQLITE_MIGRATIONS
from contengine.store.sqlite.store import APPLICATION_ID, SQLiteStore
from contengine.store.sqlite.store import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION

__all__ = ["pg_schemas"]  # a fixture

DATA = Path(__file__).parent / "data"
NOW = 1000.0


def worker(worker_id: str, expires_at: float = 10_000.0) -> WorkerRow:
    """A worker on another host: only its expiry says whether it is alive."""
    return WorkerRow(worker_id, "elsewhere", 1, None, 100.0, expires_at)


def run(
    run_id: str, status: str = "pending", due_at: float | None = None, priority: int = 0
) -> RunRow:
    return RunRow(
        id=run_id, workflow="w", ref=None, status=status, args=b"a", args_key=None,
        created_at=1.0, updated_at=1.0, due_at=due_at, priority=priority,
    )  # fmt: skip


# -- claims against a model ------------------------------------------------------------

DUE_TIMES = st.one_of(
    st.none(),
    st.sampled_from([NOW, -math.inf, math.inf, NOW - 1e-6, NOW + 1e-6]),
    st.floats(NOW - 50, NOW + 50),
)
RUNS = st.lists(
    st.tuples(st.sampled_from(RUN_STATUSES), DUE_TIMES, st.integers(-1, 2)), max_size=25
)


def due(status: str, due_at: float | None) -> bool:
    return status not in FINISHED and (due_at is None or due_at <= NOW)


def check_claims(store: Store, runs: list[tuple[str, float | None, int]], limit: int) -> None:
    """A claim takes the due runs, highest priority first then oldest, up to limit;
    runnable() lists them oldest first; next_due() is the earliest finite time to come."""
    for i, (status, due_at, priority) in enumerate(runs):
        store.create_run(run(f"r{i:02}", status, due_at, priority))
    expected = sorted(
        (-priority, i) for i, (status, due_at, priority) in enumerate(runs) if due(status, due_at)
    )
    ids = [f"r{i:02}" for _, i in expected]
    assert store.runnable(NOW) == sorted(ids)
    later = [d for s, d, _ in runs if s not in FINISHED and d is not None and NOW < d < math.inf]
    assert store.next_due(after=NOW) == (min(later) if later else None)
    claims = store.claim(worker("a"), NOW, 150.0, limit)
    assert [c.run.id for c in claims] == ids[:limit]
    rest = store.claim(worker("b"), NOW, 150.0, len(runs) + 1)
    assert [c.run.id for c in rest] == ids[limit:]  # a is alive: its runs stay with it


@settings(max_examples=60, deadline=None)
@given(runs=RUNS, limit=st.integers(1, 8))
def test_sqlite_claims_take_what_the_model_says(
    runs: list[tuple[str, float | None, int]], limit: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "c.db")
        try:
            check_claims(store, runs, limit)
        finally:
            store.close()


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(runs=RUNS, limit=st.integers(1, 8))
def test_postgres_claims_take_what_the_model_says(
    pg_schemas: list[str], runs: list[tuple[str, float | None, int]], limit: int
) -> None:
    schema = fresh_schema(pg_schemas)
    store = PostgresStore(server_url(), schema=schema)
    try:
        check_claims(store, runs, limit)
    finally:
        store.close()
        drop_schema(schema)


# -- no write transaction when nothing is due --------------------------------------------


@pytest.fixture
def locked_file(tmp_path: Path) -> Iterator[tuple[SQLiteStore, sqlite3.Connection]]:
    """A store on a file (its worker "a" on record, nothing due) and a second connection
    to the file, which the test uses to hold the write lock."""
    store = SQLiteStore(tmp_path / "l.db", busy_timeout=0.05)
    store.create_run(run("asleep", "sleeping", NOW + 100))
    store.create_run(run("never", "waiting", math.inf))
    assert store.claim(worker("a"), NOW, 150.0, 8) == []  # on record now
    other = sqlite3.connect(tmp_path / "l.db", isolation_level=None)
    try:
        yield store, other
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
        store.close()


def test_a_claim_that_finds_nothing_due_leaves_the_write_lock_alone(
    locked_file: tuple[SQLiteStore, sqlite3.Connection],
) -> None:
    """While another connection holds the write lock, a claim with nothing due returns
    at once (it would raise DatabaseLocked had it asked for the lock); so do
    runnable() and next_due(), and run_until_idle() of an engine on the file."""
    store, other = locked_file
    other.execute("BEGIN IMMEDIATE")
    assert store.claim(worker("a"), NOW, 150.0, 8) == []
    assert store.runnable(NOW) == [] and store.next_due(after=NOW) == NOW + 100
    other.execute("ROLLBACK")


def test_a_claim_that_finds_a_due_run_takes_the_write_lock(
    locked_file: tuple[SQLiteStore, sqlite3.Connection],
) -> None:
    store, other = locked_file
    store.create_run(run("due", "sleeping", NOW))
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(ce.DatabaseLocked):
        store.claim(worker("a"), NOW, 150.0, 8)
    other.execute("ROLLBACK")
    assert [c.run.id for c in store.claim(worker("a"), NOW, 150.0, 8)] == ["due"]


def test_a_worker_off_record_takes_the_write_lock_even_with_nothing_due(
    locked_file: tuple[SQLiteStore, sqlite3.Connection],
) -> None:
    """A first claim puts its worker on record (the engine counts on it), due or not."""
    store, other = locked_file
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(ce.DatabaseLocked):
        store.claim(worker("new"), NOW, 150.0, 8)
    other.execute("ROLLBACK")
    assert store.claim(worker("new"), NOW, 150.0, 8) == []
    assert "new" in {w.id for w in store.workers()}


def test_a_run_held_by_a_dead_worker_is_due_to_the_read_too(
    locked_file: tuple[SQLiteStore, sqlite3.Connection],
) -> None:
    """The read before the claim judges holders as the claim does: a run whose holder's
    lease ran out is due (the claim goes on to the write lock and takes it)."""
    store, other = locked_file
    store.create_run(run("held", "running"))
    (claim,) = store.claim(worker("b", expires_at=300.0), NOW, 150.0, 8)
    assert store.claim(worker("a"), NOW, 150.0, 8) == []  # b alive at wall 150
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(ce.DatabaseLocked):  # b dead at wall 400: held is due
        store.claim(worker("a"), NOW, 400.0, 8)
    other.execute("ROLLBACK")
    (taken,) = store.claim(worker("a"), NOW, 400.0, 8)
    assert taken.run.id == "held" and taken.lease > claim.lease


def test_after_a_claim_that_took_all_it_asked_for_the_next_takes_the_write_lock(
    locked_file: tuple[SQLiteStore, sqlite3.Connection],
) -> None:
    """A full claim says more may be due (a backlog): the next claim skips the read and
    goes to the write lock; once a claim comes back short, claims read first again."""
    store, other = locked_file
    store.create_run(run("d1"))
    store.create_run(run("d2"))
    assert len(store.claim(worker("a"), NOW, 150.0, 2)) == 2
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(ce.DatabaseLocked):
        store.claim(worker("a"), NOW, 150.0, 2)
    other.execute("ROLLBACK")
    assert store.claim(worker("a"), NOW, 150.0, 2) == []  # short: read first from now on
    other.execute("BEGIN IMMEDIATE")
    assert store.claim(worker("a"), NOW, 150.0, 2) == []
    other.execute("ROLLBACK")


def test_a_postgres_claim_that_finds_nothing_due_takes_no_lock(pg_schemas: list[str]) -> None:
    """While another session holds a lock on the workers table that every claim's
    transaction needs (it writes the claimer's row), a claim with nothing due returns;
    one with a due run waits for the lock (seen in pg_stat_activity), then claims."""
    url = server_url()
    schema = fresh_schema(pg_schemas)
    store = PostgresStore(url, schema=schema)
    try:
        store.create_run(run("asleep", "sleeping", NOW + 100))
        assert store.claim(worker("a"), NOW, 150.0, 8) == []  # on record now
        with psycopg.connect(url) as other:
            other.execute(f'LOCK TABLE "{schema}".workers IN SHARE ROW EXCLUSIVE MODE')
            got: list[Any] = []
            t = threading.Thread(target=lambda: got.append(store.claim(worker("a"), NOW, 150.0, 8)))
            t.start()
            t.join(30)
            assert not t.is_alive() and got == [[]]
            store.create_run(run("due", "sleeping", NOW))
            got.clear()
            t = threading.Thread(target=lambda: got.append(store.claim(worker("a"), NOW, 150.0, 8)))
            t.start()

            def waits() -> bool:
                row = other.execute(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = %s::regclass",
                    (f'"{schema}".workers',),
                ).fetchone()
                return row is not None and row[0] > 0

            assert wait_until(waits, timeout=30)
            other.rollback()
            t.join(30)
        assert [c.run.id for c in got[0]] == ["due"]
    finally:
        store.close()


# -- the schema versions that brought the index -------------------------------------------


def _indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}


def test_a_version_4_file_gains_the_due_index_and_its_waiting_run_wakes(tmp_path: Path) -> None:
    """tests/data/keyword_calls.db (schema 4, one run waiting without a timeout) opens at
    the current version, with runs_due and without runs_to_claim; the run is due only
    once a signal comes."""
    path = tmp_path / "old.db"
    shutil.copyfile(DATA / "keyword_calls.db", path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 4
    store = SQLiteStore(path)
    try:
        assert store.schema_version == SQLITE_SCHEMA_VERSION >= 7
        assert "runs_due" in _indexes(path) and "runs_to_claim" not in _indexes(path)
        assert store.runnable(1e12) == [] and store.next_due() is None
        assert store.claim(worker("a"), 1e12, 150.0, 8) == []
        store.send_signal("old", "go", b"x", NOW)
        assert [c.run.id for c in store.claim(worker("a"), NOW, 150.0, 8)] == ["old"]
    finally:
        store.close()


def test_a_version_5_file_is_migrated_with_its_runs_claimable(tmp_path: Path) -> None:
    path = tmp_path / "v5.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    for version in range(5):
        SQLITE_MIGRATIONS[version](conn)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 5")
    conn.execute("COMMIT")
    conn.execute(
        "INSERT INTO runs (id, workflow, status, args, created_at, updated_at, due_at, "
        "priority) VALUES ('late', 'w', 'sleeping', x'00', 1, 1, ?, 0), "
        "('soon', 'w', 'sleeping', x'00', 2, 2, ?, 0), ('new', 'w', 'pending', x'00', 3, 3, "
        "NULL, 1)",
        (NOW + 10, NOW),
    )
    conn.close()
    assert "runs_to_claim" in _indexes(path)
    store = SQLiteStore(path)
    try:
        assert store.schema_version == SQLITE_SCHEMA_VERSION
        assert "runs_due" in _indexes(path) and "runs_to_claim" not in _indexes(path)
        assert [c.run.id for c in store.claim(worker("a"), NOW, 150.0, 8)] == ["new", "soon"]
        assert store.next_due(after=NOW) == NOW + 10
    finally:
        store.close()


def test_a_version_1_postgres_schema_is_migrated_with_its_runs_claimable(
    pg_schemas: list[str],
) -> None:
    url = server_url()
    schema = fresh_schema(pg_schemas)
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'SET LOCAL search_path TO "{schema}"')
        for statement in PG_MIGRATIONS[0].split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("INSERT INTO meta (key, value) VALUES ('version', '1')")
        conn.execute(
            "INSERT INTO runs (id, workflow, status, args, created_at, updated_at, due_at, "
            "priority) VALUES ('late', 'w', 'sleeping', '\\x00', 1, 1, %s, 0), "
            "('soon', 'w', 'sleeping', '\\x00', 2, 2, %s, 0), "
            "('new', 'w', 'pending', '\\x00', 3, 3, NULL, 1), "
            "('never', 'w', 'waiting', '\\x00', 4, 4, 'Infinity', 5)",
            (NOW + 10, NOW),
        )
    store = PostgresStore(url, schema=schema)
    try:
        assert store.schema_version == PG_SCHEMA_VERSION >= 3
        assert [c.run.id for c in store.claim(worker("a"), NOW, 150.0, 8)] == ["new", "soon"]
        assert store.next_due(after=NOW) == NOW + 10
        with psycopg.connect(url) as conn:
            found = conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = %s", (schema,)
            ).fetchall()
        assert "runs_due" in {r[0] for r in found}
    finally:
        store.close()
