"""Cancellation: engine.cancel(run_id) raises ce.Cancelled inside the run at its current yield.

The Cancelled is logged at that position (the entry fails with it), so a replay
raises it at the same place, and `finally:` / `except ce.Cancelled:` blocks run,
and may yield cleanup steps, identically on replay. ce.Cancelled is a
BaseException: `except Exception` in a workflow does not swallow it. If it
propagates out, the run is "cancelled" and run.result() raises it.

Time is a VirtualClock; crashes are simulated in-process (a step or a commit
raises a BaseException, and a new Engine on the same file carries on).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Crash, crash_at, engine_on
from stores import OnCurrentStore, current

import contengine as ce
from contengine.testing import VirtualClock

pytestmark = pytest.mark.both_stores

START = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
DAY = 86_400.0
RUN = "r"


# -- the world outside the engine ----------------------------------------------------

EXECUTED: list[str] = []  # every step execution that got past its crash check, in order
ARMED: set[str] = set()  # steps that crash (once) on their next execution
CANCEL_FROM_STEP: list[ce.Engine] = []  # the engine a `cancels_me` step cancels through


@pytest.fixture(autouse=True)
def _fresh_world() -> Iterator[None]:
    EXECUTED.clear()
    ARMED.clear()
    CANCEL_FROM_STEP.clear()
    yield
    EXECUTED.clear()
    ARMED.clear()
    CANCEL_FROM_STEP.clear()


def enter(label: str) -> None:
    """Crash here if this step is armed; otherwise record that it ran."""
    if label in ARMED:
        ARMED.discard(label)
        raise Crash
    EXECUTED.append(label)


@ce.step
def note(label: str) -> str:
    """Record an execution under label; returns the label."""
    enter(label)
    return label


@ce.step(name="cancel.flaky", retries=3, backoff=600.0)
def flaky() -> None:
    """Fails; retried after ten minutes."""
    enter("flaky")
    raise ConnectionError("down")


@ce.step
def cancels_me(run_id: str) -> str:
    """Cancels its own run from inside a step, as another process would meanwhile."""
    enter("cancels_me")
    assert CANCEL_FROM_STEP[0].cancel(run_id)
    return "asked"


# -- workflows -------------------------------------------------------------------------


def _stop_at(where: str) -> Generator[Any, Any, None]:
    """Yield the request the run is stopped at when it is cancelled."""
    if where == "sleep":
        yield ce.sleep(DAY)
    elif where == "wait":
        yield ce.wait("approve", timeout=DAY)
    elif where == "backoff":
        yield flaky()
    else:  # "pending": the run was never driven; its first yield is a step
        yield note("first")


@ce.workflow(name="cancel.guarded")
def guarded(where: str) -> Generator[Any, Any, str]:
    """Stop somewhere; a finally block yields a cleanup step."""
    try:
        yield from _stop_at(where)
        yield note("unreachable")
        return "finished"
    finally:
        yield note("cleanup")


@ce.workflow(name="cancel.compensating")
def compensating() -> Generator[Any, Any, str]:
    """Charge, sleep; if cancelled meanwhile, refund and let the Cancelled go on."""
    yield note("charge")
    try:
        yield ce.sleep(DAY)
    except ce.Cancelled:
        yield note("refund")
        raise
    return "kept"


@ce.workflow(name="cancel.shrugs")
def shrugs() -> Generator[Any, Any, str]:
    """Catch the Cancelled and end normally."""
    try:
        yield ce.wait("never")
    except ce.Cancelled:
        yield note("tidy")
        return "stopped early"
    return "answered"


@ce.workflow(name="cancel.swallower")
def swallower() -> Generator[Any, Any, str]:
    """Catch every Exception around a sleep: that must not catch ce.Cancelled."""
    try:
        yield ce.sleep(DAY)
    except Exception:
        yield note("swallowed")
        return "swallowed"
    return "slept"


@ce.workflow(name="cancel.quick")
def quick(fail: bool) -> Generator[Any, Any, str]:
    """One step; then return or raise."""
    yield note("only")
    if fail:
        raise ValueError("as planned")
    return "done"


@ce.workflow(name="cancel.busy")
def busy(then: str) -> Generator[Any, Any, str]:
    """A step during which the run is cancelled, then a sleep, a wait or another step."""
    yield cancels_me(RUN)
    if then == "sleep":
        yield ce.sleep(DAY)
    elif then == "wait":
        yield ce.wait("never")
    else:
        yield note("next")
    return "went on"


@ce.workflow(name="cancel.waits")
def waits() -> Generator[Any, Any, Any]:
    """Wait for a signal without a timeout."""
    return (yield ce.wait("go"))


# -- helpers ---------------------------------------------------------------------------


def outcomes(engine: ce.Engine, run_id: str = RUN) -> list[tuple[str, str, str, Any]]:
    """(kind, name, status, value or exception type name) of every log entry."""
    rows = []
    for e in engine.history(run_id):
        what = type(e.error).__name__ if e.status == "failed" else e.value
        rows.append((e.kind, e.name, e.status, what))
    return rows


def run_row(path: Path, run_id: str = RUN) -> tuple[Any, ...]:
    """The run's stored row, read with SQL."""
    with current().sql(path) as conn:
        row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    return tuple(row)


def cancel_requested(path: Path, run_id: str = RUN) -> int:
    """The run's stored cancellation flag: 1 while a cancel waits to be delivered."""
    with current().sql(path) as conn:
        (flag,) = conn.execute(
            "SELECT cancel_requested FROM runs WHERE id = ?", (run_id,)
        ).fetchone()
    return int(flag == 1)  # 2: delivered (the run stays out of its queue's count)


def snapshot(engine: ce.Engine, run_id: str = RUN) -> list[tuple[Any, ...]]:
    """Every stored field of the run's log."""
    return [
        (e.position, e.kind, e.name, e.key, e.status, e.attempts, e.crashes, e.started_at,
         e.finished_at, e.due_at, e.error_text, e._data)
        for e in engine.history(run_id)
    ]  # fmt: skip


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(START)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "cancel.db"


@pytest.fixture
def engine(db: Path, clock: VirtualClock) -> Iterator[ce.Engine]:
    with engine_on(db, clock) as eng:
        yield eng


# -- where a run can be cancelled ------------------------------------------------------------


STOPS = {
    # where: (status before the cancel, the entry the Cancelled is logged at)
    "sleep": ("sleeping", ("sleep", "", "failed", "Cancelled")),
    "wait": ("waiting", ("wait", "approve", "failed", "Cancelled")),
    "backoff": ("running", ("step", "cancel.flaky", "failed", "Cancelled")),
    "pending": ("pending", ("step", "note", "failed", "Cancelled")),
}


@pytest.mark.parametrize("crash_in_cleanup", [False, True], ids=["clean", "crash-in-cleanup"])
@pytest.mark.parametrize("where", list(STOPS))
def test_a_cancelled_run_runs_its_finally_cleanup_once_and_ends_cancelled(
    db: Path, clock: VirtualClock, where: str, crash_in_cleanup: bool
) -> None:
    status, stopped = STOPS[where]
    engine = engine_on(db, clock)
    run = engine.start(guarded, where, id=RUN)
    if where != "pending":
        engine.run_until_idle(until=START + 10)
    assert run.status == status
    expected_runs = [*EXECUTED, "cleanup"]  # "flaky" ran once already for the backoff

    assert engine.cancel(RUN) is True
    assert cancel_requested(db) == 1
    if crash_in_cleanup:
        ARMED.add("cleanup")
        with pytest.raises(Crash):
            engine.run_until_idle()
        engine.close()
        # The Cancelled was logged with the cleanup step it led to, and the request cleared.
        engine = engine_on(db, clock)
        assert outcomes(engine) == [stopped, ("step", "note", "running", None)]
        assert cancel_requested(db) == 0
        run = engine.get_run(RUN)
        assert run.status == "running"
    engine.run_until_idle()

    assert run.status == "cancelled"
    with pytest.raises(ce.Cancelled, match="run 'r' was cancelled"):
        run.result()
    # Raised once, at the yield the run stood at; the cleanup ran (again after a crash).
    assert outcomes(engine) == [stopped, ("step", "note", "completed", "cleanup")]
    assert [(e.attempts, e.crashes) for e in engine.history(RUN)][1] == (
        (2, 1) if crash_in_cleanup else (1, 0)
    )
    assert expected_runs == EXECUTED
    assert cancel_requested(db) == 0
    # Prompt: the clock never jumped to the wake time, deadline or retry.
    assert clock.now() == START
    entry = engine.history(RUN)[0]
    assert isinstance(entry.error, ce.Cancelled)
    assert entry.error_text is not None and "Cancelled" in entry.error_text
    engine.close()


@pytest.mark.parametrize("crash", [False, True], ids=["clean", "crash-in-refund"])
def test_an_except_cancelled_block_compensates_and_replays_the_same(
    db: Path, clock: VirtualClock, crash: bool
) -> None:
    engine = engine_on(db, clock)
    run = engine.start(compensating, id=RUN)
    engine.run_until_idle(until=START + 60)
    engine.cancel(RUN)
    if crash:
        ARMED.add("refund")
        with pytest.raises(Crash):
            engine.run_until_idle()
        engine.close()
        engine = engine_on(db, clock)
        run = engine.get_run(RUN)
    engine.run_until_idle()

    assert run.status == "cancelled"
    with pytest.raises(ce.Cancelled):
        run.result()
    assert outcomes(engine) == [
        ("step", "note", "completed", "charge"),
        ("sleep", "", "failed", "Cancelled"),
        ("step", "note", "completed", "refund"),
    ]
    assert EXECUTED == ["charge", "refund"]
    engine.close()


def test_a_workflow_that_catches_cancelled_and_returns_completes(engine: ce.Engine) -> None:
    run = engine.start(shrugs, id=RUN)
    engine.run_until_idle()
    assert run.status == "waiting"

    assert engine.cancel(RUN) is True
    engine.run_until_idle()

    assert run.status == "completed"
    assert run.result() == "stopped early"
    assert outcomes(engine) == [
        ("wait", "never", "failed", "Cancelled"),
        ("step", "note", "completed", "tidy"),
    ]
    # Finished now: a second cancel is a no-op.
    assert engine.cancel(RUN) is False
    assert run.status == "completed"


def test_except_exception_in_a_workflow_does_not_catch_cancelled(engine: ce.Engine) -> None:
    assert issubclass(ce.Cancelled, BaseException)
    assert not issubclass(ce.Cancelled, Exception)
    run = engine.start(swallower, id=RUN)
    engine.run_until_idle(until=START + 1)
    engine.cancel(RUN)

    engine.run_until_idle()

    assert run.status == "cancelled"
    with pytest.raises(ce.Cancelled):
        run.result()
    assert outcomes(engine) == [("sleep", "", "failed", "Cancelled")]
    assert EXECUTED == []


def test_cancelling_twice_before_it_is_delivered_raises_it_once(
    engine: ce.Engine, db: Path
) -> None:
    run = engine.start(guarded, "wait", id=RUN)
    engine.run_until_idle(until=START + 1)
    assert engine.cancel(RUN) is True
    assert engine.cancel(RUN) is True

    engine.run_until_idle()

    assert run.status == "cancelled"
    assert [e.status for e in engine.history(RUN)] == ["failed", "completed"]
    assert EXECUTED == ["cleanup"]
    assert cancel_requested(db) == 0


# -- cancels that change nothing -----------------------------------------------------------


@pytest.mark.parametrize("end", ["completed", "failed", "cancelled"])
def test_cancelling_a_finished_run_returns_false_and_changes_nothing(
    engine: ce.Engine, db: Path, clock: VirtualClock, end: str
) -> None:
    if end == "cancelled":
        run = engine.start(waits, id=RUN)
        engine.cancel(RUN)
    else:
        run = engine.start(quick, end == "failed", id=RUN)
    engine.run_until_idle()
    assert run.status == end
    row, log = run_row(db), snapshot(engine)
    clock.advance(60)

    assert engine.cancel(RUN) is False

    assert run_row(db) == row  # status, updated_at, due_at, cancel_requested: all as they were
    assert snapshot(engine) == log
    if end == "completed":
        assert run.result() == "done"
    else:
        with pytest.raises(ValueError if end == "failed" else ce.Cancelled):
            run.result()
    engine.run_until_idle()
    assert run_row(db) == row


def test_cancelling_an_unknown_run_raises_run_not_found(engine: ce.Engine, db: Path) -> None:
    with pytest.raises(ce.RunNotFound, match="nope"):
        engine.cancel("nope")
    assert engine.runs() == []


# -- crashes around a cancel ---------------------------------------------------------------


def _play(path: Path, crash: tuple[str, int] | None) -> tuple[ce.Engine, int, int]:
    """Run `compensating`, cancel it while it sleeps, drive it to its end.

    With crash=(when, k) the k-th commit crashes (before or after writing), and
    a fresh engine on the file does the interrupted drive again.
    """
    clock = VirtualClock(START)
    store = crash_at(path, *crash) if crash else crash_at(path)
    engine = engine_on(path, clock, store)
    engine.start(compensating, id=RUN)
    crashes = 0
    for action in ("drive", "cancel", "drive"):
        while True:
            try:
                if action == "cancel":
                    assert engine.cancel(RUN) is True
                else:
                    engine.run_until_idle(until=START + 60)
                break
            except Crash:
                crashes += 1
                engine.close()
                engine = engine_on(path, clock)
    return engine, crashes, store.commits


def _state(engine: ce.Engine, path: Path) -> tuple[Any, ...]:
    run = engine.get_run(RUN)
    log = [
        (e.kind, e.name, e.status, e.started_at, e.finished_at,
         type(e.error).__name__ if e.status == "failed" else e.value)
        for e in engine.history(RUN)
    ]  # fmt: skip
    return run.status, log, cancel_requested(path)


def test_a_crash_at_any_commit_around_a_cancel_changes_nothing(tmp_path: Path) -> None:
    reference, crashes, commits = _play(tmp_path / "ref.db", None)
    want = _state(reference, tmp_path / "ref.db")
    assert crashes == 0 and want[0] == "cancelled"
    reference.close()
    for when in ("before", "after"):
        for k in range(1, commits + 1):
            EXECUTED.clear()
            path = tmp_path / f"{when}-{k}.db"
            engine, crashes, _ = _play(path, (when, k))
            assert crashes == 1, (when, k)
            assert _state(engine, path) == want, (when, k)
            # The refund runs once more at most (when its own commit was lost).
            assert EXECUTED.count("refund") in (1, 2), (when, k, EXECUTED)
            engine.close()


# -- promptness --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("then", "via"),
    [
        ("sleep", "this-engine"),
        ("wait", "this-engine"),
        ("step", "this-engine"),
        ("sleep", "another-engine"),
        ("wait", "another-engine"),
        # Another engine's cancel is read by the write that would log the step's outcome
        # with the next step: neither is written, and the step's yield gets it.
        ("step", "another-engine"),
    ],
)
def test_a_cancel_sent_while_a_step_runs_is_delivered_at_that_steps_yield(
    engine: ce.Engine, db: Path, clock: VirtualClock, then: str, via: str
) -> None:
    """The cancel arrives during a step; the next request must not bury or outrun it,
    nor start."""
    other = engine_on(db, clock) if via == "another-engine" else None
    CANCEL_FROM_STEP.append(other or engine)
    run = engine.start(busy, then, id=RUN)

    engine.run_until_idle(until=START + 60)

    assert EXECUTED == ["cancels_me"]
    assert run.status == "cancelled"
    assert outcomes(engine) == [("step", "cancels_me", "failed", "Cancelled")]
    assert cancel_requested(db) == 0
    assert clock.now() == START
    if other is not None:
        other.close()


def test_result_wakes_within_moments_of_a_cancel_from_another_thread(tmp_path: Path) -> None:
    with ce.Engine(tmp_path / "real.db") as engine:
        run = engine.start(waits, id=RUN)
        timer = threading.Timer(0.2, engine.cancel, args=(RUN,))
        began = time.monotonic()
        timer.start()
        try:
            with pytest.raises(ce.Cancelled):
                run.result(timeout=5)
        finally:
            timer.cancel()
        elapsed = time.monotonic() - began
        assert run.status == "cancelled"
    assert 0.15 < elapsed < 2.0


@ce.workflow(name="tests.cancel.cleans_once")
def cleans_once() -> Generator[Any, Any, str]:
    """Catches one cancel, cleans up, naps and returns."""
    try:
        yield ce.sleep(3600)
    except ce.Cancelled:
        yield ce.sleep(60)  # goes idle: the next drive may be another engine's
        return "cleaned up once"
    return "never cancelled"


def test_a_cancel_delivered_by_another_engine_is_not_delivered_again(tmp_path: Path) -> None:
    """A cancels, B delivers it; when A drives the run later it does not cancel it again."""
    clock = VirtualClock(1_700_000_000.0)
    path = tmp_path / "c.db"
    with ce.Engine(path, clock=clock) as a, ce.Engine(path, clock=clock) as b:
        run = a.start(cleans_once)
        a.run_until_idle(until=clock.now())
        assert a.cancel(run.id)
        b.run_until_idle(until=clock.now())  # delivered by b: now asleep in the except block
        assert run.status == "sleeping"
        a.run_until_idle()
        assert run.result() == "cleaned up once"


class _CancelWriteThenPause(OnCurrentStore):
    """request_cancel() commits, says so, then pauses: a thread switch at the worst time."""

    committed = threading.Event()

    def request_cancel(self, run_id: str, now: float) -> bool:
        requested = super().request_cancel(run_id, now)
        _CancelWriteThenPause.committed.set()
        time.sleep(0.2)
        return requested


@pytest.mark.parametrize("threads", [1, 4])
def test_a_cancel_read_from_the_row_before_cancel_returns_is_raised_once(
    tmp_path: Path, threads: int
) -> None:
    """The drive reads the flag with its write while cancel() is between its write and
    its note in memory: the cancel is raised once, and the cleanup steps run."""
    _CancelWriteThenPause.committed.clear()
    in_step = threading.Event()
    release = threading.Event()
    cancel_returned = threading.Event()

    @ce.step(name=f"cancel.held{threads}")
    def held() -> int:
        in_step.set()
        assert release.wait(5)
        return 1

    @ce.step(name=f"cancel.cleanup{threads}")
    def cleanup(i: int) -> int:
        assert cancel_returned.wait(5)  # the note in memory is made by now
        return i

    @ce.workflow(name=f"cancel.cleans_after_held{threads}")
    def wf() -> Generator[Any, Any, Any]:
        try:
            yield held()
            yield held()
        except ce.Cancelled:
            total = 0
            for i in range(3):
                total += yield cleanup(i)
            return ("cleaned", total)
        return "not cancelled"

    engine = ce.Engine(store=_CancelWriteThenPause(str(tmp_path / "c.db")))
    run = engine.start(wf, id=RUN)
    driving = threading.Thread(target=engine.run_until_idle, kwargs={"threads": threads})
    driving.start()
    assert in_step.wait(5)

    def cancel() -> None:
        assert engine.cancel(RUN)
        cancel_returned.set()

    canceller = threading.Thread(target=cancel)
    canceller.start()
    assert _CancelWriteThenPause.committed.wait(5)
    release.set()  # the step's write reads the flag while cancel() pauses
    driving.join(10)
    canceller.join(10)
    assert run.result() == ("cleaned", 3)
    failed = [e for e in engine.history(RUN) if e.status == "failed"]
    assert [e.name for e in failed] == [f"cancel.held{threads}"]
    engine.close()


@pytest.mark.parametrize("sender", ["this engine", "another engine"])
def test_a_cancel_during_a_step_retried_at_once_stops_its_retries(
    tmp_path: Path, sender: str
) -> None:
    """A step fails and is retried at once: a cancel sent during the first attempt is
    raised at its yield instead of the next attempt starting."""
    path = tmp_path / "c.db"
    attempts: list[int] = []
    engine = ce.Engine(path)

    @ce.step(name=f"cancel.flaky_{sender[0]}", retries=5, backoff=0)
    def flaky() -> None:
        attempts.append(ce.current_step().attempt)
        if len(attempts) == 1:
            if sender == "this engine":
                engine.cancel(RUN)
            else:
                with ce.Engine(path) as other:
                    other.cancel(RUN)
        raise RuntimeError("the service is down")

    @ce.workflow(name=f"cancel.retries_{sender[0]}")
    def wf() -> Generator[Any, Any, Any]:
        try:
            yield flaky()
        except ce.Cancelled:
            return "cancelled while retrying"
        return "not cancelled"

    run = engine.start(wf, id=RUN)
    engine.run_until_idle()
    assert run.result() == "cancelled while retrying"
    assert attempts == [1]
    (entry,) = engine.history(RUN)
    assert entry.status == "failed" and "Cancelled" in (entry.error_text or "")
    engine.close()
