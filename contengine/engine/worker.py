"""A worker: claims due runs for an engine and drives them in a pool of threads.

The loop claims no more runs than it has free threads (backpressure: a burst of
started runs waits in the database, not in memory), drives each in a thread of
its own, and sleeps until something may be due: a drive ended (a child's end may
have woken its parent), this process started, signalled or cancelled a run, the
store heard another process do so or end a child (PostgreSQL's LISTEN: the
Dispatcher's listener), a timer of a run it drove comes due, or the poll interval
passed (for what other processes did, heard or not). A sleeping or waiting run
holds no thread: its drive ends, its lease is let go, and it is claimed again when
due.
"""

from __future__ import annotations

import concurrent.futures
import functools
import heapq
import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from ..drive.pool import Parked
from ..errors import ContengineError, DatabaseError, DatabaseGone, DatabaseLocked
from ..store.base import Claim, RunRow
from .dispatch import Dispatcher, claim_size

log = logging.getLogger("contengine")

# Seconds a stopping worker waits, past its grace period, for drives that are only
# setting their runs aside (not inside a step) to write that.
SETTLE = 1.0
# A drive that ended in a DatabaseError: the run is not claimed again by this worker for
# a pause that doubles with each such drive in a row (from the poll interval, at most
# HOLD_CAP seconds); after DB_ERRORS_TO_SET_ASIDE of them it is set aside as stuck (see
# notes/decisions.md, "A run whose writes the database refuses").
HOLD_CAP = 30.0
DB_ERRORS_TO_SET_ASIDE = 5
# While claims keep failing (a server down, a locked file), the warning is repeated at
# most this often (seconds), not at every poll.
CLAIM_WARNING_EVERY = 60.0


class Worker:
    """Drives an engine's due runs in the background until stopped."""

    def __init__(self, dispatch: Dispatcher, threads: int, grace: float) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads!r}")
        if not grace >= 0:
            raise ValueError(f"grace must be a number of seconds >= 0, not {grace!r}")
        self.dispatch = dispatch
        self.threads = threads
        self.grace = grace
        self._wake = threading.Event()
        self._stop = threading.Event()
        # Drives under way, and the run of each.
        self._inflight: dict[concurrent.futures.Future[bool], str] = {}
        self._inflight_lock = threading.Lock()
        self._timers: list[float] = []  # due times of runs this worker set aside
        # Runs whose last drives ended in a DatabaseError: (how many in a row, not to be
        # claimed before). In memory: another worker or process tries them on its own.
        self._held: dict[str, tuple[int, float]] = {}
        self._loop: threading.Thread | None = None
        self._claims_failing: float | None = None  # since when (monotonic), if they do
        self._claim_warned = 0.0  # when that was last said
        self.driven = 0
        self.finished = 0
        self.error: BaseException | None = None

    # -- life -----------------------------------------------------------------

    def start(self) -> Worker:
        """Start the claiming loop in a thread of its own."""
        self.dispatch.attach(self)  # clients leave due runs to it
        self._loop = threading.Thread(target=self._run, name="contengine-worker", daemon=True)
        self._loop.start()
        return self

    def stop(self, grace: float | None = None) -> None:
        """Stop claiming; let running steps finish (up to grace seconds), then let go of
        every lease, so other workers take over at once what is left."""
        grace = self.grace if grace is None else grace
        self._stop.set()
        dispatch = self.dispatch
        runner, holder = dispatch.runner, dispatch.holder
        holder.set_worker_loop(False)  # claims nothing more: clients drive again
        runner.stopping.set()  # drives set their runs aside before the next step
        self._wake.set()
        if self._loop is not None:
            self._loop.join()
        with self._inflight_lock:
            pending = dict(self._inflight)
        _, late = concurrent.futures.wait(set(pending), timeout=grace)
        if late:
            # Past the grace period no step starts (not even a gather's member that was
            # waiting for a slot), while drives that are only setting their runs aside
            # still write that under their leases.
            holder.stop_steps()
            late = self._settle(pending, late)
        running = runner.in_steps
        if late or running:
            if late:
                log.warning(
                    "%d run(s) still in a step after the %g s grace period; their leases "
                    "are let go and their steps, when they end, are not recorded",
                    len(late),
                    grace,
                )
            # Let the runs go now, but stay on record until every step still running
            # here ends (a late one, a race's loser, one left by an earlier stop): their
            # step-queue slots must go on counting (Python cannot stop a thread).
            if holder.let_go_of_runs():
                threading.Thread(
                    target=self._retire_after,
                    args=(late, holder.claims),
                    name="contengine-retire",
                    daemon=True,
                ).start()
            else:  # the store refused (a locked file): go off record, leases expire
                holder.retire()
        else:
            holder.retire()
        runner.stopping.clear()
        dispatch.detach(self)

    def _settle(
        self,
        pending: dict[concurrent.futures.Future[bool], str],
        late: set[concurrent.futures.Future[bool]],
    ) -> set[concurrent.futures.Future[bool]]:
        """Wait (up to SETTLE seconds) for the late drives that are not inside a step:
        they are only setting their runs aside (a give-back, a last commit), which must
        be written under their lease, or the next driver counts a crash for an attempt
        that never began. Returns the drives still under way."""
        deadline = time.monotonic() + SETTLE
        in_steps = self.dispatch.runner.in_steps
        while late and time.monotonic() < deadline:
            busy = {run_id for run_id, _ in list(in_steps)}
            if all(pending[f] in busy for f in late):
                break
            _, late = concurrent.futures.wait(late, timeout=0.01)
        return late

    def _retire_after(self, late: set[concurrent.futures.Future[bool]], claims: int) -> None:
        """Once the late drives and every step still running here have ended, go off
        record, unless this engine claimed runs again meanwhile (its next stop or close
        does it then)."""
        concurrent.futures.wait(late)
        holder = self.dispatch.holder
        in_steps = self.dispatch.runner.in_steps
        while in_steps and holder.claims == claims:
            time.sleep(0.05)
        holder.retire_if_idle(claims)

    def _fail(self, exc: BaseException) -> None:
        """Stop claiming for good: work() raises exc (the file this engine writes is
        gone; every write from now on is refused anyway)."""
        if self.error is None:
            self.error = exc
            log.error("worker stops: %s", exc)
        self._stop.set()
        self._wake.set()

    def poke(self) -> None:
        """Something may be due now: look at once."""
        self._wake.set()

    # -- the loop -------------------------------------------------------------

    def _run(self) -> None:
        dispatch = self.dispatch
        holder = dispatch.holder
        pool = dispatch.pool(self.threads)
        while not self._stop.is_set():
            self._wake.clear()
            if holder.fatal is not None:  # the heartbeat found the file gone
                self._fail(holder.fatal)
                break
            free = claim_size(self.threads, len(self._inflight))
            claims: list[Claim] = []
            if free:
                try:
                    now = dispatch.clock.now()
                    with self._inflight_lock:
                        held = {r for r, (_, until) in self._held.items() if until > now}
                    claims = dispatch.claim(free, also_skip=held)
                    self._claims_work()
                except DatabaseGone as exc:
                    self._fail(exc)
                    break
                except DatabaseError as exc:  # a locked file: try again at the next poll
                    self._claim_failed(exc)
                except BaseException as exc:  # noqa: BLE001 - kept for the caller of work()
                    self.error = exc
                    self._stop.set()
                    break
            if claims and log.isEnabledFor(logging.INFO):
                for claim in claims:
                    log.info("claimed run %r (%s)", claim.run.id, claim.run.workflow)
            for claim in claims:
                self.driven += 1
                try:
                    due = [float("inf")]
                    future = pool.submit(
                        functools.partial(self._drive, claim, due),
                        functools.partial(self._drive, claim, due),
                    )
                except RuntimeError:  # the pool is gone (the engine closes): let it go
                    holder.release(claim.run.id, claim.lease)
                    continue
                with self._inflight_lock:
                    self._inflight[future] = claim.run.id
                future.add_done_callback(self._done)
            if claims and len(claims) == free:
                continue  # there may be more: claim again once a thread is free
            self._wake.wait(self._sleep_time())

    def _claim_failed(self, exc: DatabaseError) -> None:
        """Say that a claim failed: at once the first time, then once a while (a server
        down for minutes would otherwise fill the log, one line per poll)."""
        now = time.monotonic()
        if self._claims_failing is None:
            self._claims_failing = now
        elif now - self._claim_warned < CLAIM_WARNING_EVERY:
            log.debug("worker could not claim runs: %s", exc)
            return
        self._claim_warned = now
        log.warning("worker could not claim runs: %s", exc)

    def _claims_work(self) -> None:
        """A claim went through: say so if they had been failing."""
        if self._claims_failing is not None:
            log.warning(
                "worker claims runs again, after %.1f s of failed claims",
                time.monotonic() - self._claims_failing,
            )
            self._claims_failing = None

    def _sleep_time(self) -> float:
        """Until the next local timer, at most one poll interval."""
        dispatch = self.dispatch
        wait = dispatch.poll_interval
        with self._inflight_lock:
            now = dispatch.clock.now()
            while self._timers and self._timers[0] <= now:
                heapq.heappop(self._timers)
            if self._timers:
                wait = min(wait, self._timers[0] - now)
        return max(wait, 0.0)

    def _drive(self, claim: Claim, due: list[float], then: Callable[[], Any] | None = None) -> bool:
        """Drive a claimed run (or go on with a parked drive of it: then)."""
        parked = refused = False
        try:
            return self.dispatch.drive_claim(claim, due, park=True, then=then)
        except Parked:
            parked = True
            raise
        except DatabaseGone as exc:
            self._fail(exc)
            return False
        except DatabaseError as exc:
            refused = True
            self._hold_back(claim.run, exc)
            return False
        except ContengineError:
            return False  # stuck: reported by the engine, skipped from now on
        finally:
            if not parked and not refused and claim.run.id in self._held:
                with self._inflight_lock:
                    self._held.pop(claim.run.id, None)
            if not parked and due[0] != float("inf"):
                with self._inflight_lock:
                    heapq.heappush(self._timers, due[0])

    def _hold_back(self, row: RunRow, exc: DatabaseError) -> None:
        """After a drive of row's run ended in a DatabaseError: claim it again only after
        a pause, and set it aside after DB_ERRORS_TO_SET_ASIDE such drives in a row
        (unless the file was locked: that is another writer's doing, never the run's)."""
        dispatch = self.dispatch
        with self._inflight_lock:
            count = self._held.get(row.id, (0, 0.0))[0] + 1
            pause = min(dispatch.poll_interval * 2 ** (count - 1), HOLD_CAP)
            until = dispatch.clock.now() + pause
            self._held[row.id] = (count, until)
            heapq.heappush(self._timers, until)  # look again once the pause is over
        if count < DB_ERRORS_TO_SET_ASIDE or isinstance(exc, DatabaseLocked):
            log.warning(
                "run %r: its drive's write was refused (%s); not claimed again for %g s",
                row.id, exc, pause,
            )  # fmt: skip
            return
        # Each of these drives began with a claim, a write of the run's row that the
        # database took: the file is usable, and what it refuses is this run's write.
        stuck = ContengineError(
            f"run {row.id!r} cannot be driven on: the database refused its write in "
            f"{count} drives in a row ({exc}); the run is kept as it is. Another process "
            f"(or this one restarted) tries it again"
        )
        with self._inflight_lock:
            self._held.pop(row.id, None)
        try:
            dispatch.mark_stuck(row, stuck)
        except DatabaseError as note_exc:  # kept aside in memory all the same
            log.warning("run %r: could not write its note: %s", row.id, note_exc)

    def _done(self, future: concurrent.futures.Future[bool]) -> None:
        with self._inflight_lock:
            self._inflight.pop(future, None)
        if not future.cancelled() and future.exception() is None and future.result():
            self.finished += 1
        self._wake.set()  # a thread is free, and a finished child may have woken its parent
        self.dispatch.wake_waiters()  # and a result() may be waiting for this run


def install_stop_handlers(stop: threading.Event) -> dict[int, Any]:
    """Make SIGTERM and SIGINT set stop (main thread only); returns the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    old: dict[int, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        old[sig] = signal.signal(sig, handler)
    return old


def restore_handlers(old: dict[int, Any]) -> None:
    """Put back the handlers install_stop_handlers replaced."""
    for sig, handler in old.items():
        signal.signal(sig, handler)
