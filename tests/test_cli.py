"""The `runs` and `show` commands, against databases made here."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

import contengine as ce
from contengine.cli.main import build_parser, main
from contengine.core.tracebacks import exception_line

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d"
REPO = Path(__file__).resolve().parent.parent


class Crash(BaseException):
    """Raised inside a step, it escapes the engine like a process dying mid-step."""


class OutOfPaper(Exception):
    """A step's own failure."""


_flaky_calls: dict[str, int] = {}
_branch = {"first": "cli_fetch"}


@ce.step(retries=2, backoff=0)
def cli_flaky(key: str) -> dict[str, Any]:
    """Fail once per key, then succeed."""
    _flaky_calls[key] = _flaky_calls.get(key, 0) + 1
    if _flaky_calls[key] == 1:
        raise ConnectionError("reset by peer")
    return {"key": key, "items": list(range(50))}


@ce.step
def cli_print(doc: str) -> None:
    """Always fails with the step's own exception type."""
    raise OutOfPaper(f"tray empty while printing {doc}")


@ce.step(retries=3, backoff=3600)
def cli_slow_retry() -> None:
    """Fails; its next attempt is due an hour later."""
    raise TimeoutError("upstream slow")


@ce.step
def cli_fetch(n: int) -> int:
    """A step whose name the workflow below may change between runs."""
    return n


@ce.step
def cli_other(n: int) -> int:
    """The step a changed workflow yields instead of cli_fetch."""
    return n


@ce.step
def cli_crash() -> None:
    """Kills the drive, leaving the entry in flight."""
    raise Crash


@ce.workflow(name="cli.ok")
def wf_ok(key: str) -> Generator[Any, Any, dict[str, Any]]:
    """One flaky step."""
    return (yield cli_flaky(key))


@ce.workflow(name="cli.fails")
def wf_fails(doc: str) -> Generator[Any, Any, None]:
    """A step whose failure the workflow does not catch."""
    yield cli_print(doc)


@ce.workflow(name="cli.retrying")
def wf_retrying() -> Generator[Any, Any, None]:
    """Waits for a retry that is due much later."""
    yield cli_slow_retry()


@ce.workflow(name="cli.changes")
def wf_changes() -> Generator[Any, Any, None]:
    """Yields a step chosen by module state: changing it makes replay diverge."""
    yield (cli_fetch if _branch["first"] == "cli_fetch" else cli_other)(1)
    yield cli_crash()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Call the command line in-process; returns (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A database with one completed, one failed and one not-yet-started run."""
    path = str(tmp_path / "runs.db")
    _flaky_calls.clear()
    with ce.Engine(path) as engine:
        engine.run(wf_ok, "a", id="run-ok")
        with pytest.raises(OutOfPaper):
            engine.run(wf_fails, "report.pdf", id="run-failed")
        engine.start(wf_ok, "b", id="run-pending")
    return path


def test_runs_lists_every_run_with_its_status_and_creation_time(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "runs", "--db", db)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["id", "workflow", "status", "created", "note"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"run-ok", "run-failed", "run-pending"}
    assert rows["run-ok"][1:3] == ["cli.ok", "completed"]
    assert rows["run-failed"][1:3] == ["cli.fails", "failed"]
    assert rows["run-pending"][1:3] == ["cli.ok", "pending"]
    assert all(re.fullmatch(ISO, row[3]) for row in rows.values())


def test_runs_filters_by_status_and_workflow(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run_cli(capsys, "runs", "--db", db, "--status", "failed")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["run-failed"]
    _, out, _ = run_cli(capsys, "runs", "--db", db, "--workflow", "cli.ok")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["run-ok", "run-pending"]
    code, out, _ = run_cli(capsys, "runs", "--db", db, "--status", "cancelled")
    assert code == 0 and out.strip() == "no runs"


def test_runs_rejects_an_unknown_status(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "runs", "--db", db, "--status", "done")
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and "'done'" in err and "completed" in err


def test_runs_takes_the_database_from_the_environment(
    db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONTENGINE_DB", db)
    code, out, _ = run_cli(capsys, "runs")
    assert code == 0 and "run-ok" in out


def test_without_a_database_both_commands_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONTENGINE_DB", raising=False)
    for argv in (["runs"], ["show", "x"]):
        code, out, err = run_cli(capsys, *argv)
        assert code == 2 and out == ""
        assert len(err.splitlines()) == 1 and "--db" in err


def test_a_missing_database_file_is_an_error_and_is_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "typo.db"
    code, out, err = run_cli(capsys, "runs", "--db", str(path))
    assert code == 1 and out == "" and len(err.splitlines()) == 1
    assert str(path) in err
    assert not path.exists()


def test_show_prints_the_header_and_a_timeline_of_the_log(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "show", "--db", db, "run-ok")
    assert code == 0 and err == ""
    header, _, timeline = out.partition("\n\n")
    assert re.search(r"^workflow\s+cli\.ok$", header, re.M)
    assert re.search(r"^status\s+completed$", header, re.M)
    assert re.search(rf"^created\s+{ISO}$", header, re.M)
    # The result is shown in short: a truncated repr, on one line.
    result = re.search(r"^result\s+(.*)$", header, re.M)
    assert result and result.group(1).startswith("{'items': [0, 1, 2") and "..." in result.group(1)
    timeline, _, attempts = timeline.partition("\n\n")
    lines = timeline.splitlines()
    assert " ".join(lines[0].split()) == "pos kind request status attempts crashes ms outcome"
    cells = lines[1].split(None, 7)
    assert cells[:6] == ["0", "step", "cli_flaky('a')", "completed", "2", "0"]
    assert float(cells[6]) >= 0
    assert cells[7].startswith("{'items': [0, 1,")
    assert len(lines) == 2
    # Then the retried step's attempts, each with its time and outcome.
    tried = attempts.splitlines()
    assert tried[:2] == ["attempts:", "  position 0:"]
    assert tried[2].startswith("    attempt 1 failed: ConnectionError: reset by peer; started ")
    assert tried[3].startswith("    attempt 2 completed; started ")
    assert len(tried) == 4


def test_show_gives_the_type_and_message_of_a_failure(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, "show", "--db", db, "run-failed")
    assert code == 0
    assert re.search(r"^status\s+failed$", out, re.M)
    assert re.search(r"^error\s+OutOfPaper: tray empty while printing report\.pdf$", out, re.M)
    step = next(line for line in out.splitlines() if line.lstrip().startswith("0 "))
    assert "cli_print('report.pdf')" in step and " failed " in step
    assert step.endswith("OutOfPaper: tray empty while printing report.pdf")


def test_show_of_a_run_not_started_says_its_log_is_empty(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, "show", "--db", db, "run-pending")
    assert code == 0
    assert re.search(r"^status\s+pending$", out, re.M)
    assert "log is empty" in out and "result" not in out


def test_show_of_an_unknown_run_exits_1_with_one_line(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "show", "--db", db, "no-such-run")
    assert code == 1 and out == ""
    assert len(err.splitlines()) == 1 and "'no-such-run'" in err


def test_show_tells_when_a_retry_is_due_and_what_failed_last(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "retry.db")
    with ce.Engine(path) as engine:
        engine.start(wf_retrying, id="slow")
        engine.run_until_idle()
    code, out, _ = run_cli(capsys, "show", "--db", path, "slow")
    assert code == 0
    table, _, attempts = out.partition("\n\nattempts:\n")
    step = table.splitlines()[-1]
    assert "cli_slow_retry()" in step and " retrying " in step
    assert attempts.splitlines()[1].startswith("    attempt 1 failed: TimeoutError: upstream slow")
    assert re.search(rf"retry due {ISO} after TimeoutError: upstream slow$", step)
    assert re.search(r"retrying\s+1\s+0\s+-\s", step)  # 1 attempt, no crash, no duration yet


def test_show_marks_steps_in_flight_and_runs_notes_say_why_a_run_is_stuck(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "stuck.db")
    with ce.Engine(path) as engine:
        engine.start(wf_changes, id="diverged")
        with pytest.raises(Crash):
            engine.run_until_idle()
        monkeypatch.setitem(_branch, "first", "cli_other")
        report = engine.run_until_idle()
        assert isinstance(report.stuck["diverged"], ce.NonDeterminismError)

    _, out, _ = run_cli(capsys, "runs", "--db", path)
    row = out.splitlines()[1]
    assert row.startswith("diverged ") and " running " in row
    assert "diverged from its log at position 0" in row  # the note, clipped but telling

    _, out, _ = run_cli(capsys, "show", "--db", path, "diverged")
    assert re.search(r"^note\s+workflow 'cli\.changes' .*diverged", out, re.M)
    lines = out.splitlines()
    assert re.search(r"^\s*0\s+step\s+cli_fetch\(1\)\s+completed\s+1\s+0\s+[\d.]+\s+1$", lines[-2])
    assert re.search(r"^\s*1\s+step\s+cli_crash\(\)\s+running\s+1\s+0\s+-\s+in flight$", lines[-1])


def test_show_of_a_signed_database_still_prints_the_timeline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "signed.db")
    _flaky_calls.clear()
    with ce.Engine(path, secret=b"k" * 32) as engine:
        engine.run(wf_ok, "s", id="signed")
    code, out, _ = run_cli(capsys, "show", "--db", path, "signed")
    assert code == 0
    assert re.search(r"^result\s+\(unreadable here: it is signed", out, re.M)
    step = out.partition("\n\nattempts:\n")[0].splitlines()[-1]
    assert re.search(r"cli_flaky\('s'\)\s+completed\s+2\s+0\s", step)
    assert step.endswith("(unreadable here: it is signed; open the engine with its secret)")


def test_show_reads_a_signed_database_with_the_secret_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "signed.db")
    _flaky_calls.clear()
    with ce.Engine(path, secret=b"k" * 32) as engine:
        engine.run(wf_ok, "s", id="signed")
    monkeypatch.setenv("CONTENGINE_SECRET", "k" * 32)
    code, out, _ = run_cli(capsys, "show", "--db", path, "signed")
    assert code == 0
    assert "unreadable" not in out


def test_runs_through_python_dash_m(db: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("CONTENGINE_DB", None)
    proc = subprocess.run(
        [sys.executable, "-m", "contengine", "runs", "--db", db, "--status", "completed"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["id", "workflow", "status"]
    assert [line.split()[:3] for line in lines[1:]] == [["run-ok", "cli.ok", "completed"]]


@ce.workflow(name="cli.long")
def wf_long(n: int) -> Generator[Any, Any, int]:
    """n steps: a log longer than a pipe holds, once shown."""
    for i in range(n):
        yield cli_fetch(i)
    return n


def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path: Path) -> None:
    """`contengine show ID | head`: the reader closes the pipe while the command still
    writes; it stops at once, says nothing, and exits as SIGPIPE would (141)."""
    path = str(tmp_path / "long.db")
    with ce.Engine(path, durability="normal") as engine:
        engine.run(wf_long, 4000, id="long")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("CONTENGINE_DB", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "contengine", "show", "long", "--db", path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    # About 200 KB follow this line: more than the pipe and the reader's buffer hold, so
    # the command is still writing when the pipe closes, whatever the scheduling.
    assert proc.stdout.readline().split() == [b"run", b"long"]
    proc.stdout.close()
    err = proc.stderr.read()
    assert (proc.wait(timeout=120), err) == (141, b"")


@pytest.mark.parametrize("command", ["runs", "show"])
def test_html_to_dash_writes_the_page_to_stdout(
    db: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["show", "run-ok"] if command == "show" else ["runs"]
    code, out, err = run_cli(capsys, *argv, "--db", db, "--html", "-")
    assert (code, err) == (0, "")
    assert out.startswith("<!DOCTYPE html>") and out.rstrip().endswith("</html>")
    assert "run-ok" in out
    assert not (tmp_path / "-").exists()


# -- runs --older-than / --newer-than ---------------------------------------------------------


@pytest.fixture
def aged_db(tmp_path: Path) -> str:
    """Runs created 40 days, 2 hours and 1 minute ago (by the wall clock the command reads)."""
    import time

    path = str(tmp_path / "aged.db")
    now = time.time()
    for run_id, age in (("old", 40 * 86400), ("recent", 2 * 3600), ("fresh", 60)):
        with ce.Engine(path, clock=ce.testing.VirtualClock(now - age)) as engine:
            engine.start(wf_ok, run_id, id=run_id)
    return path


@pytest.mark.parametrize(
    ("flags", "ids"),
    [
        (("--older-than", "30d"), ["old"]),
        (("--older-than", "1h"), ["old", "recent"]),
        (("--newer-than", "1h"), ["fresh"]),
        (("--newer-than", "3h", "--older-than", "90s"), ["recent"]),
        (("--newer-than", "10s"), []),
    ],
)
def test_runs_filters_by_age_in_the_table_and_the_json(
    aged_db: str, flags: tuple[str, ...], ids: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "runs", "--db", aged_db, *flags)
    assert code == 0 and err == ""
    listed = [line.split()[0] for line in out.splitlines()[1:]] if ids else []
    assert listed == ids and (ids or out == "no runs\n")
    code, out, _ = run_cli(capsys, "runs", "--db", aged_db, "--json", *flags)
    assert code == 0 and [r["id"] for r in json.loads(out)] == ids


def test_runs_age_filter_applies_to_the_html_overview(
    aged_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "runs.html"
    code, _, err = run_cli(
        capsys, "runs", "--db", aged_db, "--older-than", "1h", "--html", str(page)
    )
    assert code == 0 and err == ""
    html = page.read_text()
    assert "2 most recent runs" in html
    assert ">old<" in html and ">recent<" in html and ">fresh<" not in html


@pytest.mark.parametrize("flag", ["--older-than", "--newer-than"])
def test_runs_refuses_a_bad_age_as_a_usage_error_naming_the_flag(
    aged_db: str, flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "runs", "--db", aged_db, flag, "3 weeks")
    assert code == 2 and out == ""
    assert err.startswith(f"contengine: {flag} needs a number with a unit") and "'3 weeks'" in err


# -- progress lines of gc and backup ----------------------------------------------------------


def test_gc_and_backup_print_no_progress_when_stderr_is_not_a_terminal(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "gc", "--older-than", "0s", "--db", db)
    assert (code, out, err) == (0, "deleted 2 finished runs\n", "")
    dest = str(tmp_path / "copy.db")
    code, out, err = run_cli(capsys, "backup", dest, "--db", db)
    assert (code, out, err) == (0, f"backed up {db} to {dest}\n", "")
    assert os.path.isfile(dest)


def test_gc_progress_shows_the_runs_deleted_after_each_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    import contengine.engine.engine
    from contengine.cli.ops import Progress, _gc

    monkeypatch.setattr(contengine.engine.engine, "GC_BATCH", 2)
    clock = ce.testing.VirtualClock()
    with ce.Engine(str(tmp_path / "gc.db"), clock=clock) as engine:
        for i in range(5):
            engine.run(wf_ok, f"k{i}", id=f"r{i}")
        clock.sleep(60)
        stream = io.StringIO()
        assert _gc(engine, 30, Progress(stream, is_tty=True)) == 5
        assert engine.store.list_runs() == []
    lines = stream.getvalue().split("\r")[1:]
    assert [re.sub(r"\x1b\[K\n?$", "", line) for line in lines] == [
        f"gc: deleted {n} finished runs so far" for n in (2, 4, 5)
    ]
    assert stream.getvalue().endswith("\x1b[K\n")  # the line is ended before the summary


def test_backup_progress_shows_a_start_and_a_done_line_and_nothing_unless_forced(
    db: str, tmp_path: Path
) -> None:
    import io

    from contengine.cli.ops import Progress, _backup

    shown, hidden = io.StringIO(), io.StringIO()
    with ce.Engine(db) as engine:
        _backup(engine, db, str(tmp_path / "a.db"), Progress(shown, is_tty=True))
        _backup(engine, db, str(tmp_path / "b.db"), Progress(hidden, is_tty=False))
    assert shown.getvalue() == (
        f"\rbackup: copying {db} to {tmp_path / 'a.db'} ...\x1b[K"
        f"\rbackup: copied {db} to {tmp_path / 'a.db'}\x1b[K\n"
    )
    assert hidden.getvalue() == ""
    assert (tmp_path / "a.db").is_file() and (tmp_path / "b.db").is_file()


@ce.step(name="cli_part")
def cli_part(x: int) -> int:
    return x + 1


@ce.workflow(name="cli_kid")
def cli_kid(x: int) -> Generator[Any, Any, int]:
    return (yield cli_part(x))


@ce.workflow(name="cli_tree")
def cli_tree() -> Generator[Any, Any, Any]:
    a = yield cli_kid(1)
    both = yield ce.gather(cli_part(10), cli_part(20))
    return a, both


def test_show_indents_gather_members_and_child_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "tree.db")
    with ce.Engine(path) as engine:
        assert engine.run(cli_tree, id="tree") == (2, [11, 21])
    code, out, _ = run_cli(capsys, "show", "--db", path, "tree")
    assert code == 0
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("pos"))
    table = lines[header + 1 :]
    assert re.match(r"^0\s+child\s+cli_kid\(1\)", table[0])
    assert re.match(r"^  -\s+run\s+tree/0\s+completed", table[1])
    assert re.match(r"^  0\s+step\s+cli_part\(1\)", table[2])  # the child's own log
    assert re.match(r"^1\s+gather\s+\(2 members\)", table[3])
    assert re.match(r"^  2\s+step\s+cli_part\(10\)", table[4])  # members, indented
    assert re.match(r"^  3\s+step\s+cli_part\(20\)", table[5])


def test_runs_filters_by_tag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "tags.db")
    with ce.Engine(path) as engine:
        engine.start(cli_kid, 1, id="t1", tags=["batch-7"])
        engine.start(cli_kid, 2, id="t2")
    code, out, _ = run_cli(capsys, "runs", "--db", path, "--tag", "batch-7", "--json")
    assert code == 0
    listed = json.loads(out)
    assert [r["id"] for r in listed] == ["t1"] and listed[0]["tags"] == ["batch-7"]


# -- a failed run's error, without its code ---------------------------------------------------

GONE_FLOWS = """
import contengine as ce


class Declined(Exception):
    pass


@ce.step(name="cli_gone.charge")
def charge(x: int) -> int:
    raise Declined(f"card declined for {x}")


@ce.workflow(name="cli_gone.checkout")
def checkout(x: int):
    return (yield charge(x))
"""


def test_show_reads_a_failed_runs_error_where_its_code_is_not_importable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The exception's class is gone (a module this process cannot import): show and the
    page still say what it was, from the traceback stored with the run, and print that
    traceback whole."""
    source = tmp_path / "gone_flows.py"
    source.write_text(GONE_FLOWS)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("gone_flows")
    db = str(tmp_path / "gone.db")
    with ce.Engine(db, durability="normal") as engine, pytest.raises(Exception, match="declined"):
        engine.run(module.checkout, 3, id="g1")
    source.unlink()
    monkeypatch.delitem(sys.modules, "gone_flows")
    importlib.invalidate_caches()

    code, out, err = run_cli(capsys, "show", "--db", db, "g1")
    assert (code, err) == (0, "")
    assert "error     gone_flows.Declined: card declined for 3\n" in out
    assert "unreadable" not in out
    trace = out.split("error, as stored when the run failed:\n", 1)[1]
    assert trace.startswith("  contengine: the run failed")
    assert "  Traceback (most recent call last):\n" in trace and "gone_flows.py" in trace
    assert "  gone_flows.Declined: card declined for 3\n" in trace

    code, page, err = run_cli(capsys, "show", "--db", db, "g1", "--html", "-")
    assert (code, err) == (0, "")
    assert '<span class="error">gone_flows.Declined: card declined for 3</span>' in page
    assert "<pre>contengine: the run failed" in page and "Traceback (most recent call last)" in page


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("Traceback (most recent call last):\n  File 'a.py'\nValueError: x\n", "ValueError: x"),
        # contengine's note before, the exception's notes after
        ("contengine: a note\nTraceback (most recent call last):\n  F\nE: m\nnote\n", "E: m"),
        # a chained exception: the last traceback's exception
        (
            "Traceback (most recent call last):\n  f\nKeyError: 1\n\nDuring handling of the "
            "above exception, another exception occurred:\n\nTraceback (most recent call "
            "last):\n  g\nValueError: y\n",
            "ValueError: y",
        ),
        # a message that quotes a remote traceback is the message, not the exception
        (
            "Traceback (most recent call last):\n  f\nRemoteError: job 17 crashed:\n"
            "Traceback (most recent call last):\n  g\nKeyError: 'harmless'\n",
            "RemoteError: job 17 crashed:",
        ),
        ("no traceback at all", ""),
        (None, ""),
    ],
)  # fmt: skip
def test_the_exception_line_of_a_stored_traceback(text: str | None, line: str) -> None:
    assert exception_line(text) == line


def test_help_lists_every_command_once_by_purpose(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    grouped = out.split("commands by purpose:\n", 1)[1]
    listed = [
        name.strip()
        for line in grouped.splitlines()
        if ":" in line and line.startswith("  ")
        for name in line.split(":", 1)[1].split(",")
    ]
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(listed) == sorted(sub.choices)  # each command once, none missing


def test_show_json_gives_the_run_its_error_and_its_log(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "show", "run-failed", "--json", "--db", db)
    assert (code, err) == (0, "")
    shown = json.loads(out)
    assert (shown["id"], shown["status"]) == ("run-failed", "failed")
    assert shown["error"] == "OutOfPaper: tray empty while printing report.pdf"
    assert "Traceback (most recent call last)" in shown["error_text"]
    assert [(e["position"], e["name"], e["status"]) for e in shown["log"]] == [
        (0, "cli_print", "failed")
    ]
    assert shown["log"][0]["outcome"] == shown["error"]
    code, out, err = run_cli(capsys, "--json", "show", "run-ok", "--db", db)
    ok = json.loads(out)
    assert (code, ok["status"], ok["error"]) == (0, "completed", None)
    assert ok["result"] == "{'items': [0, 1, 2, 3, 4, 5, ...], 'key': 'a'}"  # in short, as show
    assert all(e["status"] == "completed" for e in ok["log"])
