"""`--json` on every command that reports something: one JSON document on stdout with the
documented keys, before or after the command's name; errors still one line on stderr with
their exit codes; worker, serve and demo refuse it with their reason. On both stores."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import pytest
from stores import current

import contengine as ce
from contengine.cli.main import JSON_COMMANDS, NO_JSON, build_parser, main

pytestmark = pytest.mark.both_stores


@ce.step(name="cli_json.add")
def cli_json_add(x: int) -> int:
    """Adds one."""
    return x + 1


@ce.step(name="cli_json.broken")
def cli_json_broken(x: int) -> int:
    """Always fails."""
    raise ValueError(f"broken at {x}")


@ce.workflow(name="cli_json.ok")
def wf_ok(x: int) -> Generator[Any, Any, int]:
    """One step."""
    y: int = yield cli_json_add(x)
    return y


@ce.workflow(name="cli_json.fails")
def wf_fails(x: int) -> Generator[Any, Any, int]:
    """A step, then one that fails."""
    y: int = yield cli_json_add(x)
    z: int = yield cli_json_broken(y)
    return z


@ce.workflow(name="cli_json.waits")
def wf_waits() -> Generator[Any, Any, Any]:
    """Waits for the signal "go"."""
    return (yield ce.wait("go"))


@ce.workflow(name="cli_json.gives_a_set")
def wf_gives_a_set() -> Generator[Any, Any, set[int]]:
    """Returns what JSON cannot hold."""
    yield cli_json_add(0)
    return {1, 2}


CHANGED = {"on": False}


@ce.workflow(name="cli_json.changes")
def wf_changes() -> Generator[Any, Any, Any]:
    """Waits for "go"; once CHANGED is on, it sleeps first instead (a deploy's change)."""
    if CHANGED["on"]:
        yield ce.sleep(1)
    return (yield ce.wait("go"))


LINTED = """
import time

import contengine as ce


@ce.workflow(name="cli_json_lint.reads_the_clock")
def reads_the_clock():
    started = time.time()
    yield ce.sleep(1)
    return started
"""


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Call the command line in-process; returns (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs done (completed: 2), failed (at position 1), waiting, a_set (completed: {1, 2});
    tmp_path/done.json: the export of done."""
    monkeypatch.delenv("CONTENGINE_DB", raising=False)
    path = tmp_path / "app.db"
    with ce.Engine(path) as engine:
        engine.run(wf_ok, 1, id="done")
        with pytest.raises(ValueError):
            engine.run(wf_fails, 1, id="failed")
        engine.run(wf_gives_a_set, id="a_set")
        engine.start(wf_waits, id="waiting")
        engine.run_until_idle()
        (tmp_path / "done.json").write_text(json.dumps(engine.export_run("done")))
    return current().target(path)


def status(db: str, run_id: str) -> str:
    with ce.Engine(db) as engine:
        return engine.get_run(run_id).status


def cancel_asked(db: str, run_id: str) -> bool:
    with ce.Engine(db) as engine:
        row = engine.store.get_run(run_id)
        assert row is not None
        return row.cancel_requested


# Each command: its arguments (after the name, without --db) given the database's
# directory, and a check of the JSON object it printed (and of the database).
Case = tuple[Callable[[Path], list[str]], Callable[[Any, str], None]]


def _keys(shown: Any, *keys: str) -> None:
    assert isinstance(shown, dict) and sorted(shown) == sorted(keys)


def _signal(shown: Any, db: str) -> None:
    assert shown == {"run_id": "waiting", "signal": "go", "sent": True}


def _cancel(shown: Any, db: str) -> None:
    assert shown == {"run_id": "waiting", "cancelled": True}
    assert cancel_asked(db, "waiting")


def _cancel_bulk(shown: Any, db: str) -> None:
    assert shown == {"matched": ["waiting"], "done": ["waiting"], "failed": []}
    assert cancel_asked(db, "waiting")


def _retry(shown: Any, db: str) -> None:
    assert shown == {"run_id": "failed", "retried": [{"run_id": "failed", "position": 1}]}
    assert status(db, "failed") == "pending"


def _retry_bulk(shown: Any, db: str) -> None:
    assert shown == {"matched": ["failed"], "done": ["failed"], "failed": []}
    assert status(db, "failed") == "pending"


def _fork(shown: Any, db: str) -> None:
    assert shown == {"run_id": "done", "at": 1, "new_run_id": "forked"}
    assert status(db, "forked") == "pending"


def _gc(shown: Any, db: str) -> None:
    # done, failed and a_set had finished; waiting had not.
    assert shown == {"deleted": 3, "would_delete": 3, "dry_run": False}
    with ce.Engine(db) as engine:
        assert [r.id for r in engine.runs()] == ["waiting"]


def _gc_dry_run(shown: Any, db: str) -> None:
    assert shown == {"deleted": 0, "would_delete": 3, "dry_run": True}
    assert status(db, "done") == "completed"


def _backup(shown: Any, db: str) -> None:
    _keys(shown, "source", "dest")
    assert shown["dest"].endswith("copy.db") and Path(shown["dest"]).is_file()
    assert isinstance(shown["source"], str) and shown["source"]


def _export(shown: Any, db: str) -> None:
    assert shown["format"] == "contengine-run" and shown["run"]["id"] == "done"


def _import(shown: Any, db: str) -> None:
    assert shown == {"run_id": "again", "status": "completed", "created_database": False}
    assert status(db, "again") == "completed"


def _start(shown: Any, db: str) -> None:
    assert shown == {"run_id": "started", "workflow": "cli_json.ok"}
    assert status(db, "started") == "pending"


def _result(shown: Any, db: str) -> None:
    assert shown == {"run_id": "done", "status": "completed", "result": 2, "repr": None}


def _result_repr(shown: Any, db: str) -> None:
    assert shown == {"run_id": "a_set", "status": "completed", "result": None, "repr": "{1, 2}"}


def _replay(shown: Any, db: str) -> None:
    _keys(shown, "database", "ok", "counts", "seconds", "runs")
    assert shown["ok"] is True
    assert shown["counts"] == {"ok": 4, "diverged": 0, "missing": 0, "error": 0}
    assert sorted(r["run_id"] for r in shown["runs"]) == ["a_set", "done", "failed", "waiting"]
    fields = ("run_id", "workflow", "status", "outcome", "message", "diff", "cause", "position")
    for run in shown["runs"]:
        _keys(run, *fields, "replayed")


def _runs(shown: Any, db: str) -> None:
    assert sorted(r["id"] for r in shown) == ["a_set", "done", "failed", "waiting"]


def _show(shown: Any, db: str) -> None:
    assert shown["id"] == "done" and shown["result"] == "2"


CASES: dict[str, Case] = {
    "signal": (lambda d: ["signal", "waiting", "go", '{"ok": true}'], _signal),
    "cancel": (lambda d: ["cancel", "waiting"], _cancel),
    "cancel-bulk": (lambda d: ["cancel", "--status", "waiting", "--yes"], _cancel_bulk),
    "retry": (lambda d: ["retry", "failed"], _retry),
    "retry-bulk": (lambda d: ["retry", "--status", "failed", "--yes"], _retry_bulk),
    "fork": (lambda d: ["fork", "done", "--at", "1", "--id", "forked"], _fork),
    "gc": (lambda d: ["gc", "--older-than", "0s"], _gc),
    "gc-dry-run": (lambda d: ["gc", "--older-than", "0s", "--dry-run"], _gc_dry_run),
    "backup": (lambda d: ["backup", str(d / "copy.db")], _backup),
    "export": (lambda d: ["export", "done"], _export),
    "import": (lambda d: ["import", str(d / "done.json"), "--id", "again"], _import),
    "start": (lambda d: ["start", "cli_json.ok", "[1]", "--id", "started"], _start),
    "result": (lambda d: ["result", "done"], _result),
    "result-repr": (lambda d: ["result", "a_set"], _result_repr),
    "replay": (lambda d: ["replay", "--all"], _replay),
    "runs": (lambda d: ["runs"], _runs),
    "show": (lambda d: ["show", "done"], _show),
}


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_json_prints_one_document_with_the_documented_keys(
    case: str, where: str, db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args, check = CASES[case]
    argv = args(tmp_path)
    argv = ["--json", *argv] if where == "before" else [*argv, "--json"]
    code, out, err = run_cli(capsys, *argv, "--db", db)
    assert code == 0, err
    check(json.loads(out), db)  # json.loads refuses two documents, or text around one


def test_every_command_takes_json_or_says_why_not() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(sub.choices) == sorted([*JSON_COMMANDS, *NO_JSON])


def test_replay_json_of_a_run_that_diverges_says_where_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "changes.db"
    with ce.Engine(path) as engine:
        engine.start(wf_changes, id="changes")
        engine.run_until_idle()
    monkeypatch.setitem(CHANGED, "on", True)
    code, out, err = run_cli(capsys, "replay", "--json", "--db", current().target(path))
    assert code == 1, err
    shown = json.loads(out)
    assert shown["ok"] is False and shown["counts"]["diverged"] == 1
    (run,) = shown["runs"]
    assert (run["run_id"], run["outcome"], run["position"]) == ("changes", "diverged", 0)
    assert "sleep" in run["diff"]


def test_export_is_the_same_with_or_without_json(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = run_cli(capsys, "export", "done", "--db", db)
    assert plain[0] == 0
    assert run_cli(capsys, "export", "done", "--json", "--db", db) == plain


def test_import_into_a_new_file_says_so_in_its_object_alone(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = str(tmp_path / "new.db")
    code, out, err = run_cli(capsys, "import", str(tmp_path / "done.json"), "--json", "--db", new)
    assert code == 0, err
    assert json.loads(out) == {"run_id": "done", "status": "completed", "created_database": True}


def test_bulk_with_nothing_chosen_prints_empty_lists(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "--json", "cancel", "--tag", "none", "--db", db)
    assert code == 0, err
    assert json.loads(out) == {"matched": [], "done": [], "failed": []}


def test_bulk_with_json_and_no_terminal_or_yes_changes_nothing(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "--json", "cancel", "--status", "waiting", "--db", db)
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        "1 unfinished run matches: 'waiting'",
        "contengine: nothing changed: confirm on a terminal, or pass --yes to cancel 1 run",
    ]
    assert not cancel_asked(db, "waiting")


# A command failing with --json: its arguments, its exit code and words of its one line.
ERRORS = {
    "cancel-finished": (["cancel", "done"], 1, "had already finished"),
    "signal-bad-payload": (["signal", "waiting", "go", "{no"], 2, "is not valid JSON"),
    "retry-not-failed": (["retry", "done"], 1, "done"),
    "fork-unknown": (["fork", "nobody", "--at", "1"], 1, "nobody"),
    "gc-bare-age": (["gc", "--older-than", "30"], 2, "needs a number with a unit"),
    "start-unknown": (["start", "cli_json.nothing"], 2, "cli_json.nothing"),
    "result-failed": (["result", "failed"], 1, "ended failed"),
    "export-unknown": (["export", "nobody"], 1, "nobody"),
    "replay-unknown-run": (["replay", "--run", "nobody"], 2, "nobody"),
    "show-unknown": (["show", "nobody"], 1, "nobody"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_an_error_with_json_is_one_line_on_stderr_and_its_exit_code(
    case: str, db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, expected, words = ERRORS[case]
    code, out, err = run_cli(capsys, "--json", *argv, "--db", db)
    assert (code, out) == (expected, "")
    assert err.count("\n") == 1 and err.startswith("contengine: ") and words in err


def test_a_backup_over_a_file_with_json_is_one_line_and_exit_1(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "taken.db").write_text("mine")
    code, out, err = run_cli(capsys, "backup", str(tmp_path / "taken.db"), "--json", "--db", db)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and "already exists" in err
    assert (tmp_path / "taken.db").read_text() == "mine"


@pytest.mark.parametrize("name", sorted(NO_JSON))
@pytest.mark.parametrize("where", ["before", "after"])
def test_commands_without_a_report_refuse_json_with_their_reason(
    name: str, where: str, db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--json", name] if where == "before" else [name, "--json"]
    code, out, err = run_cli(capsys, *argv, "--db", db)
    assert (code, out) == (2, "")
    assert err == f"contengine: `{name}` takes no --json: {NO_JSON[name]}\n"
    assert "runs until stopped" in err or "demonstration" in err


@pytest.mark.sqlite_only(reason="lint reads source files, not a database")
@pytest.mark.parametrize("where", ["before", "after"])
def test_lint_json_is_a_list_of_findings_with_the_fields_of_the_text(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A module and workflow name of its own for each test: the registry is process-global.
    flows = tmp_path / f"cli_json_flows_{where}.py"
    flows.write_text(LINTED.replace("cli_json_lint.", f"cli_json_lint_{where}."))
    text_code, text, _ = run_cli(capsys, "lint", str(flows))
    argv = ["--json", "lint", str(flows)] if where == "before" else ["lint", str(flows), "--json"]
    code, out, err = run_cli(capsys, *argv)
    assert code == text_code == 1, err
    findings = json.loads(out)
    assert len(findings) == len(text.splitlines()) >= 1
    for finding, line in zip(findings, text.splitlines(), strict=True):
        assert sorted(finding) == ["code", "col", "line", "message", "path", "rule"]
        assert (
            line == f"{finding['path']}:{finding['line']}: {finding['message']} [{finding['rule']}]"
        )
    assert any(f["rule"] == "time" for f in findings)


@pytest.mark.sqlite_only(reason="lint reads source files, not a database")
def test_lint_json_with_nothing_found_is_an_empty_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flows = tmp_path / "cli_json_clean.py"
    flows.write_text(
        LINTED.replace("time.time()", "0").replace("cli_json_lint.", "cli_json_clean.")
    )
    code, out, err = run_cli(capsys, "lint", str(flows), "--json")
    assert (code, json.loads(out)) == (0, []), err


@pytest.mark.sqlite_only(reason="lint reads source files, not a database")
def test_lint_json_with_a_bad_target_is_one_line_on_stderr_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "lint", str(tmp_path / "missing.py"), "--json")
    assert (code, json.loads(out)) == (2, [])
    assert err.count("\n") == 1 and "no such file" in err
