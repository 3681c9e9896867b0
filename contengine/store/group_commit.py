"""What the SQLite store's group commit queues: one progress write and its waiting thread.

How the queue is written is in SQLiteStore.commit(); notes/design.md, "Group commit".
"""

from __future__ import annotations

import threading
from typing import Any

from .base import Progress


class _NoWait:
    """The wake-up of a slot whose thread never sleeps (it writes the batch itself)."""

    def acquire(self) -> bool:
        return True

    def release(self) -> None:
        return None


_NO_WAIT: Any = _NoWait()


class Slot:
    """One progress waiting in the group-commit queue, and what became of it."""

    __slots__ = ("progress", "done", "error", "wake")

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.done = False
        self.error: Exception | None = None
        self.wake = _NO_WAIT

    def wait_here(self) -> None:
        """Give the slot a lock its thread will sleep on: held from the start, released
        once to wake it (a writer's own slot needs none)."""
        self.wake = threading.Lock()
        self.wake.acquire()

    def lead(self) -> None:
        """Wake the waiting thread to write the queue (its slot is not done)."""
        self.wake.release()

    def fail(self, error: Exception) -> None:
        self.done = True
        self.error = error
