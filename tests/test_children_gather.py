"""Child runs as members of ce.gather and ce.race, on both stores: results in argument
order, the first failure raised, a losing child cancelled, a cancel of the parent taking
its children down, a crash at every boundary (ce.testing.check) and a real SIGKILL."""

from __future__ import annotations

import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from helpers import kill_then_finish
from stores import current

import contengine as ce
from contengine.testing import VirtualClock

pytestmark = pytest.mark.both_stores

WAIT = 120.0  # a bound against hanging, never reached when things work


class Declined(Exception):
    """A child's own failure."""


@ce.step(name="cg.double")
def double(x: int) -> int:
    """Doubles."""
    return 2 * x


@ce.workflow(name="cg.kid")
def kid(x: int) -> Generator[Any, Any, int]:
    """A child of one step."""
    return (yield double(x))


@ce.workflow(name="cg.failing_kid")
def failing_kid(x: int) -> Generator[Any, Any, int]:
    """A child that fails after a step."""
    yield double(x)
    raise Declined(f"kid {x} declined")


@ce.workflow(name="cg.waiting_kid")
def waiting_kid() -> Generator[Any, Any, Any]:
    """A child that waits for a signal."""
    try:
        return (yield ce.wait("go"))
    finally:
        yield double(0)  # its cleanup, when it is cancelled


@ce.workflow(name="cg.fan")
def fan(n: int) -> Generator[Any, Any, list[int]]:
    """Children and a step at once."""
    return list((yield ce.gather(kid(n), double(n + 1), kid(n + 2))))


@ce.workflow(name="cg.fan_fails")
def fan_fails() -> Generator[Any, Any, str]:
    """A gather whose second child fails."""
    try:
        yield ce.gather(kid(1), failing_kid(2), kid(3))
    except Declined as exc:
        return f"caught: {exc}"
    return "no failure?"


@ce.workflow(name="cg.race_timer")
def race_timer() -> Generator[Any, Any, Any]:
    """A child that waits forever against a timer."""
    return (yield ce.race(waiting_kid(), ce.sleep(30)))


@ce.workflow(name="cg.race_kid")
def race_kid() -> Generator[Any, Any, Any]:
    """A quick child against a wait that never ends."""
    return (yield ce.race(kid(21), ce.wait("never")))


@ce.workflow(name="cg.gather_waiting")
def gather_waiting() -> Generator[Any, Any, Any]:
    """A child that waits, and a step."""
    return (yield ce.gather(waiting_kid(), double(5)))


def engine_on(path: Path) -> ce.Engine:
    return ce.Engine(path, clock=VirtualClock())


def children_of(engine: ce.Engine, run_id: str) -> dict[str, str]:
    return {r.id: r.status for r in engine.runs() if r.id.startswith(run_id + "/")}


def test_a_gather_of_children_and_a_step_gives_results_in_argument_order(tmp_path: Path) -> None:
    with engine_on(tmp_path / "g.db") as engine:
        assert engine.run(fan, 10, id="fan") == [20, 22, 24]
        kids = children_of(engine, "fan")
        assert sorted(kids.values()) == ["completed", "completed"]
        assert [e.kind for e in engine.history("fan")] == ["gather", "child", "step", "child"]
        # The children are the ones the entries name, at the members' positions.
        assert set(kids) == {"fan/1", "fan/3"}


def test_the_first_failing_child_is_raised_once_all_have_ended(tmp_path: Path) -> None:
    with engine_on(tmp_path / "f.db") as engine:
        assert engine.run(fan_fails, id="ff") == "caught: kid 2 declined"
        assert children_of(engine, "ff") == {
            "ff/1": "completed",
            "ff/2": "failed",
            "ff/3": "completed",
        }


def test_a_losing_child_is_cancelled_and_a_winning_child_wins(tmp_path: Path) -> None:
    with engine_on(tmp_path / "r.db") as engine:
        assert engine.run(race_timer, id="rt") == (1, None)
        engine.run_until_idle()  # the loser, told to cancel, ends
        assert children_of(engine, "rt") == {"rt/1": "cancelled"}
        # The loser's cleanup ran (its finally block's step).
        assert [e.kind for e in engine.history("rt/1")] == ["wait", "step"]
        assert engine.run(race_kid, id="rk") == (0, 42)
        assert children_of(engine, "rk") == {"rk/1": "completed"}


def test_cancelling_the_parent_cancels_the_child_it_gathers(tmp_path: Path) -> None:
    with engine_on(tmp_path / "c.db") as engine:
        run = engine.start(gather_waiting, id="gw")
        engine.run_until_idle()
        assert run.status == "waiting"
        assert children_of(engine, "gw") == {"gw/1": "waiting"}
        engine.cancel("gw")
        engine.run_until_idle()
        assert run.status == "cancelled"
        assert children_of(engine, "gw") == {"gw/1": "cancelled"}


def test_a_signal_to_the_child_ends_the_gather(tmp_path: Path) -> None:
    with engine_on(tmp_path / "s.db") as engine:
        run = engine.start(gather_waiting, id="gs")
        engine.run_until_idle()
        engine.signal("gs/1", "go", "now")
        engine.run_until_idle()
        assert run.result(timeout=0) == ["now", 10]


@pytest.mark.parametrize("workflow", [fan, fan_fails, race_kid], ids=lambda w: w.name)
def test_check_crashes_gathers_and_races_of_children_at_every_boundary(
    workflow: ce.Workflow[..., Any],
) -> None:
    args = (3,) if workflow is fan else ()
    report = ce.testing.check(workflow, *args)
    assert report.missed == 0 and report.boundaries > 3
    assert report.error is None


def test_bad_members_are_refused_clearly() -> None:
    with pytest.raises(TypeError, match=r"ce.gather\(\) takes step calls, child runs"):
        ce.gather(ce.start_child(kid, 1))
    with pytest.raises(TypeError, match=r"ce.race\(\) takes step calls, child runs"):
        ce.race(ce.send("x", "y"))


KILLED = """
import os, sys, time
import contengine as ce

@ce.step(name="cg_kill.slow")
def slow(x):
    if os.environ.get("HANG") == "1":
        print("HANG", flush=True)
        time.sleep(600)
    return x + 100

@ce.step(name="cg_kill.count")
def count(x):
    return x

@ce.workflow(name="cg_kill.kid")
def kid(x):
    return (yield count(x))

@ce.workflow(name="cg_kill.parent")
def parent():
    return list((yield ce.gather(kid(1), slow(2), kid(3))))

if __name__ == "__main__":
    engine = ce.Engine(sys.argv[1], lease=1.0)  # a dead holder is found soon on any store
    print("DONE", engine.start(parent, id="p").result(), flush=True)
"""


def test_a_sigkill_during_the_gather_creates_each_child_once(tmp_path: Path) -> None:
    script = tmp_path / "cg_kill.py"
    script.write_text(KILLED)
    target = current().target(tmp_path / "k.db")
    assert kill_then_finish([sys.executable, str(script), target]) == "DONE [1, 102, 3]"
    with ce.Engine(target) as engine:
        runs = sorted(r.id for r in engine.runs())
        assert runs == ["p", "p/1", "p/3"]
        assert [(e.kind, e.status) for e in engine.history("p/1")] == [("step", "completed")]
