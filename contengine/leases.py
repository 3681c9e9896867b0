"""An engine's identity as a holder of leases on runs, kept alive by a heartbeat."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Collection

from .errors import ContengineError
from .store.base import Claim, Store, WorkerRow
from .store.sqlite_claims import HOST, process_start

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

    def row(self) -> WorkerRow:
        """This holder as a workers row, alive for one more lease period."""
        return WorkerRow(
            self.id, HOST, os.getpid(), self._pid_start, self._started, self.wall() + self.lease
        )

    def claim(
        self, now: float, limit: int, run_id: str | None = None, skip: Collection[str] = ()
    ) -> list[Claim]:
        """Lease up to limit due runs (or run_id) to this engine."""
        with self._lock:
            release, self._unreleased = self._unreleased, []
        try:
            claims = self.store.claim(self.row(), now, self.wall(), limit, run_id, release, skip)
        except BaseException:
            with self._lock:
                self._unreleased.extend(release)  # not let go yet: try again next time
            raise
        if self.store.supports_leases and self._beating is None:
            self._start_heartbeat()
        return claims

    def release(self, run_id: str, lease: int) -> None:
        """Let the run go so any worker may claim it; retried later if the store refuses."""
        try:
            self.store.release(self.id, [(run_id, lease)])
        except ContengineError:
            with self._lock:
                self._unreleased.append((run_id, lease))

    def _start_heartbeat(self) -> None:
        with self._lock:
            if self._beating is not None:
                return
            self._beating = threading.Thread(
                target=self._beat, name="contengine-heartbeat", daemon=True
            )
            self._beating.start()

    def _beat(self) -> None:
        # Renewed four times per lease: a late beat or two (a busy disk) loses nothing.
        stop = self._stop
        while not stop.wait(self.lease / 4):
            try:
                if not self.store.heartbeat(self.row()):
                    log.warning(
                        "engine %s was judged dead by another worker (it missed its lease); "
                        "runs it was driving may have been taken over, and its writes to "
                        "them are refused",
                        self.id,
                    )
                self.renewals += 1
            except ContengineError as exc:  # a locked or closed database: try again
                log.debug("heartbeat of %s failed: %s", self.id, exc)

    def retire(self) -> None:
        """Stop the heartbeat and let go of every run this engine holds (a later claim
        starts over)."""
        with self._lock:
            beating, self._beating = self._beating, None
            stop, self._stop = self._stop, threading.Event()
        stop.set()
        if beating is not None:
            beating.join()
            with contextlib.suppress(ContengineError):
                self.store.retire_worker(self.id)

    close = retire
