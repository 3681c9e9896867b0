"""One drive of one run: rebuild it from its log, execute steps, commit outcomes.

The write pattern is what makes every step cost one commit: when a step's
outcome is known it is sent into the generator first (pure code runs up to the
next yield), and then the outcome *and* the next request are committed together
(drive/outbox.py states when that is safe). The log therefore always shows the
request in flight, and a crash at any point leaves either the old state or the new one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..core.children import ChildHandle, ChildRequest
from ..core.driver import Pending, Raised, Returned
from ..core.gather import GatherRequest, RaceRequest
from ..core.idle import NotDue
from ..core.messages import SendRequest
from ..core.outcome import Outcome
from ..core.requests import (
    NowRequest,
    PatchedRequest,
    PublishRequest,
    RandomRequest,
    StepCall,
    UuidRequest,
)
from ..core.timers import SleepRequest, WaitRequest
from ..errors import InvalidYield
from ..store.base import E_RUNNING, RUNNING, EntryRow, RunUpdate
from . import answers, children, ending, gather
from .state import Rewound
from .steps import StepDrive

# A cancel from another process is looked for every LOOK_EVERY requests, or when
# LOOK_AFTER seconds have been spent in steps since the last look (long steps).
LOOK_EVERY = 32
LOOK_AFTER = 0.05


class Drive(StepDrive):
    """One drive of one run: go() rebuilds the run and carries it as far as it can go
    now; resume() goes on from where a kept drive of the run went idle.

    Ends by returning (the run ended), raising NotDue (the run waits; idle_at is the
    request it waits at, if the drive can be kept and resumed), Parked (in a pool: a
    commit to wait for), or the error that stops the run from going on.
    """

    def go(self) -> None:
        """Rebuild the run from its log and carry it on."""
        self.guarded(self._go)

    def resume(self, pending: Pending) -> None:
        """Go on from the idle point where an earlier drive of this run set it aside
        (its generator kept alive, its request logged)."""
        self.guarded(lambda: self._loop(pending))

    def _go(self) -> None:
        self._loop(self.driver.start())

    def _loop(self, nxt: Any) -> None:
        self.idle_at = None
        while type(nxt) is Pending:
            try:
                outcome = self._carry_out(nxt)
            except Rewound:
                raise  # the generator went past a cancelled step: replayed, not kept
            except NotDue:
                # Where the run went idle: a sleep, a wait or a retry's backoff can
                # be resumed from here without a replay, if the generator is kept.
                if isinstance(nxt.request, (SleepRequest, WaitRequest, StepCall)):
                    self.idle_at = nxt
                raise
            nxt = self.driver.send(outcome)
        if isinstance(nxt, Returned):
            ending.returned(self, nxt.value)
        elif isinstance(nxt, Raised):
            ending.raised(self, nxt.error, nxt.failed_at)

    # -- one request ------------------------------------------------------------

    def _carry_out(self, pending: Pending) -> Outcome:
        request = pending.request
        if self.cancel_pending or (self.r.cancelled and self.run.id in self.r.cancelled):
            return self.deliver_cancel(pending)
        if self.r.stopping.is_set() and isinstance(request, (StepCall, GatherRequest)):
            # The worker stops: keep what is done, leave the rest due now for another
            # (a gather or race too, whose members are steps).
            now = self.r.clock.now()
            self.commit(run=RunUpdate(self.status, now, due_at=now))
            raise NotDue(now)
        self.requests_since_look += 1
        out = self.out
        if not out.delivered and (
            self.requests_since_look >= LOOK_EVERY or self.stepped >= LOOK_AFTER
        ):
            # Another process may have cancelled the run: every write reads that with
            # its lease check (committed), but requests that write nothing do not, so
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
                return self.deliver_cancel(pending)
        if type(request) is not StepCall:
            carry_out = KINDS.get(type(request)) or _kind_of(request)
            if carry_out is None:
                raise InvalidYield(
                    f"workflow {self.wf.name!r} yielded {request.describe()}, a request "
                    f"this version of contengine cannot carry out; the log is unchanged"
                )
            return carry_out(self, pending, request)
        carry = out.carry
        # The previous outcome's time is this request's start: they share a commit.
        now = carry.finished_at if carry is not None and carry.finished_at else self.r.clock.now()
        if pending.recorded is None:
            # A new request: log it as in flight (attempt 1) with the previous outcome.
            entry = EntryRow(
                self.run.id, pending.position, request.kind, request.name, request.key,
                request.text, E_RUNNING, 1, 0, now,
            )  # fmt: skip
            if self.park:
                # The step may start only once this is durable: let the thread drive
                # other runs meanwhile, and go on from here when it is.
                self.commit_then(
                    lambda: self._after_logged(pending, entry, request),
                    insert=entry,
                    run=self.run_update(RUNNING, None, now),
                )
            # A cancel the write read (another process's, sent while the previous step
            # ran) is raised by attempts() before the step starts.
            self.commit(insert=entry, run=self.run_update(RUNNING, None, now))
        else:
            # Replay read only what it needed; the entry in flight is read whole.
            entry = self.read_entry(pending.position)
            self.resume_entry(entry, request, now)
            if entry.status != E_RUNNING:  # a crash loop was declared: the outcome is final
                return self.finished_outcome(entry)
        return self.attempts(pending, entry, request)

    def _after_logged(self, pending: Pending, entry: EntryRow, request: StepCall[Any]) -> None:
        """Go on once a new step's entry is durable: run it, and the workflow after it
        (what _loop would have done after _carry_out returned)."""
        try:
            outcome = self.attempts(pending, entry, request)
        except Rewound:
            raise
        except NotDue:
            self.idle_at = pending  # a retry's backoff: resumable from here
            raise
        self._loop(self.driver.send(outcome))

    def deliver_cancel(self, pending: Pending) -> Outcome:
        """Raise ce.Cancelled at this yield, and log it here, so replay raises it here too.
        If the previous step's outcome is not written yet, the cancel came before the
        step's end was logged: it is raised at that step's yield instead (Rewound)."""
        if self.out.fresh:
            self.cancel_carried()
        error = self.take_cancel()
        request = pending.request
        if isinstance(request, GatherRequest):
            return gather.cancel_gather(self, pending, request, error, self.r.clock.now())
        return self.cancel_entry(pending, pending.recorded is not None, error)


# How each kind of request other than a step is carried out, by its type (a step is
# carried out in Drive._carry_out itself: the path every step takes stays one call).
KINDS: dict[type, Callable[[Drive, Pending, Any], Outcome]] = {
    NowRequest: answers.immediate,
    RandomRequest: answers.immediate,
    UuidRequest: answers.immediate,
    PatchedRequest: answers.immediate,
    PublishRequest: answers.immediate,
    SendRequest: answers.send,
    SleepRequest: answers.sleep,
    WaitRequest: answers.wait,
    GatherRequest: gather.gather_or_race,
    RaceRequest: gather.gather_or_race,
    ChildRequest: children.child,
    ChildHandle: children.join,
}


def _kind_of(request: Any) -> Callable[[Drive, Pending, Any], Outcome] | None:
    """How a request of a type not in KINDS is carried out: as its nearest base type in
    KINDS is (remembered for its type), or None if none is."""
    for base in type(request).__mro__:
        carry_out = KINDS.get(base)
        if carry_out is not None:
            KINDS[type(request)] = carry_out
            return carry_out
    return None
