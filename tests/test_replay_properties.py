"""Property tests of replay: random workflow programs, crashed anywhere, resume to the same end.

A program is plain data (a tuple of ops) interpreted by one generic workflow. Each
program runs once uninterrupted (the reference) and once with one or two crashes
injected at random points: inside a step (before or after its side effect), just
before a commit reaches the store, or just after it did. Brand-new engines on the
same file then finish the run. The resumed run must end as the reference did,
must log the same requests, and must never execute a step again once its outcome
was committed.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stores import current

import contengine as ce
from contengine.core.driver import Driver, Raised, Returned
from contengine.store.base import (
    E_COMPLETED,
    E_FAILED,
    AttemptRow,
    EntryRow,
    OneEngineStore,
    Progress,
    Rewind,
    RunRow,
    Signal,
    Store,
)
from contengine.store.run_search import RunPage, RunQuery

pytestmark = pytest.mark.both_stores

RUN_ID = "prop-run"
SINK = "prop-sink"  # the run that "send" ops signal (it waits for another name forever)
MOD = 1009
MAX_OPS = 12
FINISHED = ("completed", "failed")
DONE = (E_COMPLETED, E_FAILED)

Op = tuple[Any, ...]
Program = tuple[Op, ...]
Ending = tuple[str, Any, Any]  # ("ok", value, None) or ("err", type, message)


class Crash(BaseException):
    """Stands in for the process dying: not an Exception, so nothing in the engine catches it."""


class Boom(Exception):
    """A step's own failure."""


# -- the world outside the engine: ledger of executions and crash plans -----------


@dataclass(frozen=True)
class Plan:
    """Crash at the k-th step execution or commit of one engine session."""

    where: str  # "step-before", "step-after", "commit-before", "commit-after"
    k: int


@dataclass
class Session:
    """Counters of one engine's life, and the crash it is to suffer."""

    plan: Plan | None
    executions: int = 0
    commits: int = 0

    def crash_due(self, where: str, count: int) -> bool:
        """Whether this point is the planned crash."""
        return self.plan is not None and self.plan.where == where and self.plan.k == count


@dataclass
class World:
    """Everything steps do, across the engines that carry one run."""

    ledger: list[tuple[int, int]] = field(default_factory=list)  # (position, session)
    session_index: int = 0
    session: Session = field(default_factory=lambda: Session(None))
    yielded: list[str] = field(default_factory=list)

    def executions_at(self, position: int) -> int:
        """How many executions of the step at this position have done their work."""
        return sum(1 for pos, _ in self.ledger if pos == position)


WORLD = World()


def execute(value_of: Any) -> Any:
    """The body of every step: maybe crash, record the execution, maybe crash, compute."""
    position = ce.current_step().position
    session = WORLD.session
    session.executions += 1
    if session.crash_due("step-before", session.executions):
        raise Crash
    prior = WORLD.executions_at(position)
    WORLD.ledger.append((position, WORLD.session_index))
    if session.crash_due("step-after", session.executions):
        raise Crash
    return value_of(prior)


def work_value(tag: int, acc: int) -> int:
    """What `work` returns."""
    return (acc * 31 + tag) % MOD


def flaky_value(tag: int, acc: int) -> int:
    """What `flaky` returns once it succeeds."""
    return (acc * 17 + tag + 5) % MOD


def doom_message(tag: int, acc: int) -> str:
    """The message `doomed` always fails with."""
    return f"doomed {tag} at {acc}"


@ce.step(name="props.work")
def work(tag: int, acc: int) -> int:
    """A step that always succeeds."""
    return execute(lambda _prior: work_value(tag, acc))  # type: ignore[no-any-return]


@ce.step(name="props.flaky")
def flaky(tag: int, acc: int, fails: int) -> int:
    """A step whose first `fails` executions (that did their work) raise Boom."""

    def value_of(prior: int) -> int:
        if prior < fails:
            raise Boom(f"flaky {tag} failure {prior + 1}")
        return flaky_value(tag, acc)

    return execute(value_of)  # type: ignore[no-any-return]


@ce.step(name="props.doomed")
def doomed(tag: int, acc: int) -> int:
    """A step that always raises Boom."""

    def value_of(_prior: int) -> int:
        raise Boom(doom_message(tag, acc))

    return execute(value_of)  # type: ignore[no-any-return]


# -- programs: data, the workflow that interprets them, and a model ------------------


def perform(op: Op, acc: int, results: list[int]) -> Generator[Any, Any, int]:
    """Carry out one op of a program; returns the new accumulator."""
    kind = op[0]
    if kind == "branch":
        chosen = op[1] if acc % 2 == 0 else op[2]
        return (yield from interpret(chosen, acc, results))
    if kind == "fail":
        raise RuntimeError(f"workflow gave up at {acc}")
    if kind == "send":
        message = ce.send(SINK, "s", [op[1], acc])
        WORLD.yielded.append(message.describe())
        yield message
        return acc
    if kind == "step":
        request: ce.StepCall[int] = work(op[1], acc)
    elif kind == "flaky":
        _, tag, fails, extra = op
        request = flaky.options(retries=fails + extra, backoff=0)(tag, acc, fails)
    else:
        _, tag, retries, caught = op
        request = doomed.options(retries=retries, backoff=0)(tag, acc)
    WORLD.yielded.append(request.describe())
    try:
        acc = yield request
    except Boom as exc:
        if kind != "doomed" or not caught:
            raise
        acc = (acc * 7 + len(str(exc))) % MOD
    results.append(acc)
    return acc


def interpret(ops: Program, acc: int, results: list[int]) -> Generator[Any, Any, int]:
    """Carry out a program's ops in order."""
    for op in ops:
        acc = yield from perform(op, acc, results)
    return acc


@ce.workflow(name="tests.replay_properties.sink")
def sink_wf() -> Generator[Any, Any, Any]:
    """Waits forever for a name no one sends: the messages of "send" ops stay in its
    mailbox, to be counted."""
    return (yield ce.wait("never"))


@ce.workflow(name="tests.replay_properties.program")
def program_wf(program: Program) -> Generator[Any, Any, tuple[int, list[int]]]:
    """Interpret a program; return the final accumulator and every step's result."""
    results: list[int] = []
    acc = yield from interpret(program, 1, results)
    return acc, results


def model(program: Program, sent: list[list[int]] | None = None) -> Ending:
    """What program_wf must end with, computed without any engine (and, into sent, the
    messages its "send" ops send, in order)."""
    results: list[int] = []
    sent = [] if sent is None else sent

    def run(ops: Program, acc: int) -> int:
        for op in ops:
            kind = op[0]
            if kind == "branch":
                acc = run(op[1] if acc % 2 == 0 else op[2], acc)
                continue
            if kind == "fail":
                raise RuntimeError(f"workflow gave up at {acc}")
            if kind == "send":
                sent.append([op[1], acc])
                continue
            if kind == "step":
                acc = work_value(op[1], acc)
            elif kind == "flaky":
                acc = flaky_value(op[1], acc)
            else:
                message = doom_message(op[1], acc)
                if not op[3]:
                    raise Boom(message)
                acc = (acc * 7 + len(message)) % MOD
            results.append(acc)
        return acc

    try:
        acc = run(program, 1)
    except Exception as exc:
        return ("err", type(exc), str(exc))
    return ("ok", (acc, results), None)


@st.composite
def programs(draw: st.DrawFn, max_ops: int = MAX_OPS) -> Program:
    """Random programs of at most max_ops ops in all, branches nested up to two deep."""
    budget = [max_ops]
    tags = st.integers(0, 99)

    def ops(depth: int) -> Program:
        out: list[Op] = []
        while budget[0] > 0 and draw(st.integers(0, 3)) > 0:
            budget[0] -= 1
            kinds = ["step", "flaky", "doomed", "fail", "send"]
            kind = draw(st.sampled_from(kinds + (["branch"] if depth < 2 else [])))
            if kind in ("step", "send"):
                out.append((kind, draw(tags)))
            elif kind == "flaky":
                out.append(("flaky", draw(tags), draw(st.integers(1, 2)), draw(st.integers(0, 1))))
            elif kind == "doomed":
                out.append(("doomed", draw(tags), draw(st.integers(0, 2)), draw(st.booleans())))
            elif kind == "fail":
                out.append(("fail", draw(tags)))
            else:
                out.append(("branch", ops(depth + 1), ops(depth + 1)))
        return tuple(out)

    return ops(0)


# -- engines that crash where they are told ------------------------------------------


class CrashingStore(OneEngineStore):
    """An SQLite store whose k-th commit crashes before or after it is written (it serves
    one engine at a time: an engine of a new session takes over at once)."""

    def __init__(self, inner: Store, session: Session) -> None:
        self.inner = inner
        self.session = session

    def commit(self, progress: Progress) -> None:
        """Count the commit; crash before or after delegating if this one is planned.
        The sink's own commits are not counted: the crashes are the program run's."""
        if progress.run_id != RUN_ID:
            self.inner.commit(progress)
            return
        session = self.session
        session.commits += 1
        if session.crash_due("commit-before", session.commits):
            raise Crash
        self.inner.commit(progress)
        if session.crash_due("commit-after", session.commits):
            raise Crash

    def commit_many(self, batch: Sequence[Progress]) -> None:
        """Each progress is one counted commit."""
        for progress in batch:
            self.commit(progress)

    def create_run(self, run: RunRow) -> tuple[RunRow, bool]:
        """Delegated."""
        return self.inner.create_run(run)

    def get_run(self, run_id: str) -> RunRow | None:
        """Delegated."""
        return self.inner.get_run(run_id)

    def list_runs(
        self,
        status: str | None = None,
        workflow: str | None = None,
        limit: int | None = None,
        tag: str | None = None,
    ) -> list[RunRow]:
        """Delegated."""
        return self.inner.list_runs(status, workflow, limit, tag)

    def find_runs(self, query: RunQuery) -> RunPage:
        """Delegated."""
        return self.inner.find_runs(query)

    def load_log(self, run_id: str, start: int = 0, limit: int | None = None) -> list[EntryRow]:
        """Delegated."""
        return self.inner.load_log(run_id, start, limit)

    def log_length(self, run_id: str) -> int:
        """Delegated."""
        return self.inner.log_length(run_id)

    def send_signal(self, run_id: str, name: str, payload: bytes, now: float) -> None:
        """Delegated."""
        self.inner.send_signal(run_id, name, payload, now)

    def peek_signal(self, run_id: str, name: str) -> Signal | None:
        """Delegated."""
        return self.inner.peek_signal(run_id, name)

    def request_cancel(self, run_id: str, now: float) -> bool:
        """Delegated."""
        return self.inner.request_cancel(run_id, now)

    def published(self, run_id: str) -> dict[str, bytes]:
        """Delegated."""
        return self.inner.published(run_id)

    def runnable(self, now: float, limit: int | None = None) -> list[str]:
        """Delegated."""
        return self.inner.runnable(now, limit)

    def next_due(self, after: float | None = None) -> float | None:
        """Delegated."""
        return self.inner.next_due(after)

    def set_note(self, run_id: str, note: str | None) -> None:
        """Delegated."""
        self.inner.set_note(run_id, note)

    def delete_finished(self, before: float, limit: int) -> int:
        """Delegated."""
        return self.inner.delete_finished(before, limit)

    def count_deletable(self, before: float) -> int:
        """Delegated."""
        return self.inner.count_deletable(before)

    def backup(self, dest_path: str | os.PathLike[str]) -> None:
        """Delegated."""
        self.inner.backup(dest_path)

    def max_payload(self) -> int | None:
        """Delegated."""
        return self.inner.max_payload()

    def rewind(self, runs: Sequence[Rewind], now: float) -> None:
        """Delegated."""
        self.inner.rewind(runs, now)

    def insert_run(
        self,
        run: RunRow,
        entries: Sequence[EntryRow] = (),
        mailbox: Sequence[Signal] = (),
        published: dict[str, bytes] | None = None,
        attempts: Sequence[AttemptRow] = (),
    ) -> None:
        """Delegated."""
        self.inner.insert_run(run, entries, mailbox, published, attempts)

    def load_attempts(self, run_id: str, position: int | None = None) -> list[AttemptRow]:
        """Delegated."""
        return self.inner.load_attempts(run_id, position)

    def mailbox(self, run_id: str) -> list[Signal]:
        """Delegated."""
        return self.inner.mailbox(run_id)

    def unfinished_descendants(self, run_id: str) -> list[RunRow]:
        """Delegated."""
        return self.inner.unfinished_descendants(run_id)

    def close(self) -> None:
        """Delegated."""
        self.inner.close()


def open_engine(path: Path | str, plan: Plan | None) -> ce.Engine:
    """A brand-new engine on the file, starting a new session of the world."""
    session = Session(plan)
    WORLD.session = session
    # durability="normal": the crashes here are in-process, so fsync buys nothing.
    return ce.Engine(store=CrashingStore(current().open(path, durability="normal"), session))


def ending_of(engine: ce.Engine, resume: str) -> Ending:
    """Drive the run to its end; its value, or its exception's type and message."""
    if resume == "idle":
        report = engine.run_until_idle()
        assert report.stuck == {}
        assert engine.get_run(RUN_ID).status in FINISHED
        assert engine.get_run(SINK).status == "waiting"
    try:
        value = engine.get_run(RUN_ID).result()
    except Exception as exc:
        # The run's own exception, not one of the engine's that left the run unfinished.
        assert engine.get_run(RUN_ID).status == "failed", f"the engine raised {exc!r}"
        return ("err", type(exc), str(exc))
    return ("ok", value, None)


@dataclass
class Resumed:
    """What a new engine found on the file after a crash, before driving anything."""

    session: int
    status: str
    entries: list[ce.Entry]

    @property
    def done(self) -> set[int]:
        """Positions whose outcome was committed."""
        return {e.position for e in self.entries if e.status in DONE}


@dataclass
class Played:
    """How one run of a program went, across all the engines that carried it."""

    ending: Ending
    entries: list[ce.Entry]
    resumed: list[Resumed]
    ledger: list[tuple[int, int]]
    sessions: list[Session]
    sent: list[Any]  # the payloads in the sink's mailbox, oldest first


def play(
    path: Path | str, program: Program, plans: Sequence[Plan], resumes: Sequence[str]
) -> Played:
    """Run the program, one engine per plan (each may crash), then one more to finish."""
    global WORLD
    WORLD = World()
    resumed: list[Resumed] = []
    sessions: list[Session] = []
    for index, plan in enumerate([*plans, None]):
        WORLD.session_index = index
        engine = open_engine(path, plan)
        sessions.append(WORLD.session)
        try:
            if index == 0:
                engine.start(sink_wf, id=SINK)
                engine.start(program_wf, program, id=RUN_ID)
            else:
                status = engine.get_run(RUN_ID).status
                resumed.append(Resumed(index, status, engine.history(RUN_ID)))
            try:
                ending = ending_of(engine, resumes[index % len(resumes)])
            except Crash:
                continue
            sent = [engine.serde.loads(m.payload, "a message") for m in engine.store.mailbox(SINK)]
            return Played(ending, engine.history(RUN_ID), resumed, WORLD.ledger, sessions, sent)
        finally:
            engine.close()
    raise AssertionError("the last engine has no crash planned, so it must finish the run")


def reference(program: Program, path: Path | str = ":memory:") -> Played:
    """The uninterrupted run (its engine counts its step executions and commits)."""
    ref = play(path, program, [], ["idle"])
    sent: list[list[int]] = []
    assert ref.ending == model(program, sent)
    assert ref.sent == sent
    # Uninterrupted, every attempt the log counts is one execution that did its work.
    for entry in ref.entries:
        if entry.kind == "step":
            assert entry.attempts == WORLD.executions_at(entry.position)
    return ref


def identity(entry: ce.Entry) -> tuple[Any, ...]:
    """What replay compares of a logged request."""
    return (entry.position, entry.kind, entry.name, entry.key, entry.text)


def outcome_of(entry: ce.Entry) -> Any:
    """A comparable form of a finished entry's outcome."""
    if entry.status == E_COMPLETED:
        return ("ok", entry.value)
    error = entry.error
    return ("err", type(error), str(error))


def assert_prefix_of(found: Resumed, ref: Played, crashed_at: Plan) -> None:
    """A crashed file holds a prefix of the reference log, committed outcomes included."""
    assert len(found.entries) <= len(ref.entries)
    for entry, expected in zip(found.entries, ref.entries, strict=False):
        assert identity(entry) == identity(expected)
        if entry.status in DONE:
            assert entry.status == expected.status
            assert outcome_of(entry) == outcome_of(expected)
    in_flight = [e.position for e in found.entries if e.status not in DONE]
    assert in_flight in ([], [len(found.entries) - 1])  # only the newest request may be
    if found.status in FINISHED:
        # Only a crash after the final commit leaves a finished run behind.
        assert crashed_at.where == "commit-after"
        assert len(found.entries) == len(ref.entries)


# -- properties ----------------------------------------------------------------------

CRASH_POINTS = ("step-before", "step-after", "commit-before", "commit-after")


def draw_plan(data: st.DataObject, ref: Played, label: str) -> Plan:
    """A crash point within the reference run's counts of executions and commits."""
    counts = {
        "step-before": ref.sessions[0].executions,
        "step-after": ref.sessions[0].executions,
        "commit-before": ref.sessions[0].commits,
        "commit-after": ref.sessions[0].commits,
    }
    where = data.draw(st.sampled_from([w for w in CRASH_POINTS if counts[w] > 0]), label=label)
    return Plan(where, data.draw(st.integers(1, counts[where]), label=f"{label} at"))


@given(program=programs(), data=st.data())
def test_a_crashed_run_resumes_to_the_reference_ending(
    program: Program, data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Crash once or twice anywhere; new engines finish the run exactly as it would have."""
    ref = reference(program)
    plans = [draw_plan(data, ref, "first crash")]
    if data.draw(st.booleans(), label="crash again"):
        plans.append(draw_plan(data, ref, "second crash"))
    resumes = data.draw(
        st.lists(st.sampled_from(["idle", "result"]), min_size=3, max_size=3), label="resumes"
    )
    got = play(tmp_path_factory.mktemp("crash") / "run.db", program, plans, resumes)

    # The first planned crash is always reached (the run is the reference's up to it).
    assert got.resumed
    assert got.ending == ref.ending
    assert [(*identity(e), e.status) for e in got.entries] == [
        (*identity(e), e.status) for e in ref.entries
    ]
    assert [outcome_of(e) for e in got.entries] == [outcome_of(e) for e in ref.entries]
    for found in got.resumed:
        assert_prefix_of(found, ref, plans[found.session - 1])
        # Guarantee 1: once an outcome is committed, its step is never executed again.
        again = [p for p, s in got.ledger if s >= found.session and p in found.done]
        assert again == [], f"committed steps {again} ran again after crash {found.session}"
    # Each send's message was delivered once, whatever crashed around it.
    assert got.sent == ref.sent
    # Guarantee 2: every step in the final log did its work at least once.
    executed = {p for p, _ in got.ledger}  # (steps only: a send runs no user code)
    assert {e.position for e in got.entries if e.kind == "step"} <= executed


@given(program=programs())
def test_replaying_a_finished_log_yields_the_same_requests(
    program: Program, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A fresh engine's history fed to a driver replays the run without running a step."""
    path = tmp_path_factory.mktemp("replay") / "run.db"
    ref = reference(program, path)
    live_requests = list(WORLD.yielded)
    executions = len(WORLD.ledger)
    WORLD.yielded.clear()
    with ce.Engine(path) as engine:
        history = engine.history(RUN_ID)
    driver = Driver(program_wf.fn(program), history)
    end = driver.start()

    assert WORLD.yielded == live_requests
    assert [e.describe() for e in history] == live_requests
    assert driver.replayed == len(history)
    assert len(WORLD.ledger) == executions  # replay ran nothing
    if isinstance(end, Returned):
        assert ref.ending == ("ok", end.value, None)
    else:
        assert isinstance(end, Raised)
        assert ref.ending == ("err", type(end.error), str(end.error))
