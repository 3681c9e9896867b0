"""Wake-ups on PostgreSQL: LISTEN/NOTIFY for a run's start, a signal, a cancel and a
child's end, never for step progress; a listener that loses its connection gets it back.

A worker in another process runs with a poll interval of POLL seconds: a run it finishes
long before that was woken by a NOTIFY, not found by its polling. (What these tests
assert is that the run completes while the poll interval has not elapsed, with a wide
margin; the latency itself is measured by `contengine bench --db postgresql://...`.)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import wake_child
from helpers import wait_until
from postgres_server import fresh_schema, pg_schemas, server_url

import contengine as ce
from contengine.cli.main import main
from contengine.engine import engine as engine_module
from contengine.store.base import (
    COMPLETED,
    E_COMPLETED,
    E_RUNNING,
    EntryRow,
    Progress,
    RunRow,
    RunUpdate,
    WorkerRow,
)
from contengine.store.opening import open_store
from contengine.store.postgres import PostgresStore
from contengine.store.postgres.listen import APPLICATION, Listener
from contengine.store.postgres.sql import channel_of
from contengine.store.sqlite.store import SQLiteStore

__all__ = ["pg_schemas"]  # a fixture

TESTS = Path(__file__).parent
CHILD = "import wake_child; wake_child.main()"
POLL = 120.0  # the worker process's poll interval: far longer than any wait below
# A run woken by a NOTIFY completes in milliseconds; this is a bound against hanging
# on a loaded machine, still far inside the poll interval.
WOKEN_WITHIN = POLL / 4
MARK = "test-mark"


@pytest.fixture
def url() -> str:
    """The test server's URL."""
    return server_url()


@pytest.fixture
def schema(pg_schemas: list[str]) -> str:
    """A fresh schema name, dropped after the test."""
    return fresh_schema(pg_schemas)


@pytest.fixture
def engine(url: str, schema: str) -> Iterator[ce.Engine]:
    """This process's engine on the schema (no worker: the worker is another process).
    Its store is made here, so that it is this schema whatever the tests' store is."""
    store = PostgresStore(url, schema=schema)
    with ce.Engine(store=store, lease=60.0, workflows=wake_child.WORKFLOWS) as e:
        yield e


class WorkerProcess:
    """engine.work() in a child process on the schema, with a poll interval of POLL."""

    def __init__(self, url: str, schema: str, tmp: Path) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH")) if p)
        self.err_path = tmp / "worker.err"
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", CHILD, url, schema, str(POLL)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
            )

    def stop(self) -> None:
        """SIGTERM (a clean stop: the engine closes its connections), SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def errors(self) -> str:
        """What the worker wrote to stderr."""
        return self.err_path.read_text(errors="replace")


@pytest.fixture
def worker(url: str, schema: str, tmp_path: Path) -> Iterator[Callable[[], WorkerProcess]]:
    """Start the worker process when called (after the test has set its runs up)."""
    started: list[WorkerProcess] = []

    def start() -> WorkerProcess:
        started.append(WorkerProcess(url, schema, tmp_path))
        return started[-1]

    yield start
    for w in started:
        w.stop()


def listeners(url: str, schema: str) -> list[int]:
    """Server processes LISTENing on the schema's wake-up channel."""
    channel = channel_of(schema)
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND query = %s",
            (APPLICATION, f'LISTEN "{channel}"'),
        ).fetchall()
    return [int(r[0]) for r in rows]


def listening(url: str, schema: str, proc: WorkerProcess, not_pids: tuple[int, ...] = ()) -> int:
    """Wait until the worker process listens (on a connection not in not_pids); its pid."""
    found: list[int] = []

    def ready() -> bool:
        assert proc.proc.poll() is None, proc.errors()
        found[:] = [p for p in listeners(url, schema) if p not in not_pids]
        return bool(found)

    assert wait_until(ready, timeout=60, pause=0.02), proc.errors()
    return found[0]


def status_within_poll(run: ce.Run[Any], status: str, proc: WorkerProcess) -> None:
    """The run reaches status while the worker's poll interval has not elapsed."""
    reached = wait_until(lambda: run.status == status, timeout=WOKEN_WITHIN, pause=0.01)
    assert reached, f"run {run.id} is {run.status}, not {status}: {proc.errors()}"


# -- a worker in another process is woken --------------------------------------------


def test_a_start_wakes_a_worker_in_another_process(
    url: str, schema: str, engine: ce.Engine, worker: Callable[[], WorkerProcess]
) -> None:
    proc = worker()
    listening(url, schema, proc)
    run = engine.start(wake_child.quick)
    status_within_poll(run, "completed", proc)
    assert run.result() == 1


def test_a_signal_wakes_a_worker_in_another_process(
    url: str, schema: str, engine: ce.Engine, worker: Callable[[], WorkerProcess]
) -> None:
    run = engine.start(wake_child.signalled)
    engine.run_until_idle()  # set aside here, waiting: the worker never drove it
    assert run.status == "waiting"
    proc = worker()
    listening(url, schema, proc)
    engine.signal(run.id, "go", 7)
    status_within_poll(run, "completed", proc)
    assert run.result() == "went 7"


def test_a_cancel_wakes_a_worker_in_another_process(
    url: str, schema: str, engine: ce.Engine, worker: Callable[[], WorkerProcess]
) -> None:
    run = engine.start(wake_child.signalled)
    engine.run_until_idle()
    proc = worker()
    listening(url, schema, proc)
    assert engine.cancel(run.id)
    status_within_poll(run, "cancelled", proc)
    with pytest.raises(ce.Cancelled):
        run.result()


def test_a_child_ending_here_wakes_its_parent_in_another_process(
    url: str, schema: str, engine: ce.Engine, worker: Callable[[], WorkerProcess]
) -> None:
    run = engine.start(wake_child.parent)
    engine.run_until_idle()  # the parent waits for its child, which waits for "go"
    (child,) = engine.store.unfinished_descendants(run.id)
    assert (run.status, child.status) == ("waiting", "waiting")
    # This engine holds the child (the worker skips it), and signals it before the worker
    # starts: the worker's only way to the parent is the child's end, driven here.
    (claim,) = engine._holder.claim(engine.clock.now(), 1, run_id=child.id)
    engine.signal(child.id, "go", 1)
    proc = worker()
    listening(url, schema, proc)
    assert engine._dispatch.drive_claim(claim)
    status_within_poll(run, "completed", proc)
    assert run.result() == "[went 1]"


def test_a_listener_whose_connection_is_killed_reconnects_and_wakes_still_arrive(
    url: str, schema: str, engine: ce.Engine, worker: Callable[[], WorkerProcess]
) -> None:
    run = engine.start(wake_child.signalled)
    engine.run_until_idle()
    proc = worker()
    first = listening(url, schema, proc)
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s)", (first,)).fetchone() == (True,)
    listening(url, schema, proc, not_pids=(first,))
    engine.signal(run.id, "go", 2)
    status_within_poll(run, "completed", proc)
    assert "not listening for wake-ups" in proc.errors()


# -- what sends a NOTIFY -------------------------------------------------------------


class Heard:
    """A test connection LISTENing on a schema's channel."""

    def __init__(self, url: str, schema: str) -> None:
        self.url = url
        self.channel = channel_of(schema)
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute(f'LISTEN "{self.channel}"')

    def since(self) -> list[str]:
        """The payloads heard since the last call: a mark NOTIFY from another session,
        read back, ends the list (notifications arrive in commit order)."""
        with psycopg.connect(self.url, autocommit=True) as other:
            other.execute("SELECT pg_notify(%s, %s)", (self.channel, MARK))
        heard = []
        for note in self.conn.notifies(timeout=60):
            if note.payload == MARK:
                return heard
            heard.append(note.payload)
        raise AssertionError(f"the mark never came; heard {heard}")

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


@pytest.fixture
def heard(url: str, schema: str) -> Iterator[Heard]:
    """A LISTENing test connection (the schema's store must exist for the channel)."""
    h = Heard(url, schema)
    yield h
    h.close()


def test_step_progress_sends_no_notify(engine: ce.Engine, heard: Heard) -> None:
    assert heard.since() == []
    run = engine.start(wake_child.steps, 30)
    assert heard.since() == ["start"]
    assert run.result() == 30  # 31 commits of step progress and the run's end
    assert heard.since() == []


def test_each_kind_of_wake_up_sends_one_notify_and_nothing_else_does(
    url: str, schema: str, heard: Heard
) -> None:
    with contextlib.closing(PostgresStore(url, schema=schema)) as store:
        store.create_run(RunRow("p", "flow", None, "waiting", b"a", None, 1.0, 1.0))
        store.create_run(RunRow("busy", "flow", None, "running", b"a", None, 1.0, 1.0))
        kid = RunRow("p:0", "flow", None, "running", b"a", None, 1.0, 1.0, parent_id="p")
        store.create_run(kid)
        assert heard.since() == ["start", "start", "start"]
        store.create_run(RunRow("p", "flow", None, "pending", b"a", None, 1.0, 1.0))
        assert heard.since() == []  # not started: it exists
        store.send_signal("busy", "go", b"", 2.0)
        assert heard.since() == []  # a run that does not wait reads its mailbox itself
        store.send_signal("p", "go", b"", 2.0)
        assert heard.since() == ["signal"]
        entry = EntryRow("p:0", 0, "step", "s", "k", "k", E_RUNNING, 1, 0, 2.0)
        store.commit(Progress("p:0", insert=entry))
        done = EntryRow("p:0", 0, "step", "s", "k", "k", E_COMPLETED, 1, 0, 2.0, 3.0)
        store.commit(Progress("p:0", update=done, insert=EntryRow(
            "p:0", 1, "step", "s", "k2", "k2", E_RUNNING, 1, 0, 3.0)))  # fmt: skip
        assert heard.since() == []  # step progress
        store.commit(Progress("p:0", run=RunUpdate(COMPLETED, 4.0, finished_at=4.0)))
        assert heard.since() == ["child"]  # its parent waits
        assert store.request_cancel("busy", 5.0)
        assert heard.since() == ["cancel"]


@pytest.mark.parametrize("children", [1, 3])
def test_leased_ends_of_children_announce_their_waiting_parent_once(
    url: str, schema: str, heard: Heard, children: int
) -> None:
    """A worker's writes (one progress alone, or a batch of several in one statement)
    announce a waiting parent's wake-up as one-by-one writes do: once per commit."""
    with contextlib.closing(PostgresStore(url, schema=schema)) as store:
        store.create_run(RunRow("p", "flow", None, "waiting", b"a", None, 1.0, 1.0))
        for i in range(children):
            kid = RunRow(f"p:{i}", "flow", None, "pending", b"a", None, 1.0, 1.0, parent_id="p")
            store.create_run(kid)
        assert heard.since() == ["start"] * (children + 1)
        worker = WorkerRow("w", "host-w", 1, None, 1.0, 1e12)
        claims = store.claim(worker, 2.0, 2.0, children + 1, skip={"p"})
        assert sorted(c.run.id for c in claims) == [f"p:{i}" for i in range(children)]
        tickets = [
            store.commit_later(
                Progress(
                    c.run.id,
                    run=RunUpdate(COMPLETED, 4.0, finished_at=4.0),
                    lease=(worker.id, c.lease),
                )
            )
            for c in claims
        ]
        store.flush()
        assert all(t.done and t.error is None for t in tickets)
        assert heard.since() == ["child"]
        assert store.get_run("p").due_at == 4.0


# -- the listener itself ---------------------------------------------------------------


def test_a_store_listener_hears_other_sessions_only_and_reconnects(url: str, schema: str) -> None:
    woken = threading.Semaphore(0)
    with (
        contextlib.closing(PostgresStore(url, schema=schema)) as mine,
        contextlib.closing(PostgresStore(url, schema=schema)) as other,
    ):
        listener = mine.listen(woken.release)
        assert isinstance(listener, Listener)
        try:
            assert woken.acquire(timeout=60)  # once on connecting
            other.create_run(RunRow("a", "flow", None, "pending", b"a", None, 1.0, 1.0))
            assert woken.acquire(timeout=60)
            assert wait_until(lambda: listener.heard == 1)
            mine.create_run(RunRow("b", "flow", None, "pending", b"a", None, 1.0, 1.0))
            other.create_run(RunRow("c", "flow", None, "pending", b"a", None, 1.0, 1.0))
            assert woken.acquire(timeout=60)
            # Heard in commit order: b's (from the listener's own store) before c's.
            assert wait_until(lambda: listener.heard >= 2)
            assert listener.heard == 2
            (pid,) = listeners(url, schema)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            assert wait_until(lambda: listener.connects == 2, timeout=60)
            assert woken.acquire(timeout=60)  # once on connecting again
            other.create_run(RunRow("d", "flow", None, "pending", b"a", None, 1.0, 1.0))
            assert woken.acquire(timeout=60)
        finally:
            listener.close()
        # Closed here; the server process ends a moment later.
        assert wait_until(lambda: listeners(url, schema) == [], timeout=60)


def test_an_engine_closes_its_listener(url: str, schema: str) -> None:
    with ce.Engine(store=PostgresStore(url, schema=schema)) as engine, engine.worker(threads=1):
        assert wait_until(lambda: listeners(url, schema), timeout=60)
    assert wait_until(lambda: listeners(url, schema) == [], timeout=60)


def test_sqlite_has_no_listener(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite")
    try:
        assert store.listen(lambda: None) is None
    finally:
        store.close()


# -- the benchmark -----------------------------------------------------------------------


def test_bench_on_a_url_measures_wake_ups_both_ways_and_drops_its_schema(
    url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The benchmark's engines open the schema it names, as its worker processes do, even
    # where the tests' engines are sent to schemas of their own (tests/stores.py).
    monkeypatch.setattr(engine_module, "open_store", open_store)
    tiny = ["--steps", "20", "--rounds", "1", "--runs", "2", "--claim-runs", "8"]
    assert main(["bench", "--db", url, *tiny, "--remote-signals", "3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    metrics = doc["metrics"]
    assert {
        "pg_wake_notify",
        "pg_wake_notify_p99",
        "pg_wake_poll",
        "pg_wake_poll_p99",
    } <= set(metrics)
    for way in ("notify", "poll"):
        details = metrics[f"pg_wake_{way}"]["details"]
        assert details["signals"] == 3 and details["poll_s"] == 0.1
        assert len(details["to_completed_ms"]) == 3 and min(details["to_completed_ms"]) > 0
        assert metrics[f"pg_wake_{way}_p99"]["median"] == max(details["to_completed_ms"])
    assert metrics["pg_wake_notify_p99"]["target"] == "< 20 ms"
    with psycopg.connect(url, autocommit=True) as conn:
        schema = metrics["pg_wake_notify"]["details"]["schema"]
        assert conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (schema,)
        ).fetchone() == (0,)
