"""The Engine (start, drive and inspect runs) and Run, a handle on one run."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime
import inspect
import logging
import math
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, ParamSpec, TypeVar

from ..clock import Clock, SystemClock
from ..core.canonical import canonical_call, key_of
from ..core.serde import Serde, short
from ..core.workflow import Workflow, lookup
from ..drive import pool as drive_pool
from ..drive.live import MAX_BYTES, MAX_RUNS
from ..drive.log import Entry
from ..drive.pool import DrivePool, Parked
from ..drive.runner import NotDue, Runner
from ..errors import (
    ContengineError,
    CorruptPayload,
    DatabaseError,
    IdConflict,
    LeaseLost,
    RunNotFound,
    SerializationError,
    Timeout,
    WorkflowNotFound,
)
from ..store.base import (
    COMPLETED,
    E_COMPLETED,
    FINISHED,
    PENDING,
    RUN_STATUSES,
    Claim,
    OneEngineStore,
    QueueConfig,
    Rewind,
    RunRow,
    Store,
)
from ..store.sqlite.store import SQLiteStore
from .leases import Leaseholder
from .retrying import plan_retry
from .transfer import (
    EXPORT_FORMAT,
    EXPORT_VERSION,
    _b64,
    _check_fork,
    _check_movable,
    _decode_export,
    _encode_fields,
    checked_id,
    checked_ref,
)
from .worker import Worker, install_stop_handlers, restore_handlers

P = ParamSpec("P")
R = TypeVar("R")
log = logging.getLogger("contengine")
# Runs deleted per transaction by gc(): a short write lock at a time for the other writers.
GC_BATCH = 500
# Runs run_until_idle() advances at once: enough that their commits share a disk sync.
DRIVE_THREADS = 64
# What export_run() writes; import_run() reads this version and older ones.


@dataclass
class IdleReport:
    """What run_until_idle() did: runs driven, finished, stuck, and the next due time."""

    driven: int = 0
    finished: list[str] = field(default_factory=list)
    stuck: dict[str, ContengineError] = field(default_factory=dict)
    next_due: float | None = None


class Run(Generic[R]):
    """A handle on one run: its id, workflow, live status and result."""

    def __init__(self, engine: Engine, run_id: str, workflow: str) -> None:
        self._engine = engine
        self.id = run_id
        self.workflow = workflow

    @property
    def status(self) -> str:
        """pending, running, sleeping, waiting, completed, failed or cancelled (read now)."""
        return self._engine._row(self.id).status

    @property
    def tags(self) -> tuple[str, ...]:
        """The labels the run was started with."""
        return self._engine._row(self.id).tags

    @property
    def note(self) -> str | None:
        """Why the run cannot go on, when it is stuck (unknown workflow, nondeterminism)."""
        return self._engine._row(self.id).note

    def result(self, timeout: float | None = None) -> R:
        """The run's return value, or its exception re-raised; drives the run (and its
        child runs) in this thread when no worker does (see Engine._result)."""
        return self._engine._result(self.id, timeout)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<Run {self.id!r} of {self.workflow} ({self.status})>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and other.id == self.id and other._engine is self._engine

    def __hash__(self) -> int:
        return hash(self.id)


class Engine:
    """Starts workflows, drives them through their logs, and answers questions about runs.

    lease: seconds a frozen engine's runs stay held before others take them over
    (an engine whose process died on this host is seen dead at once); poll_interval:
    how often an idle worker or a waiting result() looks for what other processes
    did; cache_runs / cache_bytes: bounds of the cache of live generators of idle
    runs (0 turns it off, and every wake-up replays the log).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = ":memory:",
        *,
        durability: str = "full",
        busy_timeout: float = 5.0,
        clock: Clock | None = None,
        secret: bytes | None = None,
        workflows: Iterable[Workflow[Any, Any]] = (),
        store: Store | None = None,
        lease: float = 10.0,
        poll_interval: float = 0.1,
        cache_runs: int = MAX_RUNS,
        cache_bytes: int = MAX_BYTES,
    ) -> None:
        if not poll_interval > 0:
            raise ValueError(
                f"poll_interval must be a positive number of seconds, not {poll_interval!r}"
            )
        self.store: Store = store or SQLiteStore(path, durability, busy_timeout)
        self.clock: Clock = clock or SystemClock()
        self.serde = Serde(secret, self.store.max_payload)
        self._workflows: dict[str, Workflow[Any, Any]] = {wf.name: wf for wf in workflows}
        self._runner = Runner(
            self.store, self.serde, self.clock, self._find_workflow, float(poll_interval)
        )
        self._runner.live.max_runs, self._runner.live.max_bytes = cache_runs, cache_bytes
        self._runner.take_slot = self._take_slot  # type: ignore[method-assign]
        self._runner.give_slot = self.store.give_slot  # type: ignore[method-assign]
        self._lock = threading.RLock()  # guards _stuck (_active: one writer per key)
        # Runs this engine could not rebuild, with the reason. Kept in memory only:
        # a process with fixed code (or the missing module) tries them afresh.
        self._stuck: dict[str, ContengineError] = {}
        # Runs being driven now by this engine, with the thread driving each.
        self._active: dict[str, int] = {}
        # How this engine leases runs, so that several engines (in this process or
        # others) may share the file and never drive one run at once.
        self._holder = Leaseholder(self.store, lease)
        # A store that serves one engine (a test's wrapper) keeps no leases: no fence.
        self._leased = not isinstance(self.store, OneEngineStore)
        if self._leased:
            self._runner.may_start = self._holder.may_start  # type: ignore[method-assign]
        self.poll_interval = float(poll_interval)
        self._drivers: DrivePool | None = None
        self._drivers_size = 0
        self._retired_pools: list[DrivePool] = []
        # The worker running in this engine, if any: poked when this process makes a
        # run due (start, signal, cancel), so it looks at once instead of at its next poll.
        self._worker: Worker | None = None
        # Notified by signal() and cancel(), so result() waiting on a run wakes at once.
        self._wakeup = threading.Condition()

    # -- starting ------------------------------------------------------------

    def start(
        self,
        workflow: Workflow[P, R] | str,
        /,
        *args: Any,
        id: str | None = None,
        tags: Iterable[str] = (),
        queue: str | None = None,
        priority: int = 0,
        **kwargs: Any,
    ) -> Run[R]:
        """Record a new run (or return the existing one with this id); runs nothing yet.

        A run in a queue is claimed within the queue's limits (engine.set_queue);
        among due runs, a higher priority is claimed first.
        """
        wf = self._resolve(workflow)
        try:
            inspect.signature(wf.fn).bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"workflow {wf.name!r} cannot take these arguments: {exc}") from None
        run_id = checked_id(id if id is not None else uuid.uuid4().hex)
        try:
            # Read back now: arguments that could not be read later would leave the
            # run impossible to rebuild.
            data = self.serde.dumps_checked((args, kwargs), f"the arguments of run {run_id!r}")[0]
        except SerializationError:
            # Name the offending argument rather than the whole tuple.
            for i, a in enumerate(args):
                self.serde.dumps_checked(a, f"argument {i} of run {run_id!r} ({wf.name})")
            for k, v in kwargs.items():
                self.serde.dumps_checked(v, f"argument {k!r} of run {run_id!r} ({wf.name})")
            raise
        args_key = key_of(canonical_call(args, kwargs))
        now = self.clock.now()
        if queue is not None and (not isinstance(queue, str) or not queue):
            raise ValueError(f"a queue name must be a non-empty string, not {queue!r}")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise TypeError(f"priority must be an int, not {priority!r}")
        row = RunRow(
            run_id, wf.name, wf.ref, PENDING, data, args_key, now, now,
            tags=_checked_tags(tags), queue=queue, priority=priority,
        )  # fmt: skip
        stored, created = self.store.create_run(row)
        if not created:
            self._check_same_start(stored, wf, args_key)
        elif self._worker is not None:
            self._poke()
        return Run(self, run_id, wf.name)

    def _check_same_start(self, stored: RunRow, wf: Workflow[Any, Any], key: str | None) -> None:
        if stored.workflow != wf.name:
            raise IdConflict(
                f"run {stored.id!r} already exists for workflow {stored.workflow!r}; it was "
                f"not started again for {wf.name!r}. Use another id."
            )
        if stored.args_key is not None and key is not None and stored.args_key != key:
            raise IdConflict(
                f"run {stored.id!r} already exists with other arguments "
                f"(recorded {stored.args_key}, now {key}); ids are idempotency keys, "
                f"so one id is one run. Use another id for other arguments."
            )

    def run(
        self, workflow: Workflow[P, R] | str, /, *args: Any, id: str | None = None, **kwargs: Any
    ) -> R:
        """Start a run (or find it by id) and wait for its end: run.result()."""
        return self.start(workflow, *args, id=id, **kwargs).result()

    # -- talking to runs ------------------------------------------------------

    def signal(self, run_id: str, name: str, payload: Any = None) -> None:
        """Send a signal: kept in the run's mailbox (oldest first) until a ce.wait(name) takes it.

        The payload must be serializable; it is checked before anything is written.
        Unknown runs raise ce.RunNotFound, finished runs ce.ContengineError.
        """
        checked_ref(run_id)
        if not isinstance(name, str) or not name:
            raise ValueError(f"a signal name must be a non-empty string, not {name!r}")
        data = self.serde.dumps_checked(payload, f"the payload of signal {name!r} to {run_id!r}")[0]
        self.store.send_signal(run_id, name, data, self.clock.now())
        self._poke()

    def cancel(self, run_id: str) -> bool:
        """Raise ce.Cancelled inside the run at its current yield; False if it already finished."""
        checked_ref(run_id)
        runner = self._runner
        with runner.cancel_lock:  # see Runner.cancel_lock
            requested = self.store.request_cancel(run_id, self.clock.now())
            if requested:
                runner.cancelled.add(run_id)
        if requested:
            runner.watch.note(run_id)  # its step running here is told at once
        self._poke()
        return requested

    def _poke(self) -> None:
        """A run may be due now: wake whoever waits in this process."""
        with self._wakeup:
            self._wakeup.notify_all()
        worker = self._worker
        if worker is not None:
            worker.poke()

    # -- driving -------------------------------------------------------------

    def run_until_idle(
        self, *, until: float | datetime.datetime | None = None, threads: int | None = None
    ) -> IdleReport:
        """Drive every run that is due now, until none is left; returns what was done.

        Up to `threads` runs advance at once, in threads of the engine, and their
        commits are written together (group commit), so many short runs go as fast
        as a worker drives them (default 64; 1 on a test clock, so that a test sees the
        runs advance one by one, in order, in its own thread). Runs leased to another
        live engine are left to it.
        With a virtual clock (ce.testing.VirtualClock) the clock jumps to the next due
        timer whenever nothing is due, so sleeping runs finish at once; `until` (epoch
        seconds or an aware datetime) stops the jumps there, for runs that never end.
        """
        report = IdleReport()
        if self._worker is not None:
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
        pool = self._driver_pool(threads) if threads > 1 else None
        # A workflow missing here is noted on its run only if no worker loop elsewhere
        # may have it (its note would be wrong until that worker drives the run).
        note_missing = not self._holder.loops_elsewhere()
        passed: set[str] = set()  # stuck this time: not driven again in this call
        inflight: dict[concurrent.futures.Future[bool], str] = {}
        failure: BaseException | None = None
        while True:
            free = threads - len(inflight)
            # Claims are writes (a disk sync each): take runs in batches of an eighth
            # of the threads rather than one by one as each thread frees up.
            if failure is None and (free >= max(1, threads // 8) or not inflight):
                # Runs in flight are skipped by their lease; a store without leases
                # needs telling.
                skip = passed | set(inflight.values())
                for claim in self._holder.claim(self.clock.now(), free, skip=skip):
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
                lambda: self._drive_claim(claim, park=True, note_missing=note_missing),
                lambda then: self._drive_claim(
                    claim, park=True, then=then, note_missing=note_missing
                ),
            )
        done: concurrent.futures.Future[bool] = concurrent.futures.Future()
        try:
            done.set_result(self._drive_claim(claim, note_missing=note_missing))
        except BaseException as exc:  # noqa: BLE001 - handed over with the result
            done.set_exception(exc)
        return done

    def _driver_pool(self, threads: int) -> DrivePool:
        """Threads that drive runs (made on first use, grown when more are asked for)."""
        with self._lock:
            if self._drivers is None or self._drivers_size < threads:
                if self._drivers is not None:
                    # Still in use by another caller: let it go only at close().
                    self._retired_pools.append(self._drivers)
                self._drivers = DrivePool(threads, self.store.flush, active=drive_pool.ACTIVE)
                self._drivers_size = threads
            return self._drivers

    def _drive(self, run_id: str, *, note_missing: bool = True) -> bool | None:
        """Drive one run as far as it goes now, in this thread; True if it is finished,
        False if it waits, None if another engine (or thread of this one) drives it."""
        with self._lock:
            if self._active.get(run_id) == threading.get_ident():
                raise ContengineError(
                    f"run {run_id!r} is already being driven by this engine, further up "
                    f"this thread's stack: a step cannot wait for the run it belongs to"
                )
        claims = self._holder.claim(self.clock.now(), 1, run_id=run_id)
        if not claims:
            # None: leased to another engine, or driven by another thread of this one.
            return True if self._row(run_id).status in FINISHED else None
        return self._drive_claim(claims[0], note_missing=note_missing)

    def _drive_claim(
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
        self._active[row.id] = me
        finished = parked = False
        try:
            if then is not None:
                then()
            else:
                lease = (self._holder.id, claim.lease) if self._leased else None
                self._runner.drive(row, lease, park=park, lapses=claim.lapses)
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
                self._mark_stuck(row, exc)
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
            self._mark_stuck(row, stuck)
            raise stuck from exc
        finally:
            # Parked too: this thread goes on to other runs; whichever thread takes
            # this one up again says so.
            if self._active.get(row.id) == me:
                del self._active[row.id]
            if not finished and not parked and self._leased:
                self._holder.release(row.id, claim.lease)
        if row.id in self._stuck or row.note is not None:
            with self._lock:
                self._stuck.pop(row.id, None)
            self.store.set_note(row.id, None)
        return finished

    def _mark_stuck(self, row: RunRow, exc: ContengineError) -> None:
        first = str(exc).splitlines()[0]
        if self._stuck.get(row.id) is None:
            log.warning("run %r (%s) is stuck and was left as it is: %s", row.id, row.workflow, exc)
        with self._lock:
            self._stuck[row.id] = exc
        if row.note != first:
            self.store.set_note(row.id, first)

    def _result(self, run_id: str, timeout: float | None) -> Any:
        """Wait for the run's end. Who drives it: this engine's worker if it has one;
        else a worker loop of another engine on the file, if one is live (unless the
        run carries a note: the workers could not drive it); else this thread, which
        drives the run and its child runs, never other runs, and writes no "cannot be
        found" note (it may only lack the code that a worker started later has)."""
        clock = self.clock
        deadline = None if timeout is None else clock.monotonic() + timeout
        while True:
            row = self._row(run_id)
            if row.status == COMPLETED:
                return self.serde.loads(row.result or b"", f"the result of run {run_id!r}")
            if row.status in FINISHED:
                error = self.serde.loads(row.error or b"", f"the exception of run {run_id!r}")
                if not isinstance(error, BaseException):
                    raise CorruptPayload(
                        f"the exception of run {run_id!r} decodes to {type(error).__name__} "
                        f"{short(error)}, not an exception; the database was changed outside "
                        f"contengine"
                    )
                raise error
            remaining = None if deadline is None else deadline - clock.monotonic()
            if remaining is not None and remaining <= 0:
                raise Timeout(f"run {run_id!r} did not finish within {timeout:g} s")
            if self._worker is not None or (row.note is None and self._holder.loops_elsewhere()):
                # A worker drives the runs: wait for it to end this one (this engine's
                # wakes us when a drive ends; another's is looked for every poll).
                self._pause(remaining)
                continue
            finished = self._drive(run_id, note_missing=False)
            if finished:
                continue
            if finished is None:
                # Another engine (or another thread of this one) drives it: wait a
                # poll interval, or until this process wakes us, and ask again.
                self._pause(remaining)
                continue
            # The run waits. Its child runs are driven here too, since no one else may
            # be; then wait without holding the engine and drive again (a replay,
            # which costs little next to the wait).
            if self._drive_tree(run_id):
                continue
            self._wait_until_due(run_id, deadline, timeout)

    def _pause(self, remaining: float | None) -> None:
        """Wait one poll interval (less if the deadline is nearer), or until woken."""
        wait = self.poll_interval if remaining is None else min(remaining, self.poll_interval)
        with self._wakeup:
            self._wakeup.wait(max(wait, 0.0))

    def _drive_tree(self, waiting: str) -> bool:
        """Drive the due child runs (and theirs) of the run result() waits for, once;
        True if any moved. One that cannot be rebuilt here is raised: the run cannot
        end without it."""
        moved = False
        loops = None
        now = self.clock.now()
        for row in self.store.unfinished_descendants(waiting):
            if row.id in self._active or (row.due_at is not None and row.due_at > now):
                continue
            if row.note is None:
                loops = self._holder.loops_elsewhere() if loops is None else loops
                if loops:
                    continue  # a worker loop came up meanwhile: it drives the child
            if self._drive(row.id, note_missing=False) is not None:
                moved = True
        return moved

    def _wait_until_due(self, run_id: str, deadline: float | None, timeout: float | None) -> None:
        """Block until the run is due (its time came, or a signal/cancel woke it), or until
        one of its child runs is due (the caller drives them)."""
        clock = self.clock
        # Only the real clock passes on its own; any other (a test's fake, a virtual
        # clock) moves when it is slept, so the wait is handed to it.
        virtual = not isinstance(clock, SystemClock)
        since = clock.now()
        # Children due already that the caller could not drive (another engine or
        # thread drives them): looked at again a poll interval later, not at once.
        stale: set[str] | None = None
        while True:
            row = self._row(run_id)
            now = clock.now()
            due_at = row.due_at if row.due_at is not None else now
            if row.status in FINISHED or due_at <= now:
                return
            children = [
                (d.id, d.due_at if d.due_at is not None else now)
                for d in self.store.unfinished_descendants(run_id)
                if d.id not in self._active
            ]
            due_now = {child for child, at in children if at <= now}
            if stale is None:
                stale = due_now
            elif due_now - stale or (stale and now >= since + self.poll_interval):
                return
            remaining = None if deadline is None else deadline - clock.monotonic()
            if remaining is not None and remaining <= 0:
                raise Timeout(f"run {run_id!r} did not finish within {timeout:g} s")
            target = min([due_at] + [at for _, at in children if at > now])
            if stale:
                target = min(target, since + self.poll_interval)
            if virtual:
                if target == math.inf:
                    raise ContengineError(
                        f"run {run_id!r} waits for a signal with no timeout, and on a test "
                        f"clock nothing in this thread can send it: send it with "
                        f"engine.signal() first"
                    )
                wait = target - now
                clock.sleep(wait if remaining is None else min(wait, remaining))
                continue
            # Real time: sleep until due, woken early by signal()/cancel() in this
            # process; look at the store every poll interval for other processes.
            wait = min(target - now, self.poll_interval)
            if remaining is not None:
                wait = min(wait, remaining)
            with self._wakeup:
                self._wakeup.wait(max(wait, 0.0))

    # -- workers -------------------------------------------------------------

    def work(self, threads: int = 8, *, grace: float = 30.0) -> None:
        """Drive due runs until SIGTERM or SIGINT (or KeyboardInterrupt), in `threads`
        threads; several processes may work one file. On a stop it claims nothing more,
        lets running steps finish for up to `grace` seconds, and lets go of its leases.
        Signal handlers can only be set from the main thread: elsewhere, use
        `with engine.worker():`, which stops when the block ends."""
        stop = threading.Event()
        old = install_stop_handlers(stop)
        w = Worker(self, threads, grace).start()
        try:
            while not stop.wait(0.2):
                if w.error is not None:
                    raise w.error
        except KeyboardInterrupt:
            pass
        finally:
            w.stop()
            restore_handlers(old)

    @contextlib.contextmanager
    def worker(self, threads: int = 8, *, grace: float = 30.0) -> Iterator[Worker]:
        """Drive due runs in background threads while the block runs (in an app);
        leaving the block stops the worker as work() does on SIGTERM."""
        w = Worker(self, threads, grace).start()
        try:
            yield w
        finally:
            w.stop()

    def set_queue(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        worker_concurrency: int | None = None,
        rate_limit: int | None = None,
        period: float = 1.0,
    ) -> None:
        """Set a queue's limits, shared by every process on the file: at most
        `concurrency` of its runs driven at once in all, `worker_concurrency` per
        engine, and `rate_limit` runs started per `period` seconds. None: no limit."""
        for label, value in (
            ("concurrency", concurrency),
            ("worker_concurrency", worker_concurrency),
            ("rate_limit", rate_limit),
        ):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{label} must be a positive int or None, not {value!r}")
        if not period > 0:
            raise ValueError(f"period must be a positive number of seconds, not {period!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"a queue name must be a non-empty string, not {name!r}")
        self.store.set_queue(
            QueueConfig(name, concurrency, worker_concurrency, rate_limit, float(period))
        )

    def _take_slot(
        self,
        queue: str,
        give_up: threading.Event | None = None,
        lease: tuple[str, str, int] | None = None,
    ) -> int | None:
        """Wait (on this engine's clock) until the step queue has room; its slot, or None
        once give_up is set while the queue is full (ce.LeaseLost once lease is gone)."""
        delay = 0.002
        holder = self._holder
        real = isinstance(self.clock, SystemClock)
        while True:
            if holder.letting_go:  # a stop past its grace period: no step starts now
                if give_up is not None:
                    return None
                raise LeaseLost(f"this engine is letting go of its runs: no slot of {queue!r}")
            slot = self.store.take_slot(queue, holder.row(), self.clock.now(), holder.wall(), lease)
            if slot is not None:
                return slot
            if give_up is not None and give_up.is_set():
                return None
            if give_up is not None and real:
                give_up.wait(delay)  # a stop ends the wait at once, not a poll later
            else:
                self.clock.sleep(delay)
            delay = min(delay * 2, self.poll_interval)

    # -- looking -------------------------------------------------------------

    def get_run(self, run_id: str) -> Run[Any]:
        """A handle on an existing run; RunNotFound if there is none."""
        row = self._row(run_id)
        return Run(self, row.id, row.workflow)

    def runs(
        self,
        status: str | None = None,
        workflow: Workflow[Any, Any] | str | None = None,
        tag: str | None = None,
    ) -> list[Run[Any]]:
        """Runs, oldest first, filtered by status, workflow and tag."""
        if status is not None and status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {', '.join(RUN_STATUSES)}, not {status!r}")
        name = workflow.name if isinstance(workflow, Workflow) else workflow
        return [Run(self, r.id, r.workflow) for r in self.store.list_runs(status, name, tag=tag)]

    def history(self, run_id: str) -> list[Entry]:
        """The run's log in order: one entry per request, with status and outcome."""
        self._row(run_id)
        return [Entry(row, self.serde) for row in self.store.load_log(run_id)]

    def published(self, run_id: str, key: str | None = None, default: Any = None) -> Any:
        """What the run published with ce.publish: all keys as a dict, or one key's value."""
        self._row(run_id)
        values = self.store.published(run_id)
        what = f"a value published by run {run_id!r}"
        if key is not None:
            return self.serde.loads(values[key], what) if key in values else default
        return {k: self.serde.loads(v, what) for k, v in values.items()}

    # -- housekeeping -----------------------------------------------------------

    def gc(self, older_than_seconds: float, on_batch: Callable[[int], None] | None = None) -> int:
        """Delete runs that finished more than this many seconds ago, with their logs,
        mailboxes and published values; returns how many runs were deleted.

        Unfinished runs are never touched, nor a finished child whose parent is
        unfinished. Each batch of GC_BATCH runs is one transaction; on_batch gets the
        running total after each.
        """
        seconds = float(older_than_seconds)
        if not seconds >= 0 or math.isinf(seconds):
            raise ValueError(f"older_than_seconds must be finite and >= 0, not {seconds!r}")
        before = self.clock.now() - seconds
        total = 0
        while True:
            deleted = self.store.delete_finished(before, GC_BATCH)
            total += deleted
            if on_batch is not None:
                on_batch(total)
            if deleted < GC_BATCH:
                return total

    def backup(self, dest: str | os.PathLike[str]) -> None:
        """Copy the database to a new file dest, consistently, while runs go on."""
        self.store.backup(dest)

    # -- repairing and moving runs ------------------------------------------------

    def retry(self, run_id: str, at: int | None = None) -> Run[Any]:
        """Resume a failed run at the failed request whose exception ended it, discarding
        the log from there on (a saga's compensations too); with `at`, from that position.

        A failed child run behind that request is retried with it (and its own failed
        child, and so on), all in one transaction. A run that failed in its own code
        resumes after its log. Refused, with nothing changed, unless the run failed, or
        where the re-run could not be the same run (a discarded wait's signal would be
        lost, a discarded child run would be taken over, a cancelled or deleted child).
        """
        return self.rewind(plan_retry(self.store, run_id, at))

    def rewind(self, plan: Sequence[Rewind]) -> Run[Any]:
        """Carry out a retry's plan (retrying.plan_retry's) in one transaction; refused,
        with nothing changed, if any of its runs changed since it was planned."""
        with self._lock:
            self.store.rewind(plan, self.clock.now())
            for r in plan:
                self._stuck.pop(r.run_id, None)
        self._poke()
        return Run(self, plan[0].run_id, self._row(plan[0].run_id).workflow)

    def fork(self, run_id: str, at: int, new_id: str | None = None) -> Run[Any]:
        """A new run of the same workflow and arguments whose log is a copy of the first
        `at` entries of run_id's; driven, it replays them and goes on live from there.

        Refused if `at` is outside the log, cuts a gather or race in two, or keeps an
        entry that is still in flight or started a child run (child runs are not copied).
        Values published in the kept entries are published by the new run too.
        """
        row = self._row(run_id)
        entries = self.store.load_log(run_id)
        _check_fork(run_id, entries, at)
        new = checked_id(new_id if new_id is not None else uuid.uuid4().hex)
        now = self.clock.now()
        copy = RunRow(new, row.workflow, row.ref, PENDING, row.args, row.args_key, now, now)
        kept = [dataclasses.replace(e, run_id=new) for e in entries[:at]]
        published = {
            e.name: e.outcome
            for e in kept
            if e.kind == "publish" and e.status == E_COMPLETED and e.outcome is not None
        }
        self.store.insert_run(copy, kept, (), published)
        return Run(self, new, row.workflow)

    def export_run(self, run_id: str) -> dict[str, Any]:
        """The run as JSON-ready data: its row, log, pending signals and published values.

        import_run() on another database recreates it there, to be driven on. Bytes
        are base64; a wait's "never" due time is the string "inf". An unfinished run
        in a tree of runs (a child, or a parent of children) cannot be moved alone.
        """
        row = self._row(run_id)
        entries = self.store.load_log(run_id)
        if row.status not in FINISHED:
            _check_movable(row, entries)
        run = _encode_fields(row)
        return {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "run": run,
            "log": [_encode_fields(e, skip=("run_id",)) for e in entries],
            "mailbox": [
                {"name": m.name, "payload": _b64(m.payload), "sent_at": m.sent_at}
                for m in self.store.mailbox(run_id)
            ],
            "published": {k: _b64(v) for k, v in self.store.published(run_id).items()},
        }

    def import_run(self, data: Any, id: str | None = None) -> Run[Any]:
        """Recreate a run from export_run() data, under its own id or `id`; returns it.

        Raises IdConflict if the id is taken, and ContengineError (nothing written) for
        data of a newer format version or of the wrong shape.
        """
        row, entries, mailbox, published = _decode_export(data, id)
        self.store.insert_run(row, entries, mailbox, published)
        return Run(self, row.id, row.workflow)

    def stuck(self) -> dict[str, ContengineError]:
        """Runs this engine could not rebuild, with the reason (log untouched)."""
        return dict(self._stuck)

    def close(self) -> None:
        """Let go of this engine's leases and threads, then close the database connection."""
        if self._worker is not None:
            self._worker.stop()  # as on SIGTERM: steps finish within its grace period
        for pool in [*self._retired_pools, self._drivers]:
            if pool is not None:
                pool.shutdown(wait=True)  # parked drives go on to their end first
        self._drivers, self._retired_pools = None, []
        self._runner.close()
        self._holder.close()
        self.store.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------

    def _row(self, run_id: str) -> RunRow:
        row = self.store.get_run(run_id)
        if row is None:
            raise RunNotFound(f"no run with id {run_id!r} in this database")
        return row

    def _resolve(self, workflow: Workflow[Any, Any] | str) -> Workflow[Any, Any]:
        if isinstance(workflow, Workflow):
            self._workflows[workflow.name] = workflow  # the newest definition wins
            return workflow
        if isinstance(workflow, str):
            return lookup(workflow, None, self._workflows)
        raise TypeError(
            f"engine.start() needs a @ce.workflow (or its name), not {workflow!r}; "
            f"decorate the generator function with @ce.workflow"
        )

    def _find_workflow(self, row: RunRow) -> Workflow[Any, Any]:
        return lookup(row.workflow, row.ref, self._workflows)


def _checked_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """Tags as stored: non-empty strings without commas, each once, in the order given."""
    if isinstance(tags, str):
        raise TypeError(f"tags must be a list of strings, not the string {tags!r}")
    out: list[str] = []
    for tag in tags:
        if not isinstance(tag, str) or not tag or "," in tag:
            raise ValueError(f"a tag must be a non-empty string without commas, not {tag!r}")
        if tag not in out:
            out.append(tag)
    return tuple(out)
