"""Real crashes: a child process is killed with SIGKILL inside a step, and the run resumes.

The child runs a workflow from tests/crashing_child.py on a database file, tells
us (through its stdout) that it is inside the step chosen to crash, and is
killed there. A fresh Engine in this process (or another child) then resumes the
run from the file. A ledger kept outside the engine shows what really ran.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from crashing_child import HANG_ENV, read_ledger
from helpers import first_line
from stores import current

import contengine as ce

pytestmark = [
    pytest.mark.both_stores,
    pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL"),
]

TESTS = Path(__file__).resolve().parent
WAIT = 20.0  # seconds a child may take to reach its hang point or finish
CHILD = "import crashing_child; crashing_child.main()"

# A workflow that exists only in the child's __main__: no other process can import it.
MAIN_ONLY = """
import sys
import contengine as ce
from crashing_child import work

@ce.workflow(name="crash.main_only")
def main_only(ledger):
    a = yield work(ledger, "m0", "start")
    b = yield work(ledger, "m1", a)
    return b

db, ledger = sys.argv[1:]
print("DONE", ce.Engine(db).start(main_only, ledger, id="main-only").result(), flush=True)
"""


class Children:
    """Starts child processes and makes sure none outlives the test."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def spawn(self, code: str, *args: str, hang_in: str | None = None) -> subprocess.Popen[str]:
        """Run `python -c code args...` with tests/ importable, hanging in step hang_in."""
        env = {k: v for k, v in os.environ.items() if k != HANG_ENV}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH")) if p)
        if hang_in is not None:
            env[HANG_ENV] = hang_in
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.procs.append(proc)
        return proc

    def run_workflow(
        self,
        db: Path,
        run_id: str,
        name: str,
        *args: Any,
        hang_in: str | None = None,
        durability: str = "full",
    ) -> subprocess.Popen[str]:
        """A child that starts (or finds) run_id of a crashing_child workflow and drives it."""
        return self.spawn(
            CHILD, current().target(db), durability, run_id, name, json.dumps(args), hang_in=hang_in
        )

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()


@pytest.fixture
def children() -> Iterator[Children]:
    kids = Children()
    try:
        yield kids
    finally:
        kids.close()


def kill_inside(proc: subprocess.Popen[str], label: str) -> None:
    """Wait until the child reports that it is inside step `label`, then SIGKILL it."""
    line = first_line(proc)
    if line.strip() != f"HANG {label}":
        proc.kill()
        assert proc.stderr is not None
        pytest.fail(f"child did not reach step {label}: {line!r}\n{proc.stderr.read()}")
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(WAIT) == -signal.SIGKILL


def finish(proc: subprocess.Popen[str]) -> str:
    """Wait for a child that should run its workflow to the end; its DONE line."""
    line = first_line(proc)
    assert proc.wait(WAIT) == 0, proc.stderr.read() if proc.stderr else ""
    assert line.startswith("DONE "), line
    return line.strip()


def counts(engine: ce.Engine, run_id: str) -> list[tuple[str, int, int]]:
    """(status, attempts, crashes) of every entry of the run's log."""
    return [(e.status, e.attempts, e.crashes) for e in engine.history(run_id)]


def snapshot(engine: ce.Engine, run_id: str) -> list[tuple[Any, ...]]:
    """Every stored field of the run's log, to show it did not change."""
    return [
        (
            e.position,
            e.kind,
            e.name,
            e.key,
            e.text,
            e.status,
            e.attempts,
            e.crashes,
            e.started_at,
            e.finished_at,
            e.due_at,
            e.error_text,
            e._data,
        )
        for e in engine.history(run_id)
    ]


# -- killed inside step k, resumed in this process ------------------------------


@pytest.mark.sqlite_only(
    reason="takes over a SIGKILLed process's run at once by its pid; PostgreSQL waits out the lease"
)
@pytest.mark.parametrize(
    ("k", "durability"),
    [(0, "full"), (1, "full"), (3, "full"), (2, "normal")],
    ids=["first-step", "second-step", "last-step", "durability-normal"],
)
def test_sigkill_inside_a_step_resumes_from_the_log(
    tmp_path: Path, children: Children, k: int, durability: str
) -> None:
    db, ledger, n = tmp_path / "crash.db", str(tmp_path / "ledger"), 4
    child = children.run_workflow(
        db, "r", "pipeline", ledger, n, hang_in=f"s{k}", durability=durability
    )
    kill_inside(child, f"s{k}")

    engine = ce.Engine(db, durability=durability)
    # The file as the kill left it: steps before k committed, step k in flight.
    assert counts(engine, "r") == [("completed", 1, 0)] * k + [("running", 1, 0)]
    assert engine.get_run("r").status == "running"
    assert read_ledger(ledger) == [(f"s{i}", child.pid, 1) for i in range(k + 1)]

    report = engine.run_until_idle()

    assert report.finished == ["r"] and not report.stuck
    assert engine.get_run("r").result() == "start>s0>s1>s2>s3"
    me = os.getpid()
    assert read_ledger(ledger) == (
        [(f"s{i}", child.pid, 1) for i in range(k + 1)]  # completed ones: never again
        + [(f"s{k}", me, 2)]  # the interrupted one: once more
        + [(f"s{i}", me, 1) for i in range(k + 1, n)]
    )
    want = [("completed", 1, 0)] * n
    want[k] = ("completed", 2, 1)
    assert counts(engine, "r") == want
    engine.close()


@pytest.mark.sqlite_only(
    reason="takes over a SIGKILLed process's run at once by its pid; PostgreSQL waits out the lease"
)
def test_a_second_resume_runs_nothing(tmp_path: Path, children: Children) -> None:
    db, ledger = tmp_path / "crash.db", str(tmp_path / "ledger")
    kill_inside(children.run_workflow(db, "r", "pipeline", ledger, 3, hang_in="s1"), "s1")
    with ce.Engine(db) as engine:
        assert engine.get_run("r").result() == "start>s0>s1>s2"
    executed = read_ledger(ledger)

    # Another process opening the finished run replays nothing and executes nothing.
    assert finish(children.run_workflow(db, "r", "pipeline", ledger, 3)) == "DONE start>s0>s1>s2"
    assert read_ledger(ledger) == executed


# -- crash loop -----------------------------------------------------------------


def _kill_twice_in_doomed(children: Children, db: Path, ledger: str, catch: bool) -> list[int]:
    """Kill two children inside `doomed` (max_crashes=1); their pids."""
    pids = []
    for _ in range(2):
        child = children.run_workflow(db, "loop", "doomed", ledger, catch, hang_in="doomed")
        kill_inside(child, "doomed")
        pids.append(child.pid)
    return pids


@pytest.mark.sqlite_only(
    reason="takes over a SIGKILLed process's run at once by its pid; PostgreSQL waits out the lease"
)
def test_a_step_that_keeps_killing_its_process_fails_the_run_with_crashloop(
    tmp_path: Path, children: Children
) -> None:
    db, ledger = tmp_path / "crash.db", str(tmp_path / "ledger")
    first, second = _kill_twice_in_doomed(children, db, ledger, catch=False)

    with ce.Engine(db) as engine:
        assert counts(engine, "loop") == [("completed", 1, 0), ("running", 2, 1)]
        report = engine.run_until_idle()
        assert report.finished == ["loop"]
        run = engine.get_run("loop")
        assert run.status == "failed"
        with pytest.raises(ce.CrashLoop, match=r"step 'fragile' at position 1") as info:
            run.result()
        assert "2 times" in str(info.value) and "max_crashes=1" in str(info.value)
        assert counts(engine, "loop") == [("completed", 1, 0), ("failed", 2, 2)]
        assert isinstance(engine.history("loop")[1].error, ce.CrashLoop)
    # The step is not tried a third time: both executions were in the killed children.
    assert read_ledger(ledger) == [
        ("before", first, 1),
        ("doomed", first, 1),
        ("doomed", second, 2),
    ]


@pytest.mark.sqlite_only(
    reason="takes over a SIGKILLed process's run at once by its pid; PostgreSQL waits out the lease"
)
def test_a_workflow_can_catch_crashloop_and_go_on(tmp_path: Path, children: Children) -> None:
    db, ledger = tmp_path / "crash.db", str(tmp_path / "ledger")
    first, second = _kill_twice_in_doomed(children, db, ledger, catch=True)

    with ce.Engine(db) as engine:
        assert engine.get_run("loop").result() == "start>before>gave up>after"
        assert counts(engine, "loop") == [
            ("completed", 1, 0),
            ("failed", 2, 2),
            ("completed", 1, 0),
        ]
    assert read_ledger(ledger) == [
        ("before", first, 1),
        ("doomed", first, 1),
        ("doomed", second, 2),
        ("after", os.getpid(), 1),
    ]


# -- a workflow this process cannot import ------------------------------------------


@pytest.mark.sqlite_only(
    reason="takes over a SIGKILLed process's run at once by its pid; PostgreSQL waits out the lease"
)
def test_a_run_whose_workflow_is_not_importable_is_left_as_it_is(
    tmp_path: Path, children: Children
) -> None:
    db, ledger = tmp_path / "crash.db", str(tmp_path / "ledger")
    first = children.spawn(MAIN_ONLY, current().target(db), ledger, hang_in="m1")
    kill_inside(first, "m1")

    with ce.Engine(db) as engine:
        before = snapshot(engine, "main-only")
        assert [e[5] for e in before] == ["completed", "running"]
        run = engine.get_run("main-only")

        report = engine.run_until_idle()

        err = report.stuck["main-only"]
        assert isinstance(err, ce.WorkflowNotFound)
        assert "crash.main_only" in str(err)
        assert report.finished == []
        assert run.status == "running"
        assert snapshot(engine, "main-only") == before
        assert run.note is not None and "crash.main_only" in run.note
        assert "main-only" in engine.stuck()
        with pytest.raises(ce.WorkflowNotFound, match="crash.main_only"):
            run.result()
        assert snapshot(engine, "main-only") == before
    assert read_ledger(ledger) == [("m0", first.pid, 1), ("m1", first.pid, 1)]

    # A process that has the workflow (the same __main__ code) resumes the run.
    second = children.spawn(MAIN_ONLY, current().target(db), ledger)
    assert finish(second) == "DONE start>m0>m1"

    with ce.Engine(db) as engine:
        run = engine.get_run("main-only")
        assert run.status == "completed"
        assert run.result() == "start>m0>m1"
        assert run.note is None
        assert counts(engine, "main-only") == [("completed", 1, 0), ("completed", 2, 1)]
    assert read_ledger(ledger) == [
        ("m0", first.pid, 1),
        ("m1", first.pid, 1),
        ("m1", second.pid, 2),
    ]
