"""Child runs inside a drive: started with the parent's entry, joined when they end."""

from __future__ import annotations

import inspect
from typing import Any

from ..core import ids
from ..core.canonical import canonical_call, key_of
from ..core.children import ChildHandle, ChildRequest
from ..core.driver import Pending
from ..core.idle import NEVER, NotDue
from ..core.outcome import Outcome
from ..errors import ChildCancelled, ContengineError, SerializationError
from ..store.base import (
    CANCELLED,
    COMPLETED,
    E_COMPLETED,
    E_FAILED,
    E_RUNNING,
    FINISHED,
    PENDING,
    WAITING,
    EntryRow,
    RunRow,
    RunUpdate,
)
from .state import DriveState


def child(d: DriveState, pending: Pending, request: ChildRequest[Any]) -> Outcome:
    """Start a child run (created with this entry, in one commit), then wait for it.

    The child's id is derived from this run's id and the position, so a replay
    finds the same child. ce.start_child returns a handle at once instead.
    """
    position = pending.position
    # Derived from the parent, its generation (continue_as_new) and the position, so
    # a replay finds the same child and a new generation never finds an old one.
    child_id = ids.child_id(d.run.id, d.run.generation, position)
    now = d.r.clock.now()
    if pending.recorded is not None:
        return join_child(d, position, child_id, logged=True)
    refused = start_run(d, position, request, now)
    if refused is not None:
        d.out.add(refused)
        return d.finished_outcome(refused)
    if request.detached:
        handle = ChildHandle(child_id)
        entry = EntryRow(
            d.run.id, position, request.kind, request.name, request.key, request.text,
            E_COMPLETED, 1, 0, now, now, None, d.r.serde.dumps(handle, "a child handle"),
        )  # fmt: skip
        d.out.add(entry)
        d.commit()  # the child exists from here on: the handle may be yielded at once
        return Outcome(True, handle)
    entry = EntryRow(
        d.run.id, position, request.kind, request.name, request.key, request.text,
        E_RUNNING, 1, 0, now, None, NEVER,
    )  # fmt: skip
    d.commit(insert=entry, run=RunUpdate(WAITING, now, due_at=NEVER))
    return join_child(d, position, child_id, logged=True)


def start_run(
    d: DriveState, position: int, request: ChildRequest[Any], now: float
) -> EntryRow | None:
    """Put the child run of the request at position in the outbox (created with the next
    commit); None, or the entry failed with why its arguments were refused."""
    child_id = ids.child_id(d.run.id, d.run.generation, position)
    wf = request.workflow
    try:
        inspect.signature(wf.fn).bind(*request.args, **request.kwargs)
        data = d.r.serde.dumps_checked(
            (request.args, request.kwargs), f"the arguments of child run {child_id!r}"
        )[0]
    except (TypeError, SerializationError) as exc:
        entry = EntryRow(
            d.run.id, position, request.kind, request.name, request.key, request.text,
            E_RUNNING, 1, 0, now,
        )  # fmt: skip
        d.fail_entry(entry, exc, f"{type(exc).__name__}: {exc}", now)
        return entry
    args_key = key_of(canonical_call(request.args, request.kwargs))
    d.out.start_run(
        RunRow(
            child_id, wf.name, wf.ref, PENDING, data, args_key, now, now,
            parent_id=d.run.id,
        )
    )  # fmt: skip
    return None


def member_entry(d: DriveState, position: int, request: ChildRequest[Any], now: float) -> EntryRow:
    """A child run that is a member of a gather or race: its run is created with the
    members' entries (one commit), and its entry waits for its end."""
    refused = start_run(d, position, request, now)
    if refused is not None:
        return refused
    return EntryRow(
        d.run.id, position, request.kind, request.name, request.key, request.text,
        E_RUNNING, 1, 0, now, None, NEVER,
    )  # fmt: skip


def settle_member(d: DriveState, entry: EntryRow) -> Outcome | None:
    """A child member's outcome, logged at its entry (committed now), once its run has
    finished; None while it goes on (its end wakes this run)."""
    child_id = ids.child_id(d.run.id, d.run.generation, entry.position)
    child = d.r.store.get_run(child_id)
    if child is None:
        raise ContengineError(f"child run {child_id!r} is missing; the log is unchanged")
    if child.status not in FINISHED:
        return None
    outcome = child_outcome(d, entry, child, logged=True)
    d.out.carry = None
    d.commit(update=entry)
    return outcome


def cancel_losers(d: DriveState, positions: list[int]) -> None:
    """Cancel the child runs of a race's losing members (after the race's decision is
    committed): each gets ce.Cancelled at its current yield, as engine.cancel gives it."""
    now = d.r.clock.now()
    for position in positions:
        d.r.store.request_cancel(ids.child_id(d.run.id, d.run.generation, position), now)


def join(d: DriveState, pending: Pending, handle: ChildHandle) -> Outcome:
    """Wait for a child started with ce.start_child (yielding its handle)."""
    position = pending.position
    if pending.recorded is None:
        now = d.r.clock.now()
        entry = EntryRow(
            d.run.id, position, handle.kind, handle.name, handle.key, handle.text,
            E_RUNNING, 1, 0, now, None, NEVER,
        )  # fmt: skip
        child = d.r.store.get_run(handle.run_id)
        if child is None:
            raise ContengineError(
                f"run {d.run.id!r} yielded a handle of child run {handle.run_id!r}, "
                f"which does not exist; the log is unchanged"
            )
        if child.status not in FINISHED:
            d.commit(insert=entry, run=RunUpdate(WAITING, now, due_at=NEVER))
        else:
            d.out.add(entry)
            return child_outcome(d, entry, child, logged=False)
    return join_child(d, position, handle.run_id, logged=True)


def join_child(d: DriveState, position: int, child_id: str, logged: bool) -> Outcome:
    """The child's outcome if it finished (logged at this position), else wait for it."""
    child = d.r.store.get_run(child_id)
    if child is None:
        raise ContengineError(f"child run {child_id!r} is missing; the log is unchanged")
    if child.status not in FINISHED:
        now = d.r.clock.now()
        if d.status != WAITING or d.due_at != NEVER:
            d.commit(run=RunUpdate(WAITING, now, due_at=NEVER))
        # The child wakes this run when it ends; look once more in case it ended
        # between the look above and the commit.
        again = d.r.store.get_run(child_id)
        if again is not None and again.status in FINISHED:
            d.commit(run=RunUpdate(WAITING, now, due_at=now))
            raise NotDue(now)
        d.go_idle([], NEVER)
    entry = d.read_entry(position)
    return child_outcome(d, entry, child, logged=True)


def child_outcome(d: DriveState, entry: EntryRow, child: RunRow, logged: bool) -> Outcome:
    """Log the finished child's result (or exception) at the parent's entry."""
    now = d.r.clock.now()
    entry.finished_at, entry.due_at = now, None
    if child.status == COMPLETED:
        entry.status, entry.outcome = E_COMPLETED, child.result
    elif child.status == CANCELLED:
        # Cancelled on its own: the parent gets an ordinary exception it may catch (a
        # parent cancelled itself gets ce.Cancelled at its own yield).
        error = ChildCancelled(f"child run {child.id!r} was cancelled")
        d.fail_entry(entry, error, f"ChildCancelled: {error}", now)
    else:
        entry.status, entry.outcome = E_FAILED, child.error
        lines = (child.error_text or child.status).strip().splitlines()
        entry.error_text = f"child run {child.id!r} {child.status}: {lines[-1]}"
    if logged:
        d.out.carry = entry  # (a new entry is already in the outbox)
    return d.finished_outcome(entry)
