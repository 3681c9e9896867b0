"""Stores: where runs and their logs live."""

from .base import Store
from .sqlite.store import SQLiteStore

__all__ = ["SQLiteStore", "Store"]
