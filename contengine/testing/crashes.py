"""Run a workflow through planned crashes, in one process, with a brand-new engine after each.

A crash schedule lists where each engine's life ends: just before its k-th commit
reaches the file (what the commit carried is lost), just after it (it is kept), or
inside its k-th step execution, after the step's body ran (its effects happened,
its outcome was never committed, so it runs again). A SimulatedCrash, a
BaseException that nothing in the engine catches, stands in for the process dying;
the next engine opens the same file and carries the run on. The steps of the run
itself are watched (child runs' steps are not).

    result = run_with_crashes(checkout, "o-1", 500,
                              schedule=CrashSchedule.of("in-step 1", "after-commit 2"))
    assert result.result() == reference
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..clock import Clock
from ..core.gather import GatherRequest, RaceRequest
from ..core.requests import Request, StepCall, StepLike
from ..core.workflow import Step, Workflow, current_step
from ..drive.log import Entry
from ..engine.engine import Engine
from ..errors import Cancelled, ContengineError
from ..store.base import E_COMPLETED, E_FAILED, FINISHED, Progress
from ..store.sqlite.store import SQLiteStore
from .clock import VirtualClock

__all__ = [
    "AFTER_COMMIT",
    "BEFORE_COMMIT",
    "IN_STEP",
    "CompletionOrder",
    "CrashPoint",
    "CrashSchedule",
    "CrashedRun",
    "SignalArrival",
    "SimulatedCrash",
    "run_with_crashes",
]

BEFORE_COMMIT, AFTER_COMMIT, IN_STEP = "before-commit", "after-commit", "in-step"
WHERE = (BEFORE_COMMIT, AFTER_COMMIT, IN_STEP)
_DONE = (E_COMPLETED, E_FAILED)


class SimulatedCrash(BaseException):
    """Stands in for the process dying: not an Exception, so nothing in the engine catches it."""


@dataclass(frozen=True, order=True)
class CrashPoint:
    """Where one engine's life ends: before or after its index-th commit, or inside its
    index-th step execution (counted from 1, afresh for each engine)."""

    where: str
    index: int

    def __post_init__(self) -> None:
        if self.where not in WHERE:
            raise ValueError(f"a crash point is one of {', '.join(WHERE)}, not {self.where!r}")
        if self.index < 1:
            raise ValueError(f"crash points count from 1, not {self.index}")

    @classmethod
    def parse(cls, text: str) -> CrashPoint:
        """A point from its text, such as "before-commit 3" or "in-step 1"."""
        where, _, index = text.strip().partition(" ")
        return cls(where, int(index))

    def __str__(self) -> str:
        if self.where == IN_STEP:
            return f"inside step execution {self.index}"
        return f"{self.where.replace('-', ' ')} {self.index}"


@dataclass(frozen=True)
class CrashSchedule:
    """One crash point per engine, in order; the engine after the last one runs to the end."""

    points: tuple[CrashPoint, ...] = ()

    @classmethod
    def of(cls, *points: CrashPoint | str) -> CrashSchedule:
        """A schedule from points or their texts ("after-commit 2")."""
        return cls(tuple(p if isinstance(p, CrashPoint) else CrashPoint.parse(p) for p in points))

    def __iter__(self) -> Iterator[CrashPoint]:
        return iter(self.points)

    def __len__(self) -> int:
        return len(self.points)

    def __str__(self) -> str:
        if not self.points:
            return "no crash"
        return "crash " + ", then ".join(str(p) for p in self.points)


@dataclass(frozen=True)
class SignalArrival:
    """A signal sent to the run `at` seconds after it started, on the virtual clock
    (a negative `at`: already in the mailbox when the run first runs)."""

    at: float
    name: str
    payload: Any = None


@dataclass
class CrashedRun:
    """How a run ended after its crashes: status, value or error, and what it took."""

    run_id: str
    status: str
    value: Any = None
    error: BaseException | None = None
    crashes: list[CrashPoint] = field(default_factory=list)  # the points that were reached
    engines: int = 0  # engines that carried the run, the last one included
    history: list[Entry] = field(default_factory=list)
    # Executions of each step of the run, by log position (retries and re-runs count).
    executions: dict[int, int] = field(default_factory=dict)
    # Why the run could not be rebuilt (nondeterminism, say); None if it could.
    stuck: ContengineError | None = None

    @property
    def finished(self) -> bool:
        """Whether the run ended (completed, failed or cancelled)."""
        return self.status in FINISHED

    def result(self) -> Any:
        """The run's value, or its exception raised; AssertionError if it did not end."""
        if self.stuck is not None:
            raise self.stuck
        if not self.finished:
            raise AssertionError(
                f"run {self.run_id!r} did not finish after {self.engines} engine(s): it is "
                f"{self.status} (waiting for a signal that was never sent?)"
            )
        if self.error is not None:
            raise self.error
        return self.value


class _World:
    """What outlives each engine: step executions and committed outcomes."""

    def __init__(self) -> None:
        self.executions: Counter[tuple[str, int]] = Counter()
        self.committed: set[tuple[str, int]] = set()
        self.changed = threading.Condition()
        self.dead = False  # the current engine crashed: steps still waiting give up


class _Life:
    """One engine's life: its counters and the crash planned for it."""

    def __init__(self, point: CrashPoint | None, world: _World) -> None:
        self.point = point
        self.world = world
        self.commits = 0
        self.steps = 0
        self.lock = threading.Lock()
        self.crashed: CrashPoint | None = None

    def due(self, where: str, count: int) -> bool:
        """Whether this point is the planned crash (and note that it happened)."""
        point = self.point
        if point is not None and point.where == where and point.index == count:
            self.crashed = point
            return True
        return False

    def step_ran(self, key: tuple[str, int]) -> bool:
        """Count a step execution; True if the engine dies in this one."""
        with self.lock:
            self.steps += 1
            self.world.executions[key] += 1
            return self.due(IN_STEP, self.steps)


class _CrashingStore(SQLiteStore):
    """The SQLite store of one engine's life: its planned commit dies before or after."""

    def __init__(self, path: str, life: _Life) -> None:
        super().__init__(path, durability="normal")  # in-process crashes: fsync buys nothing
        self.life = life

    def commit(self, progress: Progress) -> bool:
        """Count the commit; crash before or after it is written if this one is planned."""
        life = self.life
        life.commits += 1
        if life.due(BEFORE_COMMIT, life.commits):
            raise SimulatedCrash(str(life.point))
        cancel = super().commit(progress)
        _note_committed(life.world, progress)
        if life.due(AFTER_COMMIT, life.commits):
            raise SimulatedCrash(str(life.point))
        return cancel

    def commit_many(self, batch: Sequence[Progress]) -> None:
        """Each progress is a commit of its own, counted."""
        for progress in batch:
            self.commit(progress)


def _note_committed(world: _World, progress: Progress) -> None:
    entries = [progress.update, progress.insert, *progress.recorded]
    done = [(e.run_id, e.position) for e in entries if e is not None and e.status in _DONE]
    if done:
        with world.changed:
            world.committed.update(done)
            world.changed.notify_all()


class CompletionOrder:
    """Makes member steps of a gather finish in a given order, each only after the outcome
    of the one before it was committed: a member step calls turn(i) as its last line.

    Works with run_with_crashes(order=...); the gather's member steps must fit in the
    engine's step threads (16) at once.
    """

    def __init__(self, order: Sequence[int], timeout: float = 10.0) -> None:
        """order: member indexes in the order they are to finish (a permutation)."""
        self.order = tuple(order)
        if sorted(self.order) != list(range(len(self.order))):
            raise ValueError(f"a completion order is a permutation of 0..n-1, not {order!r}")
        self.timeout = timeout
        self._world: _World | None = None

    def turn(self, index: int) -> None:
        """Block member `index` until the member before it in the order has its outcome
        committed; members already committed (before a crash, say) count as done."""
        world = self._world
        if world is None:
            raise RuntimeError("CompletionOrder works inside run_with_crashes(..., order=...)")
        rank = self.order.index(index)
        if rank == 0:
            return
        step = current_step()
        before = (step.run_id, step.position - index + self.order[rank - 1])
        with world.changed:
            if not world.changed.wait_for(
                lambda: world.dead or before in world.committed, self.timeout
            ):
                raise RuntimeError(
                    f"member {self.order[rank - 1]} of the gather did not finish within "
                    f"{self.timeout:g} s, so member {index} could not finish after it"
                )
            if world.dead:
                raise SimulatedCrash("the engine died while this step waited for its turn")


def run_with_crashes(
    workflow: Workflow[Any, Any],
    /,
    *args: Any,
    schedule: CrashSchedule | Iterable[CrashPoint] = (),
    signals: Iterable[SignalArrival] = (),
    order: CompletionOrder | None = None,
    clock: Clock | None = None,
    path: str | os.PathLike[str] | None = None,
    id: str = "crash-test",
    workflows: Iterable[Workflow[Any, Any]] = (),
    **kwargs: Any,
) -> CrashedRun:
    """Start the workflow, then crash the engine at each point of the schedule in turn,
    resuming each time with a new engine on the same file, and drive it to its end.

    The clock is a VirtualClock unless given (timers jump); signals are sent at their
    times; `path` defaults to a temporary file, deleted afterwards. Other positional and
    keyword arguments are the workflow's.
    """
    points = list(schedule)
    arrivals = sorted(signals, key=lambda s: s.at)
    clock = clock or VirtualClock()
    if arrivals and not hasattr(clock, "jump_to"):
        raise ValueError("signals at set times need a clock with jump_to (a VirtualClock)")
    with _database(path) as db:
        world = _World()
        if order is not None:
            order._world = world
        start = clock.now()
        result = CrashedRun(id, "pending")
        for index, point in enumerate([*points, None]):
            life = _Life(point, world)
            with world.changed:
                world.dead = False
            proxy = _watched(workflow, life)
            store = _CrashingStore(db, life)
            engine = Engine(store=store, clock=clock, workflows=[proxy, *workflows], cache_runs=0)
            result.engines += 1
            try:
                if index == 0:
                    engine.start(proxy, *args, id=id, **kwargs)
                    while arrivals and arrivals[0].at < 0:
                        engine.signal(id, arrivals[0].name, arrivals.pop(0).payload)
                result.stuck = _drive(engine, id, arrivals, start, clock)
            except SimulatedCrash:
                if life.crashed is None:
                    raise  # not one of the schedule's
                with world.changed:
                    world.dead = True
                    world.changed.notify_all()
                result.crashes.append(life.crashed)
                continue
            finally:
                engine.close()
            return _ending(db, clock, result, world)
    raise AssertionError("the last engine has no crash planned, so it cannot crash")


def _drive(
    engine: Engine, run_id: str, arrivals: list[SignalArrival], start: float, clock: Clock
) -> ContengineError | None:
    """Drive the run, sending each signal at its time; the error if the run is stuck."""
    while arrivals:
        due = start + arrivals[0].at
        stuck = engine.run_until_idle(until=due).stuck
        if stuck:
            return stuck.get(run_id) or next(iter(stuck.values()))
        if engine.get_run(run_id).status in FINISHED:
            break
        clock.jump_to(due)  # type: ignore[attr-defined]
        arrival = arrivals.pop(0)
        engine.signal(run_id, arrival.name, arrival.payload)
    stuck = engine.run_until_idle().stuck
    return (stuck.get(run_id) or next(iter(stuck.values()))) if stuck else None


def _ending(db: str, clock: Clock, result: CrashedRun, world: _World) -> CrashedRun:
    """Fill in how the run ended, read back with a plain engine."""
    with Engine(db, clock=clock, durability="normal", cache_runs=0) as engine:
        run = engine.get_run(result.run_id)
        result.status = run.status
        result.history = engine.history(result.run_id)
        if run.status in FINISHED:
            try:
                result.value = run.result()
            except (Exception, Cancelled) as exc:
                result.error = exc
    result.executions = {
        pos: n for (run_id, pos), n in sorted(world.executions.items()) if run_id == result.run_id
    }
    return result


@contextlib.contextmanager
def _database(path: str | os.PathLike[str] | None) -> Iterator[str]:
    if path is not None:
        yield os.fspath(path)
        return
    with tempfile.TemporaryDirectory(prefix="contengine-crash-") as tmp:
        yield os.path.join(tmp, "run.db")


# -- watching the run's steps --------------------------------------------------------


def _watched(workflow: Workflow[Any, Any], life: _Life) -> Workflow[Any, Any]:
    """The workflow under its own name, with every step it yields counted (and crashed in,
    as planned); the requests keep their names and arguments, so the log is the same."""
    fn = workflow.fn

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        return (yield from _relay(fn(*args, **kwargs), lambda r: _rewrite(r, life)))

    return Workflow(run, workflow.name)


def _relay(
    gen: Generator[Any, Any, Any], rewrite: Callable[[Any], Any]
) -> Generator[Any, Any, Any]:
    """Pass a generator's yields through rewrite(), and everything sent or thrown back in."""
    sent: Any = None
    thrown: BaseException | None = None
    while True:
        try:
            yielded = gen.send(sent) if thrown is None else gen.throw(thrown)
        except StopIteration as stop:
            return stop.value
        sent, thrown = None, None
        try:
            sent = yield rewrite(yielded)
        except GeneratorExit:
            gen.close()
            raise
        except BaseException as exc:  # the engine throws outcomes in; they belong to gen
            thrown = exc


def _rewrite(request: Any, life: _Life) -> Any:
    if isinstance(request, StepCall):
        return StepCall(_watched_step(request.step, life), request.args, request.kwargs,
                        request.options)  # fmt: skip
    if type(request) is RaceRequest:
        return RaceRequest(tuple(_rewrite(m, life) for m in request.members))
    if type(request) is GatherRequest:
        members: tuple[Request, ...] = tuple(_rewrite(m, life) for m in request.members)
        return GatherRequest(members, request.return_exceptions)
    return request


def _watched_step(step: StepLike[Any], life: _Life) -> Step[Any, Any]:
    fn = step.fn

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        ctx = current_step()
        try:
            return fn(*args, **kwargs)
        finally:
            if life.step_ran((ctx.run_id, ctx.position)):
                raise SimulatedCrash(str(life.point))  # the process dies: nothing else matters

    return Step(run, step.name, step.options_)
