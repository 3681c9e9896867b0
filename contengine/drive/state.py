"""A drive's state and its writes: what it knows of its run, and how each commit is made.

The base of Drive (drive/loop.py): gathers, child runs, timers and the run's end
carry out their requests through the public methods here, not through its fields.
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading
from collections.abc import Callable
from typing import Any, NoReturn, Protocol

from ..clock import Clock
from ..core.driver import Driver, Pending
from ..core.idle import NotDue
from ..core.outcome import Outcome
from ..core.serde import Serde, short
from ..core.workflow import Workflow
from ..errors import Cancelled, StepFailed
from ..store.base import (
    E_COMPLETED,
    E_FAILED,
    E_RUNNING,
    CancelArrived,
    EntryRow,
    Progress,
    RunRow,
    RunUpdate,
    Store,
)
from .cancel_watch import CancelWatch
from .events import Events
from .log import decode_outcome
from .outbox import Outbox
from .pool import Parked


class Rewound(NotDue):
    """The run is due now and must be replayed from its log (its generator is not kept):
    a cancel is raised at the yield of a step the workflow already went past."""


class Shared(Protocol):
    """What every drive of one engine shares (the Runner provides it)."""

    store: Store
    serde: Serde
    clock: Clock
    random: Any  # random.Random: the source of ce.random() and ce.uuid()
    cancelled: set[str]  # runs cancelled by this process, delivered at their current yield
    cancel_lock: threading.Lock
    stopping: threading.Event
    in_steps: set[tuple[str, int]]
    watch: CancelWatch
    events: Events  # the engine's hooks and the contengine logger (drive/events.py)

    def take_slot(
        self,
        queue: str,
        give_up: threading.Event | None = None,
        lease: tuple[str, str, int] | None = None,
    ) -> int | None: ...

    def give_slot(self, slot: int) -> None: ...

    def may_start(self, run_id: str, lease: int, lapses: int) -> int: ...

    def pool(self) -> concurrent.futures.ThreadPoolExecutor: ...


class DriveState:
    """The state of one drive of one run (kept out of Runner so it is never shared),
    and the writes that bring the log up to it.

    Public to the other drive modules: r (the shared parts), run, wf, driver, lease,
    lapses, park, outer, status and due_at (of the run as last written), out (the
    Outbox), cancel_pending, idle_at, and the methods below.
    """

    def __init__(
        self,
        runner: Shared,
        run: RunRow,
        wf: Workflow[Any, Any],
        driver: Driver,
        lease: tuple[str, int] | None = None,
        park: bool = False,
        lapses: int = 0,
    ) -> None:
        self.r = runner
        self.wf = wf
        self.driver = driver
        # Set by the runner: how a parked drive goes on inside the runner's handling.
        self.outer: Callable[[Callable[[], None]], None] | None = None
        self.out = Outbox()
        self.requests_since_look = 0  # requests since the store was last asked about a cancel
        self.stepped = 0.0  # seconds spent inside steps since the store was last asked
        # The attempts count of each entry in flight as last committed, by position:
        # every update must find it unchanged, so a second driver of the same run
        # cannot overwrite the first one's progress (the update fails instead).
        self.stored: dict[int, int] = {}
        self.idle_at: Pending | None = None  # the request the run went idle at, if resumable
        self.cancel_pending = False
        # Seconds each step attempt ran, by position, while someone listens to events
        # (drive/events.py); and whether this drive found a crash already (run.resumed).
        self.took: dict[int, float] = {}
        self.crash_seen = False
        self.reset(run, lease, park, lapses)

    def reset(
        self, run: RunRow, lease: tuple[str, int] | None, park: bool, lapses: int = 0
    ) -> None:
        """Take up the run as the store has it now: for a new drive, or a kept drive going
        on with its live generator. Others may have changed the run's status and due time
        (a signal, a child's end) or asked for a cancel meanwhile; never its log."""
        self.run = run
        self.lease = lease
        # Driven by a DrivePool: the commit before a step may park the drive (Parked)
        # instead of holding the thread until it is durable.
        self.park = park
        self.lapses = lapses  # the leaseholder's lapses when the run was claimed (may_start)
        self.status = run.status
        self.due_at = run.due_at
        # To be raised at the next yield (kept if the kept drive had one already).
        self.cancel_pending = self.cancel_pending or bool(run.cancel_requested)

    # -- the log ---------------------------------------------------------------

    def read_entry(self, position: int) -> EntryRow:
        """The logged entry at position, read whole; later updates of it are fenced on
        its attempts as read here."""
        entry = self.r.store.load_log(self.run.id, position, 1)[0]
        self.stored[position] = entry.attempts
        return entry

    def fail_entry(self, entry: EntryRow, error: BaseException, tb: str, now: float) -> None:
        """Fill in entry as failed with error (the caller decides how it is written)."""
        what = f"the exception of {entry.kind} {entry.name!r} at position {entry.position}"
        entry.outcome = self.r.serde.dumps_error(error, what, StepFailed)
        entry.status, entry.finished_at, entry.due_at = E_FAILED, now, None
        if not tb:
            tb = str(error) if isinstance(error, StepFailed) else f"{type(error).__name__}: {error}"
        entry.error_text = self.r.serde.clip(tb)

    def finished_outcome(self, entry: EntryRow) -> Outcome:
        """The outcome as stored, so the live run sees exactly what a replay will."""
        return decode_outcome(self.r.serde, entry)  # type: ignore[return-value]

    # -- cancellation ------------------------------------------------------------

    def take_cancel(self) -> Cancelled:
        """A cancel is delivered at this yield: it is no longer pending, and the next commit
        clears the run's flag. The error to raise in the workflow."""
        self.cancel_pending = False
        with self.r.cancel_lock:  # a cancel() still between its write and its entry
            self.r.cancelled.discard(self.run.id)
        self.out.delivered = True
        return Cancelled(f"run {self.run.id!r} was cancelled")

    def fail_cancelled(self, entry: EntryRow, ok: bool, value: Any, tb: str, now: float) -> None:
        """Fill in entry, a step that was running when the run was cancelled, as failed with
        ce.Cancelled (raised at its yield; drive/cancel.py): what the step gave (ok, value,
        tb) is dropped, and kept in the entry's error_text for operators."""
        error = Cancelled(f"run {self.run.id!r} was cancelled")
        error.add_note(
            f"contengine: the cancel came while step {entry.name!r} (position "
            f"{entry.position}) ran; it is raised at that step's yield and the step's "
            f"result was dropped"
        )
        head = "Cancelled: the run was cancelled while this step ran; "
        if ok:
            text = head + f"its result was dropped: {short(value)}"
        else:
            text = head + "its failure was dropped:\n" + tb
        self.fail_entry(entry, error, text, now)

    def cancel_carried(self) -> NoReturn:
        """A cancel found after the workflow went past a step whose outcome is not written
        yet (the outbox's fresh carry): the step is written cancelled instead, what the
        workflow did after it is dropped (none of it is written), and the run is driven
        again from its log, whose replay raises ce.Cancelled at that step's yield
        (Rewound: due now)."""
        out = self.out
        entry = out.carry
        assert entry is not None and out.fresh, "only a step's unwritten outcome is rewound"
        out.drop_after_carry()
        self.idle_at = None  # the generator went past the step: it must not be kept
        if entry.status == E_COMPLETED and entry.outcome is not None:
            value = self.r.serde.loads(entry.outcome, f"the result of step {entry.name!r}")
            ok, tb = True, ""
        else:
            ok, value, tb = False, None, entry.error_text or ""
        self.take_cancel()
        now = self.r.clock.now()
        self.fail_cancelled(entry, ok, value, tb, now)
        self.commit(run=RunUpdate(self.status, now, due_at=now))
        raise Rewound(now)

    def cancel_entry(self, pending: Pending, logged: bool, error: Cancelled) -> Outcome:
        """Log ce.Cancelled as the outcome of the request at pending (not a gather), so a
        replay raises it there too."""
        now = self.r.clock.now()
        request = pending.request
        if logged:
            entry = self.read_entry(pending.position)
        else:
            entry = EntryRow(
                self.run.id, pending.position, request.kind, request.name, request.key,
                request.text, E_RUNNING, 0, 0, now,
            )  # fmt: skip
        self.fail_entry(entry, error, "Cancelled: the run was cancelled", now)
        self.out.hold(entry, logged)
        return self.finished_outcome(entry)

    # -- going idle ---------------------------------------------------------------

    def not_yet(self, status: str, due: float) -> NoReturn:
        """Woken early (by a child's end, a signal for another name): back to waiting."""
        if self.status != status or self.due_at != due:
            self.commit(run=RunUpdate(status, self.r.clock.now(), due_at=due))
        raise NotDue(due)

    def go_idle(self, names: list[str], due: float) -> NoReturn:
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
            self.commit(run=RunUpdate(self.status, now, due_at=now))
            raise NotDue(now)
        raise NotDue(due)

    # -- writing ---------------------------------------------------------------

    def run_update(self, status: str, due_at: float | None, now: float) -> RunUpdate | None:
        """The run's new status and due time, or None if the row already has them."""
        if status == self.status and due_at == self.due_at:
            return None
        return RunUpdate(status, now, due_at=due_at)

    def commit(
        self,
        *,
        update: EntryRow | None = None,
        insert: EntryRow | None = None,
        run: RunUpdate | None = None,
        unless_cancelled: bool = False,
    ) -> None:
        """Write update, insert and run with everything in the outbox, durably (fenced by
        the lease and the entry's attempts); a cancel the write read is delivered next.

        unless_cancelled: nothing is written if the run's row asks for a cancel
        (CancelArrived). So too whenever the outbox carries a fresh step's outcome,
        which is then written cancelled instead (cancel_carried: Rewound)."""
        out = self.out
        if out.delivered and run is None:
            run = RunUpdate(self.status, self.r.clock.now(), due_at=self.due_at)
        progress = out.progress(
            self.run.id, update, insert, run, self.stored, self.lease, unless_cancelled
        )
        try:
            cancel = self.r.store.commit(progress)
        except CancelArrived:
            if out.fresh:
                self.cancel_carried()
            raise
        self.committed(progress, bool(cancel))

    def commit_then(
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
        there instead, as commit would raise it; cancelled() runs instead of raising
        CancelArrived, if given)."""
        out = self.out
        if out.delivered and run is None:
            run = RunUpdate(self.status, self.r.clock.now(), due_at=self.due_at)
        progress = out.progress(self.run.id, update, insert, run, self.stored, self.lease)
        ticket = self.r.store.commit_later(progress)

        def go_on() -> None:
            if ticket.error is not None:
                if isinstance(ticket.error, CancelArrived) and self.out.fresh:
                    self.cancel_carried()  # the carried step is cancelled instead
                if cancelled is not None and isinstance(ticket.error, CancelArrived):
                    cancelled()
                    return
                raise ticket.error
            self.committed(progress, ticket.cancel)
            then()

        outer = self.outer
        assert outer is not None, "a drive that may park has the runner's handling"
        raise Parked(ticket, functools.partial(outer, functools.partial(self.guarded, go_on)))

    def guarded(self, go: Callable[[], None]) -> None:
        """Run go; if it raises, write what the outbox holds first (see Outbox)."""
        try:
            go()
        except Exception:
            # A step's outcome is a fact even if the code after it cannot go on
            # (an invalid yield, an engine error): keep it, so the step never runs twice.
            if self.out.has_unwritten():
                self.commit()
            raise

    def committed(self, p: Progress, cancel: bool = False) -> None:
        """Bring the drive's state up to a durable commit of p; cancel: the run's row asks
        for a cancel (another process's), delivered at the current yield."""
        if cancel:
            self.cancel_pending = True
        if p.lease is not None:
            # The write read the run's cancel flag with its lease: a look is due only
            # after requests that write nothing, or time in steps, since this one.
            self.requests_since_look = 0
            self.stepped = 0.0
        stored = self.stored
        for e in (p.update, p.insert, *p.recorded):
            if e is None:
                continue
            if e.status == E_COMPLETED or e.status == E_FAILED:
                # An outcome is final: the entry is not written again, so there is
                # nothing to fence (a long run keeps only its entries in flight).
                stored.pop(e.position, None)
            else:
                stored[e.position] = e.attempts
        out = self.out
        if out.delivered:
            # The delivery is on record: cancel() calls of this process made before it
            # were one request with the one delivered (as another process's are: the
            # write cleared the row's flag), not a second one.
            with self.r.cancel_lock:
                self.r.cancelled.discard(self.run.id)
            self.r.watch.delivered(self.run.id)
        out.sent(p)
        if p.run is not None:
            self.status, self.due_at = p.run.status, p.run.due_at
