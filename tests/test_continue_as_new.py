"""ce.continue_as_new: a run starts again under the same id with new arguments and a fresh log.

`return ce.continue_as_new(*args)` drops the run's log and starts the workflow again
(runs.generation + 1), so a loop that never ends keeps a bounded log. The mailbox and
the published values carry over; child runs of different generations get different
ids.

Steps record every execution in a ledger. A simulated crash is a BaseException
raised by a step or by the store at a chosen commit; a new Engine on the same file
then resumes. Time is a VirtualClock, so the monitors' sleeps take no time.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Crash, at_commit, engine_on
from stores import OnCurrentStore

import contengine as ce
from contengine.store.base import Progress
from contengine.testing import VirtualClock

pytestmark = pytest.mark.both_stores

Flow = Generator[Any, Any, Any]
START = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
POLLS = 2  # polls per generation of the monitor

ledger: list[str] = []  # every step execution, in order
ARMED: set[str] = set()  # step labels that crash (once) on their next execution


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


@ce.step
def poll(generation: int, i: int) -> int:
    """One reading of whatever is monitored."""
    enter(f"poll {generation}.{i}")
    return generation * 10 + i


@ce.workflow(name="continue.monitor")
def monitor(generation: int, total: int, stop: int) -> Flow:
    """Poll and sleep POLLS times, publish, then go on as the next generation until stop."""
    for i in range(POLLS):
        total += yield poll(generation, i)
        yield ce.sleep(60)
    if generation == 0:
        yield ce.publish("first", total)
    yield ce.publish("status", {"generation": generation, "total": total})
    if generation + 1 == stop:
        return total
    return ce.continue_as_new(generation + 1, total, stop=stop)


def monitor_total(stop: int) -> int:
    """What the monitor returns after stop generations."""
    return sum(g * 10 + i for g in range(stop) for i in range(POLLS))


class WatchedStore(OnCurrentStore):
    """A store that keeps, after each commit, the run's log length and whether it restarted;
    and raises Crash before or after the commit `chosen` picks."""

    def __init__(
        self,
        path: Path,
        chosen: Callable[[Progress, int], bool] = lambda _, n: False,
        when: str = "before",
    ) -> None:
        super().__init__(path, durability="normal")
        self.chosen = chosen
        self.when = when
        self.commits: list[tuple[str, int, bool]] = []  # (run, log length, restarted)
        self.crashed = False

    def commit(self, progress: Progress) -> None:
        """Write the progress (unless this is the commit planned to crash), then look."""
        hit = not self.crashed and self.chosen(progress, len(self.commits) + 1)
        if hit and self.when == "before":
            self.crashed = True
            raise Crash
        super().commit(progress)
        run_id = progress.run_id
        self.commits.append((run_id, self.log_length(run_id), progress.restart is not None))
        if hit and self.when == "after":
            self.crashed = True
            raise Crash


def generation_of(engine: ce.Engine, run_id: str) -> int:
    """How many times the run continued as new."""
    row = engine.store.get_run(run_id)
    assert row is not None
    return row.generation


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(START)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "continue.db"


# -- a bounded log ----------------------------------------------------------------------------


def test_a_monitor_that_continues_many_times_keeps_a_log_of_one_generation(
    db: Path, clock: VirtualClock
) -> None:
    stop = 30
    store = WatchedStore(db)
    with engine_on(db, clock, store) as engine:
        run = engine.start(monitor, 0, 0, stop, id="m")
        report = engine.run_until_idle()
        assert report.finished == ["m"] and run.result() == monitor_total(stop)
        assert generation_of(engine, "m") == stop - 1
        # What is left is the last generation's log, from position 0.
        log = engine.history("m")
        assert [(e.position, e.describe()) for e in log] == [
            (0, f"step poll({stop - 1}, 0)"),
            (1, "sleep (1m)"),
            (2, f"step poll({stop - 1}, 1)"),
            (3, "sleep (1m)"),
            (4, f"publish status({ {'generation': stop - 1, 'total': monitor_total(stop)} })"),
        ]
        # Published values outlive the generation that wrote them.
        assert engine.published("m") == {
            "first": monitor_total(1),
            "status": {"generation": stop - 1, "total": monitor_total(stop)},
        }
    # After any commit, the log held at most one generation's entries (the first
    # generation has one more); each restart left it empty.
    assert max(length for _, length, _ in store.commits) <= 2 * POLLS + 2
    emptied = [length for _, length, restarted in store.commits if restarted]
    assert emptied == [0] * (stop - 1)
    # Every poll ran once: no generation replays another's steps.
    assert ledger == [f"poll {g}.{i}" for g in range(stop) for i in range(POLLS)]
    assert clock.now() == START + stop * POLLS * 60


def test_engine_run_follows_the_run_through_its_generations(clock: VirtualClock) -> None:
    with ce.Engine(clock=clock) as engine:
        assert engine.run(monitor, 0, 0, 3, id="m") == monitor_total(3)
        assert engine.get_run("m").status == "completed"
        assert generation_of(engine, "m") == 2


def test_a_crash_in_a_later_generation_replays_only_that_generation(
    db: Path, clock: VirtualClock
) -> None:
    ARMED.add("poll 2.1")
    with engine_on(db, clock) as engine:
        engine.start(monitor, 0, 0, 4, id="m")
        with pytest.raises(Crash):
            engine.run_until_idle()
        assert generation_of(engine, "m") == 2
        assert [e.status for e in engine.history("m")] == ["completed", "completed", "running"]
    with engine_on(db, clock) as engine:
        engine.run_until_idle()
        assert engine.get_run("m").result() == monitor_total(4)
    expected = [f"poll {g}.{i}" for g in range(4) for i in range(POLLS)]
    assert ledger == expected  # poll 2.1 crashed before it was recorded: once each


# -- signals and published values between generations -----------------------------------------


@ce.workflow(name="continue.inbox")
def inbox(seen: list[str]) -> Flow:
    """Take one message per generation, until "stop"."""
    message = yield ce.wait("message")
    yield ce.publish("seen", len(seen) + 1)
    seen = [*seen, message]
    if message == "stop":
        return seen
    return ce.continue_as_new(seen)


def test_signals_sent_before_the_run_reach_later_generations_in_order(
    db: Path, clock: VirtualClock
) -> None:
    with engine_on(db, clock) as engine:
        run = engine.start(inbox, [], id="i")
        for message in ("a", "b", "stop"):
            engine.signal("i", "message", message)
        engine.run_until_idle()
        assert run.result() == ["a", "b", "stop"]
        assert generation_of(engine, "i") == 2
        assert engine.published("i", "seen") == 3


def restarts(progress: Progress, _: int) -> bool:
    """The commit that drops a generation's log."""
    return progress.restart is not None


def test_a_signal_sent_while_the_run_is_between_generations_is_delivered(
    db: Path, clock: VirtualClock
) -> None:
    with engine_on(db, clock, WatchedStore(db, restarts, "after")) as engine:
        engine.start(inbox, [], id="i")
        engine.signal("i", "message", "a")
        with pytest.raises(Crash):
            engine.run_until_idle()
        # The process died just after the restart: a new generation, not yet begun.
        assert engine.get_run("i").status == "pending"
        assert generation_of(engine, "i") == 1
        assert engine.history("i") == []
        engine.signal("i", "message", "b")
        engine.signal("i", "message", "stop")
    with engine_on(db, clock) as engine:
        engine.run_until_idle()
        assert engine.get_run("i").result() == ["a", "b", "stop"]


def crash_points(path: Path) -> list[int]:
    """The commits (counted from 1) of a clean monitor run that restart it, and those
    right after them."""
    store = WatchedStore(path)
    with engine_on(path, VirtualClock(START), store) as engine:
        engine.start(monitor, 0, 0, 3, id="m")
        engine.run_until_idle()
    restart_commits = [n for n, (*_, restarted) in enumerate(store.commits, 1) if restarted]
    assert len(restart_commits) == 2
    return [n + offset for n in restart_commits for offset in (0, 1)]


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_crash_around_a_restart_commit_resumes_the_right_generation(
    tmp_path: Path, when: str
) -> None:
    for k in crash_points(tmp_path / "reference.db"):
        ledger.clear()
        path = tmp_path / f"{when}-{k}.db"
        clock = VirtualClock(START)
        store = WatchedStore(path, at_commit(k), when)
        with engine_on(path, clock, store) as engine:
            engine.start(monitor, 0, 0, 3, id="m")
            with pytest.raises(Crash):
                engine.run_until_idle()
        with engine_on(path, clock) as engine:
            engine.run_until_idle()
            assert engine.get_run("m").result() == monitor_total(3), (when, k)
            assert generation_of(engine, "m") == 2, (when, k)
            assert engine.published("m") == {
                "first": monitor_total(1),
                "status": {"generation": 2, "total": monitor_total(3)},
            }, (when, k)
            assert [e.status for e in engine.history("m")] == ["completed"] * 5, (when, k)
        # The restart commit carries no step outcome: no poll runs twice.
        assert ledger == [f"poll {g}.{i}" for g in range(3) for i in range(POLLS)], (when, k)
        assert clock.now() == START + 3 * POLLS * 60, (when, k)


# -- children ---------------------------------------------------------------------------------


@ce.step
def squared(n: int) -> int:
    """n * n."""
    enter(f"square {n}")
    return n * n


@ce.workflow(name="continue.square")
def square(n: int) -> Flow:
    """A child: square a number with a step."""
    return (yield squared(n))


@ce.workflow(name="continue.generations")
def generations(generation: int, results: list[int], stop: int) -> Flow:
    """Call the same child at the same position in every generation."""
    results = [*results, (yield square(generation))]
    if generation + 1 == stop:
        return results
    return ce.continue_as_new(generation + 1, results, stop)


def test_children_of_different_generations_get_different_ids(db: Path, clock: VirtualClock) -> None:
    with engine_on(db, clock) as engine:
        assert engine.run(generations, 0, [], 3, id="g") == [0, 1, 4]
        assert [(run.id, run.status) for run in engine.runs()] == [
            ("g", "completed"),
            ("g/0", "completed"),
            ("g/g1/0", "completed"),
            ("g/g2/0", "completed"),
        ]
        assert [engine.get_run(i).result() for i in ("g/0", "g/g1/0", "g/g2/0")] == [0, 1, 4]
    assert ledger == ["square 0", "square 1", "square 2"]


# -- arguments that cannot go on --------------------------------------------------------------


@ce.workflow(name="continue.misfit")
def misfit(which: str) -> Flow:
    """Continue with arguments the workflow does not take, or that cannot be stored."""
    yield poll(0, 0)
    if which == "too many":
        return ce.continue_as_new(which, "extra")
    return ce.continue_as_new(item for item in "live")  # a generator: not serializable


@pytest.mark.parametrize(
    ("which", "error"), [("too many", TypeError), ("unserializable", ce.SerializationError)]
)
def test_continuing_with_arguments_that_cannot_be_used_fails_the_run(
    clock: VirtualClock, which: str, error: type[Exception]
) -> None:
    with ce.Engine(clock=clock) as engine:
        with pytest.raises(error):
            engine.run(misfit, which, id="x")
        assert engine.get_run("x").status == "failed"
        assert generation_of(engine, "x") == 0
        assert [e.describe() for e in engine.history("x")] == ["step poll(0, 0)"]
    assert ledger == ["poll 0.0"]
