"""Leases in the file: workers on record, heartbeats, clean release, idempotent starts."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_until
from stores import OnCurrentStore, current

import contengine as ce
from contengine.store.base import Progress, WorkerRow
from contengine.store.liveness import HOST, alive

pytestmark = pytest.mark.both_stores

GATE = threading.Event()
STARTED = threading.Event()


@ce.step(name="leases.hold")
def hold() -> str:
    """Signal that the step runs, then wait for the gate."""
    STARTED.set()
    GATE.wait(10)
    return "held"


@ce.workflow(name="leases.holder")
def holder() -> Generator[Any, Any, str]:
    """One step that blocks until the test lets it go."""
    return (yield hold())


def owners(path: Path) -> list[Any]:
    """Every run's owner, read straight from the file."""
    with current().sql(path) as conn:
        return [r[0] for r in conn.execute("SELECT owner FROM runs ORDER BY num")]


def test_a_driving_engine_is_on_record_and_renews_its_lease(tmp_path: Path) -> None:
    """While a step runs, the run names its engine, whose row the heartbeat keeps alive."""
    path = tmp_path / "l.db"
    GATE.clear()
    STARTED.clear()
    engine = ce.Engine(path, lease=0.4)
    try:
        run = engine.start(holder)
        result: list[str] = []
        driver = threading.Thread(target=lambda: result.append(run.result()))
        driver.start()
        assert STARTED.wait(5)
        (worker,) = engine.store.workers()
        assert owners(path) == [worker.id] and worker.host == HOST
        first = worker.expires_at
        time.sleep(0.5)  # longer than the lease: only renewals keep it alive
        (worker,) = engine.store.workers()
        assert worker.expires_at > first and alive(worker, time.time())
        GATE.set()
        driver.join(5)
        assert result == ["held"]
        assert owners(path) == [None]  # a finished run's last write let it go
    finally:
        GATE.set()
        engine.close()
    with current().sql(path) as conn:
        assert conn.execute("SELECT count(*) FROM workers").fetchone()[0] == 0


def test_liveness_follows_expiry_and_the_process(tmp_path: Path) -> None:
    """Expired is dead; on this host, a pid that no longer runs is dead at once."""
    now = time.time()
    me = WorkerRow("w", HOST, 1, None, now, now + 60)
    assert alive(me, now)  # pid 1 runs (and belongs to someone else)
    assert not alive(WorkerRow("w", HOST, 1, None, now, now - 1), now)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert not alive(WorkerRow("w", HOST, gone.pid, None, now, now + 60), now)
    # Elsewhere, only the expiry can tell.
    assert alive(WorkerRow("w", "another-host", gone.pid, None, now, now + 60), now)


START_SAME_ID = """
import sys, contengine as ce
sys.path.insert(0, sys.argv[2])
import test_leases
with ce.Engine(sys.argv[1]) as engine:
    for _ in range(30):
        engine.start(test_leases.holder, id="the-one")
"""


def test_a_start_by_id_is_idempotent_across_processes(tmp_path: Path) -> None:
    """Four processes start the same id at once: one run."""
    path = tmp_path / "l.db"
    ce.Engine(path).close()  # the schema first, so the processes race on the start only
    here = str(Path(__file__).parent)
    procs = [
        subprocess.Popen([sys.executable, "-c", START_SAME_ID, current().target(path), here])
        for _ in range(4)
    ]
    assert [p.wait(60) for p in procs] == [0, 0, 0, 0]
    with ce.Engine(path) as engine:
        assert [r.id for r in engine.runs()] == ["the-one"]


FROZEN = threading.Event()  # the "process" of the store below is frozen while set
THAWED = threading.Event()
SECOND_RAN: list[str] = []


class _FreezesAfterLogging(OnCurrentStore):
    """Freezes, heartbeat and all, right after the write that logs the second step: a
    SIGSTOP between a step's durable entry and the step's start."""

    def heartbeat(self, worker: WorkerRow) -> bool:
        while FROZEN.is_set():
            time.sleep(0.005)
        return super().heartbeat(worker)

    def commit(self, progress: Progress) -> bool:
        cancel = super().commit(progress)
        logged = [*progress.recorded, *([progress.insert] if progress.insert else [])]
        if any(e.name == "leases.second" and e.status == "running" for e in logged):
            FROZEN.set()
            assert THAWED.wait(10)
            FROZEN.clear()
        return cancel


@ce.step(name="leases.first")
def first() -> int:
    return 1


@ce.step(name="leases.second")
def second(who: str) -> str:
    SECOND_RAN.append(who)
    return who


@ce.workflow(name="leases.two_steps")
def two_steps(who: str, gathered: bool) -> Generator[Any, Any, Any]:
    """Two steps (the second alone or in a gather); its executions are counted."""
    yield first()
    if gathered:
        return (yield ce.gather(second(who)))
    return (yield second(who))


@pytest.mark.parametrize("gathered", [False, True])
def test_a_thawed_engine_does_not_start_a_step_of_a_run_taken_over(
    tmp_path: Path, gathered: bool
) -> None:
    """Frozen past its lease after logging a step, before starting it: another engine
    takes the run over and runs the step; thawed, the first engine does not run it."""
    path = tmp_path / "l.db"
    FROZEN.clear()
    THAWED.clear()
    SECOND_RAN.clear()
    frozen = ce.Engine(store=_FreezesAfterLogging(str(path)), lease=0.3)
    run = frozen.start(two_steps, "frozen", gathered, id="r")
    driving = threading.Thread(target=frozen.run_until_idle, kwargs={"threads": 1})
    driving.start()
    assert wait_until(FROZEN.is_set)
    time.sleep(0.5)  # past the frozen engine's lease
    with ce.Engine(path) as other:
        other.run_until_idle()
        expected = ["frozen"] if gathered else "frozen"
        assert other.get_run("r").result() == expected
    assert SECOND_RAN == ["frozen"]  # run by the other engine (a crash counted)
    THAWED.set()
    driving.join(10)
    assert SECOND_RAN == ["frozen"]  # not again by the thawed engine
    assert run.result() == expected
    frozen.close()


class _LateHeartbeat(OnCurrentStore):
    """The second renewal comes late, past the lease (a heartbeat stuck on a busy disk)."""

    beats = 0

    def heartbeat(self, worker: WorkerRow) -> bool:
        _LateHeartbeat.beats += 1
        if _LateHeartbeat.beats == 2:
            time.sleep(0.5)
        return super().heartbeat(worker)


@ce.step(name="leases.tick")
def tick(i: int) -> int:
    time.sleep(0.01)
    return i


@ce.workflow(name="leases.ticks")
def ticks(n: int) -> Generator[Any, Any, int]:
    """n short steps."""
    total = 0
    for i in range(n):
        total += yield tick(i)
    return total


def test_a_late_heartbeat_with_no_one_else_on_the_file_costs_no_run_a_crash(
    tmp_path: Path,
) -> None:
    """The engine's row expires while its steps go on: no one took the runs, so the next
    step renews the row (with the check that the run is still its own) and goes on."""
    _LateHeartbeat.beats = 0
    engine = ce.Engine(store=_LateHeartbeat(str(tmp_path / "l.db")), lease=0.3)
    runs = [engine.start(ticks, 60, id=f"t{i}") for i in range(3)]
    engine.run_until_idle(threads=3)
    assert _LateHeartbeat.beats >= 2  # the late renewal happened during the runs
    assert [run.result() for run in runs] == [sum(range(60))] * 3
    assert all(e.crashes == 0 for run in runs for e in engine.history(run.id))
    engine.close()
