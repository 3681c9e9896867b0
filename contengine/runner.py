"""Carries runs forward: rebuild each from its log with a driver, then drive it live.

The Runner holds what every drive shares (store, serde, clock, the step thread
pool); each drive of a run is a _Drive (contengine/drive.py) of its own.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import random as random_module
import threading
from collections.abc import Callable
from typing import Any

from .clock import Clock
from .drive import _Drive
from .driver import Driver
from .errors import ContengineError, NonDeterminismError
from .idle import NotDue
from .log import StreamedLog, decode_outcome
from .serde import Serde
from .store.base import FINISHED, RunRow, Store
from .workflow import Workflow

__all__ = ["NotDue", "Runner"]


class Runner:
    """Drives runs against a store; one instance per engine."""

    def __init__(
        self,
        store: Store,
        serde: Serde,
        clock: Clock,
        find_workflow: Callable[[RunRow], Workflow[Any, Any]],
    ) -> None:
        self.store = store
        self.serde = serde
        self.clock = clock
        self.find_workflow = find_workflow
        # Source of ce.random() and ce.uuid(): seeded from the OS, never replayed
        # (a replay reads the logged values instead).
        self.random = random_module.Random()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        # Runs cancelled by this process: checked at every request, so a cancel sent
        # while a run executes steps reaches its next yield (other processes' cancels
        # are seen when the run next goes idle or is driven).
        self.cancelled: set[str] = set()
        # Set when the engine's worker stops: drives set their runs aside (due now,
        # for any worker) before starting another step, instead of going on.
        self.stopping = threading.Event()

    def pool(self) -> concurrent.futures.ThreadPoolExecutor:
        """Threads for the steps of a gather (made on first use)."""
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=16, thread_name_prefix="contengine-step"
            )
        return self._pool

    def close(self) -> None:
        """Let the step threads go (steps still running finish first)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # -- rebuilding -----------------------------------------------------------

    def drive(self, run: RunRow, lease: tuple[str, int] | None = None) -> None:
        """Carry the run as far as it can go now: to its end, or NotDue for a later retry.

        Raises the ContengineError that stops a run from being rebuilt (unknown
        workflow, nondeterminism, invalid yield, corrupt payload); the log is then
        unchanged. Waiting is left to the caller, who need not hold any lock meanwhile.
        With a lease (owner, number), every write is fenced by it (LeaseLost).
        """
        if run.status in FINISHED:
            return
        wf = self.find_workflow(run)
        args, kwargs = self.serde.loads(run.args, f"the arguments of run {run.id!r}")
        try:
            gen = wf.fn(*args, **kwargs)
        except TypeError as exc:
            raise ContengineError(
                f"run {run.id!r} cannot be rebuilt: its recorded arguments no longer fit "
                f"workflow {wf.name!r} ({exc}). Restore the signature; the run is kept."
            ) from exc
        serde = self.serde
        driver = Driver(
            gen,
            StreamedLog(self.store, run.id),
            label=f"workflow {wf.name!r} (run {run.id!r})",
            decode=lambda row: decode_outcome(serde, row),
        )
        try:
            _Drive(self, run, wf, driver, lease).go()
        except NonDeterminismError as exc:
            exc.run_id = run.id
            raise
        finally:
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
