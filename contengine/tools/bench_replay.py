"""`contengine bench`, replay part: replay against a floor of its own, and replay's memory.

The floor is what any replay must do at the least, written out in a few lines of
plain Python with no engine: read the same rows from the same SQLite file, check
each one's kind, name and key against what a generator yields, unpickle the
outcome and send it in. Engine and floor rounds alternate (the engine's rounds are
bench.resume_round), so the ratio moves with the interpreter's speed no more than
the two do together.

Memory is measured in a child process of its own per round (a fresh interpreter:
its resident set is not inflated by what the parent measured before): the peak
growth of the resident set while a new engine replays a long run, and, traced with
tracemalloc, what the live-generator cache holds once the run is idle against
what it counts.
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Generator
from typing import Any

from ..core.timers import sleep
from ..core.workflow import step, workflow
from ..engine.engine import Engine
from .bench_common import bump

TARGET_FLOOR_RATIO = 0.5  # replayed steps/s over the floor's
TARGET_PEAK_MB = 20.0  # resident set growth while replaying a 100,000-step run
_RUN_ID = "bench-idle"
_BITS = 32  # the SQLite log's key: (runs.num << 32) | position


class _Crash(BaseException):
    """Raised inside a step to leave its entry in flight, as a killed process would."""


class _State:
    crash = False


@step(name="contengine.bench.blob")
def blob(i: int, size: int) -> bytes:
    """A step whose result is size bytes (its position's digits, repeated)."""
    return str(i).encode().ljust(size, b".")


@step(name="contengine.bench.halt")
def halt() -> None:
    """The step the build stops at; it "crashes" while _State.crash is set."""
    if _State.crash:
        raise _Crash


@workflow(name="contengine.bench.idling")
def idling(n: int, size: int) -> Generator[Any, Any, int]:
    """n steps (results of size bytes, or counting up if size is 0), then a long sleep."""
    x = 0
    for i in range(n):
        if size:
            data = yield blob(i, size)
            x += len(data)
        else:
            x = yield bump(x)
    yield halt()
    yield sleep(3600)
    return x


def build_idling(path: str, n: int, size: int) -> None:
    """Write a run of n completed steps whose next request is left in flight."""
    _State.crash = True
    try:
        with Engine(path, durability="normal", workflows=[idling]) as engine:
            try:
                engine.run(idling, n, size, id=_RUN_ID)
            except _Crash:
                pass
            else:
                raise RuntimeError("the run to be replayed finished instead of crashing")
    finally:
        _State.crash = False


# -- the floor ------------------------------------------------------------------------


def _floor_workflow(n: int) -> Generator[tuple[str, str, str], Any, int]:
    x = 0
    for _ in range(n):
        x = yield ("step", "contengine.bench.bump", repr(x))
    return x


def floor_round(path: str, run_id: str, n: int) -> float:
    """Steps/s of the least a replay must do, on the log of run_id in the file at path:
    read n rows, check kind, name and key, unpickle each outcome into a generator."""
    start = time.perf_counter()
    conn = sqlite3.connect(path)
    try:
        (num,) = conn.execute("SELECT num FROM runs WHERE id = ?", (run_id,)).fetchone()
        rows = conn.execute(
            "SELECT kind, name, key, outcome FROM log WHERE id BETWEEN ? AND ? ORDER BY id",
            (num << _BITS, (num << _BITS) + n - 1),
        )
        gen = _floor_workflow(n)
        want = gen.send(None)
        loads = pickle.loads
        for kind, name, key, outcome in rows:
            if want[0] != kind or want[1] != name or want[2] != key:
                raise RuntimeError(f"the floor's replay diverged at {want}")
            want = gen.send(loads(memoryview(outcome)[1:]))  # past the format tag
    except StopIteration as stop:
        if stop.value != n:
            raise RuntimeError(f"the floor's replay returned {stop.value!r}") from None
    finally:
        conn.close()
    return n / (time.perf_counter() - start)


# -- memory, in a child process ------------------------------------------------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    # Linux: writing 5 to clear_refs resets VmHWM to the current resident set.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child(path: str, mode: str) -> dict[str, Any]:
    """In a fresh interpreter: replay the run in the file at path until it is idle.

    mode "rss": the resident set's peak growth over the replay (MB).
    mode "traced": with tracemalloc, what the live cache holds once the run is idle
    (MB traced before and after clearing it) against what it counts.
    """
    engine = Engine(path, durability="normal", workflows=[idling])
    try:
        out: dict[str, Any] = {}
        gc.collect()
        if mode == "rss":
            before = _status_kb("VmRSS")
            _reset_peak()
            engine.run_until_idle()
            out["peak_mb"] = (_status_kb("VmHWM") - before) / 1024
        else:
            tracemalloc.start()
            gc.collect()
            base = tracemalloc.get_traced_memory()[0]
            engine.run_until_idle()
            gc.collect()
            held = tracemalloc.get_traced_memory()[0]
            live = engine._runner.live
            out["cached_runs"] = len(live)
            out["counted_mb"] = live.bytes / 1e6
            live.clear()
            gc.collect()
            out["cache_mb"] = (held - tracemalloc.get_traced_memory()[0]) / 1e6
            out["grown_mb"] = (held - base) / 1e6
            tracemalloc.stop()
        status = engine.get_run(_RUN_ID).status
        if status != "sleeping" and status != "waiting":
            out["status"] = status
        return out
    finally:
        engine.close()


def run_child(path: str, mode: str) -> dict[str, Any]:
    """child(path, mode) in a new interpreter; its JSON answer."""
    code = (
        "import json, sys\n"
        "from contengine.tools.bench_replay import child\n"
        "print(json.dumps(child(sys.argv[1], sys.argv[2])))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, path, mode],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"the replay memory child failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]
