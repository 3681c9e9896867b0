"""The PostgreSQL store under faults: sessions ended while a worker drives runs, a
server restart, a worker frozen inside a transaction, wrong credentials, a missing
role or database. (A server down at start and a schema of a newer version:
tests/test_postgres.py.)

The tests that restart the server or make roles use a server of their own
(tests/private_postgres.py); the others the shared one, in a fresh schema each.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import uuid
from collections import defaultdict
from collections.abc import Generator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from helpers import wait_until
from postgres_server import fresh_schema, pg_schemas, server_url
from private_postgres import PrivateServer, private_postgres

import contengine as ce
from contengine.store.base import RunRow, WorkerRow
from contengine.store.postgres import PostgresStore

__all__ = ["pg_schemas", "private_postgres"]  # fixtures

Flow = Generator[Any, Any, Any]
WAIT = 60.0  # seconds any one thing may take before the test gives up


@pytest.fixture
def url() -> str:
    """The shared test server's URL."""
    return server_url()


@pytest.fixture
def schema(pg_schemas: list[str]) -> str:
    """A fresh schema name, dropped after the test."""
    return fresh_schema(pg_schemas)


def cli(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`contengine --db db args...` in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "contengine", "--db", db, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=WAIT,
    )


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The CLI's error, checked to be one line without a traceback (exit code 1)."""
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


# -- sessions ended while a worker drives runs ------------------------------------------

LEDGER: list[tuple[str, int, int]] = []  # (run id, position, attempt) of every execution
LEDGER_LOCK = threading.Lock()


@ce.step(name="pf.bump")
def bump(x: int) -> int:
    """x + 1, noted in the ledger."""
    s = ce.current_step()
    with LEDGER_LOCK:
        LEDGER.append((s.run_id, s.position, s.attempt))
    return x + 1


@ce.workflow(name="pf.flow")
def flow(n: int) -> Flow:
    """A step, a gather of two, a step: n + 4."""
    a = yield bump(n)
    b, c = yield ce.gather(bump(a), bump(a))
    return (yield bump(b + c - a))


TERMINATIONS = 4  # fewer than the DB errors in a row that set a run aside in a worker
THREADS = 4
IN_FLIGHT = 2 * THREADS  # a thread runs a step, or waits for a gather of two


def sessions(conn: psycopg.Connection[Any], name: str) -> list[int]:
    """The server sessions of the application name."""
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (name,)
    ).fetchall()
    return [int(r[0]) for r in rows]


def test_sessions_ended_under_a_working_engine_lose_nothing(url: str, schema: str) -> None:
    """pg_terminate_backend on every session of an engine, again and again, while its
    worker drives runs: every run completes with its result, every committed step ran
    once with its attempt, and the only other executions are the ones cut short, at
    most one per step in flight per termination."""
    LEDGER.clear()
    name = f"ce-faults-{uuid.uuid4().hex[:8]}"
    engine = ce.Engine(f"{url}?schema={schema}&application_name={name}", poll_interval=0.05)
    try:
        runs = [engine.start(flow, n, id=f"f{n}") for n in range(60)]
        ended = 0
        with psycopg.connect(url, autocommit=True) as admin, engine.worker(threads=THREADS):
            for _ in range(TERMINATIONS):
                seen = len(LEDGER)
                assert wait_until(lambda s=seen: len(LEDGER) >= s + 12, timeout=WAIT)
                for pid in sessions(admin, name):
                    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                    ended += 1
            for run in runs:
                assert run.result(timeout=WAIT) == run_number(run.id) + 4
        assert ended >= TERMINATIONS
        executions: dict[tuple[str, int], list[int]] = defaultdict(list)
        for run_id, position, attempt in LEDGER:
            executions[(run_id, position)].append(attempt)
        extra = 0
        for run in runs:
            assert run.note is None
            for e in engine.history(run.id):
                if e.kind != "step":
                    continue
                attempts = executions.pop((run.id, e.position))
                where = f"{run.id} position {e.position}: ran {attempts}, logged {e.attempts}"
                assert attempts.count(e.attempts) == 1 and max(attempts) == e.attempts, where
                assert sorted(set(attempts)) == sorted(attempts), where
                extra += len(attempts) - 1
        assert not executions
        print(f"{ended} sessions ended; {extra} executions cut short")
        assert extra <= TERMINATIONS * IN_FLIGHT
    finally:
        engine.close()


def run_number(run_id: str) -> int:
    """n of run f{n}."""
    return int(run_id[1:])


# -- a server restart ------------------------------------------------------------------


@ce.workflow(name="pf.once")
def once(n: int) -> Flow:
    """One step: n + 1."""
    return (yield bump(n))


def test_after_a_server_restart_the_next_calls_go_on_on_new_connections(
    private_postgres: PrivateServer,
) -> None:
    """The engine's connections were closed by the restart while idle: its next calls
    (a write and reads) make new ones, and none of them fails."""
    with ce.Engine(private_postgres.url()) as engine:
        assert engine.run(once, 1, id="before") == 2
        assert engine.get_run("before").status == "completed"
        private_postgres.restart()
        run = engine.start(once, 2, id="after")
        assert engine.get_run("before").result() == 2
        assert engine.run(once, 2, id="after") == 3 and run.status == "completed"


def test_a_worker_says_once_that_claims_fail_while_the_server_is_down_and_when_they_work(
    private_postgres: PrivateServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Not a warning per poll while the server is away: one, and one when it is back."""
    caplog.set_level(logging.DEBUG, logger="contengine")

    def said(text: str, level: int) -> int:
        return sum(text in r.getMessage() and r.levelno == level for r in caplog.records)

    engine = ce.Engine(private_postgres.url(), poll_interval=0.02)
    with engine, engine.worker(threads=2):
        assert engine.start(once, 1, id="before").result(timeout=WAIT) == 2
        private_postgres.stop()
        assert wait_until(lambda: said("could not claim runs", logging.DEBUG) >= 3, WAIT)
        private_postgres.start()
        assert wait_until(lambda: said("claims runs again", logging.WARNING) == 1, WAIT)
        assert engine.start(once, 2, id="after").result(timeout=WAIT) == 3
    assert said("could not claim runs", logging.WARNING) == 1


# -- a worker frozen inside a transaction ---------------------------------------------------


def pending(run_id: str) -> RunRow:
    """A pending run with plain values."""
    return RunRow(run_id, "flow", None, "pending", b"args", None, 1.0, 1.0)


def test_a_worker_frozen_inside_a_transaction_holds_up_no_other_workers_claims(
    url: str, schema: str
) -> None:
    """Worker a's lease has run out while its process is frozen in the middle of a
    heartbeat (its worker row locked) and of a write to r1 (r1's row locked): b's claim
    neither waits for a's row nor for r1 (it takes r2 at once), and takes r1 too once a
    is gone."""
    a = WorkerRow("a", "host-a", 1, None, 0.0, 100.0)
    b = WorkerRow("b", "host-b", 1, None, 0.0, 10_000.0)
    store = PostgresStore(url, schema=schema)
    try:
        with psycopg.connect(url) as frozen:
            store.create_run(pending("r1"))
            store.create_run(pending("r2"))
            assert {c.run.id for c in store.claim(a, 10.0, 10.0, 5)} == {"r1", "r2"}
            frozen.execute(f'SET search_path TO "{schema}"')
            frozen.execute("UPDATE workers SET expires_at = 500 WHERE id = 'a'")
            frozen.execute("SELECT 1 FROM runs WHERE id = 'r1' FOR UPDATE")
            claimed: list[list[str]] = []
            claimer = threading.Thread(
                target=lambda: claimed.append([c.run.id for c in store.claim(b, 200.0, 200.0, 5)])
            )
            claimer.start()
            claimer.join(WAIT)
            try:
                assert claimed == [["r2"]], "the claim waited for the frozen transaction"
            finally:
                frozen.rollback()  # the frozen process's session ends: its locks go
                claimer.join(WAIT)
            assert [c.run.id for c in store.claim(b, 200.0, 200.0, 5)] == ["r1"]
    finally:
        store.close()


# -- logins ------------------------------------------------------------------------------


def test_a_wrong_password_gives_a_clear_error_naming_the_url_without_it(
    private_postgres: PrivateServer,
) -> None:
    private_postgres.sql("CREATE ROLE alice LOGIN PASSWORD 'right-one'")
    private_postgres.sql("GRANT CREATE ON DATABASE test TO alice")
    port = private_postgres.port
    good = f"postgresql://alice:right-one@127.0.0.1:{port}/test"
    with ce.Engine(good) as engine:  # the role works with its password
        assert engine.run(once, 1, id="alice") == 2
    for wrong in (
        f"postgresql://alice:wrong-one@127.0.0.1:{port}/test",
        f"postgresql://alice@127.0.0.1:{port}/test?password=wrong-one",
    ):
        with pytest.raises(ce.DatabaseError) as caught:
            ce.Engine(wrong)
        message = str(caught.value)
        assert "cannot connect to PostgreSQL at postgresql://alice" in message
        assert f"127.0.0.1:{port}/test" in message and "***" in message
        assert 'password authentication failed for user "alice"' in message
        assert "wrong-one" not in message and "right-one" not in message
        line = one_line_error(cli(wrong, "runs"))
        assert 'password authentication failed for user "alice"' in line
        assert "wrong-one" not in line and "***" in line


@pytest.mark.parametrize(
    ("part", "said"),
    [("user", 'role "{name}" does not exist'), ("database", 'database "{name}" does not exist')],
)
def test_a_missing_role_or_database_gives_a_clear_one_line_error(
    url: str, part: str, said: str
) -> None:
    name = f"ce_missing_{uuid.uuid4().hex[:8]}"
    parts = urlsplit(url)
    user, database = (name, parts.path) if part == "user" else (parts.username, f"/{name}")
    target = urlunsplit(parts._replace(netloc=f"{user}:hunter2@{parts.hostname}:{parts.port}",
                                       path=database))  # fmt: skip
    with pytest.raises(ce.DatabaseError) as caught:
        ce.Engine(target)
    message = str(caught.value)
    assert said.format(name=name) in message
    assert f"cannot connect to PostgreSQL at {target.replace('hunter2', '***')}" in message
    assert "hunter2" not in message
    line = one_line_error(cli(target, "runs"))
    assert said.format(name=name) in line and "hunter2" not in line


def test_the_cli_refuses_a_schema_of_a_newer_contengine_in_one_line(url: str, schema: str) -> None:
    PostgresStore(url, schema=schema).close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"UPDATE \"{schema}\".meta SET value = '99' WHERE key = 'version'")
    line = one_line_error(cli(f"{url}?schema={schema}", "runs"))
    assert "newer contengine" in line and "schema version 99" in line
