"""`contengine worker`, `start` and `result`: start a worker, start a run, read its result,
from a shell, on both stores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from helpers import lines_of, wait_for_line
from stores import current

import contengine as ce
from contengine.cli.main import main

pytestmark = pytest.mark.both_stores

REPO = Path(__file__).resolve().parent.parent
WAIT = 120.0  # a bound against hanging, never reached when things work

SHOP = """
import os

import contengine as ce


@ce.step(name="shop.charge")
def charge(order: str, cents: int) -> dict:
    return {"order": order, "charged": cents, "pid": os.getpid()}


@ce.workflow(name="shop.checkout")
def checkout(order: str, cents: int):
    receipt = yield charge(order, cents)
    approval = yield ce.wait("approved")
    return {**receipt, "approved_by": approval}
"""


@ce.step(name="runcli.add")
def runcli_add(a: int, b: int) -> int:
    """Adds."""
    return a + b


@ce.step(name="runcli.refuse")
def runcli_refuse(order: str) -> None:
    """Fails."""
    raise PermissionError(f"order {order} refused")


@ce.workflow(name="runcli.adds")
def wf_adds(a: int, b: int = 1) -> Generator[Any, Any, int]:
    """One step."""
    return (yield runcli_add(a, b))


@ce.workflow(name="runcli.refused")
def wf_refused(order: str) -> Generator[Any, Any, None]:
    """Fails at its step."""
    yield runcli_refuse(order)


@ce.workflow(name="runcli.waits")
def wf_waits() -> Generator[Any, Any, Any]:
    """Waits for a signal."""
    return (yield ce.wait("go"))


RESULT: dict[str, Any] = {}


@ce.workflow(name="runcli.gives")
def wf_gives() -> Generator[Any, Any, Any]:
    """Returns RESULT["value"]."""
    return RESULT["value"]
    yield  # a generator


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Call the command line in-process; returns (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An empty database, as --db names it (a file, or a schema's URL)."""
    monkeypatch.delenv("CONTENGINE_DB", raising=False)
    path = tmp_path / "app.db"
    with ce.Engine(path):
        pass
    return current().target(path)


def test_a_worker_a_start_and_a_result_from_the_shell(db: str, tmp_path: Path) -> None:
    """The three commands: the worker process drives the run the shell started (its pid is
    in the step's result), logs what it does, and a SIGTERM stops it cleanly (exit 0)."""
    (tmp_path / "shopflows.py").write_text(SHOP)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("CONTENGINE_DB", None)

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "contengine", *argv, "--db", db],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=WAIT,
        )

    worker = subprocess.Popen(
        [sys.executable, "-m", "contengine", "worker", "--import", "shopflows", "--db", db],
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    try:
        assert worker.stderr is not None
        lines, seen = lines_of(worker.stderr), []
        assert "threads; SIGTERM or Ctrl-C stops it" in wait_for_line(lines, "worker started", seen)
        started = cli("start", "shop.checkout", '["o-1", 500]', "--import", "shopflows")
        assert started.returncode == 0 and started.stderr == "", started.stderr
        run_id = started.stdout.strip()
        assert len(run_id) == 32
        wait_for_line(lines, f"claimed run '{run_id}' (shop.checkout)", seen)
        signalled = cli("signal", run_id, "approved", '"ann"')
        assert signalled.returncode == 0, signalled.stderr
        # No --import: the result is read, not driven (the worker drives it).
        result = cli("result", run_id, "--timeout", str(WAIT))
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert json.loads(result.stdout) == {
            "order": "o-1",
            "charged": 500,
            "pid": worker.pid,
            "approved_by": "ann",
        }
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=WAIT) == 0
        wait_for_line(lines, "worker stopped", seen)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_start_prints_the_new_runs_id_and_records_its_options(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(
        capsys, "start", "runcli.adds", '{"a": 2, "b": 5}', "--id", "r1", "--tag", "t1",
        "--tag", "t2", "--queue", "q", "--priority", "3", "--db", db,
    )  # fmt: skip
    assert (code, out, err) == (0, "r1\n", "")
    code, out, err = run_cli(capsys, "start", "runcli.adds", "[40]", "--db", db)
    assert code == 0 and err == ""
    fresh = out.strip()
    with ce.Engine(db, workflows=[wf_adds]) as engine:
        row = engine.store.get_run("r1")
        assert row is not None
        assert (row.tags, row.queue, row.priority) == (("t1", "t2"), "q", 3)
        engine.run_until_idle()
        assert engine.get_run("r1").result() == 7
        assert engine.get_run(fresh).result() == 41


def test_result_prints_a_finished_runs_value_as_json_or_its_repr(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with ce.Engine(db) as engine:
        engine.run(wf_adds, 1, 2, id="three")
    assert run_cli(capsys, "result", "three", "--db", db) == (0, "3\n", "")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["start", "runcli.adds", "[1"], "ARGS_JSON is not JSON"),
        (["start", "runcli.adds", '"x"'], "ARGS_JSON must be a JSON list"),
        (["start", "runcli.adds", "[1, 2, 3]"], "cannot take these arguments"),
        (["start", "runcli.nope"], "pass --import MODULE to register it"),
        (["start", "runcli.adds", "[" * 5000], "ARGS_JSON is not JSON"),
        (["start", "runcli.adds", '{"a": 1, "id": "x"}'], "keyword arguments named id"),
        (["start", "runcli.adds", "[1]", "--id", "a\x01b"], "control character"),
        (["start", "runcli.adds", "[1]", "--priority", str(2**31)], "priority"),
        (["start", "runcli.adds", "--import", "no_such_module_here"], "--import no_such_module"),
        (["worker", "--threads", "0"], "--threads must be at least 1"),
        (["result", "r", "--timeout", "-1"], "--timeout must be >= 0"),
    ],
)
def test_bad_input_is_a_usage_error_and_starts_nothing(
    db: str, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run_cli(capsys, *argv, "--db", db)
    assert code == 2 and out == ""
    assert err.startswith("contengine: ") and message in err and len(err.splitlines()) == 1
    with ce.Engine(db) as engine:
        assert engine.runs() == []


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ({"a": [1, 2]}, '{"a": [1, 2]}'),
        ((1, "x"), '[1, "x"]'),
        ({1, 2}, "{1, 2}"),  # not JSON: as Python shows it
        (b"\x00\xff", "b'\\x00\\xff'"),
        (float("nan"), "nan"),  # JSON has no NaN
        (10**5000, "<a int that cannot be shown: "),
    ],
    ids=["dict", "tuple", "set", "bytes", "nan", "huge-int"],
)
def test_result_prints_json_where_json_holds_the_value_else_repr(
    db: str, capsys: pytest.CaptureFixture[str], value: Any, shown: str
) -> None:
    RESULT["value"] = value
    with ce.Engine(db) as engine:
        engine.run(wf_gives, id="given")
    code, out, err = run_cli(capsys, "result", "given", "--db", db)
    assert (code, err) == (0, "") and out.startswith(shown)


def test_result_of_a_failed_unknown_or_unfinished_run_exits_1_in_one_line(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with ce.Engine(db) as engine:
        with pytest.raises(PermissionError):
            engine.run(wf_refused, "o-7", id="refused")
        engine.start(wf_waits, id="waiting")
        engine.run_until_idle()
    for argv, message in (
        (["refused"], "run 'refused' ended failed: PermissionError: order o-7 refused"),
        (["nope"], "no run with id 'nope'"),
        (["waiting", "--timeout", "0"], "run 'waiting' has not finished (waiting): Timeout"),
    ):
        code, out, err = run_cli(capsys, "result", *argv, "--db", db)
        assert (code, out) == (1, ""), err
        assert err.startswith(f"contengine: {message}") and len(err.splitlines()) == 1
