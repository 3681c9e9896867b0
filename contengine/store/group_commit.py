"""Group commit: many runs' progress written in one transaction, for any store.

A store that batches progress writes inherits `GroupCommit` and implements one
primitive, `write_batch` (write these slots' progress in one transaction); commit(),
commit_later() and flush() are here. notes/design.md, "Group commit".
"""

from __future__ import annotations

import threading
from abc import abstractmethod
from typing import Any

from ..errors import DatabaseError
from .base import RunStore
from .rows import Progress, Ticket


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
        """Mark the slot done with error: nothing of its progress was written."""
        self.done = True
        self.error = error


class GroupCommit(RunStore):
    """commit(), commit_later() and flush() over a store's write_batch(): one
    transaction (one disk sync) for everything queued, with no committer thread.

    Every thread queues its progress. In commit(), if no write is under way, the
    thread becomes the writer of everything queued; otherwise it sleeps until the
    writer of its batch wakes it (done), or hands it the queue that built up meanwhile
    (write it). Only the threads concerned are woken. With one thread this is one
    transaction per commit. commit_later() only queues; flush() writes the queue."""

    def __init__(self) -> None:
        self._queue: list[Slot] = []  # progress waiting for the next group commit
        self._queue_lock = threading.Lock()
        self._writing = False  # a thread is writing a batch (or is about to)

    @abstractmethod
    def write_batch(self, batch: list[Slot]) -> None:
        """Write every slot's progress in one transaction, holding the store's write
        lock. Set each slot's `cancel` as commit() would return it, then mark every slot
        done (`slot.done = True`) or failed (`slot.fail(error)`: that progress wrote
        nothing). One failing progress must not fail the others; the store rolls it back
        alone. Raising fails every slot not yet marked."""

    def write_alone(self, progress: Progress) -> bool:
        """Write one progress in a transaction of its own, holding the store's write
        lock; what commit() returns or raises for it. (Stores may write it without
        the slot: commit() calls this when no other progress is queued or written.)"""
        slot = Slot(progress)
        self.write_batch([slot])
        if not slot.done:
            raise DatabaseError("group commit lost a progress write")
        if slot.error is not None:
            raise slot.error
        return slot.cancel

    def commit(self, progress: Progress) -> bool:
        """Write progress in the next batch and wait until it is durable (see RunStore)."""
        queue_lock = self._queue_lock
        with queue_lock:
            alone = not self._writing and not self._queue
            if alone:
                self._writing = True
        if alone:
            # The direct path: nothing else is queued and no one writes, so this thread
            # writes its progress alone, without a slot. Whatever others queued meanwhile
            # is handed on afterwards, as after a batch (_write_round).
            try:
                return self.write_alone(progress)
            finally:
                with queue_lock:
                    # (Most often nothing is queued: no scan then.)
                    waiting = (
                        next((slot for slot in self._queue if slot.ticket is None), None)
                        if self._queue
                        else None
                    )
                    if waiting is not None:
                        waiting.lead()
                    else:
                        self._writing = False
        slot = Slot(progress)
        with queue_lock:
            lead = not self._writing
            if not lead:
                slot.wait_here()
            self._queue.append(slot)
            self._writing = True
        interrupted: BaseException | None = None
        if not lead:
            # Released when done, or when this thread is to write. An exception here
            # (KeyboardInterrupt) must wait: the slot may be handed the queue, and
            # leaving would leave everyone after it waiting for a writer.
            while True:
                try:
                    slot.wake.acquire()
                    break
                except BaseException as exc:  # noqa: BLE001 - raised below
                    interrupted = interrupted or exc
        while not slot.done:
            self._write_round(slot)
            if not slot.done:  # cannot happen: a writer's batch holds its own slot
                raise DatabaseError("group commit lost a progress write")
        if interrupted is not None:
            raise interrupted
        if slot.error is not None:
            raise slot.error
        return slot.cancel

    def commit_later(self, progress: Progress) -> Ticket:
        """Queue progress for the next batch; the ticket says when it is durable."""
        if type(self).commit is not GroupCommit.commit:
            # A subclass that intercepts commit() (a test's crash injection) sees
            # every write go through it.
            return super().commit_later(progress)
        # Queued for the next batch, which the caller writes with flush() once it has
        # nothing else to do (or a commit() caller writes, whichever comes first):
        # meanwhile the caller drives other runs, whose progress joins the batch.
        ticket = Ticket()
        with self._queue_lock:
            self._queue.append(Slot(progress, ticket))
        return ticket

    def flush(self) -> None:
        """Write what commit_later() queued, unless a writer is at work (see RunStore)."""
        # If a write is under way, its writer hands what it did not take to a thread
        # waiting in commit(), if any; else the next flush() writes it.
        with self._queue_lock:
            if self._writing or not self._queue:
                return  # nothing queued, or its writer is at work
            self._writing = True
        self._write_round(None)

    def _write_round(self, own: Slot | None) -> None:
        """Write everything queued in one transaction, say so to each slot (own's
        thread, the writer, needs no waking), and hand what was queued meanwhile to
        the oldest thread waiting in commit(); with none, the next flush() writes it."""
        batch: list[Slot] = []
        try:
            with self._queue_lock:
                batch, self._queue = self._queue, []
            self.write_batch(batch)
        finally:
            for other in batch:
                if not other.done:  # the writer was interrupted before telling it
                    other.fail(DatabaseError("the batch holding this progress was not written"))
                if other is not own or other.ticket is not None:
                    other.release()
            with self._queue_lock:
                waiting = next((slot for slot in self._queue if slot.ticket is None), None)
                if waiting is not None:
                    waiting.lead()
                else:
                    self._writing = False
