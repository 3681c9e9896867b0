"""Queues in one process: priorities, concurrency limits, rate limits, backpressure."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import stop_in_background, wait_until
from stores import OnCurrentStore, current

import contengine as ce
from contengine.cli.main import main
from contengine.store.base import Progress
from contengine.testing import VirtualClock

pytestmark = pytest.mark.both_stores

START = 1_700_000_000.0
ORDER: list[str] = []
INSIDE = {"now": 0, "most": 0}
INSIDE_LOCK = threading.Lock()
GATE = threading.Event()


@ce.step(name="queues.note")
def note(label: str) -> str:
    """Record the order steps ran in."""
    ORDER.append(label)
    return label


@ce.step(name="queues.busy")
def busy(label: str) -> str:
    """Count how many runs are inside this step at once."""
    with INSIDE_LOCK:
        INSIDE["now"] += 1
        INSIDE["most"] = max(INSIDE["most"], INSIDE["now"])
    time.sleep(0.03)
    with INSIDE_LOCK:
        INSIDE["now"] -= 1
    return label


@ce.step(name="queues.held")
def held(label: str) -> str:
    """Block until the test opens the gate."""
    GATE.wait(10)
    return label


@ce.workflow(name="queues.one")
def one(label: str) -> Generator[Any, Any, str]:
    """One noted step."""
    return (yield note(label))


@ce.workflow(name="queues.two_busy")
def two_busy(label: str) -> Generator[Any, Any, str]:
    """Two counted steps."""
    yield busy(label)
    return (yield busy(label))


@ce.workflow(name="queues.gated")
def gated(label: str) -> Generator[Any, Any, str]:
    """A step that waits for the gate."""
    return (yield held(label))


def test_higher_priority_runs_are_claimed_first(tmp_path: Path) -> None:
    """Among due runs, priority decides before age."""
    ORDER.clear()
    with ce.Engine(tmp_path / "q.db", clock=VirtualClock(START)) as engine:
        for i in range(3):
            engine.start(one, f"low{i}", priority=0)
        engine.start(one, "urgent", priority=10)
        engine.start(one, "high", priority=5, queue="q")
        engine.run_until_idle()
    assert ORDER == ["urgent", "high", "low0", "low1", "low2"]


def test_a_queue_concurrency_limit_holds_with_many_threads(tmp_path: Path) -> None:
    """64 driving threads, but never more than 2 runs of the queue driven at once."""
    INSIDE.update(now=0, most=0)
    with ce.Engine(tmp_path / "q.db") as engine:
        engine.set_queue("narrow", concurrency=2)
        runs = [engine.start(two_busy, f"n{i}", queue="narrow") for i in range(10)]
        free = [engine.start(one, f"free{i}") for i in range(5)]
        report = engine.run_until_idle(threads=16)
        assert len(report.finished) == 15
        assert [r.result() for r in runs] == [f"n{i}" for i in range(10)]
        assert all(r.status == "completed" for r in free)
    assert INSIDE["most"] == 2


def test_a_rate_limit_counts_starts_per_period(tmp_path: Path) -> None:
    """rate_limit=3 per hour: three runs start now, the others an hour later."""
    clock = VirtualClock(START)
    with ce.Engine(tmp_path / "q.db", clock=clock) as engine:
        engine.set_queue("mail", rate_limit=3, period=3600)
        runs = [engine.start(one, f"m{i}", queue="mail") for i in range(5)]
        engine.run_until_idle()
        assert [r.status for r in runs] == ["completed"] * 3 + ["pending"] * 2
        clock.sleep(3601)
        engine.run_until_idle()
        assert all(r.status == "completed" for r in runs)


def test_queue_settings_are_checked_and_shared_through_the_file(tmp_path: Path) -> None:
    """Bad limits are refused; limits set by one engine are seen by another."""
    path = tmp_path / "q.db"
    with ce.Engine(path) as engine:
        with pytest.raises(ValueError, match="concurrency"):
            engine.set_queue("q", concurrency=0)
        with pytest.raises(ValueError, match="period"):
            engine.set_queue("q", rate_limit=1, period=0)
        with pytest.raises(ValueError, match="queue name"):
            engine.start(one, "x", queue="")
        engine.set_queue("q", concurrency=4, worker_concurrency=1)
    with ce.Engine(path) as other:
        (q,) = other.store.queues()
        assert (q.name, q.concurrency, q.worker_concurrency) == ("q", 4, 1)


def test_a_worker_claims_no_more_runs_than_it_has_threads(tmp_path: Path) -> None:
    """Backpressure: of 50 started runs, a 3-thread worker holds leases on 3 at most."""
    path = tmp_path / "q.db"
    GATE.clear()
    engine = ce.Engine(path)
    try:
        runs = [engine.start(gated, f"g{i}") for i in range(50)]
        with engine.worker(threads=3, grace=5):
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                with current().sql(path) as conn:
                    held_now = conn.execute(
                        "SELECT count(*) FROM runs WHERE owner IS NOT NULL"
                    ).fetchone()[0]
                if held_now == 3:
                    break
                time.sleep(0.01)
            assert held_now == 3
            time.sleep(0.1)  # had it claimed more, it would have by now
            with current().sql(path) as conn:
                assert (
                    conn.execute("SELECT count(*) FROM runs WHERE owner IS NOT NULL").fetchone()[0]
                    == 3
                )
            GATE.set()
            assert [r.result(timeout=10) for r in runs] == [f"g{i}" for i in range(50)]
    finally:
        GATE.set()
        engine.close()


def test_a_worker_wakes_at_once_for_a_signal_from_this_process(tmp_path: Path) -> None:
    """No poll delay in one process: a signal resumes a waiting run within milliseconds."""
    seen: list[float] = []

    @ce.step(name="queues.stamp")
    def stamp() -> None:
        seen.append(time.perf_counter())

    @ce.workflow(name="queues.signalled")
    def signalled() -> Generator[Any, Any, None]:
        yield ce.wait("go")
        yield stamp()

    # A poll interval of 5 s: anything faster than that is the wake-up, not a poll.
    with ce.Engine(tmp_path / "q.db", poll_interval=5.0) as engine:
        run = engine.start(signalled)
        with engine.worker(threads=2):
            deadline = time.monotonic() + 5
            while run.status != "waiting" and time.monotonic() < deadline:
                time.sleep(0.005)
            sent = time.perf_counter()
            engine.signal(run.id, "go")
            run.result(timeout=5)
    assert seen and seen[0] - sent < 1.0


@ce.step(name="queues.model_call", queue="model")
def model_call(label: str) -> str:
    """A step in a queue of its own: counted like busy()."""
    return busy.fn(label)


@ce.workflow(name="queues.asks")
def asks(label: str, n: int) -> Generator[Any, Any, list[str]]:
    """n calls of the queued step."""
    out = []
    for i in range(n):
        out.append((yield model_call(f"{label}.{i}")))
    return out


def test_a_queued_step_waits_for_a_slot(tmp_path: Path) -> None:
    """Runs are free, but their queued step runs at most twice at once."""
    INSIDE.update(now=0, most=0)
    with ce.Engine(tmp_path / "q.db") as engine:
        engine.set_queue("model", concurrency=2)
        runs = [engine.start(asks, f"a{i}", 2) for i in range(8)]
        engine.run_until_idle(threads=8)
        assert [r.result() for r in runs] == [[f"a{i}.0", f"a{i}.1"] for i in range(8)]
    assert INSIDE["most"] == 2


def test_a_queued_step_keeps_to_its_rate_limit(tmp_path: Path) -> None:
    """Two calls a minute: the fifth call ends two minutes after the first."""
    clock = VirtualClock(START)
    with ce.Engine(tmp_path / "q.db", clock=clock) as engine:
        engine.set_queue("model", rate_limit=2, period=60)
        run = engine.start(asks, "r", 5)
        engine.run_until_idle()
        assert run.result() == [f"r.{i}" for i in range(5)]
        ends = [e.finished_at or 0.0 for e in engine.history(run.id)]
    assert clock.now() - START >= 120
    assert ends[4] - ends[0] >= 120 and ends[1] - ends[0] < 60


def test_runs_behind_a_spent_rate_limit_are_not_starved(tmp_path: Path) -> None:
    """200 unstarted runs of a queue whose starts are used up do not hide the others."""
    with ce.Engine(tmp_path / "q.db", clock=VirtualClock(START)) as engine:
        engine.set_queue("mail", rate_limit=1, period=3600)
        mail = [engine.start(one, f"m{i}", queue="mail") for i in range(200)]
        plain = engine.start(one, "plain")
        engine.run_until_idle()
        assert plain.status == "completed"
        assert sum(r.status == "completed" for r in mail) == 1


def test_an_engine_runs_one_worker_and_no_run_until_idle_beside_it(tmp_path: Path) -> None:
    """A second worker, or run_until_idle(), on an engine whose worker runs is refused."""
    with ce.Engine(tmp_path / "q.db") as engine, engine.worker(threads=2):
        with (
            pytest.raises(ce.ContengineError, match="already runs a worker"),
            engine.worker(threads=2),
        ):
            pass
        with pytest.raises(ce.ContengineError, match="worker is driving its runs"):
            engine.run_until_idle()
        assert engine.start(one, "still works").result(timeout=5) == "still works"


def test_closing_an_engine_stops_its_worker(tmp_path: Path) -> None:
    """close() with a worker running stops it first: its thread ends, its leases go."""
    path = tmp_path / "q.db"
    engine = ce.Engine(path)
    worker = engine.worker(threads=2).__enter__()
    run = engine.start(one, "closing")
    assert run.result(timeout=5) == "closing"
    engine.close()
    assert worker._loop is not None and not worker._loop.is_alive()
    with current().sql(path) as conn:
        assert conn.execute("SELECT count(*) FROM workers").fetchone()[0] == 0


HOLDING = threading.Event()  # the hog is inside its step, holding the queue's one slot
LET_GO = threading.Event()
QUEUED_RAN: list[str] = []


@ce.step(name="queues.hog", queue="gpu")
def hog() -> str:
    """Hold the gpu queue's slot until the test lets go."""
    HOLDING.set()
    LET_GO.wait(10)
    return "hogged"


@ce.step(name="queues.gpu_call", queue="gpu")
def gpu_call(label: str) -> str:
    """The step that waits for the slot; counts its executions."""
    QUEUED_RAN.append(label)
    return label


@ce.workflow(name="queues.hogs")
def hogs() -> Generator[Any, Any, str]:
    """Takes the slot and keeps it for a while."""
    return (yield hog())


@ce.workflow(name="queues.waits_for_gpu")
def waits_for_gpu(label: str) -> Generator[Any, Any, str]:
    """A plain step, then the queued one."""
    yield note(label)
    return (yield gpu_call(label))


@contextlib.contextmanager
def hogging(holder: ce.Engine) -> Iterator[list[str]]:
    """The gpu queue's one slot held by a run of `holder` (in a thread) until the block
    ends; yields the list the hog's result lands in."""
    HOLDING.clear()
    LET_GO.clear()
    hogged: list[str] = []
    background = threading.Thread(target=lambda: hogged.append(holder.run(hogs, id="hog")))
    background.start()
    try:
        assert HOLDING.wait(5)
        yield hogged
    finally:
        LET_GO.set()
        background.join(10)


def until_logged(engine: ce.Engine, run_id: str, entries: int) -> None:
    """Wait (up to 5 s) until the run's log has so many entries."""
    wait_until(lambda: len(engine.history(run_id)) >= entries, pause=0.01)


@pytest.mark.parametrize("finisher", ["same engine", "another engine"])
def test_a_stopping_worker_does_not_start_a_step_that_waits_for_its_queue(
    tmp_path: Path, finisher: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The step is given back (a retry due now, its attempt not counted) instead of
    starting after the worker let go of the run; whoever drives the run next (from the
    kept generator, or by replay) runs it once."""
    path = tmp_path / "q.db"
    QUEUED_RAN.clear()
    with ce.Engine(path) as holder, ce.Engine(path) as engine:
        engine.set_queue("gpu", concurrency=1)
        with hogging(holder) as hogged:
            run = engine.start(waits_for_gpu, "w", id="w")
            with engine.worker(threads=2, grace=5):
                until_logged(engine, "w", 2)
                time.sleep(0.05)  # inside the wait for the slot
                began = time.monotonic()
            stopped_in = time.monotonic() - began
            waiting = engine.history("w")[1]
            assert (waiting.name, waiting.status) == ("queues.gpu_call", "retrying")
            assert (waiting.attempts, waiting.crashes) == (0, 0)
            assert engine.get_run("w").status == "running"
            assert QUEUED_RAN == []
            assert main(["show", "--db", current().target(path), "w"]) == 0
            shown = capsys.readouterr().out
            assert "retry due" in shown and "after" not in shown  # no failure to name
        assert stopped_in < 2.0  # did not wait out the grace period
        assert hogged == ["hogged"]
        if finisher == "same engine":
            engine.run_until_idle()
        else:
            with ce.Engine(path) as other:
                other.run_until_idle()
        assert run.result() == "w"
        assert QUEUED_RAN == ["w"]
        done = engine.history("w")[1]
        assert (done.status, done.attempts, done.crashes) == ("completed", 1, 0)


@pytest.mark.parametrize("grace", [0.0, 0.2])
def test_a_step_waiting_for_its_queue_never_starts_after_its_worker_let_go(
    tmp_path: Path, grace: float
) -> None:
    """A grace period shorter than the wait's poll: the stop ends the wait at once, and a
    slot is only given while the run's lease is held, so the stopped engine's drive
    cannot start the step once the slot frees up, however late it looks."""
    path = tmp_path / "q.db"
    QUEUED_RAN.clear()
    with ce.Engine(path) as holder, ce.Engine(path, poll_interval=1.0) as engine:
        engine.set_queue("gpu", concurrency=1)
        with hogging(holder) as hogged:
            run = engine.start(waits_for_gpu, "late", id="late")
            with engine.worker(threads=2, grace=grace):
                until_logged(engine, "late", 2)
                time.sleep(0.3)  # waiting for the slot, in a backoff of up to 1 s
        assert hogged == ["hogged"]
        time.sleep(1.5)  # past the longest backoff: a stale waiter would have the slot now
        assert QUEUED_RAN == []
        with ce.Engine(path) as other:
            other.run_until_idle()
        assert run.result() == "late"
        assert QUEUED_RAN == ["late"]
        done = engine.history("late")[1]
        # Even with no grace at all the stop waits for the give-back to be written
        # under the lease: no crash is counted for an attempt that never began.
        assert (done.status, done.attempts, done.crashes) == ("completed", 1, 0)


def test_a_slot_is_refused_to_a_driver_that_no_longer_holds_the_runs_lease(
    tmp_path: Path,
) -> None:
    """The store checks the lease in the same transaction that takes the slot."""
    with ce.Engine(tmp_path / "q.db") as engine:
        engine.set_queue("gpu", concurrency=5)
        run = engine.start(waits_for_gpu, "x", id="x")
        store, holder = engine.store, engine._holder
        with pytest.raises(ce.LeaseLost, match="no longer leased"):
            store.take_slot("gpu", holder.row(), time.time(), holder.wall(), ("x", "w-1", 3))
        engine.run_until_idle()
        assert run.result() == "x"
        with pytest.raises(ce.LeaseLost):  # finished: no one holds it
            store.take_slot("gpu", holder.row(), time.time(), holder.wall(), ("x", "w-1", 3))
        # Without a lease (a store that serves one engine) a slot is given as before.
        assert store.take_slot("gpu", holder.row(), time.time(), holder.wall()) is not None


IN_FLAKY = threading.Event()
FLAKY_GO = threading.Event()
FLAKY_CALLS: list[int] = []


@ce.step(name="queues.flaky_once", retries=3, backoff=0.0)
def flaky_once() -> str:
    """Fails its first attempt once the test lets it go; later attempts succeed."""
    attempt = ce.current_step().attempt
    FLAKY_CALLS.append(attempt)
    if attempt == 1:
        IN_FLAKY.set()
        FLAKY_GO.wait(10)
        raise ConnectionError("first attempt fails")
    return "ok"


@ce.workflow(name="queues.retries_at_once")
def retries_at_once() -> Generator[Any, Any, str]:
    """One step, retried without a pause."""
    return (yield flaky_once())


def test_a_retry_due_at_once_does_not_start_while_the_worker_stops(tmp_path: Path) -> None:
    """The attempt running when the stop comes may finish (grace); the retry it asks for
    is left to the next worker, as a new step would be."""
    path = tmp_path / "q.db"
    IN_FLAKY.clear()
    FLAKY_GO.clear()
    FLAKY_CALLS.clear()
    with ce.Engine(path) as engine:
        run = engine.start(retries_at_once, id="flaky")
        worker = engine.worker(threads=2, grace=10)
        worker.__enter__()
        assert IN_FLAKY.wait(5)
        stopping = stop_in_background(worker, engine)  # waits for the attempt in flight
        FLAKY_GO.set()
        stopping.join(10)
        assert FLAKY_CALLS == [1]
        entry = engine.history("flaky")[0]
        assert (entry.status, entry.attempts, entry.crashes) == ("retrying", 1, 0)
    with ce.Engine(path) as other:
        other.run_until_idle()
        assert other.get_run(run.id).result() == "ok"
        assert FLAKY_CALLS == [1, 2]
        entry = other.history("flaky")[0]
        assert (entry.status, entry.attempts, entry.crashes) == ("completed", 2, 0)


IN_FIRST = threading.Event()
FIRST_GO = threading.Event()
MEMBERS_RAN: list[int] = []


@ce.step(name="queues.first_of_two")
def first_of_two() -> str:
    IN_FIRST.set()
    assert FIRST_GO.wait(5)
    return "first"


@ce.step(name="queues.member")
def member(i: int) -> int:
    MEMBERS_RAN.append(i)
    return i


@ce.workflow(name="queues.step_then_gather")
def step_then_gather() -> Generator[Any, Any, Any]:
    """A step, then a gather of two steps."""
    first = yield first_of_two()
    together = yield ce.gather(member(1), member(2))
    return first, together


def test_a_stopping_worker_does_not_start_a_gather(tmp_path: Path) -> None:
    """The step running when the stop comes finishes (grace); the gather after it is set
    aside for the next worker like a step would be, its members not started."""
    path = tmp_path / "q.db"
    IN_FIRST.clear()
    FIRST_GO.clear()
    MEMBERS_RAN.clear()
    with ce.Engine(path) as engine:
        run = engine.start(step_then_gather, id="g")
        worker = engine.worker(threads=2, grace=10)
        worker.__enter__()
        assert IN_FIRST.wait(5)
        stopping = stop_in_background(worker, engine)
        FIRST_GO.set()
        stopping.join(10)
        assert MEMBERS_RAN == []
        assert [(e.name, e.status) for e in engine.history("g")] == [
            ("queues.first_of_two", "completed")
        ]
    with ce.Engine(path) as other:
        other.run_until_idle()
        assert other.get_run(run.id).result() == ("first", [1, 2])
        assert sorted(MEMBERS_RAN) == [1, 2]
        assert all(e.crashes == 0 for e in other.history("g"))


class _SlowGiveBack(OnCurrentStore):
    """Writes a given-back attempt (a retry due now) only after a pause."""

    def commit(self, progress: Progress) -> bool:
        if progress.update is not None and progress.update.status == "retrying":
            time.sleep(0.3)
        return super().commit(progress)


def test_a_stop_without_grace_waits_for_the_give_back_to_be_written(tmp_path: Path) -> None:
    """grace=0 lets no step finish, but a drive that is only giving its attempt back
    writes that under its lease: no crash is counted for an attempt that never began."""
    path = tmp_path / "q.db"
    QUEUED_RAN.clear()
    with ce.Engine(path) as holder:
        engine = ce.Engine(store=_SlowGiveBack(str(path)), poll_interval=1.0)
        engine.set_queue("gpu", concurrency=1)
        with hogging(holder):
            run = engine.start(waits_for_gpu, "slow", id="slow")
            with engine.worker(threads=2, grace=0):
                until_logged(engine, "slow", 2)
                time.sleep(0.2)  # waiting for the slot
            given_back = engine.history("slow")[1]
            assert (given_back.status, given_back.attempts, given_back.crashes) == (
                "retrying",
                0,
                0,
            )
        engine.close()
        with ce.Engine(path) as other:
            other.run_until_idle()
            assert other.get_run(run.id).result() == "slow"
            done = other.history("slow")[1]
        assert (done.status, done.attempts, done.crashes) == ("completed", 1, 0)
        assert QUEUED_RAN == ["slow"]


def test_a_step_that_outlives_the_grace_period_keeps_its_queue_slot(tmp_path: Path) -> None:
    """The stopped worker lets its runs go, but its step still runs (a thread cannot be
    stopped): its slot counts until it ends, so the queue's limit holds for others."""
    path = tmp_path / "q.db"
    QUEUED_RAN.clear()
    HOLDING.clear()
    LET_GO.clear()
    with ce.Engine(path) as engine, ce.Engine(path) as other:
        engine.set_queue("gpu", concurrency=1)
        engine.start(hogs, id="hog")
        with engine.worker(threads=2, grace=0.1):
            assert HOLDING.wait(5)
        # The worker has stopped; its hog step still holds the one slot.
        waiting = other.start(waits_for_gpu, "after", id="after")
        results: list[str] = []
        late = threading.Thread(target=lambda: results.append(waiting.result()))
        late.start()  # drives this run only (not the hog's, let go by the stop)
        time.sleep(1.0)
        assert QUEUED_RAN == []  # the limit held while the late step ran
        LET_GO.set()
        late.join(10)
        assert results == ["after"]
        assert QUEUED_RAN == ["after"]


B_GO = threading.Event()
A_DONE = threading.Event()
MEMBERS_IN: list[str] = []


@ce.step(name="queues.member_a", queue="gpu")
def member_a() -> str:
    MEMBERS_IN.append("a")
    time.sleep(0.3)
    A_DONE.set()
    return "a"


@ce.step(name="queues.member_b", queue="gpu")
def member_b() -> str:
    MEMBERS_IN.append("b")
    assert B_GO.wait(10)
    return "b"


@ce.workflow(name="queues.two_members")
def two_members() -> Generator[Any, Any, Any]:
    """A gather of two queued steps."""
    return (yield ce.gather(member_a(), member_b()))


def test_a_late_gather_keeps_its_worker_on_record_until_every_member_ends(
    tmp_path: Path,
) -> None:
    """The first late member's end ends the drive (its write is refused); the other
    member still holds a slot, so the engine stays on record until it ends too."""
    A_DONE.clear()
    B_GO.clear()
    MEMBERS_IN.clear()
    with ce.Engine(tmp_path / "q.db") as engine:
        engine.set_queue("gpu", concurrency=2)
        engine.start(two_members, id="pair")
        with engine.worker(threads=2, grace=0.1):
            wait_until(lambda: len(MEMBERS_IN) == 2)  # both members in their steps
            assert sorted(MEMBERS_IN) == ["a", "b"]
        assert A_DONE.wait(5)
        time.sleep(0.3)  # the drive has ended; member b still runs
        assert [w.id for w in engine.store.workers()] == [engine._holder.id]
        B_GO.set()
        wait_until(lambda: not engine.store.workers())
        assert engine.store.workers() == []  # off record once b ended


LOSER_GO = threading.Event()
LOSER_IN = threading.Event()
GPU_AT_ONCE: list[int] = []
_gpu_now = [0]
_gpu_lock = threading.Lock()


def _gpu_enter() -> None:
    with _gpu_lock:
        _gpu_now[0] += 1
        GPU_AT_ONCE.append(_gpu_now[0])


def _gpu_leave() -> None:
    with _gpu_lock:
        _gpu_now[0] -= 1


@ce.step(name="queues.quick")
def quick() -> str:
    assert LOSER_IN.wait(5)
    return "quick"


@ce.step(name="queues.slow_gpu", queue="gpu")
def slow_gpu(tag: str) -> str:
    _gpu_enter()
    try:
        if tag == "loser":
            LOSER_IN.set()
            assert LOSER_GO.wait(10)
        return tag
    finally:
        _gpu_leave()


@ce.workflow(name="queues.racer")
def racer() -> Generator[Any, Any, Any]:
    """A race a queued step loses (it runs on after the race)."""
    return (yield ce.race(quick(), slow_gpu("loser")))


@ce.workflow(name="queues.one_gpu")
def one_gpu() -> Generator[Any, Any, Any]:
    """One queued step."""
    return (yield slow_gpu("other"))


@pytest.mark.parametrize("stops", [1, 2])
def test_a_race_loser_still_running_keeps_its_slot_after_its_worker_stops(
    tmp_path: Path, stops: int
) -> None:
    """The race is over and no drive is under way when the worker stops, but the loser
    still runs holding the queue's one slot: the engine stays on record (through a
    second worker's stop too) and another engine's step waits for the slot."""
    LOSER_GO.clear()
    LOSER_IN.clear()
    GPU_AT_ONCE.clear()
    path = tmp_path / "q.db"
    with ce.Engine(path) as engine, ce.Engine(path) as other:
        engine.set_queue("gpu", concurrency=1)
        run = engine.start(racer, id="race")
        with engine.worker(threads=2, grace=0.1):
            assert run.result(timeout=5) == (0, "quick")
        for _ in range(stops - 1):
            with engine.worker(threads=2, grace=0.1):
                time.sleep(0.05)
        assert [w.id for w in engine.store.workers()] == [engine._holder.id]
        waiting = other.start(one_gpu, id="after")
        results: list[Any] = []
        late = threading.Thread(target=lambda: results.append(waiting.result()))
        late.start()
        time.sleep(0.5)
        assert results == []  # waits for the loser's slot
        LOSER_GO.set()
        late.join(10)
        assert results == ["other"]
        assert max(GPU_AT_ONCE) == 1


@ce.workflow(name="queues.gathers_gpu")
def gathers_gpu(label: str) -> Generator[Any, Any, Any]:
    """A gather whose one member waits for the gpu queue."""
    return (yield ce.gather(gpu_call(label)))


def test_a_gather_member_waiting_for_its_slot_does_not_start_after_the_grace_period(
    tmp_path: Path,
) -> None:
    """A member waits for its slot through the grace period, but not past it: once the
    stop is past the grace period it gets no slot, and the step runs once, elsewhere."""
    path = tmp_path / "q.db"
    QUEUED_RAN.clear()
    with ce.Engine(path) as holder, ce.Engine(path) as engine:
        engine.set_queue("gpu", concurrency=1)
        with hogging(holder):
            run = engine.start(gathers_gpu, "member", id="g")
            worker = engine.worker(threads=2, grace=0.2)
            worker.__enter__()
            until_logged(engine, "g", 2)
            stopping = stop_in_background(worker, engine)
            assert wait_until(lambda: engine._holder.letting_go)  # past its grace period
        stopping.join(10)  # the slot freed while the stop was still going on
        time.sleep(0.3)
        assert QUEUED_RAN == []
        with ce.Engine(path) as other:
            other.run_until_idle()
            assert other.get_run(run.id).result() == ["member"]
        assert QUEUED_RAN == ["member"]
