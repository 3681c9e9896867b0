"""Which store a target names: a PostgreSQL URL, or else an SQLite file (or ":memory:")."""

from __future__ import annotations

import os

from ..errors import DatabaseError
from .base import Store
from .postgres.url import is_postgres_url, looks_like_url, other_url_error, redacted
from .sqlite.store import SQLiteStore


def open_store(
    target: str | os.PathLike[str],
    durability: str = "full",
    busy_timeout: float = 5.0,
    schema: str | None = None,
    create: bool = True,
) -> Store:
    """The store at target: PostgresStore for postgresql:// or postgres://, else SQLite.

    schema (PostgreSQL only) names the PostgreSQL schema (default "contengine"); create
    false (PostgreSQL only): DatabaseError rather than new tables in a schema without."""
    if is_postgres_url(target):
        url = os.fspath(target)
        try:
            from .postgres.store import PostgresStore
        except ImportError as exc:
            raise DatabaseError(
                f"{redacted(url)} is a PostgreSQL URL, and the PostgreSQL driver is not "
                f"installed ({exc}); install it with: pip install 'contengine[postgres]'"
            ) from None
        return PostgresStore(url, schema=schema, durability=durability, create=create)
    if looks_like_url(os.fspath(target)):
        raise other_url_error(os.fspath(target))
    if schema is not None:
        raise ValueError(
            f"schema={schema!r} is for a PostgreSQL URL (postgresql://...); "
            f"{os.fspath(target)!r} is an SQLite file, which has no schemas"
        )
    return SQLiteStore(target, durability, busy_timeout)
