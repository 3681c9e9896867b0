"""`contengine cancel` and `retry` of runs chosen by --status, --workflow and --tag: a count,
a confirmation (or --yes), and nothing changed without one; on both stores."""

from __future__ import annotations

import io
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from stores import current

import contengine as ce
from contengine.cli.main import main

pytestmark = pytest.mark.both_stores

FAIL = {"on": True}


@ce.step(name="bulk.charge")
def bulk_charge(order: str) -> str:
    """Fails while FAIL is on."""
    if FAIL["on"]:
        raise ConnectionError(f"gateway down for {order}")
    return f"charged {order}"


@ce.workflow(name="bulk.approve")
def wf_approve(order: str) -> Generator[Any, Any, Any]:
    """Waits for an approval."""
    return (yield ce.wait("approved"))


@ce.workflow(name="bulk.charge")
def wf_charge(order: str) -> Generator[Any, Any, str]:
    """One step that fails while FAIL is on."""
    return (yield bulk_charge(order))


class Terminal(io.StringIO):
    """A stdin that is a terminal, with the user's answer typed in."""

    def isatty(self) -> bool:
        return True


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Call the command line in-process; returns (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Waiting runs w1, w2 (tag a), w3 (tag b); failed runs f1 (tag a), f2; a completed one."""
    monkeypatch.delenv("CONTENGINE_DB", raising=False)
    FAIL["on"] = True
    path = tmp_path / "bulk.db"
    with ce.Engine(path, durability="normal") as engine:
        engine.start(wf_approve, "o-1", id="w1", tags=["a"])
        engine.start(wf_approve, "o-2", id="w2", tags=["a"])
        engine.start(wf_approve, "o-3", id="w3", tags=["b"])
        engine.start(wf_charge, "o-4", id="f1", tags=["a"])
        engine.start(wf_charge, "o-5", id="f2")
        engine.run_until_idle()
        FAIL["on"] = False
        engine.run(wf_charge, "o-6", id="done", tags=["a"])
    return current().target(path)


def statuses(db: str) -> dict[str, tuple[str, bool]]:
    with ce.Engine(db) as engine:
        return {r.id: (r.status, r.cancel_requested) for r in engine.store.list_runs()}


def test_cancel_by_tag_without_a_terminal_or_yes_changes_nothing(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = statuses(db)
    code, out, err = run_cli(capsys, "cancel", "--tag", "a", "--db", db)
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        "2 unfinished runs match: 'w1', 'w2'",
        "contengine: nothing changed: confirm on a terminal, or pass --yes to cancel 2 runs",
    ]
    assert statuses(db) == before


def test_cancel_by_tag_with_yes_cancels_only_the_unfinished_runs_of_that_tag(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "cancel", "--tag", "a", "--yes", "--db", db)
    assert (code, out) == (0, "cancelled 2 of 2 runs\n")
    assert err == "2 unfinished runs match: 'w1', 'w2'\n"
    after = statuses(db)
    assert {r for r, (_, asked) in after.items() if asked} == {"w1", "w2"}
    # Asked once: a second bulk cancel finds nothing left to ask.
    assert run_cli(capsys, "cancel", "--tag", "a", "--yes", "--db", db)[:2] == (
        0,
        "no unfinished run matches; nothing changed\n",
    )
    with ce.Engine(db, workflows=[wf_approve, wf_charge]) as engine:
        engine.run_until_idle()
        assert engine.get_run("w1").status == engine.get_run("w2").status == "cancelled"
        assert engine.get_run("w3").status == "waiting"


@pytest.mark.parametrize(("answer", "code"), [("y\n", 0), ("yes\n", 0), ("n\n", 1), ("\n", 1)])
def test_cancel_on_a_terminal_asks_first(
    db: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    answer: str,
    code: int,
) -> None:
    monkeypatch.setattr("sys.stdin", Terminal(answer))
    got, out, err = run_cli(capsys, "cancel", "--workflow", "bulk.approve", "--db", db)
    assert got == code
    assert "3 unfinished runs match: 'w1', 'w2', 'w3'\ncancel them? [y/N] " in err
    asked = {r for r, (_, a) in statuses(db).items() if a}
    assert asked == ({"w1", "w2", "w3"} if code == 0 else set())


def test_retry_by_status_resumes_every_failed_run(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "retry", "--status", "failed", "--yes", "--db", db)
    assert (code, out) == (0, "retried 2 of 2 runs\n")
    assert err == "2 failed runs match: 'f1', 'f2'\n"
    with ce.Engine(db, workflows=[wf_approve, wf_charge]) as engine:
        engine.run_until_idle()
        assert engine.get_run("f1").result() == "charged o-4"
        assert engine.get_run("f2").result() == "charged o-5"


def test_retry_by_tag_takes_only_failed_runs(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "retry", "--tag", "a", "--yes", "--db", db)
    assert (code, out, err) == (0, "retried 1 of 1 run\n", "1 failed run matches: 'f1'\n")
    assert statuses(db)["f1"][0] == "pending" and statuses(db)["f2"][0] == "failed"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["cancel"], "cancel needs a run id, or --status, --workflow or --tag"),
        (["cancel", "w1", "--tag", "a"], "give a run id or --tag, not both"),
        (["cancel", "--status", "completed"], "runs that are completed have finished"),
        (["cancel", "--status", "asleep"], "--status must be one of"),
        (
            ["retry", "--status", "waiting"],
            "retry resumes failed or cancelled runs, not waiting ones",
        ),
        (["retry", "--tag", "a", "--at", "0"], "--at is for one run"),
    ],
)
def test_bad_choices_are_usage_errors_and_change_nothing(
    db: str, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    before = statuses(db)
    code, out, err = run_cli(capsys, *argv, "--yes", "--db", db)
    assert (code, out) == (2, "")
    assert err.startswith("contengine: ") and message in err and len(err.splitlines()) == 1
    assert statuses(db) == before
