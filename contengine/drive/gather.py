"""ce.gather inside a drive: members in argument order, steps in a pool, outcomes as they come."""

from __future__ import annotations

import concurrent.futures
import contextlib
from concurrent.futures import FIRST_COMPLETED
from typing import Any, NoReturn

from ..core import ids
from ..core.children import ChildRequest
from ..core.driver import Pending
from ..core.gather import GatherRequest
from ..core.idle import NEVER, NotDue, duration_text
from ..core.outcome import Outcome
from ..core.requests import Immediate, Request, StepCall
from ..core.timers import SleepRequest, WaitRequest
from ..errors import Cancelled, StepFailed, Timeout
from ..store.base import (
    A_STARTED,
    E_COMPLETED,
    E_FAILED,
    E_RETRYING,
    E_RUNNING,
    FINISHED,
    RUNNING,
    SLEEPING,
    WAITING,
    CancelArrived,
    EntryRow,
    Progress,
    RunUpdate,
)
from . import cancel, children
from .answers import answer
from .log import decode_outcome
from .steps import StepDrive


def gather_or_race(d: StepDrive, pending: Pending, request: GatherRequest) -> Outcome:
    """Carry out a gather or a race."""
    if request.kind == "race":
        return race(d, pending, request)
    return gather(d, pending, request)


def gather(d: StepDrive, pending: Pending, request: GatherRequest) -> Outcome:
    """Carry out a gather's members concurrently, committing each outcome as it comes.

    Every member has its own log entry, at the position its argument order gives
    it, written when the gather is first reached. Steps run in the runner's
    thread pool; commits are made here, in the driving thread, as they finish.
    """
    now = d.r.clock.now()
    members = request.members
    entries, outcomes, steps = _prepare(d, pending, request, now)
    if not cancel.noted(d):  # (read by the write that logged the members)
        run_steps(d, members, entries, outcomes, steps)
    cancelled = cancel.settle_gather(d, pending, request, entries, outcomes)
    if cancelled is not None:
        return cancelled
    if all(o is not None for o in outcomes):
        return request.combine(outcomes)  # type: ignore[no-any-return]
    _go_idle_for_members(d, members, entries, outcomes)


def _prepare(
    d: StepDrive, pending: Pending, request: GatherRequest, now: float, first_only: bool = False
) -> tuple[list[EntryRow], list[Outcome | None], dict[int, tuple[tuple[Any, ...], dict[str, Any]]]]:
    """Log a gather's (or race's) entries if new; settle what needs no code; list the steps
    to run now, with their arguments. With first_only (a race), stop at the first member
    with an outcome: later members must not take signals or finish timers they lost."""
    members = request.members
    logged = pending.members or [None] * len(members)
    entries: list[EntryRow] = []
    fresh: list[EntryRow] = []
    if pending.recorded is None:
        fresh.append(gather_entry(d, pending.position, request, now))
    for i, member in enumerate(members):
        position = pending.position + 1 + i
        if logged[i] is not None:
            entry = d.read_entry(position)
        else:
            entry = member_entry(d, position, member, now)
            fresh.append(entry)
        entries.append(entry)
    if fresh:
        for entry in fresh:
            d.out.add(entry)
        d.commit(run=d.run_update(RUNNING, None, now))
    outcomes: list[Outcome | None] = [decode_outcome(d.r.serde, e) for e in entries]
    steps: dict[int, tuple[tuple[Any, ...], dict[str, Any]]] = {}
    for i, (member, entry) in enumerate(zip(members, entries, strict=True)):
        if first_only and any(o is not None for o in outcomes[: i + 1]):
            break
        if outcomes[i] is not None:
            continue
        if isinstance(member, StepCall):
            if logged[i] is not None and entry.status == E_RUNNING:
                resume_member(d, entry, member, now)  # its process died during it
                if entry.status == E_FAILED:
                    d.commit(update=entry)
                    outcomes[i] = d.finished_outcome(entry)
                    continue
            if entry.status == E_RETRYING and (entry.due_at or now) <= now:
                entry.status, entry.due_at = E_RUNNING, None
                entry.attempts += 1
                d.commit(update=entry)
            if entry.status == E_RUNNING:
                steps[i] = d.step_arguments(member)
        else:
            outcomes[i] = settle_member(d, entry, member, now)
    return entries, outcomes, steps


def _go_idle_for_members(
    d: StepDrive,
    members: tuple[Request, ...],
    entries: list[EntryRow],
    outcomes: list[Outcome | None],
) -> NoReturn:
    """Some members wait (a timer, a signal, a retry): the run waits for the earliest."""
    waiting = [e for e, o in zip(entries, outcomes, strict=True) if o is None]
    due = min(e.due_at if e.due_at is not None else NEVER for e in waiting)
    kinds = {e.kind for e in waiting}
    # A child run's end wakes its parent only while the parent is waiting.
    waits = "wait" in kinds or "child" in kinds
    status = SLEEPING if kinds == {"sleep"} else WAITING if waits else RUNNING
    update = d.run_update(status, due, d.r.clock.now())
    if update is not None or d.out.has_unwritten():
        d.commit(run=update)
    if "child" in kinds:
        # A child that ended between the look and that commit woke no one: look again.
        for m, e, o in zip(members, entries, outcomes, strict=True):
            if o is None and isinstance(m, ChildRequest) and _ended(d, e.position):
                now = d.r.clock.now()
                d.commit(run=RunUpdate(status, now, due_at=now))
                raise NotDue(now)
    names = [
        m.signal
        for m, o in zip(members, outcomes, strict=True)
        if o is None and isinstance(m, WaitRequest)
    ]
    d.go_idle(names, due)


def _ended(d: StepDrive, position: int) -> bool:
    """Whether the child run of the member at position has finished."""
    child = d.r.store.get_run(ids.child_id(d.run.id, d.run.generation, position))
    return child is not None and child.status in FINISHED


def gather_entry(d: StepDrive, position: int, request: GatherRequest, now: float) -> EntryRow:
    """The gather's own entry: it records how many members follow. A gather's is complete
    at once; a race's stays in flight until it records the winner."""
    if request.kind == "race":
        return EntryRow(
            d.run.id, position, request.kind, request.name, request.key, request.text,
            E_RUNNING, 1, 0, now,
        )  # fmt: skip
    return EntryRow(
        d.run.id, position, request.kind, request.name, request.key, request.text,
        E_COMPLETED, 1, 0, now, now, None, d.r.serde.dumps(None, "nothing"),
    )  # fmt: skip


def member_entry(d: StepDrive, position: int, member: Request, now: float) -> EntryRow:
    """The first log entry of a gather member, written when the gather is reached."""
    if isinstance(member, Immediate):
        return answer(d, position, member)[0]  # inserted with the other members, complete
    if isinstance(member, ChildRequest):
        return children.member_entry(d, position, member, now)  # its run made with it
    due: float | None = None
    if isinstance(member, SleepRequest):
        due = member.wake_time(now)
    elif isinstance(member, WaitRequest):
        due = NEVER if member.timeout is None else now + member.timeout
    return EntryRow(
        d.run.id, position, member.kind, member.name, member.key, member.text,
        E_RUNNING, 1, 0, now, None, due,
    )  # fmt: skip


def resume_member(d: StepDrive, entry: EntryRow, member: StepCall[Any], now: float) -> None:
    """A member step found running after a restart: count the crash, try again or give up."""
    if d.count_crash(entry, member, now):
        return
    entry.attempts += 1
    d.tried(entry, A_STARTED, now)
    d.commit(update=entry)


def settle_member(d: StepDrive, entry: EntryRow, member: Request, now: float) -> Outcome | None:
    """A member that runs no code: a due timer completes, a wait takes its signal, a
    child run's end is taken."""
    if isinstance(member, ChildRequest):
        return children.settle_member(d, entry)
    if isinstance(member, SleepRequest):
        if entry.due_at is not None and entry.due_at > now:
            return None
        entry.status, entry.finished_at, entry.due_at = E_COMPLETED, now, None
        entry.outcome = d.r.serde.dumps(None, "nothing")
        d.commit(update=entry)
        return Outcome(True, None)
    assert isinstance(member, WaitRequest)
    signal = d.r.store.peek_signal(d.run.id, member.signal)
    if signal is not None:
        value = d.r.serde.loads(signal.payload, f"signal {member.signal!r}")
        entry.status, entry.finished_at, entry.due_at = E_COMPLETED, now, None
        entry.outcome = signal.payload
        d.out.take_signal(signal.seq)
        d.commit(update=entry)
        return Outcome(True, value)
    if entry.due_at is not None and entry.due_at <= now:
        error = Timeout(
            f"no signal {member.signal!r} arrived within {duration_text(member.timeout)}"
        )
        d.fail_entry(entry, error, f"Timeout: {error}", now)
        d.commit(update=entry)
        return d.finished_outcome(entry)
    return None


def run_steps(
    d: StepDrive,
    members: tuple[Request, ...],
    entries: list[EntryRow],
    outcomes: list[Outcome | None],
    steps: dict[int, tuple[tuple[Any, ...], dict[str, Any]]],
    first_only: bool = False,
) -> dict[concurrent.futures.Future[tuple[bool, Any, str]], int]:
    """Run member steps in the pool; settle (and commit) each attempt as it ends.

    With first_only, stop at the first member with an outcome and return the
    attempts still running (a race's losers).
    """
    running: dict[concurrent.futures.Future[tuple[bool, Any, str]], int] = {}
    if not steps:
        return running
    pool = d.r.pool()

    def submit(i: int) -> None:
        args, kwargs = steps[i]
        step = members[i]
        assert isinstance(step, StepCall)
        running[pool.submit(d.execute_member, entries[i], step, args, kwargs)] = i

    if d.lease is not None:
        # As before a step of the drive's own (_attempts), once, before any member is
        # running (a member's retry follows a fenced write of its last attempt).
        d.lapses = d.r.may_start(d.run.id, d.lease[1], d.lapses)

    for i in steps:
        submit(i)
    others = [
        i
        for i, m in enumerate(members)
        if first_only and outcomes[i] is None and not isinstance(m, StepCall)
    ]
    while running:
        done, _ = concurrent.futures.wait(
            running, timeout=_next_look(d, entries, others), return_when=FIRST_COMPLETED
        )
        if not done:
            # A race's timer came due, or a signal may have come, while steps run.
            for i in others:
                if outcomes[i] is None:
                    outcomes[i] = settle_member(d, entries[i], members[i], d.r.clock.now())
                if outcomes[i] is not None:
                    return running
            continue
        for future in done:
            i = running.pop(future)
            step = members[i]
            assert isinstance(step, StepCall)
            ok, value, tb = future.result()
            if cancel.noted(d):
                # Cancelled while it ran: logged so, and no retry starts; the gather's
                # yield gets ce.Cancelled once its running members end.
                outcomes[i] = cancel.member_ended(d, entries[i], ok, value, tb)
                continue
            args, kwargs = steps[i]
            attempts = entries[i].attempts
            try:
                settled = d.settle(entries[i], step, ok, value, tb, args, kwargs, member=True)
            except CancelArrived:  # read by the write that would set up a retry
                entries[i].attempts = attempts
                d.cancel_pending = True
                outcomes[i] = cancel.member_ended(d, entries[i], ok, value, tb)
                continue
            if isinstance(settled, Outcome):
                try:
                    # The write reads the cancel flag first: another process's cancel
                    # that came while the member ran cancels it too.
                    d.commit(update=entries[i], unless_cancelled=True)
                except CancelArrived:
                    d.cancel_pending = True
                    outcomes[i] = cancel.member_ended(d, entries[i], ok, value, tb)
                    continue
                outcomes[i] = settled
            elif settled is None and not cancel.noted(d):
                submit(i)  # the next attempt, now
        if first_only and any(o is not None for o in outcomes):
            break
    return running


def _next_look(d: StepDrive, entries: list[EntryRow], others: list[int]) -> float | None:
    """How long to wait for a step before looking at a race's timers and waits again."""
    if not others:
        return None
    now = d.r.clock.now()
    due = min((entries[i].due_at or NEVER) for i in others)
    waits = any(entries[i].kind in ("wait", "child") for i in others)
    # Signals and child runs' ends come from outside: look every 0.1 s while waiting.
    wait = min(due - now, 0.1) if waits else due - now
    return max(wait, 0.0) if wait != NEVER else None


def race(d: StepDrive, pending: Pending, request: GatherRequest) -> Outcome:
    """The first member to finish wins; its index and value (or its exception) are logged
    in the race's own entry, and the rest are cancelled or left to finish unused."""
    now = d.r.clock.now()
    members = request.members
    entries, outcomes, steps = _prepare(d, pending, request, now, first_only=True)
    running: dict[concurrent.futures.Future[tuple[bool, Any, str]], int] = {}
    if all(o is None for o in outcomes) and not cancel.noted(d):
        running = run_steps(d, members, entries, outcomes, steps, first_only=True)
    cancelled = cancel.settle_gather(d, pending, request, entries, outcomes)
    if cancelled is not None:
        return cancelled
    # Several may be done already (after a restart, say): the first in argument order wins.
    winner = next((i for i, o in enumerate(outcomes) if o is not None), None)
    if winner is None:
        _go_idle_for_members(d, members, entries, outcomes)
    result = outcomes[winner]
    assert result is not None
    # The decision is committed first: after a crash the winner stands, whatever state
    # the losers' entries were left in.
    header = d.read_entry(pending.position)
    header.finished_at = d.r.clock.now()
    if result.ok:
        header.status = E_COMPLETED
        header.outcome = d.r.serde.dumps((winner, result.value), "a race's winner")
    else:
        d.fail_entry(header, result.value, f"member {winner} won with an exception", now)
    d.commit(update=header)
    _drop_losers(d, members, entries, outcomes, running, now)
    # Losing child runs are cancelled once the decision is durable (a crash before this
    # leaves them to end on their own, unused: notes/workflows.md).
    children.cancel_losers(
        d,
        [
            e.position
            for m, e, o in zip(members, entries, outcomes, strict=True)
            if isinstance(m, ChildRequest) and o is None and e.status != E_RUNNING
        ],
    )
    return d.finished_outcome(header)


def _drop_losers(
    d: StepDrive,
    members: tuple[Request, ...],
    entries: list[EntryRow],
    outcomes: list[Outcome | None],
    running: dict[concurrent.futures.Future[tuple[bool, Any, str]], int],
    now: float,
) -> None:
    """Cancel what can be cancelled; a step already running finishes and is logged unused."""
    still_running = set(running.values())
    error = Cancelled("lost the race")
    for i, entry in enumerate(entries):
        if outcomes[i] is not None or i in still_running:
            continue
        d.fail_entry(entry, error, "Cancelled: lost the race", now)
        d.commit(update=entry)
    store, serde, run_id, generation = d.r.store, d.r.serde, d.run.id, d.run.generation
    for future, i in running.items():
        entry, expect = entries[i], entries[i].attempts

        def log_unused(done: Any, entry: EntryRow = entry, expect: int = expect) -> None:
            # Runs in the step's thread, after the drive has moved on: write the
            # outcome straight to the store (fenced like any update); if the engine is
            # gone by then, the entry simply stays in flight, which nothing reads.
            with contextlib.suppress(Exception):
                ok, value, _ = done.result()
                entry.finished_at = d.r.clock.now()
                if ok:
                    entry.status = E_COMPLETED
                    entry.outcome = serde.dumps(value, "a losing member's result")
                else:
                    entry.status = E_FAILED
                    entry.outcome = serde.dumps_error(value, "a losing member's error", StepFailed)
                store.commit(
                    Progress(
                        run_id, update=entry, expect_attempts=expect, expect_generation=generation
                    )
                )

        future.add_done_callback(log_unused)


def cancel_gather(
    d: StepDrive, pending: Pending, request: GatherRequest, error: Cancelled, now: float
) -> Outcome:
    """Cancel a gather: every member without an outcome gets ce.Cancelled."""
    members = pending.members or [None] * len(request.members)
    if pending.recorded is None:
        header = gather_entry(d, pending.position, request, now)
        if request.kind == "race":  # decided: by the cancellation
            d.fail_entry(header, error, "Cancelled: the run was cancelled", now)
        d.out.add(header)
    elif request.kind == "race":
        header = d.read_entry(pending.position)
        if header.status not in (E_COMPLETED, E_FAILED):
            d.fail_entry(header, error, "Cancelled: the run was cancelled", now)
            d.commit(update=header)
    for i, member in enumerate(request.members):
        position = pending.position + 1 + i
        if members[i] is not None:
            entry = d.read_entry(position)
            if entry.status in (E_COMPLETED, E_FAILED):
                continue
            d.fail_entry(entry, error, "Cancelled: the run was cancelled", now)
            d.commit(update=entry)
        else:
            # Not carried out at all (not even now/uuid): every member is cancelled, so a
            # replay combines the members into the same Cancelled.
            entry = EntryRow(
                d.run.id, position, member.kind, member.name, member.key, member.text,
                E_RUNNING, 1, 0, now,
            )  # fmt: skip
            d.fail_entry(entry, error, "Cancelled: the run was cancelled", now)
            d.out.add(entry)
    return Outcome(
        False,
        d.r.serde.loads(
            d.r.serde.dumps_error(error, "a cancellation", StepFailed), "a cancellation"
        ),
    )
