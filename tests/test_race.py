"""ce.race: the first member to finish wins, the race's own entry records which, replay agrees.

`index, value = yield ce.race(*requests)` logs an entry of kind "race" at position
p and its members at p+1..p+n. The race's entry records the winner's index and
value (or its exception, raised at the yield); timers and waits that lose are
cancelled, and a losing step already running finishes and is logged, unused.

Steps record every execution in a ledger, so a test can tell what really ran.
A simulated crash is a BaseException raised by a step or by the store at a
chosen commit: it propagates out of the engine and leaves the log as a dead
process would, and a new Engine on the same file resumes the run.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Crash, CrashingStore, at_commit, engine_on
from hypothesis import given, settings
from hypothesis import strategies as st
from stores import OnCurrentStore

import contengine as ce
from contengine.core.driver import Driver, Returned
from contengine.store.base import Progress, Store
from contengine.testing import VirtualClock

pytestmark = pytest.mark.both_stores

Flow = Generator[Any, Any, Any]
START = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC

ledger: list[str] = []  # every step execution, in order
GATES: dict[str, threading.Event] = {}  # steps labelled so wait for their gate to open


class Oops(Exception):
    """A step's own failure (importable, so it is logged with its type)."""


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    ledger.clear()
    GATES.clear()
    yield
    for gate in GATES.values():
        gate.set()  # let no step thread hang on after a failed test
    ledger.clear()


def gate(label: str) -> threading.Event:
    """The event the step labelled `label` waits for."""
    return GATES.setdefault(label, threading.Event())


@ce.step(name="race.work")
def work(label: str) -> str:
    """Record the execution and return the label in capitals."""
    ledger.append(label)
    return label.upper()


@ce.step
def gated(label: str) -> str:
    """Record the execution, then finish only once the test opens the gate."""
    ledger.append(label)
    if not gate(label).wait(5.0):
        raise AssertionError(f"the gate of {label} was never opened")
    return label


@ce.step(name="race.fail")
def fail(label: str) -> str:
    """Record the execution and raise Oops(label)."""
    ledger.append(label)
    raise Oops(label)


@ce.step
def slow(label: str, seconds: float) -> str:
    """Record the execution and take `seconds` of real time."""
    ledger.append(label)
    time.sleep(seconds)
    return label


class CountingStore(OnCurrentStore):
    """A store that counts its commits."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, durability="normal")
        self.commits = 0

    def commit(self, progress: Progress) -> None:
        """Count, then write."""
        self.commits += 1
        super().commit(progress)


def inserts_race(progress: Progress, _: int) -> bool:
    """The commit that first writes a race's entry (and its members')."""
    return any(e.kind == "race" for e in progress.recorded)


def decides_race(progress: Progress, _: int) -> bool:
    """The commit that records a race's winner."""
    return progress.update is not None and progress.update.kind == "race"


def outcomes(engine: ce.Engine, run_id: str) -> list[tuple[str, str, Any]]:
    """(kind, status, value or exception type and message) of every log entry."""
    rows: list[tuple[str, str, Any]] = []
    for e in engine.history(run_id):
        error = e.error
        what = e.value if error is None else (type(error).__name__, str(error))
        rows.append((e.kind, e.status, what))
    return rows


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(START)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "race.db"


@pytest.fixture
def engine(db: Path, clock: VirtualClock) -> Iterator[ce.Engine]:
    with engine_on(db, clock) as eng:
        yield eng


# -- who wins ---------------------------------------------------------------------------------


@ce.workflow(name="race.steps")
def two_steps() -> Flow:
    """A step held at its gate against one that finishes at once."""
    index, value = yield ce.race(gated("slow"), work("fast"))
    after = yield work("after")
    return index, value, after


def test_the_first_step_to_finish_wins_and_a_losing_step_finishes_unused(db: Path) -> None:
    with ce.Engine(db, durability="normal") as engine:
        # The run ends while the losing step is still running.
        assert engine.run(two_steps, id="r") == (1, "FAST", "AFTER")
        assert outcomes(engine, "r") == [
            ("race", "completed", (1, "FAST")),
            ("step", "running", None),
            ("step", "completed", "FAST"),
            ("step", "completed", "AFTER"),
        ]
        gate("slow").set()
        deadline = time.monotonic() + 5.0
        while engine.history("r")[1].status == "running" and time.monotonic() < deadline:
            time.sleep(0.005)
        # Its outcome is logged where it belongs, and changes nothing.
        assert outcomes(engine, "r")[1] == ("step", "completed", "slow")
        assert engine.get_run("r").result() == (1, "FAST", "AFTER")
    assert sorted(ledger) == ["after", "fast", "slow"]


@ce.workflow(name="race.timers")
def timers() -> Flow:
    """A wait and two timers race; later, a wait of the same name as the loser."""
    index, value = yield ce.race(ce.wait("go"), ce.sleep(60), ce.sleep(30))
    late = yield ce.wait("go")
    return index, value, late


def test_the_earliest_timer_wins_and_the_other_members_are_cancelled(
    engine: ce.Engine, clock: VirtualClock
) -> None:
    run = engine.start(timers, id="r")
    engine.run_until_idle()
    assert run.status == "waiting"
    assert clock.now() == START + 30  # the 60 s timer never fired
    race, wait, long, short = engine.history("r")[:4]
    assert (race.kind, race.text, race.value) == ("race", "3 members", (2, None))
    for loser in (wait, long):
        assert loser.status == "failed"
        assert isinstance(loser.error, ce.Cancelled) and str(loser.error) == "lost the race"
    assert short.status == "completed"
    # The wait that lost took nothing: a later signal goes to the next wait of its name.
    engine.signal("r", "go", "late")
    engine.run_until_idle()
    assert run.result() == (2, None, "late")


@ce.workflow(name="race.approval")
def approval() -> Flow:
    """A signal against an hour's timeout."""
    return (yield ce.race(ce.wait("approve"), ce.sleep(3600)))


def test_a_signal_before_the_timeout_wins_and_the_timer_is_cancelled(
    engine: ce.Engine, clock: VirtualClock
) -> None:
    run = engine.start(approval, id="r")
    engine.run_until_idle(until=START + 600)
    assert run.status == "waiting"
    clock.advance(600)  # ten minutes pass
    engine.signal("r", "approve", {"by": "ana"})
    engine.run_until_idle()
    assert run.result() == (0, {"by": "ana"})
    assert clock.now() == START + 600  # no jump to the hour's end: the timer was cancelled
    assert [(kind, status) for kind, status, _ in outcomes(engine, "r")] == [
        ("race", "completed"),
        ("wait", "completed"),
        ("sleep", "failed"),
    ]


@ce.workflow(name="race.failing")
def failing(catch: bool) -> Flow:
    """A member that fails at once against a timer."""
    try:
        return (yield ce.race(ce.sleep(60), fail("boom")))
    except Oops as exc:
        if not catch:
            raise
        return f"caught {exc}"


def test_a_winner_that_failed_raises_its_own_exception_at_the_yield(engine: ce.Engine) -> None:
    assert engine.run(failing, True, id="caught") == "caught boom"
    race = engine.history("caught")[0]
    assert race.status == "failed" and isinstance(race.error, Oops)
    assert str(race.error) == "boom"
    # Uncaught, it fails the run with its own type.
    with pytest.raises(Oops, match="boom"):
        engine.run(failing, False, id="uncaught")
    assert engine.get_run("uncaught").status == "failed"
    assert ledger == ["boom", "boom"]


def test_a_timeout_beats_a_slow_step_on_the_real_clock(tmp_path: Path) -> None:
    @ce.workflow(name="race.real_timeout")
    def real_timeout() -> Flow:
        return (yield ce.race(slow("fetch", 0.6), ce.sleep(0.05)))

    with ce.Engine(tmp_path / "real.db", durability="normal") as engine:
        began = time.monotonic()
        result = engine.run(real_timeout, id="r")
        took = time.monotonic() - began
    assert result == (1, None)
    assert took < 0.5


def test_a_race_needs_at_least_one_member() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ce.race()


# -- replay -----------------------------------------------------------------------------------


@ce.workflow(name="race.replayed")
def replayed() -> Flow:
    """Two races (steps, then a signal against a timer), then a wait to stop at."""
    first = yield ce.race(work("a"), work("b"))
    second = yield ce.race(ce.sleep(600), ce.wait("go"))
    yield ce.wait("finish")
    return first, second


def test_a_new_engine_replays_the_same_winners_without_running_anything(
    db: Path, clock: VirtualClock
) -> None:
    with engine_on(db, clock) as engine:
        run = engine.start(replayed, id="r")
        engine.run_until_idle(until=START + 5)
        engine.signal("r", "go", "now")
        engine.run_until_idle()
        assert run.status == "waiting"
        first = engine.history("r")[0].value
        assert first in ((0, "A"), (1, "B"))  # whichever finished first, live
    ran_live = sorted(ledger)
    assert ran_live == ["a", "b"]
    ledger.clear()
    with engine_on(db, clock) as engine:
        before = outcomes(engine, "r")
        engine.signal("r", "finish")
        assert engine.get_run("r").result() == (first, (1, "now"))
        assert outcomes(engine, "r")[: len(before) - 1] == before[:-1]
    assert ledger == []  # replay took both winners from the races' entries


# -- crashes ----------------------------------------------------------------------------------


@ce.workflow(name="race.deadline")
def deadline() -> Flow:
    """A step, a race of a signal against a timer, a step."""
    first = yield work("before")
    index, value = yield ce.race(ce.wait("go"), ce.sleep(60))
    last = yield work("after")
    return first, index, value, last


def drive_deadline(path: Path, clock: VirtualClock, store: Store | None) -> ce.Engine:
    """Drive the run up to its race, signal it, finish it; resume after each crash."""
    engine = engine_on(path, clock, store)
    engine.start(deadline, id="r")
    for action in ("reach the race", "signal", "finish"):
        while True:
            try:
                if action == "signal":
                    engine.signal("r", "go", "yes")
                else:  # the timer (60 s) must not fire: stop jumps before it
                    engine.run_until_idle(until=START + 10)
                break
            except Crash:
                engine.close()
                engine = engine_on(path, clock)
    return engine


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_crash_at_any_commit_around_a_race_resumes_to_the_same_end(
    tmp_path: Path, when: str
) -> None:
    clock = VirtualClock(START)
    with drive_deadline(tmp_path / "reference.db", clock, None) as engine:
        want = outcomes(engine, "r")
        result = engine.get_run("r").result()
    assert result == ("BEFORE", 0, "yes", "AFTER")
    assert want[3] == ("sleep", "failed", ("Cancelled", "lost the race"))
    store = CountingStore(tmp_path / "count.db")
    drive_deadline(tmp_path / "count.db", VirtualClock(START), store).close()
    for k in range(1, store.commits + 1):
        ledger.clear()
        path = tmp_path / f"{when}-{k}.db"
        clock = VirtualClock(START)
        crashing = CrashingStore(path, at_commit(k), when)
        with drive_deadline(path, clock, crashing) as engine:
            assert crashing.crashed, k
            assert engine.get_run("r").result() == result, (when, k)
            got = outcomes(engine, "r")
            # The winner is committed before the losers are cancelled: a crash in
            # between leaves the losing timer's entry in flight, which nothing reads.
            assert got[3] in (want[3], ("sleep", "running", None)), (when, k)
            assert got[:3] + got[4:] == want[:3] + want[4:], (when, k)
        # A step runs again only when the commit of its outcome was lost.
        assert ledger.count("before") in (1, 2) and ledger.count("after") in (1, 2), k
        assert len(ledger) <= 3, (when, k, ledger)


@ce.workflow(name="race.first_step")
def first_step() -> Flow:
    """A race whose step member wins against a signal that never comes."""
    won = yield ce.race(work("racer"), ce.wait("never"))
    last = yield work("after")
    return won, last


def test_a_crash_before_the_race_is_logged_starts_it_afresh(db: Path, clock: VirtualClock) -> None:
    store = CrashingStore(db, inserts_race)
    with engine_on(db, clock, store) as engine, pytest.raises(Crash):
        engine.run(first_step, id="r")
    with engine_on(db, clock) as engine:
        assert engine.history("r") == []
        assert engine.run(first_step, id="r") == ((0, "RACER"), "AFTER")
        assert [(k, s) for k, s, _ in outcomes(engine, "r")] == [
            ("race", "completed"),
            ("step", "completed"),
            ("wait", "failed"),
            ("step", "completed"),
        ]
    assert ledger == ["racer", "after"]


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_crash_after_the_winner_finished_keeps_its_outcome_and_runs_nothing_again(
    db: Path, clock: VirtualClock, when: str
) -> None:
    store = CrashingStore(db, decides_race, when)
    with engine_on(db, clock, store) as engine, pytest.raises(Crash):
        engine.run(first_step, id="r")
    with engine_on(db, clock) as engine:
        log = engine.history("r")
        assert log[1].status == "completed"  # the winner's outcome was committed
        assert log[0].status == ("running" if when == "before" else "completed")
        assert engine.run(first_step, id="r") == ((0, "RACER"), "AFTER")
        assert engine.history("r")[0].value == (0, "RACER")
    assert ledger == ["racer", "after"]


@ce.workflow(name="race.sleeps")
def two_sleeps(first: float, second: float) -> Flow:
    """Two timers race."""
    return (yield ce.race(ce.sleep(first), ce.sleep(second)))


@pytest.mark.parametrize("durations", [(5.0, 10.0), (10.0, 5.0)], ids=["first", "second"])
def test_a_crash_before_the_race_records_its_winner_resumes_with_the_same_winner(
    db: Path, clock: VirtualClock, durations: tuple[float, float]
) -> None:
    winner = durations.index(min(durations))
    with engine_on(db, clock, CrashingStore(db, decides_race)) as engine:
        engine.start(two_sleeps, *durations, id="r")
        with pytest.raises(Crash):
            engine.run_until_idle()
        log = engine.history("r")
        assert log[0].status == "running" and log[1 + winner].status == "completed"
    with engine_on(db, clock) as engine:
        engine.run_until_idle()
        assert engine.get_run("r").result() == (winner, None)


# -- cancellation -----------------------------------------------------------------------------


@ce.workflow(name="race.cancelled")
def cancelled() -> Flow:
    """Wait in a race; clean up when cancelled."""
    try:
        return (yield ce.race(ce.wait("go"), ce.sleep(3600)))
    finally:
        yield work("cleanup")


def test_cancelling_a_run_waiting_in_a_race_raises_cancelled_there(engine: ce.Engine) -> None:
    run = engine.start(cancelled, id="r")
    engine.run_until_idle(until=START + 60)
    assert engine.cancel("r")
    engine.run_until_idle()
    assert run.status == "cancelled"
    with pytest.raises(ce.Cancelled):
        run.result()
    log = outcomes(engine, "r")
    assert [(kind, status) for kind, status, _ in log] == [
        ("race", "failed"),
        ("wait", "failed"),
        ("sleep", "failed"),
        ("step", "completed"),
    ]
    assert log[0][2][0] == "Cancelled"
    assert ledger == ["cleanup"]


# -- property: the order members finish in decides, and replays agree -------------------------


@ce.workflow(name="race.random")
def random_race(specs: list[tuple[str, int | None]]) -> Flow:
    """Race the members specs describe, log the winner with a step, wait to be finished."""
    members = [
        ce.sleep(value) if kind == "sleep" else ce.wait(f"s{i}")  # type: ignore[arg-type]
        for i, (kind, value) in enumerate(specs)
    ]
    index, value = yield ce.race(*members)
    yield work(f"won {index}")
    yield ce.wait("finish")
    return index, value


def expected_winner(specs: list[tuple[str, int | None]]) -> tuple[int, Any]:
    """The member with the earliest event; ties go to the first in argument order.

    Timers fire at whole seconds, signals come half a second past theirs (or before
    the run starts, at -1), so a timer and a signal never tie.
    """
    times = []
    for kind, value in specs:
        if kind == "sleep":
            times.append(float(value))  # type: ignore[arg-type]
        else:
            times.append(float("inf") if value is None else -1.0 if value < 0 else value + 0.5)
    index = min(range(len(specs)), key=lambda i: (times[i], i))
    return index, (None if specs[index][0] == "sleep" else f"payload {index}")


members = st.one_of(
    st.tuples(st.just("sleep"), st.integers(1, 20)),
    st.tuples(st.just("wait"), st.one_of(st.none(), st.just(-1), st.integers(0, 20))),
)


@pytest.fixture(scope="module")
def shared_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One database file for every example of the property (each has its own run)."""
    return tmp_path_factory.mktemp("race") / "runs.db"


@settings(max_examples=min(settings().max_examples, 150))
@given(
    specs=st.lists(members, min_size=1, max_size=5).filter(
        lambda specs: any(kind == "sleep" for kind, _ in specs)  # something always ends it
    )
)
def test_any_order_of_timers_and_signals_picks_the_earliest_and_replays_it(
    shared_db: Path, specs: list[tuple[str, int | None]]
) -> None:
    ledger.clear()
    run_id = f"random-{uuid.uuid4().hex}"
    clock = VirtualClock(START)
    sends: dict[int, list[int]] = {}
    for i, (kind, value) in enumerate(specs):
        if kind == "wait" and value is not None:
            sends.setdefault(value, []).append(i)
    with engine_on(shared_db, clock) as engine:
        run = engine.start(random_race, specs, id=run_id)
        for i in sends.pop(-1, []):
            engine.signal(run_id, f"s{i}", f"payload {i}")
        engine.run_until_idle(until=START)
        for second in sorted(sends):
            at = START + second + 0.5
            engine.run_until_idle(until=at)
            clock.jump_to(at)
            for i in sends[second]:
                engine.signal(run_id, f"s{i}", f"payload {i}")
        engine.run_until_idle(until=START + 30)
        assert run.status == "waiting"
        live = engine.history(run_id)
    index, value = expected_winner(specs)
    assert live[0].value == (index, value)
    # The winner completed; every other member was cancelled, even a wait whose
    # signal had come by then (it stays in the mailbox).
    for i, entry in enumerate(live[1 : 1 + len(specs)]):
        assert entry.status == ("completed" if i == index else "failed")
        if i != index:
            assert isinstance(entry.error, ce.Cancelled)
    assert ledger == [f"won {index}"]
    ledger.clear()
    with engine_on(shared_db, clock) as engine:  # a restarted process replays the run
        engine.signal(run_id, "finish")
        assert engine.get_run(run_id).result() == (index, value)
        finished = engine.history(run_id)
    assert ledger == []
    assert [(e.kind, e.status, e.value) for e in finished[:-1]] == [
        (e.kind, e.status, e.value) for e in live[:-1]
    ]
    # The finished log replays on its own to the same result, asking for nothing.
    replay = Driver(random_race.fn(specs), finished).start()
    assert isinstance(replay, Returned) and replay.value == (index, value)
