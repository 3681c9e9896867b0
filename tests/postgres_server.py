"""The PostgreSQL server the tests use, and fresh schemas on it (dropped after each test).

$CONTENGINE_TEST_POSTGRES names the server (default: the local one, user postgres,
database test). Where it cannot be reached, a test that needs it is skipped on a
developer's machine and FAILS under CI (CI set): CI must not pass without it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

URL = os.environ.get("CONTENGINE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def server_url() -> str:
    """The test server's URL, once it answers; else skip (locally) or fail (CI)."""
    try:
        import psycopg

        with psycopg.connect(URL, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any reason it is unusable
        message = f"no PostgreSQL server at {URL} ({exc})"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI needs one", pytrace=False)
        pytest.skip(message)
    return URL


def drop_schema(name: str) -> None:
    """Drop a schema the tests made, with everything in it."""
    import psycopg

    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def pg_schemas() -> Iterator[list[str]]:
    """A list to put new schema names in (fresh_schema() makes them); dropped after."""
    made: list[str] = []
    yield made
    for name in made:
        drop_schema(name)


def fresh_schema(made: list[str]) -> str:
    """A new, unused schema name (recorded in made, to be dropped)."""
    made.append(f"ce_test_{uuid.uuid4().hex[:12]}")
    return made[-1]
