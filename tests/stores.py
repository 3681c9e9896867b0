"""Which store a test's engines use: SQLite files, or schemas of the test PostgreSQL server.

A module with `pytestmark = pytest.mark.both_stores` runs each of its tests twice, with
ids [sqlite] and [postgres]; `@pytest.mark.sqlite_only(reason="...")` keeps one test on
SQLite alone. On [postgres] every `ce.Engine(path)` the test makes opens a schema of the
test server instead of the file: one schema per path, a fresh one per ":memory:" (or no
path), all dropped after the test. What a test must name itself goes through current():

- target(path): what a child process, the CLI or `ce.Engine` opens for that path (the
  path itself, or a postgresql://...?schema=... URL of the path's schema);
- open(path): the store on it, as `ce.Engine(path)` would open it;
- sql(path): a connection to run raw SQL on the path's database (tables and columns are
  the same on both stores; write ? for parameters);
- OnCurrentStore: the base of test doubles that override a few store methods (calling
  super()); made like an SQLiteStore, (path, durability=...), they sit over the
  running test's store.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from hypothesis import settings
from postgres_server import drop_schema, fresh_schema, server_url

from contengine.engine import engine as engine_module
from contengine.store.base import Store
from contengine.store.opening import open_store
from contengine.store.postgres.url import is_postgres_url, with_schema
from contengine.store.sqlite.store import SQLiteStore

KINDS = ("sqlite", "postgres")

# A PostgreSQL example costs schema DDL (about 0.1 s a schema; most examples make two)
# and server round trips that an SQLite one does not: [postgres] runs a twentieth of a
# property test's examples (25 of CI's 500), so the whole suite stays within its time on
# a small machine. [sqlite] runs them all.
POSTGRES_EXAMPLES = 0.05


class Stores:
    """The store kind of the running test, and where its paths lead."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.url = server_url() if kind == "postgres" else ""
        self.made: list[str] = []  # schemas to drop after the test
        self.opened: list[Store] = []  # its stores, closed after the test (else each
        # left open would hold its server connections until collected)
        self._schemas: dict[str, str] = {}

    @property
    def postgres(self) -> bool:
        """True on [postgres]."""
        return self.kind == "postgres"

    def schema(self, path: str | os.PathLike[str]) -> str:
        """The schema standing for path on [postgres] (a fresh one for ":memory:")."""
        key = os.fspath(path)
        if key == ":memory:" or key not in self._schemas:
            self._schemas[key] = fresh_schema(self.made)
        return self._schemas[key]

    def target(self, path: str | os.PathLike[str]) -> str:
        """What to open for path: the path itself on [sqlite], its schema's URL on [postgres]."""
        if not self.postgres or is_postgres_url(path):
            return os.fspath(path)
        return with_schema(self.url, self.schema(path))

    def open(self, path: str | os.PathLike[str], durability: str = "full") -> Store:
        """The store at path, as `ce.Engine(path, durability=...)` opens it."""
        return self.track(open_store(self.target(path), durability))

    def track(self, store: Store) -> Store:
        """Close store after the test, if the test has not (on [postgres])."""
        if self.postgres:
            self.opened.append(store)
        return store

    def close(self) -> None:
        """Close what the test left open and drop its schemas."""
        for store in self.opened:
            with contextlib.suppress(Exception):
                store.close()
        for name in self.made:
            drop_schema(name)

    @contextlib.contextmanager
    def sql(self, path: str | os.PathLike[str], timeout: float = 5.0) -> Iterator[Raw]:
        """A connection to path's database for raw SQL (? for parameters), each statement
        committed at once; closed after the block."""
        if not self.postgres:
            conn = sqlite3.connect(path, timeout=timeout, isolation_level=None)
            try:
                yield Raw(conn.execute)
            finally:
                conn.close()
            return
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as pg:
            pg.execute(f'SET search_path TO "{self.schema(path)}"')

            def execute(query: str, params: Sequence[Any] = ()) -> Any:
                return pg.execute(query.replace("?", "%s"), tuple(params))  # type: ignore[arg-type]

            yield Raw(execute)

    def store_class(self, mixin: type) -> type[Any]:
        """mixin over this kind's store; made with (path, durability=...) like SQLiteStore."""
        base = _PathPostgresStore if self.postgres else SQLiteStore
        key = (mixin, base)
        if key not in _CLASSES:
            _CLASSES[key] = type(mixin.__name__, (mixin, base), {})
        return _CLASSES[key]


class Raw:
    """A connection for raw SQL: execute(query, params) returns a cursor."""

    def __init__(self, execute: Callable[..., Any]) -> None:
        self.execute = execute


class OnCurrentStore:
    """The base of a test double's store overrides: made, the double sits over the running
    test's store (an SQLiteStore, or a PostgresStore on the path's schema)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if not issubclass(cls, Store):
            cls = current().store_class(cls)
        return object.__new__(cls)


_CLASSES: dict[tuple[type, type], type] = {}
_CURRENT: list[Stores] = [Stores("sqlite")]


def current() -> Stores:
    """The running test's stores ([sqlite] outside a both_stores module)."""
    return _CURRENT[-1]


def _postgres_store_class() -> type[Any]:
    from contengine.store.postgres import PostgresStore

    class PathPostgresStore(PostgresStore):  # type: ignore[misc]
        """A PostgresStore made like an SQLiteStore: on the schema a path stands for."""

        def __init__(
            self,
            path: str | os.PathLike[str],
            durability: str = "full",
            busy_timeout: float = 5.0,
            readonly: bool = False,
        ) -> None:
            super().__init__(current().target(path), durability=durability)
            current().track(self)

    return PathPostgresStore


_PathPostgresStore = _postgres_store_class()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_stores: run each test on SQLite and on PostgreSQL ([sqlite], [postgres])"
    )
    config.addinivalue_line(
        "markers", "sqlite_only(reason): in a both_stores module, run this test on SQLite only"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    definition = metafunc.definition
    if definition.get_closest_marker("both_stores") is None:
        return
    only = definition.get_closest_marker("sqlite_only")
    if only is not None and not only.kwargs.get("reason"):
        raise pytest.UsageError(f"{definition.nodeid}: sqlite_only needs reason='why'")
    kinds = ["sqlite"] if only is not None else list(KINDS)
    metafunc.parametrize("store_kind", kinds, indirect=True, ids=kinds)


@pytest.fixture(autouse=True)
def store_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The test's store kind; on [postgres] every ce.Engine(path) opens a schema instead."""
    kind: str = getattr(request, "param", "sqlite")
    stores = Stores(kind)
    if stores.postgres:

        def open_on_server(
            target: str | os.PathLike[str],
            durability: str = "full",
            busy_timeout: float = 5.0,
            schema: str | None = None,
        ) -> Store:
            if is_postgres_url(target):  # a URL the test made on purpose (target())
                return open_store(target, durability, busy_timeout, schema)
            return stores.open(target, durability)

        monkeypatch.setattr(engine_module, "open_store", open_on_server)
        chosen = getattr(request.function, "_hypothesis_internal_use_settings", None)
        if chosen is not None:
            fewer = max(1, int(chosen.max_examples * POSTGRES_EXAMPLES))
            monkeypatch.setattr(
                request.function,
                "_hypothesis_internal_use_settings",
                settings(chosen, max_examples=fewer),
            )
    _CURRENT.append(stores)
    try:
        yield kind
    finally:
        _CURRENT.remove(stores)
        stores.close()


@pytest.fixture
def stores(store_kind: str) -> Stores:
    """The running test's Stores (see the module's docstring)."""
    return current()
