"""Workers: three processes work one database file; one is killed, the others take over.

What this teaches
-----------------
* `engine.work(threads=N)` is a worker loop; any number of processes may run one on the
  same file. Each claims due runs with a lease, so no run is ever driven by two at once.
* A worker killed with SIGKILL leaves its runs leased to a dead process. The others see
  at once that the process is gone, take the runs over and rebuild them from the log: the
  steps that had completed are not run again; the one in flight runs once more.
* SIGTERM stops a worker cleanly: it claims nothing more, lets its running steps finish,
  and lets go of its leases.

Run it::

    python examples/workers.py

What to watch for in the output
-------------------------------
* Every run completes once, with the right result, although a worker died mid-way.
* The ledger (every step execution that really happened, written by the steps
  themselves) shows which worker ran what; the only steps that ran twice are the ones
  the killed worker was inside of when it died.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator
from typing import Any

import contengine as ce

RUNS = 40
LEDGER: dict[str, str] = {}


def record(what: str) -> None:
    """Append one real step execution to the ledger (shared by all processes)."""
    if "path" in LEDGER:
        with open(LEDGER["path"], "a") as ledger:
            ledger.write(f"{os.getpid()} {what}\n")


@ce.step
def fetch(image_id: str) -> int:
    """Step 1: read the image (its size, here)."""
    record(f"{image_id} fetch")
    return 1000 + int(image_id.split("-")[1])


@ce.step
def resize(image_id: str, size: int) -> int:
    """Step 2: the slow part."""
    record(f"{image_id} resize")
    time.sleep(0.3)
    return size // 4


@ce.step
def store(image_id: str, size: int) -> str:
    """Step 3: keep the thumbnail."""
    record(f"{image_id} store")
    return f"{image_id}: {size}px"


@ce.workflow(name="workers.thumbnail")
def thumbnail(image_id: str) -> Generator[Any, Any, str]:
    """Three steps per image."""
    size = yield fetch(image_id)
    small = yield resize(image_id, size)
    return (yield store(image_id, small))


def work(db: str, ledger: str) -> None:
    """The worker process: drive runs until SIGTERM."""
    LEDGER["path"] = ledger
    with ce.Engine(db) as engine:
        engine.work(threads=4, grace=10)


def wait_for_line(path: str, prefix: str, word: str) -> None:
    """Wait (at most a minute) until the ledger has a line from `prefix` naming `word`."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                if any(ln.startswith(prefix) and word in ln for ln in f.read().splitlines()):
                    return
        time.sleep(0.02)
    raise SystemExit(f"no {word!r} step from {prefix.strip()} within a minute")


def main() -> None:
    """Start the runs, three workers, kill one, and show what happened."""
    with tempfile.TemporaryDirectory() as tmp:
        db, ledger = os.path.join(tmp, "images.db"), os.path.join(tmp, "ledger.txt")
        with ce.Engine(db) as engine:
            for i in range(RUNS):
                engine.start(thumbnail, f"img-{i}", id=f"img-{i}")
        print(f"{RUNS} runs started; three worker processes start on the same file.")
        me = os.path.abspath(__file__)
        # The first worker starts alone, so that it surely holds runs when it is killed;
        # the other two join once it is inside its first slow step.
        workers = [subprocess.Popen([sys.executable, me, "--work", db, ledger])]
        try:
            wait_for_line(ledger, f"{workers[0].pid} ", "resize")
            workers += [subprocess.Popen([sys.executable, me, "--work", db, ledger]) for _ in "ab"]
            victim = workers[0]
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            print(f"worker {victim.pid} killed with SIGKILL in the middle of its steps")
            with ce.Engine(db) as engine:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    if len(engine.runs(status="completed")) == RUNS:
                        break
                    time.sleep(0.05)
                done = engine.runs(status="completed")
                print(f"{len(done)} of {RUNS} runs completed")
                print("e.g.", ", ".join(engine.get_run(f"img-{i}").result() for i in range(3)))
        finally:
            for w in workers[1:]:
                w.send_signal(signal.SIGTERM)
            codes = [w.wait(timeout=30) for w in workers[1:]]
            print(f"the other workers stopped on SIGTERM with exit codes {codes}")
        with open(ledger) as f:
            lines = [line.split(None, 1) for line in f.read().splitlines()]
        by_worker = collections.Counter(pid for pid, _ in lines)
        print("The ledger: step executions per worker process")
        for pid, n in sorted(by_worker.items()):
            tag = " (killed)" if int(pid) == victim.pid else ""
            print(f"  {pid}{tag}: {n}")
        executions = collections.Counter(what for _, what in lines)
        twice = sorted(what for what, n in executions.items() if n > 1)
        print(f"steps that ran twice: {len(twice)} {twice}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--work"]:
        work(sys.argv[2], sys.argv[3])
    else:
        main()
