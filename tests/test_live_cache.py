"""The live-generator cache: a woken run goes on without replay, unless another driver
came in between or the cache had to let it go; either way the result is the same."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

import contengine as ce
from contengine.testing import VirtualClock

pytestmark = pytest.mark.both_stores

START = 1_700_000_000.0
BODIES: list[str] = []  # one entry per time a workflow body starts (a replay starts it again)
CALLS: list[str] = []


@ce.step(name="live.work")
def work(label: str) -> str:
    """A step that records each execution."""
    CALLS.append(label)
    return label.upper()


@ce.workflow(name="live.napper")
def napper(label: str, naps: int) -> Generator[Any, Any, list[str]]:
    """A step, then naps and steps; records each start of its body."""
    BODIES.append(label)
    out = [(yield work(f"{label}-0"))]
    for i in range(1, naps + 1):
        yield ce.sleep(60)
        out.append((yield work(f"{label}-{i}")))
    return out


@ce.workflow(name="live.waiter")
def waiter(label: str) -> Generator[Any, Any, str]:
    """Waits for a signal between two steps."""
    BODIES.append(label)
    first = yield work(label)
    got = yield ce.wait("go")
    return f"{first}:{got}:{(yield work(label + '!'))}"


def fresh() -> None:
    """Forget what earlier tests recorded."""
    BODIES.clear()
    CALLS.clear()


def test_a_woken_run_goes_on_without_replaying(tmp_path: Path) -> None:
    """With the cache, the body starts once however many times the run sleeps."""
    fresh()
    with ce.Engine(tmp_path / "a.db", clock=VirtualClock(START)) as engine:
        run = engine.start(napper, "a", 3)
        engine.run_until_idle()
        assert run.result() == ["A-0", "A-1", "A-2", "A-3"]
        assert BODIES == ["a"]
        assert engine._runner.live.hits == 3
    assert CALLS == ["a-0", "a-1", "a-2", "a-3"]


def test_without_the_cache_every_wake_up_replays(tmp_path: Path) -> None:
    """cache_runs=0: the body starts again at each wake-up, with the same result."""
    fresh()
    with ce.Engine(tmp_path / "a.db", clock=VirtualClock(START), cache_runs=0) as engine:
        run = engine.start(napper, "a", 3)
        engine.run_until_idle()
        assert run.result() == ["A-0", "A-1", "A-2", "A-3"]
    assert BODIES == ["a"] * 4
    assert CALLS == ["a-0", "a-1", "a-2", "a-3"]  # replays never run steps again


def test_a_signal_resumes_the_kept_generator(tmp_path: Path) -> None:
    """A waiting run woken by a signal goes on from its generator, not from a replay."""
    fresh()
    with ce.Engine(tmp_path / "a.db", clock=VirtualClock(START)) as engine:
        run = engine.start(waiter, "w")
        engine.run_until_idle()
        assert run.status == "waiting" and len(engine._runner.live) == 1
        engine.signal(run.id, "go", 7)
        engine.run_until_idle()
        assert run.result() == "W:7:W!"
    assert BODIES == ["w"]


def test_a_run_driven_elsewhere_meanwhile_is_replayed_not_resumed(tmp_path: Path) -> None:
    """The lease number shows another engine drove the run: the kept generator, now
    behind the log, is dropped and the run is rebuilt from the log."""
    fresh()
    path = tmp_path / "a.db"
    clock = VirtualClock(START)
    first = ce.Engine(path, clock=clock)
    second = ce.Engine(path, clock=clock)
    try:
        run = first.start(napper, "m", 2)
        first.run_until_idle(until=START)  # sleeping at its first nap, kept by `first`
        assert len(first._runner.live) == 1
        clock.jump_to(START + 60)
        second.run_until_idle(until=START + 60)  # `second` drives it to its second nap
        assert CALLS == ["m-0", "m-1"]
        clock.jump_to(START + 120)
        first.run_until_idle()
        assert run.result() == ["M-0", "M-1", "M-2"]
        assert first._runner.live.misses == 1
    finally:
        first.close()
        second.close()
    assert CALLS == ["m-0", "m-1", "m-2"]  # no step ran twice
    assert BODIES == ["m", "m", "m"]  # started, rebuilt by second, rebuilt by first


def test_the_cache_is_bounded_by_count_and_evicted_runs_replay(tmp_path: Path) -> None:
    """Beyond cache_runs the oldest kept runs are let go; they finish by replay."""
    fresh()
    with ce.Engine(tmp_path / "a.db", clock=VirtualClock(START), cache_runs=2) as engine:
        runs = [engine.start(napper, f"r{i}", 1, id=f"r{i}") for i in range(5)]
        engine.run_until_idle(until=START)
        live = engine._runner.live
        assert len(live) == 2 and live.evictions == 3
        engine.run_until_idle()
        assert [r.result() for r in runs] == [[f"R{i}-0", f"R{i}-1"] for i in range(5)]
        assert live.hits == 2
    assert sorted(BODIES) == sorted([f"r{i}" for i in range(5)] + ["r0", "r1", "r2"])


def test_the_cache_is_bounded_by_memory(tmp_path: Path) -> None:
    """A byte budget smaller than two runs keeps at most one."""
    fresh()
    with ce.Engine(tmp_path / "a.db", clock=VirtualClock(START), cache_bytes=5_000) as engine:
        for i in range(4):
            engine.start(napper, f"b{i}", 1, id=f"b{i}")
        engine.run_until_idle(until=START)
        live = engine._runner.live
        assert len(live) == 1 and 0 < live.bytes <= 5_000 and live.evictions == 3
        engine.run_until_idle()
        assert all(r.status == "completed" for r in engine.runs())


def test_a_new_run_under_a_reused_id_is_not_resumed_from_the_old_one(tmp_path: Path) -> None:
    """Deleted and started again under the same id, a run starts afresh."""
    fresh()
    clock = VirtualClock(START)
    path = tmp_path / "a.db"
    with ce.Engine(path, clock=clock) as engine:
        engine.start(napper, "old", 1, id="x")
        engine.run_until_idle(until=START)  # asleep, its generator kept
        with ce.Engine(path, clock=clock) as other:
            other.run_until_idle()  # finishes it elsewhere
            clock.sleep(1)
            assert other.gc(0) == 1
            other.start(napper, "new", 1, id="x")
        clock.jump_to(START + 200)
        engine.run_until_idle()
        assert engine.get_run("x").result() == ["NEW-0", "NEW-1"]
        assert engine._runner.live.misses == 1  # the old generator was dropped


class _NoLength(list[int]):
    """A list whose length cannot be read."""

    def __len__(self) -> int:
        raise RuntimeError("no length here")


class _Unbound:
    """A proxy with nothing behind it: even its __class__ raises (as an unbound proxy's)."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        raise RuntimeError("unbound proxy")


class _NoSize:
    def __sizeof__(self) -> int:
        raise RuntimeError("no size here")


@ce.workflow(name="live.odd_locals")
def odd_locals(label: str) -> Generator[Any, Any, list[str]]:
    """Holds objects that refuse to be measured across its sleeps."""
    held = [_NoLength(range(300)), [_Unbound()], _NoSize()]
    out = [(yield work(f"{label}-0"))]
    yield ce.sleep(60)
    out.append((yield work(f"{label}-1")))
    return out if held else []


def test_a_run_holding_objects_that_refuse_to_be_measured_is_kept_and_goes_on(
    tmp_path: Path,
) -> None:
    """The cache's estimate of what a run holds reads sizes and lengths of its locals;
    one that raises is counted roughly, and the run goes on (it was left stuck: the
    estimate's exception was taken for the engine failing to drive it)."""
    fresh()
    with ce.Engine(tmp_path / "a.db", clock=VirtualClock(START)) as engine:
        run = engine.start(odd_locals, "o")
        engine.run_until_idle()
        assert engine.get_run(run.id).note is None
        assert run.result() == ["O-0", "O-1"]
        assert engine._runner.live.hits == 1
