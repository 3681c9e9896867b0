"""`contengine demo` kills a child inside a step, resumes the run and checks itself."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "contengine", "demo", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _ledger(out: str) -> list[tuple[str, int, str, int]]:
    """(step, attempt, who, pid) of every line of the printed execution ledger."""
    rows = re.findall(r"^  (\w+)\s+attempt (\d+)\s+(child|parent) pid (\d+)", out, re.M)
    return [(step, int(attempt), who, int(pid)) for step, attempt, who, pid in rows]


def test_demo_kills_a_step_and_resumes_with_each_step_run_once_but_the_killed_one() -> None:
    proc = _demo()

    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "SIGKILL" in out and "exit status -9" in out
    ledger = _ledger(out)
    assert [(step, attempt, who) for step, attempt, who, _ in ledger] == [
        ("reserve_stock", 1, "child"),
        ("charge_card", 1, "child"),
        ("charge_card", 2, "parent"),
        ("ship_order", 1, "parent"),
        ("send_receipt", 1, "parent"),
    ]
    child_pids = {pid for _, _, who, pid in ledger if who == "child"}
    parent_pids = {pid for _, _, who, pid in ledger if who == "parent"}
    assert len(child_pids) == len(parent_pids) == 1 and child_pids != parent_pids
    assert re.search(r"^  1\s+charge_card\s+completed\s+2\s+1$", out, re.M)
    for pos, step in ((0, "reserve_stock"), (2, "ship_order"), (3, "send_receipt")):
        assert re.search(rf"^  {pos}\s+{step}\s+completed\s+1\s+0$", out, re.M), step
    assert "FAIL" not in out
    assert out.count("\n  ok ") == 7


def test_demo_keeps_a_given_database_and_starts_a_new_order_each_time(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    first, second = _demo("--db", str(db)), _demo("--db", str(db))

    assert first.returncode == 0, first.stdout + first.stderr
    assert second.returncode == 0, second.stdout + second.stderr
    assert "run order-1001" in first.stdout and "run order-1002" in second.stdout
    assert db.exists()

    import contengine as ce

    with ce.Engine(db) as engine:
        assert [r.status for r in engine.runs()] == ["completed", "completed"]
