"""ce.current_run() and ce.logger: what a workflow body knows of its run, and log lines
that are emitted once although the code before a crash runs again when the run is
rebuilt (in another engine, after a real SIGKILL), on both stores."""

from __future__ import annotations

import logging
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import kill_then_finish
from stores import current

import contengine as ce
from contengine.testing import VirtualClock

pytestmark = pytest.mark.both_stores

WAIT = 120.0  # a bound against hanging, never reached when things work


class Lines(logging.Handler):
    """The records ce.logger emits: (message, run_id, workflow, position)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[tuple[str, Any, Any, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(
            (record.getMessage(), record.run_id, record.workflow, record.position)  # type: ignore[attr-defined]
        )


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    ce.logger.addHandler(handler)
    old = ce.logger.level
    ce.logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        ce.logger.removeHandler(handler)
        ce.logger.setLevel(old)


@ce.step(name="test_run_context.add")
def add(x: int, y: int) -> int:
    """Adds."""
    return x + y


@ce.workflow(name="test_run_context.child")
def child(x: int) -> Generator[Any, Any, dict[str, Any]]:
    """Tells what it knows of its run."""
    info = ce.current_run()
    yield add(x, 0)
    return {"id": info.id, "workflow": info.workflow, "parent": info.parent_id}


@ce.workflow(name="test_run_context.parent")
def parent(x: int, rounds: int) -> Generator[Any, Any, Any]:
    """Logs around a step, a sleep and a child; continues as new once."""
    info = ce.current_run()
    ce.logger.info("round %s begins at generation %s", rounds, info.generation)
    total = yield add(x, 1)
    ce.logger.info("added: %s", total)
    yield ce.wait("go")
    told = yield ce.start_child(child, total)
    told = yield told
    ce.logger.info("child said %s", told["parent"])
    if rounds > 1:
        return ce.continue_as_new(total, rounds - 1)
    return {"generation": info.generation, "child": told, "id": info.id}


def test_the_body_knows_its_run_its_parent_and_its_generation(tmp_path: Path, lines: Lines) -> None:
    with ce.Engine(tmp_path / "ctx.db", clock=VirtualClock()) as engine:
        run = engine.start(parent, 1, 2, id="p-1")
        for _ in range(2):
            engine.run_until_idle()
            engine.signal("p-1", "go")
        result = run.result(timeout=WAIT)
        kids = [r for r in engine.runs() if r.id != "p-1"]
    assert result["generation"] == 1 and result["id"] == "p-1"
    assert result["child"]["id"] in {k.id for k in kids}
    assert result["child"]["workflow"] == "test_run_context.child"
    assert result["child"]["parent"] == "p-1"
    # One line each, live: the wait kept the generator alive, nothing was replayed.
    assert [m for m, *_ in lines.seen] == [
        "round 2 begins at generation 0",
        "added: 2",
        "child said p-1",
        "round 1 begins at generation 1",
        "added: 3",
        "child said p-1",
    ]
    assert {(run_id, wf) for _, run_id, wf, _ in lines.seen} == {("p-1", "test_run_context.parent")}
    assert [pos for *_, pos in lines.seen] == [0, 1, 4, 0, 1, 4]


def test_a_rebuilt_run_replays_its_code_without_logging_it_again(
    tmp_path: Path, lines: Lines
) -> None:
    """Each engine stops at the sleep; the next one, fresh, rebuilds the run from its log,
    so the code before the sleep runs again: ce.logger says nothing while it does, and
    current_run().replaying says so."""
    clock = VirtualClock()
    path = tmp_path / "rebuilt.db"
    with ce.Engine(path, clock=clock) as engine:
        run = engine.start(parent, 5, 1, id="p-2")
        engine.run_until_idle()
        assert run.status == "waiting"
    assert [m for m, *_ in lines.seen] == ["round 1 begins at generation 0", "added: 6"]
    with ce.Engine(path, clock=clock) as engine:
        engine.signal("p-2", "go")
        engine.run_until_idle()
        assert engine.get_run("p-2").result(timeout=0)["child"]["parent"] == "p-2"
    assert [m for m, *_ in lines.seen] == [
        "round 1 begins at generation 0",
        "added: 6",
        "child said p-2",
    ]


PROBES: list[tuple[int, bool]] = []


@ce.workflow(name="test_run_context.probe")
def probe() -> Generator[Any, Any, int]:
    """Records (position, replaying) at each point of its body."""
    info = ce.current_run()
    PROBES.append((info.position, info.replaying))
    yield add(1, 1)
    PROBES.append((info.position, info.replaying))
    yield ce.wait("go")
    PROBES.append((info.position, info.replaying))
    return 0


def test_replaying_is_true_exactly_for_code_that_ran_before(tmp_path: Path) -> None:
    clock, path = VirtualClock(), tmp_path / "probe.db"
    PROBES.clear()
    with ce.Engine(path, clock=clock) as engine:
        engine.start(probe, id="probe-1")
        engine.run_until_idle()
    assert PROBES == [(0, False), (1, False)]
    PROBES.clear()
    with ce.Engine(path, clock=clock) as engine:  # rebuilt: the log holds positions 0, 1
        engine.signal("probe-1", "go")
        engine.run_until_idle()
        assert engine.get_run("probe-1").status == "completed"
    assert PROBES == [(0, True), (1, True), (2, False)]
    # ce.testing.replay runs the body again over the whole log and nothing live: all of
    # it is replay, the code after the last yield too.
    PROBES.clear()
    report = ce.testing.replay(current().target(path), workflows=[probe])
    assert PROBES == [(0, True), (1, True), (2, True)], report


def test_outside_a_workflow_body_current_run_says_where_it_works() -> None:
    with pytest.raises(ce.ContengineError, match=r"only available in a workflow's body"):
        ce.current_run()

    @ce.step(name="test_run_context.asks_in_a_step")
    def asks() -> str:
        return ce.current_run().id

    @ce.workflow(name="test_run_context.step_asks")
    def step_asks() -> Generator[Any, Any, str]:
        return (yield asks())

    with ce.Engine() as engine, pytest.raises(ce.ContengineError, match="ce.current_step"):
        engine.run(step_asks)


def test_outside_a_run_the_logger_logs_with_empty_attributes(lines: Lines) -> None:
    ce.logger.warning("plain %d", 1)
    assert lines.seen == [("plain 1", None, None, None)]
    assert isinstance(ce.logger, logging.Logger)
    assert ce.logger.name == "contengine.workflow"


CHILD = """
import logging, os, sys, time
import contengine as ce

@ce.step(name="ctx_crash.slow")
def slow(x):
    if os.environ.get("HANG") == "1":
        print("HANG", flush=True)
        time.sleep(600)
    return x * 2

@ce.step(name="ctx_crash.fast")
def fast(x):
    return x + 1

@ce.workflow(name="ctx_crash.flow")
def flow(x):
    ce.logger.info("begin %s", x)
    y = yield fast(x)
    ce.logger.info("fast gave %s", y)
    z = yield slow(y)
    ce.logger.info("slow gave %s", z)
    return z

if __name__ == "__main__":
    out = open(sys.argv[2], "a")
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s|%(run_id)s|%(position)s"))
    ce.logger.addHandler(handler)
    ce.logger.setLevel(logging.INFO)
    engine = ce.Engine(sys.argv[1], lease=1.0)  # a dead holder is found soon on any store
    print("DONE", engine.start(flow, 4, id="crashy").result(), flush=True)
"""


def test_after_a_sigkill_each_line_is_logged_once(tmp_path: Path) -> None:
    """A process logs, is killed inside a step; another rebuilds the run (the code before
    the step runs again) and finishes it: the two processes' lines, together, hold each
    line once."""
    script = tmp_path / "ctx_crash.py"
    script.write_text(CHILD)
    target, out = current().target(tmp_path / "crash.db"), tmp_path / "lines.txt"
    assert kill_then_finish([sys.executable, str(script), target, str(out)]) == "DONE 10"
    assert out.read_text().splitlines() == [
        "begin 4|crashy|0",
        "fast gave 5|crashy|1",
        "slow gave 10|crashy|2",
    ]
