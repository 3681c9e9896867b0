"""Runs moving between PostgreSQL and SQLite: `backup` of a PostgreSQL store (a new
SQLite contengine database from one snapshot) and `export`/`import` both ways.

That every store's backup holds the same rows is in tests/test_store_contract.py; here
engines go on with the copies, a backup is taken while a worker writes, and the
snapshot is checked against writes made in the middle of it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import wait_until
from postgres_server import fresh_schema, pg_schemas, server_url

import contengine as ce
from contengine.cli.main import main
from contengine.store.base import (
    COMPLETED,
    E_COMPLETED,
    E_RUNNING,
    FINISHED,
    EntryRow,
    Progress,
    QueueConfig,
    RunRow,
    RunUpdate,
    Store,
    WorkerRow,
)
from contengine.store.postgres import PostgresStore
from contengine.store.sqlite.copy import NewDatabase
from contengine.store.sqlite.store import SQLiteStore
from contengine.testing import VirtualClock

__all__ = ["pg_schemas"]  # a fixture

Flow = Generator[Any, Any, Any]
STOP = threading.Event()  # ends pgb.ticks' loops


@pytest.fixture
def url() -> str:
    """The test server's URL."""
    return server_url()


@pytest.fixture
def schema(pg_schemas: list[str]) -> str:
    """A fresh schema name, dropped after the test."""
    return fresh_schema(pg_schemas)


@pytest.fixture
def store(url: str, schema: str) -> Iterator[PostgresStore]:
    """A store in a fresh schema."""
    s = PostgresStore(url, schema=schema)
    yield s
    s.close()


# -- workflows --------------------------------------------------------------------------


@ce.step
def pgb_add_one(x: int) -> int:
    """A step."""
    return x + 1


@ce.step
def pgb_refuse(x: int) -> int:
    """A step that fails."""
    raise ValueError(f"refused {x}")


@ce.step
def pgb_tick(i: int) -> bool:
    """One step of pgb.ticks; True once the test says stop."""
    return STOP.is_set()


@ce.workflow(name="pgb.done")
def done(x: int) -> Flow:
    """Two steps."""
    y = yield pgb_add_one(x)
    return (yield pgb_add_one(y))


@ce.workflow(name="pgb.waits")
def waits(x: int) -> Flow:
    """A step, a published value, then a wait for the signal "go"."""
    y = yield pgb_add_one(x)
    yield ce.publish("stage", f"waiting at {y}")
    payload = yield ce.wait("go")
    return {"y": y, "payload": payload}


@ce.workflow(name="pgb.sleeps")
def sleeps(x: int) -> Flow:
    """A step, an hour's sleep, a step."""
    y = yield pgb_add_one(x)
    yield ce.sleep(3600)
    return (yield pgb_add_one(y))


@ce.workflow(name="pgb.child")
def child(x: int) -> Flow:
    """Waits for "go" and adds its payload."""
    payload = yield ce.wait("go")
    return x + payload


@ce.workflow(name="pgb.parent")
def parent(x: int) -> Flow:
    """A child run that completes, then one that waits."""
    a = yield done(x)
    b = yield child(x)
    return a + b


@ce.workflow(name="pgb.fails")
def fails(x: int) -> Flow:
    """Fails with its step's exception."""
    yield pgb_refuse(x)


@ce.workflow(name="pgb.ticks")
def ticks(n: int) -> Flow:
    """n steps, or fewer once the test says stop; returns how many it took."""
    i = 0
    while i < n:
        stop = yield pgb_tick(i)
        i += 1
        if stop:
            break
    return i


FLOWS = [done, waits, sleeps, child, parent, fails, ticks]


def contents(store: Store) -> dict[str, Any]:
    """Everything a store keeps of its runs and queues, as its interface reads it."""
    runs = store.list_runs()
    return {
        "runs": runs,
        "logs": {r.id: store.load_log(r.id) for r in runs},
        "mailboxes": {r.id: store.mailbox(r.id) for r in runs},
        "published": {r.id: store.published(r.id) for r in runs},
        "queues": sorted(store.queues(), key=lambda q: q.name),
    }


def sqlite_contents(path: Path) -> dict[str, Any]:
    """contents() of the SQLite database at path."""
    s = SQLiteStore(path)
    try:
        return contents(s)
    finally:
        s.close()


# -- a backup an engine goes on with -------------------------------------------------------


def test_a_backup_of_runs_in_every_state_opens_in_an_engine_that_finishes_them(
    url: str, schema: str, tmp_path: Path
) -> None:
    dest = tmp_path / "copy.db"
    with ce.Engine(url, schema=schema, workflows=FLOWS) as source:
        source.set_queue("pgb", concurrency=2)
        source.start(done, 1, id="done")
        source.start(waits, 10, id="waits", tags=["t"], queue="pgb", priority=2)
        source.start(sleeps, 20, id="sleeps")
        source.start(parent, 30, id="tree")
        source.start(fails, 40, id="fails")
        source.start(waits, 50, id="cancelled")
        source.run_until_idle()
        source.signal("waits", "later", {"kept": True})  # not what it waits for: kept
        source.cancel("cancelled")  # asked for, delivered when next driven
        source.start(waits, 60, id="fresh")  # pending, its signal already in its mailbox
        source.signal("fresh", "go", 6)
        expected = contents(source.store)
        statuses = {r.id: r.status for r in source.runs()}
        (tree_child,) = [
            r.id for r in expected["runs"] if r.parent_id == "tree" and r.status != COMPLETED
        ]
        source.backup(dest)
    assert statuses == {
        "done": "completed", "waits": "waiting", "sleeps": "sleeping", "tree": "waiting",
        "tree/0": "completed", tree_child: "waiting", "fails": "failed",
        "cancelled": "waiting", "fresh": "pending",
    }  # fmt: skip
    assert expected["mailboxes"]["waits"] and expected["published"]["waits"]
    assert [p.name for p in tmp_path.iterdir()] == ["copy.db"]  # no temporary file left

    with ce.Engine(dest, workflows=FLOWS, clock=VirtualClock(time.time())) as copy:
        assert isinstance(copy.store, SQLiteStore)
        assert contents(copy.store) == expected  # rows, histories, mailboxes, values, queues
        assert copy.get_run("done").result() == 3
        with pytest.raises(ValueError, match="refused 40"):
            copy.get_run("fails").result()
        assert copy.published("waits", "stage") == "waiting at 11"
        copy.signal("waits", "go", "on sqlite")
        copy.signal(tree_child, "go", 100)
        copy.run_until_idle()  # the virtual clock jumps the hour's sleep too
        assert copy.get_run("waits").result() == {"y": 11, "payload": "on sqlite"}
        assert copy.get_run("tree").result() == 32 + 130
        assert copy.get_run("sleeps").result() == 22
        assert copy.get_run("fresh").result() == {"y": 61, "payload": 6}
        assert copy.get_run("cancelled").status == "cancelled"
        assert copy.store.mailbox("waits")[0].name == "later"
        assert copy.runs(tag="t")[0].id == "waits"


def test_the_copy_keeps_lease_numbers_and_cancel_states_and_frees_every_lease(
    store: PostgresStore, tmp_path: Path
) -> None:
    """Owners are not copied (no worker of the server works the copy: its runs are
    claimed there at once), lease numbers are (fencing goes on counting up), and a
    delivered cancel stays told apart from none."""
    store.create_run(RunRow("held", "flow", None, "pending", b"a", None, 1.0, 1.0))
    store.create_run(RunRow("told", "flow", None, "running", b"a", None, 1.0, 1.0))
    worker = WorkerRow("far", "elsewhere", 1, None, 0.0, 1e12)
    (first,) = store.claim(worker, 10.0, 10.0, 1, run_id="held")
    store.release("far", [("held", first.lease)])
    store.claim(worker, 11.0, 11.0, 1, run_id="held")
    store.request_cancel("told", 11.0)
    store.commit(Progress("told", run=RunUpdate("running", 12.0, clear_cancel=True)))
    dest = tmp_path / "copy.db"
    store.backup(dest)
    with sqlite3.connect(dest) as raw:
        rows = raw.execute(
            "SELECT id, owner, lease, claimed_at, cancel_requested FROM runs ORDER BY id"
        ).fetchall()
        assert raw.execute("SELECT count(*) FROM workers").fetchone() == (0,)
    assert rows == [("held", None, 2, 10.0, 0), ("told", None, 0, None, 2)]
    copy = SQLiteStore(dest)
    try:
        claimed = copy.claim(WorkerRow("near", "here", 1, None, 0.0, 1e12), 20.0, 20.0, 5)
        assert sorted((c.run.id, c.lease) for c in claimed) == [("held", 3), ("told", 1)]
    finally:
        copy.close()


# -- one snapshot --------------------------------------------------------------------------


def step_entry(run_id: str, position: int, status: str = E_RUNNING) -> EntryRow:
    """A step at position, in flight or completed."""
    finished = 3.0 if status == E_COMPLETED else None
    outcome = b"out" if status == E_COMPLETED else None
    return EntryRow(
        run_id, position, "step", "s", "k", "k", status, 1, 0, 2.0, finished, None, outcome
    )


def test_writes_committed_while_the_backup_reads_are_not_in_it(
    store: PostgresStore, url: str, schema: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another session commits after the runs were read and before the log, mailboxes,
    values and queues are: the copy holds none of it, as of the moment the runs were
    read. (Tables read each as of its own moment would hold a run whose log went on
    past its row, and a log entry of a run it does not have.)"""
    store.create_run(RunRow("r1", "flow", None, "running", b"a", None, 1.0, 1.0))
    store.commit(Progress("r1", insert=step_entry("r1", 0)))
    before = contents(store)
    other = PostgresStore(url, schema=schema)
    original = NewDatabase.add_runs

    def add_runs_then_others_write(self: NewDatabase, runs: Any) -> None:
        original(self, runs)
        end = RunUpdate(COMPLETED, 4.0, finished_at=4.0, result=b"r")
        other.commit(Progress("r1", update=step_entry("r1", 0, E_COMPLETED), run=end))
        other.create_run(RunRow("r2", "flow", None, "running", b"a", None, 5.0, 5.0))
        other.commit(Progress("r2", insert=step_entry("r2", 0), publish=(("k", b"v"),)))
        other.send_signal("r2", "go", b"p", 6.0)
        other.set_queue(QueueConfig("late", concurrency=1))

    monkeypatch.setattr(NewDatabase, "add_runs", add_runs_then_others_write)
    try:
        store.backup(tmp_path / "copy.db")
    finally:
        other.close()
    assert contents(store) != before  # the writes were committed
    assert sqlite_contents(tmp_path / "copy.db") == before


def test_a_backup_whose_session_is_killed_mid_read_leaves_no_file(
    store: PostgresStore, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.create_run(RunRow("r1", "flow", None, "running", b"a", None, 1.0, 1.0))
    store.commit(Progress("r1", insert=step_entry("r1", 0)))
    made: list[psycopg.Connection[Any]] = []
    connect = psycopg.connect

    def recorded(*args: Any, **kwargs: Any) -> psycopg.Connection[Any]:
        made.append(connect(*args, **kwargs))
        return made[-1]

    original = NewDatabase.add_runs

    def add_runs_then_kill(self: NewDatabase, runs: Any) -> None:
        original(self, runs)
        (session,) = made  # the backup's own
        with connect(url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (session.info.backend_pid,))

    monkeypatch.setattr(psycopg, "connect", recorded)
    monkeypatch.setattr(NewDatabase, "add_runs", add_runs_then_kill)
    with pytest.raises(ce.DatabaseError, match="backup of PostgreSQL at .* failed"):
        store.backup(tmp_path / "copy.db")
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary
    monkeypatch.undo()
    store.backup(tmp_path / "copy.db")  # the store itself is unharmed
    assert sqlite_contents(tmp_path / "copy.db")["logs"]["r1"] == store.load_log("r1")


def consistent(store: Store, run: RunRow) -> list[EntryRow]:
    """The run's log, checked against its status: positions without a gap, every entry
    but the last completed, and the last in flight unless the run finished."""
    log = store.load_log(run.id)
    assert [e.position for e in log] == list(range(len(log)))
    assert all(e.status == E_COMPLETED for e in log[:-1]), run.id
    if run.status in FINISHED:
        assert run.status == COMPLETED and log and log[-1].status == E_COMPLETED, run.id
        assert run.result is not None
    elif log:
        assert log[-1].status == E_RUNNING, (run.id, run.status, log[-1].status)
    return log


def test_a_backup_taken_while_a_worker_writes_holds_every_run_as_of_one_moment(
    url: str, schema: str, tmp_path: Path
) -> None:
    dest = tmp_path / "busy.db"
    STOP.clear()
    enough = threading.Event()

    def start_more(engine: ce.Engine) -> None:
        # Short runs start all along, so runs end while the backup reads.
        k = 0
        while not enough.is_set():
            engine.start(ticks, 3, id=f"short-{k}")
            k += 1
            enough.wait(0.01)

    with ce.Engine(url, schema=schema, workflows=FLOWS, durability="normal") as source:
        for i in range(2):
            source.start(ticks, 10**9, id=f"long-{i}")  # on until STOP
        # Threads to spare for the short runs: a run holds one while it is driven.
        with source.worker(threads=6):
            starter = threading.Thread(target=start_more, args=(source,))
            starter.start()
            try:
                # Bounds against hanging, not measures.
                assert wait_until(lambda: len(source.runs(status="completed")) >= 5, 120, 0.02)
                source.backup(dest)
                copied = sqlite_contents(dest)
                in_copy = sum(len(log) for log in copied["logs"].values())
                assert wait_until(
                    lambda: sum(source.store.log_length(r.id) for r in source.runs()) > in_copy,
                    120,
                    0.02,
                )  # the worker went on writing: the copy is a moment, not the end
            finally:
                enough.set()
                starter.join()
                STOP.set()
        final = contents(source.store)

    runs = copied["runs"]
    assert {r.status for r in runs} >= {"completed", "running"}
    with ce.Engine(dest, workflows=FLOWS) as copy:
        for run in runs:
            log = consistent(copy.store, run)
            # What the copy holds as done is what the server holds: only later entries differ.
            assert [e for e in log if e.status == E_COMPLETED] == final["logs"][run.id][
                : len([e for e in log if e.status == E_COMPLETED])
            ]
        copy.run_until_idle()  # STOP is set: every run ends at its next step
        for run in runs:
            assert copy.get_run(run.id).result() == len(copy.history(run.id))


# -- export and import across stores ----------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Call the command line in-process; returns (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_waiting_run_moves_from_sqlite_to_postgresql_and_back_and_completes(
    url: str, schema: str, tmp_path: Path
) -> None:
    db = tmp_path / "app.db"
    with ce.Engine(db, workflows=FLOWS) as lite:
        lite.start(waits, 1, id="w1")
        lite.run_until_idle()
        lite.signal("w1", "note", "kept")
        moved = json.loads(json.dumps(lite.export_run("w1")))  # through real JSON
    with ce.Engine(url, schema=schema, workflows=FLOWS) as pg:
        run = pg.import_run(moved)
        assert run.status == "waiting" and pg.published("w1", "stage") == "waiting at 2"
        assert [m.name for m in pg.store.mailbox("w1")] == ["note"]
        pg.signal("w1", "go", "on postgres")
        pg.run_until_idle()
        assert run.result() == {"y": 2, "payload": "on postgres"}
        # And back: a run started on the server, moved to a new SQLite file.
        pg.start(waits, 2, id="w2")
        pg.run_until_idle()
        back = json.loads(json.dumps(pg.export_run("w2")))
        history = [(e.kind, e.name, e.status, e.value) for e in pg.history("w2")]
    with ce.Engine(tmp_path / "new.db", workflows=FLOWS) as lite:
        run = lite.import_run(back)
        assert [(e.kind, e.name, e.status, e.value) for e in lite.history("w2")] == history
        lite.signal("w2", "go", "on sqlite")
        lite.run_until_idle()
        assert run.result() == {"y": 3, "payload": "on sqlite"}


def test_the_cli_exports_from_a_file_imports_into_a_server_and_backs_it_up(
    url: str, schema: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, moved, dest = tmp_path / "app.db", tmp_path / "w1.json", tmp_path / "copy.db"
    with ce.Engine(db, workflows=FLOWS) as lite:
        lite.start(waits, 1, id="w1")
        lite.run_until_idle()
    code, out, err = run_cli(capsys, "export", "w1", "--db", str(db))
    assert code == 0, err
    moved.write_text(out)
    # A password in the URL (ignored by the test server's trust auth) is never printed.
    server = url.replace("postgres@", "postgres:hunter2@", 1) + f"?schema={schema}"
    code, out, err = run_cli(capsys, "import", str(moved), "--db", server)
    assert (code, out, err) == (0, "imported run 'w1' (waiting)\n", "")
    code, out, err = run_cli(capsys, "backup", str(dest), "--db", server)
    assert code == 0 and err == "" and "hunter2" not in out and str(dest) in out
    code, out, err = run_cli(capsys, "backup", str(dest), "--db", server)
    assert code == 1 and "already exists" in err and "hunter2" not in err
    # replay reads the server through a backup of one snapshot, into a temporary file.
    code, out, err = run_cli(capsys, "replay", "--db", server, "--import", __name__)
    assert code == 0 and "replayed 1 run from" in out and "1 ok" in out, (out, err)
    assert "hunter2" not in out + err and "postgres:***@" in out
    code, out, err = run_cli(capsys, "replay", str(dest), "--import", __name__)
    assert code == 0 and "1 ok" in out
    with ce.Engine(dest, workflows=FLOWS) as copy:
        copy.signal("w1", "go", 5)
        copy.run_until_idle()
        assert copy.get_run("w1").result() == {"y": 2, "payload": 5}
