"""retry, fork, export and import: repairing a run, branching it, and moving it between files."""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

import contengine as ce
from contengine.cli.main import main
from contengine.core.workflow import Workflow
from contengine.engine.transfer import EXPORT_VERSION
from contengine.testing import VirtualClock

LEDGER: list[str] = []  # every step execution, in order, across engines
FIXED = {"b": False, "tail": False}  # flags the tests flip to "fix the bug"


@pytest.fixture(autouse=True)
def _fresh() -> None:
    LEDGER.clear()
    FIXED.update(b=False, tail=False)


@ce.step
def rops_a(x: int) -> int:
    """Always works."""
    LEDGER.append(f"a{x}")
    return x + 1


@ce.step(retries=1, backoff=0)
def rops_b(x: int) -> int:
    """Fails (on every attempt) until FIXED["b"]."""
    LEDGER.append(f"b{x}")
    if not FIXED["b"]:
        raise ValueError("b is broken")
    return x * 10


@ce.workflow(name="rops.chain")
def wf_chain(x: int) -> Generator[Any, Any, int]:
    """a, a, then b (which may fail), then a."""
    y = yield rops_a(x)
    y = yield rops_a(y)
    z = yield rops_b(y)
    w = yield rops_a(z)
    return int(w)


@ce.workflow(name="rops.tail")
def wf_tail(x: int) -> Generator[Any, Any, int]:
    """Two steps, then a check in the workflow's own code that fails until fixed."""
    y = yield rops_a(x)
    y = yield rops_a(y)
    if not FIXED["tail"]:
        raise RuntimeError("the workflow itself is broken")
    return int(y)


@ce.workflow(name="rops.fan")
def wf_fan(x: int) -> Generator[Any, Any, list[int]]:
    """A step, then a gather of a and b, then a step."""
    yield rops_a(x)
    values = yield ce.gather(rops_a(100), rops_b(200))
    yield rops_a(x + 1)
    return list(values)


@ce.workflow(name="rops.pub")
def wf_pub(x: int) -> Generator[Any, Any, int]:
    """Publishes, then four steps."""
    yield ce.publish("stage", "started")
    for i in range(4):
        x = yield rops_a(x + i)
    return int(x)


@ce.workflow(name="rops.leaf")
def wf_leaf(x: int) -> Generator[Any, Any, int]:
    """One step."""
    y = yield rops_a(x)
    return int(y)


@ce.workflow(name="rops.parent")
def wf_parent(x: int) -> Generator[Any, Any, int]:
    """A step, then a child run."""
    yield rops_a(x)
    y = yield wf_leaf(x)
    return int(y)


@ce.workflow(name="rops.waiter")
def wf_waiter(order: str) -> Generator[Any, Any, dict[str, Any]]:
    """A step, a durable sleep, a wait for "approved", then a step."""
    yield rops_a(1)
    yield ce.sleep(3600)
    payload = yield ce.wait("approved")
    yield rops_a(2)
    return {"order": order, "payload": payload}


@ce.workflow(name="rops.boss")
def wf_boss() -> Generator[Any, Any, Any]:
    """A child run that sleeps and waits."""
    return (yield wf_waiter("child"))


WORKFLOWS: list[Workflow[Any, Any]] = [
    wf_chain,
    wf_tail,
    wf_fan,
    wf_pub,
    wf_leaf,
    wf_parent,
    wf_waiter,
    wf_boss,
]


def engine_on(path: Path, clock: VirtualClock | None = None) -> ce.Engine:
    return ce.Engine(path, clock=clock or VirtualClock(), workflows=WORKFLOWS)


def cli(capsys: pytest.CaptureFixture[str], db: Path, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([*argv, "--db", str(db)])
    out, err = capsys.readouterr()
    return code, out, err


def failed_chain(db: Path) -> None:
    with engine_on(db) as engine:
        with pytest.raises(ValueError, match="b is broken"):
            engine.run(wf_chain, 1, id="r1")
        assert engine.get_run("r1").status == "failed"


# -- retry -------------------------------------------------------------------------


def test_retry_resumes_at_the_failed_step_without_rerunning_earlier_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "app.db"
    failed_chain(db)
    assert LEDGER == ["a1", "a2", "b3", "b3"]  # b failed after its retry
    FIXED["b"] = True
    code, out, _ = cli(capsys, db, "retry", "r1")
    assert code == 0 and "position 2" in out
    LEDGER.clear()
    with engine_on(db) as engine:
        assert engine.get_run("r1").status == "pending"
        assert engine.get_run("r1").result() == 31
        assert LEDGER == ["b3", "a30"]
        history = engine.history("r1")
        assert [e.status for e in history] == ["completed"] * 4
        assert history[2].attempts == 1  # the step started afresh


def test_retry_after_the_workflow_own_code_raised_keeps_the_whole_log(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    with engine_on(db) as engine:
        with pytest.raises(RuntimeError):
            engine.run(wf_tail, 5, id="t")
        FIXED["tail"] = True
        LEDGER.clear()
        assert engine.retry("t").result() == 7
        assert LEDGER == []  # both steps replayed from the log
        assert len(engine.history("t")) == 2


def test_retry_of_a_failed_gather_member_reruns_the_gather(tmp_path: Path) -> None:
    with engine_on(tmp_path / "app.db") as engine:
        with pytest.raises(ValueError):
            engine.run(wf_fan, 1, id="g")
        FIXED["b"] = True
        LEDGER.clear()
        assert engine.retry("g").result() == [101, 2000]
        assert sorted(LEDGER[:2]) == ["a100", "b200"] and LEDGER[2:] == ["a2"]
        assert "a1" not in LEDGER


def test_retry_refuses_a_run_that_did_not_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "app.db"
    with engine_on(db) as engine:
        engine.run(wf_leaf, 1, id="ok")
        before = engine.history("ok")
    code, _, err = cli(capsys, db, "retry", "ok")
    assert code == 1
    assert "is completed, not failed" in err and err.count("\n") == 1
    with engine_on(db) as engine:
        assert engine.get_run("ok").status == "completed"
        assert len(engine.history("ok")) == len(before)
    code, _, err = cli(capsys, db, "retry", "nope")
    assert code == 1 and "no run with id 'nope'" in err


# -- fork ---------------------------------------------------------------------------


def test_fork_runs_only_the_steps_after_the_fork_point(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "app.db"
    with engine_on(db) as engine:
        assert engine.run(wf_pub, 0, id="p") == 10
    LEDGER.clear()
    code, out, _ = cli(capsys, db, "fork", "p", "--at", "3", "--id", "p2")
    assert code == 0 and "'p2'" in out
    with engine_on(db) as engine:
        run = engine.get_run("p2")
        assert run.workflow == "rops.pub" and run.status == "pending"
        assert run.result() == 10
        assert LEDGER == ["a5", "a9"]  # positions 3 and 4: the steps after the copy
        assert engine.published("p2") == {"stage": "started"}
        original = engine.history("p")
        forked = engine.history("p2")
        assert [(e.kind, e.name, e.value) for e in forked[:3]] == [
            (e.kind, e.name, e.value) for e in original[:3]
        ]


def test_fork_at_zero_with_a_fresh_id_starts_over(tmp_path: Path) -> None:
    with engine_on(tmp_path / "app.db") as engine:
        engine.run(wf_leaf, 1, id="l")
        LEDGER.clear()
        run = engine.fork("l", at=0)
        assert run.id != "l" and run.result() == 2
        assert LEDGER == ["a1"]


def test_fork_refuses_points_it_cannot_replay_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "app.db"
    FIXED["b"] = True
    with engine_on(db) as engine:
        engine.run(wf_fan, 1, id="g")  # positions: a, gather, a100, b200, a
        engine.run(wf_parent, 1, id="par")  # positions: a, child
        engine.run(wf_leaf, 1, id="l")
    for run_id, at, message in (
        ("g", 3, "cuts the gather at positions 1..3 in two"),
        ("g", 2, "cuts the gather"),
        ("g", 6, "from 0 to 5"),
        ("g", -1, "from 0 to 5"),
        ("par", 2, "child runs are not copied"),
    ):
        code, _, err = cli(capsys, db, "fork", run_id, "--at", str(at))
        assert code == 1, (run_id, at)
        assert message in err
    code, _, err = cli(capsys, db, "fork", "g", "--at", "1", "--id", "l")
    assert code == 1 and "already exists" in err
    with engine_on(db) as engine:
        assert {r.id for r in engine.runs()} == {"g", "par", "par/1", "l"}
        assert engine.fork("g", at=4).result() == [101, 2000]


# -- export and import -----------------------------------------------------------------


def test_export_and_import_move_a_waiting_run_with_its_signal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, dest = tmp_path / "src.db", tmp_path / "dest.db"
    clock = VirtualClock()
    with engine_on(src, clock) as engine:
        engine.start(wf_waiter, "o-1", id="w")
        engine.run_until_idle(until=clock.now() + 10)
        assert engine.get_run("w").status == "sleeping"
        engine.signal("w", "approved", {"by": "ann"})  # before the export: it travels along
    code, out, _ = cli(capsys, src, "export", "w")
    assert code == 0
    data = json.loads(out)
    assert data["version"] == EXPORT_VERSION and len(data["mailbox"]) == 1
    exported = tmp_path / "run.json"
    exported.write_text(out)
    with engine_on(dest):
        pass  # an empty database
    code, out, _ = cli(capsys, dest, "import", str(exported))
    assert code == 0 and "imported run 'w' (sleeping)" in out
    LEDGER.clear()
    with engine_on(dest, VirtualClock(clock.now())) as engine:
        report = engine.run_until_idle()
        assert report.finished == ["w"]
        assert engine.get_run("w").result() == {"order": "o-1", "payload": {"by": "ann"}}
        assert LEDGER == ["a2"]  # the first step was not run again
        assert [e.kind for e in engine.history("w")] == ["step", "sleep", "wait", "step"]


def test_import_under_a_new_id_and_round_trip_of_a_finished_run(tmp_path: Path) -> None:
    with engine_on(tmp_path / "a.db") as a, engine_on(tmp_path / "b.db") as b:
        a.run(wf_pub, 0, id="p")
        data = json.loads(json.dumps(a.export_run("p")))
        run = b.import_run(data, id="copy")
        assert run.status == "completed" and run.result() == 10
        assert b.published("copy") == {"stage": "started"}
        assert [e.value for e in b.history("copy")] == [e.value for e in a.history("p")]


def test_import_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "app.db"
    with engine_on(db) as engine:
        engine.run(wf_leaf, 1, id="l")
        data = engine.export_run("l")
        with pytest.raises(ce.IdConflict):
            engine.import_run(data)
        newer = {**data, "version": EXPORT_VERSION + 1}
        with pytest.raises(ce.ContengineError, match="newer contengine"):
            engine.import_run(newer, id="x")
        broken_run = {**data, "run": {k: v for k, v in data["run"].items() if k != "args"}}
        with pytest.raises(ce.ContengineError, match="no field 'args'"):
            engine.import_run(broken_run, id="x")
        bad_b64 = {**data, "run": {**data["run"], "args": "not base64!"}}
        with pytest.raises(ce.ContengineError, match="not valid base64"):
            engine.import_run(bad_b64, id="x")
        gap = {**data, "log": [{**data["log"][0], "position": 3}]}
        with pytest.raises(ce.ContengineError, match="expected 0"):
            engine.import_run(gap, id="x")
        with pytest.raises(ce.ContengineError, match="not an exported contengine run"):
            engine.import_run([1, 2], id="x")
        assert [r.id for r in engine.runs()] == ["l"]
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    code, _, err = cli(capsys, db, "import", str(junk))
    assert code == 1 and "is not JSON" in err
    taken = tmp_path / "taken.json"
    taken.write_text(json.dumps(data))
    code, _, err = cli(capsys, db, "import", str(taken))
    assert code == 1 and "already exists" in err


def test_export_refuses_an_unfinished_run_in_a_tree(tmp_path: Path) -> None:
    clock = VirtualClock()
    with engine_on(tmp_path / "app.db", clock) as engine:
        engine.start(wf_boss, id="boss")
        engine.run_until_idle(until=clock.now() + 10)
        assert engine.get_run("boss/0").status == "sleeping"
        with pytest.raises(ce.ContengineError, match="has child runs"):
            engine.export_run("boss")
        with pytest.raises(ce.ContengineError, match="unfinished child of 'boss'"):
            engine.export_run("boss/0")
