"""ce.testing.replay and `contengine replay`: recorded runs against changed code, offline.

Runs are recorded by a separate Python process with version 1 of a module; this
process then imports another version of the same module (as a deploy would) and
replays the database without running anything.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import contengine as ce
from contengine.testing.replay import (
    DIVERGED,
    ERROR,
    MISSING,
    OK,
    add_replay_command,
    replay_main,
)

V1 = """
import contengine as ce

@ce.step(name="flows.reserve")
def reserve(order):
    return f"r-{order}"

@ce.step(name="flows.charge")
def charge(order, cents):
    if cents < 0:
        raise ValueError("negative amount")
    return f"c-{order}-{cents}"

@ce.step(name="flows.charge_card")
def charge_card(order, cents):
    return f"cc-{order}-{cents}"

@ce.step(name="flows.ship")
def ship(order):
    return f"s-{order}"

@ce.step(name="flows.notify")
def notify(order):
    return None

@ce.workflow
def checkout(order, cents):
    r = yield reserve(order)
    c = yield charge(order, cents)
    yield ce.wait("approved")
    s = yield ship(order)
    return [r, c, s]
"""

# Each version rewrites the body of checkout in V1.
CHANGES: dict[str, tuple[str, str]] = {
    "reorder": (
        "    r = yield reserve(order)\n    c = yield charge(order, cents)\n",
        "    c = yield charge(order, cents)\n    r = yield reserve(order)\n",
    ),
    "rename": ("c = yield charge(order, cents)", "c = yield charge_card(order, cents)"),
    "args": ("c = yield charge(order, cents)", "c = yield charge(order, cents * 100)"),
    "raises": ("c = yield charge(order, cents)", 'c = {}["missing"]'),
    "middle": (
        'yield ce.wait("approved")\n',
        'yield ce.wait("approved")\n    yield notify(order)\n',
    ),
    "end": ("    return [r, c, s]", "    yield notify(order)\n    return [r, c, s]"),
}

RECORD = """
import sys
import contengine as ce
import {module} as flows

with ce.Engine(sys.argv[1], clock=ce.testing.VirtualClock()) as engine:
    engine.start(flows.checkout, "o-1", 500, id="o-1")
    engine.signal("o-1", "approved", True)
    engine.start(flows.checkout, "o-2", 700, id="o-2")
    engine.start(flows.checkout, "o-3", -1, id="o-3")
    engine.run_until_idle()
    assert [engine.get_run(i).status for i in ("o-1", "o-2", "o-3")] == [
        "completed", "waiting", "failed"
    ]
"""

Recorded = tuple[str, Path]  # the module name and the database it was recorded into


def version(change: str | None) -> str:
    """The module source with one change applied (None: unchanged)."""
    if change is None:
        return V1
    old, new = CHANGES[change]
    assert old in V1
    return V1.replace(old, new)


def write_module(directory: Path, module: str, source: str) -> Path:
    """Write module.py into directory (made if need be)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{module}.py"
    path.write_text(textwrap.dedent(source))
    return path


def record(tmp: Path, module: str, source: str = V1) -> Path:
    """Record o-1 (completed), o-2 (waiting) and o-3 (failed) with V1, in another process."""
    write_module(tmp / "v1", module, source)
    db = tmp / "app.db"
    subprocess.run(
        [sys.executable, "-c", RECORD.format(module=module), str(db)],
        check=True,
        cwd=tmp / "v1",
        env={"PYTHONPATH": str(tmp / "v1")},
        timeout=60,
    )
    return db


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """A database recorded once for the whole module, with a module name of its own."""
    module = f"replay_flows_{uuid.uuid4().hex[:8]}"
    return module, record(tmp_path_factory.mktemp("recorded"), module)


@pytest.fixture
def deploy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorded: Recorded
) -> Callable[[str | None], ModuleType]:
    """deploy(change): import a version of the recorded module in this process."""
    module = recorded[0]

    def load(change: str | None) -> ModuleType:
        directory = tmp_path / (change or "same")
        write_module(directory, module, version(change))
        monkeypatch.syspath_prepend(str(directory))
        monkeypatch.delitem(sys.modules, module, raising=False)
        return importlib.import_module(module)

    return load


@pytest.fixture
def db(recorded: Recorded, tmp_path: Path) -> Path:
    """A copy of the recorded database for one test."""
    copy = tmp_path / "copy.db"
    shutil.copyfile(recorded[1], copy)
    return copy


def outcomes(report: ce.testing.ReplayReport) -> dict[str, str]:
    """Run id -> ok/diverged/missing/error."""
    return {r.run_id: r.outcome for r in report.runs}


# -- the API -----------------------------------------------------------------------


def test_unchanged_code_replays_every_run(deploy: Callable[..., ModuleType], db: Path) -> None:
    deploy(None)
    report = ce.testing.replay(db)
    assert outcomes(report) == {"o-1": OK, "o-2": OK, "o-3": OK}
    assert report.ok and report.broken == []
    # o-1 replayed all four logged outcomes, o-2 stopped at its wait (in flight).
    assert {r.run_id: r.replayed for r in report.runs} == {"o-1": 4, "o-2": 2, "o-3": 2}
    assert "3 runs" in str(report) and "3 ok" in str(report)
    assert ce.testing.assert_replays(db).ok


@pytest.mark.parametrize(
    ("change", "position", "removed", "added"),
    [
        ("reorder", 0, "step flows.reserve('{o}')", "step flows.charge('{o}', {c})"),
        ("rename", 1, "step flows.charge('{o}', {c})", "step flows.charge_card('{o}', {c})"),
        ("args", 1, "step flows.charge('{o}', {c})", "step flows.charge('{o}', {c}00)"),
        ("raises", 1, "step flows.charge('{o}', {c})", "(nothing: the workflow ended here)"),
    ],
)
def test_changed_code_is_reported_with_a_diff(
    deploy: Callable[..., ModuleType],
    db: Path,
    change: str,
    position: int,
    removed: str,
    added: str,
) -> None:
    deploy(change)
    report = ce.testing.replay(db)
    assert not report.ok
    assert outcomes(report) == {"o-1": DIVERGED, "o-2": DIVERGED, "o-3": DIVERGED}
    for run, cents in (("o-1", 500), ("o-2", 700)):
        broken = next(r for r in report.broken if r.run_id == run)
        assert broken.position == position
        assert f"- {position}  {removed.format(o=run, c=cents)}" in broken.diff
        assert f"+ {position}  {added.format(o=run, c=cents)}" in broken.diff
        assert f"diverged from its log at position {position}" in broken.message
        assert str(broken) in str(report)
    if change == "raises":
        assert report.runs[0].cause == "KeyError: 'missing'"
        assert "the workflow raised KeyError: 'missing'" in str(report)
    with pytest.raises(AssertionError) as failed:
        ce.testing.assert_replays(db)
    assert "3 broken (3 diverged)" in str(failed.value)
    assert "- 1" in str(failed.value) or "- 0" in str(failed.value)


def test_a_step_added_where_runs_wait_breaks_only_runs_past_it(
    deploy: Callable[..., ModuleType], db: Path
) -> None:
    deploy("middle")
    report = ce.testing.replay(db)
    # o-1 went on past the wait (ship at 3); o-2 waits there and would take the new step
    # live; o-3 failed before reaching it.
    assert outcomes(report) == {"o-1": DIVERGED, "o-2": OK, "o-3": OK}
    assert "+ 3  step flows.notify('o-1')" in report.broken[0].diff
    assert ce.testing.replay(db, status="unfinished").ok
    assert outcomes(ce.testing.replay(db, status=["waiting", "failed"])) == {"o-2": OK, "o-3": OK}


def test_a_step_added_after_the_end_breaks_nothing(
    deploy: Callable[..., ModuleType], db: Path
) -> None:
    deploy("end")
    assert outcomes(ce.testing.replay(db)) == {"o-1": OK, "o-2": OK, "o-3": OK}


def test_run_filter_and_workflows_given_win(
    deploy: Callable[..., ModuleType], db: Path, recorded: Recorded
) -> None:
    deploy("rename")
    assert outcomes(ce.testing.replay(db, runs=["o-2"])) == {"o-2": DIVERGED}
    with pytest.raises(ce.RunNotFound):
        ce.testing.replay(db, runs=["nope"])
    with pytest.raises(ValueError, match="status must be one of"):
        ce.testing.replay(db, status="asleep")
    # A workflow given to replay() is used in place of the registered one of that name.
    # Under the module's own name: its steps are the deployed module's, in another version.
    namespace: dict[str, Any] = {"__name__": recorded[0]}
    exec(compile(V1, "v1", "exec"), namespace)
    fixed = ce.Workflow(namespace["checkout"].fn, f"{recorded[0]}.checkout")
    assert outcomes(ce.testing.replay(db, workflows=[fixed])) == {"o-1": OK, "o-2": OK, "o-3": OK}


def digest(directory: Path, name: str) -> dict[str, str]:
    """Hashes of the database file and its companions (-wal, -shm) in directory."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in directory.iterdir()
        if p.name.startswith(name)
    }


def test_the_database_is_never_written(tmp_path: Path, deploy: Callable[..., ModuleType]) -> None:
    flows = deploy(None)
    live = tmp_path / "live"
    live.mkdir()
    path = live / "app.db"
    engine = ce.Engine(path, clock=ce.testing.VirtualClock())
    try:
        engine.start(flows.checkout, "o-9", 1, id="o-9")
        engine.run_until_idle()
        # The latest commits are only in the -wal file while the engine holds it open.
        assert Path(f"{path}-wal").stat().st_size > 0
        before = digest(live, "app.db")
        report = ce.testing.replay(path)
        assert outcomes(report) == {"o-9": OK} and report.runs[0].replayed == 2
        assert digest(live, "app.db") == before
        # The files as a process that died (or a copy of production's) leaves them: a
        # -wal with commits not yet in the main file. Opening it directly and closing
        # would write them into the main file; replay leaves both files as they are.
        left = tmp_path / "left"
        left.mkdir()
        for suffix in ("", "-wal"):
            shutil.copyfile(f"{path}{suffix}", left / f"app.db{suffix}")
        engine.signal("o-9", "approved")  # the engine's file still works as it was
        engine.run_until_idle()
        assert engine.get_run("o-9").status == "completed"
    finally:
        engine.close()
    before = digest(left, "app.db")
    assert set(before) == {"app.db", "app.db-wal"}
    report = ce.testing.replay(left / "app.db")
    assert outcomes(report) == {"o-9": OK} and report.runs[0].status == "waiting"
    assert digest(left, "app.db") == before


def test_a_missing_workflow_is_reported_and_found_by_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"replay_gone_{uuid.uuid4().hex[:8]}"
    # Step names of its own: this process may have imported the flows module already.
    db = record(tmp_path, module, V1.replace('name="flows.', 'name="gone.'))
    report = ce.testing.replay(db)
    assert outcomes(report) == {"o-1": MISSING, "o-2": MISSING, "o-3": MISSING}
    assert f"{module}:checkout" in report.broken[0].message
    assert "workflow missing" in str(report) and "3 with the workflow missing" in str(report)
    # Importable under its recorded module:qualname, it is found as the engine finds it.
    monkeypatch.syspath_prepend(str(tmp_path / "v1"))
    assert ce.testing.replay(db).ok


def test_signature_change_and_bad_files(
    deploy: Callable[..., ModuleType], db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flows = deploy(None)
    # A signature the recorded arguments do not fit.
    monkeypatch.setattr(flows.checkout, "fn", lambda order: iter(()))
    report = ce.testing.replay(db, runs=["o-1"])
    assert outcomes(report) == {"o-1": ERROR}
    assert "no longer fit" in report.runs[0].message
    with pytest.raises(FileNotFoundError):
        ce.testing.replay(tmp_path / "none.db")
    text = tmp_path / "notes.txt"
    text.write_text("not a database")
    with pytest.raises(ce.DatabaseError):
        ce.testing.replay(text)
    assert text.read_text() == "not a database"


# -- the command line ------------------------------------------------------------------


def cli(*argv: str) -> int:
    """Run `contengine replay ...` through the replay command's own parser."""
    parser = argparse.ArgumentParser(prog="contengine")
    add_replay_command(parser.add_subparsers(dest="command"))
    return replay_main(parser.parse_args(["replay", *argv]))


def test_cli_exit_codes_and_output(
    recorded: Recorded,
    db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    module = recorded[0]
    # --import finds modules in the current directory, as `python -m` would.
    for change, code in ((None, 0), ("rename", 1)):
        directory = tmp_path / (change or "same")
        write_module(directory, module, version(change))
        monkeypatch.chdir(directory)
        monkeypatch.delitem(sys.modules, module, raising=False)
        # By default the unfinished runs (o-2 waits), those a deploy would resume.
        assert cli(str(db), "--import", module) == code
        out, err = capsys.readouterr()
        assert err == ""  # no progress line: stderr is not a terminal
        assert "replayed 1 run " in out
        if code == 0:
            assert "1 ok" in out and "broken" not in out
        else:
            assert "1 broken" in out
            assert "run 'o-2'" in out and "+ 1  step flows.charge_card('o-2', 700)" in out
        # --all: the finished runs too.
        assert cli(str(db), "--import", module, "--all") == code
        out = capsys.readouterr().out
        assert "replayed 3 runs " in out and ("3 ok" if code == 0 else "3 broken") in out
    assert cli(str(db), "--import", module, "--status", "failed", "--run", "o-3") == 1
    assert "replayed 1 run " in capsys.readouterr().out
    assert cli(str(db), "--import", module, "--run", "o-1") == 1  # named: whatever its status
    assert "run 'o-1'" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ((), "no database given"),
        (("missing.db",), "no database at"),
        (("DB", "--import", "no_such_module_here"), "--import no_such_module_here"),
        (("DB", "--status", "asleep"), "status must be one of"),
        (("DB", "--run", "nope"), "no run with id 'nope'"),
        (("notes.txt",), "not an SQLite database"),
        (("DB", "--all", "--run", "o-1"), "--all replays every run"),
        (("DB", "--all", "--status", "failed"), "--all replays every run"),
    ],
)
def test_cli_bad_input_exits_2(
    argv: tuple[str, ...],
    message: str,
    db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("CONTENGINE_DB", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("plain text")
    argv = tuple(str(db) if a == "DB" else a for a in argv)
    assert cli(*argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("contengine: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_cli_db_from_environment_and_empty_selection(
    db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CONTENGINE_DB", str(db))
    assert cli("--status", "cancelled") == 0
    assert "no runs to replay" in capsys.readouterr().out


def test_cli_with_no_unfinished_run_says_how_to_replay_the_finished_ones(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    done = tmp_path / "done.db"
    shutil.copy(db, done)
    with sqlite3.connect(done) as conn:  # the one unfinished run, marked finished
        conn.execute("UPDATE runs SET status = 'cancelled', finished_at = 1 WHERE id = 'o-2'")
    conn.close()
    assert cli(str(done)) == 0
    out = capsys.readouterr().out
    assert out.strip() == (
        f"no unfinished runs to replay in {done} (--all replays finished runs too)"
    )
