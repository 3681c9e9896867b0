"""The values a store keeps and returns: runs, log entries, progress, tickets, workers, claims.

Plain fields only (str, int, float, bytes): every store reads and writes these, and
none of them knows of SQL.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
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
    forked_from: str | None = None  # the run this one is a fork of (engine.fork)


@dataclass(slots=True)
class CopiedRun:
    """A run as a copy of a whole store takes it (a backup into another store): its row,
    and what RunRow leaves out that the copy keeps."""

    row: RunRow
    cancel_state: int  # 0 never cancelled, 1 a cancel waits to be delivered, 2 delivered
    lease: int  # the fencing counter: the copy's next claim goes on from it
    claimed_at: float | None  # the first claim (a queue's rate limit counts starts)


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


# What an attempt row says of its attempt (AttemptRow.outcome).
A_STARTED, A_FAILED, A_CRASHED = "started", "failed", "crashed"


@dataclass(slots=True)
class AttemptRow:
    """One attempt of a logged step as stored: written only when the attempt fails, is
    found lost in a crash, or starts after one that did (its real start); a step's first
    attempt that succeeds has no row (its entry's started_at and finished_at are its times).
    """

    run_id: str
    position: int
    attempt: int  # 1, 2, ... (the entry's attempts counts them)
    outcome: str  # A_STARTED (still running, or the last), A_FAILED or A_CRASHED
    started_at: float
    ended_at: float | None = None  # failed: when it raised; crashed: unknown (None)
    found_at: float | None = None  # crashed: when a takeover found it in flight
    error_text: str | None = None  # failed: the exception's traceback text


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


# Outcomes longer than this are left out of LogRow (read one at a time when replay
# reaches them), so that a chunk of rows read ahead holds a bounded amount of memory.
INLINE_OUTCOME = 64 * 1024


class LogRow(NamedTuple):
    """What replay reads of a log entry, and nothing more: read by the thousand, so
    a plain tuple of the columns as the database gives them.

    outcome is b"" when the stored one is longer than INLINE_OUTCOME: replay reads
    that one alone when it reaches it. stored_text is None when the text equals the
    key (the usual case; `text` puts it back).
    """

    kind: str
    name: str
    key: str | None
    status: str
    outcome: bytes | None
    position: int
    stored_text: str | None

    @property
    def text(self) -> str:
        """Readable text of the arguments (for a divergence's message)."""
        text = self.stored_text
        return text if text is not None else (self.key or "")


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
    # Attempt rows written (inserted, or completing the row of an attempt that started)
    # with this progress: only where an attempt failed, was found crashed, or began after one.
    attempts: tuple[AttemptRow, ...] = ()
    # Signals sent to other runs (ce.send) with this progress: (target run id, name,
    # serialized payload, time sent), each put in the target's mailbox, waking it if it
    # waits.
    send: tuple[tuple[str, str, bytes, float], ...] = ()


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
