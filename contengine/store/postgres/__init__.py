"""The PostgreSQL store: runs, logs and leases in a schema of a PostgreSQL server (psycopg 3).

PostgresStore is loaded on first use: psycopg is an optional dependency (the
`postgres` extra), and `is_postgres_url` (url.py) needs none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .url import is_postgres_url

if TYPE_CHECKING:
    from .store import PostgresStore

__all__ = ["PostgresStore", "is_postgres_url"]


def __getattr__(name: str) -> Any:
    if name == "PostgresStore":
        from .store import PostgresStore

        return PostgresStore
    raise AttributeError(name)
