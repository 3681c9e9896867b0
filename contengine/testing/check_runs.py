"""The runs behind ce.testing.check: a workflow in fresh engines that crash on cue."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..clock import Clock
from ..core.canonical import canonical_call, key_of
from ..core.children import ChildRequest
from ..core.gather import GatherRequest, RaceRequest
from ..core.requests import RandomRequest, Request, StepCall, UuidRequest
from ..core.serde import Serde
from ..core.workflow import Step, Workflow, current_step
from ..engine.engine import Engine
from ..errors import Cancelled, ContengineError
from ..store.base import FINISHED, Progress
from ..store.sqlite.store import SQLiteStore
from .check_events import (
    AFTER,
    BEFORE,
    DONE,
    RAN,
    RUN_ID,
    Ending,
    Event,
    Execution,
    Key,
    Line,
    Played,
    Point,
    SignalPlan,
    Stuck,
    Where,
    commit_key,
    race_losers,
)
from .check_session import (
    Crash,
    Left,
    PinnedRandom,
    Play,
    Session,
    committed_steps,
    top_status,
    waiting_for,
)

HOLD_LIMIT = 10.0  # seconds a race's losing step waits for the race to be decided


class _CrashingStore(SQLiteStore):
    """An engine's store that dies at the planned commit, and refuses every commit after."""

    def __init__(self, path: Path, harness: Harness, session: Session) -> None:
        # The crashes are in-process, so fsync buys nothing.
        super().__init__(path, durability="normal")
        self.harness = harness
        self.session = session

    def commit(self, progress: Progress) -> bool:
        """Commit, crashing before or after if this commit is the planned crash point."""
        session = self.session
        if session.dead:
            session.die()
        if not session.in_driver():
            # A losing race step logging its outcome late: timing decides when, so
            # it is no crash point.
            return super().commit(progress)
        key = commit_key(progress)
        occurrence = session.occurrence(key)
        if session.due(BEFORE, key, occurrence):
            session.die()
        cancel = super().commit(progress)
        self.harness.note(key, occurrence, progress)
        if session.due(AFTER, key, occurrence):
            session.die()
        return cancel

    def commit_many(self, batch: Sequence[Progress]) -> None:
        """Each progress is a commit of its own here, so each is a crash point."""
        for progress in batch:
            self.commit(progress)


class Harness:
    """Plays one workflow with its arguments, step stand-ins, signals and clock.

    Each play runs the workflow from its start to its end in a fresh engine on a fresh
    file, with at most one planned crash (at a commit, before or after it reaches the
    file, or at a step function's return), after which a brand-new engine on the same
    file finishes the run. The workflow and its child workflows are wrapped so that every
    step they yield runs through the harness, which keeps a ledger of executions and,
    after the reference play, ends each attempt as it ended there; ce.random() and
    ce.uuid() draw the reference's values. So a play can only differ from the reference
    through the workflow's own code, or through the crash.
    """

    def __init__(
        self,
        workflow: Workflow[Any, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        fakes: Mapping[str, Callable[..., Any]],
        signals: Sequence[SignalPlan],
        clock: Callable[[], Clock],
        directory: Path,
    ) -> None:
        self.args = args
        self.kwargs = kwargs
        self.fakes = dict(fakes)
        self.upfront = [s for s in signals if s.after is None]
        self.timed = sorted(
            (s for s in signals if s.after is not None), key=lambda s: s.after or 0.0
        )
        self.clock = clock
        self.directory = directory
        self.serde = Serde()
        self.wrapped: dict[str, Workflow[Any, Any]] = {}
        self.yielded: set[str] = set()  # names of the steps yielded, for checking `fakes`
        # Outcome of each step attempt in the reference: (ok, serialized value or error).
        self.pins: dict[Key, tuple[bool, bytes]] = {}
        # The steps that lost a race in the reference (they had not finished when it
        # was decided), with the race's position: see _hold().
        self.losers: dict[Where, int] = {}
        self.drawn: dict[Key, Any] = {}  # ce.random()/ce.uuid() values, by draw
        self._draws: deque[Key] = deque()  # the draws the engine is about to make
        self.random = PinnedRandom(self.draw)
        self.plays = 0
        self.engines = 0
        self.workflow = self._wrap(workflow)
        self._play: Play | None = None
        self._engine: Engine | None = None
        self._thread = threading.get_ident()

    # -- playing --------------------------------------------------------------------

    def play(self, plan: Point | None = None, *, record: bool = False) -> Played:
        """Run the workflow to its end in fresh engines on a fresh file, crashing at plan."""
        self.plays += 1
        path = self.directory / f"play-{self.plays}.db"
        clock = self.clock()
        play = self._play = Play(plan, record, clock.now())
        try:
            left = self._session(play, path, clock)
            if left is None:
                left = self._session(play, path, clock)
            if left is None:
                raise AssertionError("an engine with no crash planned died")  # pragma: no cover
        finally:
            self._play = None
            for leftover in self.directory.glob(f"{path.name}*"):
                leftover.unlink()
        if record:
            self.losers = race_losers(play.events)
        committed = left.committed
        again = [
            x
            for x in play.ledger
            if x.session > 0 and (x.run_id, x.generation, x.position) in committed
        ]
        return Played(
            plan=plan,
            fired=play.sessions[0].dead,
            engines=len(play.sessions),
            ending=left.ending,
            status=left.status,
            stuck=None if left.stuck is None else left.stuck[1],
            stuck_run=None if left.stuck is None else left.stuck[0],
            log=left.log,
            ledger=play.ledger,
            events=play.events,
            again=again,
            error=left.error,
        )

    def _session(self, play: Play, path: Path, clock: Clock) -> Left | None:
        """One engine's life; what it left if it lived to the end, None if it died. The
        first engine starts the run (and may crash as planned), a later one resumes it."""
        first = not play.sessions
        session = Session(len(play.sessions), play.plan if first else None, self._thread)
        play.sessions.append(session)
        engine = self._open(path, clock, session)
        left: Left | None = None
        try:
            committed: set[Where] = set()
            if first:
                engine.start(self.workflow, *self.args, id=RUN_ID, **self.kwargs)
                for signal in self.upfront:
                    engine.signal(RUN_ID, signal.name, signal.payload)
            else:
                committed = committed_steps(engine.store)  # what the crash left on the file
            try:
                stuck = self._drive(engine, clock, play)
            except Exception as exc:
                if play.record:
                    raise  # the reference run: the engine's own error, as it is
                left = Left(*self._collect(engine, None), committed, error=exc)
            else:
                left = Left(*self._collect(engine, stuck), committed)
        except Crash:
            if not session.dead:
                raise  # pragma: no cover - only a dying session raises it
        finally:
            self._engine = None
            session.over = True
            engine.close()  # waits for step threads still running
        # A step thread may have died after the run ended (a race's losing step).
        return None if session.dead else left

    def _open(self, path: Path, clock: Clock, session: Session) -> Engine:
        store = _CrashingStore(path, self, session)
        session.store = store
        engine = Engine(
            store=store, clock=clock, workflows=list(self.wrapped.values()), cache_runs=0
        )
        # Seams of the engine the harness plugs into (it is part of the package):
        # the random source answers ce.random()/ce.uuid() as in the reference, and
        # child workflows met while the run goes on are found in their wrapped form.
        engine._runner.random = self.random
        self._engine = engine
        self.engines += 1
        return engine

    def _drive(self, engine: Engine, clock: Clock, play: Play) -> Stuck | None:
        """Drive every run until the top run ends or nothing more can happen; sends the
        timed signals as the clock passes them. Returns a stuck run and its error."""
        virtual = bool(getattr(clock, "virtual", False))
        while True:
            upcoming = [(i, s) for i, s in enumerate(self.timed) if i not in play.sent]
            at = play.start + (upcoming[0][1].after or 0.0) if upcoming else None
            report = engine.run_until_idle(until=at if virtual else None)
            if report.stuck:
                run_id = RUN_ID if RUN_ID in report.stuck else next(iter(report.stuck))
                return run_id, report.stuck[run_id]
            if top_status(engine) in FINISHED:
                return None
            if virtual:
                if at is None:
                    return None  # waits for something no one will send
                jump = getattr(clock, "jump_to", None)
                if jump is not None:
                    jump(at)
            else:
                targets = [t for t in (at, report.next_due) if t is not None]
                if not targets:
                    return None
                clock.sleep(min(targets) - clock.now())
                if at is None or clock.now() < at:
                    continue
            index, signal = upcoming[0]
            play.sent.add(index)
            engine.signal(waiting_for(engine.store, signal.name), signal.name, signal.payload)

    def _collect(
        self, engine: Engine, stuck: Stuck | None
    ) -> tuple[Ending | None, str, Stuck | None, list[Line]]:
        status = top_status(engine)
        ending = None
        if status in FINISHED:
            try:
                ending = Ending(True, engine.get_run(RUN_ID).result())
            except (Exception, Cancelled) as exc:
                ending = Ending(False, exc)
        store = engine.store
        log = [
            Line(run.id, e.position, e.kind, e.name, e.key, e.text, e.status)
            for run in sorted(store.list_runs(), key=lambda r: r.id)
            for e in store.load_log(run.id)
        ]
        return ending, status, stuck, log

    # -- what the engine calls back --------------------------------------------------

    def note(self, key: Key, occurrence: int, progress: Progress) -> None:
        """Keep a commit of the reference play, as it was then (the engine goes on
        changing the entries it holds), among the events in the order they happen."""
        play = self._play
        if play is None or not play.record:
            return
        snapshot = dataclasses.replace(
            progress,
            update=copy.copy(progress.update),
            insert=copy.copy(progress.insert),
            recorded=tuple(copy.copy(e) for e in progress.recorded),
        )
        with play.lock:
            play.events.append(Event(key, occurrence, progress=snapshot))

    def draw(self, fresh: Callable[[], Any]) -> Any:
        """A value for the engine's next ce.random()/ce.uuid(): the reference's, by the
        workflow, its arguments and how many draws its code asked for before."""
        key = self._draws.popleft() if self._draws else None
        if key is None:
            return fresh()
        if key not in self.drawn:
            self.drawn[key] = fresh()
        return self.drawn[key]

    # -- wrapping the workflow and its steps --------------------------------------------

    def _wrap(self, wf: Workflow[Any, Any]) -> Workflow[Any, Any]:
        """The workflow, under its own name and import path, yielding wrapped requests."""
        known = self.wrapped.get(wf.name)
        if known is not None:
            return known
        original = wf.fn

        @functools.wraps(original)  # the signature too: the engine binds arguments to it
        def fn(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            label = (wf.name, key_of(canonical_call(args, kwargs)))
            return self._rewriting(original(*args, **kwargs), label)

        wrapped: Workflow[Any, Any] = Workflow(fn, wf.name)
        wrapped.ref = wf.ref
        self.wrapped[wf.name] = wrapped
        return wrapped

    def _rewriting(self, inner: Generator[Any, Any, Any], label: Key) -> Generator[Any, Any, Any]:
        """Pass the inner generator's requests on, rewritten; everything else unchanged."""
        draws = 0
        try:
            yielded = inner.send(None)
            while True:
                request, draws = self._rewrite(yielded, label, draws)
                try:
                    answer = yield request
                except GeneratorExit:
                    inner.close()
                    raise
                except BaseException as exc:  # an outcome thrown in (Cancelled too)
                    yielded = inner.throw(exc)
                else:
                    yielded = inner.send(answer)
        except StopIteration as stop:
            return stop.value

    def _rewrite(self, yielded: Any, label: Key, draws: int) -> tuple[Any, int]:
        """The request the engine gets for what the workflow yielded, and the count of
        random draws so far."""
        keys: list[Key] = []
        out = yielded
        if isinstance(yielded, StepCall):
            out = self._step_call(yielded)
        elif isinstance(yielded, GatherRequest):
            members: list[Request] = []
            for member in yielded.members:
                if isinstance(member, StepCall):
                    member = self._step_call(member)
                elif isinstance(member, RandomRequest | UuidRequest):
                    keys.append((*label, draws))
                    draws += 1
                members.append(member)
            if isinstance(yielded, RaceRequest):
                out = RaceRequest(tuple(members))
            else:
                out = GatherRequest(tuple(members), yielded.return_exceptions)
        elif isinstance(yielded, ChildRequest):
            child = self._wrap(yielded.workflow)
            if self._engine is not None:
                # The child run is created with the parent's next commit and looked
                # up by name when driven: it must find the wrapped form.
                self._engine._workflows[child.name] = child
            out = ChildRequest(child, yielded.args, yielded.kwargs, yielded.detached)
        elif isinstance(yielded, RandomRequest | UuidRequest):
            keys.append((*label, draws))
            draws += 1
        self._draws = deque(keys)
        return out, draws

    def _step_call(self, call: StepCall[Any]) -> StepCall[Any]:
        """The same step call (name, arguments, options) running through the harness."""
        name = call.name
        self.yielded.add(name)
        fn = self.fakes.get(name, call.step.fn)
        key = call.key

        @functools.wraps(fn)  # its signature: the engine tells a bad call by it
        def run(*args: Any, **kwargs: Any) -> Any:
            return self._execute(name, key, fn, args, kwargs)

        step: Step[Any, Any] = Step(run, call.step.name, call.step.options_)
        return StepCall(step, call.args, call.kwargs, call.options)

    def _execute(
        self,
        name: str,
        key: str | None,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Run one step attempt: ledger, planned crash, and the reference's outcome."""
        play = self._play
        if play is None:  # a step thread outliving its play
            return fn(*args, **kwargs)
        session = play.session
        if session.dead:
            session.die()  # a dead process starts nothing
        where = self._where(session)
        race = self.losers.get(where[:3])
        if race is not None and not play.record:
            self._hold(session, where[0], race)
        try:
            value = fn(*args, **kwargs)
        except Exception as exc:
            self._ran(play, session, where, name)
            return self._pinned(play, (name, key, *where), False, exc)
        self._ran(play, session, where, name)
        return self._pinned(play, (name, key, *where), True, value)

    def _hold(self, session: Session, run_id: str, race: int) -> None:
        """Keep a step that lost this race in the reference from starting until the race
        is decided, so the reference's winner wins again: which of several running steps
        ends first is the threads' timing, which a crash must not be blamed for."""
        store = session.store
        deadline = time.monotonic() + HOLD_LIMIT
        while store is not None and not (session.dead or session.over):
            if time.monotonic() > deadline:
                return
            entries = store.load_log(run_id, race, 1)
            if not entries or entries[0].status in DONE:
                return
            time.sleep(0.002)

    def _where(self, session: Session) -> tuple[str, int, int, int]:
        """The running step's run, generation, position and try (not counting crashes)."""
        ctx = current_step()
        store = session.store
        generation = crashes = 0
        if store is not None:
            row = store.get_run(ctx.run_id)
            generation = row.generation if row is not None else 0
            entries = store.load_log(ctx.run_id, ctx.position, 1)
            crashes = entries[0].crashes if entries else 0
        return ctx.run_id, generation, ctx.position, ctx.attempt - crashes

    def _ran(
        self, play: Play, session: Session, where: tuple[str, int, int, int], name: str
    ) -> None:
        """Note a step function's return; crash here if this is the planned point."""
        execution = Execution(session.index, *where, name)
        key = ("step", *where)
        occurrence = session.occurrence(key)
        with play.lock:
            play.ledger.append(execution)
            if play.record:
                play.events.append(Event(key, occurrence, execution=execution))
        if session.due(RAN, key, occurrence):
            # In another thread (a gather's member) the step returns as usual, and
            # the dead engine refuses to commit its outcome.
            session.dead = True
            if session.in_driver():
                raise Crash

    def _pinned(self, play: Play, key: Key, ok: bool, value: Any) -> Any:
        """The attempt's outcome: recorded in the reference, the reference's afterwards."""
        if play.record:
            # What cannot be serialized and read back as itself is not pinned (the
            # engine refuses such a result anyway; an exception keeps its own).
            with contextlib.suppress(ContengineError):
                data, copied = self.serde.dumps_checked(value, "a step's outcome")
                if type(copied) is type(value):
                    self.pins[key] = (ok, data)
        else:
            pinned = self.pins.get(key)
            if pinned is not None:
                ok, value = pinned[0], self.serde.loads(pinned[1], "a step's outcome")
        if ok:
            return value
        raise value


__all__ = ["Crash", "Harness", "committed_steps"]
