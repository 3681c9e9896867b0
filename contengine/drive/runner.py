"""Carries runs forward: rebuild each from its log with a driver, then drive it live.

The Runner holds what every drive shares (store, serde, clock, the step thread
pool); each drive of a run is a Drive (drive/loop.py) of its own. What
the owner of a Runner decides for every drive (step-queue slots, the lease check
before a step, the random source) it passes in as a DriveContext.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import random as random_module
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..clock import Clock
from ..core.driver import Driver
from ..core.idle import NotDue
from ..core.run_context import RunInfo
from ..core.serde import Serde, short
from ..core.workflow import Workflow
from ..errors import ContengineError, CorruptPayload, NonDeterminismError
from ..store.base import FINISHED, PENDING, RunRow, Store
from .cancel_watch import CancelWatch
from .events import Events
from .live import MAX_BYTES, MAX_RUNS, Kept, LiveCache
from .log import StreamedLog
from .loop import Drive
from .pool import Parked

__all__ = ["DriveContext", "NotDue", "Runner"]


class TakeSlot(Protocol):
    """Wait for a slot of a step queue for one step execution (DriveContext.take_slot)."""

    def __call__(
        self,
        queue: str,
        give_up: threading.Event | None = None,
        lease: tuple[str, str, int] | None = None,
    ) -> int | None: ...


def unlimited(
    queue: str,
    give_up: threading.Event | None = None,
    lease: tuple[str, str, int] | None = None,
) -> int | None:
    """Every step queue has room: without an engine's leases, queues limit nothing."""
    return 0


def no_slot(slot: int) -> None:
    """Nothing to let go: unlimited() hands out no real slots."""
    return None


def unleased(run_id: str, lease: int, lapses: int) -> int:
    """A step may always start: a store without leases serves one engine."""
    return lapses


@dataclass(frozen=True)
class DriveContext:
    """What the owner of a Runner decides for every drive, passed in once at its making.

    take_slot waits for a slot of a step queue (None if give_up is set while it
    waits, ce.LeaseLost once the run's lease (run id, owner, number) is gone: either
    way the step does not start); give_slot lets the slot go; may_start, before a
    step starts, raises ce.LeaseLost unless the run is still leased to the engine
    since its claim, and returns the lapse count to check next (Leaseholder.may_start);
    random answers ce.random() and ce.uuid() (never replayed: a replay reads the
    logged values). The defaults: no queue limits, no leases, seeded from the OS.
    """

    take_slot: TakeSlot = unlimited
    give_slot: Callable[[int], None] = no_slot
    may_start: Callable[[str, int, int], int] = unleased
    random: random_module.Random = field(default_factory=random_module.Random)


class Runner:
    """Drives runs against a store; one instance per engine."""

    def __init__(
        self,
        store: Store,
        serde: Serde,
        clock: Clock,
        find_workflow: Callable[[RunRow], Workflow[Any, Any]],
        poll_interval: float = 0.1,
        *,
        context: DriveContext | None = None,
        cache_runs: int = MAX_RUNS,
        cache_bytes: int = MAX_BYTES,
    ) -> None:
        self.store = store
        self.serde = serde
        self.clock = clock
        self.find_workflow = find_workflow
        context = context or DriveContext()
        # The context's callables, held as they are: a drive calls them directly,
        # with no lookup through the context on a step's path.
        self.take_slot: TakeSlot = context.take_slot
        self.give_slot: Callable[[int], None] = context.give_slot
        self.may_start: Callable[[str, int, int], int] = context.may_start
        self.random = context.random
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        # Runs cancelled by this process: checked at every request and when a step's
        # attempt ends, so a cancel sent while a step runs reaches that step's yield
        # (other processes' cancels are read with the run's next write, or looked for
        # between writes).
        self.cancelled: set[str] = set()
        # Held across a cancel's write and its entry in `cancelled`, and by a drive
        # delivering a cancel: a drive that reads the row's flag before the entry is
        # made waits for it and takes it out, instead of leaving it to raise
        # ce.Cancelled a second time at the next yield.
        self.cancel_lock = threading.Lock()
        # Set when the engine's worker stops: drives set their runs aside (due now,
        # for any worker) before starting another step, instead of going on.
        self.stopping = threading.Event()
        # (run id, position) of every step attempt running now (a stopping worker waits
        # for the drives that are not in one: they are only setting their runs aside).
        self.in_steps: set[tuple[str, int]] = set()
        # Tells running steps that their run was cancelled (ce.current_step().cancelled).
        self.watch = CancelWatch(store, self.in_steps, poll_interval)
        # Generators of runs set aside at a sleep, wait or retry, kept alive so that
        # the next drive goes on without replaying the log (bounded; evicted ones replay).
        self.live = LiveCache(cache_runs, cache_bytes, close=_set_aside)
        # The engine's hooks and the logger's events (drive/events.py).
        self.events = Events(clock)

    def pool(self) -> concurrent.futures.ThreadPoolExecutor:
        """Threads for the steps of a gather (made on first use)."""
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=16, thread_name_prefix="contengine-step"
            )
        return self._pool

    def close(self) -> None:
        """Let the step threads go (steps still running finish first); drop kept generators."""
        self.live.clear()
        self.watch.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # -- rebuilding -----------------------------------------------------------

    def drive(
        self,
        run: RunRow,
        lease: tuple[str, int] | None = None,
        park: bool = False,
        lapses: int = 0,
    ) -> None:
        """Carry the run as far as it can go now: to its end, or NotDue for a later retry.

        Raises the ContengineError that stops a run from being rebuilt (unknown
        workflow, nondeterminism, invalid yield, corrupt payload); the log is then
        unchanged. Waiting is left to the caller, who need not hold any lock meanwhile.
        With a lease (owner, number), every write is fenced by it (LeaseLost). With
        park (a DrivePool drives it), the drive may raise Parked to wait for a commit.
        lapses: the leaseholder's lapse count when the run was claimed (may_start).
        """
        if run.status in FINISHED:
            return
        if not run.cancel_requested and run.id in self.cancelled:
            # Delivered meanwhile by another engine (the row says so): not again.
            with self.cancel_lock:
                self.cancelled.discard(run.id)
        if lease is not None:
            kept = self.live.take(run, lease[1])
            if kept is not None:
                self._resume(kept, run, lease, park, lapses)
                return
        wf = self.find_workflow(run)
        args, kwargs = self._arguments(run)
        if run.status == PENDING:  # its first drive (or first after continue_as_new)
            self.events.run_event("run.started", run)
        try:
            gen = wf.fn(*args, **kwargs)
        except TypeError as exc:
            raise ContengineError(
                f"run {run.id!r} cannot be rebuilt: its recorded arguments no longer fit "
                f"workflow {wf.name!r} ({exc}). Restore the signature; the run is kept."
            ) from exc
        log = StreamedLog(self.store, run.id, self.serde)
        driver = Driver(gen, log, label=f"workflow {wf.name!r} (run {run.id!r})", decode=log.decode)
        driver.info = RunInfo(run.id, wf.name, run.parent_id, run.generation, driver.where)
        drive = Drive(self, run, wf, driver, lease, park, lapses)
        self._finish(drive, gen, drive.go)

    def _arguments(self, run: RunRow) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The run's recorded (args, kwargs); CorruptPayload if they decode to another shape
        (bytes written outside contengine)."""
        value = self.serde.loads(run.args, f"the arguments of run {run.id!r}")
        if (
            type(value) is tuple
            and len(value) == 2
            and isinstance(value[0], tuple | list)
            and isinstance(value[1], dict)
            and all(isinstance(k, str) for k in value[1])
        ):
            return tuple(value[0]), value[1]
        raise CorruptPayload(
            f"run {run.id!r} cannot be rebuilt: its recorded arguments decode to "
            f"{type(value).__name__} {short(value)}, not (args, kwargs); the database was "
            f"changed outside contengine. The run is kept as it is: restore its arguments "
            f"(or cancel it)."
        )

    def _resume(
        self, kept: Kept, run: RunRow, lease: tuple[str, int], park: bool, lapses: int
    ) -> None:
        """Go on with a live generator kept from this run's last drive: no replay."""
        drive = kept.drive
        # Others may have changed the run meanwhile, never its log (the lease shows
        # no one else drove the run).
        drive.reset(run, lease, park, lapses)
        position = kept.pending.position
        logged = self.store.replay_rows(run.id, position, 1)
        pending = dataclasses.replace(kept.pending, recorded=logged[0] if logged else None)
        self._finish(drive, kept.gen, lambda: drive.resume(pending))

    def _finish(self, drive: Drive, gen: Any, go: Callable[[], None]) -> None:
        """Run a drive; keep its generator alive if it went idle where it can resume."""
        if drive.outer is None:
            drive.outer = functools.partial(self._finish, drive, gen)
        keep = False
        try:
            go()
        except Parked:
            keep = True  # not set aside: it goes on once its commit is durable
            raise
        except NotDue:
            lease = drive.lease
            keep = drive.idle_at is not None and lease is not None
            if keep and lease is not None and drive.idle_at is not None:
                self.live.put(drive.run.id, Kept(drive, drive.idle_at, gen, lease[1]))
            raise
        except NonDeterminismError as exc:
            exc.run_id = drive.run.id
            raise
        finally:
            if not keep:
                _set_aside(gen)


def _set_aside(gen: Any) -> None:
    """Close a generator the engine is done with (the run waits, finished or is stuck).

    Python would close it anyway when it is collected, running its finally blocks
    with GeneratorExit. Doing it here keeps that quiet and predictable: a yield in a
    finally block is refused (nothing runs; the block runs for real when the run
    is driven on and ends), and errors from such blocks are dropped.
    """
    # Exception: "generator ignored GeneratorExit" from a yield in a finally block.
    with contextlib.suppress(Exception):
        gen.close()
