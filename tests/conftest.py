"""Shared test setup: hypothesis profiles (fast by default, thorough on CI)."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings

settings.register_profile(
    "dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


if os.environ.get("CONTENGINE_TEST_STORE") == "postgres":
    # Engine-level tests on the PostgreSQL store: every ce.Engine(path) of a test opens a
    # schema of the test server instead (one per path, a fresh one per ":memory:"),
    # dropped after the test. Tests that make an SQLiteStore themselves, or open the
    # file in a child process, still use SQLite.
    from collections.abc import Iterator

    import pytest
    from postgres_server import drop_schema, fresh_schema, server_url

    @pytest.fixture(autouse=True)
    def _engines_on_postgres(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
        from contengine.engine import engine as engine_module
        from contengine.store.postgres import PostgresStore

        url = server_url()
        made: list[str] = []
        by_path: dict[str, str] = {}

        def open_on_server(
            target: object, durability: str = "full", busy_timeout: float = 5.0, schema: Any = None
        ) -> PostgresStore:
            key = os.fspath(target)  # type: ignore[call-overload]
            if key == ":memory:" or key not in by_path:
                by_path[key] = fresh_schema(made)
            return PostgresStore(url, schema=by_path[key], durability=durability)

        monkeypatch.setattr(engine_module, "open_store", open_on_server)
        yield
        for name in made:
            drop_schema(name)
