"""Who drives a run that a client waits for: run.result() in a process that only starts
runs and waits for them leaves them to a live worker loop (another process here), and
without one drives only its run and that run's child runs; it never writes a "cannot be
found" note on a run whose workflow it merely lacks."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
import worker_child as wc
from test_workers_processes import WAIT, Workers, ledger_rows, query, wait_for, workers

import contengine as ce
from contengine.core.workflow import WorkflowNotFound
from contengine.store.base import PENDING, RunRow

pytestmark = pytest.mark.both_stores

__all__ = ["workers"]  # the fixture, imported for the tests below

HIDDEN = """
import worker_child as wc
import contengine as ce

@ce.workflow(name="hidden.pair")
def pair(ledger: str, n: int):
    a = yield wc.add(ledger, n, 1)
    b = yield wc.mul(ledger, a, 3)
    return [a, b]
"""


def hidden_run(engine: ce.Engine, run_id: str, ledger: Path, n: int, due_in: float) -> None:
    """A run of a workflow this process cannot import (it lives in a module only the
    worker's path has), recorded as another process would, due in due_in seconds."""
    now = time.time()
    data = engine.serde.dumps(((str(ledger), n), {}), "arguments")
    row = RunRow(
        run_id, "hidden.pair", "hidden_flows:pair", PENDING, data, None, now, now,
        due_at=now + due_in,
    )  # fmt: skip
    engine.store.create_run(row)


def test_result_in_a_client_leaves_every_step_to_the_live_worker(
    tmp_path: Path, workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, ledger = tmp_path / "app.db", tmp_path / "ledger"
    (tmp_path / "hidden_flows.py").write_text(HIDDEN)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the worker's path, not this process's
    assert "hidden_flows" not in sys.modules
    with ce.Engine(db) as client:  # the file exists, with its tables, before the worker
        proc = workers.spawn(db, threads=2)
        wait_for(lambda: workers.working(proc), "the worker to start working", workers)
        runs = [client.start(wc.triple, str(ledger), n, id=f"t{n}") for n in range(4)]
        runs.append(client.start(wc.nested, str(ledger), 7, id="nest"))
        # Due a little later: a client that drove runs would claim it at once (a claim
        # by id does not wait for the due time) and find no code for it.
        hidden_run(client, "hidden", ledger, 5, due_in=0.5)
        hidden = client.get_run("hidden")
        assert hidden.result(timeout=WAIT) == [6, 18]
        for n, run in enumerate(runs[:4]):
            assert run.result(timeout=WAIT) == wc.expected(n)
        assert runs[4].result(timeout=WAIT) == f"[{wc.expected(7)}]"
        assert client.get_run("nest/0").status == "completed"
    rows = ledger_rows(ledger)
    assert len(rows) == 4 * 3 + 3 + 2
    assert {pid for _, _, pid, _ in rows} == {proc.pid}, workers.report()
    # The client never claimed a run: it never went on record as a holder of leases.
    assert query(db, "SELECT count(*) FROM workers WHERE pid = ?", os.getpid()) == [(0,)]


def test_a_client_without_the_code_and_no_worker_raises_and_writes_no_note(
    tmp_path: Path,
) -> None:
    db, ledger = tmp_path / "app.db", tmp_path / "ledger"
    with ce.Engine(db) as client:
        hidden_run(client, "hidden", ledger, 5, due_in=0.0)
        with pytest.raises(WorkflowNotFound, match="hidden.pair"):
            client.get_run("hidden").result(timeout=WAIT)
        run = client.get_run("hidden")
        assert run.note is None and run.status == "pending"  # left for a process with the code
        assert client.stuck() == {}
    # A worker (run_until_idle here) that claims it and cannot find the code reports it.
    with ce.Engine(db) as worker:
        report = worker.run_until_idle()
        assert list(report.stuck) == ["hidden"]
        assert (worker.get_run("hidden").note or "").startswith("workflow 'hidden.pair'")


@ce.step
def cr_step(x: int) -> int:
    """x + 1."""
    return x + 1


@ce.workflow(name="cr.leaf")
def cr_leaf(x: int) -> Generator[Any, Any, int]:
    """One step."""
    return int((yield cr_step(x)))


@ce.workflow(name="cr.parent")
def cr_parent(x: int) -> Generator[Any, Any, int]:
    """A child run, then a step."""
    y = yield cr_leaf(x)
    return int((yield cr_step(y)))


def test_result_without_a_worker_drives_its_run_and_its_children_only(tmp_path: Path) -> None:
    with ce.Engine(tmp_path / "app.db") as engine:
        other = engine.start(cr_leaf, 100, id="other")
        assert engine.start(cr_parent, 1, id="p").result(timeout=WAIT) == 3
        assert engine.get_run("p/0").status == "completed"
        assert other.status == "pending"  # not this result()'s run: left to a worker
