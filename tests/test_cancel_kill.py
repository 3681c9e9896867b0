"""A cancel raised at the running step's yield survives a real crash: the process
driving the run is killed with SIGKILL in the cleanup, and the worker that takes
the run over replays the cancel at the same yield and runs the cleanup to its end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cancel_child as cc
import pytest
from helpers import wait_until
from stores import current
from worker_child import read_lines

import contengine as ce

pytestmark = [
    pytest.mark.both_stores,
    pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals"),
]

TESTS = Path(__file__).resolve().parent
CHILD = "import worker_child; worker_child.main()"
WAIT = 60.0  # seconds any one thing may take before the test gives up


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Worker processes started by the test, killed at teardown whatever happened."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def worker(procs: list[subprocess.Popen[bytes]], db: Path, threads: int) -> None:
    """Start a worker process on db (lease 1 s: a killed one's runs are taken soon)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH")) if p)
    procs.append(
        subprocess.Popen(
            [sys.executable, "-c", CHILD, current().target(db), str(threads), "1.0", "5.0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
    )


@pytest.mark.parametrize("threads", [1, 4])
def test_a_cleanup_killed_after_a_cancel_runs_once_the_run_is_taken_over(
    tmp_path: Path, spawn: list[subprocess.Popen[bytes]], threads: int
) -> None:
    db, marks, go = tmp_path / "k.db", tmp_path / "marks", tmp_path / "go"
    with ce.Engine(db) as engine:
        engine.start(cc.try_finally, str(marks), str(go), id="r")
    worker(spawn, db, threads)
    first = spawn[0]
    assert wait_until(lambda: read_lines(str(marks)), timeout=WAIT), "long step never began"

    # Another process cancels the run while its step runs; then the step ends.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-m", "contengine", "cancel", "r", "--db", current().target(db)],
        capture_output=True, text=True, env=env, timeout=WAIT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    go.touch()

    # The cleanup begins in the first worker, which is killed there.
    assert wait_until(lambda: len(read_lines(str(marks))) == 2, timeout=WAIT), read_lines(
        str(marks)
    )
    first.send_signal(signal.SIGKILL)
    first.wait()
    worker(spawn, db, threads)
    with ce.Engine(db) as engine:
        assert wait_until(lambda: engine.get_run("r").status == "cancelled", timeout=WAIT)
        log = [
            (e.name, e.status, type(e.error).__name__ if e.status == "failed" else e.value)
            for e in engine.history("r")
        ]
        with pytest.raises(ce.Cancelled):
            engine.get_run("r").result()
    assert log == [("kc.long", "failed", "Cancelled"), ("kc.cleanup", "completed", "cleaned")]
    lines = read_lines(str(marks))
    assert [line[0] for line in lines] == ["long", "cleanup", "cleanup"]
    assert lines[1][1] == str(first.pid) and lines[2][1] == str(spawn[1].pid)
    assert [line[2] for line in lines] == ["1", "1", "2"]
