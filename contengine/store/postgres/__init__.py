"""The PostgreSQL store: runs, logs and leases in a schema of a PostgreSQL server (psycopg 3)."""

from __future__ import annotations

from .store import PostgresStore, is_postgres_url

__all__ = ["PostgresStore", "is_postgres_url"]
