"""Hosts whose clocks differ, on a store shared by many hosts (PostgreSQL).

Leases are judged on each engine's own wall clock. On PostgreSQL a lease counts as run
out only MAX_CLOCK_SKEW after its expiry, and an engine whose clock is off the server's
by more than half of that lets its runs go and claims nothing (ce.ClockSkew): a host
whose clock runs ahead can never take over a lease its holder still renews.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Generator, Iterator
from typing import Any

import pytest
from postgres_server import fresh_schema, pg_schemas, server_url

import contengine as ce
from contengine.engine.leases import Leaseholder
from contengine.store.base import RunRow, WorkerRow
from contengine.store.liveness import MAX_CLOCK_SKEW
from contengine.store.postgres import PostgresStore
from contengine.store.sqlite.store import SQLiteStore

__all__ = ["pg_schemas"]  # a fixture


class ServerClockStore(SQLiteStore):
    """An SQLite store that reports a server clock the test sets (None: no server)."""

    server: float | None = None

    def server_time(self) -> float | None:
        return self.server


def started(store: SQLiteStore | PostgresStore, run_id: str) -> None:
    """A pending run."""
    store.insert_run(RunRow(run_id, "flow", None, "pending", b"args", None, 1.0, 1.0))


def test_an_engine_whose_clock_is_off_the_servers_claims_nothing_until_it_agrees() -> None:
    store = ServerClockStore(":memory:")
    started(store, "r1")
    wall = [1000.0]
    holder = Leaseholder(store, 30.0, wall=lambda: wall[0])
    store.server = 1000.0 + MAX_CLOCK_SKEW  # this host is behind by the whole margin
    with pytest.raises(ce.ClockSkew) as caught:
        holder.claim(1000.0, 10)
    message = str(caught.value)
    assert "behind the database server's" in message and "NTP" in message
    assert isinstance(caught.value, ce.DatabaseError)  # a worker backs off and tries again
    store.server = 1000.0 - 2 * MAX_CLOCK_SKEW
    with pytest.raises(ce.ClockSkew, match="ahead of the database server's"):
        holder.claim(1000.0, 10)
    store.server = 1000.0 + MAX_CLOCK_SKEW / 4  # within half the margin: fine again
    assert [c.run.id for c in holder.claim(1000.0, 10)] == ["r1"]
    holder.close()
    store.close()


def test_a_holder_that_finds_its_clock_off_lets_its_runs_go_and_starts_no_step() -> None:
    store = ServerClockStore(":memory:")
    started(store, "r1")
    wall = [1000.0]
    holder = Leaseholder(store, 30.0, wall=lambda: wall[0])
    store.server = 1000.0
    (claim,) = holder.claim(1000.0, 10)
    lapses = holder.may_start("r1", claim.lease, claim.lapses)
    store.server = 1000.0 + 3 * MAX_CLOCK_SKEW  # as a heartbeat finds it
    holder.check_clock()
    assert holder.clock_error is not None
    with pytest.raises(ce.LeaseLost, match="does not start"):
        holder.may_start("r1", claim.lease, lapses)
    other = WorkerRow("other", "elsewhere", 1, None, 1000.0, 2000.0)
    (taken,) = store.claim(other, 1000.0, 1000.0, 10)  # let go: another may claim it
    assert taken.run.id == "r1"
    holder.close()
    store.close()


def test_a_store_with_one_host_has_no_server_clock_to_agree_with() -> None:
    store = SQLiteStore(":memory:")
    started(store, "r1")
    holder = Leaseholder(store, 30.0, wall=lambda: 5.0)  # any clock at all
    assert store.server_time() is None
    assert [c.run.id for c in holder.claim(5.0, 10)] == ["r1"]
    holder.close()
    store.close()


@ce.workflow
def greet(name: str) -> Generator[Any, Any, str]:
    """A run for a worker to claim."""
    return (yield ce.step(str.upper, name))


@pytest.fixture
def pg_store(pg_schemas: list[str]) -> Iterator[PostgresStore]:
    """A PostgreSQL store in a fresh schema."""
    store = PostgresStore(server_url(), schema=fresh_schema(pg_schemas))
    yield store
    store.close()


def test_the_server_clock_is_the_servers_wall_clock(pg_store: PostgresStore) -> None:
    import time

    before = time.time()
    server = pg_store.server_time()
    after = time.time()
    # The test server runs on this host: one clock, read between the two readings.
    assert server is not None and before - 0.001 <= server <= after + 0.001


def test_on_postgres_a_lease_runs_out_only_the_skew_margin_after_its_expiry(
    pg_store: PostgresStore,
) -> None:
    started(pg_store, "r1")
    a = WorkerRow("a", "host-a", 1, None, 100.0, 300.0)
    b = WorkerRow("b", "host-b", 1, None, 100.0, 10_000.0)
    (first,) = pg_store.claim(a, 150.0, 150.0, 1)
    # b's clock may run up to MAX_CLOCK_SKEW ahead of a's: a is alive that long after.
    assert pg_store.claim(b, 300.0, 300.0 + MAX_CLOCK_SKEW * 0.99, 1) == []
    (taken,) = pg_store.claim(b, 300.0, 300.0 + MAX_CLOCK_SKEW * 1.01, 1)
    assert taken.run.id == "r1" and taken.lease > first.lease


def test_a_worker_process_whose_clock_runs_ahead_refuses_to_claim(
    pg_schemas: list[str],
) -> None:
    url = server_url()
    schema = fresh_schema(pg_schemas)
    with ce.Engine(url, schema=schema) as engine:
        engine.start(greet, "ada", id="r1")
    # A process whose time.time() is 30 s ahead (read before contengine is imported).
    code = textwrap.dedent(
        f"""
        import time
        real = time.time
        time.time = lambda: real() + 30.0
        import contengine as ce
        engine = ce.Engine({url!r}, schema={schema!r})
        try:
            engine.run_until_idle()
        except ce.ClockSkew as exc:
            print("refused:", exc)
        else:
            print("claimed")
        engine.close()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert "refused: this host's clock is" in done.stdout, done.stdout + done.stderr
    assert "ahead of the database server's" in done.stdout
    with ce.Engine(url, schema=schema) as engine:
        assert engine.get_run("r1").status == "pending"  # nothing was claimed or run
