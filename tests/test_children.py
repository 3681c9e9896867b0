"""Child runs: a workflow called inside a workflow runs as a run of its own.

`total = yield price_all(items)` starts a child run with id f"{parent}/{position}",
created in the same commit as the parent's entry (kind "child"); the parent waits,
and the child's result, or its exception of its own type, comes back at the yield.
`handle = yield ce.start_child(wf, ...)` starts one without waiting, and
`result = yield handle` waits for it (an entry of kind "join").

Steps record every execution in a ledger, so a test can tell what really ran. A
simulated crash is a BaseException (from a step, or from the store at a chosen
commit): it propagates out of the engine and leaves the file as a dead process
would, and a new Engine on the same file resumes.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Crash, CrashingStore, at_commit

import contengine as ce
from contengine.store.base import Progress, Store
from contengine.testing import VirtualClock

pytestmark = pytest.mark.both_stores

Flow = Generator[Any, Any, Any]
START = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
PRICES = {"pen": 2, "ink": 3, "pad": 4}

ledger: list[str] = []  # every step execution, in order
ARMED: set[str] = set()  # step labels that crash (once) on their next execution


class UnknownItem(Exception):
    """A child's own failure (importable, so it is logged with its type)."""


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    ledger.clear()
    ARMED.clear()
    yield
    ledger.clear()
    ARMED.clear()


def enter(label: str) -> None:
    """Crash here if this step is armed; otherwise record that it ran."""
    if label in ARMED:
        ARMED.discard(label)
        raise Crash(label)
    ledger.append(label)


@ce.step(name="children.price")
def price(item: str) -> int:
    """The price of one item; UnknownItem for an item without one."""
    enter(f"price {item}")
    if item not in PRICES:
        raise UnknownItem(item)
    return PRICES[item]


@ce.step(name="children.work")
def work(label: str) -> str:
    """Record the execution and return the label in capitals."""
    enter(label)
    return label.upper()


@ce.workflow(name="children.price_all")
def price_all(items: list[str]) -> Flow:
    """The child: price each item with a step, return the total."""
    total = 0
    for item in items:
        total += yield price(item)
    return total


@ce.workflow(name="children.order")
def order(items: list[str]) -> Flow:
    """Price the items in a child run, then charge the total."""
    total = yield price_all(items)
    receipt = yield work(f"charge {total}")
    return total, receipt


def engine_on(path: Path, store: Store | None = None, **options: Any) -> ce.Engine:
    """A fresh engine on the file, as a restarted process would open it."""
    return ce.Engine(path, durability="normal", store=store, **options)


def run_ids(engine: ce.Engine) -> list[tuple[str, str]]:
    """(id, status) of every run, oldest first."""
    return [(run.id, run.status) for run in engine.runs()]


def log_of(engine: ce.Engine, run_id: str) -> list[tuple[str, str, str, Any]]:
    """(kind, name, status, value or exception type name) of every log entry."""
    rows = []
    for e in engine.history(run_id):
        error = e.error
        rows.append((e.kind, e.name, e.status, e.value if error is None else type(error).__name__))
    return rows


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "children.db"


# -- results and exceptions -------------------------------------------------------------------


def test_a_child_run_is_created_with_the_parents_entry_and_its_result_comes_back(
    db: Path,
) -> None:
    writes: list[tuple[str, list[str], str | None]] = []
    with engine_on(db) as engine:
        original = engine.store.commit

        def spy(progress: Progress) -> None:
            kind = progress.insert.kind if progress.insert else None
            writes.append((progress.run_id, [r.id for r in progress.new_runs], kind))
            original(progress)

        engine.store.commit = spy  # type: ignore[method-assign]
        assert engine.run(order, ["pen", "ink"], id="o") == (5, "CHARGE 5")
        assert run_ids(engine) == [("o", "completed"), ("o/0", "completed")]
        assert engine.get_run("o/0").workflow == "children.price_all"
        assert engine.store.get_run("o/0").parent_id == "o"  # type: ignore[union-attr]
        assert log_of(engine, "o") == [
            ("child", "children.price_all", "completed", 5),
            ("step", "children.work", "completed", "CHARGE 5"),
        ]
        # The child has a log of its own.
        assert log_of(engine, "o/0") == [
            ("step", "children.price", "completed", 2),
            ("step", "children.price", "completed", 3),
        ]
    # One commit writes the parent's waiting entry and creates the child.
    assert ("o", ["o/0"], "child") in writes
    assert sum(1 for _, new, _ in writes if new) == 1
    assert ledger == ["price pen", "price ink", "charge 5"]


@ce.workflow(name="children.careful")
def careful(items: list[str]) -> Flow:
    """Catch the child's exception by its own type; then wait, so a restart must replay."""
    try:
        total = yield price_all(items)
    except UnknownItem as exc:
        total = f"unknown item {exc}"
    yield ce.wait("finish")
    return total


def test_a_childs_exception_comes_back_with_its_own_type_live_and_on_replay(db: Path) -> None:
    with engine_on(db) as engine:
        run = engine.start(careful, ["pen", "quill"], id="o")
        engine.run_until_idle()
        assert run.status == "waiting"
        assert run_ids(engine) == [("o", "waiting"), ("o/0", "failed")]
        entry = engine.history("o")[0]
        assert entry.status == "failed" and isinstance(entry.error, UnknownItem)
        assert "child run 'o/0' failed" in (entry.error_text or "")
    ledger.clear()
    with engine_on(db) as engine:
        engine.signal("o", "finish")
        assert engine.get_run("o").result() == "unknown item quill"
    assert ledger == []  # the replay took the exception from the log


def test_an_uncaught_child_exception_fails_the_parent_with_its_own_type(db: Path) -> None:
    with engine_on(db) as engine:
        with pytest.raises(UnknownItem, match="quill"):
            engine.run(order, ["quill"], id="o")
        assert run_ids(engine) == [("o", "failed"), ("o/0", "failed")]
        with pytest.raises(UnknownItem):
            engine.get_run("o/0").result()
    assert ledger == ["price quill"]


def test_run_until_idle_drives_the_parent_and_its_children(db: Path) -> None:
    with engine_on(db) as engine:
        run = engine.start(order, ["pad"], id="o")
        report = engine.run_until_idle()
        assert sorted(report.finished) == ["o", "o/0"] and report.stuck == {}
        assert run.result() == (4, "CHARGE 4")


# -- crashes and replay -----------------------------------------------------------------------


def test_a_replay_after_a_crash_in_the_parent_does_not_start_a_second_child(db: Path) -> None:
    ARMED.add("charge 5")
    with engine_on(db) as engine, pytest.raises(Crash):
        engine.run(order, ["pen", "ink"], id="o")
    with engine_on(db) as engine:
        assert engine.run(order, ["pen", "ink"], id="o") == (5, "CHARGE 5")
        assert run_ids(engine) == [("o", "completed"), ("o/0", "completed")]
        assert [e.attempts for e in engine.history("o")] == [1, 2]
    assert ledger == ["price pen", "price ink", "charge 5"]


def test_a_crash_in_a_childs_step_resumes_and_finishes_both(db: Path) -> None:
    ARMED.add("price ink")
    with engine_on(db) as engine:
        with pytest.raises(Crash):
            engine.run(order, ["pen", "ink", "pad"], id="o")
        assert run_ids(engine) == [("o", "waiting"), ("o/0", "running")]
    with engine_on(db) as engine:
        assert engine.run(order, ["pen", "ink", "pad"], id="o") == (9, "CHARGE 9")
        assert run_ids(engine) == [("o", "completed"), ("o/0", "completed")]
        child = engine.history("o/0")
        assert [(e.attempts, e.crashes) for e in child] == [(1, 0), (2, 1), (1, 0)]
    assert ledger == ["price pen", "price ink", "price pad", "charge 9"]


@ce.workflow(name="children.ship")
def ship(order_id: str) -> Flow:
    """A child that ships an order."""
    yield work(f"ship {order_id}")
    return f"parcel {order_id}"


@ce.workflow(name="children.shop")
def shop(items: list[str]) -> Flow:
    """Price in a child and wait; start shipping without waiting; email; then join."""
    total = yield price_all(items)
    handle = yield ce.start_child(ship, "o-1")
    note = yield work("email")
    parcel = yield handle
    return total, handle, note, parcel


SHOP_RESULT = (5, ce.ChildHandle("s/1"), "EMAIL", "parcel o-1")


def test_start_child_returns_a_handle_at_once_and_yielding_it_waits_for_the_result(
    db: Path,
) -> None:
    with engine_on(db) as engine:
        assert engine.run(shop, ["pen", "ink"], id="s") == SHOP_RESULT
        assert log_of(engine, "s") == [
            ("child", "children.price_all", "completed", 5),
            ("start_child", "children.ship", "completed", ce.ChildHandle("s/1")),
            ("step", "children.work", "completed", "EMAIL"),
            ("join", "s/1", "completed", "parcel o-1"),
        ]
        assert run_ids(engine) == [("s", "completed"), ("s/0", "completed"), ("s/1", "completed")]
    # The parent went on to the email before the shipping child ran.
    assert ledger == ["price pen", "price ink", "email", "ship o-1"]


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_crash_at_any_commit_of_parent_and_children_resumes_to_the_same_end(
    tmp_path: Path, when: str
) -> None:
    counting = CrashingStore(tmp_path / "count.db", lambda _, n: False)
    with engine_on(tmp_path / "count.db", counting) as engine:
        assert engine.run(shop, ["pen", "ink"], id="s") == SHOP_RESULT
        want = {run_id: log_of(engine, run_id) for run_id, _ in run_ids(engine)}
    reference = list(ledger)
    for k in range(1, counting.commits + 1):
        ledger.clear()
        path = tmp_path / f"{when}-{k}.db"
        store = CrashingStore(path, at_commit(k), when)
        with engine_on(path, store) as engine, pytest.raises(Crash):
            engine.run(shop, ["pen", "ink"], id="s")
        with engine_on(path) as engine:
            assert engine.run(shop, ["pen", "ink"], id="s") == SHOP_RESULT, (when, k)
            got = {run_id: log_of(engine, run_id) for run_id, _ in run_ids(engine)}
        assert got == want, (when, k)  # one run per child, each logged as before
        # Only a step whose outcome's commit was lost runs again, once.
        assert set(ledger) == set(reference), (when, k)
        assert len(ledger) - len(reference) <= 1, (when, k, ledger)


@ce.workflow(name="children.later")
def join_later() -> Flow:
    """Start a child, sleep an hour, then join it."""
    handle = yield ce.start_child(ship, "o-2")
    yield ce.sleep(3600)
    return (yield handle)


def test_joining_a_child_that_already_finished_returns_at_once(db: Path) -> None:
    with engine_on(db, clock=VirtualClock(START)) as engine:
        run = engine.start(join_later, id="j")
        engine.run_until_idle(until=START + 60)
        assert run_ids(engine) == [("j", "sleeping"), ("j/0", "completed")]
        engine.run_until_idle()
        assert run.result() == "parcel o-2"
        join = engine.history("j")[-1]
        assert (join.kind, join.status, join.started_at) == ("join", "completed", START + 3600)
        assert join.finished_at == join.started_at  # it did not wait


def test_yielding_a_handle_right_after_start_child_waits_for_the_child(db: Path) -> None:
    @ce.workflow(name="children.join_now")
    def join_now() -> Flow:
        handle = yield ce.start_child(ship, "o-3")
        return (yield handle)

    with engine_on(db) as engine:
        assert engine.run(join_now, id="n") == "parcel o-3"


# -- cancellation -----------------------------------------------------------------------------


@ce.workflow(name="children.leaf")
def leaf(name: str) -> Flow:
    """Wait for a signal that never comes; clean up when cancelled."""
    try:
        yield ce.wait("never")
    finally:
        yield work(f"cleanup {name}")


@ce.workflow(name="children.middle")
def middle() -> Flow:
    """A child that waits for a child of its own."""
    try:
        yield leaf("grandchild")
    finally:
        yield work("cleanup middle")


@ce.workflow(name="children.top")
def top() -> Flow:
    """Start a child without waiting, then wait for another one."""
    try:
        handle = yield ce.start_child(middle)
        yield leaf("child")
        return handle
    finally:
        yield work("cleanup top")


def test_cancelling_a_parent_cancels_its_children_recursively_and_each_cleans_up(
    db: Path,
) -> None:
    with engine_on(db) as engine:
        engine.start(top, id="t")
        engine.run_until_idle()
        assert run_ids(engine) == [
            ("t", "waiting"),
            ("t/0", "waiting"),
            ("t/1", "waiting"),
            ("t/0/0", "waiting"),
        ]
        assert engine.cancel("t") is True
        engine.run_until_idle()
        assert [status for _, status in run_ids(engine)] == ["cancelled"] * 4
        for run_id in ("t", "t/0", "t/1", "t/0/0"):
            with pytest.raises(ce.Cancelled):
                engine.get_run(run_id).result()
        # Each was cancelled at its own yield, and its finally block ran its step.
        assert log_of(engine, "t") == [
            ("start_child", "children.middle", "completed", ce.ChildHandle("t/0")),
            ("child", "children.leaf", "failed", "Cancelled"),
            ("step", "children.work", "completed", "CLEANUP TOP"),
        ]
        assert log_of(engine, "t/0/0") == [
            ("wait", "never", "failed", "Cancelled"),
            ("step", "children.work", "completed", "CLEANUP GRANDCHILD"),
        ]
    assert sorted(ledger) == [
        "cleanup child",
        "cleanup grandchild",
        "cleanup middle",
        "cleanup top",
    ]


def test_a_child_cancelled_on_its_own_fails_its_parent_with_child_cancelled(db: Path) -> None:
    with engine_on(db) as engine:
        engine.start(top, id="t")
        engine.run_until_idle()
        assert engine.cancel("t/1") is True
        engine.run_until_idle()
        assert engine.get_run("t/1").status == "cancelled"
        # Not a cancellation of the parent: an ordinary error at its yield, which,
        # uncaught, fails it after its cleanup.
        assert engine.get_run("t").status == "failed"
        with pytest.raises(ce.ChildCancelled, match="'t/1' was cancelled"):
            engine.get_run("t").result()
        assert log_of(engine, "t")[1:] == [
            ("child", "children.leaf", "failed", "ChildCancelled"),
            ("step", "children.work", "completed", "CLEANUP TOP"),
        ]
    assert sorted(ledger) == ["cleanup child", "cleanup top"]


# -- children that cannot start ---------------------------------------------------------------


@ce.workflow(name="children.bad_arguments")
def bad_arguments(which: str) -> Flow:
    """Start a child with arguments that cannot be stored, or that it does not take."""
    try:
        if which == "unserializable":
            yield price_all(item for item in ["pen"])  # type: ignore[arg-type]  # a live generator
        else:
            yield price_all(["pen"], "extra")  # type: ignore[call-arg]
    except (ce.SerializationError, TypeError) as exc:
        return type(exc).__name__, str(exc)
    return "started"


def test_a_child_whose_arguments_do_not_serialize_raises_at_the_yield(db: Path) -> None:
    with engine_on(db) as engine:
        kind, message = engine.run(bad_arguments, "unserializable", id="b")
        assert kind == "SerializationError"
        assert "the arguments of child run 'b/0'" in message
        assert run_ids(engine) == [("b", "completed")]  # no child was created
        assert [(k, s) for k, _, s, _ in log_of(engine, "b")] == [("child", "failed")]
    assert ledger == []


def test_a_child_called_with_arguments_it_does_not_take_raises_type_error(db: Path) -> None:
    with engine_on(db) as engine:
        kind, _ = engine.run(bad_arguments, "too many", id="b")
        assert kind == "TypeError"
        assert run_ids(engine) == [("b", "completed")]
