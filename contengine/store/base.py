"""The storage interfaces: runs and their log, leases and claims, operator tools.

A store keeps bytes and plain fields (contengine.store.rows); it never unpickles, never
reads a clock and never runs user code. It offers three interfaces:

* RunStore: runs and their log -- create and read runs, read a log, commit progress in
  one transaction (at once, or queued and written in a batch), mailboxes, cancel
  requests, published values, due runs.
* LeaseStore: workers, claims and leases, queues and their step slots.
* AdminStore: operator tools -- notes, garbage collection, backup, rewind, whole-run
  writes for fork and import.

`Store` is all three: what the engine runs on. Every store passes
tests/test_store_contract.py. A store that serves one engine at a time and keeps no
leases (a test's wrapper around another store) is a `OneEngineStore`: its lease
methods grant every claim, and the engine, seeing its type, fences no write.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence

from ..errors import ContengineError
from .rows import (
    A_CRASHED,
    A_FAILED,
    A_STARTED,
    CANCELLED,
    COMPLETED,
    E_COMPLETED,
    E_FAILED,
    E_RETRYING,
    E_RUNNING,
    FAILED,
    FINISHED,
    INLINE_OUTCOME,
    PENDING,
    RUN_STATUSES,
    RUNNING,
    SLEEPING,
    WAITING,
    AttemptRow,
    CancelArrived,
    Claim,
    EntryRow,
    LogRow,
    Progress,
    QueueConfig,
    ReplayRow,
    Rewind,
    RunRow,
    RunUpdate,
    Signal,
    Ticket,
    WorkerRow,
    run_digest,
)
from .run_search import RunPage, RunQuery
from .stats import StatsSource

# The rows are re-exported: the engine and the tests know them as store.base's.
__all__ = [
    "A_CRASHED",
    "A_FAILED",
    "A_STARTED",
    "CANCELLED",
    "COMPLETED",
    "E_COMPLETED",
    "E_FAILED",
    "E_RETRYING",
    "E_RUNNING",
    "FAILED",
    "FINISHED",
    "PENDING",
    "RUNNING",
    "RUN_STATUSES",
    "SLEEPING",
    "WAITING",
    "AdminStore",
    "AttemptRow",
    "CancelArrived",
    "Claim",
    "EntryRow",
    "INLINE_OUTCOME",
    "LeaseStore",
    "LogRow",
    "Listening",
    "OneEngineStore",
    "Progress",
    "QueueConfig",
    "ReplayRow",
    "Rewind",
    "RunRow",
    "RunStore",
    "RunUpdate",
    "Signal",
    "Store",
    "Ticket",
    "WorkerRow",
    "run_digest",
]


class Listening(ABC):
    """Wake-ups a store hears from other sessions (RunStore.listen), until closed."""

    @abstractmethod
    def close(self) -> None:
        """Stop listening and let its connection go."""


class RunStore(ABC):
    """Runs and their log: the part of a store every drive of a run uses."""

    @abstractmethod
    def create_run(self, run: RunRow) -> tuple[RunRow, bool]:
        """Insert run unless its id exists; return the stored run and whether it is new."""

    def create_runs(
        self, runs: Sequence[RunRow], vet: Callable[[int, RunRow], None]
    ) -> list[tuple[RunRow, bool]]:
        """create_run() for each of runs (distinct ids), in order. vet(i, stored) is
        called for each runs[i] whose id exists; what it raises is raised. Stores write
        all in one transaction, vetted first (what vet raises writes nothing); this
        default, for wrappers, vets what exists, then creates the runs one by one."""
        found = [self.get_run(run.id) for run in runs]
        for i, stored in enumerate(found):
            if stored is not None:
                vet(i, stored)
        made = [self.create_run(run) for run in runs]
        for i, (stored, created) in enumerate(made):
            if not created and found[i] is None:  # made by someone else meanwhile
                vet(i, stored)
        return made

    @abstractmethod
    def get_run(self, run_id: str) -> RunRow | None:
        """The run with this id, or None."""

    @abstractmethod
    def list_runs(
        self,
        status: str | None = None,
        workflow: str | None = None,
        limit: int | None = None,
        tag: str | None = None,
    ) -> list[RunRow]:
        """Runs, oldest first, optionally filtered (by status, workflow, one tag)."""

    @abstractmethod
    def find_runs(self, query: RunQuery) -> RunPage:
        """One page of the runs that match every filter of query, newest first, and how
        many match in all."""

    @abstractmethod
    def load_log(self, run_id: str, start: int = 0, limit: int | None = None) -> list[EntryRow]:
        """The run's log in position order, from position start, at most limit entries."""

    def replay_log(self, run_id: str, start: int = 0, limit: int | None = None) -> list[ReplayRow]:
        """What replay needs of load_log(); stores may read it faster than whole entries."""
        return [
            ReplayRow(e.run_id, e.position, e.kind, e.name, e.key, e.text, e.status, e.outcome)
            for e in self.load_log(run_id, start, limit)
        ]

    def replay_rows(self, run_id: str, start: int, limit: int) -> list[LogRow]:
        """The columns replay reads of at most limit entries from position start, in
        position order; an outcome longer than INLINE_OUTCOME is given as b"" (read
        it with load_log). Stores read these without making whole entries."""
        return [
            LogRow(
                e.kind,
                e.name,
                e.key,
                e.status,
                b"" if e.outcome is not None and len(e.outcome) > INLINE_OUTCOME else e.outcome,
                e.position,
                None if e.text == e.key else e.text,
            )
            for e in self.load_log(run_id, start, limit)
        ]

    def load_attempts(self, run_id: str, position: int | None = None) -> list[AttemptRow]:
        """The run's attempt rows (of the entry at position, if given), by position and
        attempt; a store that keeps none returns []."""
        return []

    @abstractmethod
    def log_length(self, run_id: str) -> int:
        """How many entries the run's log has (positions are 0 .. length - 1)."""

    @abstractmethod
    def commit(self, progress: Progress) -> bool | None:
        """Write progress atomically and durably (per the store's durability setting).
        True if the run's row asks for a cancel not delivered by this progress (read
        with the write, so a cancel from another process is seen at once); a store
        that does not read it returns False or None. A progress (or its run update)
        with unless_cancelled meeting such a request raises CancelArrived instead,
        having written nothing of the progress. A store with leases must read it
        with every write fenced by a lease: a drive then looks for a cancel only
        after requests that write nothing."""

    def commit_later(self, progress: Progress) -> Ticket:
        """Start writing progress as commit() does, without waiting for it: the ticket is
        done once it is durable, or failed with the error commit() would have raised.
        Stores that batch such writes (store/group_commit.py) override this and flush();
        here it is commit()."""
        ticket = Ticket()
        try:
            cancel = self.commit(progress)
        except Exception as exc:  # noqa: BLE001 - handed over with the ticket
            ticket.finish(exc)
        else:
            ticket.finish(cancel=bool(cancel))
        return ticket

    def flush(self) -> None:
        """Write what commit_later() queued, now, in this thread; if another thread is
        writing, return at once (what that writer did not take is left for the next
        flush). Whoever calls commit_later() must call this until its tickets are done:
        the store does not write queued progress on its own."""
        return None  # commit_later() here writes at once: nothing is ever queued

    def commit_many(self, batch: Sequence[Progress]) -> None:
        """Write several runs' progress; stores may do it in one transaction."""
        for p in batch:
            self.commit(p)

    @abstractmethod
    def runnable(self, now: float, limit: int | None = None) -> list[str]:
        """Ids of unfinished runs with nothing to wait for at time now, oldest first."""

    @abstractmethod
    def next_due(self, after: float | None = None) -> float | None:
        """The earliest time (later than `after`, if given) an unfinished run becomes due."""

    @abstractmethod
    def send_signal(self, run_id: str, name: str, payload: bytes, now: float) -> None:
        """Put a message in the run's mailbox and wake the run if it waits.

        Raises RunNotFound for an unknown run and ContengineError for a finished one;
        nothing is written then.
        """

    @abstractmethod
    def peek_signal(self, run_id: str, name: str) -> Signal | None:
        """The oldest message under name in the run's mailbox, without taking it."""

    @abstractmethod
    def request_cancel(self, run_id: str, now: float) -> bool:
        """Mark the run (and its unfinished child runs) to be cancelled at their current
        yield and wake them; False if the run had finished."""

    def pending_cancels(self, run_ids: Collection[str]) -> set[str]:
        """Which of the runs have a cancel request not yet delivered (read now)."""
        return {
            run_id
            for run_id in run_ids
            if (row := self.get_run(run_id)) is not None and row.cancel_requested
        }

    def listen(self, woken: Callable[[], None]) -> Listening | None:
        """Call woken (from a thread of the store's) soon after another session started
        a run, woke a waiting one with a signal, cancelled one or ended a child whose
        parent waits, and once each time listening (re)starts (what came meanwhile is
        found by that look); never for plain step progress. None: this store hears
        nothing (its callers poll). Either way polling stays the fallback."""
        return None

    @abstractmethod
    def published(self, run_id: str) -> dict[str, bytes]:
        """The latest value published under each key by the run (serialized)."""

    @abstractmethod
    def max_payload(self) -> int | None:
        """The largest serialized value (in bytes) the store can keep; None: no limit."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""


class LeaseStore(ABC):
    """Workers, their leases on runs, queues and their step slots: what lets several
    engines (in one process or many) share a store and never drive one run at once."""

    @abstractmethod
    def claim(
        self,
        worker: WorkerRow,
        now: float,
        wall: float,
        limit: int,
        run_id: str | None = None,
        release: Sequence[tuple[str, int]] = (),
        skip: Collection[str] = (),
    ) -> list[Claim]:
        """Lease up to limit due runs to worker (or just run_id, if due or not), highest
        priority first, within the queues' limits; runs held by another live worker are
        skipped, and so are the ids in skip. `release` lists (run, lease) pairs to let go
        in the same transaction."""

    @abstractmethod
    def release(self, owner: str, leases: Sequence[tuple[str, int]]) -> None:
        """Let go of these (run, lease) pairs, if still held, so any worker may claim them."""

    @abstractmethod
    def hold(self, run_id: str, lease: int, worker: WorkerRow) -> None:
        """In one transaction: if the run is still leased to worker with this lease
        number, renew the worker's row (alive until worker.expires_at); else
        ce.LeaseLost."""

    @abstractmethod
    def heartbeat(self, worker: WorkerRow) -> bool:
        """Record worker (alive until its expires_at); False if its row had gone, which
        means another worker judged it dead (its leases may have been taken)."""

    @abstractmethod
    def release_all(self, owner: str) -> None:
        """Let go of every run `owner` holds; the worker stays on record."""

    @abstractmethod
    def retire_worker(self, worker_id: str) -> None:
        """Remove the worker and release every run it holds (a clean stop)."""

    @abstractmethod
    def workers(self) -> list[WorkerRow]:
        """Workers on record (alive or not yet found dead)."""

    def server_time(self) -> float | None:
        """The server's wall clock (seconds since the epoch) for a store whose workers
        run on many hosts, so each can check its own clock against it; None where
        every worker shares one host's clock."""
        return None

    @abstractmethod
    def set_queue(self, config: QueueConfig) -> None:
        """Create or replace a queue's limits (shared by every process on the store)."""

    @abstractmethod
    def queues(self) -> list[QueueConfig]:
        """Every queue's limits."""

    @abstractmethod
    def take_slot(
        self,
        queue: str,
        worker: WorkerRow,
        now: float,
        wall: float,
        lease: tuple[str, str, int] | None = None,
    ) -> int | None:
        """A slot of the queue for one step execution (its id), or None while it is full;
        with lease (run id, owner, lease number), ce.LeaseLost if the run is no longer
        leased so, instead of a slot (a step must not start for a run taken over)."""

    @abstractmethod
    def give_slot(self, slot: int) -> None:
        """Let a slot taken with take_slot go."""


class AdminStore(StatsSource, ABC):
    """Operator tools: notes on runs, garbage collection, backup, rewind, and the
    whole-run reads and writes of fork, export and import."""

    @abstractmethod
    def set_note(self, run_id: str, note: str | None) -> None:
        """Attach a human-readable note (why a run is stuck) without touching its log."""

    @abstractmethod
    def delete_finished(self, before: float, limit: int) -> int:
        """Delete up to limit finished runs that finished before `before`, in one transaction,
        with their logs, mailboxes and published values; return how many were deleted.

        Never an unfinished run, never a run whose parent is unfinished (the parent's
        replay reads it), and never a run that still has child runs (a new run under the
        same id would adopt them): children go first. Fewer than limit means none is left.
        """

    @abstractmethod
    def count_deletable(self, before: float) -> int:
        """How many runs delete_finished(before, ...) called until none is left would
        delete (children first, so a run whose descendant must stay is not counted);
        nothing is changed."""

    @abstractmethod
    def backup(self, dest_path: str | os.PathLike[str]) -> None:
        """Write a consistent copy of the whole store (one moment of it), while others
        write, as a new SQLite contengine database at dest_path: whatever the store, the
        copy opens with ce.Engine(dest_path), so runs can move from one store to another.

        Raises ContengineError, writing nothing, if dest_path already exists.
        """

    @abstractmethod
    def rewind(self, runs: Sequence[Rewind], now: float) -> None:
        """For each run, delete the failed run's log from its position on and make it
        pending again, with its error cleared, all in one transaction; ContengineError
        (nothing written) unless every run failed and is still as planned (its seen)."""

    @abstractmethod
    def insert_run(
        self,
        run: RunRow,
        entries: Sequence[EntryRow] = (),
        mailbox: Sequence[Signal] = (),
        published: dict[str, bytes] | None = None,
        attempts: Sequence[AttemptRow] = (),
    ) -> None:
        """Create a run with its log, mailbox messages (oldest first), published values
        and attempt rows in one transaction; IdConflict, writing nothing, if the id is
        taken."""

    @abstractmethod
    def mailbox(self, run_id: str) -> list[Signal]:
        """The run's pending mailbox messages, oldest first."""

    @abstractmethod
    def unfinished_descendants(self, run_id: str) -> list[RunRow]:
        """The unfinished runs below run_id in its tree of child runs (theirs too)."""


class Store(RunStore, LeaseStore, AdminStore):
    """A whole store: runs and their log, leases and claims, operator tools."""


class OneEngineStore(Store):
    """A store that serves one engine at a time and keeps no leases (a test's wrapper
    around another store): every claim is granted, and the engine fences no write.

    Its subclass implements RunStore and AdminStore; the lease methods here are what
    leases amount to with one engine (queues: no limits, and none can be set)."""

    def claim(
        self,
        worker: WorkerRow,
        now: float,
        wall: float,
        limit: int,
        run_id: str | None = None,
        release: Sequence[tuple[str, int]] = (),
        skip: Collection[str] = (),
    ) -> list[Claim]:
        """The due runs (or run_id), lease 0: no one else drives them."""
        ids = [run_id] if run_id is not None else self.runnable(now, limit + len(skip))
        rows = [self.get_run(i) for i in ids if i not in skip][:limit]
        return [Claim(r, 0) for r in rows if r is not None and r.status not in FINISHED]

    def release(self, owner: str, leases: Sequence[tuple[str, int]]) -> None:
        """Nothing is held."""
        return None

    def hold(self, run_id: str, lease: int, worker: WorkerRow) -> None:
        """Every lease holds."""
        return None

    def heartbeat(self, worker: WorkerRow) -> bool:
        """Always alive."""
        return True

    def release_all(self, owner: str) -> None:
        """Nothing is held."""
        return None

    def retire_worker(self, worker_id: str) -> None:
        """No worker is on record."""
        return None

    def workers(self) -> list[WorkerRow]:
        """No worker is on record."""
        return []

    def set_queue(self, config: QueueConfig) -> None:
        """Refused: queues' limits are shared between engines, and there is one."""
        raise ContengineError(f"{type(self).__name__} has no queues")

    def queues(self) -> list[QueueConfig]:
        """None."""
        return []

    def take_slot(
        self,
        queue: str,
        worker: WorkerRow,
        now: float,
        wall: float,
        lease: tuple[str, str, int] | None = None,
    ) -> int | None:
        """Always a slot (queues have no limits here)."""
        return 0

    def give_slot(self, slot: int) -> None:
        """Nothing to give back."""
        return None
