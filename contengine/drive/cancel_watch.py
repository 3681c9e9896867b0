"""Tells a running step that its run was cancelled (ce.current_step().cancelled).

A step is plain code in a thread: it cannot be interrupted, only told. This process's
cancels are noted at once; another process's are read from the store by a thread of
the engine, every poll interval while any step runs in it, so a long step sees its
run cancelled within one poll interval wherever the cancel was sent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..errors import ContengineError
from ..store.base import Store

log = logging.getLogger("contengine")


class CancelWatch:
    """Which runs with a step running in this engine have a cancel not yet delivered."""

    def __init__(self, store: Store, in_steps: set[tuple[str, int]], interval: float) -> None:
        self.store = store
        self.in_steps = in_steps  # (run id, position) of every step running now (Runner's)
        self.interval = interval
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        # Runs whose delivery was written since the current look began: the look may
        # have read their flag before that write, and must not mark them again.
        self._delivered: set[str] = set()
        self._callbacks: dict[str, list[Callable[[], None]]] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def cancelled(self, run_id: str) -> bool:
        """Whether the run has a cancel not yet delivered, as far as this engine knows."""
        return run_id in self._seen

    def step_started(self) -> None:
        """A step began: make sure the store is being watched (cheap when it is)."""
        if self._thread is None:
            self._start()

    def note(self, run_id: str) -> None:
        """This process cancelled the run: its running steps are told at once."""
        if any(run == run_id for run, _ in list(self.in_steps)):
            self._mark({run_id})

    def delivered(self, run_id: str) -> None:
        """The run's drive wrote the delivery of its cancel: steps from now on (its
        cleanup) are not told of that cancel."""
        with self._lock:
            self._seen.discard(run_id)
            self._delivered.add(run_id)
            self._callbacks.pop(run_id, None)

    def on_cancel(self, run_id: str, callback: Callable[[], None]) -> Callable[[], None]:
        """Call callback once when the run is seen cancelled (at once if it already is),
        in the thread that sees it; returns a function that takes it back.

        The hook for steps that can really be interrupted: an async step would pass
        a callback that cancels its task on its event loop (call_soon_threadsafe),
        so that a CancelledError is raised inside it. Plain steps read `.cancelled`.
        """
        with self._lock:
            if run_id not in self._seen:
                self._callbacks.setdefault(run_id, []).append(callback)
                return lambda: self._forget(run_id, callback)
        _call(callback)
        return lambda: None

    def _forget(self, run_id: str, callback: Callable[[], None]) -> None:
        with self._lock:
            callbacks = self._callbacks.get(run_id, [])
            if callback in callbacks:
                callbacks.remove(callback)
            if not callbacks:
                self._callbacks.pop(run_id, None)

    def _mark(self, run_ids: set[str]) -> None:
        with self._lock:
            new = run_ids - self._seen
            self._seen |= new
            callbacks = [cb for run_id in new for cb in self._callbacks.pop(run_id, [])]
        for callback in callbacks:
            _call(callback)

    def look(self) -> None:
        """Read the cancel flags of the runs with a step running now."""
        with self._lock:
            self._delivered = set()
        running = {run for run, _ in list(self.in_steps)}
        flagged = self.store.pending_cancels(running) if running else set()
        with self._lock:
            flagged -= self._delivered
            # Runs with no step running are never asked about: forget them (a run let
            # go of, or finished elsewhere), unless a step of theirs began meanwhile.
            self._seen &= running | {run for run, _ in list(self.in_steps)}
        self._mark(flagged)

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._watch, args=(self._stop,), name="contengine-cancels", daemon=True
            )
            self._thread.start()

    def _watch(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            try:
                self.look()
            except ContengineError as exc:  # a locked or closed database: next time
                log.debug("looking for cancelled runs failed: %s", exc)

    def close(self) -> None:
        """Stop watching (a later step starts again)."""
        with self._lock:
            thread, self._thread = self._thread, None
            stop, self._stop = self._stop, threading.Event()
        stop.set()
        if thread is not None:
            thread.join()


def _call(callback: Callable[[], None]) -> None:
    """Run a cancel callback; its failure is logged, not raised into the canceller."""
    try:
        callback()
    except Exception:
        log.exception("a callback for a cancelled run failed")
