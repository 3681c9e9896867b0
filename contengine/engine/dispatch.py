"""The Dispatcher: claims an engine's due runs and drives them, for run_until_idle() and workers.

It holds what every drive of an engine shares beyond the Runner: the leases (a
Leaseholder), the runs being driven now, the runs set aside as stuck, the thread
pools that drive runs, and the wake-up of whoever waits for a run in this process.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import logging
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..clock import Clock, SystemClock
from ..drive import pool as drive_pool
from ..drive.pool import DrivePool, Parked
from ..drive.runner import NotDue, Runner
from ..errors import (
    ContengineError,
    DatabaseError,
    LeaseLost,
    RunNotFound,
    WorkflowNotFound,
)
from ..store.base import FINISHED, Claim, Listening, OneEngineStore, Rewind, RunRow, Store
from .leases import Leaseholder

log = logging.getLogger("contengine")
# Runs run_until_idle() advances at once: enough that their commits share a disk sync.
DRIVE_THREADS = 64


@dataclass
class IdleReport:
    """What run_until_idle() did: runs driven, finished, stuck, and the next due time."""

    driven: int = 0
    finished: list[str] = field(default_factory=list)
    stuck: dict[str, ContengineError] = field(default_factory=dict)
    next_due: float | None = None


class Background(Protocol):
    """A worker driving an engine's runs in the background (engine/worker.py)."""

    def poke(self) -> None:
        """Something may be due now: look at once."""

    def stop(self, grace: float | None = None) -> None:
        """Stop claiming and let go of the leases."""


def row_of(store: Store, run_id: str) -> RunRow:
    """The run's row; RunNotFound if there is none."""
    row = store.get_run(run_id)
    if row is None:
        raise RunNotFound(f"no run with id {run_id!r} in this database")
    return row


def claim_size(threads: int, busy: int) -> int:
    """How many runs to claim now with `busy` of `threads` driving: claims are writes (a
    disk sync each), so runs are taken in batches of an eighth of the threads, or
    whatever is free when nothing runs, rather than one by one as each thread frees up."""
    free = threads - busy
    return free if free >= max(1, threads // 8) or (free > 0 and not busy) else 0


class Dispatcher:
    """Claims an engine's due runs and drives them; one per engine."""

    def __init__(
        self, store: Store, clock: Clock, runner: Runner, holder: Leaseholder, poll_interval: float
    ) -> None:
        self.store = store
        self.clock = clock
        self.runner = runner
        self.holder = holder
        self.poll_interval = poll_interval
        # A store that serves one engine (a test's wrapper) keeps no leases: no fence.
        self.leased = not isinstance(store, OneEngineStore)
        self._lock = threading.RLock()  # guards _stuck (active: one writer per key)
        # Runs this engine could not rebuild, with the reason. Kept in memory only:
        # a process with fixed code (or the missing module) tries them afresh.
        self._stuck: dict[str, ContengineError] = {}
        # Runs being driven now by this engine, with the thread driving each.
        self.active: dict[str, int] = {}
        self._drivers: DrivePool | None = None
        self._drivers_size = 0
        self._retired_pools: list[DrivePool] = []
        # The worker running in this engine, if any: poked when this process makes a
        # run due (start, signal, cancel), so it looks at once instead of at its next poll.
        self.worker: Background | None = None
        # Notified by signal(), cancel() and a worker's drives, so that result() waiting
        # on a run wakes at once.
        self.wakeup = threading.Condition()
        # What the store hears other processes make due (started on first need: a
        # worker, or a result() that sleeps until its run is due); None: not listening.
        self._listening: Listening | None = None
        self._listen_asked = False

    # -- waking ---------------------------------------------------------------

    def poke(self) -> None:
        """A run may be due now: wake whoever waits in this process."""
        self.wake_waiters()
        worker = self.worker
        if worker is not None:
            worker.poke()

    def wake_waiters(self) -> None:
        """Wake the result() calls waiting in this process (a drive ended)."""
        with self.wakeup:
            self.wakeup.notify_all()

    def pause(self, wait: float) -> None:
        """Wait up to `wait` seconds, or until woken by poke() or wake_waiters()."""
        with self.wakeup:
            self.wakeup.wait(max(wait, 0.0))

    def listen(self) -> None:
        """Be woken (poke) when another process makes a run due, if the store can tell
        (PostgreSQL's LISTEN); once per engine, kept until close()."""
        with self._lock:
            if self._listen_asked:
                return
            self._listen_asked = True
            self._listening = self.store.listen(self.poke)

    def attach(self, worker: Background) -> None:
        """Make worker this engine's worker: it claims due runs, clients leave them to it."""
        if self.worker is not None:
            raise ContengineError(
                "this engine already runs a worker; give it more threads instead (stopping "
                "one worker lets go of all the engine's leases)"
            )
        self.worker = worker
        self.holder.set_worker_loop(True)  # clients leave due runs to it
        self.listen()

    def detach(self, worker: Background) -> None:
        """The worker stopped: no longer this engine's worker."""
        if self.worker is worker:
            self.worker = None

    # -- stuck runs -------------------------------------------------------------

    def stuck(self) -> dict[str, ContengineError]:
        """Runs this engine could not rebuild, with the reason (a copy)."""
        with self._lock:
            return dict(self._stuck)

    def rewind(self, plan: Sequence[Rewind]) -> None:
        """Rewind runs' logs as a retry planned (engine.retry) and forget they were stuck."""
        with self._lock:
            self.store.rewind(plan, self.clock.now())
            for r in plan:
                self._stuck.pop(r.run_id, None)

    def mark_stuck(self, row: RunRow, exc: ContengineError) -> None:
        first = str(exc).splitlines()[0]
        if self._stuck.get(row.id) is None:
            # run.stuck: logged (a warning) and told to the hooks (drive/events.py)
            self.runner.events.run_event("run.stuck", row, f"left as it is: {exc}")
        with self._lock:
            self._stuck[row.id] = exc
        if row.note != first:
            self.store.set_note(row.id, first)

    # -- claiming -------------------------------------------------------------

    def claim(self, limit: int, also_skip: Collection[str] = ()) -> list[Claim]:
        """Lease up to `limit` due runs to this engine, leaving out the stuck ones (and
        also_skip: runs the caller holds back)."""
        with self._lock:
            stuck = set(self._stuck)
        stuck.update(also_skip)
        return self.holder.claim(self.clock.now(), limit, skip=stuck)

    def pool(self, threads: int) -> DrivePool:
        """Threads that drive runs (made on first use, grown when more are asked for)."""
        with self._lock:
            if self._drivers is None or self._drivers_size < threads:
                if self._drivers is not None:
                    # Still in use by another caller: let it go only at close().
                    self._retired_pools.append(self._drivers)
                self._drivers = DrivePool(threads, self.store.flush, active=drive_pool.ACTIVE)
                self._drivers_size = threads
            return self._drivers

    def until_idle(
        self, until: float | datetime.datetime | None, threads: int | None
    ) -> IdleReport:
        """Drive every run that is due now, until none is left (Engine.run_until_idle)."""
        report = IdleReport()
        if self.worker is not None:
            raise ContengineError(
                "this engine's worker is driving its runs; run_until_idle() would compete "
                "with it. Wait for runs with run.result(), or use another Engine."
            )
        if isinstance(until, datetime.datetime) and until.tzinfo is None:
            raise ValueError("run_until_idle(until=...) needs an aware datetime (with a tzinfo)")
        if threads is None:
            threads = DRIVE_THREADS if isinstance(self.clock, SystemClock) else 1
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads!r}")
        limit = until.timestamp() if isinstance(until, datetime.datetime) else until
        jump = (
            getattr(self.clock, "jump_to", None) if getattr(self.clock, "virtual", False) else None
        )
        pool = self.pool(threads) if threads > 1 else None
        # A workflow missing here is noted on its run only if no worker loop elsewhere
        # may have it (its note would be wrong until that worker drives the run).
        note_missing = not self.holder.loops_elsewhere()
        passed: set[str] = set()  # stuck this time: not driven again in this call
        inflight: dict[concurrent.futures.Future[bool], str] = {}
        failure: BaseException | None = None
        while True:
            size = claim_size(threads, len(inflight))
            if failure is None and size:
                # Runs in flight are skipped by their lease; a store without leases
                # needs telling.
                skip = passed | set(inflight.values())
                for claim in self.holder.claim(self.clock.now(), size, skip=skip):
                    report.driven += 1
                    inflight[self._submit(pool, claim, note_missing)] = claim.run.id
            if not inflight:
                if failure is not None:
                    raise failure
                if jump is not None:
                    # Only forward: a due time already passed belongs to a run set
                    # aside above (stuck), and jumping to it would change nothing.
                    due = self.store.next_due(after=self.clock.now())
                    if due is not None and (limit is None or due <= limit):
                        jump(due)
                        continue
                break
            done, _ = concurrent.futures.wait(
                inflight, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in done:
                run_id = inflight.pop(future)
                try:
                    if future.result():
                        report.finished.append(run_id)
                except DatabaseError as exc:
                    failure = failure or exc  # the database's trouble: stop claiming
                except ContengineError as exc:
                    passed.add(run_id)
                    report.stuck[run_id] = exc
                except BaseException as exc:  # noqa: BLE001 - re-raised once all are back
                    failure = failure or exc
        report.next_due = self.store.next_due()
        return report

    def _submit(
        self, pool: DrivePool | None, claim: Claim, note_missing: bool
    ) -> concurrent.futures.Future[bool]:
        """Drive the claimed run in the pool, or at once in this thread without one."""
        if pool is not None:
            return pool.submit(
                lambda: self.drive_claim(claim, park=True, note_missing=note_missing),
                lambda then: self.drive_claim(
                    claim, park=True, then=then, note_missing=note_missing
                ),
            )
        done: concurrent.futures.Future[bool] = concurrent.futures.Future()
        try:
            done.set_result(self.drive_claim(claim, note_missing=note_missing))
        except BaseException as exc:  # noqa: BLE001 - handed over with the result
            done.set_exception(exc)
        return done

    # -- driving ----------------------------------------------------------------

    def drive(self, run_id: str, *, note_missing: bool = True) -> bool | None:
        """Drive one run as far as it goes now, in this thread; True if it is finished,
        False if it waits, None if another engine (or thread of this one) drives it."""
        with self._lock:
            if self.active.get(run_id) == threading.get_ident():
                raise ContengineError(
                    f"run {run_id!r} is already being driven by this engine, further up "
                    f"this thread's stack: a step cannot wait for the run it belongs to"
                )
        claims = self.holder.claim(self.clock.now(), 1, run_id=run_id)
        if not claims:
            # None: leased to another engine, or driven by another thread of this one.
            return True if row_of(self.store, run_id).status in FINISHED else None
        return self.drive_claim(claims[0], note_missing=note_missing)

    def drive_claim(
        self,
        claim: Claim,
        due: list[float] | None = None,
        *,
        park: bool = False,
        then: Callable[[], None] | None = None,
        note_missing: bool = True,
    ) -> bool:
        """Drive a run leased to this engine; True if it finished (else due[0] is when it
        is due again). The lease is let go when the drive ends (a finished run's was let
        go by its last write). With park (in a DrivePool) the drive may raise Parked;
        then() is where a parked drive goes on, inside this same handling. Without
        note_missing, a workflow this process cannot find is raised but not noted on the
        run (nor remembered as stuck): another process may well have it."""
        row = claim.run
        me = threading.get_ident()
        # Only this thread writes this run's entry (a run has one driver); a dict's
        # single writes need no lock.
        self.active[row.id] = me
        finished = parked = False
        try:
            if then is not None:
                then()
            else:
                # A store without leases (a test's wrapper) serves one engine: no fence.
                leased = self.leased
                lease = (self.holder.id, claim.lease) if leased else None
                self.runner.drive(row, lease, park=park, lapses=claim.lapses)
            finished = True
        except Parked:
            parked = True
            raise
        except NotDue as idle:
            if due is not None:
                due[0] = idle.due_at
        except LeaseLost as exc:
            log.warning("run %r was taken over by another worker: %s", row.id, exc)
        except DatabaseError:
            raise  # not the run's fault: leave it unmarked
        except ContengineError as exc:
            if note_missing or not isinstance(exc, WorkflowNotFound):
                self.mark_stuck(row, exc)
            raise
        except Exception as exc:
            # Not the workflow's own exception (the driver makes those the run's end) nor
            # a step's: contengine could not rebuild or drive the run (stored data of the
            # wrong shape, an engine bug). The run is set aside like any stuck run, so
            # a worker does not claim it again and again, and says why.
            stuck = ContengineError(
                f"run {row.id!r} cannot be driven on: {type(exc).__name__}: {exc} (raised "
                f"by contengine while rebuilding or driving it, not by the workflow's code); "
                f"the run is kept as it is"
            )
            self.mark_stuck(row, stuck)
            raise stuck from exc
        finally:
            # Parked too: this thread goes on to other runs; whichever thread takes
            # this one up again says so.
            if self.active.get(row.id) == me:
                del self.active[row.id]
            if not finished and not parked and self.leased:
                self.holder.release(row.id, claim.lease)
        if row.id in self._stuck or row.note is not None:
            with self._lock:
                self._stuck.pop(row.id, None)
            self.store.set_note(row.id, None)
        return finished

    def close(self) -> None:
        """Let the driving threads go (parked drives go on to their end first), then the
        step threads and the leases."""
        with self._lock:
            self._listen_asked = True  # no listener is started from now on
            listening, self._listening = self._listening, None
        if listening is not None:
            listening.close()
        for pool in [*self._retired_pools, self._drivers]:
            if pool is not None:
                pool.shutdown(wait=True)
        self._drivers, self._retired_pools = None, []
        self.runner.close()
        self.holder.close()
