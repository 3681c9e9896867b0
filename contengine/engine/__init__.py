"""The engine: a facade over the store and the drives (start, signal, cancel, inspect,
operate on runs); the Dispatcher that claims and drives runs for run_until_idle() and
the worker; leases and their heartbeat, step-queue slots, waiting for results, moving runs.

Imports `contengine.drive`, `contengine.store`, `contengine.core` and the leaves.
"""

from .engine import Engine, IdleReport, Run

__all__ = ["Engine", "IdleReport", "Run"]
