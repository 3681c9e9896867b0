"""Slots of step queues for one engine: waiting, on the engine's clock, for a queue's room."""

from __future__ import annotations

import threading

from ..clock import Clock, SystemClock
from ..errors import LeaseLost
from ..store.base import Store
from .leases import Leaseholder


class QueueSlots:
    """Hands out slots of step queues to an engine's drives (DriveContext.take_slot)."""

    def __init__(
        self, store: Store, clock: Clock, holder: Leaseholder, poll_interval: float
    ) -> None:
        self.store = store
        self.clock = clock
        self.holder = holder
        self.poll_interval = poll_interval

    def take_slot(
        self,
        queue: str,
        give_up: threading.Event | None = None,
        lease: tuple[str, str, int] | None = None,
    ) -> int | None:
        """Wait (on this engine's clock) until the step queue has room; its slot, or None
        once give_up is set while the queue is full (ce.LeaseLost once lease is gone)."""
        delay = 0.002
        holder = self.holder
        real = isinstance(self.clock, SystemClock)
        while True:
            if holder.letting_go:  # a stop past its grace period: no step starts now
                if give_up is not None:
                    return None
                raise LeaseLost(f"this engine is letting go of its runs: no slot of {queue!r}")
            slot = self.store.take_slot(queue, holder.row(), self.clock.now(), holder.wall(), lease)
            if slot is not None:
                return slot
            if give_up is not None and give_up.is_set():
                return None
            if give_up is not None and real:
                give_up.wait(delay)  # a stop ends the wait at once, not a poll later
            else:
                self.clock.sleep(delay)
            delay = min(delay * 2, self.poll_interval)
