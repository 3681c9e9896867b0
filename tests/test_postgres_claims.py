"""Claims on PostgreSQL racing each other: a run is never taken from a live holder.

A claim reads which workers are alive, then which runs they hold. A worker whose first
claim commits in between (its row and its runs appear together) is missing from that
list; its runs must not look abandoned. The race is played out in one thread: the
second worker's claim runs, on its own connection, right after the first claim has
read the live list.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from postgres_server import fresh_schema, pg_schemas, server_url

from contengine.store.base import Claim, RunRow, WorkerRow
from contengine.store.postgres import PostgresStore
from contengine.store.postgres import claims as pg_claims

__all__ = ["pg_schemas"]  # a fixture


@pytest.fixture
def stores(pg_schemas: list[str]) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores (two sessions each) on one fresh schema."""
    url, schema = server_url(), fresh_schema(pg_schemas)
    first = PostgresStore(url, schema=schema)
    second = PostgresStore(url, schema=schema)
    yield first, second
    first.close()
    second.close()


def test_a_run_claimed_by_a_new_worker_while_a_claim_is_under_way_is_not_claimed_twice(
    stores: tuple[PostgresStore, PostgresStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    b_store, c_store = stores
    b_store.insert_run(RunRow("r1", "flow", None, "pending", b"args", None, 1.0, 1.0))
    b = WorkerRow("b", "host-b", 1, None, 100.0, 10_000.0)
    c = WorkerRow("c", "host-c", 1, None, 100.0, 10_000.0)
    c_claims: list[Claim] = []
    real = pg_claims.live_workers

    def then_c_claims(conn: Any, me: str, wall: float) -> list[str]:
        live = real(conn, me, wall)
        if me == "b" and not c_claims:
            c_claims.extend(c_store.claim(c, 150.0, 150.0, 1))  # commits before b goes on
        return live

    monkeypatch.setattr(pg_claims, "live_workers", then_c_claims)
    b_claims = b_store.claim(b, 150.0, 150.0, 1)
    assert [x.run.id for x in c_claims] == ["r1"]
    assert b_claims == []  # c holds it, alive
    monkeypatch.setattr(pg_claims, "live_workers", real)
    assert b_store.claim(b, 150.0, 150.0, 1) == []
    c_store.hold("r1", c_claims[0].lease, c)  # still c's: no LeaseLost
