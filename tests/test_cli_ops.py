"""The operator commands `signal`, `cancel`, `gc`, `backup` and `runs --json`, in-process."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

import contengine as ce
from contengine.cli.common import parse_duration
from contengine.cli.main import CommandError, main
from contengine.testing import VirtualClock

DAY = 86400.0
STOP = threading.Event()  # ends ops.counter's loop
TICKS = [0]  # steps ops_tick has executed, across engines


@ce.step
def ops_tick(n: int) -> bool:
    """One step of the counter; True once the test says stop."""
    TICKS[0] += 1
    return STOP.is_set()


@ce.step
def ops_boom() -> None:
    """A step's own failure."""
    raise ValueError("no")


@ce.workflow(name="ops.approve")
def wf_approve(order: str) -> Generator[Any, Any, dict[str, Any]]:
    """Waits for the signal "approved" and returns the order with its payload."""
    payload = yield ce.wait("approved")
    yield ce.publish("state", "approved")
    return {"order": order, "payload": payload}


@ce.workflow(name="ops.done")
def wf_done(n: int) -> Generator[Any, Any, int]:
    """Finishes at once with a logged step; returns n."""
    yield ops_tick(n)
    return n


@ce.workflow(name="ops.fails")
def wf_fails() -> Generator[Any, Any, None]:
    """Fails with its step's exception."""
    yield ops_boom()


@ce.workflow(name="ops.parent")
def wf_parent() -> Generator[Any, Any, Any]:
    """Starts a child without waiting, then waits for a signal before joining it."""
    handle = yield ce.start_child(wf_done, 7)
    yield ce.wait("go")
    return (yield handle)


@ce.workflow(name="ops.counter")
def wf_counter() -> Generator[Any, Any, int]:
    """Commits one step after another until STOP is set; returns how many said go on."""
    n = 0
    while not (yield ops_tick(n)):
        n += 1
    return n


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("CONTENGINE_DB", raising=False)
    monkeypatch.delenv("CONTENGINE_SECRET", raising=False)
    STOP.clear()
    TICKS[0] = 0
    yield
    STOP.set()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Call the command line in-process; returns (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    """The single stderr line of a failed command (no traceback)."""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("contengine: "), err
    return lines[0]


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A database with a waiting run ("w"), a completed one ("done") and a failed one."""
    path = str(tmp_path / "ops.db")
    with ce.Engine(path, durability="normal") as engine:
        engine.start(wf_approve, "o-1", id="w")
        engine.run(wf_done, 1, id="done")
        with pytest.raises(ValueError):
            engine.run(wf_fails, id="failed")
        engine.run_until_idle()
        assert engine.get_run("w").status == "waiting"
    return path


# -- signal -------------------------------------------------------------------------------


def test_signal_delivers_a_json_payload_that_a_later_drive_takes(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(
        capsys, "signal", "w", "approved", '{"ok": true, "n": [1, 2]}', "--db", db
    )
    assert code == 0 and err == ""
    assert "'approved'" in out and "'w'" in out
    with ce.Engine(db) as engine:
        assert engine.run_until_idle().finished == ["w"]
        assert engine.get_run("w").result() == {
            "order": "o-1",
            "payload": {"ok": True, "n": [1, 2]},
        }


def test_signal_with_bad_json_is_a_usage_error_and_sends_nothing(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "signal", "w", "approved", "{ok: yes}", "--db", db)
    assert code == 2 and out == ""
    assert "JSON" in one_line_error(err) and "{ok: yes}" in err
    code, out, err = run_cli(capsys, "signal", "w", "", "1", "--db", db)
    assert code == 2 and out == "" and "name" in one_line_error(err)
    with ce.Engine(db) as engine:
        assert engine.store.peek_signal("w", "approved") is None
        engine.run_until_idle()
        assert engine.get_run("w").status == "waiting"


def test_signal_to_an_unknown_or_finished_run_fails_in_one_line(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "signal", "nope", "approved", "1", "--db", db)
    assert code == 1 and out == ""
    assert "'nope'" in one_line_error(err)
    code, out, err = run_cli(capsys, "signal", "done", "approved", "1", "--db", db)
    assert code == 1 and out == ""
    assert "completed" in one_line_error(err) and "not sent" in err


def test_signal_to_a_signed_database_uses_the_secret_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "signed.db")
    with ce.Engine(path, secret=b"k3y") as engine:
        engine.start(wf_approve, "o-2", id="w")
        engine.run_until_idle()
    monkeypatch.setenv("CONTENGINE_SECRET", "k3y")
    monkeypatch.setenv("CONTENGINE_DB", path)
    assert run_cli(capsys, "signal", "w", "approved", '"yes"')[0] == 0
    with ce.Engine(path, secret=b"k3y") as engine:
        assert engine.run_until_idle().stuck == {}
        assert engine.get_run("w").result() == {"order": "o-2", "payload": "yes"}


# -- cancel -------------------------------------------------------------------------------


def test_cancel_cancels_a_waiting_run_and_says_so(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "cancel", "w", "--db", db)
    assert code == 0 and err == "" and out.startswith("cancelled run 'w'")
    with ce.Engine(db) as engine:
        engine.run_until_idle()
        assert engine.get_run("w").status == "cancelled"
        with pytest.raises(ce.Cancelled):
            engine.get_run("w").result()
    code, out, err = run_cli(capsys, "cancel", "w", "--db", db)
    assert code == 1 and out == ""
    assert "already finished (cancelled)" in one_line_error(err)


def test_cancel_of_a_finished_run_changes_nothing_and_of_an_unknown_one_fails(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "cancel", "done", "--db", db)
    assert code == 1 and out == ""
    assert "already finished (completed); nothing changed" in one_line_error(err)
    with ce.Engine(db) as engine:
        assert engine.get_run("done").result() == 1
    code, out, err = run_cli(capsys, "cancel", "nope", "--db", db)
    assert code == 1 and out == "" and "'nope'" in one_line_error(err)


# -- gc -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 30 * DAY), ("12h", 43200.0), ("90m", 5400.0), ("45s", 45.0), ("1.5h", 5400.0),
     ("0d", 0.0), (" 2d ", 2 * DAY)],
)  # fmt: skip
def test_parse_duration_reads_s_m_h_d(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "-5d", "5w", "1 day", "3dd", "nan", "30", "1.5"])
def test_parse_duration_refuses_anything_else_as_a_usage_error(text: str) -> None:
    with pytest.raises(CommandError) as info:
        parse_duration(text)
    assert info.value.code == 2 and repr(text) in str(info.value)


def _history(engine: ce.Engine, run_id: str) -> list[tuple[int, str, str, Any]]:
    return [(e.position, e.name, e.status, e.value) for e in engine.history(run_id)]


def test_gc_deletes_only_runs_that_finished_long_ago(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "gc.db")
    # Forty days ago, on a clock of its own: three runs finish, two are left unfinished.
    with ce.Engine(path, durability="normal", clock=VirtualClock(time.time() - 40 * DAY)) as old:
        old.run(wf_done, 1, id="old-done")
        with pytest.raises(ValueError):
            old.run(wf_fails, id="old-failed")
        old.start(wf_approve, "o-3", id="old-cancelled")
        old.start(wf_approve, "o-4", id="old-waiting")
        old.start(wf_parent, id="old-parent")  # its child "old-parent/0" finishes, it waits
        old.run_until_idle()
        old.cancel("old-cancelled")
        old.run_until_idle()
    with ce.Engine(path, durability="normal") as engine:
        engine.run(wf_done, 2, id="new-done")
        kept = {"old-waiting", "old-parent", "old-parent/0", "new-done"}
        statuses = {r.id: r.status for r in engine.runs()}
        assert statuses["old-parent/0"] == "completed" and statuses["old-parent"] == "waiting"
        before = {run_id: _history(engine, run_id) for run_id in kept}

    code, out, err = run_cli(capsys, "gc", "--older-than", "30d", "--dry-run", "--db", path)
    assert code == 0 and err == ""
    assert out.strip() == "would delete 3 finished runs (--dry-run: nothing was deleted)"
    with ce.Engine(path) as engine:
        assert len(engine.runs()) == len(kept) + 3  # the dry run deleted nothing
        assert engine.gc(30 * DAY, dry_run=True) == 3
    code, out, err = run_cli(capsys, "gc", "--older-than", "30d", "--db", path)
    assert code == 0 and err == "" and out.strip() == "deleted 3 finished runs"

    with ce.Engine(path) as engine:
        assert {r.id for r in engine.runs()} == kept
        assert {run_id: _history(engine, run_id) for run_id in kept} == before
        # The kept runs carry on: the parent still finds its child's result.
        engine.signal("old-parent", "go")
        engine.signal("old-waiting", "approved", 1)
        engine.run_until_idle()
        assert engine.get_run("old-parent").result() == 7
        assert engine.published("old-waiting") == {"state": "approved"}
    # Now that its parent has finished, the old child may go; the young parent stays.
    assert run_cli(capsys, "gc", "--older-than", "30d", "--db", path)[1].strip() == (
        "deleted 1 finished run"
    )
    with ce.Engine(path) as engine:
        assert {r.id for r in engine.runs()} == {"old-waiting", "old-parent", "new-done"}


@pytest.mark.parametrize("age", ["2w", "30", "0"])
def test_gc_with_a_bad_age_is_a_usage_error_and_deletes_nothing(
    db: str, capsys: pytest.CaptureFixture[str], age: str
) -> None:
    """A bare number too: `--older-than 30` meant as days must not delete every run
    older than 30 seconds."""
    for dry in ([], ["--dry-run"]):
        code, out, err = run_cli(capsys, "gc", "--older-than", age, *dry, "--db", db)
        line = one_line_error(err)
        assert code == 2 and out == "" and repr(age) in line
        assert "needs a number with a unit s, m, h or d" in line
    with ce.Engine(db) as engine:
        assert len(engine.runs()) == 3


def test_gc_dry_run_of_an_age_too_large_is_a_usage_error(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(
        capsys, "gc", "--older-than", "1" + "0" * 400 + "d", "--dry-run", "--db", db
    )
    assert code == 2 and out == "" and "too large" in one_line_error(err)


def test_engine_gc_counts_across_batches_and_refuses_a_negative_age(tmp_path: Path) -> None:
    clock = VirtualClock()
    with ce.Engine(tmp_path / "many.db", durability="normal", clock=clock) as engine:
        for i in range(ce.engine.engine.GC_BATCH + 3):
            engine.start(wf_done, i, id=f"r{i}")
        engine.run_until_idle()
        clock.advance(10)
        engine.start(wf_approve, "o", id="young")
        with pytest.raises(ValueError, match="older_than_seconds"):
            engine.gc(-1)
        assert engine.gc(5) == ce.engine.engine.GC_BATCH + 3
        assert [r.id for r in engine.runs()] == ["young"]


# -- backup -------------------------------------------------------------------------------


def test_backup_taken_while_another_thread_commits_is_a_consistent_working_copy(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = str(tmp_path / "copy.db")
    results: list[int] = []

    def write() -> None:
        with ce.Engine(db, durability="normal") as engine:
            results.append(engine.run(wf_counter, id="c"))

    writer = threading.Thread(target=write)
    writer.start()
    try:
        # A bound against hanging, not a measure: the waits end as soon as the
        # ticks are there, however slow a loaded machine makes them.
        deadline = time.monotonic() + 120
        while TICKS[0] < 30 and time.monotonic() < deadline:
            time.sleep(0.005)
        at_backup = TICKS[0]
        code, out, err = run_cli(capsys, "backup", dest, "--db", db)
        assert code == 0 and err == "" and dest in out
        # The writer was not held up: it went on committing after the copy.
        while TICKS[0] < at_backup + 30 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert TICKS[0] >= at_backup + 30
    finally:
        STOP.set()
        writer.join(10)
    assert results and results[0] >= at_backup + 30

    with ce.Engine(db) as source, ce.Engine(dest) as copy:
        assert [(r.id, r.status) for r in copy.runs() if r.id != "c"] == [
            (r.id, r.status) for r in source.runs() if r.id != "c"
        ]
        for run_id in ("w", "done", "failed"):
            assert _history(copy, run_id) == _history(source, run_id)
        # The counter's log is a prefix of the source's: every step but the one in
        # flight completed, positions without a gap.
        copied = _history(copy, "c")
        assert len(copied) >= 30 and copied[:-1] == _history(source, "c")[: len(copied) - 1]
        assert [e[2] for e in copied] == ["completed"] * (len(copied) - 1) + ["running"]
        # The copy is a working database: recovery re-runs the step in flight and ends.
        copy.run_until_idle()
        assert copy.get_run("c").result() == len(copied) - 1


def test_backup_refuses_to_overwrite_an_existing_file(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "exists.db"
    dest.write_bytes(b"keep me")
    code, out, err = run_cli(capsys, "backup", str(dest), "--db", db)
    assert code == 1 and out == ""
    assert "already exists" in one_line_error(err)
    assert dest.read_bytes() == b"keep me"


def test_backup_of_an_in_memory_engine_opens_as_a_file(tmp_path: Path) -> None:
    dest = tmp_path / "mem.db"
    with ce.Engine() as engine:
        engine.run(wf_done, 5, id="m")
        engine.backup(dest)
    with ce.Engine(dest) as copy:
        assert copy.get_run("m").result() == 5
        assert [(e.name, e.status) for e in copy.history("m")] == [("ops_tick", "completed")]


# -- runs --json and the database argument ---------------------------------------------


def test_runs_json_is_a_list_scripts_can_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "json.db")
    with ce.Engine(path, durability="normal") as engine:
        engine.start(wf_parent, id="p")
        engine.run(wf_done, 3, id="done")
        engine.run_until_idle()
    code, out, err = run_cli(capsys, "runs", "--json", "--db", path)
    assert code == 0 and err == ""
    runs = {r["id"]: r for r in json.loads(out)}
    assert set(runs) == {"p", "p/0", "done"}
    fields = {"id", "workflow", "status", "created_at", "finished_at", "parent_id", "forked_from"}
    fields |= {"note", "tags"}
    assert all(set(r) == fields for r in runs.values())
    assert runs["p"]["status"] == "waiting" and runs["p"]["finished_at"] is None
    assert runs["p/0"]["parent_id"] == "p" and runs["p/0"]["workflow"] == "ops.done"
    done = runs["done"]
    assert done["status"] == "completed" and done["created_at"] <= done["finished_at"]
    _, out, _ = run_cli(capsys, "runs", "--json", "--status", "failed", "--db", path)
    assert json.loads(out) == []


@pytest.mark.parametrize(
    "argv",
    [["signal", "w", "approved", "1"], ["cancel", "w"], ["gc", "--older-than", "1d"],
     ["backup", "x.db"]],
)  # fmt: skip
def test_every_command_needs_an_existing_database(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == "" and "--db" in one_line_error(err)
    missing = tmp_path / "typo.db"
    code, out, err = run_cli(capsys, *argv, "--db", str(missing))
    assert code == 1 and out == "" and str(missing) in one_line_error(err)
    assert not missing.exists()
