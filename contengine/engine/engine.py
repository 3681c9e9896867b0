"""The Engine (start, drive and inspect runs) and Run, a handle on one run."""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import random as random_module
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Generic, ParamSpec, TypeVar

from ..clock import Clock, SystemClock
from ..core.ids import checked_ref, refuse_nul
from ..core.serde import Serde
from ..core.workflow import Workflow, lookup
from ..drive.events import Hook
from ..drive.history import Attempt, attempts_of
from ..drive.live import MAX_BYTES, MAX_RUNS
from ..drive.log import Entry
from ..drive.runner import DriveContext, Runner, unleased
from ..errors import ContengineError
from ..store.base import RUN_STATUSES, OneEngineStore, QueueConfig, Rewind, RunRow, Store
from ..store.opening import open_store
from .dispatch import Dispatcher, IdleReport, row_of
from .leases import Leaseholder
from .retrying import plan_retry
from .slots import QueueSlots
from .starting import StartBatch, check_same_start, new_row
from .stats import EngineStats, engine_stats
from .transfer import export_run, fork_run, import_run
from .waiting import wait_for_result
from .worker import Worker, install_stop_handlers, restore_handlers

__all__ = ["Engine", "IdleReport", "Run"]


P = ParamSpec("P")
R = TypeVar("R")
# Runs deleted per transaction by gc(): a short write lock at a time for the other writers.
GC_BATCH = 500


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
    def forked_from(self) -> str | None:
        """The id of the run this one was forked from (engine.fork), or None."""
        return self._engine._row(self.id).forked_from

    @property
    def note(self) -> str | None:
        """Why the run cannot go on, when it is stuck (unknown workflow, nondeterminism)."""
        return self._engine._row(self.id).note

    def result(self, timeout: float | None = None) -> R:
        """The run's result, or its exception re-raised (driven here if no worker does)."""
        return self._engine._result(self.id, timeout)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<Run {self.id!r} of {self.workflow} ({self.status})>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and other.id == self.id and other._engine is self._engine

    def __hash__(self) -> int:
        return hash(self.id)


class Engine:
    """Starts workflows, drives them through their logs, and answers questions about runs.

    path: an SQLite file (or ":memory:"), or a PostgreSQL URL (postgresql://user@host/db,
    with schema= or ?schema=name choosing the PostgreSQL schema; default "contengine").
    lease: seconds a frozen engine's runs stay held before others take them over
    (an engine whose process died on this host is seen dead at once); poll_interval:
    how often an idle worker or a waiting result() looks for what other processes
    did; cache_runs / cache_bytes: bounds of the cache of live generators of idle
    runs (0 turns it off, and every wake-up replays the log); random: the source of
    ce.random() and ce.uuid() (default: seeded from the OS; a test may pass a seeded
    one; a replay reads the logged values, never this); hooks: see add_hook.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = ":memory:",
        *,
        durability: str = "full",
        busy_timeout: float = 5.0,
        schema: str | None = None,
        clock: Clock | None = None,
        secret: bytes | None = None,
        workflows: Iterable[Workflow[Any, Any]] = (),
        store: Store | None = None,
        lease: float = 10.0,
        poll_interval: float = 0.1,
        cache_runs: int = MAX_RUNS,
        cache_bytes: int = MAX_BYTES,
        random: random_module.Random | None = None,
        hooks: Iterable[Hook] = (),
    ) -> None:
        if not poll_interval > 0:
            raise ValueError(
                f"poll_interval must be a positive number of seconds, not {poll_interval!r}"
            )
        self.store: Store = store or open_store(path, durability, busy_timeout, schema)
        self.clock: Clock = clock or SystemClock()
        self.serde = Serde(secret, self.store.max_payload)
        self.poll_interval = float(poll_interval)
        self._workflows: dict[str, Workflow[Any, Any]] = {wf.name: wf for wf in workflows}
        # How this engine leases runs, so that several engines (in this process or
        # others) may share the file and never drive one run at once.
        self._holder = Leaseholder(self.store, lease)
        # A store without leases (a test's wrapper) serves one engine: no fence.
        leased = not isinstance(self.store, OneEngineStore)
        context = DriveContext(
            take_slot=QueueSlots(
                self.store, self.clock, self._holder, self.poll_interval
            ).take_slot,
            give_slot=self.store.give_slot,
            may_start=self._holder.may_start if leased else unleased,
            random=random if random is not None else random_module.Random(),
        )
        self._runner = Runner(
            self.store, self.serde, self.clock, self._find_workflow, self.poll_interval,
            context=context, cache_runs=cache_runs, cache_bytes=cache_bytes,
        )  # fmt: skip
        self._dispatch = Dispatcher(
            self.store, self.clock, self._runner, self._holder, self.poll_interval
        )
        for hook in hooks:
            self.add_hook(hook)

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
        row = new_row(wf, self.serde, self.clock.now(), args, kwargs, id, tags, queue, priority)
        stored, created = self.store.create_run(row)
        if not created:
            check_same_start(stored, wf, row.args_key)
        elif self._dispatch.worker is not None:
            self._dispatch.poke()
        return Run(self, row.id, wf.name)

    def start_many(self, starts: Iterable[tuple[Any, ...]], /) -> list[Run[Any]]:
        """Record many runs in one transaction (one commit, one sync): for each
        (workflow, args, kwargs), what start(workflow, *args, **kwargs) records, where
        kwargs holds start()'s id, tags, queue and priority as well as the workflow's own
        keyword arguments; the runs come back in order. A start may be a pair
        (workflow, args) when there are no keyword arguments.

        All or nothing: a start that start() would refuse (arguments the workflow
        cannot take or that cannot be serialized, a bad id, an unknown workflow, an id
        taken by another workflow or other arguments, here or in this list) refuses the
        whole list, naming that start, and writes nothing. An id that exists for the
        same workflow and arguments (or that comes twice in the list) gives the
        existing run, as start() does.
        """
        batch = StartBatch(self._resolve, self.serde, self.clock.now(), starts)
        if batch.unique:
            made = self.store.create_runs(batch.unique, batch.vet)
            if any(created for _, created in made) and self._dispatch.worker is not None:
                self._dispatch.poke()
        return [Run(self, row.id, wf.name) for wf, row in batch.prepared]

    def run(
        self, workflow: Workflow[P, R] | str, /, *args: Any, id: str | None = None, **kwargs: Any
    ) -> R:
        """Start a run (or find it by id) and wait for its end: run.result()."""
        return self.start(workflow, *args, id=id, **kwargs).result()

    def register(self, *workflows: Workflow[Any, Any]) -> None:
        """Make workflows known to this engine by name, for runs of them started elsewhere
        (by name, as child runs, in other processes); the newest definition of a name wins."""
        for wf in workflows:
            if not isinstance(wf, Workflow):
                raise TypeError(f"engine.register() takes @ce.workflow functions, not {wf!r}")
            self._workflows[wf.name] = wf

    # -- talking to runs ------------------------------------------------------

    def signal(self, run_id: str, name: str, payload: Any = None) -> None:
        """Send a signal: kept in the run's mailbox (oldest first) until a ce.wait(name) takes it.

        The payload must be serializable; it is checked before anything is written.
        Unknown runs raise ce.RunNotFound, finished runs ce.ContengineError.
        """
        checked_ref(run_id)
        if not isinstance(name, str) or not name:
            raise ValueError(f"a signal name must be a non-empty string, not {name!r}")
        refuse_nul(name, "the signal name")
        data = self.serde.dumps_checked(payload, f"the payload of signal {name!r} to {run_id!r}")[0]
        self.store.send_signal(run_id, name, data, self.clock.now())
        self._dispatch.poke()

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
        self._dispatch.poke()
        return requested

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
        return self._dispatch.until_idle(until, threads)

    def _result(self, run_id: str, timeout: float | None) -> Any:
        return wait_for_result(self._dispatch, self.serde, run_id, timeout)

    # -- workers -------------------------------------------------------------

    def work(self, threads: int = 8, *, grace: float = 30.0) -> None:
        """Drive due runs until SIGTERM or SIGINT (or KeyboardInterrupt), in `threads`
        threads; several processes may work one file. On a stop it claims nothing more,
        lets running steps finish for up to `grace` seconds, and lets go of its leases.
        Signal handlers can only be set from the main thread: elsewhere, use
        `with engine.worker():`, which stops when the block ends."""
        stop = threading.Event()
        old = install_stop_handlers(stop)
        w = Worker(self._dispatch, threads, grace).start()
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
        w = Worker(self._dispatch, threads, grace).start()
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
        refuse_nul(name, "the queue name")
        self.store.set_queue(
            QueueConfig(name, concurrency, worker_concurrency, rate_limit, float(period))
        )

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

    def attempts(self, run_id: str, position: int) -> list[Attempt]:
        """The attempts of the step at position in the run's log, first to last, with their
        real times, how each ended (failed, crashed, completed, running) and its error."""
        self._row(run_id)
        if not isinstance(position, int) or isinstance(position, bool):
            raise TypeError(f"position must be an int (a log entry's .position), not {position!r}")
        found = self.store.load_log(run_id, position, 1) if position >= 0 else []
        if not found or found[0].position != position:
            raise ValueError(
                f"run {run_id!r} has no log entry at position {position!r}; "
                f"engine.history({run_id!r}) lists its positions"
            )
        return attempts_of(found[0], self.store.load_attempts(run_id, position))

    def published(self, run_id: str, key: str | None = None, default: Any = None) -> Any:
        """What the run published with ce.publish: all keys as a dict, or one key's value."""
        self._row(run_id)
        values = self.store.published(run_id)
        what = f"a value published by run {run_id!r}"
        if key is not None:
            return self.serde.loads(values[key], what) if key in values else default
        return {k: self.serde.loads(v, what) for k, v in values.items()}

    def stats(self, window: float = 300.0) -> EngineStats:
        """Runs by status, steps ended in the last `window` seconds, queues' claim lag."""
        return engine_stats(self.store, self.clock, window)

    def add_hook(self, hook: Hook) -> None:
        """Call hook(ce.Event) on each run and step event, in the run's thread (README)."""
        self._runner.events.add(hook)

    def remove_hook(self, hook: Hook) -> None:
        """Stop calling a hook given to Engine(hooks=...) or add_hook."""
        self._runner.events.remove(hook)

    def stuck(self) -> dict[str, ContengineError]:
        """Runs this engine could not rebuild, with the reason (log untouched)."""
        return self._dispatch.stuck()

    # -- housekeeping -----------------------------------------------------------

    def gc(
        self,
        older_than_seconds: float,
        on_batch: Callable[[int], None] | None = None,
        *,
        dry_run: bool = False,
    ) -> int:
        """Delete runs that finished more than this many seconds ago, with their logs,
        mailboxes and published values; returns how many runs were deleted.

        Unfinished runs are never touched, nor a finished child whose parent is
        unfinished, nor a run with a child that stays. Each batch of GC_BATCH runs is
        one transaction; on_batch gets the running total after each. dry_run: delete
        nothing, and return how many runs would have been deleted.
        """
        seconds = float(older_than_seconds)
        if not seconds >= 0 or math.isinf(seconds):
            raise ValueError(f"older_than_seconds must be finite and >= 0, not {seconds!r}")
        before = self.clock.now() - seconds
        if dry_run:
            return self.store.count_deletable(before)
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
        """Resume a failed run at the failed request whose exception ended it (a cancelled
        one where the cancel was raised), discarding the log from there on; with `at`,
        from that position. The failed (or cancelled) child runs behind it are retried with
        it, in one transaction. Refused, with nothing changed, unless the run failed or was
        cancelled, or where the re-run could not be the same run (a discarded wait's signal
        or send, a child run it would take over, a deleted child): see notes/workflows.md.
        """
        return self.rewind(plan_retry(self.store, run_id, at))

    def rewind(self, plan: Sequence[Rewind]) -> Run[Any]:
        """Carry out a retry's plan (retrying.plan_retry's) in one transaction; refused,
        with nothing changed, if any of its runs changed since it was planned."""
        self._dispatch.rewind(plan)
        self._dispatch.poke()
        return Run(self, plan[0].run_id, self._row(plan[0].run_id).workflow)

    def fork(self, run_id: str, at: int, new_id: str | None = None) -> Run[Any]:
        """A new run of the same workflow and arguments whose log is a copy of the first
        `at` entries of run_id's; driven, it replays them and goes on live from there.

        Refused if `at` is outside the log, cuts a gather or race in two, or keeps an
        entry that is still in flight or started a child run (child runs are not copied).
        Values published in the kept entries are published by the new run too.
        """
        row = self._row(run_id)
        return Run(self, fork_run(self.store, row, at, new_id, self.clock.now()), row.workflow)

    def export_run(self, run_id: str) -> dict[str, Any]:
        """The run as JSON-ready data: its row, log, pending signals and published values.

        import_run() on another database recreates it there, to be driven on. Bytes
        are base64; a wait's "never" due time is the string "inf". An unfinished run
        in a tree of runs (a child, or a parent of children) cannot be moved alone.
        """
        return export_run(self.store, self._row(run_id))

    def import_run(self, data: Any, id: str | None = None) -> Run[Any]:
        """Recreate a run from export_run() data, under its own id or `id`; returns it.

        Raises IdConflict if the id is taken, and ContengineError (nothing written) for
        data of a newer format version or of the wrong shape.
        """
        row = import_run(self.store, data, id)
        return Run(self, row.id, row.workflow)

    def close(self) -> None:
        """Let go of this engine's leases and threads, then close the database connection."""
        worker = self._dispatch.worker
        if worker is not None:
            worker.stop()  # as on SIGTERM: steps finish within its grace period
        self._dispatch.close()  # parked drives go on to their end first
        self.store.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------

    def _row(self, run_id: str) -> RunRow:
        return row_of(self.store, run_id)

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
