"""ce.gather: members take log positions in argument order, run concurrently, replay exactly.

Steps record every execution in a ledger kept outside the engine, so a test can
tell what really ran. A simulated crash is a step (or the workflow) raising
Crash, a BaseException: it propagates out of the engine and leaves whatever was
in flight "running", as a dead process would; a new Engine on the same file
then resumes the run.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import contengine as ce
from contengine.store.base import Progress

pytestmark = pytest.mark.both_stores

Flow = Generator[Any, Any, Any]
START = 1_767_225_600.0  # the VirtualClock's default start

# Every step execution, in order: (label, attempt).
ledger: list[tuple[str, int]] = []
# Labels whose step has finished (set just before it returns or raises).
_done: dict[str, threading.Event] = {}
_done_lock = threading.Lock()
# When each labelled step started and ended (time.monotonic()).
windows: dict[str, tuple[float, float]] = {}
# Labels that simulate a crash on their next execution. A value, when not None, is
# (database path, positions): the crash waits until those positions are committed.
CRASH: dict[str, tuple[str, tuple[int, ...]] | None] = {}
CRASH_LOCK = threading.Lock()


class Crash(BaseException):
    """Stands for the process dying in the middle of a step."""


class Oops(Exception):
    """A step's own failure (importable, so it is logged with its type)."""


def done(label: str) -> threading.Event:
    """The event set when the step labelled `label` finishes."""
    with _done_lock:
        return _done.setdefault(label, threading.Event())


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    for state in (ledger, _done, windows, CRASH):
        state.clear()
    yield
    for state in (ledger, _done, windows, CRASH):
        state.clear()


@pytest.fixture
def engine() -> Iterator[ce.Engine]:
    """An in-memory engine, closed afterwards."""
    eng = ce.Engine()
    yield eng
    eng.close()


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A path for a database file."""
    return str(tmp_path / "runs.db")


def _maybe_crash(label: str) -> None:
    """Raise Crash if `label` is armed, once committed positions it waits for are there."""
    with CRASH_LOCK:
        if label not in CRASH:
            return
        plan = CRASH.pop(label)
    if plan is not None:
        path, positions = plan
        run_id = ce.current_step().run_id
        with ce.Engine(path) as reader:
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                log = reader.history(run_id)
                if all(log[p].status == "completed" for p in positions):
                    break
                time.sleep(0.002)
            else:
                raise AssertionError(f"positions {positions} were never committed")
    raise Crash(label)


@ce.step(name="gather.work")
def work(label: str, after: str | None = None, *, once_begun: tuple[str, ...] = ()) -> str:
    """Record the execution; finish only after the step labelled `after` has finished
    and the steps labelled in `once_begun` have begun."""
    began = time.monotonic()
    ledger.append((label, ce.current_step().attempt))
    done(f"{label} begun").set()
    _maybe_crash(label)
    if after is not None and not done(after).wait(5.0):
        raise AssertionError(f"{label} waited for {after}, which never finished: not concurrent")
    for other in once_begun:
        if not done(f"{other} begun").wait(5.0):
            raise AssertionError(f"{label} waited for {other} to begin: not concurrent")
    windows[label] = (began, time.monotonic())
    done(label).set()
    return label.upper()


@ce.step
def fail(label: str, after: str | None = None) -> str:
    """Record the execution and raise Oops(label), after the step `after` finished."""
    ledger.append((label, ce.current_step().attempt))
    if after is not None and not done(after).wait(5.0):
        raise AssertionError(f"{label} waited for {after}, which never finished")
    done(label).set()
    raise Oops(label)


@ce.step(name="gather.flaky", retries=2, backoff=0)
def flaky(label: str, failures: int) -> str:
    """Fail the first `failures` attempts, then succeed."""
    attempt = ce.current_step().attempt
    ledger.append((label, attempt))
    if attempt <= failures:
        raise Oops(f"{label} attempt {attempt}")
    return label.upper()


def ran(*labels: str) -> dict[str, int]:
    """How often each of labels was executed."""
    return {label: sum(1 for name, _ in ledger if name == label) for label in labels}


def shape(engine: ce.Engine, run_id: str) -> list[tuple[str, str, str | None, str]]:
    """What replay compares and what the run ended with, per position."""
    return [(e.kind, e.name, e.key, e.status) for e in engine.history(run_id)]


def statuses(engine: ce.Engine, run_id: str) -> list[str]:
    """The status of each log entry, in position order."""
    return [e.status for e in engine.history(run_id)]


def define(name: str, body: Callable[[], Flow]) -> ce.Workflow[[], Any]:
    """Register body as the current code of workflow `name`, as a redeploy would."""

    @ce.workflow(name=name)
    def flow() -> Flow:
        return (yield from body())

    return flow


# -- order and concurrency ------------------------------------------------------------


@ce.workflow(name="gather.reverse")
def reverse() -> Flow:
    """Three members, each of which can only finish after the one to its right (and the
    last only once the other two have begun: all three run at once)."""
    return (
        yield ce.gather(
            work("a", after="b"), work("b", after="c"), work("c", once_begun=("a", "b"))
        )
    )


def test_results_come_back_in_argument_order_when_members_finish_in_reverse(db: str) -> None:
    with ce.Engine(db) as engine:
        assert engine.run(reverse, id="rev") == ["A", "B", "C"]
        log = engine.history("rev")

    # c finished first and a last (each waited for the one to its right).
    assert sorted(windows, key=lambda label: windows[label][1]) == ["c", "b", "a"]
    # All three were running at once: each started before any of them ended.
    assert max(start for start, _ in windows.values()) < min(end for _, end in windows.values())
    # The gather's own entry (with its member count), then the members at positions
    # that follow the arguments, not the order of completion.
    assert [(e.position, e.kind, e.text) for e in log[:1]] == [(0, "gather", "3 members")]
    assert [e.position for e in log[1:]] == [1, 2, 3]
    assert [e.key for e in log[1:]] == [
        work("a", after="b").key,
        work("b", after="c").key,
        work("c", once_begun=("a", "b")).key,
    ]
    assert [e.value for e in log[1:]] == ["A", "B", "C"]
    assert [(e.status, e.attempts) for e in log] == [("completed", 1)] * 4


def test_members_are_logged_together_before_any_of_them_runs(db: str) -> None:
    @ce.workflow(name="gather.one_commit")
    def one_commit() -> Flow:
        first = yield work("first")
        rest = yield ce.gather(work("x"), ce.now(), work("y"), ce.publish("k", 1))
        return first, rest[0], rest[2]

    writes: list[tuple[list[tuple[int, str, str]], int]] = []
    with ce.Engine(db) as engine:
        original = engine.store.commit

        def spy(progress: Progress) -> None:
            rows = [*progress.recorded, *([progress.insert] if progress.insert else [])]
            writes.append(([(r.position, r.kind, r.status) for r in rows], len(ledger)))
            original(progress)

        engine.store.commit = spy  # type: ignore[method-assign]
        assert engine.run(one_commit, id="one") == ("FIRST", "X", "Y")

    inserted = [(rows, executed) for rows, executed in writes if rows]
    assert inserted[0] == ([(0, "step", "running")], 0)
    # The gather and its four members, in argument order, in one commit, before x or
    # y ran; the immediate answers (now, publish) are complete as written.
    assert inserted[1] == (
        [(1, "gather", "completed"), (2, "step", "running"), (3, "now", "completed")]
        + [(4, "step", "running"), (5, "publish", "completed")],
        1,
    )
    assert len(inserted) == 2


# -- crash and replay at every point ------------------------------------------------------


@ce.workflow(name="gather.points")
def points() -> Flow:
    """A step, a gather of three steps, workflow code, and a step after the gather."""
    first = yield work("before")
    results = yield ce.gather(work("m0"), work("m1"), work("m2"))
    with CRASH_LOCK:
        armed = "after-gather" in CRASH
        CRASH.pop("after-gather", None)
    if armed:
        raise Crash("after-gather")  # the process dies between the gather and the next yield
    last = yield work("next")
    return [first, *results, last]


# Positions: before 0, the gather's own entry 1, m0 2, m1 3, m2 4, next 5.
POSITIONS = {"before": 0, "m0": 2, "m1": 3, "m2": 4, "next": 5}
# crash point -> (statuses of the log after the crash, what runs again on resume)
CRASH_POINTS = {
    "before": (["running"], ["before", "m0", "m1", "m2", "next"]),
    "m1": (["completed"] * 3 + ["running", "completed"], ["m1", "next"]),
    "after-gather": (["completed"] * 5, ["next"]),
    "next": (["completed"] * 5 + ["running"], ["next"]),
}


@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_a_crash_at_any_point_resumes_without_rerunning_completed_members(
    db: str, point: str
) -> None:
    with ce.Engine(db) as engine:
        expected = engine.run(points, id="reference")
        reference = shape(engine, "reference")
    assert expected == ["BEFORE", "M0", "M1", "M2", "NEXT"]
    ledger.clear()

    # m1 crashes only once m0 and m2 are committed.
    CRASH[point] = (db, (POSITIONS["m0"], POSITIONS["m2"])) if point == "m1" else None
    with ce.Engine(db) as engine, pytest.raises(Crash):
        engine.run(points, id="crashed")
    after_crash, rerun = CRASH_POINTS[point]
    with ce.Engine(db) as engine:
        assert statuses(engine, "crashed") == after_crash
    ledger.clear()

    with ce.Engine(db) as engine:
        assert engine.run(points, id="crashed") == expected
        assert shape(engine, "crashed") == reference
        log = engine.history("crashed")
    assert sorted(ledger) == sorted((label, 2 if label == point else 1) for label in rerun)
    crashed_entries = {e.position: (e.attempts, e.crashes) for e in log if e.crashes}
    # The step that died ran again as attempt 2, with the crash counted.
    assert crashed_entries == ({POSITIONS[point]: (2, 1)} if point in POSITIONS else {})


def test_a_member_that_keeps_crashing_is_given_up_with_crash_loop(db: str) -> None:
    @ce.workflow(name="gather.crash_loop")
    def crash_loop() -> Flow:
        try:
            yield ce.gather(work("w"), work.options(max_crashes=0)("f"))
        except ce.CrashLoop as exc:
            return str(exc)
        return "no crash loop"

    CRASH["f"] = (db, (1,))  # f's process dies once w is committed
    with ce.Engine(db) as engine, pytest.raises(Crash):
        engine.run(crash_loop, id="loop")
    ledger.clear()
    with ce.Engine(db) as engine:
        message = engine.run(crash_loop, id="loop")
        log = engine.history("loop")
    assert "step 'gather.work' at position 2" in message and "max_crashes=0" in message
    assert [(e.status, e.attempts, e.crashes) for e in log[1:]] == [
        ("completed", 1, 0),
        ("failed", 1, 1),
    ]
    assert ledger == []  # neither w (done) nor f (given up) ran again


@ce.step
def whoami() -> str:
    """The idempotency key of this execution."""
    return ce.current_step().idempotency_key


def test_identical_members_each_run_with_their_own_idempotency_key(engine: ce.Engine) -> None:
    @ce.workflow(name="gather.twins")
    def twins() -> Flow:
        return (yield ce.gather(whoami(), whoami(), work("same"), work("same")))

    assert engine.run(twins, id="t")[:2] == ["t:1", "t:2"]
    assert ran("same") == {"same": 2}


# -- failures ----------------------------------------------------------------------------


@ce.workflow(name="gather.failing")
def failing(catch: bool) -> Flow:
    """Two failing members; B fails first, A (earlier in argument order) later."""
    try:
        yield ce.gather(work("ok"), fail("A", after="B"), work("slow", after="A"), fail("B"))
    except Oops as exc:
        if not catch:
            raise
        tail = yield work("tail")
        return f"caught {exc.args[0]}, then {tail}"
    return "not raised"


def test_the_first_failure_in_argument_order_is_raised_after_all_members_ran(db: str) -> None:
    CRASH["tail"] = None
    with ce.Engine(db) as engine, pytest.raises(Crash):
        engine.run(failing, True, id="f")
    # slow finished only after A failed, and B failed before A: still A is raised,
    # and only once every member had an outcome.
    assert ran("ok", "A", "slow", "B", "tail") == {"ok": 1, "A": 1, "slow": 1, "B": 1, "tail": 1}
    ledger.clear()
    with ce.Engine(db) as engine:
        # The replay raises A again, from the log, with its own type.
        assert engine.run(failing, True, id="f") == "caught A, then TAIL"
        assert statuses(engine, "f") == ["completed", "completed", "failed"] + [
            "completed",
            "failed",
            "completed",
        ]
        errors = [e.error for e in engine.history("f")]
    assert ledger == [("tail", 2)]
    assert isinstance(errors[2], Oops) and errors[2].args == ("A",)
    assert isinstance(errors[4], Oops) and errors[4].args == ("B",)


def test_an_uncaught_member_failure_fails_the_run_with_its_own_type(
    engine: ce.Engine,
) -> None:
    with pytest.raises(Oops) as info:
        engine.run(failing, False, id="u")
    assert info.value.args == ("A",)
    assert engine.get_run("u").status == "failed"
    assert ran("ok", "A", "slow", "B") == {"ok": 1, "A": 1, "slow": 1, "B": 1}


@ce.workflow(name="gather.return_exceptions")
def collected() -> Flow:
    """Failures come back in place of results."""
    results = yield ce.gather(fail("A"), work("x"), fail("B"), return_exceptions=True)
    yield work("tail")
    return results


def test_return_exceptions_gives_failures_in_place_of_results(db: str) -> None:
    CRASH["tail"] = None
    with ce.Engine(db) as engine, pytest.raises(Crash):
        engine.run(collected, id="r")
    for resumed in (False, True):
        with ce.Engine(db) as engine:
            results = engine.run(collected, id="r")
        assert [type(r) for r in results] == [Oops, str, Oops]
        assert (results[0].args, results[1], results[2].args) == (("A",), "X", ("B",))
        if resumed:
            assert ran("A", "x", "B") == {"A": 1, "x": 1, "B": 1}


# -- retries ----------------------------------------------------------------------------


def test_members_retry_on_their_own(engine: ce.Engine) -> None:
    @ce.workflow(name="gather.retries")
    def retries() -> Flow:
        ok = yield ce.gather(flaky("f", 2), work("w"))
        try:
            yield ce.gather(work("v"), flaky("g", 5))
        except Oops as exc:
            return ok, str(exc)
        return ok, "no failure"

    assert engine.run(retries, id="r") == (["F", "W"], "g attempt 3")
    log = [e for e in engine.history("r") if e.kind == "step"]
    assert [(e.name, e.status, e.attempts) for e in log] == [
        ("gather.flaky", "completed", 3),
        ("gather.work", "completed", 1),
        ("gather.work", "completed", 1),
        ("gather.flaky", "failed", 3),
    ]
    assert ran("f", "w", "v", "g") == {"f": 3, "w": 1, "v": 1, "g": 3}
    assert log[3].error_text is not None and "g attempt 3" in log[3].error_text


def test_a_member_waiting_for_its_retry_lets_the_run_wait_and_finished_members_stay_done() -> None:
    clock = ce.testing.VirtualClock()

    @ce.workflow(name="gather.backoff")
    def backoff() -> Flow:
        return (yield ce.gather(flaky.options(backoff=30)("f", 1), work("w")))

    with ce.Engine(clock=clock) as engine:
        run = engine.start(backoff, id="b")
        report = engine.run_until_idle(until=START + 10)
        assert report.finished == [] and report.next_due == START + 30
        assert statuses(engine, "b") == ["completed", "retrying", "completed"]
        assert run.status == "running"
        report = engine.run_until_idle()
        assert report.finished == ["b"]
        assert run.result() == ["F", "W"]
        assert clock.now() == START + 30
    # The two members' first attempts run side by side, in either order.
    assert sorted(ledger[:2]) == [("f", 1), ("w", 1)] and ledger[2:] == [("f", 2)]


# -- timers and signals ----------------------------------------------------------------


def test_sleeps_in_a_gather_jump_on_a_virtual_clock() -> None:
    clock = ce.testing.VirtualClock()

    @ce.workflow(name="gather.sleeps")
    def sleeps() -> Flow:
        results = yield ce.gather(work("x"), ce.sleep(3600), ce.sleep(60))
        woke = yield ce.now()
        return results, woke

    with ce.Engine(clock=clock) as engine:
        run = engine.start(sleeps, id="s")
        engine.run_until_idle(until=START + 100)
        # The short sleep is over; the run sleeps on for the long one.
        assert run.status == "sleeping"
        assert statuses(engine, "s") == ["completed", "completed", "running", "completed"]
        assert engine.history("s")[2].due_at == START + 3600
        report = engine.run_until_idle()
        assert report.finished == ["s"]
        results, woke = run.result()
    assert results == ["X", None, None]
    assert woke == clock.datetime and clock.now() == START + 3600
    assert ledger == [("x", 1)]


def test_a_wait_in_a_gather_takes_a_signal_and_finished_members_are_not_rerun(
    engine: ce.Engine,
) -> None:
    @ce.workflow(name="gather.signal")
    def approval() -> Flow:
        return (yield ce.gather(work("x"), ce.wait("approved"), ce.wait("approved")))

    run = engine.start(approval, id="w")
    engine.signal("w", "approved", "first")  # kept in the mailbox until the gather waits
    engine.run_until_idle()
    assert run.status == "waiting"
    assert statuses(engine, "w") == ["completed", "completed", "completed", "running"]
    engine.signal("w", "approved", {"by": "ada"})
    assert engine.run_until_idle().finished == ["w"]
    assert run.result() == ["X", "first", {"by": "ada"}]
    assert ledger == [("x", 1)]


def test_a_wait_in_a_gather_times_out_with_timeout() -> None:
    clock = ce.testing.VirtualClock()

    @ce.workflow(name="gather.timeout")
    def timeout() -> Flow:
        return (yield ce.gather(work("x"), ce.wait("never", timeout=60), return_exceptions=True))

    with ce.Engine(clock=clock) as engine:
        result = engine.run(timeout, id="t")
        assert statuses(engine, "t") == ["completed", "completed", "failed"]
    assert result[0] == "X" and isinstance(result[1], ce.Timeout)
    assert clock.now() == START + 60


def test_recorded_values_in_a_gather_replay_the_same(db: str) -> None:
    @ce.workflow(name="gather.values")
    def values() -> Flow:
        got = yield ce.gather(ce.now(), ce.random(), ce.uuid(), ce.publish("k", 7), work("x"))
        yield work("tail")
        return got

    CRASH["tail"] = None
    with ce.Engine(db) as engine, pytest.raises(Crash):
        engine.run(values, id="v")
    with ce.Engine(db) as engine:
        now, rnd, uid, published, x = engine.run(values, id="v")
        log = engine.history("v")
        assert engine.published("v", "k") == 7
    assert [e.kind for e in log] == ["gather", "now", "random", "uuid", "publish", "step", "step"]
    assert [now, rnd, uid, published, x] == [e.value for e in log[1:6]]
    assert published == 7 and x == "X" and 0 <= rnd < 1
    assert ran("x", "tail") == {"x": 1, "tail": 2}


# -- nondeterminism ------------------------------------------------------------------------


def v1() -> Flow:
    """The recorded code: a step, then a gather that waits for a signal."""
    yield work("start")
    return (yield ce.gather(work("a"), work("b"), ce.wait("go")))


def v2_reordered() -> Flow:
    yield work("start")
    return (yield ce.gather(work("a"), ce.wait("go"), work("b")))


def v2_swapped() -> Flow:
    yield work("start")
    return (yield ce.gather(work("b"), work("a"), ce.wait("go")))


def v2_fewer() -> Flow:
    yield work("start")
    return (yield ce.gather(work("a"), work("b")))


def v2_fewer_then_more() -> Flow:
    yield work("start")
    yield ce.gather(work("a"))
    return (yield work("c"))


@pytest.mark.parametrize(
    ("body", "position", "recorded"),
    [
        (v2_reordered, 3, "step gather.work('b')"),
        (v2_swapped, 2, "step gather.work('a')"),
        (v2_fewer, 1, "gather (3 members)"),
        (v2_fewer_then_more, 1, "gather (3 members)"),
    ],
)
def test_changing_a_gathers_members_is_nondeterminism_at_the_members_position(
    db: str, body: Callable[[], Flow], position: int, recorded: str
) -> None:
    with ce.Engine(db) as engine:
        engine.start(define("gather.versions", v1), id="n")
        engine.run_until_idle()
        before = [(e.position, e.status, e.attempts) for e in engine.history("n")]
    assert len(before) == 5
    ledger.clear()

    with ce.Engine(db, workflows=[define("gather.versions", body)]) as engine:
        engine.signal("n", "go", 1)  # makes the run due; the stuck replay leaves it unread
        report = engine.run_until_idle()
        error = report.stuck["n"]
        assert isinstance(error, ce.NonDeterminismError)
        assert error.position == position
        assert error.recorded == recorded
        assert [(e.position, e.status, e.attempts) for e in engine.history("n")] == before
    assert ledger == []

    # Putting the recorded code back lets the run finish, running nothing twice.
    with ce.Engine(db, workflows=[define("gather.versions", v1)]) as engine:
        assert engine.run_until_idle().finished == ["n"]
        assert engine.get_run("n").result() == ["A", "B", 1]
    assert ledger == []


def test_adding_a_member_where_the_log_goes_on_is_nondeterminism(db: str) -> None:
    def recorded() -> Flow:
        yield ce.gather(work("a"), work("b"))
        return (yield ce.wait("go"))

    def grown() -> Flow:
        yield ce.gather(work("a"), work("b"), work("c"))
        return (yield ce.wait("go"))

    with ce.Engine(db) as engine:
        engine.start(define("gather.grow", recorded), id="g")
        engine.run_until_idle()
    with ce.Engine(db, workflows=[define("gather.grow", grown)]) as engine:
        engine.signal("g", "go", 1)
        error = engine.run_until_idle().stuck["g"]
    assert isinstance(error, ce.NonDeterminismError)
    assert (error.position, error.recorded) == (0, "gather (2 members)")
    assert ran("c") == {"c": 0}


def test_adding_a_member_to_a_gather_in_flight_is_nondeterminism(db: str) -> None:
    def recorded() -> Flow:
        return (yield ce.gather(work("a"), ce.wait("go")))

    def grown() -> Flow:
        return (yield ce.gather(work("a"), ce.wait("go"), work("c")))

    with ce.Engine(db) as engine:
        engine.start(define("gather.grow_in_flight", recorded), id="g")
        engine.run_until_idle()
    with ce.Engine(db, workflows=[define("gather.grow_in_flight", grown)]) as engine:
        engine.signal("g", "go", 1)
        error = engine.run_until_idle().stuck.get("g")
        assert ran("c") == {"c": 0}
    assert isinstance(error, ce.NonDeterminismError) and error.position == 0


# -- edges ------------------------------------------------------------------------------


def test_an_empty_gather_returns_an_empty_list_and_takes_no_position(engine: ce.Engine) -> None:
    @ce.workflow(name="gather.empty")
    def empty() -> Flow:
        nothing = yield ce.gather()
        also = yield ce.gather(return_exceptions=True)
        x = yield work("x")
        return nothing, also, x

    assert engine.run(empty, id="e") == ([], [], "X")
    assert [(e.position, e.kind) for e in engine.history("e")] == [(0, "step")]


@pytest.mark.parametrize(
    "member",
    [
        pytest.param(lambda: ce.gather(work("a")), id="nested gather"),
        pytest.param(lambda: ce.patched("change"), id="patched"),
        pytest.param(lambda: work, id="uncalled step"),
        pytest.param(lambda: 42, id="plain value"),
    ],
)
def test_gather_refuses_members_it_cannot_carry_out(member: Callable[[], Any]) -> None:
    with pytest.raises(TypeError, match="ce.gather"):
        ce.gather(work("ok"), member())


def test_a_refused_member_fails_the_run_with_type_error(engine: ce.Engine) -> None:
    @ce.workflow(name="gather.nested")
    def nested() -> Flow:
        return (yield ce.gather(work("a"), ce.gather(work("b"))))

    with pytest.raises(TypeError, match="ce.gather"):
        engine.run(nested, id="n")
    assert engine.history("n") == [] and ledger == []


# -- cancellation --------------------------------------------------------------------------


@ce.workflow(name="gather.cancel")
def cancellable(return_exceptions: bool) -> Flow:
    """Clean up with a step when cancelled at the gather."""
    try:
        return (yield ce.gather(work("x"), ce.wait("go"), return_exceptions=return_exceptions))
    except ce.Cancelled:
        yield work("cleanup")
        raise


@pytest.mark.parametrize("return_exceptions", [False, True])
def test_cancelling_a_run_that_waits_in_a_gather_raises_cancelled_there(
    db: str, return_exceptions: bool
) -> None:
    CRASH["cleanup"] = None  # and the process dies during the clean-up, once
    with ce.Engine(db) as engine:
        run = engine.start(cancellable, return_exceptions, id="c")
        engine.run_until_idle()
        assert run.status == "waiting"
        assert engine.cancel("c")
        with pytest.raises(Crash):
            engine.run_until_idle()
    with ce.Engine(db) as engine:
        # Cancellation wins over return_exceptions: it is raised, never returned.
        assert engine.run_until_idle().finished == ["c"]
        assert engine.get_run("c").status == "cancelled"
        with pytest.raises(ce.Cancelled):
            engine.get_run("c").result()
        log = engine.history("c")
    assert [(e.kind, e.status) for e in log] == [
        ("gather", "completed"),
        ("step", "completed"),
        ("wait", "failed"),
        ("step", "completed"),
    ]
    assert isinstance(log[2].error, ce.Cancelled)
    assert ledger == [("x", 1), ("cleanup", 1), ("cleanup", 2)]


def test_a_cancellation_at_a_new_gather_cancels_every_member_and_replays(db: str) -> None:
    CRASH["cleanup"] = None
    with ce.Engine(db) as engine:
        engine.start(cancellable, False, id="c")
        engine.cancel("c")
        with pytest.raises(Crash):
            engine.run_until_idle()
    with ce.Engine(db) as engine:
        report = engine.run_until_idle()
        assert report.stuck == {} and report.finished == ["c"]
        assert engine.get_run("c").status == "cancelled"
        assert [(e.kind, e.status) for e in engine.history("c")] == [
            ("gather", "completed"),
            ("step", "failed"),
            ("wait", "failed"),
            ("step", "completed"),
        ]
    assert ran("x", "cleanup") == {"x": 0, "cleanup": 2}


# -- property: completion order never shows in the log -----------------------------------------


@ce.step(retries=1, backoff=0)
def member(label: str, delay: float, kind: str) -> str:
    """Sleep, maybe crash, then succeed, fail, or fail only on the first attempt."""
    ledger.append((label, ce.current_step().attempt))
    time.sleep(delay)
    _maybe_crash(label)
    if kind == "fail" or (kind == "flaky" and ce.current_step().attempt == 1):
        raise Oops(label)
    return label.upper()


@ce.workflow(name="gather.property")
def fan(specs: list[tuple[float, str]], return_exceptions: bool) -> Flow:
    """A gather of members as specs say, then one more step."""
    calls = [member(f"m{i}", delay, kind) for i, (delay, kind) in enumerate(specs)]
    try:
        results = yield ce.gather(*calls, return_exceptions=return_exceptions)
    except Oops as exc:
        results = f"raised {exc.args[0]}"
    tail = yield work("tail")
    return results, tail


def comparable(result: Any) -> Any:
    """Exceptions compared by type and arguments."""
    results, tail = result
    if isinstance(results, list):
        results = [(type(r), r.args) if isinstance(r, BaseException) else r for r in results]
    return results, tail


@pytest.fixture(scope="module")
def shared_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One database file for every example of a property (each example has its own runs)."""
    return str(tmp_path_factory.mktemp("gather") / "runs.db")


# Each example starts threads and drives three runs (~40 ms): at most 120, even on CI.
@settings(max_examples=min(settings().max_examples, 120))
@given(
    specs=st.lists(
        st.tuples(st.sampled_from([0.0, 0.001, 0.003]), st.sampled_from(["ok", "fail", "flaky"])),
        min_size=1,
        max_size=4,
    ),
    return_exceptions=st.booleans(),
    data=st.data(),
)
def test_any_completion_order_and_crash_point_gives_the_same_result_and_log(
    shared_db: str, specs: list[tuple[float, str]], return_exceptions: bool, data: st.DataObject
) -> None:
    crash_at = data.draw(st.integers(0, len(specs) - 1), label="crash_at")
    ledger.clear()
    CRASH.clear()
    reference, crashed = f"reference-{uuid.uuid4().hex}", f"crashed-{uuid.uuid4().hex}"
    with ce.Engine(shared_db, durability="normal") as engine:
        expected = comparable(engine.run(fan, specs, return_exceptions, id=reference))
        CRASH[f"m{crash_at}"] = None
        with pytest.raises(Crash):
            engine.run(fan, specs, return_exceptions, id=crashed)
    # The engine is closed: every member thread of the crashed process has ended.
    with ce.Engine(shared_db, durability="normal") as engine:
        finished = {f"m{e.position - 1}" for e in engine.history(crashed) if e.done}
        ledger.clear()
        assert comparable(engine.run(fan, specs, return_exceptions, id=crashed)) == expected
        assert shape(engine, crashed) == shape(engine, reference)
    # A member whose outcome was committed before the crash never ran again.
    rerun = {label for label, _ in ledger}
    assert not rerun & finished
    assert f"m{crash_at}" in rerun and "tail" in rerun
