"""Behaviour of the Engine and Run API: starting, driving, inspecting, serializing."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Crash, FakeClock

import contengine as ce

pytestmark = pytest.mark.both_stores

Flow = Generator[Any, Any, Any]


class OrderDeclined(Exception):
    """A workflow's own exception type, importable so it pickles by reference."""


class Unpicklable(Exception):
    """An exception that refuses to be serialized, by pickle and by dill."""

    def __reduce__(self) -> Any:
        raise TypeError("Unpicklable refuses to be pickled")


@dataclasses.dataclass(frozen=True)
class Point:
    """A plain dataclass value."""

    x: int
    y: int


class Color(enum.Enum):
    """An enum value."""

    RED = 1
    GREEN = 2


def make_adder(n: int) -> Callable[[int], int]:
    """A closure, which only dill can serialize."""
    return lambda x: x + n


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


def log_snapshot(engine: ce.Engine, run_id: str) -> list[tuple[Any, ...]]:
    """The stored fields of a run's log that need no decoding."""
    return [
        (e.position, e.kind, e.name, e.key, e.text, e.status, e.attempts, e.crashes)
        + (e.started_at, e.finished_at, e.due_at, e.error_text)
        for e in engine.history(run_id)
    ]


# -- starting and idempotency --------------------------------------------------


def test_start_records_a_pending_run_and_runs_nothing(engine: ce.Engine) -> None:
    calls: list[tuple[int, int]] = []

    @ce.step
    def add(a: int, b: int) -> int:
        calls.append((a, b))
        return a + b

    @ce.workflow
    def adder(a: int, b: int) -> Flow:
        return (yield add(a, b))

    run = engine.start(adder, 2, 3, id="r-1")
    assert isinstance(run, ce.Run)
    assert run.id == "r-1"
    assert run.workflow == adder.name
    assert run.status == "pending"
    assert calls == []
    assert engine.history("r-1") == []

    assert run.result() == 5
    assert run.status == "completed"
    assert calls == [(2, 3)]


def test_start_without_id_gives_each_run_a_fresh_id(engine: ce.Engine) -> None:
    @ce.workflow
    def nothing() -> Flow:
        return None
        yield

    ids = {engine.start(nothing).id for _ in range(5)}
    assert len(ids) == 5
    assert all(isinstance(i, str) and i for i in ids)
    assert len(engine.runs()) == 5


def test_start_is_idempotent_by_id(engine: ce.Engine) -> None:
    calls: list[str] = []

    @ce.step
    def charge(order: str) -> str:
        calls.append(order)
        return f"receipt-{order}"

    @ce.workflow
    def checkout(order: str) -> Flow:
        return (yield charge(order))

    first = engine.start(checkout, "o-1", id="order-1")
    again = engine.start(checkout, "o-1", id="order-1")
    assert again == first
    assert len(engine.runs()) == 1

    assert engine.run(checkout, "o-1", id="order-1") == "receipt-o-1"
    assert engine.run(checkout, "o-1", id="order-1") == "receipt-o-1"
    finished = engine.start(checkout, "o-1", id="order-1")
    assert finished.status == "completed"
    assert finished.result() == "receipt-o-1"
    assert calls == ["o-1"]
    assert len(engine.runs()) == 1
    assert len(engine.history("order-1")) == 1


def test_same_id_with_another_workflow_is_an_id_conflict(engine: ce.Engine) -> None:
    @ce.workflow
    def first(x: int) -> Flow:
        return x
        yield

    @ce.workflow
    def second(x: int) -> Flow:
        return -x
        yield

    engine.start(first, 1, id="shared")
    with pytest.raises(ce.IdConflict, match="shared"):
        engine.start(second, 1, id="shared")
    assert [r.workflow for r in engine.runs()] == [first.name]
    assert engine.run(first, 1, id="shared") == 1


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((2,), {}), ((1,), {"extra": "y"}), ((), {"x": 2})],
    ids=["other-positional", "other-keyword", "keyword-instead"],
)
def test_same_id_with_other_arguments_is_an_id_conflict(
    engine: ce.Engine, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    @ce.workflow
    def echo(x: int, extra: str = "n") -> Flow:
        return (x, extra)
        yield

    engine.start(echo, 1, id="same")
    with pytest.raises(ce.IdConflict, match="same"):
        engine.start(echo, *args, id="same", **kwargs)
    assert len(engine.runs()) == 1
    assert engine.get_run("same").result() == (1, "n")


def test_start_checks_arguments_against_the_signature(engine: ce.Engine) -> None:
    @ce.workflow
    def one_arg(x: int) -> Flow:
        return x
        yield

    with pytest.raises(TypeError, match="one_arg"):
        engine.start(one_arg, 1, 2)
    assert engine.runs() == []


def test_start_refuses_arguments_that_cannot_be_serialized(engine: ce.Engine) -> None:
    @ce.workflow
    def takes(x: Any, y: Any = None) -> Flow:
        return None
        yield

    with pytest.raises(ce.SerializationError, match="bad-args"):
        engine.start(takes, 1, y=(i for i in range(3)), id="bad-args")
    assert engine.runs() == []


def test_an_unserializable_argument_is_named(engine: ce.Engine) -> None:
    @ce.workflow
    def takes(x: Any, y: Any = None) -> Flow:
        return None
        yield

    with pytest.raises(ce.SerializationError, match="argument 'y'"):
        engine.start(takes, 1, y=(i for i in range(3)), id="bad-args")


# -- results, exceptions and status ----------------------------------------------


def test_run_returns_the_workflow_result(engine: ce.Engine) -> None:
    @ce.step
    def double(x: int) -> int:
        return 2 * x

    @ce.workflow
    def pipeline(x: int) -> Flow:
        a = yield double(x)
        b = yield double(a)
        return {"a": a, "b": b}

    assert engine.run(pipeline, 3) == {"a": 6, "b": 12}


def test_result_reraises_the_workflow_exception_with_its_type(db: str) -> None:
    @ce.workflow
    def declines(order: str) -> Flow:
        raise OrderDeclined(f"card declined for {order}")
        yield

    with ce.Engine(db) as engine:
        run = engine.start(declines, "o-9", id="declined")
        with pytest.raises(OrderDeclined, match="card declined for o-9"):
            run.result()
        assert run.status == "failed"
        with pytest.raises(OrderDeclined):
            engine.run(declines, "o-9", id="declined")
    with ce.Engine(db) as engine, pytest.raises(OrderDeclined, match="o-9"):
        engine.get_run("declined").result()


def test_status_is_running_while_a_step_executes(engine: ce.Engine) -> None:
    seen: list[str] = []

    @ce.step
    def look() -> None:
        seen.append(engine.get_run("watched").status)

    @ce.workflow
    def watched() -> Flow:
        yield look()

    run = engine.start(watched, id="watched")
    assert run.status == "pending"
    run.result()
    assert seen == ["running"]
    assert run.status == "completed"


def test_default_and_custom_workflow_names(engine: ce.Engine) -> None:
    @ce.workflow
    def plain() -> Flow:
        return "plain"
        yield

    @ce.workflow(name="engine_api.orders.checkout")
    def checkout(order: str) -> Flow:
        return f"checked out {order}"
        yield

    assert plain.name == f"{__name__}.{plain.fn.__qualname__}"
    assert checkout.name == "engine_api.orders.checkout"
    run = engine.start(checkout, "o-1", id="named")
    assert run.workflow == "engine_api.orders.checkout"
    assert engine.get_run("named").workflow == "engine_api.orders.checkout"
    assert engine.start(plain).workflow == plain.name


def test_start_by_registered_name(db: str) -> None:
    @ce.workflow(name="engine_api.by_name")
    def by_name(x: int) -> Flow:
        return x * 10
        yield

    with ce.Engine(db) as engine:
        run: ce.Run[Any] = engine.start("engine_api.by_name", 4, id="n-1")
        assert run.workflow == "engine_api.by_name"
        assert run.result() == 40
        assert engine.run("engine_api.by_name", 5) == 50
        with pytest.raises(ce.WorkflowNotFound, match="engine_api.no_such"):
            engine.start("engine_api.no_such")
        with pytest.raises(TypeError, match="ce.workflow"):
            engine.start(lambda: None)  # type: ignore[arg-type]


def test_runs_filters_by_status_and_workflow() -> None:
    clock = FakeClock()

    @ce.workflow
    def alpha(fail: bool) -> Flow:
        if fail:
            raise OrderDeclined("no")
        return "ok"
        yield

    @ce.workflow
    def beta() -> Flow:
        return "b"
        yield

    with ce.Engine(clock=clock) as engine:
        for run_id, fail in [("a-ok", False), ("a-bad", True)]:
            engine.start(alpha, fail, id=run_id)
            clock.t += 1
        engine.start(beta, id="b-pending")
        clock.t += 1
        engine.start(beta, id="b-done")
        assert engine.get_run("a-ok").result() == "ok"
        assert engine.get_run("b-done").result() == "b"
        with pytest.raises(OrderDeclined):
            engine.get_run("a-bad").result()

        def ids(**kw: Any) -> list[str]:
            return [r.id for r in engine.runs(**kw)]

        assert ids() == ["a-ok", "a-bad", "b-pending", "b-done"]
        assert ids(status="completed") == ["a-ok", "b-done"]
        assert ids(status="failed") == ["a-bad"]
        assert ids(status="pending") == ["b-pending"]
        assert ids(status="waiting") == []
        assert ids(workflow=alpha) == ["a-ok", "a-bad"]
        assert ids(workflow=beta.name) == ["b-pending", "b-done"]
        assert ids(status="completed", workflow=beta) == ["b-done"]
        assert ids(workflow="engine_api.nobody") == []
        assert all(isinstance(r, ce.Run) for r in engine.runs())
        with pytest.raises(ValueError, match="status"):
            engine.runs(status="done")


# -- history ---------------------------------------------------------------------


def test_history_entries_carry_position_kind_name_attempts_status_and_outcome() -> None:
    clock = FakeClock()

    @ce.step(name="engine.reserve")
    def reserve(order: str, cents: int) -> dict[str, Any]:
        clock.sleep(2.0)
        return {"order": order, "held": cents}

    @ce.step(name="engine.charge", retries=1, backoff=0)
    def charge(order: str) -> str:
        clock.sleep(0.5)
        raise OrderDeclined(f"declined {order}")

    @ce.step(name="release")
    def release(order: str) -> bool:
        return True

    @ce.workflow
    def checkout(order: str, cents: int) -> Flow:
        yield reserve(order, cents)
        try:
            yield charge(order)
        except OrderDeclined:
            yield release(order)
        return "released"

    with ce.Engine(clock=clock) as engine:
        assert engine.run(checkout, "o-1", 500, id="h-1") == "released"
        entries = engine.history("h-1")

    assert all(isinstance(e, ce.Entry) for e in entries)
    assert [e.position for e in entries] == [0, 1, 2]
    assert [e.kind for e in entries] == ["step", "step", "step"]
    assert [e.name for e in entries] == ["engine.reserve", "engine.charge", "release"]
    assert [e.status for e in entries] == ["completed", "failed", "completed"]
    assert [e.attempts for e in entries] == [1, 2, 1]

    held, declined, released = entries
    assert held.value == {"order": "o-1", "held": 500}
    assert held.error is None
    assert held.duration == pytest.approx(2.0)
    assert "'o-1'" in held.text and "500" in held.text

    assert declined.value is None
    assert isinstance(declined.error, OrderDeclined)
    assert str(declined.error) == "declined o-1"
    assert declined.duration == pytest.approx(1.0)  # two attempts of 0.5 s
    assert declined.error_text is not None and "OrderDeclined" in declined.error_text

    assert released.value is True
    assert released.duration == pytest.approx(0.0)


def test_history_of_an_unknown_run_raises_run_not_found(engine: ce.Engine) -> None:
    with pytest.raises(ce.RunNotFound, match="nope"):
        engine.history("nope")
    with pytest.raises(KeyError):
        engine.get_run("nope")
    assert isinstance(ce.RunNotFound("x"), ce.ContengineError)


# -- driving ---------------------------------------------------------------------


def test_run_until_idle_drives_every_started_run(engine: ce.Engine) -> None:
    calls: list[int] = []

    @ce.step
    def square(n: int) -> int:
        calls.append(n)
        return n * n

    @ce.workflow
    def squares(n: int) -> Flow:
        a = yield square(n)
        b = yield square(n + 1)
        return a + b

    runs = [engine.start(squares, n, id=f"sq-{n}") for n in range(6)]
    report = engine.run_until_idle()
    assert isinstance(report, ce.IdleReport)
    assert report.driven == 6
    assert sorted(report.finished) == sorted(r.id for r in runs)
    assert report.stuck == {}
    assert report.next_due is None
    assert [r.result() for r in runs] == [n * n + (n + 1) ** 2 for n in range(6)]
    assert all(r.status == "completed" for r in runs)
    assert len(calls) == 12

    again = engine.run_until_idle()
    assert (again.driven, again.finished) == (0, [])
    assert len(calls) == 12


def test_a_workflow_that_returns_without_yielding(engine: ce.Engine) -> None:
    @ce.workflow
    def instant(x: int) -> Flow:
        if x >= 0:
            return x + 1
        yield

    run = engine.start(instant, 41, id="instant")
    assert run.result() == 42
    assert run.status == "completed"
    assert engine.history("instant") == []


def test_an_unserializable_result_fails_the_run_naming_it(engine: ce.Engine) -> None:
    @ce.step
    def fine() -> int:
        return 1

    @ce.workflow
    def leaky() -> Flow:
        yield fine()
        return (i for i in range(3))

    run = engine.start(leaky, id="leaky")
    with pytest.raises(ce.SerializationError) as info:
        run.result()
    assert "result of workflow" in str(info.value)
    assert leaky.name in str(info.value)
    assert "leaky" in str(info.value)
    assert run.status == "failed"
    assert [e.status for e in engine.history("leaky")] == ["completed"]
    with pytest.raises(ce.SerializationError):
        run.result()


def test_an_unserializable_workflow_exception_becomes_workflow_failed(
    engine: ce.Engine,
) -> None:
    @ce.workflow
    def explodes() -> Flow:
        raise Unpicklable("the reactor is on fire")
        yield

    run = engine.start(explodes, id="boom")
    with pytest.raises(ce.WorkflowFailed) as info:
        run.result()
    err = info.value
    assert isinstance(err, ce.ContengineError)
    assert err.type_name == "Unpicklable"
    assert err.message == "the reactor is on fire"
    assert "Unpicklable" in err.traceback_text
    assert "explodes" in err.traceback_text  # the frame that raised it
    assert run.status == "failed"


# -- the step context --------------------------------------------------------------


def test_current_step_is_stable_across_retries_and_crashes(db: str) -> None:
    seen: list[ce.StepContext] = []

    @ce.step
    def first() -> str:
        return "first"

    @ce.step(name="engine.flaky", retries=2, backoff=0)
    def flaky() -> str:
        seen.append(ce.current_step())
        if len(seen) == 1:
            raise ConnectionError("transient")
        if len(seen) == 2:
            raise Crash()
        return "done"

    @ce.workflow
    def keyed() -> Flow:
        yield first()
        return (yield flaky())

    with ce.Engine(db) as engine, pytest.raises(Crash):
        engine.run(keyed, id="keyed-1")
    with ce.Engine(db) as engine:
        assert engine.run(keyed, id="keyed-1") == "done"
        entry = engine.history("keyed-1")[1]

    assert [c.attempt for c in seen] == [1, 2, 3]
    assert {c.run_id for c in seen} == {"keyed-1"}
    assert {c.position for c in seen} == {1}
    assert {c.step for c in seen} == {"engine.flaky"}
    assert {c.workflow for c in seen} == {keyed.name}
    keys = {c.idempotency_key for c in seen}
    assert len(keys) == 1
    assert "keyed-1" in keys.pop()
    assert (entry.attempts, entry.crashes) == (3, 1)


def test_idempotency_keys_differ_between_positions_and_runs(engine: ce.Engine) -> None:
    keys: list[str] = []

    @ce.step
    def record() -> None:
        keys.append(ce.current_step().idempotency_key)

    @ce.workflow
    def twice() -> Flow:
        yield record()
        yield record()

    engine.run(twice, id="k-a")
    engine.run(twice, id="k-b")
    assert len(set(keys)) == 4


def test_idempotency_keys_differ_between_generations_of_a_run(tmp_path: Path) -> None:
    """continue_as_new starts positions at 0 again: the key names the generation too,
    and stays the same for every attempt of one step (here, after a crash)."""
    db = tmp_path / "gen.db"
    seen: list[tuple[int, str]] = []
    crash_once = [True]

    @ce.step(name="engine.charge_gen")
    def charge(cents: int) -> int:
        seen.append((cents, ce.current_step().idempotency_key))
        if cents == 101 and crash_once[0]:
            crash_once[0] = False
            raise Crash()
        return cents

    @ce.workflow(name="engine.charges_gen")
    def charges(cents: int) -> Flow:
        yield charge(cents)
        if cents < 102:
            return ce.continue_as_new(cents + 1)
        return cents

    with ce.Engine(db) as engine, pytest.raises(Crash):
        engine.run(charges, 100, id="sub-1")
    with ce.Engine(db) as engine:
        assert engine.run(charges, 100, id="sub-1") == 102

    assert seen == [
        (100, "sub-1:0"),
        (101, "sub-1/g1:0"),
        (101, "sub-1/g1:0"),  # the attempt after the crash: the same key
        (102, "sub-1/g2:0"),
    ]


def test_current_step_outside_a_step_raises(engine: ce.Engine) -> None:
    with pytest.raises(ce.ContengineError, match="current_step"):
        ce.current_step()
    inside_workflow: list[str] = []

    @ce.workflow
    def asks() -> Flow:
        try:
            ce.current_step()
        except ce.ContengineError as exc:
            inside_workflow.append(type(exc).__name__)
        return None
        yield

    engine.run(asks)
    assert inside_workflow == ["ContengineError"]


# -- engine lifecycle and durability ---------------------------------------------------


def test_engine_as_a_context_manager_keeps_runs_on_file(db: str) -> None:
    @ce.step
    def stamp(x: int) -> int:
        return x + 100

    @ce.workflow
    def stamped(x: int) -> Flow:
        return (yield stamp(x))

    with ce.Engine(db) as engine:
        assert isinstance(engine, ce.Engine)
        assert engine.run(stamped, 1, id="ctx") == 101
    with ce.Engine(db) as engine:
        assert engine.get_run("ctx").status == "completed"
        assert engine.get_run("ctx").result() == 101
        assert engine.history("ctx")[0].value == 101
    with pytest.raises(RuntimeError, match="not swallowed"), ce.Engine(db):
        raise RuntimeError("not swallowed")


def test_durability_normal_runs_and_persists(db: str) -> None:
    calls: list[int] = []

    @ce.step
    def note(x: int) -> int:
        calls.append(x)
        return x

    @ce.workflow
    def noted(n: int) -> Flow:
        total = 0
        for i in range(n):
            total += yield note(i)
        return total

    with ce.Engine(db, durability="normal") as engine:
        assert engine.run(noted, 4, id="normal") == 6
    with ce.Engine(db) as engine:
        assert engine.run(noted, 4, id="normal") == 6
        assert [e.status for e in engine.history("normal")] == ["completed"] * 4
    assert calls == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="durability"):
        ce.Engine(db, durability="sometimes")


# -- signed payloads ----------------------------------------------------------------------


def _interrupted_signed_run(db: str, calls: list[str]) -> ce.Workflow[Any, Any]:
    """A run whose first step completed and whose second step was cut short by a crash."""

    @ce.step
    def reserve() -> str:
        calls.append("reserve")
        return "held"

    @ce.step
    def ship() -> str:
        calls.append("ship")
        if calls.count("ship") == 1:
            raise Crash()
        return "shipped"

    @ce.workflow(name="engine_api.signed")
    def signed() -> Flow:
        held = yield reserve()
        return (held, (yield ship()))

    with ce.Engine(db, secret=b"k") as engine, pytest.raises(Crash):
        engine.run(signed, id="signed")
    return signed


@pytest.mark.parametrize("secret", [None, b"another key"], ids=["no-secret", "wrong-secret"])
def test_signed_payloads_refuse_to_load_without_the_secret(db: str, secret: bytes | None) -> None:
    calls: list[str] = []
    signed = _interrupted_signed_run(db, calls)
    with ce.Engine(db, secret=b"k") as engine:
        before = log_snapshot(engine, "signed")
        status = engine.get_run("signed").status

    with ce.Engine(db, secret=secret) as engine:
        report = engine.run_until_idle()
        assert list(report.stuck) == ["signed"]
        assert isinstance(report.stuck["signed"], ce.CorruptPayload)
        assert isinstance(engine.stuck()["signed"], ce.CorruptPayload)
        assert report.finished == []
        run = engine.get_run("signed")
        assert run.status == status
        assert run.note
        with pytest.raises(ce.CorruptPayload):
            run.result()
        with pytest.raises(ce.CorruptPayload):
            engine.run(signed, id="signed")
        with pytest.raises(ce.CorruptPayload):
            _ = engine.history("signed")[0].value
        assert log_snapshot(engine, "signed") == before
    assert calls == ["reserve", "ship"]

    with ce.Engine(db, secret=b"k") as engine:
        assert engine.run(signed, id="signed") == ("held", "shipped")
    assert calls == ["reserve", "ship", "ship"]


def test_an_unsigned_database_is_refused_by_an_engine_with_a_secret(db: str) -> None:
    @ce.workflow
    def unsigned() -> Flow:
        return "plain"
        yield

    with ce.Engine(db) as engine:
        engine.start(unsigned, id="unsigned")
    with ce.Engine(db, secret=b"k") as engine:
        with pytest.raises(ce.CorruptPayload, match="not signed"):
            engine.get_run("unsigned").result()
        assert engine.get_run("unsigned").status == "pending"
    with ce.Engine(db) as engine:
        assert engine.get_run("unsigned").result() == "plain"


def test_a_signed_result_needs_the_secret_to_be_read(db: str) -> None:
    @ce.workflow
    def secretive() -> Flow:
        return {"token": 42}
        yield

    with ce.Engine(db, secret=b"k") as engine:
        assert engine.run(secretive, id="secretive") == {"token": 42}
    with ce.Engine(db, secret=b"other") as engine, pytest.raises(ce.CorruptPayload):
        engine.get_run("secretive").result()
    with ce.Engine(db, secret=b"k") as engine:
        assert engine.get_run("secretive").result() == {"token": 42}


# -- values that cross a yield ----------------------------------------------------------------


@dataclasses.dataclass
class _Local:
    name: str
    tags: list[str]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, BaseException):
        return type(a) is type(b) and a.args == b.args
    if callable(a):
        return callable(b) and a(2) == b(2)
    return type(a) is type(b) and bool(a == b)


ROUND_TRIP = {
    "none": None,
    "bool": True,
    "big-int": 2**100,
    "float": 3.25,
    "complex": 1 + 2j,
    "str": "naïve ☃",
    "bytes": b"\x00\xff",
    "list": [1, [2, [3]]],
    "tuple": (1, "a", None),
    "dict": {"a": 1, (1, 2): {"nested": [1.5]}},
    "set": {1, 2, 3},
    "frozenset": frozenset({"x"}),
    "range": range(2, 10, 3),
    "decimal": decimal.Decimal("1.10"),
    "datetime": datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC),
    "date": datetime.date(2024, 5, 1),
    "timedelta": datetime.timedelta(days=3, seconds=5),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "enum": Color.GREEN,
    "dataclass": Point(1, 2),
    "dataclass-mutable": _Local("a", ["b"]),
    "lambda": lambda x: x * 3,
    "closure": make_adder(5),
    "exception": ValueError("bad value", 7),
    "custom-exception": OrderDeclined("declined"),
}


@pytest.mark.parametrize("value", list(ROUND_TRIP.values()), ids=list(ROUND_TRIP))
def test_values_round_trip_through_steps_and_replay(db: str, value: Any) -> None:
    received: list[Any] = []
    stops: list[int] = []

    @ce.step
    def echo(v: Any) -> Any:
        return v

    @ce.step
    def stop() -> None:
        stops.append(1)
        if len(stops) == 1:
            raise Crash()

    @ce.workflow
    def carry(v: Any) -> Flow:
        got = yield echo(v)
        received.append(got)
        yield stop()
        return got

    with ce.Engine(db) as engine, pytest.raises(Crash):
        engine.run(carry, value, id="carry")
    with ce.Engine(db) as engine:
        recorded = engine.history("carry")[0].value
        result = engine.run(carry, value, id="carry")  # replays echo's outcome

    assert len(received) == 2
    for got in [*received, recorded, result]:
        assert _same(value, got)
