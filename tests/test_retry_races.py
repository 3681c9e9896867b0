"""retry against a run that changed after it was planned: two retries of one run, the
second one's re-run failing somewhere later before the first one rewinds. The stale
plan is refused with nothing changed, through the engine and through the command."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import pytest
from stores import current

import contengine as ce
import contengine.cli.ops
import contengine.engine.engine
from contengine.cli.main import main
from contengine.engine.retrying import plan_retry
from contengine.testing import VirtualClock

pytestmark = pytest.mark.both_stores

LEDGER: list[str] = []  # every step execution, in order
BROKEN = {"first": True, "second": True}  # the tests "fix" first between the two retries
STALE = "changed since the retry was planned; nothing was changed, retry again"


@pytest.fixture(autouse=True)
def _fresh() -> None:
    LEDGER.clear()
    BROKEN.update(first=True, second=True)


@ce.step
def rr_first(x: int) -> int:
    """Fails until BROKEN["first"] is cleared."""
    LEDGER.append(f"first {x}")
    if BROKEN["first"]:
        raise ValueError("first is broken")
    return x + 1


@ce.step
def rr_second(x: int) -> int:
    """Fails until BROKEN["second"] is cleared."""
    LEDGER.append(f"second {x}")
    if BROKEN["second"]:
        raise ValueError("second is broken")
    return x * 10


@ce.workflow(name="rr.two")
def two(x: int) -> Generator[Any, Any, int]:
    """first, then second."""
    y = yield rr_first(x)
    return int((yield rr_second(y)))


@ce.workflow(name="rr.parent")
def parent(x: int) -> Generator[Any, Any, int]:
    """A step, then a two child run (which fails while first is broken)."""
    y = yield rr_second(x)
    return int((yield two(y)))


def engine_on(path: Path) -> ce.Engine:
    return ce.Engine(path, clock=VirtualClock(), workflows=[two, parent])


def failed_at_first(db: Path) -> None:
    with engine_on(db) as engine, pytest.raises(ValueError, match="first"):
        engine.run(two, 1, id="r")


def another_retry_fails_later(db: Path) -> None:
    """Retry B: first is fixed, the re-run completes it and fails at second."""
    BROKEN["first"] = False
    with engine_on(db) as other:
        with pytest.raises(ValueError, match="second"):
            other.retry("r").result()
        assert [(e.name, e.status) for e in other.history("r")] == [
            ("rr_first", "completed"),
            ("rr_second", "failed"),
        ]


def planned_then(db: Path, real: Callable[..., Any]) -> Callable[..., Any]:
    """plan_retry that lets retry B and its re-run happen right after planning (once)."""
    done: list[bool] = []

    def plan(*args: Any, **kwargs: Any) -> Any:
        made = real(*args, **kwargs)
        if not done:
            done.append(True)
            another_retry_fails_later(db)
        return made

    return plan


def test_a_retry_planned_before_another_retry_and_failure_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "app.db"
    failed_at_first(db)
    with engine_on(db) as engine:
        # Retry A plans to resume at position 0 (where first failed); retry B, its
        # re-run and the new failure at position 1 happen before A rewinds.
        monkeypatch.setattr(contengine.engine.engine, "plan_retry", planned_then(db, plan_retry))
        with pytest.raises(ce.ContengineError, match=STALE):
            engine.retry("r")
        monkeypatch.undo()
        # first's completed entry is kept: the stale plan would have discarded it.
        assert engine.get_run("r").status == "failed"
        assert [(e.name, e.status) for e in engine.history("r")] == [
            ("rr_first", "completed"),
            ("rr_second", "failed"),
        ]
        BROKEN["second"] = False
        LEDGER.clear()
        assert engine.retry("r").result() == 20  # planned afresh: resumes at second
        assert LEDGER == ["second 2"]


def test_the_retry_command_reports_a_stale_plan_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "app.db"
    failed_at_first(db)
    monkeypatch.setattr(contengine.cli.ops, "plan_retry", planned_then(db, plan_retry))
    capsys.readouterr()
    code = main(["retry", "r", "--db", current().target(db)])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert STALE in err and err.count("\n") == 1
    with engine_on(db) as engine:
        assert engine.get_run("r").status == "failed"
        assert [e.status for e in engine.history("r")] == ["completed", "failed"]


def test_a_plan_with_one_changed_run_rewinds_none_of_its_runs(tmp_path: Path) -> None:
    BROKEN["second"] = False
    with engine_on(tmp_path / "app.db") as engine:
        with pytest.raises(ValueError, match="first"):
            engine.run(parent, 1, id="p")
        plan = plan_retry(engine.store, "p")
        assert [r.run_id for r in plan] == ["p", "p/1"]
        before = {r.run_id: engine.store.load_log(r.run_id) for r in plan}
        # The child as another state of it (a digest the plan did not read).
        stale = [plan[0], dataclasses.replace(plan[1], seen="0" * 32)]
        with pytest.raises(ce.ContengineError, match="'p/1' " + STALE):
            engine.rewind(stale)
        for r in plan:  # the parent, rewound first, was rolled back with it
            assert engine.get_run(r.run_id).status == "failed"
            assert engine.store.load_log(r.run_id) == before[r.run_id]
        BROKEN["first"] = False
        assert engine.rewind(plan).result() == 110
