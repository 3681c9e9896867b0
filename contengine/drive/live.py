"""Live generators of idle runs, kept so that a woken run goes on without a replay.

A run set aside at a sleep, a wait or a retry's backoff leaves its generator
suspended at that yield. Kept here, the next drive of the run in this engine
sends the outcome straight in. It is only valid if no one else drove the run
meanwhile: the lease number tells (this engine let the run go at lease n, so
claiming it again must give n + 1; anything else means another driver came in
between, and the kept generator is dropped for a replay). The cache is bounded
by count and by an estimate of memory; the least recently kept go first.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.driver import Pending

if TYPE_CHECKING:
    from ..store.base import RunRow
    from .loop import Drive

# Defaults: enough for the runs a worker keeps busy, small next to a process's memory.
MAX_RUNS = 10_000
MAX_BYTES = 256 * 1024 * 1024
_BASE_BYTES = 3_000  # a generator, its frame, a driver and a drive: measured roughly


@dataclass(slots=True)
class Kept:
    """A run's suspended generator, the drive around it, and where it waits."""

    drive: Drive
    pending: Pending
    gen: Any
    lease: int  # the lease number the run was let go at
    size: int = 0


class LiveCache:
    """Kept generators by run id, least recently kept first, bounded in count and bytes."""

    def __init__(
        self,
        max_runs: int = MAX_RUNS,
        max_bytes: int = MAX_BYTES,
        close: Callable[[Any], None] = lambda gen: None,
    ) -> None:
        self.max_runs = max_runs
        self.max_bytes = max_bytes
        self._close = close
        self._kept: OrderedDict[str, Kept] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def bytes(self) -> int:
        """The estimated memory held by kept generators."""
        return self._bytes

    def put(self, run_id: str, kept: Kept) -> None:
        """Keep a run's generator; evict the oldest beyond the bounds."""
        if self.max_runs <= 0:
            self._close(kept.gen)
            return
        kept.size = _estimate(kept.gen)
        dropped: list[Kept] = []
        with self._lock:
            old = self._kept.pop(run_id, None)
            if old is not None:
                self._bytes -= old.size
                dropped.append(old)
            self._kept[run_id] = kept
            self._bytes += kept.size
            while self._kept and (len(self._kept) > self.max_runs or self._bytes > self.max_bytes):
                _, gone = self._kept.popitem(last=False)
                self._bytes -= gone.size
                self.evictions += 1
                dropped.append(gone)
        for gone in dropped:
            self._close(gone.gen)

    def take(self, run: RunRow, lease: int) -> Kept | None:
        """The run's kept generator if it is still valid for this new lease, else None."""
        with self._lock:
            kept = self._kept.pop(run.id, None)
            if kept is not None:
                self._bytes -= kept.size
        if kept is None:
            return None
        was = kept.drive.run
        if (
            lease != kept.lease + 1
            or run.generation != was.generation
            or run.created_at != was.created_at  # a new run under a reused id
        ):
            self.misses += 1
            self._close(kept.gen)  # someone else drove the run meanwhile: replay
            return None
        self.hits += 1
        return kept

    def clear(self) -> None:
        """Drop every kept generator."""
        with self._lock:
            kept, self._kept, self._bytes = list(self._kept.values()), OrderedDict(), 0
        for k in kept:
            self._close(k.gen)


def _estimate(gen: Any) -> int:
    """A rough size of what a suspended generator holds: its frames' locals, shallowly."""
    size = _BASE_BYTES
    while gen is not None:
        frame = getattr(gen, "gi_frame", None)
        if frame is not None:
            for value in frame.f_locals.values():
                size += sys.getsizeof(value, 64)
        gen = getattr(gen, "gi_yieldfrom", None)
    return size
