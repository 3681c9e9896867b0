"""The PostgreSQL store's own machinery: opening (URL, schema, versions, an absent
server), fencing under a concurrent claim, a dropped connection, and an engine on it.

The store's semantics are tested by tests/test_store_contract.py (its postgres kind);
its backup, and runs moved between it and SQLite, by tests/test_postgres_backup.py.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Generator, Iterator
from typing import Any

import psycopg
import pytest
from helpers import wait_until
from postgres_server import fresh_schema, pg_schemas, server_url

import contengine as ce
from contengine.store.base import E_COMPLETED, E_RUNNING, EntryRow, Progress, RunRow, WorkerRow
from contengine.store.postgres import PostgresStore
from contengine.store.postgres.schema import SCHEMA_VERSION
from contengine.store.postgres.url import redacted, split_url

__all__ = ["pg_schemas"]  # a fixture

Flow = Generator[Any, Any, Any]


@pytest.fixture
def url() -> str:
    """The test server's URL."""
    return server_url()


@pytest.fixture
def schema(pg_schemas: list[str]) -> str:
    """A fresh schema name, dropped after the test."""
    return fresh_schema(pg_schemas)


@pytest.fixture
def store(url: str, schema: str) -> Iterator[PostgresStore]:
    """A store in a fresh schema."""
    s = PostgresStore(url, schema=schema)
    yield s
    s.close()


def unused_port() -> int:
    """A local TCP port nothing listens on (just freed by the OS)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(run_id: str) -> RunRow:
    """A pending run with plain values."""
    return RunRow(run_id, "flow", None, "pending", b"args", None, 1.0, 1.0)


def step(run_id: str, position: int) -> EntryRow:
    """A step in flight at position."""
    return EntryRow(run_id, position, "step", "s", "k", "k", E_RUNNING, 1, 0, 2.0)


# -- opening -------------------------------------------------------------------------


def test_a_server_that_is_down_gives_a_clear_error_naming_it_without_the_password() -> None:
    target = f"postgresql://postgres:hunter2@127.0.0.1:{unused_port()}/test"
    with pytest.raises(ce.DatabaseError) as caught:
        ce.Engine(target)
    message = str(caught.value)
    assert "cannot connect to PostgreSQL at postgresql://postgres:***@127.0.0.1:" in message
    assert "hunter2" not in message
    assert "Check that the server is running" in message


def test_the_cli_says_so_in_one_line_without_a_traceback() -> None:
    target = f"postgresql://postgres:hunter2@127.0.0.1:{unused_port()}/test"
    done = subprocess.run(
        [sys.executable, "-m", "contengine", "--db", target, "runs"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot connect to PostgreSQL" in lines[0]
    assert "Traceback" not in done.stderr and "hunter2" not in done.stderr


def test_the_schema_comes_from_the_argument_or_the_url_and_must_be_a_plain_name() -> None:
    assert split_url("postgresql://u@h/db", None) == ("postgresql://u@h/db", "contengine")
    assert split_url("postgresql://u@h/db?schema=billing&sslmode=disable", None) == (
        "postgresql://u@h/db?sslmode=disable",
        "billing",
    )
    assert split_url("postgresql://u@h/db?schema=billing", "billing")[1] == "billing"
    with pytest.raises(ValueError, match="given twice"):
        split_url("postgresql://u@h/db?schema=billing", "other")
    with pytest.raises(ValueError, match="plain PostgreSQL name"):
        split_url("postgresql://u@h/db", 'x"; DROP TABLE runs; --')
    with pytest.raises(ValueError, match="PostgreSQL URL"):
        ce.Engine(":memory:", schema="billing")
    assert redacted("postgresql://u:secret@h:5/db") == "postgresql://u:***@h:5/db"
    assert redacted("postgresql://u@h/db?password=secret&sslmode=require") == (
        "postgresql://u@h/db?password=***&sslmode=require"
    )
    assert redacted("postgresql://u@h/db?sslmode=require") == "postgresql://u@h/db?sslmode=require"
    # The other parameters go to libpq as written: it decodes %XX, not "+".
    assert split_url("postgresql://u@h/db?options=-c%20a%3Db&password=x+y&schema=s", None) == (
        "postgresql://u@h/db?options=-c%20a%3Db&password=x+y",
        "s",
    )


def test_libpq_options_in_the_url_reach_the_server(url: str, schema: str) -> None:
    """As notes/decisions.md suggests for sessions frozen inside a transaction."""
    options = "options=-c%20idle_in_transaction_session_timeout%3D30s"
    store = PostgresStore(f"{url}?{options}&schema={schema}")
    try:
        conn = store._writer.conn
        assert conn is not None
        setting = conn.execute("SHOW idle_in_transaction_session_timeout").fetchone()
        assert setting == ("30s",)
    finally:
        store.close()


def test_a_schema_of_a_newer_contengine_is_refused_and_left_untouched(
    url: str, schema: str
) -> None:
    PostgresStore(url, schema=schema).close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"UPDATE \"{schema}\".meta SET value = '99' WHERE key = 'version'")
    with pytest.raises(ce.DatabaseError) as caught:
        PostgresStore(url, schema=schema)
    message = str(caught.value)
    assert f"schema {schema!r}" in message and "newer contengine" in message
    assert "schema version 99" in message and "upgrade contengine" in message
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(f"SELECT value FROM \"{schema}\".meta WHERE key = 'version'")
        assert row.fetchone() == ("99",)


def test_a_schema_of_another_application_is_refused(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'CREATE TABLE "{schema}".invoices (id int)')
    with pytest.raises(ce.DatabaseError, match="another application"):
        PostgresStore(url, schema=schema)


def test_stores_opening_a_new_schema_at_once_create_it_once(url: str, schema: str) -> None:
    stores: list[PostgresStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            stores.append(PostgresStore(url, schema=schema))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and {s.schema_version for s in stores} == {SCHEMA_VERSION}
    for s in stores:
        s.close()


# -- fencing -------------------------------------------------------------------------


def waiting_on_a_lock(url: str, pid: int | None = None, behind: int | None = None) -> bool:
    """Whether the session of pid waits for a lock now, or (behind) some session waits
    for a lock that the session of that pid holds: never another test's sessions."""
    with psycopg.connect(url, autocommit=True) as conn:
        if behind is not None:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                (behind,),
            ).fetchone()
        else:
            row = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND pid = %s", (pid,)
            ).fetchone()
        return row is not None and row[0] > 0


@pytest.mark.parametrize("batched", [False, True])
def test_a_write_racing_a_claim_that_commits_first_is_fenced_out(
    store: PostgresStore, url: str, schema: str, batched: bool
) -> None:
    """A claim by another session, under way while the old holder writes, commits
    first: the old holder's write must see the new lease (it waits for the row the
    claim holds) and write nothing. A check of the lease by a plain read would pass
    (the claim is not committed yet) and write under a lease taken over."""
    a = WorkerRow("a", "elsewhere", 1, None, 0.0, 10_000.0)
    store.create_run(run("r1"))
    store.create_run(run("r2"))
    (c1,) = store.claim(a, 10.0, 10.0, 1, run_id="r1")
    (c2,) = store.claim(a, 10.0, 10.0, 1, run_id="r2")
    other = psycopg.connect(url)  # another worker's session, mid-claim
    try:
        other.execute(f'SET search_path TO "{schema}"')
        other.execute("UPDATE runs SET owner = 'b', lease = lease + 1 WHERE id = 'r1'")
        outcome: list[object] = []

        def write() -> None:
            stale = Progress("r1", insert=step("r1", 0), lease=("a", c1.lease))
            if not batched:
                try:
                    outcome.append(store.commit(stale))
                except Exception as exc:  # noqa: BLE001 - checked below
                    outcome.append(exc)
                return
            fresh = Progress("r2", insert=step("r2", 0), lease=("a", c2.lease))
            tickets = [store.commit_later(stale), store.commit_later(fresh)]
            store.flush()
            outcome.extend(t.error for t in tickets)

        writer = threading.Thread(target=write)
        writer.start()
        held_by = other.info.backend_pid
        assert wait_until(lambda: waiting_on_a_lock(url, behind=held_by), timeout=30)
        other.commit()
        writer.join()
    finally:
        other.close()
    assert isinstance(outcome[0], ce.LeaseLost)
    assert store.load_log("r1") == []
    if batched:  # the other run of the batch is written: only r1 was fenced out
        assert outcome[1] is None
        assert [e.position for e in store.load_log("r2")] == [0]


def test_a_claim_skips_a_run_whose_write_is_under_way(store: PostgresStore, url: str) -> None:
    """A run whose row another session holds locked is not claimed (SKIP LOCKED): the
    claim neither waits for it nor takes it."""
    store.create_run(run("r1"))
    with psycopg.connect(url) as other:
        other.execute(f'SET search_path TO "{store.schema}"')
        other.execute("SELECT 1 FROM runs WHERE id = 'r1' FOR UPDATE")
        b = WorkerRow("b", "elsewhere", 1, None, 0.0, 10_000.0)
        assert store.claim(b, 10.0, 10.0, 5) == []
    assert [c.run.id for c in store.claim(b, 10.0, 10.0, 5)] == ["r1"]


# -- connections -----------------------------------------------------------------------


def backends(store: PostgresStore) -> list[int]:
    """The server sessions of the store's connections (writer, reader) now."""
    return [link.conn.info.backend_pid for link in (store._writer, store._reader) if link.conn]


def test_a_connection_the_server_closed_while_idle_is_replaced_before_the_call(
    store: PostgresStore, url: str
) -> None:
    """As after a restart of the server: the next call makes a new connection and goes
    on, rather than fail on the old one."""
    store.create_run(run("r1"))
    assert store.get_run("r1") is not None
    # The store's own sessions only (the server may serve others).
    pids = backends(store)
    assert len(pids) == 2
    with psycopg.connect(url, autocommit=True) as conn:
        # With a timeout, pg_terminate_backend waits for the sessions to be gone.
        done = conn.execute(
            "SELECT bool_and(pg_terminate_backend(pid, 30000)) FROM unnest(%s::int[]) AS pid",
            (pids,),
        ).fetchone()
        assert done == (True,)
    store.commit(Progress("r1", insert=step("r1", 0)))
    assert [e.position for e in store.load_log("r1")] == [0]
    assert set(backends(store)).isdisjoint(pids)


def test_a_connection_lost_during_a_call_fails_that_call_and_the_next_one_reconnects(
    store: PostgresStore, url: str, schema: str
) -> None:
    """A write waiting for a row lock when its session is ended: DatabaseError, nothing
    written; the next write makes a new connection."""
    store.create_run(run("r1"))
    with psycopg.connect(url, autocommit=True) as killer, psycopg.connect(url) as other:
        other.execute(f'SET search_path TO "{schema}"')
        other.execute("SELECT 1 FROM runs WHERE id = 'r1' FOR UPDATE")
        failure: list[BaseException] = []

        def write() -> None:
            try:
                store.commit(Progress("r1", insert=step("r1", 0)))
            except BaseException as exc:  # noqa: BLE001 - checked below
                failure.append(exc)

        (writer_pid,) = backends(store)  # only the writer has been used
        writer = threading.Thread(target=write)
        writer.start()
        assert wait_until(lambda: waiting_on_a_lock(url, writer_pid), timeout=30)
        killer.execute("SELECT pg_terminate_backend(%s, 30000)", (writer_pid,))
        writer.join(30)
        other.rollback()
    assert len(failure) == 1 and isinstance(failure[0], ce.DatabaseError), failure
    assert "connection was lost" in str(failure[0])
    assert store.load_log("r1") == []
    store.commit(Progress("r1", insert=step("r1", 0)))  # reconnected
    assert [e.position for e in store.load_log("r1")] == [0]


# -- an engine on the server ---------------------------------------------------------------


@ce.step
def double(x: int) -> int:
    """A step."""
    return 2 * x


@ce.workflow
def doubled_twice(x: int) -> Flow:
    """Two steps."""
    y = yield double(x)
    return (yield double(y))


def test_an_engine_on_a_url_runs_a_workflow_and_a_second_engine_reads_it(
    url: str, schema: str
) -> None:
    with ce.Engine(f"{url}?schema={schema}", workflows=[doubled_twice]) as engine:
        assert isinstance(engine.store, PostgresStore) and engine.store.schema == schema
        assert engine.run(doubled_twice, 5, id="d-1") == 20
    with ce.Engine(url, schema=schema, durability="normal") as again:
        (entry_0, entry_1) = again.history("d-1")
        assert (entry_0.status, entry_1.status) == (E_COMPLETED, E_COMPLETED)
        assert again.start(doubled_twice, 5, id="d-1").result() == 20
