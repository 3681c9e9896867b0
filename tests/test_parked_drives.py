"""Runs driven by the engine's pool, parked at every step's commit: the same results,
logs and executions as runs driven one at a time in the caller's thread, leases still
fence every write, and a step still cannot wait for its own run."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Generator
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings
from stores import current

import contengine as ce

pytestmark = pytest.mark.both_stores

# Every execution of a step, outside the engine: (run id, position, attempt).
LEDGER: Counter[tuple[str, int, int]] = Counter()
LEDGER_LOCK = threading.Lock()


def executed() -> None:
    ctx = ce.current_step()
    with LEDGER_LOCK:
        LEDGER[(ctx.run_id, ctx.position, ctx.attempt)] += 1


@ce.step(name="parked.add")
def add(acc: int, n: int) -> int:
    """A plain step."""
    executed()
    return (acc * 31 + n) % 1_000_003


@ce.step(name="parked.flaky", retries=2, backoff=0.0)
def flaky(acc: int, n: int) -> int:
    """Fails on its first attempt, then succeeds."""
    executed()
    if ce.current_step().attempt == 1:
        raise ValueError("first attempt fails")
    return (acc + n) % 1_000_003


@ce.step(name="parked.doomed")
def doomed(acc: int) -> int:
    """Always fails (no retries): the workflow catches it."""
    executed()
    raise KeyError(acc)


Op = tuple[str, int]


@ce.workflow(name="parked.program")
def program(ops: list[Op]) -> Generator[Any, Any, int]:
    """Interpret ops: steps, flaky steps, caught failures, zero sleeps, recorded values."""
    acc = 1
    for kind, n in ops:
        if kind == "add":
            acc = yield add(acc, n)
        elif kind == "flaky":
            acc = yield flaky(acc, n)
        elif kind == "doomed":
            try:
                yield doomed(acc)
            except KeyError:
                acc = (acc + 7) % 1_000_003
        elif kind == "sleep":
            yield ce.sleep(0)
        else:
            r = yield ce.random()
            acc = (acc + (1 if r < 2 else 0)) % 1_000_003
    return acc


def model(ops: list[Op]) -> int:
    acc = 1
    for kind, n in ops:
        if kind == "add":
            acc = (acc * 31 + n) % 1_000_003
        elif kind == "flaky":
            acc = (acc + n) % 1_000_003
        elif kind in ("doomed", "random"):
            acc = (acc + (7 if kind == "doomed" else 1)) % 1_000_003
    return acc


programs = st.lists(
    st.tuples(st.sampled_from(["add", "add", "add", "flaky", "doomed", "sleep", "random"]),
              st.integers(0, 99)),
    max_size=12,
)  # fmt: skip


@settings(max_examples=25)
@given(runs=st.lists(programs, min_size=1, max_size=10), threads=st.integers(2, 8))
def test_pooled_runs_end_as_the_model_with_each_step_executed_once(
    tmp_path_factory: Any, runs: list[list[Op]], threads: int
) -> None:
    """Many runs at once in the pool: each ends as the model says, each step attempt
    ran exactly once, and each log shows what an in-thread drive would log."""
    path = tmp_path_factory.mktemp("parked") / "p.db"
    LEDGER.clear()
    with ce.Engine(path, durability="normal", workflows=[program]) as engine:
        started = [engine.start(program, ops) for ops in runs]
        report = engine.run_until_idle(threads=threads)
        assert report.stuck == {}
        for run, ops in zip(started, runs, strict=True):
            assert run.result(timeout=5) == model(ops)
            steps = [e for e in engine.history(run.id) if e.kind == "step"]
            expected = [
                2 if kind == "flaky" else 1 for kind, _ in ops if kind in ("add", "flaky", "doomed")
            ]
            assert [e.attempts for e in steps] == expected
            assert all(e.crashes == 0 for e in steps)
            for e in steps:
                for attempt in range(1, e.attempts + 1):
                    assert LEDGER[(run.id, e.position, attempt)] == 1
    assert all(count == 1 for count in LEDGER.values())


def test_a_parked_drive_whose_lease_was_taken_writes_nothing(tmp_path: Path) -> None:
    """The commit a parked drive waits for is fenced like any other: refused (LeaseLost),
    the drive stops there (the next step does not start), the run is claimed again,
    and its step runs again as after a crash."""
    path = tmp_path / "p.db"
    calls: list[str] = []

    @ce.step(name="parked.stolen")
    def stolen() -> str:
        who = "inner" if "outer" in calls else "outer"
        calls.append(who)
        if who == "outer":
            with current().sql(path) as conn:  # another worker takes the run, then vanishes
                conn.execute("UPDATE runs SET owner = 'thief', lease = lease + 1 WHERE id = 'r'")
        return who

    @ce.step(name="parked.first")
    def first() -> str:
        calls.append("first")
        return "first"

    @ce.workflow(name="parked.fenced")
    def wf() -> Generator[Any, Any, str]:
        yield first()
        who: str = yield stolen()
        yield first()  # the commit of stolen()'s outcome with this step: a parked one
        return who

    with ce.Engine(path) as engine:
        engine.start(wf, id="r")
        engine.run_until_idle(threads=4)
        assert engine.get_run("r").result() == "inner"
        assert calls == ["first", "outer", "inner", "first"]
        entry = engine.history("r")[1]
        assert (entry.status, entry.value, entry.attempts, entry.crashes) == (
            "completed",
            "inner",
            2,
            1,
        )


def test_a_step_still_cannot_wait_for_its_own_run_after_parking(tmp_path: Path) -> None:
    """After a park the drive goes on in another thread; it still knows its own run."""
    path = tmp_path / "p.db"

    @ce.step(name="parked.noop")
    def noop() -> None:
        return None

    @ce.step(name="parked.wait_self")
    def wait_self() -> Any:
        return engine.get_run(ce.current_step().run_id).result(timeout=2)

    @ce.workflow(name="parked.selfish")
    def wf() -> Generator[Any, Any, Any]:
        for _ in range(3):
            yield noop()
        return (yield wait_self())

    with ce.Engine(path) as engine:
        run = engine.start(wf)
        engine.run_until_idle(threads=4)
        assert engine.get_run(run.id).status == "failed"
        (entry,) = [e for e in engine.history(run.id) if e.name == "parked.wait_self"]
        assert "further up this thread's stack" in (entry.error_text or "")


def test_a_parked_run_end_whose_lease_was_taken_is_not_an_end(tmp_path: Path) -> None:
    """A run's end, written with the batch, is fenced too: refused, the run is not
    counted finished, and the next claim runs its last step again and ends it."""
    path = tmp_path / "p.db"
    calls: list[str] = []

    @ce.step(name="parked.last")
    def last() -> str:
        who = "inner" if calls else "outer"
        calls.append(who)
        if who == "outer":
            with current().sql(path) as conn:
                conn.execute("UPDATE runs SET owner = 'thief', lease = lease + 1 WHERE id = 'r'")
        return who

    @ce.workflow(name="parked.ends")
    def wf() -> Generator[Any, Any, str]:
        return (yield last())

    with ce.Engine(path) as engine:
        engine.start(wf, id="r")
        report = engine.run_until_idle(threads=4)
        assert report.finished == ["r"]  # once: the refused end was not an end
        assert calls == ["outer", "inner"]
        assert engine.get_run("r").result() == "inner"


def test_a_cancel_from_another_engine_stops_a_pooled_run_before_its_next_step(
    tmp_path: Path,
) -> None:
    """The cancel is read by the (parked) write that would log the step's end with the
    next step: neither is written, the next step does not start, and Cancelled is raised
    at the yield of the step during which the cancel came."""
    path = tmp_path / "p.db"
    ran: list[str] = []

    @ce.step(name="parked.cancels")
    def cancels() -> None:
        ran.append("cancels")
        with ce.Engine(path) as other:
            assert other.cancel("r")

    @ce.step(name="parked.after")
    def after() -> None:
        ran.append("after")

    @ce.workflow(name="parked.cancelled")
    def wf() -> Generator[Any, Any, str]:
        yield cancels()
        yield after()
        return "not cancelled"

    with ce.Engine(path) as engine:
        engine.start(wf, id="r")
        engine.run_until_idle(threads=4)
        assert ran == ["cancels"]
        assert engine.get_run("r").status == "cancelled"
        assert [(e.name, e.status) for e in engine.history("r")] == [("parked.cancels", "failed")]


@pytest.mark.parametrize("threads", [1, 4])
def test_a_cancel_from_another_engine_caught_by_the_workflow_is_raised_once(
    tmp_path: Path, threads: int
) -> None:
    """A workflow that catches the cancel and goes on with more steps sees it once: the
    writes after the delivery clear it, so none of them reads it again, pooled or not."""
    path = tmp_path / "once.db"
    ran: list[str] = []

    @ce.step(name="parked.once.cancels")
    def cancels() -> None:
        ran.append("cancels")
        with ce.Engine(path) as other:
            assert other.cancel("r")

    @ce.step(name="parked.once.after")
    def after(n: int) -> int:
        ran.append(f"after{n}")
        return n

    @ce.workflow(name="parked.once.catches")
    def wf() -> Generator[Any, Any, int]:
        caught = 0
        for n in range(3):
            try:
                yield cancels() if n == 0 else after(n)
                yield after(10 + n)
            except ce.Cancelled:
                caught += 1
        return caught

    with ce.Engine(path) as engine:
        engine.start(wf, id="r")
        engine.run_until_idle(threads=threads)
        assert engine.get_run("r").result() == 1
        # Raised at the yield of the step it came during: the next one never ran.
        assert ran == ["cancels", "after1", "after11", "after2", "after12"]
        failed = [e.name for e in engine.history("r") if e.status == "failed"]
        assert failed == ["parked.once.cancels"]
