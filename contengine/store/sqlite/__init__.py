"""The SQLite store: one file in WAL mode, schema migrations, fenced writes, bulk writes
for group commit, claims, leases and operator tools.

The only package that imports sqlite3. Imports the rest of `contengine.store` (the
interfaces, rows, group commit, liveness), `contengine.errors` and `contengine.core` only.
"""

from .store import DURABILITY, SQLiteStore

__all__ = ["DURABILITY", "SQLiteStore"]
