"""Bad input gives a clear error and leaves the database as it was (guarantee 4)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

import contengine as ce
from contengine.store.sqlite import store as sqlite_store

executed: list[str] = []
ARMED = {"halt": True}


class Crash(BaseException):
    """Stands in for the process dying in the middle of a step."""


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    executed.clear()
    ARMED["halt"] = True
    yield
    executed.clear()


@ce.step
def add_one(n: int) -> int:
    """A well-behaved step."""
    executed.append("add_one")
    return n + 1


@ce.step(name="bad_input.halt")
def halt(n: int) -> int:
    """Crashes the 'process' while armed."""
    executed.append("halt")
    if ARMED["halt"]:
        raise Crash
    return n


@ce.step
def make_connection() -> sqlite3.Connection:
    """Returns a live object that cannot be serialized."""
    executed.append("make_connection")
    return sqlite3.connect(":memory:")


@ce.workflow(name="bad_input.simple")
def simple(n: int) -> Generator[Any, Any, int]:
    """add_one then halt."""
    a = yield add_one(n)
    return (yield halt(a))


@ce.workflow(name="bad_input.connection")
def connection_flow() -> Generator[Any, Any, str]:
    """Yields a step whose result cannot be stored."""
    try:
        yield make_connection()
    except ce.SerializationError as exc:
        return f"caught: {exc}"
    return "stored a connection"


def dump(path: Path, table: str) -> list[tuple[Any, ...]]:
    """Every row of a table, read with the sqlite3 module."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
    finally:
        conn.close()


def run_row(path: Path, run_id: str = "r") -> tuple[Any, ...]:
    """A run's stored row without its note (a note may be reworded on each attempt)."""
    conn = sqlite3.connect(path)
    try:
        return tuple(
            conn.execute(
                "SELECT id, workflow, ref, status, args, args_key, created_at, updated_at, "
                "finished_at, due_at, result, error, error_text FROM runs WHERE id = ?",
                (run_id,),
            ).fetchone()
        )
    finally:
        conn.close()


def sql(path: Path, statement: str, params: tuple[Any, ...] = ()) -> None:
    """Run one write statement outside contengine."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(statement, params)
    finally:
        conn.close()


def crashed_run(path: Path, run_id: str = "r") -> None:
    """A run of `simple` whose add_one completed and whose halt is in flight."""
    with ce.Engine(path) as engine, pytest.raises(Crash):
        engine.run(simple, 1, id=run_id)
    ARMED["halt"] = False


# -- definitions ----------------------------------------------------------------------


def plain(n: int) -> int:
    return n


async def coroutine(n: int) -> int:
    return n


async def async_generator(n: int) -> Any:
    yield n


@pytest.mark.parametrize(
    ("fn", "why"),
    [
        (plain, "not a generator function"),
        (coroutine, "async function"),
        (async_generator, "async function"),
    ],
    ids=["plain", "async", "async_generator"],
)
def test_workflow_must_be_a_generator_function(fn: Callable[..., Any], why: str) -> None:
    """@ce.workflow refuses other functions at decoration, saying why, and registers nothing."""
    with pytest.raises(ce.WorkflowDefinitionError, match=why) as info:
        ce.workflow(name=f"bad_input.def.{fn.__name__}")(fn)
    assert fn.__qualname__ in str(info.value)
    assert "yield" in str(info.value)
    with pytest.raises(ce.WorkflowNotFound):
        ce.Engine().start(f"bad_input.def.{fn.__name__}", 1)


# -- invalid yields ---------------------------------------------------------------------


def _generator() -> Generator[int, None, None]:
    yield 1


@pytest.mark.parametrize(
    ("make", "shown"),
    [
        (lambda: 42, ["42", "(int)"]),
        (lambda: "charge", ["'charge'", "(str)"]),
        (lambda: add_one, ["<step", "(Step)", "call the step"]),
        (_generator, ["<generator object", "(generator)", "yield from"]),
    ],
    ids=["int", "str", "uncalled_step", "generator"],
)
def test_invalid_yield_names_the_value_and_leaves_the_run_stuck(
    tmp_path: Path, make: Callable[[], Any], shown: list[str]
) -> None:
    """Yielding a non-request raises InvalidYield; the run is stuck, not failed."""

    @ce.workflow(name=f"bad_input.yield.{shown[1]}")
    def flow() -> Generator[Any, Any, None]:
        yield make()

    path = tmp_path / "app.db"
    with ce.Engine(path) as engine:
        with pytest.raises(ce.InvalidYield) as info:
            engine.run(flow, id="r")
        for part in [*shown, "position 0", "not a request"]:
            assert part in str(info.value)
        assert engine.history("r") == []
        assert engine.get_run("r").status == "pending"
        assert engine.get_run("r").note is not None
    row_before = run_row(path)

    with ce.Engine(path) as engine:
        report = engine.run_until_idle()
        assert isinstance(report.stuck["r"], ce.InvalidYield)
        assert engine.get_run("r").status == "pending"
        assert engine.history("r") == []
    assert run_row(path) == row_before
    assert dump(path, "log") == []


def test_invalid_yield_after_a_step_keeps_the_steps_outcome(tmp_path: Path) -> None:
    """The step before a bad yield completed; fixing the code must not run it again."""
    name = "bad_input.yield_after_step"

    @ce.workflow(name=name)
    def flow(n: int) -> Generator[Any, Any, int]:
        a = yield add_one(n)
        yield a  # forgot to call a step
        return a

    path = tmp_path / "app.db"
    with ce.Engine(path) as engine:
        with pytest.raises(ce.InvalidYield, match="position 1"):
            engine.run(flow, 1, id="r")
        assert engine.get_run("r").status == "running"
    assert executed == ["add_one"]
    log_rows = dump(path, "log")

    with ce.Engine(path) as engine:
        assert isinstance(engine.run_until_idle().stuck["r"], ce.InvalidYield)
    assert dump(path, "log") == log_rows

    @ce.workflow(name=name)
    def flow(n: int) -> Generator[Any, Any, int]:  # type: ignore[no-redef]  # the fixed code
        a = yield add_one(n)
        return a

    with ce.Engine(path) as engine:
        assert engine.get_run("r").result() == 2
        (entry,) = engine.history("r")
        assert (entry.status, entry.attempts, entry.crashes) == ("completed", 1, 0)
    assert executed == ["add_one"], "a completed step ran again"


# -- serialization ----------------------------------------------------------------------


@ce.workflow(name="bad_input.takes_anything")
def takes_anything(first: Any, *, extra: Any = None) -> Generator[Any, Any, None]:
    """Accepts any arguments."""
    yield add_one(1)


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: ((sqlite3.connect(":memory:"),), {}), "argument 0"),
        (lambda: ((1,), {"extra": (i for i in range(3))}), "argument 'extra'"),
    ],
    ids=["connection_positional", "generator_keyword"],
)
def test_unserializable_argument_is_refused_and_nothing_is_written(
    tmp_path: Path, make: Callable[[], tuple[tuple[Any, ...], dict[str, Any]]], named: str
) -> None:
    """start() names the argument that cannot be serialized and records no run."""
    path = tmp_path / "app.db"
    args, kwargs = make()
    with ce.Engine(path) as engine:
        with pytest.raises(ce.SerializationError) as info:
            engine.start(takes_anything, *args, id="r", **kwargs)
        assert named in str(info.value)
        assert "Connection" in str(info.value) or "generator" in str(info.value)
        assert engine.runs() == []
        with pytest.raises(ce.RunNotFound):
            engine.get_run("r")
    assert dump(path, "runs") == []
    assert dump(path, "log") == []


def test_unserializable_step_result_is_a_failed_attempt(tmp_path: Path) -> None:
    """A result that cannot be stored fails the step with SerializationError at the yield."""
    with ce.Engine(tmp_path / "app.db") as engine:
        result = engine.run(connection_flow, id="r")
        assert result.startswith("caught: ")
        assert "make_connection" in result and "position 0" in result
        (entry,) = engine.history("r")
        assert entry.status == "failed"
        assert entry.attempts == 1
        assert isinstance(entry.error, ce.SerializationError)
        assert "SerializationError" in (entry.error_text or "")
    assert executed == ["make_connection"]


# -- unknown workflows ----------------------------------------------------------------------


def test_unknown_workflow_on_recovery_leaves_the_run_stuck(tmp_path: Path) -> None:
    """A run whose workflow can be neither found nor imported is kept as it is."""
    path = tmp_path / "app.db"
    crashed_run(path)
    sql(
        path,
        "UPDATE runs SET workflow = ?, ref = ? WHERE id = 'r'",
        ("gone.checkout", "no_such_module_xyz:checkout"),
    )
    log_rows = dump(path, "log")

    with ce.Engine(path) as engine:
        report = engine.run_until_idle()
        err = report.stuck["r"]
        assert isinstance(err, ce.WorkflowNotFound)
        assert "gone.checkout" in str(err)
        assert "no_such_module_xyz" in str(err)
        run = engine.get_run("r")
        with pytest.raises(ce.WorkflowNotFound):
            run.result()
        assert run.status == "running"
        assert run.note is not None and "gone.checkout" in run.note
        assert "r" in engine.stuck()
    assert dump(path, "log") == log_rows
    assert executed == ["add_one", "halt"]

    # The code is back under its old name: the run picks up where it was.
    sql(path, "UPDATE runs SET workflow = ?, ref = NULL WHERE id = 'r'", (simple.name,))
    with ce.Engine(path) as engine:
        assert engine.get_run("r").result() == 2
    assert executed == ["add_one", "halt", "halt"]


def test_start_by_unknown_name() -> None:
    """engine.start('nope') says the workflow cannot be found."""
    engine = ce.Engine()
    with pytest.raises(ce.WorkflowNotFound, match="nope"):
        engine.start("nope")
    assert engine.runs() == []


# -- files that are not ours ------------------------------------------------------------------


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


@pytest.mark.parametrize(
    "content",
    [os.urandom(4096), b"order_id,cents\no-1,500\n" * 50, b"\x00" * 100],
    ids=["random_bytes", "csv_text", "zeros"],
)
def test_file_that_is_not_a_database_is_refused_untouched(tmp_path: Path, content: bytes) -> None:
    """A non-database file gives DatabaseError, and not one byte changes."""
    path = tmp_path / "data.bin"
    path.write_bytes(content)
    with pytest.raises(ce.DatabaseError) as info:
        ce.Engine(path)
    assert isinstance(info.value, ce.ContengineError)
    assert "not an SQLite database" in str(info.value)
    assert path.read_bytes() == content
    assert _siblings(path) == ["data.bin"]


def test_sqlite_database_of_another_application_is_refused_untouched(tmp_path: Path) -> None:
    """Someone else's SQLite file is named as such and left alone."""
    path = tmp_path / "other.db"
    sql(path, "CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    sql(path, "INSERT INTO invoices (total) VALUES (9.5)")
    content = path.read_bytes()
    with pytest.raises(ce.DatabaseError, match="another application") as info:
        ce.Engine(path)
    assert "invoices" in str(info.value)
    assert path.read_bytes() == content
    assert dump(path, "invoices") == [(1, 9.5)]


def test_database_from_a_newer_version_is_refused_untouched(tmp_path: Path) -> None:
    """A file with a newer schema version names both versions and is not changed."""
    path = tmp_path / "app.db"
    crashed_run(path)
    sql(path, "PRAGMA user_version = 99")
    content = path.read_bytes()
    with pytest.raises(ce.DatabaseError) as info:
        ce.Engine(path)
    message = str(info.value)
    assert "99" in message
    assert f"up to {sqlite_store.SCHEMA_VERSION}" in message
    assert "upgrade" in message
    assert path.read_bytes() == content


# -- corrupt payloads ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [b"garbage", b"P\x80\x05not a pickle", b""],
    ids=["unknown_tag", "bad_pickle", "empty"],
)
def test_corrupt_outcome_leaves_the_run_stuck_and_the_log_intact(
    tmp_path: Path, garbage: bytes
) -> None:
    """A damaged recorded outcome raises CorruptPayload on resume; nothing is rewritten."""
    path = tmp_path / "app.db"
    crashed_run(path)
    sql(
        path,
        "UPDATE log SET outcome = ? WHERE id = (SELECT num << 32 FROM runs WHERE id = 'r')",
        (garbage,),
    )
    log_rows = dump(path, "log")

    with ce.Engine(path) as engine:
        with pytest.raises(ce.CorruptPayload) as info:
            engine.get_run("r").result()
        assert "position 0" in str(info.value)
        report = engine.run_until_idle()
        assert isinstance(report.stuck["r"], ce.CorruptPayload)
        assert engine.get_run("r").status == "running"
        assert engine.get_run("r").note is not None
    assert dump(path, "log") == log_rows
    assert executed == ["add_one", "halt"], "a step ran after a corrupt outcome"


# -- locks ----------------------------------------------------------------------------------------


def test_locked_database_raises_then_works_once_released(tmp_path: Path) -> None:
    """A writer holding the lock past busy_timeout gives DatabaseLocked; nothing is lost."""
    path = tmp_path / "app.db"
    ARMED["halt"] = False
    engine = ce.Engine(path, busy_timeout=0.2)
    try:
        engine.start(simple, 1, id="before")
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            started = time.monotonic()
            with pytest.raises(ce.DatabaseLocked) as info:
                engine.start(simple, 2, id="during")
            assert time.monotonic() - started < 3
            message = str(info.value)
            assert "locked" in message and "busy_timeout" in message
            assert "Nothing was written" in message
            assert isinstance(info.value, ce.DatabaseError)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()

        assert [r.id for r in engine.runs()] == ["before"]
        engine.start(simple, 2, id="during")
        report = engine.run_until_idle()
        assert sorted(report.finished) == ["before", "during"]
        assert engine.get_run("before").result() == 2
        assert engine.get_run("during").result() == 3
    finally:
        engine.close()


def test_lock_held_by_another_thread_is_waited_for_within_busy_timeout(tmp_path: Path) -> None:
    """A lock released before busy_timeout is simply waited out."""
    path = tmp_path / "app.db"
    engine = ce.Engine(path, busy_timeout=5.0)
    try:
        blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        blocker.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.2, lambda: blocker.execute("ROLLBACK"))
        release.start()
        engine.start(simple, 1, id="r")
        release.join()
        blocker.close()
        assert [r.id for r in engine.runs()] == ["r"]
    finally:
        engine.close()


# -- migrations -----------------------------------------------------------------------------------


def _add_importance(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE runs ADD COLUMN importance INTEGER NOT NULL DEFAULT 0")


def _columns(path: Path, table: str) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
    finally:
        conn.close()


def _user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def test_forward_migration_upgrades_an_existing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening a file one version behind runs the next migration; runs stay readable."""
    path = tmp_path / "app.db"
    crashed_run(path)
    current = sqlite_store.SCHEMA_VERSION
    assert _user_version(path) == current
    monkeypatch.setattr(sqlite_store, "SCHEMA_VERSION", current + 1)
    monkeypatch.setitem(sqlite_store.MIGRATIONS, current, _add_importance)

    with ce.Engine(path) as engine:
        assert _user_version(path) == current + 1
        assert "importance" in _columns(path, "runs")
        assert [r.id for r in engine.runs()] == ["r"]
        assert engine.get_run("r").result() == 2
        assert [e.status for e in engine.history("r")] == ["completed", "completed"]
    with ce.Engine(path) as engine:  # already migrated: opens without migrating again
        assert engine.get_run("r").status == "completed"

    monkeypatch.undo()
    with pytest.raises(ce.DatabaseError, match=f"schema version {current + 1}"):
        ce.Engine(path)


def test_a_version_1_file_is_migrated_to_the_current_schema(tmp_path: Path) -> None:
    """A file written before signals existed gains the mailbox and keeps its runs."""
    path = tmp_path / "app.db"
    crashed_run(path)
    conn = sqlite3.connect(path)  # take the file back to version 1, as the v1 code wrote it
    with conn:
        for index in ("runs_due", "runs_by_owner", "runs_by_queue", "step_slots_by_queue"):
            conn.execute(f"DROP INDEX {index}")
        for table in ("workers", "queues", "step_slots", "mailbox", "published", "attempts"):
            conn.execute(f"DROP TABLE {table}")
        for column in ("queue", "priority", "owner", "lease", "claimed_at", "forked_from"):
            conn.execute(f"ALTER TABLE runs DROP COLUMN {column}")
        conn.execute("ALTER TABLE runs DROP COLUMN generation")
        conn.execute("ALTER TABLE runs DROP COLUMN tags")
        conn.execute("DROP INDEX runs_by_parent")
        conn.execute("ALTER TABLE runs DROP COLUMN cancel_requested")
        conn.execute("ALTER TABLE runs DROP COLUMN parent_id")
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    assert _user_version(path) == 1
    assert "cancel_requested" not in _columns(path, "runs")
    with ce.Engine(path) as engine:
        assert _user_version(path) == sqlite_store.SCHEMA_VERSION
        assert {"cancel_requested", "parent_id"} <= set(_columns(path, "runs"))
        assert engine.get_run("r").result() == 2


def test_failed_migration_leaves_the_file_at_its_old_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration that raises is rolled back whole."""
    path = tmp_path / "app.db"
    crashed_run(path)
    runs_before = dump(path, "runs")

    def half_done(conn: sqlite3.Connection) -> None:
        _add_importance(conn)
        raise RuntimeError("migration bug")

    current = sqlite_store.SCHEMA_VERSION
    monkeypatch.setattr(sqlite_store, "SCHEMA_VERSION", current + 1)
    monkeypatch.setitem(sqlite_store.MIGRATIONS, current, half_done)
    with pytest.raises(RuntimeError, match="migration bug"):
        ce.Engine(path)
    assert _user_version(path) == current
    assert "importance" not in _columns(path, "runs")
    assert dump(path, "runs") == runs_before
