"""What the SQLite store's group commit queues: one progress write and its waiting thread.

How the queue is written is in SQLiteStore.commit(); notes/design.md, "Group commit".
"""

from __future__ import annotations

import threading
from typing import Any

from .base import Progress, Ticket


class _NoWait:
    """The wake-up of a slot whose thread never sleeps (it writes the batch itself)."""

    def acquire(self) -> bool:
        return True

    def release(self) -> None:
        return None


_NO_WAIT: Any = _NoWait()


class Slot:
    """One progress waiting in the group-commit queue, and what became of it.

    A slot has either a thread sleeping until it is written (commit()) or a ticket
    that says so to whoever asks later (commit_later(): no thread waits).
    """

    __slots__ = ("progress", "done", "error", "cancel", "wake", "ticket")

    def __init__(self, progress: Progress, ticket: Ticket | None = None) -> None:
        self.progress = progress
        self.done = False
        self.error: Exception | None = None
        self.cancel = False  # the run's row asks for a cancel (read with the write)
        self.wake = _NO_WAIT
        self.ticket = ticket

    def release(self) -> None:
        """Say the slot is written (or failed): wake its thread, or finish its ticket."""
        if self.ticket is not None:
            self.ticket.finish(self.error, self.cancel)
        else:
            self.wake.release()

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
