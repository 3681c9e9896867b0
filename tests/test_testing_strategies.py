"""ce.testing.strategies in @given tests that drive real workflows through crash schedules
(ce.testing.run_with_crashes), fake step outcomes, gather completion orders and signal times."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

import contengine as ce
from contengine.testing import (
    CompletionOrder,
    CrashPoint,
    CrashSchedule,
    SignalArrival,
    run_with_crashes,
)
from contengine.testing.strategies import (
    StepOutcome,
    crash_points,
    crash_schedules,
    gather_orders,
    signal_arrivals,
    signal_offsets,
    step_errors,
    step_outcomes,
    step_values,
)

# Every example runs several engines on a file: fewer examples than the suite's default.
FEW = settings(max_examples=25)

LEDGER: list[Any] = []  # what the steps did, across every engine of one example
ORDER: list[CompletionOrder] = []


@ce.step
def fake(index: int, outcome: StepOutcome) -> Any:
    """Do what the outcome says."""
    LEDGER.append(index)
    return outcome.result()


@ce.workflow(name="tests.testing_strategies.pipeline")
def pipeline(outcomes: list[StepOutcome]) -> Generator[Any, Any, list[tuple[Any, ...]]]:
    """One step per outcome; each step's value or exception is collected."""
    results: list[tuple[Any, ...]] = []
    for i, outcome in enumerate(outcomes):
        try:
            results.append(("ok", (yield fake(i, outcome))))
        except Exception as exc:
            results.append(("err", type(exc).__name__, str(exc)))
    return results


def expected(outcomes: list[StepOutcome]) -> list[tuple[Any, ...]]:
    """What pipeline returns, computed without an engine."""
    out: list[tuple[Any, ...]] = []
    for o in outcomes:
        if o.error_type is None:
            out.append(("ok", o.value))
        else:
            out.append(("err", o.error_type.__name__, str(o.error_type(o.message))))
    return out


def log_of(run: ce.testing.CrashedRun) -> list[tuple[str, str]]:
    """The run's log as (request, status) pairs."""
    return [(e.describe(), e.status) for e in run.history]


@FEW
@given(schedule=crash_schedules(max_index=6), outcomes=st.lists(step_outcomes(), max_size=4))
def test_crashes_anywhere_change_nothing_but_reruns(
    schedule: CrashSchedule, outcomes: list[StepOutcome]
) -> None:
    LEDGER.clear()
    reference = run_with_crashes(pipeline, outcomes)
    assert reference.result() == expected(outcomes)
    LEDGER.clear()
    crashed = run_with_crashes(pipeline, outcomes, schedule=schedule)
    event(f"crashes: {len(crashed.crashes)}")
    assert crashed.result() == expected(outcomes)
    assert log_of(crashed) == log_of(reference)
    assert crashed.engines == len(crashed.crashes) + 1
    assert list(crashed.crashes) == list(schedule)[: len(crashed.crashes)]
    # Every step ran; one ran again only when a crash kept its outcome from the log,
    # and a crash interrupts at most one step of a sequential workflow.
    assert sorted(set(LEDGER)) == list(range(len(outcomes)))
    assert len(LEDGER) <= len(outcomes) + len(crashed.crashes)
    assert sum(crashed.executions.values()) == len(LEDGER)


@ce.step(name="strategies.member")
def member(index: int) -> int:
    """A gather member that finishes in its turn."""
    LEDGER.append(("ran", index))
    ORDER[-1].turn(index)
    LEDGER.append(("done", index))
    return index * index


@ce.step
def prepare() -> str:
    """A step before the gather."""
    LEDGER.append("prepare")
    return "ready"


@ce.workflow(name="tests.testing_strategies.fan_out")
def fan_out(n: int) -> Generator[Any, Any, tuple[str, list[int]]]:
    """A step, then n members at once."""
    ready = yield prepare()
    squares = yield ce.gather(*[member(i) for i in range(n)])
    return ready, squares


@FEW
@given(data=st.data(), schedule=crash_schedules(max_crashes=2, max_index=6))
def test_gathers_finish_in_any_order_and_survive_crashes(
    data: st.DataObject, schedule: CrashSchedule
) -> None:
    n = data.draw(st.integers(1, 4), label="members")
    order = data.draw(gather_orders(n), label="order")
    LEDGER.clear()
    ORDER.append(CompletionOrder(order))
    run = run_with_crashes(fan_out, n, schedule=schedule, order=ORDER[-1])
    event(f"crashes: {len(run.crashes)}")
    assert run.result() == ("ready", [i * i for i in range(n)])  # argument order, always
    # The gather's entries are in argument order, whatever order they finished in.
    assert [e.name for e in run.history] == ["prepare", "", *["strategies.member"] * n]
    if not run.crashes:
        assert [x[1] for x in LEDGER if x[0] == "done"] == list(order)
    assert LEDGER.count("prepare") <= 1 + len(run.crashes)


@ce.step
def act(payload: Any) -> str:
    """A step after the wait."""
    LEDGER.append(payload)
    return "acted"


@ce.workflow(name="tests.testing_strategies.approval")
def approval(delay: float) -> Generator[Any, Any, tuple[str, Any]]:
    """Sleep, then wait a minute for a signal."""
    yield ce.sleep(delay)
    try:
        payload = yield ce.wait("approve", timeout=60)
    except ce.Timeout:
        return ("timed out", None)
    yield act(payload)
    return ("approved", payload)


@FEW
@given(
    arrival=signal_arrivals("approve", wait_at=10, timeout=60),
    schedule=crash_schedules(max_index=3),
)
def test_signals_around_a_timeout_are_decided_once(
    arrival: SignalArrival, schedule: CrashSchedule
) -> None:
    LEDGER.clear()
    run = run_with_crashes(approval, 10.0, schedule=schedule, signals=[arrival])
    event(f"crashes: {len(run.crashes)}")
    # The deadline (70 s after the start) is logged once: crashes cannot move it.
    if arrival.at < 70:
        assert run.result() == ("approved", arrival.payload)
        assert 1 <= len(LEDGER) <= 1 + len(run.crashes)
    else:
        assert run.result() == ("timed out", None)
        assert LEDGER == []
    assert [e.kind for e in run.history][:2] == ["sleep", "wait"]


counter = [0]


@ce.workflow(name="tests.testing_strategies.forgetful")
def forgetful() -> Generator[Any, Any, int]:
    """Branches on how often it was called in this process: not replay-safe."""
    counter[0] += 1
    first = yield act("odd" if counter[0] % 2 else "even")
    return len(first)


def test_a_crash_exposes_a_nondeterministic_workflow() -> None:
    counter[0] = 0
    assert run_with_crashes(forgetful).result() == 5
    counter[0] = 0
    run = run_with_crashes(forgetful, schedule=CrashSchedule.of("after-commit 1"))
    assert isinstance(run.stuck, ce.NonDeterminismError)
    assert "step act('odd')" in str(run.stuck) and "step act('even')" in str(run.stuck)
    with pytest.raises(ce.NonDeterminismError):
        run.result()


# -- the strategies themselves -------------------------------------------------------


@given(point=crash_points(max_index=3, where=["in-step"]), values=st.lists(step_values()))
def test_strategies_keep_to_their_bounds(point: CrashPoint, values: list[Any]) -> None:
    assert point.where == "in-step" and 1 <= point.index <= 3
    for value in values:
        assert value == value  # no NaN: values compare equal after a trip through the log


@given(error=step_errors([KeyError, OSError]), order=gather_orders(5))
def test_errors_and_orders(error: Exception, order: tuple[int, ...]) -> None:
    assert type(error) in (KeyError, OSError)
    assert sorted(order) == [0, 1, 2, 3, 4]


@given(offset=signal_offsets(wait_at=10, timeout=60))
def test_signal_offsets_stay_near_the_wait(offset: float) -> None:
    assert offset == -1.0 or 0 <= offset <= 10 + 60 + 60 + 1


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="crash point is one of"):
        crash_points(where=["mid-air"])
    with pytest.raises(ValueError):
        crash_points(max_index=0)
    with pytest.raises(ValueError):
        signal_offsets(timeout=-1)
    with pytest.raises(ValueError, match="permutation"):
        CompletionOrder([0, 0])
    assert CrashPoint.parse("after-commit 2") == CrashPoint("after-commit", 2)
    assert str(CrashSchedule.of("in-step 1", "before-commit 3")) == (
        "crash inside step execution 1, then before commit 3"
    )
    assert str(StepOutcome(None, KeyError, "k")) == "StepOutcome(raises KeyError('k'))"
