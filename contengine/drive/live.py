"""Live generators of idle runs, kept so that a woken run goes on without a replay.

A run set aside at a sleep, a wait or a retry's backoff leaves its generator
suspended at that yield. Kept here, the next drive of the run in this engine
sends the outcome straight in. It is only valid if no one else drove the run
meanwhile: the lease number tells (this engine let the run go at lease n, so
claiming it again must give n + 1; anything else means another driver came in
between, and the kept generator is dropped for a replay). The cache is bounded
by count and by memory (what a kept run holds, walked: _estimate); the least
recently kept go first.
"""

from __future__ import annotations

import gc
import itertools
import sys
import threading
import types
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
# A kept run's fixed part: a generator and its frame, a driver, a drive and its outbox,
# the request it waits at; measured with tracemalloc (tests/test_live_cache.py).
BASE_BYTES = 2_000


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
        kept.size = _estimate(kept)
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


def _estimate(kept: Kept) -> int:
    """What keeping a run costs in memory, as far as it is the run's own: the fixed part
    (a generator, its frame, a driver, a drive: BASE_BYTES, measured), what the
    workflow's frames hold (their locals, deeply), the run's row (its arguments), and
    what the driver and the drive keep of the run (failures thrown in, attempts of
    entries in flight, the log if the driver is not past it yet)."""
    roots: list[Any] = []
    gen = kept.gen
    while gen is not None:
        frame = getattr(gen, "gi_frame", None)
        if frame is not None:
            roots.extend(frame.f_locals.values())
        gen = getattr(gen, "gi_yieldfrom", None)
    drive = kept.drive
    roots.append(drive.run)
    roots.append(drive.stored)
    roots.extend(drive.driver.held())
    return BASE_BYTES + deep_size(roots)


# Objects shared with the rest of the process (code, classes, modules) or whose
# referents are not the run's own data (frames and tracebacks: the locals they hold
# are counted from the generators): counted by their own size at most.
_SHARED = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.CodeType,
    types.FrameType,
    types.TracebackType,
    types.GeneratorType,
)
_ATOMS = frozenset({str, bytes, int, float, bool, complex, type(None), bytearray})
_CONTAINERS = (list, tuple, set, frozenset, dict)
SAMPLE = 64  # members walked of a large container, whose size is then scaled up
LARGE = 256  # a container with more members than this is sampled
BUDGET = 20_000  # objects walked at most per estimate (it runs at each put)


def deep_size(roots: list[Any], budget: int = BUDGET) -> int:
    """Bytes held by roots and what they refer to (each object once): exact for plain
    data; a large container is sized from a sample of its members, so an estimate
    costs at most about `budget` objects' walk."""
    seen: set[int] = set()
    total = 0
    todo: list[tuple[Any, float]] = [(r, 1.0) for r in roots]  # (object, weight)
    while todo and budget > 0:
        obj, weight = todo.pop()
        key = id(obj)
        if key in seen:
            continue
        seen.add(key)
        budget -= 1
        try:
            total += _walk(obj, weight, todo)
        except Exception:  # the workflow's own objects: a __sizeof__, __len__ or
            # __class__ of theirs that raises (an unbound proxy) must not stop the run
            total += int(_UNSIZED * weight)
    return total


_UNSIZED = 64  # bytes counted for an object that refuses to be measured


def _walk(obj: Any, weight: float, todo: list[tuple[Any, float]]) -> int:
    """obj's own size (weighted); what it refers to is added to todo."""
    kind = type(obj)
    if kind in _ATOMS:
        return int(sys.getsizeof(obj, _UNSIZED) * weight)
    if isinstance(obj, _SHARED):
        return 0
    size = int(sys.getsizeof(obj, _UNSIZED) * weight)
    if isinstance(obj, _CONTAINERS) and len(obj) > LARGE:
        members: list[Any]
        if isinstance(obj, list | tuple):
            members = list(obj[:: len(obj) // SAMPLE])  # spread over the whole
        elif isinstance(obj, dict):
            members = [m for item in itertools.islice(obj.items(), SAMPLE) for m in item]
        else:
            members = list(itertools.islice(obj, SAMPLE))
        scale = weight * len(obj) / (len(members) if isinstance(obj, list | tuple) else SAMPLE)
        todo.extend((m, scale) for m in members)
        return size
    todo.extend((r, weight) for r in gc.get_referents(obj))
    return size
