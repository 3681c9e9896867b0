"""Where features meet: children and timers, races and signals, cancels and gathers."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from stores import OnCurrentStore, current

import contengine as ce
from contengine.store.base import Progress

pytestmark = pytest.mark.both_stores

Flow = Generator[Any, Any, Any]


class Crash(BaseException):
    """Stands for the process dying."""


@ce.step(name="interactions.double")
def double(x: int) -> int:
    return x * 2


@ce.workflow(name="interactions.kid")
def kid(x: int) -> Flow:
    return (yield double(x))


@ce.workflow(name="interactions.napper")
def napper(seconds: float) -> Flow:
    yield ce.sleep(seconds)
    return "woke"


def test_a_child_ending_while_its_parent_sleeps_does_not_spin_the_engine() -> None:
    """The child wakes only a parent that waits for it; a sleeping parent sleeps on."""
    clock = ce.testing.VirtualClock()
    drives = {"n": 0}

    @ce.workflow(name="interactions.sleepy_parent")
    def parent() -> Flow:
        drives["n"] += 1
        handle = yield ce.start_child(kid, 21)
        yield ce.sleep(60)
        return (yield handle)

    engine = ce.Engine(clock=clock)
    run = engine.start(parent, id="p")
    engine.run_until_idle(until=clock.now() + 1)
    assert run.status == "sleeping" and engine.get_run("p/0").status == "completed"
    assert drives["n"] < 10  # driven a few times, not spun
    engine.run_until_idle()
    assert run.result() == 42


@pytest.mark.parametrize("virtual", [True, False])
def test_run_drives_a_child_that_has_to_wait(virtual: bool) -> None:
    """engine.run() on a parent also drives its child through the child's own sleep."""

    @ce.workflow(name="interactions.waiting_parent")
    def parent() -> Flow:
        return (yield napper(0.05))

    engine = ce.Engine(clock=ce.testing.VirtualClock() if virtual else None)
    assert engine.run(parent, id="p") == "woke"


def test_a_race_does_not_take_the_signal_of_a_losing_wait() -> None:
    @ce.workflow(name="interactions.two_waits")
    def wf() -> Flow:
        won = yield ce.race(ce.wait("approve"), ce.wait("reject"))
        later = yield ce.wait("reject", timeout=5)
        return won, later

    engine = ce.Engine(clock=ce.testing.VirtualClock())
    run = engine.start(wf, id="r")
    engine.signal("r", "approve", "A")
    engine.signal("r", "reject", "R")
    engine.run_until_idle()
    assert run.result() == ((0, "A"), "R")


class _CrashOnRaceDecision(OnCurrentStore):
    """Dies when the race's own entry is about to be completed."""

    armed = True

    def commit(self, progress: Progress) -> None:
        update = progress.update
        if self.armed and update is not None and update.kind == "race":
            _CrashOnRaceDecision.armed = False
            raise Crash
        super().commit(progress)


def test_a_crash_around_a_race_decision_never_makes_a_loser_the_winner(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    _CrashOnRaceDecision.armed = True  # as a previous run of the test left it: set again

    @ce.step(name="interactions.quick")
    def quick() -> str:
        return "quick"

    @ce.workflow(name="interactions.race_crash")
    def wf() -> Flow:
        return (yield ce.race(ce.wait("x"), quick()))

    clock = ce.testing.VirtualClock()
    engine = ce.Engine(store=_CrashOnRaceDecision(path), clock=clock)
    with pytest.raises(Crash):
        engine.run(wf, id="r")
    resumed = ce.Engine(path, clock=clock)
    assert resumed.run(wf, id="r") == (1, "quick")
    assert resumed.get_run("r").status == "completed"


def test_cancel_at_a_new_gather_of_recorded_values_replays_the_same(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    crash = {"armed": True}

    @ce.step(name="interactions.cleanup")
    def cleanup() -> str:
        if crash["armed"]:
            crash["armed"] = False
            raise Crash
        return "cleaned"

    @ce.workflow(name="interactions.cancel_values")
    def wf() -> Flow:
        try:
            yield ce.gather(ce.now(), ce.uuid())
        except ce.Cancelled:
            return (yield cleanup())
        return "not cancelled"

    clock = ce.testing.VirtualClock()
    engine = ce.Engine(path, clock=clock)
    engine.start(wf, id="r")
    engine.cancel("r")
    with pytest.raises(Crash):
        engine.run_until_idle()
    resumed = ce.Engine(path, clock=clock)
    assert resumed.run(wf, id="r") == "cleaned"
    assert [e.status for e in resumed.history("r")[:3]] == ["completed", "failed", "failed"]


def test_a_run_id_with_a_slash_is_refused_so_children_never_collide() -> None:
    engine = ce.Engine()
    with pytest.raises(ValueError, match="kept for child runs"):
        engine.start(napper, 1, id="order/0")
    assert engine.runs() == []


def test_a_child_cancelled_on_its_own_is_an_ordinary_error_in_the_parent() -> None:
    clock = ce.testing.VirtualClock()

    @ce.workflow(name="interactions.parent_of_cancelled")
    def parent() -> Flow:
        try:
            yield napper(100)
        except ce.ChildCancelled as exc:
            return f"child gone: {exc}"
        return "child done"

    engine = ce.Engine(clock=clock)
    run = engine.start(parent, id="p")
    engine.run_until_idle(until=clock.now() + 1)
    assert engine.cancel("p/0") is True
    engine.run_until_idle(until=clock.now() + 1)
    assert run.status == "completed"
    assert run.result() == "child gone: child run 'p/0' was cancelled"
    assert engine.get_run("p/0").status == "cancelled"


def test_a_losing_step_cannot_write_into_the_next_generation() -> None:
    """A race's loser finishes after the run continued as new: its outcome is dropped."""
    import threading
    import time

    release = threading.Event()
    finished = threading.Event()

    @ce.step(name="interactions.fast")
    def fast() -> str:
        return "fast"

    @ce.step(name="interactions.slow")
    def slow() -> str:
        release.wait(5)
        finished.set()
        return "SLOW-RESULT"

    @ce.workflow(name="interactions.loser_then_new")
    def wf(generation: int) -> Flow:
        if generation == 0:
            yield ce.race(fast(), slow())  # slow takes position 2, as the wait will
            return ce.continue_as_new(1)
        yield ce.now()
        yield ce.now()
        return (yield ce.wait("go"))

    engine = ce.Engine()
    run = engine.start(wf, 0, id="r")
    engine.run_until_idle()
    assert run.status == "waiting"
    release.set()
    assert finished.wait(5)
    time.sleep(0.1)  # let the loser's callback try to write
    engine.signal("r", "go", "go-payload")
    engine.run_until_idle()
    assert run.result() == "go-payload"


@pytest.mark.parametrize(("pause", "seen_by"), [(0.08, 3), (0.0, 2 + 32)])
def test_a_cancel_from_another_engine_is_seen_after_a_long_step_or_a_few_requests(
    tmp_path: Path, pause: float, seen_by: int
) -> None:
    import time

    path = tmp_path / "e.db"
    ran: list[int] = []

    @ce.step(name=f"interactions.tick{int(pause * 100)}")
    def tick(i: int) -> int:
        ran.append(i)
        if i == 2:
            other = ce.Engine(path)
            other.cancel("r")
            other.close()
            time.sleep(pause)
        return i

    @ce.workflow(name=f"interactions.ticker{int(pause * 100)}")
    def wf() -> Flow:
        for i in range(100):
            yield tick(i)
        return "all ticks"

    engine = ce.Engine(path)
    run = engine.start(wf, id="r")
    engine.run_until_idle()
    assert run.status == "cancelled"
    assert len(ran) <= seen_by


class _CountingReads(OnCurrentStore):
    """Counts the run-row reads a drive makes to look for a cancel."""

    looks = 0

    def get_run(self, run_id: str) -> Any:
        _CountingReads.looks += 1
        return super().get_run(run_id)


@pytest.mark.parametrize("threads", [1, 4])
def test_steps_that_write_read_the_cancel_with_the_write_not_with_a_look_of_their_own(
    tmp_path: Path, threads: int
) -> None:
    """Every step's write reads the cancel flag: a run of steps makes no extra reads."""

    @ce.step(name=f"interactions.plain{threads}")
    def plain(i: int) -> int:
        return i

    @ce.workflow(name=f"interactions.plains{threads}")
    def wf() -> Flow:
        total = 0
        for i in range(200):
            total += yield plain(i)
        return total

    engine = ce.Engine(store=_CountingReads(str(tmp_path / "e.db")))
    run = engine.start(wf, id="r")
    _CountingReads.looks = 0
    engine.run_until_idle(threads=threads)
    assert run.result() == sum(range(200))
    # At most one read for the drive itself; none every so many steps.
    assert _CountingReads.looks <= 1, _CountingReads.looks
    engine.close()


def test_a_cancel_from_another_engine_is_seen_among_requests_that_write_nothing(
    tmp_path: Path,
) -> None:
    """Immediate requests write nothing of their own: a look every so many finds the cancel."""
    path = tmp_path / "e.db"

    @ce.step(name="interactions.cancel_here")
    def cancel_here() -> None:
        other = ce.Engine(path)
        other.cancel("r")
        other.close()

    seen: list[int] = []

    @ce.workflow(name="interactions.clock_reader")
    def wf() -> Flow:
        yield cancel_here()
        for i in range(1000):
            yield ce.now()
            seen.append(i)
        return "read the clock 1000 times"

    engine = ce.Engine(path)
    run = engine.start(wf, id="r")
    engine.run_until_idle()
    assert run.status == "cancelled"
    # Raised at the yield of the step it came during, on either store (notes/workflows.md).
    assert [(e.position, e.status) for e in engine.history("r")][:1] == [(0, "failed")]
    assert len(seen) <= 33  # found by a look among the reads, at the latest
    if not current().postgres:
        # On SQLite the step's end waits to be written with the next write, so the
        # workflow reads the clock until a look finds the cancel. On PostgreSQL it may be
        # found before the first read (seen is then 0).
        assert len(seen) > 0
    engine.close()
