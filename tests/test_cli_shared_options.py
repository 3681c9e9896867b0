"""The options every command shares (--db, --json, --debug), before or after its name."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import pytest

import contengine as ce
from contengine.cli.main import main

REPO = Path(__file__).resolve().parent.parent


@ce.step
def shared_add(x: int) -> int:
    """Works."""
    return x + 1


@ce.step
def shared_broken(x: int) -> int:
    """Always fails."""
    raise ValueError(f"broken at {x}")


@ce.workflow(name="shared.ok")
def wf_ok(x: int) -> Generator[Any, Any, int]:
    """One step."""
    y: int = yield shared_add(x)
    return y


@ce.workflow(name="shared.fails")
def wf_fails(x: int) -> Generator[Any, Any, int]:
    """A step, then one that fails."""
    y: int = yield shared_add(x)
    z: int = yield shared_broken(y)
    return z


@ce.workflow(name="shared.waits")
def wf_waits() -> Generator[Any, Any, Any]:
    """Waits for the signal "go"."""
    return (yield ce.wait("go"))


def make_db(directory: Path) -> str:
    """A database with a completed run, a failed run, a waiting run and an export of the
    completed one (directory/done.json)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = str(directory / "app.db")
    with ce.Engine(path) as engine:
        engine.run(wf_ok, 1, id="done")
        with pytest.raises(ValueError):
            engine.run(wf_fails, 1, id="failed")
        engine.start(wf_waits, id="waiting")
        engine.run_until_idle()
        (directory / "done.json").write_text(json.dumps(engine.export_run("done")))
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Call the command line in-process; returns (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# Each command that takes a database: its arguments (after the name, without --db), given
# the directory of the database, and a check of the database afterwards.
Args = Callable[[Path], list[str]]
Check = Callable[[str, Path], None]


def _status(db: str, run_id: str, drive: bool = False) -> str:
    with ce.Engine(db) as engine:
        if drive:  # a cancel is delivered when the run is next driven
            engine.run_until_idle()
        return engine.get_run(run_id).status


def _nothing(db: str, directory: Path) -> None:
    pass


COMMANDS: dict[str, tuple[Args, Check]] = {
    "runs": (lambda d: [], _nothing),
    "show": (lambda d: ["done"], _nothing),
    "signal": (lambda d: ["waiting", "go", '{"ok": true}'], lambda db, d: _check(_woken(db))),
    "cancel": (
        lambda d: ["waiting"],
        lambda db, d: _check(_status(db, "waiting", drive=True) == "cancelled"),
    ),
    "gc": (lambda d: ["--older-than", "0s"], lambda db, d: _check(_gone(db, "done"))),
    "backup": (
        lambda d: [str(d / "copy.db")],
        lambda db, d: _check((d / "copy.db").is_file()),
    ),
    "retry": (lambda d: ["failed"], lambda db, d: _check(_status(db, "failed") == "pending")),
    "fork": (
        lambda d: ["done", "--at", "1", "--id", "forked"],
        lambda db, d: _check(_status(db, "forked") == "pending"),
    ),
    "export": (lambda d: ["done"], _nothing),
    "import": (
        lambda d: [str(d / "done.json"), "--id", "again"],
        lambda db, d: _check(_status(db, "again") == "completed"),
    ),
    "replay": (lambda d: [], _nothing),
}


def _check(ok: bool) -> None:
    assert ok


def _woken(db: str) -> bool:
    with ce.Engine(db) as engine:
        engine.run_until_idle()
        return engine.get_run("waiting").result() == {"ok": True}


def _gone(db: str, run_id: str) -> bool:
    with ce.Engine(db) as engine:
        return all(r.id != run_id for r in engine.runs())


def _run_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str, name: str
) -> tuple[int, str, str]:
    directory = tmp_path / where
    db = make_db(directory)
    args, check = COMMANDS[name]
    shared = ["--db", db]
    argv = [*shared, name, *args(directory)] if where == "before" else [name, *args(directory)]
    if where == "after":
        argv += shared
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    check(db, directory)
    return code, _same(out, directory), _same(err, directory)


def _same(text: str, directory: Path) -> str:
    """text with what differs from one database to the next (its directory, times and
    durations, and the widths of their columns) made the same."""
    return " ".join(re.sub(r"\d+(\.\d+)?", "N", text.replace(str(directory), "DIR")).split())


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_db_works_before_and_after_the_command_name(
    name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CONTENGINE_DB", raising=False)
    before = _run_in(tmp_path, capsys, "before", name)
    after = _run_in(tmp_path, capsys, "after", name)
    assert before == after


def test_db_before_the_name_is_not_undone_by_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = make_db(tmp_path / "given")
    monkeypatch.setenv("CONTENGINE_DB", str(tmp_path / "elsewhere.db"))
    code, out, err = run_cli(capsys, "--db", db, "runs", "--status", "completed")
    assert code == 0, err
    assert "done" in out


@pytest.mark.parametrize("where", ["before", "after"])
def test_runs_json_before_and_after_the_command_name(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = make_db(tmp_path)
    argv = ["--json", "runs", "--db", db] if where == "before" else ["runs", "--db", db, "--json"]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert sorted(r["id"] for r in json.loads(out)) == ["done", "failed", "waiting"]


@pytest.mark.parametrize("where", ["before", "after"])
def test_json_on_a_command_without_a_json_form_is_refused_with_one_line(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = make_db(tmp_path)
    argv = ["--json", "worker"] if where == "before" else ["worker", "--json"]
    code, out, err = run_cli(capsys, *argv, "--db", db)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "`worker` takes no --json: it runs until stopped" in err


@pytest.mark.parametrize("argv", [["lint", "x:y"], ["bench"]])
def test_db_on_a_command_without_a_database_is_refused_with_one_line(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for args in (["--db", "app.db", *argv], [*argv, "--db", "app.db"]):
        code, out, err = run_cli(capsys, *args)
        assert code == 2 and out == ""
        assert err.count("\n") == 1 and f"`{argv[0]}` takes no --db" in err


def test_replay_takes_the_database_as_its_argument_or_as_db(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONTENGINE_DB", raising=False)
    db = make_db(tmp_path)
    outputs = set()
    for argv in (["replay", db], ["replay", "--db", db], ["--db", db, "replay"]):
        code, out, err = run_cli(capsys, *argv, "--status", "completed")
        assert code == 0, err
        outputs.add(_same(out, tmp_path))  # the time it took differs
    assert len(outputs) == 1
    # The same file twice is no conflict; two different files are.
    assert run_cli(capsys, "replay", db, "--db", db, "--status", "completed")[0] == 0
    code, out, err = run_cli(capsys, "--db", str(tmp_path / "other.db"), "replay", db)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "two databases given" in err


def test_debug_before_or_after_the_command_name_lets_the_exception_through(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "not-a-db"
    broken.write_text("plain text")
    # Without --debug: one line; with it, before or after the name: the exception itself.
    code, _, err = run_cli(capsys, "runs", "--db", str(broken))
    assert code == 1 and err.count("\n") == 1
    for argv in (
        ["--debug", "runs", "--db", str(broken)],
        ["runs", "--db", str(broken), "--debug"],
    ):
        with pytest.raises(ce.ContengineError):
            main(argv)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="the demo needs POSIX SIGKILL")
def test_demo_takes_db_before_its_name(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("CONTENGINE_DB", None)
    proc = subprocess.run(
        [sys.executable, "-m", "contengine", "--db", str(db), "demo"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert db.is_file() and str(db) in proc.stdout
