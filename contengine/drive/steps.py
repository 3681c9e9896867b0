"""A step's attempts inside a drive: run each, settle its outcome, retry or fail it."""

from __future__ import annotations

import logging
import traceback
from typing import Any, NoReturn

from ..core.driver import Pending
from ..core.idle import NotDue
from ..core.outcome import Outcome
from ..core.requests import StepCall
from ..core.workflow import RUNNING_STEP
from ..errors import ContengineError, CrashLoop, SerializationError
from ..store.base import (
    A_CRASHED,
    A_FAILED,
    A_STARTED,
    E_COMPLETED,
    E_RETRYING,
    E_RUNNING,
    RUNNING,
    AttemptRow,
    CancelArrived,
    EntryRow,
)
from . import cancel, events
from .attempts import bad_call, call_with_timeout
from .state import DriveState

log = logging.getLogger("contengine")

_SCALARS = frozenset({int, str, bytes, float, bool, type(None)})


class StepDrive(DriveState):
    """The step-running part of a drive (Drive, drive/loop.py, carries out the rest)."""

    def resume_entry(self, entry: EntryRow, request: StepCall[Any], now: float) -> None:
        """Prepare an entry found in flight in the log for its next attempt."""
        if entry.status == E_RUNNING:
            # Logged as running but no one is running it: its process died.
            if self.count_crash(entry, request, now):
                self.out.carry = entry
                return
        elif entry.status == E_RETRYING and entry.due_at is not None and entry.due_at > now:
            self.not_yet(RUNNING, entry.due_at)
        entry.status = E_RUNNING
        entry.attempts += 1
        entry.due_at = None
        self.tried(entry, A_STARTED, now)
        self.commit(update=entry, run=self.run_update(RUNNING, None, now))

    def tried(
        self, entry: EntryRow, outcome: str, now: float, error_text: str | None = None
    ) -> None:
        """Note the entry's current attempt in its history, written with the next commit:
        begun at now (A_STARTED), failed at now, or found crashed at now (its end unknown).
        An attempt that ends keeps the start its row has (attempt 1: the entry's)."""
        attempt = AttemptRow(self.run.id, entry.position, entry.attempts, outcome, now)
        if outcome == A_FAILED:
            attempt.started_at, attempt.ended_at = entry.started_at, now
            attempt.error_text = error_text
        elif outcome == A_CRASHED:
            attempt.started_at, attempt.found_at = entry.started_at, now
        self.out.tried.append(attempt)

    def count_crash(self, entry: EntryRow, request: StepCall[Any], now: float) -> bool:
        """Count a crash during the entry's last attempt; True (the entry failed with
        ce.CrashLoop) once the step's max_crashes is passed."""
        self.tried(entry, A_CRASHED, now)
        entry.crashes += 1
        events.step_crashed(self, entry, request)
        limit = request.options.max_crashes
        if entry.crashes <= limit:
            return False
        err = CrashLoop(
            "CrashLoop",
            f"step {request.name!r} at position {entry.position} of run {self.run.id!r} was "
            f"interrupted by a process crash {entry.crashes} times (max_crashes={limit}); "
            f"it is not tried again. Fix what kills the process, then retry the run.",
        )
        events.step_ended(self, "step.failed", entry, request, err)
        self.fail_entry(entry, err, "", now)
        return True

    def attempts(self, pending: Pending, entry: EntryRow, request: StepCall[Any]) -> Outcome:
        """Run attempts until the step succeeds or its retries are spent."""
        args, kwargs = self.step_arguments(request)
        queue = request.options.queue
        stopping = self.r.stopping
        cancelled = self.r.cancelled
        while True:
            if self.cancel_pending or (cancelled and self.run.id in cancelled):
                # Read with the last write (a retry due at once, a crash counted) or sent
                # from this process meanwhile: the next attempt does not start.
                return self.cancel_entry(pending, True, self.take_cancel())
            if stopping.is_set():
                # The worker stops: an attempt not begun yet (a retry due at once, or
                # a step logged just before the stop) is left for the next worker.
                self._give_back(entry)
            if self.lease is not None:
                # A process frozen (or starved) since the entry was written may have lost
                # the run meanwhile: the step must not start for a run taken over.
                self.lapses = self.r.may_start(self.run.id, self.lease[1], self.lapses)
            slot = None
            if queue is not None:
                # Nor does it wait for a full queue: a step that started after the grace
                # period would run while another worker has the run (the slot is only
                # given while this drive holds the lease).
                slot = self.r.take_slot(queue, stopping, self._slot_lease())
                if slot is None:
                    self._give_back(entry)
            ok, value, tb = self._execute(entry, request, args, kwargs, slot)
            if self.cancel_pending or (cancelled and self.run.id in cancelled):
                # Cancelled while it ran: raised at this step's yield, no retry starts.
                return cancel.at_step(self, entry, ok, value, tb)
            attempts = entry.attempts
            try:
                settled = self.settle(entry, request, ok, value, tb, args, kwargs)
            except CancelArrived:  # read by the write that would set up a retry
                entry.attempts = attempts  # no other attempt began
                return cancel.at_step(self, entry, ok, value, tb)
            if isinstance(settled, Outcome):
                out = self.out
                out.carry = entry  # written with the next request, in one commit
                out.fresh = True
                return settled
            if settled is not None:
                self.go_idle([], settled)

    def settle(
        self,
        entry: EntryRow,
        request: StepCall[Any],
        ok: bool,
        value: Any,
        tb: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        member: bool = False,
    ) -> Outcome | float | None:
        """Decide what one attempt's end means for its step.

        Returns the step's final Outcome (the entry is filled in, not yet written),
        None when the next attempt starts now, or the time the next attempt is due
        (both of those are committed here, unless the run's row asks for a cancel:
        CancelArrived, nothing written). A gather's member leaves the run's due time
        to the gather.
        """
        opts = request.options
        now = self.r.clock.now()
        retryable = True
        if ok:
            try:
                data, copy = self.r.serde.dumps_checked(
                    value,
                    lambda: (
                        f"the result of step {request.name!r} at position "
                        f"{entry.position} of run {self.run.id!r}"
                    ),
                )
            except SerializationError as exc:
                # Running the step again would repeat its effects for nothing:
                # the same kind of value would be refused again.
                ok, value, tb = False, exc, "".join(traceback.format_exception(exc))
                retryable = False
            else:
                entry.status, entry.finished_at, entry.outcome = E_COMPLETED, now, data
                if self.took:  # someone listened when the attempt began
                    events.step_ended(self, "step.completed", entry, request)
                return Outcome(True, copy)
        failures = entry.attempts - entry.crashes
        if bad_call(request.step.fn, args, kwargs, value):
            retryable = False
            value.add_note(
                f"contengine: step {request.name!r} was called with arguments it does "
                f"not accept; it was not retried"
            )
        if retryable and isinstance(value, opts.retry_on) and failures <= opts.retries:
            events.step_ended(self, "step.retried", entry, request, value)
            delay = opts.backoff.delay(failures)
            entry.error_text = self.r.serde.clip(tb)
            self.tried(entry, A_FAILED, now, entry.error_text)
            if delay > 0:
                entry.status, entry.due_at = E_RETRYING, now + delay
                run = None if member else self.run_update(RUNNING, entry.due_at, now)
                self.commit(update=entry, run=run, unless_cancelled=True)
                return entry.due_at
            entry.status, entry.due_at = E_RUNNING, None
            entry.attempts += 1
            self.tried(entry, A_STARTED, now)
            run = None if member else self.run_update(RUNNING, None, now)
            self.commit(update=entry, run=run, unless_cancelled=True)
            return None
        value.add_note(
            f"contengine: step {request.name!r} failed at position {entry.position} of run "
            f"{self.run.id!r} after {entry.attempts} attempt(s)"
        )
        events.step_ended(self, "step.failed", entry, request, value)
        self.fail_entry(entry, value, tb, now)
        self.tried(entry, A_FAILED, now, entry.error_text)
        return self.finished_outcome(entry)

    def step_arguments(self, request: StepCall[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments a step is called with: copies, unless they are plain scalars.

        A replay never runs the step, so a step that changed an argument in place
        would make the live run and its replay see different objects. Handing the
        step a copy (read back from its serialized form) keeps them the same.
        """
        args, kwargs = request.args, request.kwargs
        if not kwargs:
            for a in args:
                if type(a) not in _SCALARS:
                    break
            else:
                return args, kwargs
        serde = self.r.serde
        try:
            copied = serde.loads(serde.dumps((args, kwargs), "step arguments"), "step arguments")
        except ContengineError:
            return args, kwargs  # not serializable: nothing a replay could differ on either
        return copied  # type: ignore[no-any-return]

    def _give_back(self, entry: EntryRow) -> NoReturn:
        """The worker stops before the attempt began (while it waited for room in the
        step's queue, or before a retry due at once): the attempt is given back (the
        entry waits as a retry due now, not counted as a failure or a crash) and the run
        is set aside for the next worker."""
        now = self.r.clock.now()
        entry.status, entry.due_at = E_RETRYING, now
        entry.attempts -= 1  # the next drive counts it again when it does start it
        self.commit(update=entry, run=self.run_update(RUNNING, now, now))
        raise NotDue(now)

    def execute_member(
        self,
        entry: EntryRow,
        request: StepCall[Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> tuple[bool, Any, str]:
        """Run a gather's member step (in the step pool), waiting for room in its queue.

        A member waits for its queue even when the worker stops: it runs apart from the
        drive, which cannot be set aside from the step pool (README, Limits)."""
        queue = request.options.queue
        slot = self.r.take_slot(queue, None, self._slot_lease()) if queue is not None else None
        return self._execute(entry, request, args, kwargs, slot)

    def _slot_lease(self) -> tuple[str, str, int] | None:
        """The run's lease as a step queue checks it before giving a slot."""
        return None if self.lease is None else (self.run.id, *self.lease)

    def _execute(
        self,
        entry: EntryRow,
        request: StepCall[Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        slot: int | None,
    ) -> tuple[bool, Any, str]:
        """Run one attempt of the step (holding slot of its queue, let go after)."""
        run = self.run
        watch = self.r.watch
        token = RUNNING_STEP.set(
            (
                run.id, self.wf.name, request.name, entry.position, entry.attempts,
                run.generation, watch,
            )
        )  # fmt: skip
        in_step = (run.id, entry.position)
        self.r.in_steps.add(in_step)
        # The step is told of a cancel (ce.current_step().cancelled), not interrupted:
        # a step that can be (an async one) would register watch.on_cancel here.
        watch.step_started()
        # One look for listeners per attempt (drive/events.py): none, nothing is built.
        watching = self.r.events.hooks or log.isEnabledFor(logging.DEBUG)
        if watching:
            events.step_started(self, entry, request)
        began = self.r.clock.monotonic()
        try:
            timeout = request.options.timeout
            if timeout is None:
                return True, request.step.fn(*args, **kwargs), ""
            return True, call_with_timeout(request, args, kwargs, timeout, entry.attempts), ""
        except Exception as exc:
            return False, exc, "".join(traceback.format_exception(exc))
        finally:
            self.r.in_steps.discard(in_step)
            took = self.r.clock.monotonic() - began
            self.stepped += took
            if watching:
                self.took[entry.position] = took
            RUNNING_STEP.reset(token)
            if slot is not None:
                self._give_slot(slot)

    def _give_slot(self, slot: int) -> None:
        """Let a step queue's slot go; a failure here must not replace the step's outcome
        (the slot then counts until this engine stops: its holder is no longer live)."""
        try:
            self.r.give_slot(slot)
        except ContengineError as exc:
            log.warning("could not let go of step queue slot %d: %s", slot, exc)
