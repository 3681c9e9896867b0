"""The engine: a facade over the store and the drives (start, signal, cancel, inspect,
operate on runs), leases and their heartbeat, the worker's claim loop, moving runs.

Imports `contengine.drive`, `contengine.store`, `contengine.core` and the leaves.
"""

from .engine import Engine, IdleReport, Run

__all__ = ["Engine", "IdleReport", "Run"]
