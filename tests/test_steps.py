"""Behaviour of steps: retries, backoff, retry_on, timeouts, failures and their replay."""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Crash, FakeClock

import contengine as ce

pytestmark = pytest.mark.both_stores

Flow = Generator[Any, Any, Any]


class PaymentDeclined(Exception):
    """A step's own exception type, importable so it pickles by reference."""


class Unpicklable(Exception):
    """An exception whose __reduce__ refuses, so neither pickle nor dill can write it."""

    def __reduce__(self) -> Any:
        raise TypeError("Unpicklable refuses to be pickled")


class HoldsGenerator(Exception):
    """An exception carrying a live generator, which dill cannot serialize."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.rows = (i for i in range(3))


class NeedsTwoArgs(Exception):
    """Pickles, but cannot be rebuilt from its args: it never reads back."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")


class Unreadable:
    """A value that pickles but whose reconstruction fails."""

    def __reduce__(self) -> Any:
        return (_refuse, ())


def _refuse() -> None:
    raise RuntimeError("cannot rebuild")


@pytest.fixture
def clock() -> FakeClock:
    """A fresh virtual clock."""
    return FakeClock()


@pytest.fixture
def engine(clock: FakeClock) -> Iterator[ce.Engine]:
    """An in-memory engine on the virtual clock."""
    eng = ce.Engine(clock=clock)
    yield eng
    eng.close()


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A path for a database file."""
    return str(tmp_path / "runs.db")


def failing(times: int, exc: BaseException, calls: list[int]) -> ce.Step[[], str]:
    """A step that raises exc on its first `times` calls, then returns "ok"."""

    @ce.step(name="failing")
    def flaky() -> str:
        calls.append(len(calls) + 1)
        if len(calls) <= times:
            raise exc
        return "ok"

    return flaky


def one_step(s: ce.Step[[], Any]) -> ce.Workflow[[], Any]:
    """A workflow that yields the step once and returns its value."""

    @ce.workflow
    def single() -> Flow:
        return (yield s())

    return single


# -- retries and backoff -----------------------------------------------------------


def test_retries_until_the_step_succeeds(engine: ce.Engine) -> None:
    calls: list[int] = []
    flaky = failing(2, ConnectionError("flaky"), calls)
    wf = one_step(ce.step(name="steps.flaky", retries=3, backoff=0)(flaky.fn))

    assert engine.run(wf, id="retry") == "ok"
    assert calls == [1, 2, 3]
    (entry,) = engine.history("retry")
    assert (entry.status, entry.attempts, entry.value) == ("completed", 3, "ok")


def test_no_retries_by_default(engine: ce.Engine) -> None:
    calls: list[int] = []
    wf = one_step(failing(1, ConnectionError("once"), calls))

    with pytest.raises(ConnectionError, match="once"):
        engine.run(wf, id="no-retry")
    assert calls == [1]
    assert engine.history("no-retry")[0].attempts == 1


def test_float_backoff_doubles_between_attempts(engine: ce.Engine, clock: FakeClock) -> None:
    times: list[float] = []

    @ce.step(retries=3, backoff=0.25)
    def doomed() -> None:
        times.append(clock.now())
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        engine.run(one_step(doomed), id="float-backoff")
    assert clock.sleeps == pytest.approx([0.25, 0.5, 1.0])
    assert [t - times[0] for t in times] == pytest.approx([0.0, 0.25, 0.75, 1.75])
    assert engine.history("float-backoff")[0].attempts == 4


def test_backoff_object_grows_by_factor_up_to_cap(engine: ce.Engine, clock: FakeClock) -> None:
    calls: list[int] = []

    @ce.step(retries=4, backoff=ce.Backoff(initial=0.5, factor=2.0, cap=1.5))
    def doomed() -> None:
        calls.append(1)
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        engine.run(one_step(doomed), id="capped")
    assert clock.sleeps == pytest.approx([0.5, 1.0, 1.5, 1.5])
    assert len(calls) == 5


def test_zero_backoff_retries_without_sleeping(engine: ce.Engine, clock: FakeClock) -> None:
    calls: list[int] = []
    flaky = failing(2, ConnectionError("x"), calls)
    wf = one_step(ce.step(retries=2, backoff=0)(flaky.fn))

    assert engine.run(wf) == "ok"
    assert clock.sleeps == []


def test_backoff_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        ce.Backoff(initial=-1)
    with pytest.raises(ValueError):
        ce.Backoff(factor=0.5)
    with pytest.raises(ValueError):
        ce.Backoff(cap=-1)


# -- retry_on ------------------------------------------------------------------------


def test_retry_on_limits_which_exceptions_are_retried(engine: ce.Engine) -> None:
    script: list[BaseException] = [ConnectionResetError("reset"), ValueError("bad input")]
    calls: list[str] = []

    @ce.step(retries=5, backoff=0, retry_on=ConnectionError)
    def picky() -> str:
        exc = script[len(calls)]
        calls.append(type(exc).__name__)
        raise exc

    @ce.workflow
    def wf() -> Flow:
        try:
            yield picky()
        except ValueError as exc:
            return f"gave up: {exc}"

    assert engine.run(wf, id="picky") == "gave up: bad input"
    assert calls == ["ConnectionResetError", "ValueError"]
    (entry,) = engine.history("picky")
    assert (entry.status, entry.attempts) == ("failed", 2)
    assert isinstance(entry.error, ValueError)


def test_retry_on_a_tuple_retries_each_listed_type(engine: ce.Engine) -> None:
    script: list[BaseException] = [KeyError("k"), ConnectionError("c"), LookupError("l")]
    calls: list[int] = []

    @ce.step(retries=5, backoff=0, retry_on=(KeyError, ConnectionError))
    def picky() -> str:
        calls.append(1)
        raise script[len(calls) - 1]

    with pytest.raises(LookupError, match="l"):
        engine.run(one_step(picky), id="tuple")
    assert len(calls) == 3


# -- timeouts -----------------------------------------------------------------------


def test_a_timed_out_attempt_is_retried(engine: ce.Engine) -> None:
    release = threading.Event()
    attempts: list[int] = []

    @ce.step(timeout=0.05, retries=1, backoff=0)
    def slow_then_fast() -> str:
        attempts.append(ce.current_step().attempt)
        if len(attempts) == 1:
            release.wait(5)
        return "fast"

    started = time.monotonic()
    try:
        assert engine.run(one_step(slow_then_fast), id="timeout-retry") == "fast"
    finally:
        release.set()
    assert time.monotonic() - started < 2
    assert attempts == [1, 2]
    (entry,) = engine.history("timeout-retry")
    assert (entry.status, entry.attempts) == ("completed", 2)
    assert entry.error_text is not None and "Timeout" in entry.error_text


def test_a_timeout_without_retries_raises_ce_timeout_at_the_yield(engine: ce.Engine) -> None:
    release = threading.Event()

    @ce.step(name="sluggish", timeout=0.05)
    def sluggish() -> str:
        release.wait(5)
        return "late"

    @ce.workflow
    def wf() -> Flow:
        try:
            yield sluggish()
        except TimeoutError as exc:
            return exc

    try:
        err = engine.run(wf, id="timeout")
    finally:
        release.set()
    assert isinstance(err, ce.Timeout)
    assert isinstance(err, TimeoutError)
    assert "sluggish" in str(err)
    assert isinstance(engine.history("timeout")[0].error, ce.Timeout)


def test_a_fast_step_with_a_timeout_returns_normally(engine: ce.Engine) -> None:
    @ce.step(timeout=5)
    def quick(x: int) -> int:
        return x + 1

    @ce.workflow
    def wf() -> Flow:
        return (yield quick(1))

    assert engine.run(wf) == 2


# -- per-call options -------------------------------------------------------------------


def test_options_override_per_call_without_changing_the_step(engine: ce.Engine) -> None:
    calls: list[int] = []
    flaky = failing(3, ConnectionError("flaky"), calls)

    @ce.workflow
    def patient() -> Flow:
        return (yield flaky.options(retries=5, backoff=0, timeout=5)())

    assert engine.run(patient, id="patient") == "ok"
    assert len(calls) == 4
    entry = engine.history("patient")[0]
    assert (entry.name, entry.attempts) == ("failing", 4)

    assert flaky.options_.retries == 0
    assert flaky.options_.timeout is None
    assert isinstance(flaky.options(retries=5), ce.Step)

    calls.clear()
    with pytest.raises(ConnectionError):
        engine.run(one_step(flaky), id="impatient")
    assert calls == [1]


def test_options_can_change_retry_on_per_call(engine: ce.Engine) -> None:
    calls: list[int] = []
    flaky = failing(1, KeyError("k"), calls)

    @ce.workflow
    def wf() -> Flow:
        return (yield flaky.options(retries=1, backoff=0, retry_on=ConnectionError)())

    with pytest.raises(KeyError):
        engine.run(wf)
    assert calls == [1]


# -- failures raised at the yield, live and on replay --------------------------------------


def _compensating(calls: dict[str, int], seen: list[BaseException]) -> ce.Workflow[..., Any]:
    """charge always fails; the workflow catches its own exception type and refunds."""

    @ce.step(name="steps.charge", retries=2, backoff=0)
    def charge(order: str) -> str:
        calls["charge"] += 1
        raise PaymentDeclined(f"card declined for {order}")

    @ce.step(name="steps.refund")
    def refund(order: str) -> str:
        calls["refund"] += 1
        if calls["refund"] == 1 and calls.get("crash_refund"):
            raise Crash()
        return f"refunded {order}"

    @ce.workflow
    def checkout(order: str) -> Flow:
        try:
            receipt = yield charge(order)
        except PaymentDeclined as exc:
            seen.append(exc)
            return (yield refund(order))
        return receipt

    return checkout


def test_exhausted_retries_raise_the_step_exception_and_replay_it(db: str) -> None:
    calls = {"charge": 0, "refund": 0}
    seen: list[BaseException] = []
    checkout = _compensating(calls, seen)

    with ce.Engine(db) as engine:
        assert engine.run(checkout, "o-1", id="comp") == "refunded o-1"
        log = [(e.name, e.status, e.attempts) for e in engine.history("comp")]
    assert log == [("steps.charge", "failed", 3), ("steps.refund", "completed", 1)]
    assert calls == {"charge": 3, "refund": 1}
    assert [type(e) for e in seen] == [PaymentDeclined]
    assert str(seen[0]) == "card declined for o-1"

    with ce.Engine(db) as engine:
        assert engine.run(checkout, "o-1", id="comp") == "refunded o-1"
        assert [(e.name, e.status, e.attempts) for e in engine.history("comp")] == log
        assert isinstance(engine.history("comp")[0].error, PaymentDeclined)
    assert calls == {"charge": 3, "refund": 1}


def test_a_resumed_run_takes_the_compensation_path_again_from_the_log(db: str) -> None:
    calls = {"charge": 0, "refund": 0, "crash_refund": 1}
    seen: list[BaseException] = []
    checkout = _compensating(calls, seen)

    with ce.Engine(db) as engine, pytest.raises(Crash):
        engine.run(checkout, "o-2", id="comp-crash")
    with ce.Engine(db) as engine:
        assert [e.status for e in engine.history("comp-crash")] == ["failed", "running"]
        assert engine.get_run("comp-crash").status == "running"
        assert engine.run(checkout, "o-2", id="comp-crash") == "refunded o-2"
        refund = engine.history("comp-crash")[1]
        assert (refund.status, refund.attempts, refund.crashes) == ("completed", 2, 1)

    assert calls["charge"] == 3  # the failed step was not run again
    assert calls["refund"] == 2
    assert [type(e) for e in seen] == [PaymentDeclined, PaymentDeclined]
    assert [str(e) for e in seen] == ["card declined for o-2"] * 2


def test_an_uncaught_step_exception_fails_the_run_with_its_type(engine: ce.Engine) -> None:
    @ce.step(retries=1, backoff=0)
    def declined() -> None:
        raise PaymentDeclined("no funds")

    run = engine.start(one_step(declined), id="uncaught")
    with pytest.raises(PaymentDeclined, match="no funds"):
        run.result()
    assert run.status == "failed"
    assert engine.history("uncaught")[0].attempts == 2


@pytest.mark.parametrize(
    ("make", "type_name", "message"),
    [
        (lambda: Unpicklable("bad reduce"), "Unpicklable", "bad reduce"),
        (lambda: HoldsGenerator("has rows"), "HoldsGenerator", "has rows"),
        (lambda: NeedsTwoArgs(7, "detail"), "NeedsTwoArgs", "7: detail"),
    ],
    ids=["reduce-raises", "holds-generator", "cannot-read-back"],
)
def test_an_unserializable_step_exception_becomes_step_failed(
    db: str, make: Any, type_name: str, message: str
) -> None:
    calls: list[int] = []

    @ce.step(name="raw", retries=1, backoff=0)
    def raw() -> None:
        calls.append(1)
        raise make()

    @ce.workflow
    def wf() -> Flow:
        try:
            yield raw()
        except ce.StepFailed as exc:
            return (exc.type_name, exc.message, exc.traceback_text)

    with ce.Engine(db) as engine:
        got_type, got_message, tb = engine.run(wf, id="step-failed")
        entry = engine.history("step-failed")[0]
    assert (got_type, got_message) == (type_name, message)
    assert type_name in tb and "raise make()" in tb
    assert len(calls) == 2  # the real exception was retried before it was replaced
    assert entry.status == "failed"
    assert isinstance(entry.error, ce.StepFailed)
    assert entry.error_text is not None and type_name in entry.error_text


def test_an_uncaught_step_failed_fails_the_run(engine: ce.Engine) -> None:
    @ce.step
    def raw() -> None:
        raise Unpicklable("nope")

    run = engine.start(one_step(raw), id="uncaught-raw")
    with pytest.raises(ce.StepFailed) as info:
        run.result()
    assert (info.value.type_name, info.value.message) == ("Unpicklable", "nope")
    assert run.status == "failed"


@pytest.mark.parametrize(
    "bad",
    [lambda: (i for i in range(2)), Unreadable],
    ids=["cannot-write", "cannot-read-back"],
)
def test_an_unserializable_step_result_fails_the_step_without_retry(
    engine: ce.Engine, bad: Any
) -> None:
    """Running the step again would only repeat its effects: the result is refused at once."""
    calls: list[int] = []

    @ce.step(name="leaky", retries=1, backoff=0)
    def leaky() -> Any:
        calls.append(1)
        return bad()

    @ce.workflow
    def wf() -> Flow:
        try:
            yield leaky()
        except ce.SerializationError as exc:
            return str(exc)

    message = engine.run(wf, id="leaky")
    assert "result of step 'leaky'" in message
    assert len(calls) == 1
    (entry,) = engine.history("leaky")
    assert (entry.status, entry.attempts) == ("failed", 1)
    assert isinstance(entry.error, ce.SerializationError)


# -- run_until_idle and backoff -------------------------------------------------------------


def test_run_until_idle_leaves_a_backing_off_run_for_later(
    engine: ce.Engine, clock: FakeClock
) -> None:
    calls: list[int] = []
    flaky = failing(1, ConnectionError("later"), calls)
    wf = one_step(ce.step(name="steps.flaky", retries=1, backoff=30)(flaky.fn))
    run = engine.start(wf, id="backoff")

    report = engine.run_until_idle()
    assert report.finished == []
    assert report.stuck == {}
    assert report.next_due == pytest.approx(1_030.0)
    assert run.status == "running"
    assert calls == [1]
    assert clock.sleeps == []
    (entry,) = engine.history("backoff")
    assert entry.status == "retrying"
    assert entry.due_at == pytest.approx(1_030.0)

    clock.t += 29
    early = engine.run_until_idle()
    assert early.finished == []
    assert calls == [1]

    clock.t += 1
    done = engine.run_until_idle()
    assert done.finished == ["backoff"]
    assert done.next_due is None
    assert calls == [1, 2]
    assert run.status == "completed"
    assert run.result() == "ok"
    assert clock.sleeps == []


# -- definitions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"retries": -1}, ValueError),
        ({"timeout": 0}, ValueError),
        ({"timeout": -2.5}, ValueError),
        ({"max_crashes": -1}, ValueError),
        ({"retry_on": [int]}, TypeError),
        ({"retry_on": int}, TypeError),
        ({"retry_on": ("ValueError",)}, TypeError),
        ({"retires": 3}, TypeError),
    ],
    ids=lambda v: str(v) if not isinstance(v, type) else v.__name__,
)
def test_invalid_step_options_raise_at_decoration(
    options: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):

        @ce.step(**options)
        def s() -> None:
            pass


def test_invalid_per_call_options_raise() -> None:
    @ce.step
    def s() -> None:
        pass

    with pytest.raises(ValueError):
        s.options(retries=-1)
    with pytest.raises(ValueError):
        s.options(timeout=0)
    with pytest.raises(TypeError):
        s.options(retry_on=[int])  # type: ignore[arg-type]


def test_step_on_a_generator_function_is_refused() -> None:
    with pytest.raises(ce.WorkflowDefinitionError, match="generator"):

        @ce.step
        def gen() -> Iterator[int]:
            yield 1


def test_step_on_an_async_function_is_refused() -> None:
    with pytest.raises(ce.WorkflowDefinitionError, match="async"):

        @ce.step
        async def coro() -> int:
            return 1


def test_step_on_an_async_generator_function_is_refused() -> None:
    with pytest.raises(ce.WorkflowDefinitionError, match="async"):

        @ce.step
        async def agen() -> Any:
            yield 1


def test_workflow_on_a_plain_function_says_it_must_yield() -> None:
    with pytest.raises(ce.WorkflowDefinitionError) as info:

        @ce.workflow  # type: ignore[arg-type]
        def plain() -> int:
            return 1

    assert "yield" in str(info.value)
    assert "plain" in str(info.value)
    assert isinstance(info.value, TypeError)


def test_workflow_on_an_async_function_is_refused() -> None:
    with pytest.raises(ce.WorkflowDefinitionError, match="async"):

        @ce.workflow(name="steps_api.async")  # type: ignore[arg-type]
        async def coro() -> int:
            return 1


def test_calling_a_step_runs_nothing_until_yielded(engine: ce.Engine) -> None:
    calls: list[int] = []

    @ce.step(name="counted")
    def counted(x: int) -> int:
        calls.append(x)
        return x

    request = counted(5)
    assert isinstance(request, ce.StepCall)
    assert calls == []

    @ce.workflow
    def wf() -> Flow:
        counted(1)  # made but never yielded: never runs
        return (yield counted(2))

    assert engine.run(wf, id="lazy") == 2
    assert calls == [2]
    assert [e.name for e in engine.history("lazy")] == ["counted"]
