"""Each attempt of a step kept with its real times and how it ended (failed with its
traceback, or lost in a crash), on both stores; a failed run's stored error shows the
workflow's yield as well as the step's frames, live and after a crash and replay."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from helpers import FakeClock, first_line, reap
from stores import current

import contengine as ce
from contengine.cli.main import main
from contengine.store.sqlite.store import SQLiteStore

pytestmark = pytest.mark.both_stores

WAIT = 60.0  # a bound against hanging, never reached when things work
_NAMES = itertools.count()


class Flaky:
    """A step body that fails its first `fails` calls, moving the fake clock on in each."""

    def __init__(self, clock: FakeClock, fails: int) -> None:
        self.clock, self.fails, self.calls = clock, fails, 0

    def __call__(self) -> str:
        self.calls += 1
        self.clock.t += 5.0  # each attempt takes five (virtual) seconds
        if self.calls <= self.fails:
            raise ValueError(f"attempt_history boom {self.calls}")
        return "ok"


def _flaky_run(tmp_path: Path, fails: int, retries: int) -> tuple[ce.Engine, str, FakeClock]:
    """A run of one step that fails `fails` times (retries allowed, 10 s apart)."""
    clock = FakeClock()
    body = Flaky(clock, fails)
    n = next(_NAMES)  # registries are process-global: a name per run of this helper

    @ce.step(name=f"attempt_history.flaky{n}", retries=retries, backoff=10)
    def flaky() -> str:
        return body()

    @ce.workflow(name=f"attempt_history.wf{n}")
    def wf() -> Generator[Any, Any, str]:
        return (yield flaky())

    engine = ce.Engine(str(tmp_path / "a.db"), clock=clock)
    run = engine.start(wf, id=f"flaky-{fails}")
    # Driven to its end here (the fake clock's sleeps pass each backoff at once).
    with contextlib.suppress(ValueError):
        run.result()
    return engine, run.id, clock


def test_a_step_that_fails_twice_keeps_three_attempts_with_real_times(tmp_path: Path) -> None:
    engine, run_id, _ = _flaky_run(tmp_path, fails=2, retries=3)
    assert engine.get_run(run_id).result() == "ok"
    tries = engine.attempts(run_id, 0)
    assert [(a.number, a.outcome) for a in tries] == [
        (1, "failed"),
        (2, "failed"),
        (3, "completed"),
    ]
    # Each attempt took 5 s, the next began after the backoff (10 s, then 20 s): real
    # times, not spread evenly.
    assert [a.started_at for a in tries] == [1000.0, 1015.0, 1040.0]
    assert [a.ended_at for a in tries] == [1005.0, 1020.0, 1045.0]
    assert [a.error for a in tries] == [
        "ValueError: attempt_history boom 1",
        "ValueError: attempt_history boom 2",
        None,
    ]
    text = tries[0].error_text or ""
    assert text.startswith("Traceback") and "in __call__" in text
    entry = engine.history(run_id)[0]
    assert (entry.attempts, entry.started_at, entry.finished_at) == (3, 1000.0, 1045.0)


def test_a_first_attempt_that_succeeds_writes_no_attempt_row(tmp_path: Path) -> None:
    engine, run_id, _ = _flaky_run(tmp_path, fails=0, retries=0)
    assert engine.store.load_attempts(run_id) == []
    (only,) = engine.attempts(run_id, 0)
    assert (only.number, only.outcome, only.started_at, only.ended_at) == (
        1,
        "completed",
        1000.0,
        1005.0,
    )


def test_bad_positions_are_refused_clearly(tmp_path: Path) -> None:
    engine, run_id, _ = _flaky_run(tmp_path, fails=0, retries=0)
    with pytest.raises(ValueError, match="no log entry at position 7"):
        engine.attempts(run_id, 7)
    with pytest.raises(TypeError, match="position must be an int"):
        engine.attempts(run_id, "0")  # type: ignore[arg-type]
    with pytest.raises(ce.RunNotFound):
        engine.attempts("attempt-history-none", 0)


def test_the_last_failure_is_kept_and_the_run_error_names_the_workflow_yield(
    tmp_path: Path,
) -> None:
    engine, run_id, _ = _flaky_run(tmp_path, fails=5, retries=1)
    tries = engine.attempts(run_id, 0)
    assert [(a.number, a.outcome, a.error) for a in tries] == [
        (1, "failed", "ValueError: attempt_history boom 1"),
        (2, "failed", "ValueError: attempt_history boom 2"),
    ]
    row = engine.store.get_run(run_id)
    assert row is not None and row.status == "failed"
    text = row.error_text or ""
    # The workflow's own frame (this file, the yield's line) and the step's frames.
    assert f'File "{__file__}"' in text and "in wf" in text and "return (yield flaky())" in text
    assert "in __call__" in text and 'raise ValueError(f"attempt_history boom' in text
    # run.result() raises the exception read back (no frames of its own), noting both.
    with pytest.raises(ValueError) as caught:
        engine.get_run(run_id).result()
    notes = "".join(caught.value.__notes__)
    assert "return (yield flaky())" in notes and "in __call__" in notes


def test_a_retried_run_keeps_only_the_attempts_of_its_new_try(tmp_path: Path) -> None:
    engine, run_id, _ = _flaky_run(tmp_path, fails=4, retries=1)
    assert [a.error for a in engine.attempts(run_id, 0)] == [
        "ValueError: attempt_history boom 1",
        "ValueError: attempt_history boom 2",
    ]
    # The rewind deletes the failed step's entry and its attempt rows with it.
    with contextlib.suppress(ValueError):
        engine.retry(run_id).result()
    again = engine.attempts(run_id, 0)
    assert [a.error for a in again] == [
        "ValueError: attempt_history boom 3",
        "ValueError: attempt_history boom 4",
    ]
    # Not the first try's rows written over: the new first attempt began after the retry.
    assert again[0].started_at >= 1020.0


def test_continue_as_new_starts_its_steps_without_the_old_attempts(tmp_path: Path) -> None:
    clock = FakeClock()
    body = Flaky(clock, fails=1)  # the first call fails: only generation 0's step
    n = next(_NAMES)

    @ce.step(name=f"attempt_history.again{n}", retries=1, backoff=10)
    def again() -> str:
        return body()

    @ce.workflow(name=f"attempt_history.loop{n}")
    def loop(round_: int) -> Generator[Any, Any, Any]:
        yield again()
        return ce.continue_as_new(round_ + 1) if round_ == 0 else "done"

    engine = ce.Engine(str(tmp_path / "a.db"), clock=clock)
    assert engine.start(loop, 0, id="loop").result() == "done"
    (only,) = engine.attempts("loop", 0)  # generation 1's step: tried once
    assert (only.number, only.outcome) == (1, "completed")
    assert engine.store.load_attempts("loop") == []


def test_gc_export_import_and_backup_carry_the_attempts(tmp_path: Path) -> None:
    engine, run_id, clock = _flaky_run(tmp_path, fails=2, retries=3)
    before = engine.attempts(run_id, 0)
    data = json.loads(json.dumps(engine.export_run(run_id)))
    assert [a["outcome"] for a in data["attempts"]] == ["failed", "failed", "started"]
    other = ce.Engine(str(tmp_path / "b.db"), clock=clock)
    other.import_run(data, id="imported")
    assert other.attempts("imported", 0) == before
    engine.backup(str(tmp_path / "copy.db"))
    copy = SQLiteStore(str(tmp_path / "copy.db"))  # an SQLite file, whatever the store
    assert copy.load_attempts(run_id) == engine.store.load_attempts(run_id)
    copy.close()
    clock.t += 10_000
    assert engine.gc(60) == 1
    assert engine.store.load_attempts(run_id) == []


def test_an_export_without_attempts_imports_and_a_bad_row_is_refused(tmp_path: Path) -> None:
    engine, run_id, _ = _flaky_run(tmp_path, fails=1, retries=1)
    data = engine.export_run(run_id)
    old = {k: v for k, v in data.items() if k != "attempts"}
    engine.import_run(old, id="old-export")
    (only,) = engine.attempts("old-export", 0)[1:]
    assert only.outcome == "completed"
    data["attempts"][0]["position"] = 9
    with pytest.raises(ce.ContengineError, match="attempt row 0 .* is of no entry"):
        engine.import_run(data, id="bad-export")


# -- a real crash: a child process killed during the step ---------------------------------

FRAMES = """
import os
import re
import sys
import time

import contengine as ce


@ce.step(name="attempt_history.prepare")
def prepare() -> int:
    return 1


@ce.step(name="attempt_history.fragile", retries=0)
def fragile(n: int) -> int:
    if os.environ.get("HANG") == "1":
        print("HANG", flush=True)
        time.sleep(600)
    raise ValueError("attempt_history fragile failed")


@ce.workflow(name="attempt_history.frames")
def frames():
    n = yield prepare()
    return (yield fragile(n))  # the failing yield


if __name__ == "__main__":
    engine = ce.Engine(sys.argv[1], lease=1.0)  # a dead holder is found soon on any store
    run = engine.start(frames, id="frames")
    try:
        run.result()
    except ValueError as exc:
        print("FAILED", exc, flush=True)
"""


def _spawn(script: Path, target: str, hang: bool) -> subprocess.Popen[str]:
    env = dict(os.environ, HANG="1" if hang else "0")
    return subprocess.Popen(
        [sys.executable, str(script), target],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _crashed_then_failed(tmp_path: Path) -> tuple[ce.Engine, Path]:
    """The frames run: its process SIGKILLed inside fragile, then resumed by another
    process, where fragile fails."""
    script = tmp_path / "frames_wf.py"
    script.write_text(FRAMES)
    target = current().target(tmp_path / "frames.db")
    procs: list[subprocess.Popen[str]] = []
    try:
        first = _spawn(script, target, hang=True)
        procs.append(first)
        assert first_line(first).strip() == "HANG", first.stderr.read() if first.stderr else ""
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(WAIT) == -signal.SIGKILL
        second = _spawn(script, target, hang=False)
        procs.append(second)
        line = first_line(second)
        assert second.wait(WAIT) == 0, second.stderr.read() if second.stderr else ""
        assert line.startswith("FAILED attempt_history fragile failed"), line
    finally:
        reap(procs)
    return ce.Engine(target), script


def test_a_killed_worker_is_an_attempt_crashed_and_the_next_one_fails(tmp_path: Path) -> None:
    engine, script = _crashed_then_failed(tmp_path)
    crashed, failed = engine.attempts("frames", 1)
    assert (crashed.number, crashed.outcome, crashed.error) == (
        1,
        "crashed",
        "crashed: worker lost",
    )
    assert crashed.ended_at is None and crashed.found_at is not None
    assert crashed.started_at <= crashed.found_at <= failed.started_at
    assert (failed.number, failed.outcome) == (2, "failed")
    assert failed.error == "ValueError: attempt_history fragile failed"
    entry = engine.history("frames")[1]
    assert (entry.attempts, entry.crashes, entry.status) == (2, 1, "failed")
    # The stored error, written by the process that replayed the run after the crash:
    # the workflow's frame at the failing yield, and the step's own frames.
    row = engine.store.get_run("frames")
    assert row is not None
    text = row.error_text or ""
    yield_line = FRAMES.splitlines().index("    return (yield fragile(n))  # the failing yield")
    assert f'File "{script}", line {yield_line + 1}, in frames' in text
    raise_line = FRAMES.splitlines().index('    raise ValueError("attempt_history fragile failed")')
    assert f'File "{script}", line {raise_line + 1}, in fragile' in text


def test_show_lists_each_attempt_and_the_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine, _ = _crashed_then_failed(tmp_path)
    target = current().target(tmp_path / "frames.db")
    engine.close()
    assert main(["show", "frames", "--db", target]) in (0, 1)
    out = capsys.readouterr().out
    assert "attempt 1" in out and "crashed: worker lost" in out
    assert "attempt 2" in out and "failed: ValueError: attempt_history fragile failed" in out
    assert main(["show", "frames", "--db", target, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    history = shown["log"][1]["attempt_history"]
    assert [(a["number"], a["outcome"], a["error"]) for a in history] == [
        (1, "crashed", "crashed: worker lost"),
        (2, "failed", "ValueError: attempt_history fragile failed"),
    ]
    assert history[0]["found_at"] is not None and history[0]["ended_at"] is None
    assert shown["log"][0]["attempt_history"] == []  # tried once, and it worked
    page = tmp_path / "frames.html"
    main(["show", "frames", "--db", target, "--html", str(page)])
    html = page.read_text()
    assert 'class="try crashed"' in html and 'class="dead"' in html
    assert "attempt 1 crashed: worker lost" in html
    assert "attempt 2 failed" in html and "ValueError: attempt_history fragile failed" in html


def test_the_page_and_show_place_each_attempt_at_its_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine, run_id, _ = _flaky_run(tmp_path, fails=2, retries=3)
    target = current().target(tmp_path / "a.db")
    engine.close()
    page = tmp_path / "flaky.html"
    assert main(["show", run_id, "--db", target, "--html", str(page)]) == 0
    html = page.read_text()
    marks = re.findall(r'<circle class="try (\w+)" cx="([\d.]+)"', html)
    assert [cls for cls, _ in marks] == ["failed", "failed", "completed"]
    xs = [float(cx) for _, cx in marks]
    # Starts at 0 s, 15 s and 40 s of a 45 s run: spaced by time, not evenly.
    gaps = [xs[1] - xs[0], xs[2] - xs[1]]
    assert gaps[1] > 1.5 * gaps[0] > 0
    assert "attempt 1 failed: ValueError: attempt_history boom 1" in html
    assert "attempt 2 failed: ValueError: attempt_history boom 2" in html
    assert 'class="dead"' not in html  # no worker died
    capsys.readouterr()
    assert main(["show", run_id, "--db", target]) == 0
    out = capsys.readouterr().out
    tried = out.split("attempts:\n", 1)[1].splitlines()
    assert tried[0].strip() == "position 0:"
    assert tried[1].strip().startswith("attempt 1 failed: ValueError: attempt_history boom 1;")
    assert tried[2].strip().startswith("attempt 2 failed: ValueError: attempt_history boom 2;")
    assert tried[3].strip().startswith("attempt 3 completed; started")


def test_an_attempts_error_line_is_its_exception_not_its_messages_lastfirst_line() -> None:
    text = (
        "Traceback (most recent call last):\n"
        '  File "app.py", line 3, in step\n'
        "    raise RuntimeError(msg)\n"
        "RuntimeError: boom on two lines\n"
        "line2 </pre><b>bold</b>\n"
    )
    attempt = ce.Attempt(
        position=0, number=1, outcome="failed", started_at=0.0, ended_at=1.0, error_text=text
    )
    assert attempt.error == "RuntimeError: boom on two lines"
