"""Changing code under runs in flight: patches, step names, argument binding, diffs.

Crashes here are simulated in-process where only the replay matters: a step raises a
BaseException, which leaves its entry in flight, and a new Engine on the same file
rebuilds the run from its log with the code registered now.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Crash

import contengine as ce
from contengine.driver import Driver, Outcome, Pending, Returned
from contengine.testing import VirtualClock

START = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
Body = Callable[..., Generator[Any, Any, Any]]

EXECUTED: list[str] = []  # every step execution that got past its crash check, in order
ARMED: set[str] = set()  # steps that crash (once) on their next execution


@pytest.fixture(autouse=True)
def _fresh_world() -> Iterator[None]:
    EXECUTED.clear()
    ARMED.clear()
    yield
    EXECUTED.clear()
    ARMED.clear()


def enter(name: str) -> None:
    """Crash here if this step is armed; otherwise record that it ran."""
    if name in ARMED:
        ARMED.discard(name)
        raise Crash
    EXECUTED.append(name)


@ce.step(name="versioning.work")
def work(label: str) -> str:
    """A step that records that it ran."""
    enter(label)
    return label.upper()


def define(name: str, body: Body) -> ce.Workflow[..., Any]:
    """Register body as the current code of workflow `name`, as a redeploy would."""

    @ce.workflow(name=name)
    def flow(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        return (yield from body(*args, **kwargs))

    return flow


def engine_on(path: Path, wf: ce.Workflow[..., Any]) -> ce.Engine:
    """A fresh engine on the file, as a restarted process would open it."""
    return ce.Engine(str(path), clock=VirtualClock(START), workflows=[wf])


# -- a changed sleep shows both durations ----------------------------------------------


@ce.step(name="versioning.noop")
def noop() -> None:
    """Nothing; gives a run a first position."""


def test_a_changed_sleep_shows_both_durations_exactly_in_the_replay_diff(tmp_path: Path) -> None:
    def v1() -> Generator[Any, Any, str]:
        yield ce.sleep(7200.0)
        return "up"

    def v2() -> Generator[Any, Any, str]:
        yield ce.sleep(7200.4)
        return "up"

    name = "versioning.sleep-diff"
    engine = engine_on(tmp_path / "s.db", define(name, v1))
    engine.start(engine_wf(name), id="r")
    engine.run_until_idle(until=START + 10)  # asleep, its wake time logged
    engine.close()
    engine = engine_on(tmp_path / "s.db", define(name, v2))
    with pytest.raises(ce.NonDeterminismError) as info:
        engine.run(engine_wf(name), id="r")
    assert info.value.recorded == "sleep (2h)"  # exactly two hours
    assert info.value.replayed == "sleep (2h (7200.4s))"


def engine_wf(name: str) -> ce.Workflow[..., Any]:
    """The workflow registered under name now."""
    from contengine.workflow import lookup

    return lookup(name, None, {})


def test_a_logged_sleep_text_that_hides_the_difference_is_shown_with_its_key() -> None:
    # Logs written before durations were shown exactly hold `2h` for 7200.4 s too.
    logged = ce.sleep(7200.4)

    class Old:
        position, kind, name, key, text = 0, "sleep", "", logged.key, "2h"

        def outcome(self) -> Outcome | None:
            return Outcome(True, None)

    def wf() -> Generator[Any, Any, None]:
        yield ce.sleep(7200.0)

    with pytest.raises(ce.NonDeterminismError) as info:
        Driver(wf(), [Old()]).start()
    assert info.value.recorded == "sleep (2h) [key 7200.4]"
    assert info.value.replayed == "sleep (2h) [key 7200.0]"


SECONDS = itertools.cycle([7200.0, 7200.4])


@ce.workflow(name="versioning.sleepy")
def sleepy() -> Generator[Any, Any, str]:
    """Sleeps for a duration that changes from one run to the next (a bug on purpose)."""
    yield ce.sleep(next(SECONDS))
    return "up"


def test_check_shows_a_changed_sleep_with_both_durations() -> None:
    with pytest.raises(AssertionError) as info:
        ce.testing.check(sleepy)
    text = str(info.value)
    assert "recorded: sleep (2h)\n" in text
    assert "replayed: sleep (2h (7200.4s))\n" in text


def test_sleep_and_wait_texts_are_exact_and_stay_readable() -> None:
    assert ce.sleep(7200).text == "2h"
    assert ce.sleep(90).text == "1m30s"
    assert ce.sleep(0.25).text == "0.25s"
    assert ce.sleep(7200.4).text == "2h (7200.4s)"
    assert ce.sleep(0.1234567).text == "0.1234567s"
    assert ce.wait("x", timeout=7200.4).text == "timeout=2h (7200.4s)"
    assert ce.wait("x", timeout=60).text == "timeout=1m"


# -- ce.race names itself --------------------------------------------------------------


@ce.workflow(name="versioning.kid")
def kid() -> Generator[Any, Any, int]:
    """A child workflow."""
    return 1
    yield  # a generator


def test_race_refusing_a_member_names_ce_race() -> None:
    with pytest.raises(TypeError) as info:
        ce.race(kid(), ce.sleep(5))
    assert str(info.value).startswith("ce.race()")
    assert "ce.gather" not in str(info.value)
    with pytest.raises(TypeError) as gathered:
        ce.gather(kid(), ce.sleep(5))
    assert str(gathered.value).startswith("ce.gather()")


# -- Backoff(initial > cap) ------------------------------------------------------------


def test_a_backoff_whose_first_delay_is_above_its_cap_is_refused() -> None:
    with pytest.raises(ValueError) as info:
        ce.Backoff(initial=600, cap=300)
    message = str(info.value)
    assert "600" in message and "300" in message and "cap" in message
    with pytest.raises(ValueError):
        ce.step(backoff=ce.Backoff(10, cap=5))


def test_a_backoff_without_a_cap_never_waits_less_than_its_first_delay() -> None:
    assert ce.Backoff(initial=600).delay(1) == 600
    assert ce.Backoff(initial=600).cap == 600
    assert ce.Backoff(initial=1).cap == 300  # the default cap, when it is above initial
    assert ce.Backoff(initial=1).delay(20) == 300
    step = ce.step(retries=2, backoff=900.0)(noop.fn)
    assert step.options_.backoff.delay(1) == 900.0
    assert step.options_.backoff.delay(2) == 900.0
