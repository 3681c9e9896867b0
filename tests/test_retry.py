"""retry: a saga resumes at the step that failed, a parent retries its failed child chain,
`at` picks the position, and what cannot be repeated is refused with nothing changed."""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from stores import current

import contengine as ce
from contengine.cli.main import main
from contengine.core.workflow import Workflow
from contengine.testing import VirtualClock

pytestmark = pytest.mark.both_stores

LEDGER: list[str] = []  # every step execution, in order
FIXED = {"ship": False, "deep": False, "tail": False}  # flags the tests flip to "fix the bug"


@pytest.fixture(autouse=True)
def _fresh() -> None:
    LEDGER.clear()
    FIXED.update(ship=False, deep=False, tail=False)


class OutOfStock(Exception):
    """The warehouse has none."""


class OrderFailed(Exception):
    """The order could not be completed."""


@ce.step
def rt_charge(order: str) -> str:
    """Always works."""
    LEDGER.append(f"charge {order}")
    return f"r-{order}"


@ce.step
def rt_ship(order: str) -> str:
    """Out of stock until FIXED["ship"]."""
    LEDGER.append(f"ship {order}")
    if not FIXED["ship"]:
        raise OutOfStock(order)
    return f"t-{order}"


@ce.step
def rt_refund(receipt: str) -> None:
    """Always works."""
    LEDGER.append(f"refund {receipt}")


@ce.step
def rt_notify(order: str) -> None:
    """Always works."""
    LEDGER.append(f"notify {order}")


@ce.workflow(name="rt.saga")
def saga(order: str) -> Generator[Any, Any, str]:
    """Charge, ship; on OutOfStock refund and re-raise."""
    receipt = yield rt_charge(order)
    try:
        tracking = yield rt_ship(order)
    except OutOfStock:
        yield rt_refund(receipt)
        yield rt_notify(order)
        raise
    return str(tracking)


@ce.workflow(name="rt.wrapping_saga")
def wrapping_saga(order: str) -> Generator[Any, Any, str]:
    """Like saga, but raises an exception of its own from the step's."""
    receipt = yield rt_charge(order)
    try:
        tracking = yield rt_ship(order)
    except OutOfStock as exc:
        yield rt_refund(receipt)
        raise OrderFailed(f"order {order} failed") from exc
    return str(tracking)


@ce.workflow(name="rt.fallback")
def fallback(order: str) -> Generator[Any, Any, str]:
    """A failure caught and got over; later the workflow's own check fails until fixed."""
    with contextlib.suppress(OutOfStock):  # raised at the yield, and caught
        yield rt_ship(order)
    yield rt_notify(order)
    if not FIXED["tail"]:
        raise RuntimeError("the workflow itself is broken")
    return "done"


@ce.workflow(name="rt.waits")
def waits(order: str) -> Generator[Any, Any, str]:
    """A signal taken, then a step that fails."""
    yield ce.wait("go")
    return str((yield rt_ship(order)))


@ce.workflow(name="rt.leaf")
def leaf(order: str) -> Generator[Any, Any, str]:
    """A step, then ship (which may fail)."""
    yield rt_notify(order)
    return str((yield rt_ship(order)))


@ce.workflow(name="rt.middle")
def middle(order: str) -> Generator[Any, Any, str]:
    """A step, then a leaf child; refunds when the child fails, and re-raises."""
    receipt = yield rt_charge(order)
    try:
        return str((yield leaf(order)))
    except OutOfStock:
        yield rt_refund(receipt)
        raise


@ce.workflow(name="rt.top")
def top(order: str) -> Generator[Any, Any, str]:
    """A step, then a middle child."""
    yield rt_notify(f"top-{order}")
    return str((yield middle(order)))


@ce.workflow(name="rt.joins")
def joins(order: str) -> Generator[Any, Any, str]:
    """Starts a leaf child, then joins it."""
    handle = yield ce.start_child(leaf, order)
    return str((yield handle))


@ce.workflow(name="rt.waiting_leaf")
def waiting_leaf() -> Generator[Any, Any, str]:
    """Waits for a signal forever."""
    return str((yield ce.wait("never")))


@ce.workflow(name="rt.waiting_parent")
def waiting_parent() -> Generator[Any, Any, str]:
    """A child that waits (and is cancelled on its own by the test)."""
    return str((yield waiting_leaf()))


WORKFLOWS: list[Workflow[Any, Any]] = [
    saga, wrapping_saga, fallback, waits, leaf, middle, top, joins, waiting_leaf,
    waiting_parent,
]  # fmt: skip


def engine_on(path: Path) -> ce.Engine:
    return ce.Engine(path, clock=VirtualClock(), workflows=WORKFLOWS)


def cli(capsys: pytest.CaptureFixture[str], db: Path, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([*argv, "--db", current().target(db)])
    out, err = capsys.readouterr()
    return code, out, err


def statuses(engine: ce.Engine, run_id: str) -> list[tuple[str, str]]:
    return [(e.name, e.status) for e in engine.history(run_id)]


# -- a saga ------------------------------------------------------------------------


def test_retry_of_a_saga_resumes_at_the_failed_step_and_drops_the_compensation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "app.db"
    with engine_on(db) as engine:
        with pytest.raises(OutOfStock):
            engine.run(saga, "o1", id="s")
        assert [s for _, s in statuses(engine, "s")] == [
            "completed", "failed", "completed", "completed",
        ]  # fmt: skip
    FIXED["ship"] = True
    LEDGER.clear()
    code, out, _ = cli(capsys, db, "retry", "s")
    assert code == 0 and "resumes at position 1" in out
    with engine_on(db) as engine:
        assert [e.position for e in engine.history("s")] == [0]  # refund, notify: gone
        assert engine.get_run("s").result() == "t-o1"
        assert LEDGER == ["ship o1"]  # the charge replayed; no second refund
        assert statuses(engine, "s") == [("rt_charge", "completed"), ("rt_ship", "completed")]


def test_retry_of_a_saga_that_raises_its_own_exception_from_the_failure(tmp_path: Path) -> None:
    with engine_on(tmp_path / "app.db") as engine:
        with pytest.raises(OrderFailed):
            engine.run(wrapping_saga, "o2", id="w")
        FIXED["ship"] = True
        LEDGER.clear()
        assert engine.retry("w").result() == "t-o2"
        assert LEDGER == ["ship o2"]


def test_a_saga_failing_again_after_retry_compensates_again_under_the_same_keys(
    tmp_path: Path,
) -> None:
    with engine_on(tmp_path / "app.db") as engine:
        with pytest.raises(OutOfStock):
            engine.run(saga, "o3", id="again")
        first = engine.history("again")
        LEDGER.clear()
        with pytest.raises(OutOfStock):
            engine.retry("again").result()
        assert LEDGER == ["ship o3", "refund r-o3", "notify o3"]
        again = engine.history("again")
        # The same requests at the same positions: the same idempotency keys.
        assert [(e.position, e.name) for e in again] == [(e.position, e.name) for e in first]


def test_retry_after_a_failure_that_was_got_over_resumes_after_the_log(tmp_path: Path) -> None:
    with engine_on(tmp_path / "app.db") as engine:
        with pytest.raises(RuntimeError):
            engine.run(fallback, "o4", id="f")
        FIXED["tail"] = True
        LEDGER.clear()
        assert engine.retry("f").result() == "done"
        assert LEDGER == []  # the caught failure and the step after it stay as logged
        assert statuses(engine, "f") == [("rt_ship", "failed"), ("rt_notify", "completed")]


# -- at ------------------------------------------------------------------------------


def test_retry_at_a_position_keeps_that_many_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "app.db"
    with engine_on(db) as engine, pytest.raises(OutOfStock):
        engine.run(saga, "o5", id="a")
    LEDGER.clear()
    # The old way for a saga: keep the whole log, replay it, fail the same way.
    code, out, _ = cli(capsys, db, "retry", "a", "--at", "4")
    assert code == 0 and "resumes at position 4" in out
    with engine_on(db) as engine:
        with pytest.raises(OutOfStock):
            engine.get_run("a").result()
        assert LEDGER == []
    FIXED["ship"] = True
    code, out, _ = cli(capsys, db, "retry", "a", "--at", "0")
    assert code == 0 and "resumes at position 0" in out
    with engine_on(db) as engine:
        assert engine.get_run("a").result() == "t-o5"
        assert LEDGER == ["charge o5", "ship o5"]
    code, _, err = cli(capsys, db, "retry", "a", "--at", "0")
    assert code == 1 and "is completed, not failed" in err


def test_retry_refuses_positions_outside_the_log_and_lost_signals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "app.db"
    with engine_on(db) as engine:
        engine.start(waits, "o6", id="sig")
        engine.signal("sig", "go", "now")
        with pytest.raises(OutOfStock):
            engine.get_run("sig").result()
        before = statuses(engine, "sig")
    code, _, err = cli(capsys, db, "retry", "sig", "--at", "0")
    assert code == 1 and "a wait that took signal 'go', which would be lost" in err
    assert "--at 1" in err and err.count("\n") == 1
    code, _, err = cli(capsys, db, "retry", "sig", "--at", "9")
    assert code == 1 and "from 0 to 2" in err
    with engine_on(db) as engine:
        assert engine.get_run("sig").status == "failed"
        assert statuses(engine, "sig") == before
        FIXED["ship"] = True
        assert engine.retry("sig").result() == "t-o6"  # at the failed step: the wait stays


# -- child runs ----------------------------------------------------------------------


def test_retry_of_a_parent_retries_its_failed_child_chain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "app.db"
    with engine_on(db) as engine:
        with pytest.raises(OutOfStock):
            engine.run(top, "o7", id="top")
        assert engine.get_run("top/1").status == "failed"
        assert engine.get_run("top/1/1").status == "failed"
    FIXED["ship"] = True
    LEDGER.clear()
    code, out, _ = cli(capsys, db, "retry", "top")
    assert code == 0
    assert out.splitlines() == [
        "run 'top' is pending again; it resumes at position 1 when driven",
        "  and its failed child run 'top/1' is pending again; it resumes at position 1 when driven",
        "  and its failed child run 'top/1/1' is pending again; it resumes at position 1 "
        "when driven",
    ]
    with engine_on(db) as engine:
        assert engine.get_run("top").result() == "t-o7"
        assert LEDGER == ["ship o7"]  # only the step that failed ran again
        assert engine.get_run("top/1").status == "completed"
        # The middle run's refund (after its failed child entry) is gone from its log.
        assert statuses(engine, "top/1") == [("rt_charge", "completed"), ("rt.leaf", "completed")]


def test_retry_of_a_parent_that_joined_a_failed_child(tmp_path: Path) -> None:
    with engine_on(tmp_path / "app.db") as engine:
        with pytest.raises(OutOfStock):
            engine.run(joins, "o8", id="j")
        FIXED["ship"] = True
        LEDGER.clear()
        assert engine.retry("j").result() == "t-o8"
        assert LEDGER == ["ship o8"]


def test_retry_of_a_parent_whose_child_was_cancelled_or_deleted_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "app.db"
    with engine_on(db) as engine:
        engine.start(waiting_parent, id="wp")
        engine.run_until_idle()
        engine.cancel("wp/0")
        engine.run_until_idle()
        assert engine.get_run("wp").status == "failed"
    code, _, err = cli(capsys, db, "retry", "wp")
    assert code == 1 and "its child run 'wp/0' was cancelled" in err
    with engine_on(db) as engine:
        assert engine.get_run("wp").status == "failed"
        with pytest.raises(OutOfStock):
            engine.run(top, "o9", id="gone")
    with current().sql(db) as conn:
        conn.execute("DELETE FROM runs WHERE id = 'gone/1/1'")
    code, _, err = cli(capsys, db, "retry", "gone")
    assert code == 1 and "'gone/1/1', which no longer exists" in err
    with engine_on(db) as engine:  # the whole chain is left as it was
        assert engine.get_run("gone").status == "failed"
        assert engine.get_run("gone/1").status == "failed"
        assert len(engine.history("gone/1")) == 3
