"""retry of a cancelled run: it resumes where the cancel was raised (the cleanup its
`finally:` ran is discarded), with the child runs the cancel took down; what cannot be
resumed is refused with nothing changed; the command line's bulk retry takes them."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from stores import current

import contengine as ce
from contengine.cli.main import main
from contengine.testing import VirtualClock

pytestmark = pytest.mark.both_stores

LEDGER: list[str] = []  # every step execution, in order


@pytest.fixture(autouse=True)
def _fresh() -> None:
    LEDGER.clear()


@ce.step(name="rc.work")
def work(what: str) -> str:
    """Records that it ran."""
    LEDGER.append(what)
    return what


@ce.step(name="rc.cancels_itself")
def cancels_itself(db: str) -> str:
    """Cancels its own run while it runs, the first time only."""
    LEDGER.append("self")
    if LEDGER.count("self") == 1:
        with ce.Engine(db) as other:
            other.cancel(ce.current_step().run_id)
    return "self-done"


@ce.workflow(name="rc.guarded")
def guarded(order: str) -> Generator[Any, Any, str]:
    """A step, a wait, and cleanup in finally."""
    try:
        yield work(f"reserve {order}")
        decision = yield ce.wait("decision")
        yield work(f"ship {order} {decision}")
        return f"shipped {order}"
    finally:
        yield work(f"cleanup {order}")


@ce.workflow(name="rc.in_step")
def in_step(db: str) -> Generator[Any, Any, str]:
    """The cancel comes while its step runs."""
    yield work("before")
    got = yield cancels_itself(db)
    yield work("after")
    return str(got)


@ce.workflow(name="rc.leaf")
def leaf(tag: str) -> Generator[Any, Any, str]:
    """Waits for a signal, then works."""
    got = yield ce.wait("go")
    return str((yield work(f"leaf {tag} {got}")))


@ce.workflow(name="rc.parent")
def parent() -> Generator[Any, Any, list[str]]:
    """Starts a detached child, then waits on an attached one."""
    handle = yield ce.start_child(leaf, "detached")
    attached = yield leaf("attached")
    return [attached, (yield handle)]


def engine_on(path: Path) -> ce.Engine:
    return ce.Engine(path, clock=VirtualClock(), workflows=[guarded, in_step, leaf, parent])


def test_a_cancelled_waiting_run_resumes_at_its_wait(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    with engine_on(db) as engine:
        run = engine.start(guarded, "o1", id="g")
        engine.run_until_idle()
        engine.cancel("g")
        engine.run_until_idle()
        assert run.status == "cancelled"
        assert LEDGER == ["reserve o1", "cleanup o1"]
        assert [e.status for e in engine.history("g")] == ["completed", "failed", "completed"]

        retried = engine.retry("g")
        assert retried.status == "pending"
        # Cut at the wait: the cleanup is discarded with it.
        assert [e.kind for e in engine.history("g")] == ["step"]
        engine.signal("g", "decision", "yes")
        engine.run_until_idle()
        assert retried.result(timeout=0) == "shipped o1"
    # The step before the cancel did not run again; the cleanup runs once more, at the end.
    assert LEDGER == ["reserve o1", "cleanup o1", "ship o1 yes", "cleanup o1"]


def test_a_step_running_at_the_cancel_runs_again(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    target = current().target(db)
    with engine_on(db) as engine:
        run = engine.start(in_step, target, id="s")
        engine.run_until_idle()
        assert run.status == "cancelled"
        assert engine.history("s")[1].error_text.startswith("Cancelled: the run was cancelled")
        engine.retry("s")
        engine.run_until_idle()
        assert run.result(timeout=0) == "self-done"
    # Its result was dropped by the cancel, so the retried run runs it again (at least
    # once, as a step whose outcome was never committed); "before" is not run again.
    assert LEDGER == ["before", "self", "self", "after"]


def test_the_children_the_cancel_took_down_are_resumed_with_the_parent(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    with engine_on(db) as engine:
        run = engine.start(parent, id="p")
        engine.run_until_idle()
        kids = sorted(r.id for r in engine.runs() if r.id != "p")
        assert len(kids) == 2
        engine.cancel("p")
        engine.run_until_idle()
        assert {r.id: r.status for r in engine.runs()} == dict.fromkeys(["p", *kids], "cancelled")

        engine.retry("p")
        assert {r.id: r.status for r in engine.runs()} == dict.fromkeys(["p", *kids], "pending")
        engine.run_until_idle()
        for kid in kids:
            engine.signal(kid, "go", kid[-1])
        engine.run_until_idle()
        result = run.result(timeout=0)
    assert sorted(result) == sorted(f"leaf {t} {k[-1]}" for t, k in zip(
        ("detached", "attached"), kids, strict=True))  # fmt: skip


def test_a_run_cancelled_before_it_ran_starts_from_the_top(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    with engine_on(db) as engine:
        run = engine.start(guarded, "o2", id="early")
        engine.cancel("early")
        engine.run_until_idle()
        assert run.status == "cancelled"
        engine.retry("early")
        engine.run_until_idle()
        assert run.status == "waiting"
        engine.signal("early", "decision", "ok")
        engine.run_until_idle()
        assert run.result(timeout=0) == "shipped o2"


def test_what_cannot_be_resumed_is_refused_with_nothing_changed(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    with engine_on(db) as engine:
        run = engine.start(guarded, "o3", id="w")
        engine.run_until_idle()
        with pytest.raises(ce.ContengineError, match="is waiting, not failed or cancelled"):
            engine.retry("w")
        engine.cancel("w")
        engine.run_until_idle()
        # At 3 the cleanup step is kept: fine. Past the log: refused, with the bound.
        with pytest.raises(ce.ContengineError, match="from 0 to 3"):
            engine.retry("w", at=4)
        assert run.status == "cancelled"
        # Kept whole, the log replays the cancel at the wait and the cleanup after it: the
        # run ends cancelled again, running nothing.
        before = list(LEDGER)
        engine.retry("w", at=3)
        engine.run_until_idle()
        assert run.status == "cancelled" and before == LEDGER


def test_bulk_retry_takes_cancelled_runs_by_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "app.db"
    with engine_on(db) as engine:
        for i in range(3):
            engine.start(guarded, f"b{i}", id=f"b{i}")
        engine.run_until_idle()
        for i in range(2):
            engine.cancel(f"b{i}")
        engine.run_until_idle()
    capsys.readouterr()
    code = main(["retry", "--status", "cancelled", "--yes", "--db", current().target(db)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "2 cancelled runs match: 'b0', 'b1'" in err and "retried 2 of 2 runs" in out
    with engine_on(db) as engine:
        assert {r.id: r.status for r in engine.runs()} == {
            "b0": "pending",
            "b1": "pending",
            "b2": "waiting",
        }
