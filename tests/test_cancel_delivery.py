"""A cancel is delivered once, a cancel during the last step is not lost, and a running
step sees its run cancelled: from this engine, another engine, or another process."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import engine_on, wait_until
from stores import current

import contengine as ce
from contengine.testing import VirtualClock

pytestmark = pytest.mark.both_stores

START = 1_700_000_000.0
RUN = "r"
EXECUTED: list[str] = []
# Who sends the cancel while the long step runs, and the engines the test uses.
SENDER: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    EXECUTED.clear()
    SENDER.clear()
    yield
    EXECUTED.clear()
    SENDER.clear()


def cancel_from(sender: str, run_id: str = RUN) -> None:
    """Cancel the run as `sender` does: the driving engine, another engine on the same
    file, or `contengine cancel` in a child process (waited for: no timing involved)."""
    if sender == "child-process":
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "contengine",
                "cancel",
                run_id,
                "--db",
                current().target(SENDER["db"]),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    else:
        assert SENDER[sender].cancel(run_id) is True


@ce.step(name="cd.long")
def long_step(sender: str) -> str:
    """A step longer than the engine's periodic look for a cancel, cancelled meanwhile."""
    EXECUTED.append("long")
    cancel_from(sender)
    SENDER["clock"].advance(1.0)  # a long step, on the engine's clock
    return "long done"


@ce.step(name="cd.note")
def note(label: str) -> str:
    """Record an execution."""
    EXECUTED.append(label)
    return label


@ce.workflow(name="cd.cleans_up")
def cleans_up(sender: str) -> Generator[Any, Any, str]:
    """A long step, cancelled while it runs; a finally block yields two cleanup steps."""
    try:
        yield long_step(sender)
        yield note("after")
        return "finished"
    finally:
        yield note("cleanup 1")
        yield note("cleanup 2")


@ce.workflow(name="cd.last_step")
def last_step(sender: str) -> Generator[Any, Any, str]:
    """The run is cancelled during its last step."""
    try:
        value = yield long_step(sender)
    finally:
        EXECUTED.append("finally")
    return f"returned {value}"


@ce.workflow(name="cd.last_step_raises")
def last_step_raises(sender: str) -> Generator[Any, Any, str]:
    """The run is cancelled during its last step, and then fails on its own."""
    yield long_step(sender)
    raise ValueError("failed after the step")


SENDERS = ["driver", "other-engine", "child-process"]


def _engines(tmp_path: Path) -> tuple[ce.Engine, ce.Engine, VirtualClock]:
    clock = VirtualClock(START)
    db = tmp_path / "c.db"
    driver, other = engine_on(db, clock), engine_on(db, clock)
    SENDER.update(driver=driver, clock=clock, db=db)
    SENDER["other-engine"] = other
    return driver, other, clock


def outcomes(engine: ce.Engine) -> list[tuple[str, str, Any]]:
    """(name, status, value or exception type name) of every log entry."""
    return [
        (e.name, e.status, type(e.error).__name__ if e.status == "failed" else e.value)
        for e in engine.history(RUN)
    ]


def cancel_flag(engine: ce.Engine) -> bool:
    """Whether the run's row still asks for a cancel."""
    row = engine.store.get_run(RUN)
    assert row is not None
    return row.cancel_requested


# -- delivered once --------------------------------------------------------------------


@pytest.mark.parametrize("sender", SENDERS)
def test_a_cancel_during_a_long_step_is_delivered_once_and_the_cleanup_runs(
    tmp_path: Path, sender: str
) -> None:
    driver, other, _ = _engines(tmp_path)
    run = driver.start(cleans_up, sender, id=RUN)

    driver.run_until_idle()

    assert run.status == "cancelled"
    assert outcomes(driver) == [
        ("cd.long", "failed", "Cancelled"),  # raised at the yield of the step that ran
        ("cd.note", "completed", "cleanup 1"),
        ("cd.note", "completed", "cleanup 2"),
    ]
    assert EXECUTED == ["long", "cleanup 1", "cleanup 2"]
    assert not cancel_flag(driver)
    other.close()
    driver.close()


def test_a_cancel_delivered_by_one_engine_is_not_delivered_again_by_another(
    tmp_path: Path,
) -> None:
    """The driver's cancel is delivered; another engine takes the run over in its cleanup
    (the first one stopped) and runs the cleanup without a second ce.Cancelled."""
    driver, other, clock = _engines(tmp_path)

    @ce.workflow(name="cd.naps_in_cleanup")
    def naps() -> Generator[Any, Any, str]:
        try:
            yield long_step("driver")
            yield note("after")
            return "finished"
        finally:
            yield ce.sleep(60)  # set aside here: the next drive is another engine's
            yield note("cleanup")

    run = driver.start(naps, id=RUN)
    driver.run_until_idle(until=START + 1)
    assert run.status == "sleeping", outcomes(driver)
    driver.close()
    clock.advance(120)
    other.run_until_idle()

    assert other.get_run(RUN).status == "cancelled"
    assert [o[1] for o in outcomes(other)] == ["failed", "completed", "completed"]
    assert EXECUTED == ["long", "cleanup"]
    other.close()


def test_a_second_cancel_after_the_first_was_delivered_is_delivered_again(
    tmp_path: Path,
) -> None:
    """Each request made once the previous one is delivered is raised once more."""
    driver, other, _ = _engines(tmp_path)

    @ce.step(name="cd.cancels_again")
    def cancels_again() -> str:
        assert other.cancel(RUN) is True
        return "asked again"

    @ce.workflow(name="cd.catches_two")
    def catches_two() -> Generator[Any, Any, list[str]]:
        caught = []
        for _ in range(2):
            try:
                yield long_step("driver")
                yield note("not reached")
            except ce.Cancelled:
                caught.append("cancelled")
                try:
                    # The second request, sent after the first's delivery, while this
                    # step runs: raised at its yield.
                    yield cancels_again()
                    yield note("not reached either")
                except ce.Cancelled:
                    caught.append("cancelled again")
                    break
        return caught

    run = driver.start(catches_two, id=RUN)
    driver.run_until_idle()
    assert run.result() == ["cancelled", "cancelled again"]
    assert EXECUTED == ["long"]
    other.close()
    driver.close()


# -- a cancel during the last step -----------------------------------------------------


@pytest.mark.parametrize("threads", [1, 4])  # 4: drives park for their commits
@pytest.mark.parametrize("sender", SENDERS)
def test_a_cancel_during_the_last_step_ends_the_run_cancelled(
    tmp_path: Path, sender: str, threads: int
) -> None:
    driver, other, _ = _engines(tmp_path)
    run = driver.start(last_step, sender, id=RUN)

    driver.run_until_idle(threads=threads)

    assert run.status == "cancelled"
    with pytest.raises(ce.Cancelled, match="run 'r' was cancelled"):
        run.result()  # the return value is dropped
    # The finally block is workflow code: a cancel read by the end's write (another
    # process's) is raised at the step's yield by a replay, which runs it once more.
    assert EXECUTED[0] == "long" and set(EXECUTED[1:]) == {"finally"}
    assert outcomes(driver) == [("cd.long", "failed", "Cancelled")]
    assert not cancel_flag(driver)
    assert driver.cancel(RUN) is False
    other.close()
    driver.close()


@pytest.mark.parametrize("sender", ["driver", "other-engine"])
def test_a_cancel_during_the_last_step_comes_before_the_workflow_fails(
    tmp_path: Path, sender: str
) -> None:
    """Raised at the last step's yield: the code after it, which would fail, never runs."""
    driver, other, _ = _engines(tmp_path)
    run = driver.start(last_step_raises, sender, id=RUN)
    driver.run_until_idle()
    assert run.status == "cancelled"
    with pytest.raises(ce.Cancelled):
        run.result()
    assert not cancel_flag(driver)
    other.close()
    driver.close()


# -- a cancelled run frees its queue's slot ---------------------------------------------

IN_STEP = threading.Event()
RELEASE = threading.Event()


@ce.step(name="cd.held")
def held() -> str:
    """Runs until the test lets it go."""
    IN_STEP.set()
    assert RELEASE.wait(60)
    return "held"


@ce.workflow(name="cd.queued_held")
def queued_held() -> Generator[Any, Any, str]:
    """Holds its queue's one slot in a step; cleans up when cancelled."""
    try:
        yield held()
        yield note("after held")
        return "finished"
    finally:
        yield note("cleanup held")


@ce.workflow(name="cd.queued_quick")
def queued_quick() -> Generator[Any, Any, str]:
    """The queue's next run."""
    value: str = yield note("quick")
    return value


@pytest.mark.parametrize("sender", SENDERS)
def test_a_cancelled_run_frees_its_queue_slot_at_once(tmp_path: Path, sender: str) -> None:
    IN_STEP.clear()
    RELEASE.clear()
    db = tmp_path / "q.db"
    engine, other = ce.Engine(db), ce.Engine(db)
    SENDER.update(driver=engine, db=db)
    SENDER["other-engine"] = other
    engine.set_queue("solo", concurrency=1)
    first = engine.start(queued_held, id="first", queue="solo")
    try:
        with engine.worker(threads=2):
            assert IN_STEP.wait(30)
            second = engine.start(queued_quick, id="second", queue="solo")
            assert second.status == "pending"  # the queue's one slot is taken

            cancel_from(sender, "first")

            # The next run starts and ends while the cancelled run's step still runs.
            assert wait_until(lambda: second.status == "completed", timeout=30)
            assert not RELEASE.is_set() and first.status == "running"
            RELEASE.set()
            with pytest.raises(ce.Cancelled):
                first.result(timeout=30)
    finally:
        RELEASE.set()
    assert [(e.name, e.status) for e in engine.history("first")] == [
        ("cd.held", "failed"),  # cancelled while it ran: its result was dropped
        ("cd.note", "completed"),
    ]
    assert EXECUTED == ["quick", "cleanup held"]
    other.close()
    engine.close()


# -- a running step is told --------------------------------------------------------------

TOLD: list[bool] = []


@ce.step(name="cd.watches")
def watches() -> str:
    """Works in small pieces until its run is cancelled, then returns early."""
    IN_STEP.set()
    pause = threading.Event()
    for _ in range(6000):  # a minute at most
        if ce.current_step().cancelled:
            return "stopped early"
        pause.wait(0.01)  # one piece of work
    return "ran to the end"


@ce.step(name="cd.tidies")
def tidies() -> str:
    """A cleanup step after the cancel was delivered: not told of that cancel."""
    TOLD.append(ce.current_step().cancelled)
    return "tidied"


@ce.workflow(name="cd.stops_early")
def stops_early() -> Generator[Any, Any, str]:
    """A long step that looks at .cancelled; a cleanup step in finally."""
    try:
        yield watches()
        yield note("after watching")
        return "finished"
    finally:
        yield tidies()


@pytest.mark.parametrize("sender", SENDERS)
def test_a_running_step_sees_its_run_cancelled_and_returns_early(
    tmp_path: Path, sender: str
) -> None:
    IN_STEP.clear()
    TOLD.clear()
    db = tmp_path / "w.db"
    engine, other = ce.Engine(db), ce.Engine(db)
    SENDER.update(driver=engine, db=db)
    SENDER["other-engine"] = other
    run = engine.start(stops_early, id=RUN)
    with engine.worker(threads=1):
        assert IN_STEP.wait(30)
        cancel_from(sender)
        with pytest.raises(ce.Cancelled):
            run.result(timeout=60)
    assert outcomes(engine) == [
        ("cd.watches", "failed", "Cancelled"),  # what it returned early is dropped
        ("cd.tidies", "completed", "tidied"),
    ]
    assert TOLD == [False]  # the cleanup is not told of the cancel it cleans up after
    other.close()
    engine.close()


def test_a_step_of_a_run_not_cancelled_is_not_told(tmp_path: Path) -> None:
    TOLD.clear()

    @ce.workflow(name="cd.just_tidies")
    def just_tidies() -> Generator[Any, Any, str]:
        value: str = yield tidies()
        return value

    with ce.Engine(tmp_path / "n.db") as engine:
        run = engine.start(just_tidies)
        engine.run_until_idle()
        assert run.result() == "tidied"
    assert TOLD == [False]


def test_a_cancel_callback_runs_once_when_the_running_step_is_told(tmp_path: Path) -> None:
    """The hook a step that can be interrupted would use (an async step's task)."""
    IN_STEP.clear()
    RELEASE.clear()
    calls: list[str] = []

    @ce.step(name="cd.registers")
    def registers() -> str:
        watch = ce.current_step()._watch
        assert watch is not None
        watch.on_cancel(RUN, lambda: calls.append("interrupted"))
        IN_STEP.set()
        assert RELEASE.wait(60)
        return "done"

    @ce.workflow(name="cd.registering")
    def registering() -> Generator[Any, Any, str]:
        value: str = yield registers()
        return value

    db = tmp_path / "h.db"
    with ce.Engine(db) as engine, ce.Engine(db) as other:
        run = engine.start(registering, id=RUN)
        with engine.worker(threads=1):
            assert IN_STEP.wait(30)
            other.cancel(RUN)  # another engine's: the watch reads it from the file
            assert wait_until(lambda: calls == ["interrupted"], timeout=30)
            RELEASE.set()
            with pytest.raises(ce.Cancelled):
                run.result(timeout=30)
    assert calls == ["interrupted"]
