"""Requests a drive answers without user code: now/random/uuid/patched/publish, timers, signals."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable
from typing import Any

from ..core.driver import Pending
from ..core.idle import NEVER, duration_text
from ..core.messages import SendRequest
from ..core.outcome import Outcome
from ..core.requests import (
    Immediate,
    NowRequest,
    PatchedRequest,
    PublishRequest,
    RandomRequest,
    UuidRequest,
)
from ..core.timers import SleepRequest, WaitRequest
from ..errors import ContengineError, RunNotFound, SerializationError, StepFailed, Timeout
from ..store.base import (
    E_COMPLETED,
    E_FAILED,
    E_RUNNING,
    FINISHED,
    SLEEPING,
    WAITING,
    EntryRow,
    RunUpdate,
)
from .state import DriveState


def _now(d: DriveState, request: Any, now: float) -> Any:
    return datetime.datetime.fromtimestamp(now, datetime.UTC)


def _random(d: DriveState, request: Any, now: float) -> Any:
    return d.r.random.random()


def _uuid(d: DriveState, request: Any, now: float) -> Any:
    return uuid.UUID(int=d.r.random.getrandbits(128), version=4)


def _published(d: DriveState, request: Any, now: float) -> Any:
    return request.value


def _patched(d: DriveState, request: Any, now: float) -> Any:
    return True  # a patch reached live: this run takes the new path


# The value of each kind of immediate request, by its type.
VALUES: dict[type, Callable[[DriveState, Any, float], Any]] = {
    NowRequest: _now,
    RandomRequest: _random,
    UuidRequest: _uuid,
    PublishRequest: _published,
    PatchedRequest: _patched,
}


def answer(d: DriveState, position: int, request: Immediate) -> tuple[EntryRow, Outcome]:
    """The complete entry answering now/random/uuid/patched/publish at position, and the
    outcome to send (a publish's value goes to the outbox, written with the entry)."""
    now = d.r.clock.now()
    value = VALUES[type(request)](d, request, now)
    status, error_text = E_COMPLETED, None
    serde = d.r.serde
    try:
        data, copy = serde.dumps_checked(
            value, lambda: f"the value of {request.describe()} at position {position}"
        )
        if type(request) is PublishRequest:
            d.out.publish(request.name, data)  # written with the entry
    except SerializationError as exc:
        status, error_text = E_FAILED, f"{type(exc).__name__}: {exc}"
        data = serde.dumps_error(exc, "a serialization error", StepFailed)
        copy = serde.loads(data, "a serialization error")
    entry = EntryRow(
        d.run.id, position, request.kind, request.name, request.key, request.text,
        status, 1, 0, now, now, None, data, error_text,
    )  # fmt: skip
    return entry, Outcome(status == E_COMPLETED, copy)


def send(d: DriveState, pending: Pending, request: SendRequest) -> Outcome:
    """ce.send: the target is looked up now (an unknown run raises ce.RunNotFound at the
    yield, a finished one ce.ContengineError); the message goes into its mailbox with
    the commit that logs the send, so it is delivered once whatever crashes."""
    now = d.r.clock.now()
    position = pending.position
    where = f"the payload of {request.describe()} at position {position}"
    error: ContengineError | None = None
    try:
        data = d.r.serde.dumps_checked(request.payload, where)[0]
    except SerializationError as exc:
        error = exc
    if error is None:
        target = d.r.store.get_run(request.target)
        if target is None:
            error = RunNotFound(
                f"no run with id {request.target!r}: the signal {request.signal!r} was not "
                f"sent (run {d.run.id!r}, position {position})"
            )
        elif target.status in FINISHED:
            error = ContengineError(
                f"run {request.target!r} is {target.status}: it will never wait again, so the "
                f"signal {request.signal!r} was not sent (run {d.run.id!r}, position {position})"
            )
    serde = d.r.serde
    if error is None:
        d.out.send(request.target, request.signal, data, now)
        outcome_data, status, error_text = serde.dumps(None, "nothing"), E_COMPLETED, None
        outcome = Outcome(True, None)
    else:
        outcome_data = serde.dumps_error(error, "a send's error", StepFailed)
        status, error_text = E_FAILED, f"{type(error).__name__}: {error}"
        outcome = Outcome(False, serde.loads(outcome_data, "a send's error"))
    d.out.add(
        EntryRow(
            d.run.id,
            position,
            request.kind,
            request.name,
            request.key,
            request.text,
            status,
            1,
            0,
            now,
            now,
            None,
            outcome_data,
            error_text,
        )  # fmt: skip
    )
    return outcome


def immediate(d: DriveState, pending: Pending, request: Immediate) -> Outcome:
    """Answer at once; the answer is logged with the next commit (no commit of its own)."""
    entry, outcome = answer(d, pending.position, request)
    d.out.add(entry)
    return outcome


def sleep(d: DriveState, pending: Pending, request: SleepRequest) -> Outcome:
    """A durable timer: log the wake time once, then wait (NotDue) until it passes."""
    now = d.r.clock.now()
    position = pending.position
    if pending.recorded is None:
        wake = request.wake_time(now)
        entry = EntryRow(
            d.run.id, position, request.kind, request.name, request.key, request.text,
            E_RUNNING, 1, 0, now, None, wake,
        )  # fmt: skip
        if wake > now:
            d.commit(insert=entry, run=RunUpdate(SLEEPING, now, due_at=wake))
            d.go_idle([], wake)
        # Already due (a zero or past sleep): logged complete with the next commit.
        entry.status, entry.finished_at, entry.due_at = E_COMPLETED, now, None
        entry.outcome = d.r.serde.dumps(None, "nothing")
        d.out.add(entry)
        return Outcome(True, None)
    entry = d.read_entry(position)
    if entry.due_at is not None and entry.due_at > now:
        d.not_yet(SLEEPING, entry.due_at)
    entry.status, entry.finished_at, entry.due_at = E_COMPLETED, now, None
    entry.outcome = d.r.serde.dumps(None, "nothing")
    d.out.carry = entry
    return Outcome(True, None)


def wait(d: DriveState, pending: Pending, request: WaitRequest) -> Outcome:
    """Take the oldest signal under the name, or wait for one until the timeout."""
    now = d.r.clock.now()
    store = d.r.store
    logged = pending.recorded is not None
    if logged:
        entry = d.read_entry(pending.position)
    else:
        deadline = NEVER if request.timeout is None else now + request.timeout
        entry = EntryRow(
            d.run.id, pending.position, request.kind, request.name, request.key, request.text,
            E_RUNNING, 1, 0, now, None, deadline,
        )  # fmt: skip
    signal = store.peek_signal(d.run.id, request.signal)
    if signal is not None:
        # Taken and logged in one transaction (the next commit): a crash either
        # leaves the signal in the mailbox or has it logged, never both or neither.
        value = d.r.serde.loads(signal.payload, f"signal {request.signal!r}")
        entry.status, entry.finished_at, entry.due_at = E_COMPLETED, now, None
        entry.outcome = signal.payload
        d.out.hold(entry, logged)
        d.out.take_signal(signal.seq)
        # Committed now, not with the next request: a later wait in this same
        # drive must not find this signal still in the mailbox.
        d.commit()
        return Outcome(True, value)
    deadline = entry.due_at if entry.due_at is not None else NEVER
    if deadline <= now:
        # The timeout is logged as the outcome: a replay takes the same branch
        # even if the signal arrives later (it stays for a later wait).
        error = Timeout(
            f"no signal {request.signal!r} arrived within {duration_text(request.timeout)}"
        )
        d.fail_entry(entry, error, f"Timeout: {error}", now)
        d.out.hold(entry, logged)
        return d.finished_outcome(entry)
    if not logged:
        d.commit(insert=entry, run=RunUpdate(WAITING, now, due_at=deadline))
    elif d.status != WAITING or d.due_at != deadline:
        # Woken by another name's signal (or a restart): back to waiting.
        d.commit(run=RunUpdate(WAITING, now, due_at=deadline))
    d.go_idle([request.signal], deadline)
