"""Waiting for a run's end (Run.result()): left to a worker, or driven in the waiting thread."""

from __future__ import annotations

import math
from typing import Any

from ..clock import SystemClock
from ..core.serde import Serde, short
from ..errors import ContengineError, CorruptPayload, Timeout
from ..store.base import COMPLETED, FAILED, FINISHED
from .dispatch import Dispatcher, row_of


def wait_for_result(dispatch: Dispatcher, serde: Serde, run_id: str, timeout: float | None) -> Any:
    """Wait for the run's end. Who drives it: this engine's worker if it has one;
    else a worker loop of another engine on the file, if one is live (unless the
    run carries a note: the workers could not drive it); else this thread, which
    drives the run and its child runs, never other runs, and writes no "cannot be
    found" note (it may only lack the code that a worker started later has)."""
    clock, store = dispatch.clock, dispatch.store
    deadline = None if timeout is None else clock.monotonic() + timeout
    while True:
        row = row_of(store, run_id)
        if row.status == COMPLETED:
            return serde.loads(row.result or b"", f"the result of run {run_id!r}")
        if row.status in FINISHED:
            error = serde.loads(row.error or b"", f"the exception of run {run_id!r}")
            if not isinstance(error, BaseException):
                raise CorruptPayload(
                    f"the exception of run {run_id!r} decodes to {type(error).__name__} "
                    f"{short(error)}, not an exception; the database was changed outside "
                    f"contengine"
                )
            if row.status == FAILED and row.error_text:
                # Read back from its serialized form, the exception has no frames of its
                # own: the stored traceback shows the workflow's yield and the step's.
                error.add_note(f"contengine: run {run_id!r} failed; as stored:\n{row.error_text}")
            raise error
        remaining = None if deadline is None else deadline - clock.monotonic()
        if remaining is not None and remaining <= 0:
            raise Timeout(f"run {run_id!r} did not finish within {timeout:g} s")
        if dispatch.worker is not None or (row.note is None and dispatch.holder.loops_elsewhere()):
            # A worker drives the runs: wait for it to end this one (this engine's
            # wakes us when a drive ends; another's is looked for every poll).
            _pause(dispatch, remaining)
            continue
        finished = dispatch.drive(run_id, note_missing=False)
        if finished:
            continue
        if finished is None:
            # Another engine (or another thread of this one) drives it: wait a
            # poll interval, or until this process wakes us, and ask again.
            _pause(dispatch, remaining)
            continue
        # The run waits. Its child runs are driven here too, since no one else may
        # be; then wait without holding the engine and drive again (a replay,
        # which costs little next to the wait).
        if _drive_tree(dispatch, run_id):
            continue
        _wait_until_due(dispatch, run_id, deadline, timeout)


def _pause(dispatch: Dispatcher, remaining: float | None) -> None:
    """Wait one poll interval (less if the deadline is nearer), or until woken."""
    poll = dispatch.poll_interval
    dispatch.pause(poll if remaining is None else min(remaining, poll))


def _drive_tree(dispatch: Dispatcher, waiting: str) -> bool:
    """Drive the due child runs (and theirs) of the run result() waits for, once;
    True if any moved. One that cannot be rebuilt here is raised: the run cannot
    end without it."""
    moved = False
    loops = None
    now = dispatch.clock.now()
    for row in dispatch.store.unfinished_descendants(waiting):
        if row.id in dispatch.active or (row.due_at is not None and row.due_at > now):
            continue
        if row.note is None:
            loops = dispatch.holder.loops_elsewhere() if loops is None else loops
            if loops:
                continue  # a worker loop came up meanwhile: it drives the child
        if dispatch.drive(row.id, note_missing=False) is not None:
            moved = True
    return moved


def _wait_until_due(
    dispatch: Dispatcher, run_id: str, deadline: float | None, timeout: float | None
) -> None:
    """Block until the run is due (its time came, or a signal/cancel woke it), or until
    one of its child runs is due (the caller drives them)."""
    clock, store, poll = dispatch.clock, dispatch.store, dispatch.poll_interval
    # Only the real clock passes on its own; any other (a test's fake, a virtual
    # clock) moves when it is slept, so the wait is handed to it.
    virtual = not isinstance(clock, SystemClock)
    since = clock.now()
    # Children due already that the caller could not drive (another engine or
    # thread drives them): looked at again a poll interval later, not at once.
    stale: set[str] | None = None
    while True:
        row = row_of(store, run_id)
        now = clock.now()
        due_at = row.due_at if row.due_at is not None else now
        if row.status in FINISHED or due_at <= now:
            return
        children = [
            (d.id, d.due_at if d.due_at is not None else now)
            for d in store.unfinished_descendants(run_id)
            if d.id not in dispatch.active
        ]
        due_now = {child for child, at in children if at <= now}
        if stale is None:
            stale = due_now
        elif due_now - stale or (stale and now >= since + poll):
            return
        remaining = None if deadline is None else deadline - clock.monotonic()
        if remaining is not None and remaining <= 0:
            raise Timeout(f"run {run_id!r} did not finish within {timeout:g} s")
        target = min([due_at] + [at for _, at in children if at > now])
        if stale:
            target = min(target, since + poll)
        if virtual:
            if target == math.inf:
                raise ContengineError(
                    f"run {run_id!r} waits for a signal with no timeout, and on a test "
                    f"clock nothing in this thread can send it: send it with "
                    f"engine.signal() first"
                )
            wait = target - now
            clock.sleep(wait if remaining is None else min(wait, remaining))
            continue
        # Real time: sleep until due, woken early by signal()/cancel() in this
        # process, or by other processes' through the store's listener if it has
        # one; look at the store every poll interval all the same.
        dispatch.listen()
        wait = min(target - now, poll)
        if remaining is not None:
            wait = min(wait, remaining)
        dispatch.pause(wait)
