"""An engine's identity as a holder of leases on runs, kept alive by a heartbeat."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Collection

from ..errors import ClockSkew, ContengineError, DatabaseGone, DatabaseLocked, LeaseLost
from ..store.base import Claim, OneEngineStore, Store, WorkerRow
from ..store.liveness import HOST, MAX_CLOCK_SKEW, alive, process_start

log = logging.getLogger("contengine")


class Leaseholder:
    """Claims runs for one engine, renews its lease in the background, lets runs go.

    Leases are measured on the wall clock (time.time), never on the engine's clock:
    a test's virtual clock jumps days ahead, and other processes share the file.
    """

    def __init__(self, store: Store, lease: float, wall: Callable[[], float] = time.time) -> None:
        if not lease > 0:
            raise ValueError(f"lease must be a positive number of seconds, not {lease!r}")
        self.store = store
        self.lease = lease
        self.wall = wall
        self.id = f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._started = wall()
        self._pid_start = process_start(os.getpid())
        self._beating: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        # Leases whose release failed (a locked database): let go with the next claim.
        self._unreleased: list[tuple[str, int]] = []
        self.renewals = 0
        # Until when (wall clock) this engine's row, as last written, keeps its runs
        # from other workers; and how many times that lapsed (a renewal that came after
        # it, a row found gone, a retire): a run claimed before a lapse may have been
        # taken over since, even if this engine is on record again now.
        self.valid_until = 0.0
        self.lapses = 0
        self.claims = 0  # claim() calls begun
        # Set when this engine let go of its runs (a stop, a retire): no step starts
        # until it claims again.
        self.letting_go = False
        # Whether this engine runs a worker loop (said in its workers row).
        self.worker_loop = False
        # Set when the heartbeat found the database file deleted or replaced: the
        # engine's worker stops with it.
        self.fatal: DatabaseGone | None = None
        # On a store shared by many hosts: set while this host's clock is too far off
        # the server's (no claim, no step starts); checked at the first claim and at
        # every heartbeat.
        self.clock_error: ClockSkew | None = None
        self._clock_checked = False

    def row(self) -> WorkerRow:
        """This holder as a workers row, alive for one more lease period."""
        return WorkerRow(
            self.id, HOST, os.getpid(), self._pid_start, self._started,
            self.wall() + self.lease, self.worker_loop,
        )  # fmt: skip

    def set_worker_loop(self, on: bool) -> None:
        """Say (in this engine's workers row, at once if it is on record) whether a
        worker loop runs here; otherwise the next claim or heartbeat says it."""
        self.worker_loop = on
        if not self.valid_until:
            return
        row = self.row()
        try:
            alive = self.store.heartbeat(row)
        except ContengineError:  # a locked file: the next heartbeat writes it
            return
        self._renewed(row, alive)

    def loops_elsewhere(self) -> bool:
        """Whether a live engine other than this one runs a worker loop on the file."""
        if isinstance(self.store, OneEngineStore):
            return False
        wall = self.wall()
        return any(
            w.worker_loop and w.id != self.id and alive(w, wall) for w in self.store.workers()
        )

    def claim(
        self, now: float, limit: int, run_id: str | None = None, skip: Collection[str] = ()
    ) -> list[Claim]:
        """Lease up to limit due runs (or run_id) to this engine."""
        if not self._clock_checked or self.clock_error is not None:
            self.check_clock()
        if self.clock_error is not None:
            raise self.clock_error
        with self._lock:
            release, self._unreleased = self._unreleased, []
            self.claims += 1
        row = self.row()
        try:
            claims = self.store.claim(row, now, self.wall(), limit, run_id, release, skip)
        except BaseException:
            with self._lock:
                self._unreleased.extend(release)  # not let go yet: try again next time
            raise
        if isinstance(self.store, OneEngineStore):
            return claims
        with self._lock:
            if not self.valid_until:  # off record before: the claim put the row there
                self.valid_until = row.expires_at
            self.letting_go = False
            lapses = self.lapses
        if self._beating is None:
            self._start_heartbeat()
        for claim in claims:
            claim.lapses = lapses
        return claims

    def check_clock(self) -> None:
        """Compare this host's clock with the server's, on a store shared by many hosts.

        Other hosts judge this engine's lease by its expiry as this clock wrote it, and
        judge it with theirs, allowing MAX_CLOCK_SKEW between them. While this clock is
        off the server's by more than half of that, this engine lets its runs go,
        starts no step and claims nothing (ce.ClockSkew), so no lease is taken over
        while its holder still thinks it valid."""
        before = self.wall()
        server = self.store.server_time()
        after = self.wall()
        self._clock_checked = True
        if server is None:
            return
        skew = server - (before + after) / 2
        # The reading is somewhere in the round trip: only what is certain counts.
        certain = abs(skew) - (after - before) / 2
        if certain <= MAX_CLOCK_SKEW / 2:
            if self.clock_error is not None:
                log.warning("this host's clock agrees with the server's again: %s claims", self.id)
                self.clock_error = None
            return
        error = ClockSkew(
            f"this host's clock is {abs(skew):.3f} s {'behind' if skew > 0 else 'ahead of'} "
            f"the database server's; engines on a shared server need clocks within "
            f"{MAX_CLOCK_SKEW / 2:g} s of the server's for their leases to be safe. "
            f"Synchronise this host's clock (NTP, chrony); until then engine {self.id} "
            f"claims no runs and starts no steps"
        )
        first = self.clock_error is None
        self.clock_error = error
        if first:
            log.error("%s", error)
            if self.valid_until:
                self.let_go_of_runs()

    def _renewed(self, row: WorkerRow, alive: bool) -> None:
        """Note that row was written just now; a lapse if it had expired before (others
        may have taken runs meanwhile) or had gone (judged dead)."""
        with self._lock:
            # lapses before valid_until: may_start reads them the other way round
            if not alive or (self.valid_until and self.wall() >= self.valid_until):
                self.lapses += 1
            self.valid_until = row.expires_at

    def may_start(self, run_id: str, lease: int, lapses: int) -> int:
        """Before a step starts: ce.LeaseLost unless the run is still leased to this
        engine (lease, claimed when `lapses` lapses had happened); returns the count to
        check against next time. Cheap while the engine's row has not expired since
        (a clock reading); else the store says (a thawed process, a late heartbeat)."""
        # valid_until before lapses: _renewed writes them the other way round, so a
        # renewal seen here comes with its lapse.
        if self.wall() < self.valid_until and lapses == self.lapses:
            return lapses
        if self.clock_error is not None:
            raise LeaseLost(f"{self.clock_error}: the step of run {run_id!r} does not start")
        if self.letting_go:
            raise LeaseLost(f"this engine let go of run {run_id!r}: the step does not start")
        # The store says: if the run still names this engine and lease, no one took it
        # (a claim changes them), and renewing the row in the same transaction keeps it
        # so for a lease more. A late heartbeat costs a write here, not the run.
        row = self.row()
        self.store.hold(run_id, lease, row)
        self._renewed(row, alive=True)
        return self.lapses

    def release(self, run_id: str, lease: int) -> None:
        """Let the run go so any worker may claim it; retried later if the store refuses."""
        try:
            self.store.release(self.id, [(run_id, lease)])
        except ContengineError:
            with self._lock:
                self._unreleased.append((run_id, lease))

    def stop_steps(self) -> None:
        """From now on no step starts (may_start and step-queue slots refuse) until this
        engine claims again; its leases are kept, so a drive may still write that it
        sets its run aside."""
        with self._lock:
            self.letting_go = True
            self.lapses += 1  # off the fast path, where letting_go is looked at

    def let_go_of_runs(self) -> bool:
        """Let go of every run this engine holds but stay on record, heartbeat and all:
        a step that outlived a worker's grace period keeps its step-queue slot counted
        until it ends (retire() once it has). False if the store refused."""
        self.stop_steps()
        try:
            self.store.release_all(self.id)
        except ContengineError:
            return False
        return True

    def retire_if_idle(self, claims: int) -> None:
        """retire(), unless this engine began another claim since `claims` were counted
        (it is in use again: its next stop or close retires it)."""
        with self._lock:
            if self.claims != claims:
                return
        self.retire()

    def _start_heartbeat(self) -> None:
        with self._lock:
            if self._beating is not None:
                return
            # The thread is handed this beat's stop event now: retire() swaps in a fresh
            # one, and a thread that read self._stop only once it ran (late, on a busy
            # machine) would take the fresh event and never stop.
            self._beating = threading.Thread(
                target=self._beat, args=(self._stop,), name="contengine-heartbeat", daemon=True
            )
            self._beating.start()

    def _beat(self, stop: threading.Event) -> None:
        # Renewed four times per lease: a late beat or two (a busy disk) loses nothing.
        while not stop.wait(self.lease / 4):
            while not stop.is_set():
                row = self.row()
                try:
                    alive = self.store.heartbeat(row)
                except DatabaseGone as exc:
                    self.fatal = exc
                    log.error("%s", exc)
                    return
                except DatabaseLocked as exc:
                    # Another process held the write lock for the whole busy timeout.
                    # Ask again at once, not a quarter lease later: waiting for the lock
                    # keeps this engine in line for it when it comes free (others judge
                    # its lease with the stall counted: store/sqlite/guard.py LockStalls).
                    log.warning("heartbeat of %s waits for the write lock: %s", self.id, exc)
                    continue
                except ContengineError as exc:  # a closed database: try again later
                    log.debug("heartbeat of %s failed: %s", self.id, exc)
                    break
                self._renewed(row, alive)
                self._check_clock_quietly()
                if not alive:
                    log.warning(
                        "engine %s was judged dead by another worker (it missed its lease); "
                        "runs it was driving may have been taken over, and its writes to "
                        "them are refused",
                        self.id,
                    )
                self.renewals += 1
                break

    def _check_clock_quietly(self) -> None:
        try:
            self.check_clock()
        except ContengineError as exc:  # the server could not be asked: next beat
            log.debug("clock check of %s failed: %s", self.id, exc)

    def retire(self) -> None:
        """Stop the heartbeat and let go of every run this engine holds (a later claim
        starts over)."""
        with self._lock:
            beating, self._beating = self._beating, None
            stop, self._stop = self._stop, threading.Event()
        stop.set()
        if beating is not None:
            beating.join()
            with self._lock:
                self.letting_go = True  # every run is let go: none may start a step now
                self.lapses += 1
                self.valid_until = 0.0
            with contextlib.suppress(ContengineError):
                self.store.retire_worker(self.id)

    close = retire
