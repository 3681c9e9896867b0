"""The pure replay driver on its own: fake log entries, real step requests, no engine."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import pytest

import contengine as ce
from contengine.core.driver import Driver, Pending, Raised, Returned
from contengine.core.outcome import Outcome

Gen = Generator[Any, Any, Any]


@ce.step(name="driver.charge")
def charge(order: str, cents: int) -> str:
    """Pretend to charge a card."""
    return f"receipt-{order}-{cents}"


@ce.step(name="driver.refund")
def refund(order: str) -> str:
    """Pretend to refund an order."""
    return f"refund-{order}"


@ce.step
def inspect_obj(obj: object) -> str:
    """Take an argument that has no canonical text."""
    return repr(obj)


class Opaque:
    """An object with no canonical form: requests carrying it are compared by name."""


@dataclass
class Rec:
    """A log entry as the driver sees it, with a fixed outcome (None: in flight)."""

    position: int
    kind: str
    name: str
    key: str | None
    text: str
    result: Outcome | None = None

    def outcome(self) -> Outcome | None:
        """The recorded outcome, or None while in flight."""
        return self.result


def rec(position: int, call: ce.Request, result: Outcome | None) -> Rec:
    """A log entry for a real request with the given outcome."""
    return Rec(position, call.kind, call.name, call.key, call.text, result)


def done(position: int, call: ce.Request, value: Any) -> Rec:
    """A completed entry."""
    return rec(position, call, Outcome.returned(value))


def failed(position: int, call: ce.Request, error: BaseException) -> Rec:
    """A failed entry."""
    return rec(position, call, Outcome.raised(error))


def checkout(order: str, seen: list[Any]) -> Gen:
    """Charge, then refund using the receipt; record what each yield received."""
    receipt = yield charge(order, 500)
    seen.append(receipt)
    refunded = yield refund(receipt)
    seen.append(refunded)
    return (receipt, refunded)


def checkout_yield_from(order: str, seen: list[Any]) -> Gen:
    """The same workflow written with `yield from`."""
    receipt = yield from charge(order, 500)
    seen.append(receipt)
    refunded = yield from refund(receipt)
    seen.append(refunded)
    return (receipt, refunded)


def tolerant(order: str, seen: list[Any]) -> Gen:
    """Charge; if the charge fails, refund with the error message instead."""
    try:
        receipt = yield charge(order, 500)
    except ValueError as exc:
        seen.append(exc)
        receipt = yield refund(str(exc))
    return receipt


def describe(nxt: Any) -> tuple[Any, ...]:
    """A comparable summary of what the driver returned."""
    if isinstance(nxt, Pending):
        return ("pending", nxt.position, nxt.request.describe())
    if isinstance(nxt, Returned):
        return ("returned", nxt.value)
    return ("raised", type(nxt.error), str(nxt.error))


# -- starting and running live ------------------------------------------------


def test_start_runs_the_workflow_to_its_first_request() -> None:
    started: list[bool] = []

    def wf() -> Gen:
        started.append(True)
        yield charge("o-1", 500)

    driver = Driver(wf(), [])
    assert started == []  # nothing runs before start()
    nxt = driver.start()
    assert started == [True]
    assert isinstance(nxt, Pending)
    assert nxt.position == 0
    assert nxt.recorded is None
    assert isinstance(nxt.request, ce.StepCall)
    assert nxt.request.step is charge
    assert nxt.request.args == ("o-1", 500)
    assert nxt.request.describe() == "step driver.charge('o-1', 500)"
    assert driver.replayed == 0


def test_send_feeds_live_outcomes_and_advances_the_position() -> None:
    seen: list[Any] = []
    driver = Driver(checkout("o-1", seen), [])
    first = driver.start()
    assert describe(first) == ("pending", 0, "step driver.charge('o-1', 500)")
    second = driver.send(Outcome.returned("r-1"))
    assert describe(second) == ("pending", 1, "step driver.refund('r-1')")
    assert driver.position == 1
    end = driver.send(Outcome.returned("f-1"))
    assert isinstance(end, Returned)
    assert end.value == ("r-1", "f-1")
    assert seen == ["r-1", "f-1"]
    assert driver.replayed == 0


def test_live_exception_is_raised_at_the_yield_and_ends_in_raised_if_uncaught() -> None:
    driver = Driver(checkout("o-1", []), [])
    driver.start()
    error = KeyError("gone")
    end = driver.send(Outcome.raised(error))
    assert isinstance(end, Raised)
    assert end.error is error


# -- replaying a log ------------------------------------------------------------


def test_replay_feeds_recorded_values_and_stops_past_the_log() -> None:
    seen: list[Any] = []
    history = [done(0, charge("o-1", 500), "r-logged")]
    driver = Driver(checkout("o-1", seen), history)
    nxt = driver.start()
    # The recorded value went into the workflow and shaped the next request.
    assert seen == ["r-logged"]
    assert isinstance(nxt, Pending)
    assert nxt.position == 1
    assert nxt.recorded is None
    assert nxt.request.describe() == "step driver.refund('r-logged')"
    assert driver.replayed == 1


def test_recorded_exception_is_raised_at_the_yield_and_caught_by_the_workflow() -> None:
    seen: list[Any] = []
    error = ValueError("card declined")
    driver = Driver(tolerant("o-1", seen), [failed(0, charge("o-1", 500), error)])
    nxt = driver.start()
    assert seen == [error]
    assert seen[0] is error
    assert isinstance(nxt, Pending)
    assert (nxt.position, nxt.request.describe()) == (1, "step driver.refund('card declined')")
    assert nxt.recorded is None


def test_recorded_exception_left_uncaught_ends_in_raised() -> None:
    error = ValueError("card declined")
    driver = Driver(checkout("o-1", []), [failed(0, charge("o-1", 500), error)])
    nxt = driver.start()
    assert isinstance(nxt, Raised)
    assert nxt.error is error
    assert driver.replayed == 1


def test_replay_stops_at_an_in_flight_entry_and_hands_it_back() -> None:
    seen: list[Any] = []
    in_flight = rec(1, refund("r-0"), None)
    history = [done(0, charge("o-1", 500), "r-0"), in_flight]
    driver = Driver(checkout("o-1", seen), history)
    nxt = driver.start()
    assert isinstance(nxt, Pending)
    assert nxt.position == 1
    assert nxt.recorded is in_flight
    assert nxt.request.describe() == "step driver.refund('r-0')"
    assert seen == ["r-0"]
    assert driver.replayed == 1
    # The caller carries the request out and the run goes on live.
    end = driver.send(Outcome.returned("f-0"))
    assert isinstance(end, Returned)
    assert end.value == ("r-0", "f-0")


def test_a_fully_logged_run_returns_without_any_pending_request() -> None:
    seen: list[Any] = []
    history = [done(0, charge("o-1", 500), "r-0"), done(1, refund("r-0"), "f-0")]
    nxt = Driver(checkout("o-1", seen), history).start()
    assert isinstance(nxt, Returned)
    assert nxt.value == ("r-0", "f-0")
    assert seen == ["r-0", "f-0"]


def test_a_workflow_raising_after_its_whole_log_ends_in_raised() -> None:
    boom = RuntimeError("gave up")

    def wf() -> Gen:
        receipt = yield charge("o-1", 500)
        raise boom if receipt == "r-0" else AssertionError(receipt)

    nxt = Driver(wf(), [done(0, charge("o-1", 500), "r-0")]).start()
    assert isinstance(nxt, Raised)
    assert nxt.error is boom


def test_yield_from_a_step_call_is_the_same_as_yielding_it() -> None:
    outcomes = [Outcome.returned("r-9"), Outcome.returned("f-9")]

    def live(wf: Any) -> tuple[list[tuple[Any, ...]], list[Any]]:
        seen: list[Any] = []
        driver = Driver(wf("o-9", seen), [])
        steps = [describe(driver.start())]
        for outcome in outcomes:
            steps.append(describe(driver.send(outcome)))
        return steps, seen

    assert live(checkout) == live(checkout_yield_from)
    assert live(checkout_yield_from)[0][-1] == ("returned", ("r-9", "f-9"))

    # A log written by one form replays in the other.
    history = [done(0, charge("o-9", 500), "r-9"), done(1, refund("r-9"), "f-9")]
    for wf in (checkout, checkout_yield_from):
        nxt = Driver(wf("o-9", []), history).start()
        assert describe(nxt) == ("returned", ("r-9", "f-9"))


def test_yield_from_carries_a_recorded_exception_into_the_workflow() -> None:
    def wf() -> Gen:
        try:
            yield from charge("o-1", 500)
        except ValueError as exc:
            return f"caught {exc}"
        return "not caught"

    nxt = Driver(wf(), [failed(0, charge("o-1", 500), ValueError("declined"))]).start()
    assert describe(nxt) == ("returned", "caught declined")


# -- divergence from the log ---------------------------------------------------


def diverge(wf: Gen, history: list[Rec]) -> ce.NonDeterminismError:
    """Start a driver that must fail with NonDeterminismError; return the error."""
    with pytest.raises(ce.NonDeterminismError) as info:
        Driver(wf, history, label="workflow 'shop'").start()
    assert isinstance(info.value, ce.ContengineError)
    return info.value


def test_a_different_step_name_is_a_divergence() -> None:
    seen: list[Any] = []
    history = [done(0, charge("o-1", 500), "r-0"), done(1, charge("r-0", 1), "x")]
    err = diverge(checkout("o-1", seen), history)
    assert err.position == 1
    assert err.recorded == "step driver.charge('r-0', 1)"
    assert err.replayed == "step driver.refund('r-0')"
    assert "workflow 'shop' diverged from its log at position 1" in str(err)
    assert "a different request" in str(err)
    assert "-step driver.charge('r-0', 1)" in err.diff
    assert "+step driver.refund('r-0')" in err.diff
    assert seen == ["r-0"]  # the outcome at the diverging position was not fed


def test_a_different_kind_is_a_divergence() -> None:
    # Same name and arguments, another kind (a signal that happens to share the name).
    call = charge("o-1", 500)
    wait_entry = Rec(0, "wait", "charge", call.key, call.text, Outcome.returned(True))
    err = diverge(checkout("o-1", []), [wait_entry])
    assert err.position == 0
    assert err.recorded == "wait charge('o-1', 500)"
    assert err.replayed == "step driver.charge('o-1', 500)"
    assert "a different request" in str(err)
    assert "-wait charge('o-1', 500)" in err.diff
    assert "+step driver.charge('o-1', 500)" in err.diff


def test_different_arguments_are_a_divergence_and_the_value_is_not_fed() -> None:
    seen: list[Any] = []
    history = [done(0, charge("o-2", 500), "r-2")]
    err = diverge(checkout("o-1", seen), history)
    assert err.position == 0
    assert err.recorded == "step driver.charge('o-2', 500)"
    assert err.replayed == "step driver.charge('o-1', 500)"
    assert "the same request with different arguments" in str(err)
    assert err.diff.splitlines() == [
        "--- recorded",
        "+++ replayed",
        "@@ -1 +1 @@",
        "-step driver.charge('o-2', 500)",
        "+step driver.charge('o-1', 500)",
    ]
    assert seen == []


def test_returning_while_the_log_has_more_is_a_divergence() -> None:
    def short(order: str) -> Gen:
        receipt = yield charge(order, 500)
        return receipt

    history = [done(0, charge("o-1", 500), "r-0"), done(1, refund("r-0"), "f-0")]
    err = diverge(short("o-1"), history)
    assert err.position == 1
    assert err.recorded == "step driver.refund('r-0')"
    assert err.replayed is None
    assert "the workflow returned before reaching it" in str(err)
    assert "-step driver.refund('r-0')" in err.diff
    assert "+(nothing: the workflow returned)" in err.diff


def test_raising_while_the_log_has_more_is_a_divergence() -> None:
    def brittle(order: str) -> Gen:
        yield charge(order, 500)
        raise ValueError("changed my mind")

    history = [done(0, charge("o-1", 500), "r-0"), rec(1, refund("r-0"), None)]
    err = diverge(brittle("o-1"), history)
    assert err.position == 1
    assert err.recorded == "step driver.refund('r-0')"
    assert err.replayed is None
    assert "the workflow raised ValueError" in str(err)


def test_a_workflow_that_ends_exactly_at_its_log_is_no_divergence() -> None:
    def short(order: str) -> Gen:
        return (yield charge(order, 500))

    nxt = Driver(short("o-1"), [done(0, charge("o-1", 500), "r-0")]).start()
    assert describe(nxt) == ("returned", "r-0")


# -- arguments without a canonical form -----------------------------------------


def test_non_canonical_arguments_are_compared_by_name_only() -> None:
    first, second = Opaque(), Opaque()
    logged = inspect_obj(first)
    assert logged.key is None

    def wf(obj: object) -> Gen:
        text = yield inspect_obj(obj)
        return text

    nxt = Driver(wf(second), [done(0, logged, "seen")]).start()
    assert describe(nxt) == ("returned", "seen")


def test_a_canonical_log_key_accepts_a_non_canonical_replayed_argument() -> None:
    def wf(obj: object) -> Gen:
        return (yield inspect_obj(obj))

    nxt = Driver(wf(Opaque()), [done(0, inspect_obj(42), "seen")]).start()
    assert describe(nxt) == ("returned", "seen")


def test_non_canonical_arguments_still_diverge_on_a_different_name() -> None:
    def wf(obj: object) -> Gen:
        return (yield inspect_obj(obj))

    logged = Rec(0, "step", "other_step", None, "<obj>", Outcome.returned(1))
    err = diverge(wf(Opaque()), [logged])
    assert err.recorded == "step other_step(<obj>)"
    assert err.replayed is not None
    assert err.replayed.startswith("step inspect_obj(<")


# -- yielding something that is not a request -------------------------------------


def undecorated(order: str) -> Gen:
    """A generator function that was never decorated."""
    yield charge(order, 1)


@pytest.mark.parametrize(
    ("make", "shown", "hint"),
    [
        (lambda: 42, "42 (int)", "not decorated with @ce.step"),
        (lambda: undecorated("o-1"), "(generator)", "use `yield from`"),
        (lambda: charge, "<step driver.charge> (Step)", "call the step"),
    ],
    ids=["int", "undecorated-generator", "step-object"],
)
def test_yielding_a_non_request_raises_invalid_yield(make: Any, shown: str, hint: str) -> None:
    def wf() -> Gen:
        yield make()

    with pytest.raises(ce.InvalidYield) as info:
        Driver(wf(), [], label="workflow 'shop'").start()
    message = str(info.value)
    assert shown in message
    assert hint in message
    assert "workflow 'shop' yielded" in message
    assert "at position 0" in message
    assert isinstance(info.value, ce.ContengineError)


def test_invalid_yield_during_replay_names_its_position() -> None:
    def wf() -> Gen:
        yield charge("o-1", 500)
        yield "charge"

    history = [done(0, charge("o-1", 500), "r-0")]
    with pytest.raises(ce.InvalidYield, match=r"'charge' \(str\) at position 1"):
        Driver(wf(), history).start()
