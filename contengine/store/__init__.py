"""Stores: where runs and their logs live (the interfaces in base.py, SQLite in sqlite/)."""

from .base import AdminStore, LeaseStore, OneEngineStore, RunStore, Store
from .sqlite.store import SQLiteStore

__all__ = ["AdminStore", "LeaseStore", "OneEngineStore", "RunStore", "SQLiteStore", "Store"]
