"""engine.start_many(): many runs recorded in one transaction, each as start() records
it, on SQLite and PostgreSQL; a start that start() would refuse refuses the whole list,
naming that start, and nothing is written."""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from postgres_server import fresh_schema, pg_schemas, server_url

import contengine as ce
from contengine.store.postgres import PostgresStore
from contengine.store.postgres.sql import channel_of

__all__ = ["pg_schemas"]  # a fixture


@ce.step(name="start_many.add")
def add(x: int, y: int) -> int:
    return x + y


@ce.workflow(name="start_many.sum")
def summed(x: int, y: int = 0) -> Generator[Any, Any, int]:
    return (yield add(x, y))


@ce.workflow(name="start_many.other")
def other(x: int) -> Generator[Any, Any, int]:
    yield ce.now()
    return x


class _Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("no pickling here")


@pytest.fixture(params=["sqlite", "postgres"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An SQLite file, or a fresh PostgreSQL schema's URL (dropped after the test)."""
    if request.param == "sqlite":
        yield str(tmp_path / "e.db")
        return
    url = server_url()
    made: list[str] = []
    schema = fresh_schema(made)
    try:
        yield f"{url}?schema={schema}"
    finally:
        from postgres_server import drop_schema

        for name in made:
            drop_schema(name)


@pytest.fixture
def engine(where: str) -> Iterator[ce.Engine]:
    with ce.Engine(where, workflows=[summed, other]) as e:
        yield e


def test_runs_are_recorded_in_order_each_as_start_records_it(engine: ce.Engine) -> None:
    runs = engine.start_many(
        [
            (summed, (1,)),
            (summed, [2], {"y": 3, "id": "b", "tags": ["t", "u"], "queue": "q", "priority": 5}),
            ("start_many.other", (7,), {"id": "c"}),
        ]
    )
    assert [r.workflow for r in runs] == ["start_many.sum", "start_many.sum", "start_many.other"]
    assert runs[1].id == "b" and runs[2].id == "c" and len(runs[0].id) == 32
    row = engine.store.get_run("b")
    assert row is not None
    assert (row.status, row.tags, row.queue, row.priority) == ("pending", ("t", "u"), "q", 5)
    single = engine.start(summed, 2, y=3, id="b2", tags=["t", "u"], queue="q", priority=5)
    alone = engine.store.get_run(single.id)
    assert alone is not None and alone.args_key == row.args_key
    engine.run_until_idle()
    assert [r.result() for r in runs] == [1, 5, 7]
    assert engine.start_many([]) == []


def test_an_existing_id_gives_the_existing_run_and_changes_nothing(engine: ce.Engine) -> None:
    first = engine.start(summed, 1, id="a")
    engine.run_until_idle()
    before = engine.store.get_run("a")
    runs = engine.start_many([(summed, (1,), {"id": "a"}), (summed, (2,), {"id": "n"})])
    assert runs[0] == first and runs[0].status == "completed"
    assert engine.store.get_run("a") == before
    again = engine.start_many([(summed, (2,), {"id": "n"}), (summed, (2,), {"id": "n"})])
    assert again == [runs[1], runs[1]]
    assert sorted(r.id for r in engine.runs()) == ["a", "n"]


def refused(engine: ce.Engine, starts: list[Any], error: type[Exception], match: str) -> None:
    """The list is refused with `error` naming start 1 (the second), and nothing is written."""
    before = sorted(r.id for r in engine.runs())
    with pytest.raises(error, match=match):
        engine.start_many(starts)
    assert sorted(r.id for r in engine.runs()) == before


def test_a_bad_id_refuses_the_list(engine: ce.Engine) -> None:
    good = (summed, (1,), {"id": "good"})
    refused(engine, [good, (summed, (1,), {"id": "a/0"})], ValueError, r"^start 1 .*'/'")
    refused(engine, [good, (summed, (1,), {"id": ""})], ValueError, r"^start 1 ")
    refused(engine, [good, (summed, (1,), {"id": 7})], ValueError, r"^start 1 ")


def test_names_no_database_can_keep_refuse_the_list(engine: ce.Engine) -> None:
    """A lone surrogate in an id, a tag or a queue name cannot be stored as text by
    either database: refused as start() refuses a bad name, naming the start (the
    store's UnicodeEncodeError came out of the write, naming nothing)."""
    good = (summed, (1,), {"id": "good"})
    refused(engine, [good, (summed, (1,), {"id": "a\ud800"})], ValueError, r"^start 1 .*surrogate")
    refused(engine, [good, (summed, (1,), {"tags": ["\udfff"]})], ValueError, r"^start 1 ")
    refused(engine, [good, (summed, (1,), {"queue": "q\ud800"})], ValueError, r"^start 1 ")
    with pytest.raises(ValueError, match="surrogate"):
        engine.start(summed, 1, id="\ud800")


def test_a_priority_no_database_can_keep_refuses_the_list(engine: ce.Engine) -> None:
    """Priorities are PostgreSQL integers (32 bits) on both stores: one beyond them is
    refused before anything is written, naming the start (it was a database error on
    PostgreSQL, an OverflowError on SQLite past 64 bits, and kept on SQLite between)."""
    good = (summed, (1,), {"id": "good"})
    for priority in (2**31, -(2**31) - 1, 2**70):
        refused(engine, [good, (summed, (1,), {"priority": priority})], ValueError, r"^start 1 ")
    runs = engine.start_many(
        [(summed, (1,), {"priority": 2**31 - 1}), (summed, (2,), {"priority": -(2**31)})]
    )
    assert [engine.store.get_run(r.id).priority for r in runs] == [2**31 - 1, -(2**31)]  # type: ignore[union-attr]


def test_an_unknown_workflow_refuses_the_list(engine: ce.Engine) -> None:
    starts = [(summed, (1,)), ("start_many.nowhere", ())]
    refused(engine, starts, ce.WorkflowNotFound, r"^start 1 .*start_many.nowhere")


def test_arguments_too_large_refuse_the_list(engine: ce.Engine) -> None:
    engine.serde._max_bytes = lambda: 10_000  # type: ignore[attr-defined]
    starts = [(other, (1,)), (other, (b"x" * 20_000,), {"id": "big"})]
    refused(engine, starts, ce.SerializationError, r"^start 1 .*argument 0 of run 'big'.*large")


def test_arguments_that_cannot_be_stored_or_taken_refuse_the_list(engine: ce.Engine) -> None:
    starts = [(other, (1,)), (other, (_Unpicklable(),), {"id": "u"})]
    refused(engine, starts, ce.SerializationError, r"^start 1 .*argument 0 of run 'u'")
    refused(engine, [(other, (1,)), (other, (1, 2))], TypeError, r"^start 1 .*cannot take")
    refused(engine, [(other, (1,)), (other, (1,), {"queue": ""})], ValueError, r"^start 1 ")
    refused(engine, [(other, (1,)), (other, (1,), {"priority": "hi"})], TypeError, r"^start 1 ")
    refused(engine, [(other, (1,)), (other, 1)], TypeError, r"^start 1 .*a start is a tuple")


def test_an_id_taken_for_other_arguments_refuses_the_list(engine: ce.Engine) -> None:
    """Found in the database (inside the transaction, after the first insert) or earlier
    in the same list: either way nothing is written."""
    engine.start(summed, 1, id="a")
    starts = [(summed, (5,), {"id": "new"}), (summed, (2,), {"id": "a"})]
    refused(engine, starts, ce.IdConflict, r"^start 1 .*'a' already exists with other arg")
    starts = [(summed, (5,), {"id": "new"}), (other, (1,), {"id": "a"})]
    refused(engine, starts, ce.IdConflict, r"^start 1 .*for workflow 'start_many.sum'")
    starts = [(summed, (5,), {"id": "new"}), (summed, (6,), {"id": "new"})]
    refused(engine, starts, ce.IdConflict, r"^start 1 .*'new' already exists \(from start 0\)")


def test_a_worker_is_woken_by_the_runs_started(where: str) -> None:
    engine = ce.Engine(where, workflows=[summed], poll_interval=60.0)
    with engine, engine.worker(threads=2):
        runs = engine.start_many([(summed, (i,), {"y": 1}) for i in range(20)])
        assert [r.result(timeout=30) for r in runs] == list(range(1, 21))


def test_sqlite_writes_the_list_in_one_transaction(tmp_path: Path) -> None:
    with ce.Engine(tmp_path / "e.db", workflows=[summed]) as engine:
        store: Any = engine.store
        calls = 0
        begin = store._begin

        def counted(conn: Any) -> float:
            nonlocal calls
            calls += 1
            return begin(conn)  # type: ignore[no-any-return]

        store._begin = counted
        engine.start_many([(summed, (i,)) for i in range(50)])
        assert calls == 1
        assert len(engine.runs()) == 50


def test_postgres_sends_one_notify_for_the_list_and_none_when_nothing_is_new(
    pg_schemas: list[str],
) -> None:
    url = server_url()
    schema = fresh_schema(pg_schemas)
    store = PostgresStore(url, schema=schema)
    with ce.Engine(store=store, workflows=[summed]) as engine:
        with psycopg.connect(url, autocommit=True) as listen:
            listen.execute(f'LISTEN "{channel_of(schema)}"')
            ids = [f"r{i}" for i in range(600)]  # more than one INSERT's worth
            engine.start_many([(summed, (1,), {"id": i}) for i in ids])
            engine.start_many([(summed, (1,), {"id": i}) for i in ids[:10]])
            with psycopg.connect(url, autocommit=True) as other:
                other.execute("SELECT pg_notify(%s, 'mark')", (channel_of(schema),))
            heard = []
            for note in listen.notifies(timeout=30):
                if note.payload == "mark":
                    break
                heard.append(note.payload)
        assert heard == ["start"]
        assert len(engine.runs()) == 600


def test_runs_started_at_once_from_threads_are_each_recorded_once(where: str) -> None:
    """Two lists naming the same ids, started at once: one run per id, and both lists
    get the same runs."""
    with ce.Engine(where, workflows=[summed]) as engine:
        got: list[list[ce.Run[Any]]] = []
        ids = [f"r{i}" for i in range(30)]

        def start() -> None:
            got.append(engine.start_many([(summed, (1,), {"id": i}) for i in ids]))

        threads = [threading.Thread(target=start) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert got[0] == got[1]
        assert sorted(r.id for r in engine.runs()) == sorted(ids)


def test_lists_in_opposite_orders_from_two_engines_are_each_recorded_once(where: str) -> None:
    """Two engines (two connections) start lists that name the same ids in opposite
    orders, at once: one run per id, both lists get them all, and neither fails (on
    PostgreSQL two transactions inserting the same keys in opposite orders would wait
    for each other: a deadlock, one of them refused)."""
    ids = [f"r{i:04d}" for i in range(2000)]
    with (
        ce.Engine(where, workflows=[summed]) as first,
        ce.Engine(where, workflows=[summed]) as second,
    ):
        errors: list[BaseException] = []
        go = threading.Barrier(2)

        def start(engine: ce.Engine, order: list[str]) -> None:
            try:
                go.wait()
                for _ in range(3):
                    engine.start_many([(summed, (1,), {"id": i}) for i in order])
            except BaseException as exc:  # noqa: BLE001 - checked below
                errors.append(exc)

        threads = [
            threading.Thread(target=start, args=(first, ids)),
            threading.Thread(target=start, args=(second, ids[::-1])),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert sorted(r.id for r in first.runs()) == ids
