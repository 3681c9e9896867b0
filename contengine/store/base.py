"""The storage interface: runs, their logs, and the one-transaction progress write.

A store keeps bytes and plain fields; it never unpickles, never reads a clock and
never runs user code. Every store passes tests/test_store_contract.py.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from dataclasses import astuple, dataclass
from typing import NamedTuple

from ..errors import ContengineError

# Run statuses, as the public API names them.
PENDING, RUNNING, SLEEPING, WAITING = "pending", "running", "sleeping", "waiting"
COMPLETED, FAILED, CANCELLED = "completed", "failed", "cancelled"
RUN_STATUSES = (PENDING, RUNNING, SLEEPING, WAITING, COMPLETED, FAILED, CANCELLED)
FINISHED = frozenset({COMPLETED, FAILED, CANCELLED})

# Log entry statuses. An entry is written "running" in the same transaction that
# commits the outcome before it, so the log always shows what is in flight.
E_RUNNING, E_RETRYING, E_COMPLETED, E_FAILED = "running", "retrying", "completed", "failed"


@dataclass(slots=True)
class RunRow:
    """A run as stored."""

    id: str
    workflow: str
    ref: str | None
    status: str
    args: bytes
    args_key: str | None
    created_at: float
    updated_at: float
    finished_at: float | None = None
    due_at: float | None = None
    result: bytes | None = None
    error: bytes | None = None
    error_text: str | None = None
    note: str | None = None
    cancel_requested: bool = False
    parent_id: str | None = None  # the run that started this one as a child
    generation: int = 0  # how many times the run continued as new
    tags: tuple[str, ...] = ()  # labels to find runs by (engine.runs(tag=...))
    queue: str | None = None  # the queue whose limits the run is claimed under
    priority: int = 0  # higher is claimed first


@dataclass(slots=True)
class EntryRow:
    """One log entry as stored: a request at a position and, once known, its outcome."""

    run_id: str
    position: int
    kind: str
    name: str
    key: str | None
    text: str
    status: str
    attempts: int
    crashes: int
    started_at: float
    finished_at: float | None = None
    due_at: float | None = None
    outcome: bytes | None = None  # pickled value (completed) or exception (failed)
    error_text: str | None = None


def run_digest(row: RunRow, entries: Sequence[EntryRow]) -> str:
    """A digest of a run's row and log as read: equal digests, the same run."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(astuple(row)).encode())
    for e in entries:
        h.update(repr(astuple(e)).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Rewind:
    """One run to make pending again, its log kept up to (not including) position.

    seen is run_digest() of the run as the plan read it: the rewind is refused if the
    run is no longer so (a plan made from another state could discard the wrong steps).
    """

    run_id: str
    position: int
    seen: str


class ReplayRow(NamedTuple):
    """The part of a log entry that replay reads (a light tuple: replay reads many)."""

    run_id: str
    position: int
    kind: str
    name: str
    key: str | None
    text: str
    status: str
    outcome: bytes | None


@dataclass(slots=True)
class RunUpdate:
    """New state of a run, written with the progress that caused it."""

    status: str
    updated_at: float
    due_at: float | None = None
    finished_at: float | None = None
    result: bytes | None = None
    error: bytes | None = None
    error_text: str | None = None
    clear_cancel: bool = False  # the cancellation was delivered with this progress
    # A run's end written only if its row asks for no cancel (one sent during the last
    # step, not delivered): else commit() writes nothing and raises CancelArrived.
    unless_cancelled: bool = False


class CancelArrived(ContengineError):
    """A progress written unless cancelled (Progress.unless_cancelled, or a run's end with
    RunUpdate.unless_cancelled) met a cancel request in the run's row: nothing of that
    progress was written."""


@dataclass(slots=True)
class Signal:
    """A message in a run's mailbox, oldest first per name."""

    seq: int
    run_id: str
    name: str
    payload: bytes
    sent_at: float


class Ticket:
    """A progress write under way (Store.commit_later): done once durable or failed."""

    __slots__ = ("error", "done", "cancel", "_lock", "_then")

    def __init__(self) -> None:
        self.error: Exception | None = None  # why nothing was written, once done
        self.done = False
        self.cancel = False  # the run's row asked for a cancel (as commit() returns)
        self._lock = threading.Lock()
        self._then: Callable[[], None] | None = None

    def finish(self, error: Exception | None = None, cancel: bool = False) -> None:
        """Mark the write done (durable, or failed with error) and call the waiting callback."""
        with self._lock:
            self.error, self.done, self.cancel = error, True, cancel
            then, self._then = self._then, None
        if then is not None:
            try:
                then()
            except Exception:  # the writer's thread must go on writing for everyone else
                logging.getLogger("contengine").exception("a commit's callback failed")

    def when_done(self, then: Callable[[], None]) -> None:
        """Call then() once the write is done: at once (in this thread) if it already is,
        else in the thread that finishes it."""
        with self._lock:
            if not self.done:
                self._then = then
                return
        then()


@dataclass(slots=True)
class Progress:
    """Everything one advance of a run writes, committed in one transaction."""

    run_id: str
    update: EntryRow | None = None  # an existing entry's new state
    insert: EntryRow | None = None  # the next request, now in flight
    run: RunUpdate | None = None
    # When set, the update applies only if the stored entry still has this many
    # attempts (and is in flight); otherwise the whole commit fails. This fences
    # out a second writer of the same run.
    expect_attempts: int | None = None
    # Entries that are complete when first written (answers to now/random/...),
    # inserted before `insert`, in position order.
    recorded: tuple[EntryRow, ...] = ()
    # A mailbox message consumed by this progress (its seq); it is deleted in the
    # same transaction that logs it, and the commit fails if it is already gone.
    consume: int | None = None
    # Child runs started by this progress, created in the same transaction.
    new_runs: tuple[RunRow, ...] = ()
    # Values published (ce.publish) with this progress: (key, serialized value).
    publish: tuple[tuple[str, bytes], ...] = ()
    # continue_as_new: the new arguments; the run's log is cleared and it starts again.
    restart: bytes | None = None
    # When set, nothing is written unless the run is still in this generation.
    expect_generation: int | None = None
    # When set, nothing is written unless the run is still leased to this (owner,
    # lease number): a driver whose lease was taken over is fenced out (LeaseLost).
    lease: tuple[str, int] | None = None
    # When set, nothing is written if the run's row asks for a cancel not delivered:
    # commit() raises CancelArrived instead (a step's outcome whose cancel is raised at
    # its yield instead, see contengine/drive/cancel.py; a run's end, as
    # RunUpdate.unless_cancelled).
    unless_cancelled: bool = False


@dataclass(slots=True)
class WorkerRow:
    """A process (or engine) that holds leases on runs, alive until expires_at."""

    id: str
    host: str
    pid: int
    pid_start: str | None
    started_at: float
    expires_at: float
    # Runs a worker loop (engine.work / engine.worker), which claims any due run: a
    # client's run.result() leaves runs to such engines rather than drive them itself.
    worker_loop: bool = False


@dataclass(slots=True)
class QueueConfig:
    """Limits on a queue's runs: at once across all workers, at once per worker, and
    how many may start per period of seconds. None means no limit."""

    name: str
    concurrency: int | None = None
    worker_concurrency: int | None = None
    rate_limit: int | None = None
    rate_period: float | None = None


@dataclass(slots=True)
class Claim:
    """A run leased to a driver: its row and the lease number that fences its writes."""

    run: RunRow
    lease: int
    # The claimer's count of lapses of its liveness when it claimed (see
    # Leaseholder.lapses): a later lapse means the lease may have been taken since.
    lapses: int = 0


class Store(ABC):
    """Persistence of runs and logs; implementations keep SQL dialects to themselves."""

    @abstractmethod
    def create_run(self, run: RunRow) -> tuple[RunRow, bool]:
        """Insert run unless its id exists; return the stored run and whether it is new."""

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
    def load_log(self, run_id: str, start: int = 0, limit: int | None = None) -> list[EntryRow]:
        """The run's log in position order, from position start, at most limit entries."""

    def replay_log(self, run_id: str, start: int = 0, limit: int | None = None) -> list[ReplayRow]:
        """What replay needs of load_log(); stores may read it faster than whole entries."""
        return [
            ReplayRow(e.run_id, e.position, e.kind, e.name, e.key, e.text, e.status, e.outcome)
            for e in self.load_log(run_id, start, limit)
        ]

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
        Stores that batch such writes override this (and flush()); here it is commit()."""
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

    @abstractmethod
    def runnable(self, now: float, limit: int | None = None) -> list[str]:
        """Ids of unfinished runs with nothing to wait for at time now, oldest first."""

    def due_unowned(self, now: float, limit: int | None = None) -> list[str]:
        """Like runnable(), but only runs that no engine holds a lease on."""
        return self.runnable(now, limit)

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

    @abstractmethod
    def published(self, run_id: str) -> dict[str, bytes]:
        """The latest value published under each key by the run (serialized)."""

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
    def backup(self, dest_path: str | os.PathLike[str]) -> None:
        """Write a consistent copy of the whole store to a new file, while others write.

        Raises ContengineError, writing nothing, if dest_path already exists.
        """

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""

    def max_payload(self) -> int | None:
        """The largest serialized value (in bytes) the store can keep; None: no limit."""
        return None

    def unfinished_descendants(self, run_id: str) -> list[RunRow]:
        """The unfinished runs below run_id in its tree of child runs (theirs too)."""
        children: dict[str, list[RunRow]] = {}
        for row in self.list_runs():
            if row.parent_id is not None:
                children.setdefault(row.parent_id, []).append(row)
        out: list[RunRow] = []
        todo = [run_id]
        while todo:
            for row in children.get(todo.pop(), []):
                todo.append(row.id)
                if row.status not in FINISHED:
                    out.append(row)
        return out

    def rewind(self, runs: Sequence[Rewind], now: float) -> None:
        """For each run, delete the failed run's log from its position on and make it
        pending again, with its error cleared, all in one transaction; ContengineError
        (nothing written) unless every run failed and is still as planned (its seen)."""
        raise ContengineError(f"{type(self).__name__} cannot rewind runs")

    def insert_run(
        self,
        run: RunRow,
        entries: Sequence[EntryRow] = (),
        mailbox: Sequence[Signal] = (),
        published: dict[str, bytes] | None = None,
    ) -> None:
        """Create a run with its log, mailbox messages (oldest first) and published values
        in one transaction; IdConflict, writing nothing, if the id is taken."""
        raise ContengineError(f"{type(self).__name__} cannot insert whole runs")

    def mailbox(self, run_id: str) -> list[Signal]:
        """The run's pending mailbox messages, oldest first."""
        raise ContengineError(f"{type(self).__name__} cannot list mailboxes")

    def commit_many(self, batch: Sequence[Progress]) -> None:
        """Write several runs' progress; stores may do it in one transaction."""
        for p in batch:
            self.commit(p)

    # -- leases (stores without them serve one engine at a time) -------------------

    supports_leases = False

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
        ids = [run_id] if run_id is not None else self.runnable(now, limit + len(skip))
        rows = [self.get_run(i) for i in ids if i not in skip][:limit]
        return [Claim(r, 0) for r in rows if r is not None and r.status not in FINISHED]

    def release(self, owner: str, leases: Sequence[tuple[str, int]]) -> None:
        """Let go of these (run, lease) pairs, if still held, so any worker may claim them."""
        return None

    def hold(self, run_id: str, lease: int, worker: WorkerRow) -> None:
        """In one transaction: if the run is still leased to worker with this lease
        number, renew the worker's row (alive until worker.expires_at); else
        ce.LeaseLost. Stores with leases must implement it."""
        raise NotImplementedError(f"{type(self).__name__} supports leases but not hold()")

    def heartbeat(self, worker: WorkerRow) -> bool:
        """Record worker (alive until its expires_at); False if its row had gone, which
        means another worker judged it dead (its leases may have been taken)."""
        return True

    def release_all(self, owner: str) -> None:
        """Let go of every run `owner` holds; the worker stays on record."""
        return None

    def retire_worker(self, worker_id: str) -> None:
        """Remove the worker and release every run it holds (a clean stop)."""
        return None

    def workers(self) -> list[WorkerRow]:
        """Workers on record (alive or not yet found dead)."""
        return []

    def set_queue(self, config: QueueConfig) -> None:
        """Create or replace a queue's limits (shared by every process on the store)."""
        raise ContengineError(f"{type(self).__name__} has no queues")

    def queues(self) -> list[QueueConfig]:
        """Every queue's limits."""
        return []

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
        return 0

    def give_slot(self, slot: int) -> None:
        """Let a slot taken with take_slot go."""
        return None
