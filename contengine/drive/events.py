"""What happens to runs and steps, told as it happens: records of the `contengine`
logger and calls of the engine's hooks (README, Observability).

A drive calls the functions here at a few points (a step attempt's start and end, a
crash found, a run's first drive and its end). Each first checks that someone listens
(a hook, or the logger enabled at the event's level), so a step with no listener costs
a check or two and builds nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..clock import Clock
from ..store.base import CANCELLED, COMPLETED, RunRow, RunUpdate

if TYPE_CHECKING:
    from ..core.requests import StepCall
    from ..core.workflow import Workflow
    from ..store.base import EntryRow

__all__ = ["KINDS", "Event", "Events", "Hook"]

log = logging.getLogger("contengine")

DEBUG, INFO, WARNING = logging.DEBUG, logging.INFO, logging.WARNING

# Every kind of event, with the level of its log record. Failures, retries and crashes are
# a workflow's ordinary life (a run that fails is an outcome, a crash is recovered), so
# they are INFO: a program that configured no logging is not told of them on stderr
# (Python's last-resort handler prints WARNING and above). A stuck run is the one event
# that needs a person, as it always warned.
KINDS: dict[str, int] = {
    "run.started": INFO,
    "run.completed": INFO,
    "run.failed": INFO,
    "run.cancelled": INFO,
    "run.stuck": WARNING,
    "run.resumed": INFO,
    "step.started": DEBUG,
    "step.completed": DEBUG,
    "step.failed": INFO,
    "step.retried": INFO,
    "step.crashed": INFO,
}


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened to a run or to one attempt of its step.

    kind: one of KINDS ("run.started", "step.completed", ...); position, step and
    attempt are None for run events (attempt: 1 for a step's first attempt); time:
    epoch seconds on the engine's clock; duration: seconds the attempt ran, where
    known; error: the exception's last line, for failures, retries, crashes and stuck
    runs."""

    kind: str
    run_id: str
    workflow: str
    position: int | None = None
    step: str | None = None
    attempt: int | None = None
    time: float = 0.0
    duration: float | None = None
    error: str | None = None


Hook = Callable[[Event], Any]


class Events:
    """An engine's hooks, and the telling of each event to them and to the logger."""

    def __init__(self, clock: Clock, hooks: tuple[Hook, ...] = ()) -> None:
        self.clock = clock
        # A tuple, replaced whole by add and remove: a drive reads it without a lock.
        self.hooks: tuple[Hook, ...] = ()
        self._lock = threading.Lock()
        self._reported: set[tuple[int, str]] = set()  # (hook id, kind) whose error was logged
        for hook in hooks:
            self.add(hook)

    def add(self, hook: Hook) -> None:
        """Call hook with every event from now on."""
        if not callable(hook):
            raise TypeError(f"a hook must be callable with one ce.Event, not {hook!r}")
        with self._lock:
            self.hooks = (*self.hooks, hook)

    def remove(self, hook: Hook) -> None:
        """Stop calling hook; ValueError if it was not added."""
        with self._lock:
            if hook not in self.hooks:
                raise ValueError(f"{hook!r} is not a hook of this engine")
            hooks = list(self.hooks)
            hooks.remove(hook)
            self.hooks = tuple(hooks)

    def wanted(self, kind: str) -> bool:
        """Whether anyone listens to an event of this kind."""
        return bool(self.hooks) or log.isEnabledFor(KINDS[kind])

    def emit(self, event: Event) -> None:
        """Log the event and call every hook with it; a hook's error is logged (once per
        hook and kind), never raised into the run."""
        level = KINDS[event.kind]
        if log.isEnabledFor(level):
            where = "" if event.position is None else f" step {event.step!r} at {event.position}"
            tried = "" if event.attempt is None else f" attempt {event.attempt}"
            error = "" if event.error is None else f": {event.error}"
            log.log(
                level,
                "%s: run %r (%s)%s%s%s",
                event.kind, event.run_id, event.workflow, where, tried, error,
                extra={
                    "event": event.kind, "run_id": event.run_id, "workflow": event.workflow,
                    "position": event.position, "attempt": event.attempt,
                },
            )  # fmt: skip
        for hook in self.hooks:
            try:
                hook(event)
            except Exception as exc:
                key = (id(hook), event.kind)
                if key not in self._reported:
                    self._reported.add(key)
                    log.warning(
                        "hook %r raised on a %s event (further errors of it on this kind "
                        "are not logged): %s: %s",
                        hook, event.kind, type(exc).__name__, exc, exc_info=exc,
                    )  # fmt: skip

    def run_event(self, kind: str, run: RunRow, error: str | None = None) -> None:
        """A run event (not of a step), if anyone listens."""
        if self.hooks or log.isEnabledFor(KINDS[kind]):
            self.emit(Event(kind, run.id, run.workflow, time=self.clock.now(), error=error))


class _Shared(Protocol):
    @property
    def events(self) -> Events: ...


class DriveState(Protocol):
    """What the functions below read of a drive (drive/state.py's DriveState)."""

    took: dict[int, float]
    crash_seen: bool

    @property
    def r(self) -> _Shared: ...

    @property
    def run(self) -> RunRow: ...

    @property
    def wf(self) -> Workflow[Any, Any]: ...


def error_line(error: BaseException) -> str:
    """An exception as one line: its type and message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _step(
    d: DriveState,
    kind: str,
    entry: EntryRow,
    request: StepCall[Any],
    duration: float | None = None,
    error: str | None = None,
) -> None:
    ev = d.r.events
    ev.emit(
        Event(
            kind, d.run.id, d.wf.name, entry.position, request.name, entry.attempts,
            ev.clock.now(), duration, error,
        )
    )  # fmt: skip


def step_started(d: DriveState, entry: EntryRow, request: StepCall[Any]) -> None:
    """An attempt of the step begins (the caller checked that someone listens)."""
    _step(d, "step.started", entry, request)


def step_ended(
    d: DriveState, kind: str, entry: EntryRow, request: StepCall[Any], error: Any = None
) -> None:
    """An attempt ended: step.completed, step.retried or step.failed (error: the exception)."""
    took = d.took.pop(entry.position, None) if d.took else None
    if d.r.events.wanted(kind):
        text = error_line(error) if isinstance(error, BaseException) else None
        _step(d, kind, entry, request, took, text)


def step_crashed(d: DriveState, entry: EntryRow, request: StepCall[Any]) -> None:
    """The entry's last attempt was lost with its process; the first such find in a
    drive says the run was taken over after a crash (run.resumed)."""
    if not d.crash_seen:
        d.crash_seen = True
        lost = f"step {request.name!r} was in flight in a process that died or lost its lease"
        d.r.events.run_event("run.resumed", d.run, lost)
    if d.r.events.wanted("step.crashed"):
        _step(d, "step.crashed", entry, request, None, "its process died or lost its lease")


def run_ended(d: DriveState, update: RunUpdate, error: BaseException | None = None) -> None:
    """The run's end is durable: run.completed, run.failed or run.cancelled (error: the
    exception it ended with)."""
    status = update.status
    kind = (
        "run.completed"
        if status == COMPLETED
        else "run.cancelled"
        if status == CANCELLED
        else "run.failed"
    )
    d.r.events.run_event(kind, d.run, None if error is None else error_line(error))
