"""One drive of one run: rebuild it from its log, execute steps, commit outcomes.

The write pattern is what makes every step cost one commit: when a step's
outcome is known it is sent into the generator first (pure code runs up to the
next yield), and then the outcome *and* the next request are committed together.
The log therefore always shows the request in flight, and a crash at any point
leaves either the old state or the new one.
"""

from __future__ import annotations

import datetime
import functools
import inspect
import logging
import traceback
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from ..core.children import ChildHandle, ChildRequest, ContinueAsNew
from ..core.driver import Driver, Pending, Raised, Returned
from ..core.gather import GatherRequest
from ..core.idle import NEVER, NotDue, duration_text
from ..core.outcome import Outcome
from ..core.requests import (
    Immediate,
    NowRequest,
    PublishRequest,
    RandomRequest,
    StepCall,
    UuidRequest,
)
from ..core.timers import SleepRequest, WaitRequest
from ..core.workflow import RUNNING_STEP, Workflow
from ..errors import (
    Cancelled,
    ContengineError,
    CrashLoop,
    InvalidYield,
    SerializationError,
    StepFailed,
    Timeout,
    WorkflowFailed,
)
from ..store.base import (
    CANCELLED,
    COMPLETED,
    E_COMPLETED,
    E_FAILED,
    E_RETRYING,
    E_RUNNING,
    FAILED,
    PENDING,
    RUNNING,
    SLEEPING,
    WAITING,
    CancelArrived,
    EntryRow,
    Progress,
    RunRow,
    RunUpdate,
)
from . import cancel as drive_cancel
from . import children as drive_children
from . import gather as drive_gather
from .attempts import bad_call, call_with_timeout
from .failure import failure_line
from .log import decode_outcome
from .pool import Parked

if TYPE_CHECKING:
    from .runner import Runner

log = logging.getLogger("contengine")


class _Drive:
    """The state of one drive of one run (kept out of Runner so it is never shared)."""

    def __init__(
        self,
        runner: Runner,
        run: RunRow,
        wf: Workflow[Any, Any],
        driver: Driver,
        lease: tuple[str, int] | None = None,
        park: bool = False,
    ) -> None:
        self.r = runner
        self.lease = lease
        self.lapses = 0  # the leaseholder's lapses when the run was claimed (may_start)
        # Driven by a DrivePool: the commit before a step may park the drive (Parked)
        # instead of holding the thread until it is durable.
        self.park = park
        # Set by the runner: how a parked drive goes on inside the runner's handling.
        self.outer: Callable[[Callable[[], None]], None] | None = None
        self.run = run
        self.wf = wf
        self.driver = driver
        self.status = run.status
        self.due_at = run.due_at
        # The outcome of the previous request, to be committed with whatever
        # comes next (the next request, or the run's end).
        self.carry: EntryRow | None = None
        # Answers to immediate requests (now, random, ...), logged with the next commit.
        self.recorded: list[EntryRow] = []
        self.consume: int | None = None  # a mailbox message taken, deleted with the next commit
        self.new_runs: list[RunRow] = []  # child runs started, created with the next commit
        self.publish: list[tuple[str, bytes]] = []  # ce.publish values, with the next commit
        self.restart: bytes | None = None  # continue_as_new: new arguments
        self.cancel_pending = bool(run.cancel_requested)  # to be raised at the current yield
        self.clear_cancel = False  # a cancellation was delivered; say so with the next commit
        # carry is the outcome of a step this drive ran, sent in but not written yet: a
        # cancel found before it is written is raised at that step's yield instead
        # (drive_cancel.rewind), so the writes that carry it read the cancel flag first.
        self.fresh = False
        self.requests_since_look = 0  # requests since the store was last asked about a cancel
        self.stepped = 0.0  # seconds spent inside steps since the store was last asked
        # The attempts count of each entry in flight as last committed, by position:
        # every update must find it unchanged, so a second driver of the same run
        # cannot overwrite the first one's progress (the update fails instead).
        self.stored: dict[int, int] = {}
        self.idle_at: Pending | None = None  # the request the run went idle at, if resumable

    def go(self) -> None:
        self._guarded(self._go)

    def resume(self, pending: Pending) -> None:
        """Go on from the idle point where an earlier drive of this run set it aside
        (its generator kept alive, its request logged)."""
        self._guarded(lambda: self._loop(pending))

    def _guarded(self, go: Callable[[], None]) -> None:
        try:
            go()
        except Exception:
            # A step's outcome is a fact even if the code after it cannot go on
            # (an invalid yield, an engine error): keep it, so the step never runs twice.
            if self.carry is not None or self.recorded or self.consume is not None or self.new_runs:
                self._commit()
            raise

    def _go(self) -> None:
        self._loop(self.driver.start())

    def _loop(self, nxt: Any) -> None:
        self.idle_at = None
        while type(nxt) is Pending:
            try:
                outcome = self._carry_out(nxt)
            except drive_cancel.Rewound:
                raise  # the generator went past a cancelled step: replayed, not kept
            except NotDue:
                # Where the run went idle: a sleep, a wait or a retry's backoff can
                # be resumed from here without a replay, if the generator is kept.
                if isinstance(nxt.request, (SleepRequest, WaitRequest, StepCall)):
                    self.idle_at = nxt
                raise
            nxt = self.driver.send(outcome)
        if isinstance(nxt, Returned):
            self._finish_returned(nxt.value)
        elif isinstance(nxt, Raised):
            self._finish_raised(nxt.error, nxt.failed_at)

    # -- run end ------------------------------------------------------------

    def _finish_returned(self, value: Any) -> None:
        if isinstance(value, ContinueAsNew):
            self._continue_as_new(value)
            return
        if self.cancel_pending or self.run.id in self.r.cancelled:
            self._end_cancelled()  # a cancel not delivered (sent during the last step?)
            return
        try:
            data = self.r.serde.dumps_checked(
                value, f"the result of workflow {self.wf.name!r} (run {self.run.id!r})"
            )[0]
        except SerializationError as exc:
            self._finish_raised(exc)
            return
        now = self.r.clock.now()
        # Unless a delivered cancel is still to be written (the row's flag is that one),
        # the end's write reads the flag: another process's cancel sent during the last
        # step ends the run cancelled (_end_cancelled) instead of being lost.
        end = RunUpdate(
            COMPLETED, now, finished_at=now, result=data, clear_cancel=True,
            unless_cancelled=not self.clear_cancel,
        )  # fmt: skip
        self._commit_last(end, self._end_cancelled)

    def _end_cancelled(self) -> None:
        """The workflow returned with a cancel not delivered: raised at the yield of its
        last step if that step's outcome is not written yet (rewind); else (the cancel
        came after it) as an asyncio task whose cancel was requested before it finished,
        the run ends cancelled and its return value is dropped."""
        if self.fresh:
            drive_cancel.rewind(self)
        error = Cancelled(f"run {self.run.id!r} was cancelled")
        error.add_note(
            "contengine: the cancel came after the run's last request; the workflow "
            "returned before a yield could raise it, so its return value was dropped"
        )
        self._finish_raised(error)

    def _continue_as_new(self, again: ContinueAsNew) -> None:
        """Start this run again with new arguments; its log so far is dropped."""
        try:
            inspect.signature(self.wf.fn).bind(*again.args, **again.kwargs)
            data = self.r.serde.dumps_checked(
                (again.args, again.kwargs), f"the arguments to continue run {self.run.id!r} with"
            )[0]
        except (TypeError, SerializationError) as exc:
            self._finish_raised(exc)
            return
        self.restart = data
        self._commit(run=RunUpdate(PENDING, self.r.clock.now()))
        raise NotDue(self.r.clock.now())  # due at once: the next drive starts it afresh

    def _finish_raised(self, error: BaseException, failed_at: int | None = None) -> None:
        if self.fresh and drive_cancel.noted(self):
            drive_cancel.rewind(self)  # the cancel came during the last step: raised there
        what = f"the exception of workflow {self.wf.name!r} (run {self.run.id!r})"
        data = self.r.serde.dumps_error(error, what, WorkflowFailed)
        text = self.r.serde.clip("".join(traceback.format_exception(error)))
        now = self.r.clock.now()
        status = CANCELLED if isinstance(error, Cancelled) else FAILED
        if status == FAILED:
            text = failure_line(failed_at) + text  # where retry resumes (see retrying.py)
        # A cancel not delivered is void once the run failed (as an asyncio task that
        # raised: it ends with its exception); the row's flag says so with this write.
        with self.r.cancel_lock:
            self.r.cancelled.discard(self.run.id)
        self._commit_last(
            RunUpdate(status, now, finished_at=now, error=data, error_text=text, clear_cancel=True)
        )

    def _commit_last(self, run: RunUpdate, cancelled: Callable[[], None] | None = None) -> None:
        """The run's end: nothing is left to do after it, so in a pool the drive parks
        and ends once it is durable, and the end joins the batch of the runs still
        advancing (instead of being a disk sync of its own). cancelled: what to do
        instead when the write met a cancel request (CancelArrived: nothing written)."""
        if self.park:
            self._commit_then(_nothing, run=run, cancelled=cancelled)
        try:
            self._commit(run=run)
        except CancelArrived:
            if cancelled is None:
                raise
            cancelled()

    # -- one request ------------------------------------------------------------

    def _carry_out(self, pending: Pending) -> Outcome:
        request = pending.request
        if self.cancel_pending or (self.r.cancelled and self.run.id in self.r.cancelled):
            return self._deliver_cancel(pending)
        if self.r.stopping.is_set() and isinstance(request, (StepCall, GatherRequest)):
            # The worker stops: keep what is done, leave the rest due now for another
            # (a gather or race too, whose members are steps).
            now = self.r.clock.now()
            self._commit(run=RunUpdate(self.status, now, due_at=now))
            raise NotDue(now)
        self.requests_since_look += 1
        if not self.clear_cancel and (
            self.requests_since_look >= LOOK_EVERY or self.stepped >= LOOK_AFTER
        ):
            # Another process may have cancelled the run: every write reads that with
            # its lease check (_committed), but requests that write nothing do not, so
            # look in the store now and then too (every so many requests, or after
            # long steps). Time in steps, not wall time: a busy worker's runs wait for
            # the disk and the CPU between steps, and looking after each of those would
            # cost a read per step. Not while a delivered cancel is still to be written:
            # the row's flag is that same cancel, and raising it again at the cleanup
            # its finally block yields would skip the cleanup.
            self.requests_since_look = 0
            self.stepped = 0.0
            row = self.r.store.get_run(self.run.id)
            if row is not None and row.cancel_requested:
                return self._deliver_cancel(pending)
        if not isinstance(request, StepCall):
            if isinstance(request, Immediate):
                return self._immediate(pending.position, request)
            if isinstance(request, SleepRequest):
                return self._sleep(pending.position, request, pending.recorded is not None)
            if isinstance(request, WaitRequest):
                return self._wait(pending.position, request, pending.recorded is not None)
            if isinstance(request, GatherRequest):
                if request.kind == "race":
                    return drive_gather.race(self, pending, request)
                return drive_gather.gather(self, pending, request)
            if isinstance(request, ChildRequest):
                return drive_children.child(self, pending, request)
            if isinstance(request, ChildHandle):
                return drive_children.join(self, pending, request)
            raise InvalidYield(
                f"workflow {self.wf.name!r} yielded {request.describe()}, a request this "
                f"version of contengine cannot carry out; the log is unchanged"
            )
        rec = pending.recorded
        carry = self.carry
        # The previous outcome's time is this request's start: they share a commit.
        now = carry.finished_at if carry is not None and carry.finished_at else self.r.clock.now()
        if rec is None:
            # A new request: log it as in flight (attempt 1) with the previous outcome.
            entry = EntryRow(
                self.run.id, pending.position, request.kind, request.name, request.key,
                request.text, E_RUNNING, 1, 0, now,
            )  # fmt: skip
            if self.park:
                # The step may start only once this is durable: let the thread drive
                # other runs meanwhile, and go on from here when it is.
                self._commit_then(
                    lambda: self._after_logged(pending, entry, request),
                    insert=entry,
                    run=self._run_update(RUNNING, None, now),
                )
            # A cancel the write read (another process's, sent while the previous step
            # ran) is raised by _attempts before the step starts.
            self._commit(insert=entry, run=self._run_update(RUNNING, None, now))
        else:
            # Replay read only what it needed; the entry in flight is read whole.
            entry = self.r.store.load_log(self.run.id, pending.position, 1)[0]
            self.stored[entry.position] = entry.attempts
            self._resume_entry(entry, request, now)
            if entry.status != E_RUNNING:  # a crash loop was declared: the outcome is final
                return self._finished_outcome(entry)
        return self._attempts(pending, entry, request)

    def _after_logged(self, pending: Pending, entry: EntryRow, request: StepCall[Any]) -> None:
        """Go on once a new step's entry is durable: run it, and the workflow after it
        (what _loop would have done after _carry_out returned)."""
        try:
            outcome = self._attempts(pending, entry, request)
        except drive_cancel.Rewound:
            raise
        except NotDue:
            self.idle_at = pending  # a retry's backoff: resumable from here
            raise
        self._loop(self.driver.send(outcome))

    def _resume_entry(self, entry: EntryRow, request: StepCall[Any], now: float) -> None:
        """Prepare an entry found in flight in the log for its next attempt."""
        if entry.status == E_RUNNING:
            # Logged as running but no one is running it: its process died.
            if self._count_crash(entry, request, now):
                self.carry = entry
                return
        elif entry.status == E_RETRYING and entry.due_at is not None and entry.due_at > now:
            self._not_yet(RUNNING, entry.due_at)
        entry.status = E_RUNNING
        entry.attempts += 1
        entry.due_at = None
        self._commit(update=entry, run=self._run_update(RUNNING, None, now))

    def _count_crash(self, entry: EntryRow, request: StepCall[Any], now: float) -> bool:
        """Count a crash during the entry's last attempt; True (the entry failed with
        ce.CrashLoop) once the step's max_crashes is passed."""
        entry.crashes += 1
        limit = request.options.max_crashes
        if entry.crashes <= limit:
            return False
        err = CrashLoop(
            "CrashLoop",
            f"step {request.name!r} at position {entry.position} of run {self.run.id!r} was "
            f"interrupted by a process crash {entry.crashes} times (max_crashes={limit}); "
            f"it is not tried again. Fix what kills the process, then retry the run.",
        )
        self._fail_entry(entry, err, "", now)
        return True

    def _attempts(self, pending: Pending, entry: EntryRow, request: StepCall[Any]) -> Outcome:
        """Run attempts until the step succeeds or its retries are spent."""
        args, kwargs = self._step_arguments(request)
        queue = request.options.queue
        stopping = self.r.stopping
        cancelled = self.r.cancelled
        while True:
            if self.cancel_pending or (cancelled and self.run.id in cancelled):
                # Read with the last write (a retry due at once, a crash counted) or sent
                # from this process meanwhile: the next attempt does not start.
                return self._deliver_cancel(pending, logged=True)
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
                return drive_cancel.at_step(self, entry, ok, value, tb)
            attempts = entry.attempts
            try:
                settled = self._settle(entry, request, ok, value, tb, args, kwargs)
            except CancelArrived:  # read by the write that would set up a retry
                entry.attempts = attempts  # no other attempt began
                return drive_cancel.at_step(self, entry, ok, value, tb)
            if isinstance(settled, Outcome):
                self.carry = entry  # written with the next request, in one commit
                self.fresh = True
                return settled
            if settled is not None:
                self._go_idle([], settled)

    def _settle(
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
                return Outcome(True, copy)
        failures = entry.attempts - entry.crashes
        if bad_call(request.step.fn, args, kwargs, value):
            retryable = False
            value.add_note(
                f"contengine: step {request.name!r} was called with arguments it does "
                f"not accept; it was not retried"
            )
        if retryable and isinstance(value, opts.retry_on) and failures <= opts.retries:
            delay = opts.backoff.delay(failures)
            entry.error_text = self.r.serde.clip(tb)
            if delay > 0:
                entry.status, entry.due_at = E_RETRYING, now + delay
                run = None if member else self._run_update(RUNNING, entry.due_at, now)
                self._commit(update=entry, run=run, unless_cancelled=True)
                return entry.due_at
            entry.status, entry.due_at = E_RUNNING, None
            entry.attempts += 1
            run = None if member else self._run_update(RUNNING, None, now)
            self._commit(update=entry, run=run, unless_cancelled=True)
            return None
        value.add_note(
            f"contengine: step {request.name!r} failed at position {entry.position} of run "
            f"{self.run.id!r} after {entry.attempts} attempt(s)"
        )
        self._fail_entry(entry, value, tb, now)
        return self._finished_outcome(entry)

    def _fail_entry(self, entry: EntryRow, error: BaseException, tb: str, now: float) -> None:
        """Fill in entry as failed with error (the caller decides how it is written)."""
        what = f"the exception of {entry.kind} {entry.name!r} at position {entry.position}"
        entry.outcome = self.r.serde.dumps_error(error, what, StepFailed)
        entry.status, entry.finished_at, entry.due_at = E_FAILED, now, None
        if not tb:
            tb = str(error) if isinstance(error, StepFailed) else f"{type(error).__name__}: {error}"
        entry.error_text = self.r.serde.clip(tb)

    def _finished_outcome(self, entry: EntryRow) -> Outcome:
        # Read back what was stored, so the live run sees exactly what a replay will.
        return decode_outcome(self.r.serde, entry)  # type: ignore[return-value]

    def _step_arguments(self, request: StepCall[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
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
        self._commit(update=entry, run=self._run_update(RUNNING, now, now))
        raise NotDue(now)

    def _execute_member(
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
            self.stepped += self.r.clock.monotonic() - began
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

    # -- requests answered without user code ---------------------------------------

    def _immediate(self, position: int, request: Immediate) -> Outcome:
        """Answer now/random/uuid/patched/publish at once; the answer is logged with the
        next commit (so these cost no commit of their own)."""
        now = self.r.clock.now()
        if isinstance(request, NowRequest):
            value: Any = datetime.datetime.fromtimestamp(now, datetime.UTC)
        elif isinstance(request, RandomRequest):
            value = self.r.random.random()
        elif isinstance(request, UuidRequest):
            value = uuid.UUID(int=self.r.random.getrandbits(128), version=4)
        elif isinstance(request, PublishRequest):
            value = request.value
        else:
            value = True  # a patch reached live: this run takes the new path
        status, error_text = E_COMPLETED, None
        try:
            data, copy = self.r.serde.dumps_checked(
                value, lambda: f"the value of {request.describe()} at position {position}"
            )
            if isinstance(request, PublishRequest):
                self.publish.append((request.name, data))  # written with the entry
        except SerializationError as exc:
            status, error_text = E_FAILED, f"{type(exc).__name__}: {exc}"
            data = self.r.serde.dumps_error(exc, "a serialization error", StepFailed)
            copy = self.r.serde.loads(data, "a serialization error")
        self.recorded.append(
            EntryRow(
                self.run.id, position, request.kind, request.name, request.key, request.text,
                status, 1, 0, now, now, None, data, error_text,
            )
        )  # fmt: skip
        return Outcome(status == E_COMPLETED, copy)

    def _sleep(self, position: int, request: SleepRequest, logged: bool) -> Outcome:
        """A durable timer: log the wake time once, then wait (NotDue) until it passes."""
        now = self.r.clock.now()
        if not logged:
            wake = request.wake_time(now)
            entry = EntryRow(
                self.run.id, position, request.kind, request.name, request.key, request.text,
                E_RUNNING, 1, 0, now, None, wake,
            )  # fmt: skip
            if wake > now:
                self._commit(insert=entry, run=RunUpdate(SLEEPING, now, due_at=wake))
                self._go_idle([], wake)
            # Already due (a zero or past sleep): logged complete with the next commit.
            entry.status, entry.finished_at, entry.due_at = E_COMPLETED, now, None
            entry.outcome = self.r.serde.dumps(None, "nothing")
            self.recorded.append(entry)
            return Outcome(True, None)
        else:
            entry = self.r.store.load_log(self.run.id, position, 1)[0]
            self.stored[entry.position] = entry.attempts
            if entry.due_at is not None and entry.due_at > now:
                self._not_yet(SLEEPING, entry.due_at)
        entry.status, entry.finished_at, entry.due_at = E_COMPLETED, now, None
        entry.outcome = self.r.serde.dumps(None, "nothing")
        self.carry = entry
        return Outcome(True, None)

    def _wait(self, position: int, request: WaitRequest, logged: bool) -> Outcome:
        """Take the oldest signal under the name, or wait for one until the timeout."""
        now = self.r.clock.now()
        store = self.r.store
        if logged:
            entry = store.load_log(self.run.id, position, 1)[0]
            self.stored[entry.position] = entry.attempts
        else:
            deadline = NEVER if request.timeout is None else now + request.timeout
            entry = EntryRow(
                self.run.id, position, request.kind, request.name, request.key, request.text,
                E_RUNNING, 1, 0, now, None, deadline,
            )  # fmt: skip
        signal = store.peek_signal(self.run.id, request.signal)
        if signal is not None:
            # Taken and logged in one transaction (the next commit): a crash either
            # leaves the signal in the mailbox or has it logged, never both or neither.
            value = self.r.serde.loads(signal.payload, f"signal {request.signal!r}")
            entry.status, entry.finished_at, entry.due_at = E_COMPLETED, now, None
            entry.outcome = signal.payload
            self._hold(entry, logged)
            self.consume = signal.seq
            # Committed now, not with the next request: a later wait in this same
            # drive must not find this signal still in the mailbox.
            self._commit()
            return Outcome(True, value)
        deadline = entry.due_at if entry.due_at is not None else NEVER
        if deadline <= now:
            # The timeout is logged as the outcome: a replay takes the same branch
            # even if the signal arrives later (it stays for a later wait).
            error = Timeout(
                f"no signal {request.signal!r} arrived within {duration_text(request.timeout)}"
            )
            self._fail_entry(entry, error, f"Timeout: {error}", now)
            self._hold(entry, logged)
            return self._finished_outcome(entry)
        if not logged:
            self._commit(insert=entry, run=RunUpdate(WAITING, now, due_at=deadline))
        elif self.status != WAITING or self.due_at != deadline:
            # Woken by another name's signal (or a restart): back to waiting.
            self._commit(run=RunUpdate(WAITING, now, due_at=deadline))
        self._go_idle([request.signal], deadline)

    def _not_yet(self, status: str, due: float) -> NoReturn:
        """Woken early (by a child's end, a signal for another name): back to waiting."""
        if self.status != status or self.due_at != due:
            self._commit(run=RunUpdate(status, self.r.clock.now(), due_at=due))
        raise NotDue(due)

    def _go_idle(self, names: list[str], due: float) -> NoReturn:
        """Set the run aside until due (NotDue), unless it was woken meanwhile.

        A signal (for names) or a cancel that came after the last look but before
        the commit that set the run aside found it busy, so it did not wake it;
        looking again after that commit closes the gap (anything later sees the run
        idle and wakes it itself). Woken, the run is made due now and driven again.
        """
        store = self.r.store
        woken = self.run.id in self.r.cancelled or any(
            store.peek_signal(self.run.id, name) is not None for name in names
        )
        if not woken:
            row = store.get_run(self.run.id)
            woken = row is not None and bool(row.cancel_requested)
        if woken:
            now = self.r.clock.now()
            self._commit(run=RunUpdate(self.status, now, due_at=now))
            raise NotDue(now)
        raise NotDue(due)

    def _hold(self, entry: EntryRow, logged: bool) -> None:
        """Keep a finished entry for the next commit: an update if logged, else an insert."""
        if logged:
            self.carry = entry
        else:
            self.recorded.append(entry)

    def _deliver_cancel(self, pending: Pending, logged: bool | None = None) -> Outcome:
        """Raise ce.Cancelled at this yield, and log it here, so replay raises it here too
        (logged: the request's entry is in the log, whatever pending says). If the
        previous step's outcome is not written yet, the cancel came before the step's
        end was logged: it is raised at that step's yield instead (rewind)."""
        if self.fresh:
            drive_cancel.rewind(self)
        drive_cancel.deliver(self)
        now = self.r.clock.now()
        request = pending.request
        if logged is None:
            logged = pending.recorded is not None
        error = Cancelled(f"run {self.run.id!r} was cancelled")
        if isinstance(request, GatherRequest):
            return drive_gather.cancel_gather(self, pending, request, error, now)
        if logged:
            entry = self.r.store.load_log(self.run.id, pending.position, 1)[0]
            self.stored[entry.position] = entry.attempts
        else:
            entry = EntryRow(
                self.run.id, pending.position, request.kind, request.name, request.key,
                request.text, E_RUNNING, 0, 0, now,
            )  # fmt: skip
        self._fail_entry(entry, error, "Cancelled: the run was cancelled", now)
        self._hold(entry, logged)
        return self._finished_outcome(entry)

    # -- writing ---------------------------------------------------------------

    def _run_update(self, status: str, due_at: float | None, now: float) -> RunUpdate | None:
        if status == self.status and due_at == self.due_at:
            return None
        return RunUpdate(status, now, due_at=due_at)

    def _commit(
        self,
        *,
        update: EntryRow | None = None,
        insert: EntryRow | None = None,
        run: RunUpdate | None = None,
        unless_cancelled: bool = False,
    ) -> None:
        """Write progress (unless_cancelled: CancelArrived, nothing written, if the run's
        row asks for a cancel; so too whenever a fresh step's outcome is carried, which
        is rewound to be cancelled instead)."""
        progress = self._progress(update, insert, run, unless_cancelled)
        try:
            cancel = self.r.store.commit(progress)
        except CancelArrived:
            if self.fresh:
                drive_cancel.rewind(self)
            raise
        self._committed(progress, bool(cancel))

    def _commit_then(
        self,
        then: Callable[[], None],
        *,
        update: EntryRow | None = None,
        insert: EntryRow | None = None,
        run: RunUpdate | None = None,
        cancelled: Callable[[], None] | None = None,
    ) -> NoReturn:
        """Start the commit and park: then() runs once it is durable, in whichever
        thread of the pool takes the drive up again (the commit's error is raised
        there instead, as _commit would raise it; cancelled() runs instead of raising
        CancelArrived, if given)."""
        progress = self._progress(update, insert, run)
        ticket = self.r.store.commit_later(progress)

        def go_on() -> None:
            if ticket.error is not None:
                if isinstance(ticket.error, CancelArrived) and self.fresh:
                    drive_cancel.rewind(self)  # the carried step is cancelled instead
                if cancelled is not None and isinstance(ticket.error, CancelArrived):
                    cancelled()
                    return
                raise ticket.error
            self._committed(progress, ticket.cancel)
            then()

        outer = self.outer
        assert outer is not None, "a drive that may park has the runner's handling"
        raise Parked(ticket, functools.partial(outer, functools.partial(self._guarded, go_on)))

    def _progress(
        self,
        update: EntryRow | None,
        insert: EntryRow | None,
        run: RunUpdate | None,
        unless_cancelled: bool = False,
    ) -> Progress:
        # A carried outcome is always flushed by the next commit, and the only
        # writes that update an entry happen when nothing is carried.
        assert self.carry is None or update is None
        entry = update or self.carry
        expect = self.stored.get(entry.position) if entry is not None else None
        recorded = tuple(self.recorded) if self.recorded else ()
        if self.clear_cancel:
            if run is None:
                run = RunUpdate(self.status, self.r.clock.now(), due_at=self.due_at)
            run.clear_cancel = True
        new_runs = tuple(self.new_runs) if self.new_runs else ()
        publish = tuple(self.publish) if self.publish else ()
        # The write of a fresh step's outcome reads the cancel flag first (as a leased
        # write reads it anyway: no statement more), so that a cancel that came before
        # it is raised at that step's yield. Not while a delivered cancel is still to be
        # written: the row's flag is that one.
        unless = (
            (unless_cancelled or self.fresh) and self.lease is not None and not self.clear_cancel
        )
        return Progress(
            self.run.id, entry, insert, run, expect, recorded, self.consume, new_runs,
            publish, self.restart, lease=self.lease, unless_cancelled=unless,
        )  # fmt: skip

    def _committed(self, p: Progress, cancel: bool = False) -> None:
        """Bring the drive's state up to a durable commit of p; cancel: the run's row asks
        for a cancel (another process's), delivered at the current yield."""
        if cancel:
            self.cancel_pending = True
        if p.lease is not None:
            # The write read the run's cancel flag with its lease: a look is due only
            # after requests that write nothing, or time in steps, since this one.
            self.requests_since_look = 0
            self.stepped = 0.0
        self.new_runs.clear()
        self.publish.clear()
        self.restart = None
        if p.update is not None:
            self.stored[p.update.position] = p.update.attempts
        if p.insert is not None:
            self.stored[p.insert.position] = p.insert.attempts
        for e in p.recorded:
            self.stored[e.position] = e.attempts
        self.carry = None
        self.fresh = False
        self.consume = None
        if self.clear_cancel:
            # The delivery is on record: cancel() calls of this process made before it
            # were one request with the one delivered (as another process's are: the
            # write cleared the row's flag), not a second one.
            self.clear_cancel = False
            with self.r.cancel_lock:
                self.r.cancelled.discard(self.run.id)
            self.r.watch.delivered(self.run.id)
        if p.recorded:
            self.recorded.clear()
        if p.run is not None:
            self.status, self.due_at = p.run.status, p.run.due_at


def _nothing() -> None:
    """What is left of a drive after its run's end is written."""


_SCALARS = frozenset({int, str, bytes, float, bool, type(None)})
# A cancel from another process is looked for every LOOK_EVERY requests, or when
# LOOK_AFTER seconds have been spent in steps since the last look (long steps).
LOOK_EVERY = 32
LOOK_AFTER = 0.05
