"""Durable timers, recorded values (now, random, uuid), code patches and published values.

Time is mostly a VirtualClock, so a sleep of days takes microseconds: the engine
jumps the clock to the next timer when nothing else is due. Crashes are simulated
in-process: a step (or a commit) raises a BaseException, which the engine lets
through, and a brand-new Engine on the same file carries the run on.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import math
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import Crash, crash_at
from hypothesis import given
from hypothesis import strategies as st

import contengine as ce
from contengine.store.base import E_COMPLETED, E_FAILED
from contengine.testing import VirtualClock

pytestmark = pytest.mark.both_stores

START = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
DAY = 86_400.0
UTC = datetime.UTC
DONE = (E_COMPLETED, E_FAILED)


def at(seconds: float) -> datetime.datetime:
    """The aware UTC datetime of epoch seconds."""
    return datetime.datetime.fromtimestamp(seconds, UTC)


# -- the world outside the engine ----------------------------------------------------

EXECUTED: list[str] = []  # every step execution that got past its crash check, in order
ARMED: set[str] = set()  # steps that crash (once) on their next execution
SEEN: list[Any] = []  # values a workflow received at a yield, live or replayed


@pytest.fixture(autouse=True)
def _fresh_world() -> Iterator[None]:
    EXECUTED.clear()
    ARMED.clear()
    SEEN.clear()
    yield
    EXECUTED.clear()
    ARMED.clear()
    SEEN.clear()


def enter(name: str) -> None:
    """Crash here if this step is armed; otherwise record that it ran."""
    if name in ARMED:
        ARMED.discard(name)
        raise Crash
    EXECUTED.append(name)


@ce.step
def before(n: int) -> int:
    """The step ahead of the request under test."""
    enter("before")
    return n + 1


@ce.step
def after(n: int) -> int:
    """The step behind the request under test."""
    enter("after")
    return n * 10


@ce.step(name="time.note")
def note(text: str) -> str:
    """A step that records its argument."""
    enter(f"note:{text}")
    return text.upper()


def engine_on(
    path: Path | str, clock: VirtualClock, *workflows: ce.Workflow[Any, Any], cache_runs: int = 0
) -> ce.Engine:
    """A fresh engine on the file, as a restarted process would open it; without the
    live-generator cache, so that every wake-up replays the log (as these tests want)."""
    return ce.Engine(
        path, durability="normal", clock=clock, workflows=workflows, cache_runs=cache_runs
    )


def define(name: str, body: Callable[..., Generator[Any, Any, Any]]) -> ce.Workflow[..., Any]:
    """Register body as the current code of workflow `name`, as a redeploy would."""

    @ce.workflow(name=name)
    def flow(*args: Any) -> Generator[Any, Any, Any]:
        return (yield from body(*args))

    return flow


def kinds(engine: ce.Engine, run_id: str) -> list[str]:
    """The kinds of the run's log entries, in order."""
    return [e.kind for e in engine.history(run_id)]


# -- timers ------------------------------------------------------------------------


@ce.workflow(name="tests.time.month")
def month() -> Generator[Any, Any, tuple[datetime.datetime, datetime.datetime]]:
    """Sleep thirty days between two readings of the time."""
    t0 = yield ce.now()
    yield ce.sleep(datetime.timedelta(days=30))
    t1 = yield ce.now()
    return t0, t1


def test_a_thirty_day_sleep_takes_milliseconds_with_a_virtual_clock() -> None:
    clock = VirtualClock(START)
    engine = ce.Engine(clock=clock)
    began = time.perf_counter()
    t0, t1 = engine.run(month, id="m")
    assert time.perf_counter() - began < 0.5
    assert (t0, t1) == (at(START), at(START + 30 * DAY))
    assert clock.now() == START + 30 * DAY
    sleep = engine.history("m")[1]
    assert (sleep.kind, sleep.status, sleep.text) == ("sleep", "completed", "30d")
    assert (sleep.started_at, sleep.finished_at) == (START, START + 30 * DAY)
    assert sleep.value is None


def test_a_sleeping_run_shows_its_wake_time_in_the_log_and_the_run() -> None:
    clock = VirtualClock(START)
    engine = ce.Engine(clock=clock)
    run = engine.start(month, id="m")
    report = engine.run_until_idle(until=START)  # no jump: time stands still
    wake = START + 30 * DAY
    assert report.finished == [] and report.stuck == {}
    assert report.next_due == wake
    assert run.status == "sleeping"
    assert [r.id for r in engine.runs(status="sleeping")] == ["m"]
    assert engine.store.get_run("m").due_at == wake  # type: ignore[union-attr]
    entry = engine.history("m")[-1]
    assert (entry.position, entry.kind, entry.status) == (1, "sleep", "running")
    assert entry.due_at == wake and entry.started_at == START
    assert clock.now() == START
    # Nothing is due: driving again does nothing.
    assert engine.run_until_idle(until=START).driven == 0
    assert len(engine.history("m")) == 2


def test_run_until_idle_on_the_real_clock_leaves_a_sleeping_run_and_reports_when_it_is_due() -> (
    None
):
    engine = ce.Engine()
    run = engine.start(month, id="m")
    before_ = time.time()
    report = engine.run_until_idle()
    after_ = time.time()
    assert run.status == "sleeping"
    assert report.finished == [] and report.driven == 1
    assert report.next_due is not None
    assert before_ + 30 * DAY <= report.next_due <= after_ + 30 * DAY
    assert engine.history("m")[1].due_at == report.next_due
    again = engine.run_until_idle()
    assert again.driven == 0 and again.next_due == report.next_due


@ce.workflow(name="tests.time.stages")
def stages() -> Generator[Any, Any, str]:
    """An hour, then a day, then a week, publishing the stage reached."""
    for stage, seconds in (("hour", 3600.0), ("day", DAY), ("week", 7 * DAY)):
        yield ce.sleep(seconds)
        yield ce.publish("stage", stage)
    return "done"


def test_until_stops_the_clock_jumps_there() -> None:
    clock = VirtualClock(START)
    engine = ce.Engine(clock=clock)
    run = engine.start(stages, id="s")
    report = engine.run_until_idle(until=START + 2 * 3600)
    # The hour's timer fired; the day's (due after `until`) did not, and time stopped
    # at the last timer it jumped to.
    assert engine.published("s") == {"stage": "hour"}
    assert run.status == "sleeping"
    assert clock.now() == START + 3600
    assert report.next_due == START + 3600 + DAY
    # An aware datetime works as a bound too; a bound at the due time includes it.
    engine.run_until_idle(until=at(START + 3600 + DAY))
    assert engine.published("s", "stage") == "day"
    assert clock.now() == START + 3600 + DAY
    final = engine.run_until_idle()
    assert final.finished == ["s"] and final.next_due is None
    assert run.result() == "done"
    assert clock.now() == START + 3600 + 8 * DAY


@ce.workflow(name="tests.time.alarm")
def alarm(label: str, seconds: float) -> Generator[Any, Any, datetime.datetime]:
    """Sleep, then note the label and the time."""
    yield ce.sleep(seconds)
    woke = yield ce.now()
    yield note(label)
    return woke  # type: ignore[no-any-return]


def test_timers_of_many_runs_fire_in_the_order_of_their_wake_times() -> None:
    clock = VirtualClock(START)
    engine = ce.Engine(clock=clock)
    delays = {"c": 3 * DAY, "a": 60.0, "d": 3 * DAY + 1, "b": 3600.0}
    runs = {label: engine.start(alarm, label, s, id=label) for label, s in delays.items()}
    report = engine.run_until_idle()
    assert sorted(report.finished) == ["a", "b", "c", "d"]
    assert EXECUTED == ["note:a", "note:b", "note:c", "note:d"]
    for label, run in runs.items():
        assert run.result() == at(START + delays[label])


def test_run_result_sleeps_through_the_virtual_clock_and_its_timeout_counts_virtual_time() -> None:
    clock = VirtualClock(START)
    engine = ce.Engine(clock=clock)
    run = engine.start(alarm, "x", DAY, id="x")
    with pytest.raises(ce.Timeout):
        run.result(timeout=60)
    assert clock.now() == START + 60 and run.status == "sleeping"
    assert run.result() == at(START + DAY)
    assert clock.now() == START + DAY


@ce.workflow(name="tests.time.instant")
def instant() -> Generator[Any, Any, list[datetime.datetime]]:
    """Sleeps that are already over: zero, negative, and until a past date."""
    times = [(yield ce.now())]
    yield ce.sleep(0)
    times.append((yield ce.now()))
    yield ce.sleep(-5)
    yield ce.sleep(datetime.timedelta(0))
    yield ce.sleep_until(datetime.datetime(2000, 1, 1, tzinfo=UTC))
    times.append((yield ce.now()))
    return times


def test_zero_and_past_sleeps_complete_at_once_without_moving_the_clock() -> None:
    clock = VirtualClock(START)
    store = crash_at(":memory:")
    engine = ce.Engine(store=store, clock=clock)
    engine.start(instant, id="i")
    report = engine.run_until_idle(until=START)  # no jumps allowed, and none needed
    assert report.finished == ["i"]
    assert engine.get_run("i").result() == [at(START)] * 3
    sleeps = [e for e in engine.history("i") if e.kind == "sleep"]
    assert len(sleeps) == 4
    assert all(e.status == "completed" and e.finished_at == START for e in sleeps)
    assert all(e.due_at is None for e in sleeps)
    # Answered at once, they ride on the run's final commit: none costs a commit.
    assert store.commits == 1


def test_sleep_until_an_aware_datetime_in_another_zone_wakes_at_that_instant() -> None:
    plus_two = datetime.timezone(datetime.timedelta(hours=2))
    local_noon = datetime.datetime(2026, 1, 3, 12, 0, tzinfo=plus_two)  # 10:00 UTC

    @ce.workflow(name="tests.time.until_noon")
    def until_noon() -> Generator[Any, Any, datetime.datetime]:
        yield ce.sleep_until(local_noon)
        return (yield ce.now())  # type: ignore[no-any-return]

    clock = VirtualClock(START)
    engine = ce.Engine(clock=clock)
    woke = engine.run(until_noon, id="n")
    assert woke == datetime.datetime(2026, 1, 3, 10, 0, tzinfo=UTC) == local_noon
    assert woke.tzinfo is not None and woke.utcoffset() == datetime.timedelta(0)
    assert "2026-01-03T10:00:00+00:00" in engine.history("n")[0].text


def test_bad_sleep_arguments_are_refused_where_the_workflow_asks() -> None:
    with pytest.raises(ValueError, match="aware datetime"):
        ce.sleep_until(datetime.datetime(2026, 1, 2))
    with pytest.raises(TypeError):
        ce.sleep_until(START)  # type: ignore[arg-type]
    for bad in ("x", None, [1], True):
        with pytest.raises(TypeError):
            ce.sleep(bad)  # type: ignore[arg-type]
    for endless in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="finite"):
            ce.sleep(endless)
    with pytest.raises(ValueError):
        VirtualClock(datetime.datetime(2026, 1, 1))

    @ce.workflow(name="tests.time.bad_sleep")
    def bad_sleep() -> Generator[Any, Any, str]:
        try:
            yield ce.sleep("ten minutes")  # type: ignore[arg-type]
        except TypeError as exc:
            caught = str(exc)
        yield ce.sleep(1)
        yield ce.sleep("x")  # type: ignore[arg-type]  # uncaught: the run fails
        return caught

    engine = ce.Engine(clock=VirtualClock(START))
    with pytest.raises(TypeError, match="seconds or a timedelta"):
        engine.run(bad_sleep, id="b")
    assert engine.get_run("b").status == "failed"
    assert kinds(engine, "b") == ["sleep"]


def test_an_endless_sleep_fails_the_run_at_the_yield_and_not_the_engine() -> None:
    @ce.workflow(name="tests.time.forever")
    def forever() -> Generator[Any, Any, str]:
        try:
            yield ce.sleep(math.inf)
        except ValueError:
            yield ce.publish("endless", "refused")
        yield ce.sleep(math.inf)  # uncaught: the run fails
        return "woke"

    engine = ce.Engine(clock=VirtualClock(START))
    engine.start(forever, id="f")
    report = engine.run_until_idle(until=START + DAY)
    assert report.finished == ["f"] and report.stuck == {}
    assert engine.get_run("f").status == "failed"
    with pytest.raises(ValueError, match="ce.wait"):
        engine.get_run("f").result()
    assert engine.published("f") == {"endless": "refused"}
    assert kinds(engine, "f") == ["publish"]


def test_a_short_sleep_on_the_real_clock_really_waits() -> None:
    engine = ce.Engine()
    began = time.monotonic()
    woke = engine.run(alarm, "real", 0.05, id="real")
    assert time.monotonic() - began >= 0.05
    entry = engine.history("real")[0]
    assert entry.finished_at is not None and entry.finished_at - entry.started_at >= 0.05
    assert woke.timestamp() >= entry.started_at + 0.05


def test_the_virtual_clock_moves_only_forward_and_only_when_told() -> None:
    clock = ce.testing.VirtualClock(datetime.datetime(2026, 1, 1, 1, tzinfo=UTC))
    assert clock.now() == clock.monotonic() == START + 3600
    clock.advance(datetime.timedelta(minutes=1))
    clock.advance(30)
    clock.sleep(10)
    clock.sleep(-5)  # a negative sleep is no sleep
    assert clock.now() == START + 3600 + 100
    clock.jump_to(START)  # the past is ignored
    assert clock.now() == START + 3700
    clock.jump_to(START + DAY)
    assert clock.datetime == at(START + DAY)
    with pytest.raises(ValueError):
        clock.advance(-1)
    assert ce.testing.VirtualClock().now() == START  # the default start


# -- restarts keep the deadline ----------------------------------------------------


def test_a_restart_keeps_the_original_wake_time(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    clock = VirtualClock(START)
    wake = START + 10 * DAY

    @ce.workflow(name="tests.time.ten_days")
    def ten_days() -> Generator[Any, Any, datetime.datetime]:
        yield note("start")
        yield ce.sleep(datetime.timedelta(days=10))
        yield note("end")
        return (yield ce.now())  # type: ignore[no-any-return]

    first = engine_on(path, clock, ten_days)
    first.start(ten_days, id="t")
    first.run_until_idle(until=START)
    assert first.get_run("t").status == "sleeping"
    first.close()

    clock.advance(datetime.timedelta(days=4))  # the process is down for four days
    second = engine_on(path, clock, ten_days)
    report = second.run_until_idle(until=clock.now())
    assert report.next_due == wake  # not now + 10 days
    assert second.get_run("t").status == "sleeping"
    assert second.history("t")[1].due_at == wake
    clock.advance(6 * DAY - 1)
    assert second.run_until_idle(until=clock.now()).finished == []
    second.close()

    clock.advance(1)  # exactly the original wake time
    third = engine_on(path, clock, ten_days)
    assert third.run_until_idle(until=clock.now()).finished == ["t"]
    assert third.get_run("t").result() == at(wake)
    assert third.history("t")[1].finished_at == wake
    assert EXECUTED == ["note:start", "note:end"]


def test_run_result_after_a_restart_waits_only_for_what_is_left(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    clock = VirtualClock(START)
    first = engine_on(path, clock, alarm)
    first.start(alarm, "r", 10 * DAY, id="r")
    first.run_until_idle(until=START)
    first.close()
    clock.advance(3 * DAY)
    second = engine_on(path, clock, alarm)
    assert second.get_run("r").result() == at(START + 10 * DAY)
    assert clock.now() == START + 10 * DAY


# -- recorded values ------------------------------------------------------------


@ce.workflow(name="tests.time.values")
def values() -> Generator[Any, Any, tuple[Any, ...]]:
    """Take the time, a random number and a uuid, then a step that may crash."""
    t = yield ce.now()
    r = yield ce.random()
    u = yield ce.uuid()
    SEEN.append((t, r, u))
    yield note("after-values")
    return t, r, u


def test_now_random_and_uuid_are_replayed_from_the_log_in_a_new_engine(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    clock = VirtualClock(START + 0.25)
    first = engine_on(path, clock, values)
    ARMED.add("note:after-values")
    with pytest.raises(Crash):
        first.run(values, id="v")
    first.close()
    (live,) = SEEN
    t, r, u = live
    assert t == at(START + 0.25) and t.tzinfo is not None
    assert isinstance(r, float) and 0.0 <= r < 1.0
    assert isinstance(u, uuid.UUID) and u.version == 4

    clock.advance(DAY)  # a replay a day later still sees the time first taken
    second = engine_on(path, clock, values)
    assert second.run(values, id="v") == live
    assert [live, live] == SEEN  # the live run, then its replay
    log = second.history("v")
    assert [(e.kind, e.status) for e in log[:3]] == [
        ("now", "completed"),
        ("random", "completed"),
        ("uuid", "completed"),
    ]
    assert (log[0].value, log[1].value, log[2].value) == live
    assert EXECUTED == ["note:after-values"]


def test_each_run_draws_its_own_random_values() -> None:
    engine = ce.Engine(clock=VirtualClock(START))
    results = [engine.run(values, id=f"v{i}") for i in range(3)]
    assert len({r[1] for r in results}) == 3
    assert len({r[2] for r in results}) == 3


def test_recorded_values_cost_no_commit_of_their_own() -> None:
    @ce.workflow(name="tests.time.plain")
    def plain() -> Generator[Any, Any, str]:
        yield note("a")
        return (yield note("b"))  # type: ignore[no-any-return]

    @ce.workflow(name="tests.time.busy")
    def busy() -> Generator[Any, Any, str]:
        yield note("a")
        yield ce.now()
        yield ce.random()
        yield ce.uuid()
        yield ce.publish("k", 1)
        yield ce.patched("busy-change")
        yield ce.sleep(0)
        return (yield note("b"))  # type: ignore[no-any-return]

    counts = []
    for wf in (plain, busy):
        store = crash_at(":memory:")
        ce.Engine(store=store, clock=VirtualClock(START)).run(wf, id="x")
        counts.append(store.commits)
    assert counts[0] == counts[1] == 3


# -- a crash at every point around each request ---------------------------------


def ask(kind: str) -> ce.Request:
    """The request under test, by kind."""
    if kind == "now":
        return ce.now()
    if kind == "random":
        return ce.random()
    if kind == "uuid":
        return ce.uuid()
    if kind == "patched":
        return ce.patched("around-change")
    if kind == "publish":
        return ce.publish("k", {"v": 1})
    if kind == "sleep":
        return ce.sleep(3600)
    assert kind == "sleep0"
    return ce.sleep(0)


@ce.workflow(name="tests.time.around")
def around(kind: str) -> Generator[Any, Any, tuple[int, Any, int]]:
    """A step, the request under test, another step."""
    a = yield before(1)
    v = yield ask(kind)
    SEEN.append(v)
    b = yield after(a)
    return a, v, b


KINDS = ["now", "random", "uuid", "patched", "publish", "sleep", "sleep0"]
LOGGED_KIND = {"sleep0": "sleep"}


@dataclass(frozen=True)
class CrashPoint:
    """Where the first engine dies: inside a step, or before/after its k-th commit."""

    where: str  # "step" or "before"/"after"
    step: str = ""
    k: int = 0


def crash_points(commits: int) -> list[CrashPoint]:
    """Every crash point of a run that makes `commits` commits."""
    points = [CrashPoint("step", "before"), CrashPoint("step", "after")]
    for k in range(1, commits + 1):
        points += [CrashPoint("before", k=k), CrashPoint("after", k=k)]
    return points


def reference_commits(kind: str) -> int:
    """How many commits the uninterrupted run makes."""
    store = crash_at(":memory:")
    ce.Engine(store=store, clock=VirtualClock(START)).run(around, kind, id="ref")
    EXECUTED.clear()
    SEEN.clear()
    return store.commits


@pytest.mark.parametrize("kind", KINDS)
def test_a_crash_anywhere_around_a_request_resumes_with_the_same_value(
    tmp_path: Path, kind: str
) -> None:
    for n, point in enumerate(crash_points(reference_commits(kind))):
        EXECUTED.clear()
        SEEN.clear()
        ARMED.clear()
        path = tmp_path / f"{n}.db"
        check_crash_around(path, kind, point)


def check_crash_around(path: Path, kind: str, point: CrashPoint) -> None:
    """Crash the first engine at point, resume in a second one, check the outcome."""
    clock = VirtualClock(START)
    if point.where == "step":
        ARMED.add(point.step)
        store = crash_at(path)
    else:
        store = crash_at(path, point.where, point.k)
    first = ce.Engine(store=store, clock=clock, workflows=[around])
    first.start(around, kind, id="r")
    with pytest.raises(Crash):
        first.run_until_idle()
    first.close()
    seen_live = list(SEEN)
    ran_first = list(EXECUTED)

    second = engine_on(path, clock, around)
    at_crash = {e.position: e for e in second.history("r") if e.status in DONE}
    second.run_until_idle()
    assert second.get_run("r").status == "completed", point
    a, v, b = second.get_run("r").result()
    log = second.history("r")
    assert (a, b) == (2, 20)
    assert [e.kind for e in log] == ["step", LOGGED_KIND.get(kind, kind), "step"], point
    assert all(e.status == "completed" for e in log)
    request = log[1]
    assert request.value == v
    if 1 in at_crash:
        # Logged before the crash: the very value the live code saw, never a new one.
        assert at_crash[1].value == v and seen_live and seen_live[-1] == v, point
    # A step whose outcome was committed before the crash never runs again.
    ran_second = EXECUTED[len(ran_first) :]
    for position, name in ((0, "before"), (2, "after")):
        if position in at_crash:
            assert name not in ran_second, point
    assert EXECUTED.count("before") >= 1 and EXECUTED.count("after") >= 1
    expected_value(kind, v, second, request)


def expected_value(kind: str, v: Any, engine: ce.Engine, request: ce.Entry) -> None:
    """What each kind of request must have answered."""
    if kind == "now":
        assert v == at(START)
    elif kind == "random":
        assert isinstance(v, float) and 0.0 <= v < 1.0
    elif kind == "uuid":
        assert isinstance(v, uuid.UUID) and v.version == 4
    elif kind == "patched":
        assert v is True and request.name == "around-change"
    elif kind == "publish":
        assert v == {"v": 1} and engine.published("r") == {"k": {"v": 1}}
    elif kind == "sleep":
        # The wake time was set when the sleep was first logged, and kept.
        assert v is None and request.finished_at == START + 3600
        assert engine.clock.now() == START + 3600
    else:
        assert v is None and request.finished_at == START == engine.clock.now()


# -- patched: versioning runs in flight --------------------------------------------

PATCHED_NAME = "tests.time.patched"


def v1_body(n: int) -> Generator[Any, Any, Any]:
    """The original code: `old` after `before`."""
    a = yield before(n)
    b = yield note("old")
    c = yield after(a)
    return a, b, c


def v2_body(n: int) -> Generator[Any, Any, Any]:
    """The change, guarded: runs logged before it keep `old`, new runs take `new`."""
    a = yield before(n)
    if (yield ce.patched("new-note")):
        b = yield note("new")
    else:
        b = yield note("old")
    c = yield after(a)
    return a, b, c


def v3_body(n: int) -> Generator[Any, Any, Any]:
    """The patch retired once no old run is left: only the new path."""
    a = yield before(n)
    b = yield note("new")
    c = yield after(a)
    return a, b, c


def test_patched_keeps_old_runs_on_the_old_path_and_new_runs_on_the_new(
    tmp_path: Path,
) -> None:
    path = tmp_path / "p.db"
    clock = VirtualClock(START)

    # Version 1 logs a run up to `old`, which dies in flight.
    v1 = define(PATCHED_NAME, v1_body)
    engine = engine_on(path, clock, v1)
    ARMED.add("note:old")
    with pytest.raises(Crash):
        engine.run(v1, 1, id="old-run")
    engine.close()

    # Version 2 resumes it on the old path, without a marker; a new run takes the new path.
    v2 = define(PATCHED_NAME, v2_body)
    engine = engine_on(path, clock, v2)
    assert engine.run(v2, 1, id="old-run") == (2, "OLD", 20)
    assert kinds(engine, "old-run") == ["step", "step", "step"]
    assert [e.name for e in engine.history("old-run")] == ["before", "time.note", "after"]
    ARMED.add("after")
    with pytest.raises(Crash):
        engine.run(v2, 5, id="new-run")
    log = engine.history("new-run")
    assert [(e.kind, e.name) for e in log] == [
        ("step", "before"),
        ("patched", "new-note"),
        ("step", "time.note"),
        ("step", "after"),
    ]
    assert (log[1].status, log[1].value) == ("completed", True)
    assert log[2].value == "NEW" and log[3].status == "running"
    engine.close()

    # Version 3 retires the patch: the v2 run replays past its marker and finishes.
    v3 = define(PATCHED_NAME, v3_body)
    engine = engine_on(path, clock, v3)
    assert engine.run(v3, 5, id="new-run") == (6, "NEW", 60)
    assert [e.kind for e in engine.history("new-run")] == ["step", "patched", "step", "step"]
    assert EXECUTED == ["before", "note:old", "after", "before", "note:new", "after"]
    # A fresh v3 run logs no marker at all.
    assert engine.run(v3, 7, id="v3-run") == (8, "NEW", 80)
    assert kinds(engine, "v3-run") == ["step", "step", "step"]


def test_a_patch_reached_beyond_an_old_runs_log_is_taken_live(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    clock = VirtualClock(START)
    v1 = define(PATCHED_NAME + ".late", v1_body)
    engine = engine_on(path, clock, v1)
    ARMED.add("before")
    with pytest.raises(Crash):
        engine.run(v1, 1, id="r")  # dies in the first step: nothing after it is logged
    engine.close()
    v2 = define(PATCHED_NAME + ".late", v2_body)
    engine = engine_on(path, clock, v2)
    assert engine.run(v2, 1, id="r") == (2, "NEW", 20)
    assert kinds(engine, "r") == ["step", "patched", "step", "step"]


def test_retiring_a_patch_while_old_runs_remain_is_caught_as_nondeterminism(
    tmp_path: Path,
) -> None:
    path = tmp_path / "p.db"
    clock = VirtualClock(START)
    v1 = define(PATCHED_NAME + ".early", v1_body)
    engine = engine_on(path, clock, v1)
    ARMED.add("after")
    with pytest.raises(Crash):
        engine.run(v1, 1, id="r")
    before_log = [(e.kind, e.name, e.status) for e in engine.history("r")]
    engine.close()
    v3 = define(PATCHED_NAME + ".early", v3_body)
    engine = engine_on(path, clock, v3)
    with pytest.raises(ce.NonDeterminismError) as info:
        engine.run(v3, 1, id="r")
    assert info.value.position == 1
    assert "note('old')" in (info.value.recorded or "")
    assert "note('new')" in (info.value.replayed or "")
    assert [(e.kind, e.name, e.status) for e in engine.history("r")] == before_log


def test_a_change_id_must_be_a_non_empty_string() -> None:
    for bad in ("", None, 3):
        with pytest.raises(ValueError):
            ce.patched(bad)  # type: ignore[arg-type]


# -- publish ------------------------------------------------------------------------


@ce.workflow(name="tests.time.progress")
def progress(total: int) -> Generator[Any, Any, str]:
    """Publish progress between day-long sleeps."""
    for done in range(1, total + 1):
        yield note(f"part-{done}")
        echoed = yield ce.publish("progress", {"done": done, "of": total})
        assert echoed == {"done": done, "of": total}
        yield ce.sleep(DAY)
    yield ce.publish("state", "finished")
    return "ok"


def test_published_values_are_visible_while_the_run_sleeps_and_the_latest_wins(
    tmp_path: Path,
) -> None:
    path = tmp_path / "pub.db"
    clock = VirtualClock(START)
    engine = engine_on(path, clock, progress)
    run = engine.start(progress, 3, id="p")
    assert engine.published("p") == {}
    engine.run_until_idle(until=START + DAY)
    assert run.status == "sleeping"
    assert engine.published("p") == {"progress": {"done": 2, "of": 3}}
    assert engine.published("p", "progress") == {"done": 2, "of": 3}
    assert engine.published("p", "state") is None
    assert engine.published("p", "state", default="pending") == "pending"
    # Another engine on the file (another process) sees the same.
    with engine_on(path, clock, progress) as other:
        assert other.published("p", "progress") == {"done": 2, "of": 3}
    engine.run_until_idle()
    assert run.result() == "ok"
    assert engine.published("p") == {"progress": {"done": 3, "of": 3}, "state": "finished"}
    publishes = [e for e in engine.history("p") if e.kind == "publish"]
    assert [e.name for e in publishes] == ["progress"] * 3 + ["state"]
    with pytest.raises(ce.RunNotFound):
        engine.published("nope")


@ce.workflow(name="tests.time.bad_publish")
def bad_publish() -> Generator[Any, Any, str]:
    """Publish something unserializable, catch the error, carry on."""
    yield ce.publish("status", "good")
    try:
        yield ce.publish("status", (x for x in range(3)))
    except ce.SerializationError as exc:
        message = str(exc)
    else:
        message = "no error"
    SEEN.append(message)
    yield note("after-publish")
    return message


def test_an_unserializable_published_value_raises_at_the_yield_also_on_replay(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bad.db"
    clock = VirtualClock(START)
    engine = engine_on(path, clock, bad_publish)
    ARMED.add("note:after-publish")
    with pytest.raises(Crash):
        engine.run(bad_publish, id="b")
    engine.close()
    assert "generator" in SEEN[0]
    engine = engine_on(path, clock, bad_publish)
    assert engine.run(bad_publish, id="b") == SEEN[0]
    assert len(SEEN) == 2 and SEEN[1] == SEEN[0]  # the replay took the same except
    entry = engine.history("b")[1]
    assert (entry.kind, entry.status) == ("publish", "failed")
    assert isinstance(entry.error, ce.SerializationError)
    # The failed value never replaces the last good one.
    assert engine.published("b") == {"status": "good"}

    @ce.workflow(name="tests.time.bad_publish_uncaught")
    def uncaught() -> Generator[Any, Any, None]:
        yield ce.publish("status", (x for x in range(3)))

    with pytest.raises(ce.SerializationError):
        engine.run(uncaught, id="u")
    assert engine.get_run("u").status == "failed"


def test_a_published_key_must_be_a_non_empty_string() -> None:
    for bad in ("", None, 1):
        with pytest.raises(ValueError):
            ce.publish(bad, 1)  # type: ignore[arg-type]


# -- nondeterminism ------------------------------------------------------------------


@ce.workflow(name="tests.time.wall_clock")
def wall_clock() -> Generator[Any, Any, str]:
    """Wrong on purpose: reads the real time between yields to pick a duration."""
    yield note("start")
    yield ce.sleep(3600 + time.time() % 60)
    return "woke"


@pytest.fixture
def ticking(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Make time.time() return a fixed value that moves only when told to."""
    now = [1_800_000_000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])

    def tick() -> None:
        now[0] += 7.0

    return tick


def test_a_sleep_computed_from_the_real_time_is_caught_on_replay(
    tmp_path: Path, ticking: Callable[[], None]
) -> None:
    path = tmp_path / "nd.db"
    clock = VirtualClock(START)
    engine = engine_on(path, clock, wall_clock)
    engine.start(wall_clock, id="w")
    engine.run_until_idle(until=START)
    logged = [(e.kind, e.status, e.key, e.due_at) for e in engine.history("w")]
    assert logged[1][:2] == ("sleep", "running")
    ticking()
    with pytest.raises(ce.NonDeterminismError) as info:
        engine.get_run("w").result()
    err = info.value
    assert err.position == 1 and err.run_id == "w"
    assert (err.recorded or "").startswith("sleep") and (err.replayed or "").startswith("sleep")
    assert err.recorded != err.replayed
    # Nothing was run or written: the run still sleeps on its first wake time.
    assert [(e.kind, e.status, e.key, e.due_at) for e in engine.history("w")] == logged
    assert engine.get_run("w").status == "sleeping"
    assert EXECUTED == ["note:start"]


class GuardedClock(VirtualClock):
    """A VirtualClock that fails loudly when the engine keeps jumping it nowhere."""

    def __init__(self, start: float) -> None:
        super().__init__(start)
        self.idle_jumps = 0

    def jump_to(self, when: float) -> None:
        """Jump, counting the jumps that do not move time."""
        if when <= self.now():
            self.idle_jumps += 1
            if self.idle_jumps > 100:
                raise AssertionError(
                    "run_until_idle keeps jumping the clock to a time already reached "
                    "(a stuck run's due time): it would never return"
                )
        super().jump_to(when)


def test_run_until_idle_sets_a_nondeterministic_sleeping_run_aside_and_returns(
    tmp_path: Path, ticking: Callable[[], None]
) -> None:
    path = tmp_path / "nd.db"
    clock = GuardedClock(START)
    engine = engine_on(path, clock, wall_clock)
    engine.start(wall_clock, id="w")
    engine.start(alarm, "later", 2 * DAY, id="later")
    engine.run_until_idle(until=START)
    logged = [(e.kind, e.status, e.key, e.due_at) for e in engine.history("w")]
    ticking()
    report = engine.run_until_idle()
    assert isinstance(report.stuck.get("w"), ce.NonDeterminismError)
    assert report.finished == ["later"]  # the other run's timer still fired
    assert engine.get_run("w").status == "sleeping"
    assert engine.get_run("w").note is not None
    assert [(e.kind, e.status, e.key, e.due_at) for e in engine.history("w")] == logged


def test_a_recorded_value_of_another_kind_is_nondeterminism(tmp_path: Path) -> None:
    path = tmp_path / "nd.db"
    clock = VirtualClock(START)

    def took_time(n: int) -> Generator[Any, Any, Any]:
        t = yield ce.now()
        yield after(n)
        return t

    def took_random(n: int) -> Generator[Any, Any, Any]:
        r = yield ce.random()
        yield after(n)
        return r

    first = define("tests.time.kind_change", took_time)
    engine = engine_on(path, clock, first)
    ARMED.add("after")
    with pytest.raises(Crash):
        engine.run(first, 1, id="k")
    engine.close()
    second = define("tests.time.kind_change", took_random)
    engine = engine_on(path, clock, second)
    with pytest.raises(ce.NonDeterminismError) as info:
        engine.run(second, 1, id="k")
    assert info.value.position == 0
    assert (info.value.recorded or "").startswith("now")
    assert (info.value.replayed or "").startswith("random")


# -- property: random programs crashed anywhere resume to the reference ------------

MOD = 1_000_003
Op = tuple[Any, ...]


@ce.step
def mix(tag: int, acc: int) -> int:
    """Fold a tag into the accumulator; crashes when armed (named by its log position)."""
    enter(f"mix@{ce.current_step().position}")
    return (acc * 31 + tag) % MOD


@ce.workflow(name="tests.time.program")
def program(ops: tuple[Op, ...]) -> Generator[Any, Any, list[tuple[str, Any]]]:
    """Interpret ops; every answer feeds the accumulator, so a wrong replay diverges."""
    acc, trace = 1, []
    for op in ops:
        kind = op[0]
        if kind == "step":
            acc = yield mix(op[1], acc)
            value: Any = acc
        elif kind == "sleep":
            value = yield ce.sleep(op[1])
        elif kind == "now":
            value = yield ce.now()
            acc = (acc + int(value.timestamp())) % MOD
        elif kind == "random":
            value = yield ce.random()
            acc = (acc + int(value * MOD)) % MOD
        else:
            value = yield ce.uuid()
            acc = (acc + value.int) % MOD
        trace.append((kind, value))
    return trace


def model(ops: tuple[Op, ...], drawn: Iterator[Any]) -> list[tuple[str, Any]]:
    """What program returns, given the random values and uuids it drew, in order."""
    acc, t, trace = 1, START, []
    for op in ops:
        kind = op[0]
        value: Any
        if kind == "step":
            acc = value = (acc * 31 + op[1]) % MOD
        elif kind == "sleep":
            t, value = t + max(op[1], 0), None
        elif kind == "now":
            value = at(t)
            acc = (acc + int(t)) % MOD
        elif kind == "random":
            value = next(drawn)
            acc = (acc + int(value * MOD)) % MOD
        else:
            value = next(drawn)
            acc = (acc + value.int) % MOD
        trace.append((kind, value))
    return trace


def drawn_values(trace: list[tuple[str, Any]]) -> Iterator[Any]:
    """The random values and uuids in a trace, in order."""
    return (v for kind, v in trace if kind in ("random", "uuid"))


def masked(trace: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """A trace without the values that differ from run to run (random, uuid, and the
    step results they feed): the kinds, the times and the sleeps."""
    return [(k, v if k in ("now", "sleep") else "?") for k, v in trace]


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("step"), st.integers(0, 99)),
        st.tuples(st.just("sleep"), st.sampled_from([0, -1, 1, 3600, DAY, 30 * DAY])),
        st.tuples(st.sampled_from(["now", "random", "uuid"])),
    ),
    max_size=10,
).map(tuple)


@st.composite
def cases(draw: st.DrawFn) -> tuple[tuple[Op, ...], tuple[str, int]]:
    """A program and where its first engine crashes: in its k-th step, or at a commit
    (a program makes at most one commit per op, plus one)."""
    ops = draw(OPS)
    steps = sum(1 for op in ops if op[0] == "step")
    where = draw(st.sampled_from(["step", "before", "after"] if steps else ["before", "after"]))
    k = draw(st.integers(1, steps if where == "step" else len(ops) + 1))
    return ops, (where, k)


_files = itertools.count()


@given(case=cases())
def test_random_programs_crashed_anywhere_resume_to_the_reference_result(
    tmp_path_factory: pytest.TempPathFactory, case: tuple[tuple[Op, ...], tuple[str, int]]
) -> None:
    ops, (where, k) = case
    EXECUTED.clear()
    ARMED.clear()
    ref_clock = VirtualClock(START)
    ref_engine = ce.Engine(clock=ref_clock)
    reference = ref_engine.run(program, ops, id="p")
    assert reference == model(ops, drawn_values(reference))
    ref_log = [(e.kind, e.name) for e in ref_engine.history("p")]
    EXECUTED.clear()

    path = tmp_path_factory.getbasetemp() / f"prop-{next(_files)}.db"
    clock = VirtualClock(START)
    # Each op yields one request, so an op's index is its log position.
    steps = [i for i, op in enumerate(ops) if op[0] == "step"]
    if where == "step":
        ARMED.add(f"mix@{steps[k - 1]}")
        store = crash_at(path)
    else:
        store = crash_at(path, where, k)
    first = ce.Engine(store=store, clock=clock, workflows=[program])
    first.start(program, ops, id="p")
    with contextlib.suppress(Crash):  # a plan past the program's end does not fire
        first.run_until_idle()
    first.close()
    ARMED.clear()
    ran_first = len(EXECUTED)

    second = engine_on(path, clock, program)
    at_crash = {e.position: e.value for e in second.history("p") if e.status in DONE}
    assert second.run_until_idle().stuck == {}
    resumed = second.get_run("p").result()
    final = second.history("p")
    assert masked(resumed) == masked(reference)
    assert resumed == model(ops, drawn_values(resumed))
    assert [(e.kind, e.name) for e in final] == ref_log
    assert clock.now() == ref_clock.now()
    for position, value in at_crash.items():
        assert final[position].value == value  # a logged answer never changes
    # No step whose outcome was committed before the crash ran again.
    ran_second = EXECUTED[ran_first:]
    assert not [p for p in at_crash if f"mix@{p}" in ran_second]
    second.close()
