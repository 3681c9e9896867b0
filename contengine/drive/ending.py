"""A run's end inside a drive: its result, its exception, a cancel at the end, continue_as_new."""

from __future__ import annotations

import functools
import inspect
import traceback
from collections.abc import Callable
from typing import Any

from ..core.children import ContinueAsNew
from ..core.idle import NotDue
from ..errors import Cancelled, SerializationError, WorkflowFailed
from ..store.base import (
    CANCELLED,
    COMPLETED,
    FAILED,
    PENDING,
    CancelArrived,
    RunUpdate,
)
from . import cancel, events
from .failure import failure_line, with_step_frames
from .state import DriveState


def returned(d: DriveState, value: Any) -> None:
    """The workflow returned value: the run completes (or continues as new)."""
    if isinstance(value, ContinueAsNew):
        continue_as_new(d, value)
        return
    if d.cancel_pending or d.run.id in d.r.cancelled:
        end_cancelled(d)  # a cancel not delivered (sent during the last step?)
        return
    try:
        data = d.r.serde.dumps_checked(
            value, f"the result of workflow {d.wf.name!r} (run {d.run.id!r})"
        )[0]
    except SerializationError as exc:
        raised(d, exc)
        return
    now = d.r.clock.now()
    # Unless a delivered cancel is still to be written (the row's flag is that one),
    # the end's write reads the flag: another process's cancel sent during the last
    # step ends the run cancelled (end_cancelled) instead of being lost.
    end = RunUpdate(
        COMPLETED, now, finished_at=now, result=data, clear_cancel=True,
        unless_cancelled=not d.out.delivered,
    )  # fmt: skip
    commit_last(d, end, lambda: end_cancelled(d))


def end_cancelled(d: DriveState) -> None:
    """The workflow returned with a cancel not delivered: raised at the yield of its
    last step if that step's outcome is not written yet (cancel_carried); else (the
    cancel came after it) as an asyncio task whose cancel was requested before it
    finished, the run ends cancelled and its return value is dropped."""
    if d.out.fresh:
        d.cancel_carried()
    error = Cancelled(f"run {d.run.id!r} was cancelled")
    error.add_note(
        "contengine: the cancel came after the run's last request; the workflow "
        "returned before a yield could raise it, so its return value was dropped"
    )
    raised(d, error)


def continue_as_new(d: DriveState, again: ContinueAsNew) -> None:
    """Start this run again with new arguments; its log so far is dropped."""
    try:
        inspect.signature(d.wf.fn).bind(*again.args, **again.kwargs)
        data = d.r.serde.dumps_checked(
            (again.args, again.kwargs), f"the arguments to continue run {d.run.id!r} with"
        )[0]
    except (TypeError, SerializationError) as exc:
        raised(d, exc)
        return
    d.out.restart = data
    d.commit(run=RunUpdate(PENDING, d.r.clock.now()))
    raise NotDue(d.r.clock.now())  # due at once: the next drive starts it afresh


def raised(d: DriveState, error: BaseException, failed_at: int | None = None) -> None:
    """The workflow raised error: the run fails (or ends cancelled, for ce.Cancelled)."""
    if d.out.fresh and cancel.noted(d):
        d.cancel_carried()  # the cancel came during the last step: raised there
    what = f"the exception of workflow {d.wf.name!r} (run {d.run.id!r})"
    serde = d.r.serde
    data = serde.dumps_error(error, what, WorkflowFailed)
    text = serde.clip("".join(traceback.format_exception(error)))
    now = d.r.clock.now()
    status = CANCELLED if isinstance(error, Cancelled) else FAILED
    if status == FAILED:
        text = with_step_frames(text, failed_at, _step_text(d, failed_at))
        # Where retry resumes (engine/retrying.py), first.
        text = failure_line(failed_at) + serde.clip(text)
    # A cancel not delivered is void once the run failed (as an asyncio task that
    # raised: it ends with its exception); the row's flag says so with this write.
    with d.r.cancel_lock:
        d.r.cancelled.discard(d.run.id)
    end = RunUpdate(status, now, finished_at=now, error=data, error_text=text, clear_cancel=True)
    commit_last(d, end, error=error)


def _step_text(d: DriveState, failed_at: int | None) -> str | None:
    """The logged traceback text of the entry at failed_at (its outcome may still be in
    the outbox, written with the run's end)."""
    if failed_at is None:
        return None
    carry = d.out.carry
    if carry is not None and carry.position == failed_at:
        return carry.error_text
    found = d.r.store.load_log(d.run.id, failed_at, 1)
    return found[0].error_text if found and found[0].position == failed_at else None


def commit_last(
    d: DriveState,
    run: RunUpdate,
    cancelled: Callable[[], None] | None = None,
    error: BaseException | None = None,
) -> None:
    """The run's end: nothing is left to do after it, so in a pool the drive parks
    and ends once it is durable, and the end joins the batch of the runs still
    advancing (instead of being a disk sync of its own). cancelled: what to do
    instead when the write met a cancel request (CancelArrived: nothing written).
    error: the run's exception, told with the end (drive/events.py)."""
    # What is left of the drive once its end is durable: telling of it.
    ended = functools.partial(events.run_ended, d, run, error)
    if d.park:
        d.commit_then(ended, run=run, cancelled=cancelled)
    try:
        d.commit(run=run)
    except CancelArrived:
        if cancelled is None:
            raise
        cancelled()
        return
    ended()
