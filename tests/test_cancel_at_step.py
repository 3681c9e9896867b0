"""A cancel that comes while a step runs is raised at that step's own yield: a `finally:`
or `except ce.Cancelled:` around it runs, and so do the cleanup steps it yields; from
this engine, another engine or another process, drives parked or not, and after crashes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Crash, crash_at, engine_on
from stores import current

import contengine as ce
from contengine.testing import VirtualClock

pytestmark = pytest.mark.both_stores

START = 1_700_000_000.0
RUN = "r"
EXECUTED: list[str] = []
# Who sends the cancel while the step runs, the engines and the clock the test uses.
SENDER: dict[str, Any] = {}
SENDERS = ["driver", "other-engine", "child-process"]


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    EXECUTED.clear()
    SENDER.clear()
    yield
    EXECUTED.clear()
    SENDER.clear()


def cancel_from(sender: str) -> None:
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
                RUN,
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
        assert SENDER[sender].cancel(RUN) is True


@ce.step(name="cs.long")
def long_step(sender: str, seconds: float) -> str:
    """The run is cancelled while this step runs; it takes `seconds` on the engine's
    clock (0: shorter than the engine's periodic look for a cancel, 1: longer)."""
    EXECUTED.append("long")
    cancel_from(sender)
    SENDER["clock"].advance(seconds)
    return "long done"


@ce.step(name="cs.cleanup")
def cleanup(label: str = "cleanup") -> str:
    """Counts its executions."""
    EXECUTED.append(label)
    return label


@ce.workflow(name="cs.try_finally")
def try_finally(sender: str, seconds: float) -> Generator[Any, Any, str]:
    """The pattern the cancel must not skip the cleanup of."""
    try:
        yield long_step(sender, seconds)
        yield cleanup("after")
        return "finished"
    finally:
        yield cleanup()


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


@pytest.mark.parametrize("seconds", [0.0, 1.0])  # read by the next write / by a look
@pytest.mark.parametrize("threads", [1, 4])  # 4: drives park for their commits
@pytest.mark.parametrize("sender", SENDERS)
def test_the_cleanup_in_finally_runs_once_after_a_cancel_during_the_step(
    tmp_path: Path, sender: str, threads: int, seconds: float
) -> None:
    driver, other, _ = _engines(tmp_path)
    run = driver.start(try_finally, sender, seconds, id=RUN)

    driver.run_until_idle(threads=threads)

    assert run.status == "cancelled"
    assert outcomes(driver) == [
        ("cs.long", "failed", "Cancelled"),  # raised at its own yield
        ("cs.cleanup", "completed", "cleanup"),
    ]
    assert EXECUTED == ["long", "cleanup"]
    entry = driver.history(RUN)[0]
    assert isinstance(entry.error, ce.Cancelled)
    assert "its result was dropped: 'long done'" in (entry.error_text or "")
    with pytest.raises(ce.Cancelled):
        run.result()
    other.close()
    driver.close()


@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize("sender", SENDERS)
def test_except_cancelled_around_the_running_steps_yield_catches_it(
    tmp_path: Path, sender: str, threads: int
) -> None:
    driver, other, _ = _engines(tmp_path)

    @ce.workflow(name="cs.catches")
    def catches() -> Generator[Any, Any, str]:
        try:
            yield long_step(sender, 1.0)
        except ce.Cancelled:
            yield cleanup("caught")
            return "handled"
        yield cleanup("not cancelled")
        return "went on"

    run = driver.start(catches, id=RUN)
    driver.run_until_idle(threads=threads)

    assert run.result() == "handled"
    assert EXECUTED == ["long", "caught"]
    assert outcomes(driver) == [
        ("cs.long", "failed", "Cancelled"),
        ("cs.cleanup", "completed", "caught"),
    ]
    other.close()
    driver.close()


ATTEMPTS: list[int] = []


@pytest.mark.parametrize("retries", [0, 2])  # the last attempt fails / retries are left
@pytest.mark.parametrize("sender", ["driver", "other-engine"])
def test_a_failed_attempt_while_a_cancel_waits_is_not_retried(
    tmp_path: Path, sender: str, retries: int
) -> None:
    """The step's failure is dropped too: its yield gets ce.Cancelled, not the failure,
    and no attempt starts after the cancel."""
    driver, other, _ = _engines(tmp_path)
    ATTEMPTS.clear()

    @ce.step(name="cs.flaky", retries=retries, backoff=0)
    def flaky() -> str:
        ATTEMPTS.append(ce.current_step().attempt)
        cancel_from(sender)
        raise ValueError("failed while cancelled")

    @ce.workflow(name="cs.retries")
    def retried() -> Generator[Any, Any, str]:
        try:
            yield flaky()
        except ValueError:
            yield cleanup("handled the failure")
        finally:
            yield cleanup()
        return "went on"

    run = driver.start(retried, id=RUN)
    driver.run_until_idle()

    assert run.status == "cancelled"
    assert ATTEMPTS == [1]
    assert EXECUTED == ["cleanup"]
    assert outcomes(driver) == [
        ("cs.flaky", "failed", "Cancelled"),
        ("cs.cleanup", "completed", "cleanup"),
    ]
    assert "ValueError: failed while cancelled" in (driver.history(RUN)[0].error_text or "")
    other.close()
    driver.close()


@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize("sender", SENDERS)
def test_a_gather_with_a_member_running_when_the_cancel_comes_raises_it_at_its_yield(
    tmp_path: Path, sender: str, threads: int
) -> None:
    """The gather's yield gets ce.Cancelled once its running members ended: the member
    running when the cancel came is logged cancelled; the cleanup in finally runs."""
    driver, other, _ = _engines(tmp_path)

    @ce.workflow(name="cs.gathers")
    def gathers() -> Generator[Any, Any, str]:
        try:
            yield ce.gather(long_step(sender, 1.0), cleanup("member"))
            yield cleanup("after")
            return "finished"
        finally:
            yield cleanup()

    run = driver.start(gathers, id=RUN)
    driver.run_until_idle(threads=threads)

    assert run.status == "cancelled"
    log = outcomes(driver)
    assert log[1] == ("cs.long", "failed", "Cancelled")
    # The other member ended before or after the cancel: kept, or logged cancelled.
    assert log[2] in [("cs.cleanup", "completed", "member"), ("cs.cleanup", "failed", "Cancelled")]
    assert log[3:] == [("cs.cleanup", "completed", "cleanup")]
    assert EXECUTED.count("cleanup") == 1 and "after" not in EXECUTED
    other.close()
    driver.close()


def test_a_gather_member_waiting_when_the_cancel_comes_does_not_wait_on(
    tmp_path: Path,
) -> None:
    """Members not running (a timer) are cancelled with the gather, at once."""
    driver, other, _ = _engines(tmp_path)

    @ce.workflow(name="cs.gathers_a_timer")
    def gathers_a_timer() -> Generator[Any, Any, str]:
        try:
            yield ce.gather(long_step("driver", 1.0), ce.sleep(3600))
            return "finished"
        finally:
            yield cleanup()

    run = driver.start(gathers_a_timer, id=RUN)
    driver.run_until_idle(until=START + 60)

    assert run.status == "cancelled"
    assert [o[1:] for o in outcomes(driver)] == [
        ("completed", None),  # the gather's own entry
        ("failed", "Cancelled"),
        ("failed", "Cancelled"),
        ("completed", "cleanup"),
    ]
    other.close()
    driver.close()


# -- crashes ----------------------------------------------------------------------------


def _play(path: Path, crash: tuple[str, int] | None) -> tuple[ce.Engine, int, int]:
    """Drive try_finally, cancelled during its long step, to its end; with crash=(when,
    k) the k-th commit crashes (before or after writing) and a fresh engine on the file
    drives the run on."""
    clock = VirtualClock(START)
    store = crash_at(path, *crash) if crash else crash_at(path)
    engine = engine_on(path, clock, store)
    SENDER.update(driver=engine, clock=clock, db=path)
    engine.start(try_finally, "driver", 1.0, id=RUN)
    crashes = 0
    while True:
        try:
            engine.run_until_idle()
            break
        except Crash:
            crashes += 1
            engine.close()
            engine = engine_on(path, clock)
            SENDER["driver"] = engine
    return engine, crashes, store.commits


def test_a_crash_at_any_commit_replays_the_cancel_at_the_steps_yield(tmp_path: Path) -> None:
    """Whatever commit a crash interrupts, the run ends the same: ce.Cancelled at the
    long step's yield (replayed from the log after the crash), and the cleanup done."""
    want = [("cs.long", "failed", "Cancelled"), ("cs.cleanup", "completed", "cleanup")]
    reference, crashes, commits = _play(tmp_path / "ref.db", None)
    assert crashes == 0 and reference.get_run(RUN).status == "cancelled"
    assert outcomes(reference) == want
    reference.close()
    for when in ("before", "after"):
        for k in range(1, commits + 1):
            EXECUTED.clear()
            engine, crashes, _ = _play(tmp_path / f"{when}-{k}.db", (when, k))
            assert crashes == 1, (when, k)
            assert engine.get_run(RUN).status == "cancelled", (when, k)
            assert outcomes(engine) == want, (when, k)
            # At least once: the cleanup runs again only if its own outcome was lost.
            assert EXECUTED.count("cleanup") in (1, 2), (when, k, EXECUTED)
            assert "after" not in EXECUTED, (when, k)
            engine.close()
