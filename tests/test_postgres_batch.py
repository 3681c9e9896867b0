"""The PostgreSQL store's group commit: a batch of leased progress in one statement.

The statement (store/postgres/batch.py, FAST) must leave the schema, and tell every
progress, exactly what writing the batch one by one does: a property over random
batches with leases taken, entries raced, cancels asked for, generations moved,
runs ending (waking their parent), progress the statement does not take and
progress that makes it fail. And it must read each run's row as the last writer
committed it, not as its snapshot saw it.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from unittest import mock

import hypothesis.strategies as st
import psycopg
import pytest
from helpers import wait_until
from hypothesis import example, given
from postgres_server import fresh_schema, pg_schemas, server_url

from contengine.store.base import (
    COMPLETED,
    E_COMPLETED,
    E_RUNNING,
    FAILED,
    RUNNING,
    WAITING,
    EntryRow,
    Progress,
    RunUpdate,
)
from contengine.store.postgres import PostgresStore
from contengine.store.postgres import batch as pg_batch

__all__ = ["pg_schemas"]  # a fixture

OWNER = "w"
RUNS = 12  # r0 .. r11: the odd ones children of "p", which waits for them, the even
# ones of "q", which runs (a child's end wakes a parent only while it waits)
PARENTS = ("p", "q")
NEVER = float("inf")


@pytest.fixture
def url() -> str:
    """The test server's URL."""
    return server_url()


@pytest.fixture
def two_stores(url: str, pg_schemas: list[str]) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores, each in a fresh schema."""
    made = [PostgresStore(url, schema=fresh_schema(pg_schemas), durability="normal")]
    made.append(PostgresStore(url, schema=fresh_schema(pg_schemas), durability="normal"))
    yield made[0], made[1]
    for s in made:
        s.close()


@dataclass(frozen=True)
class Plan:
    """One run's part of a batch, and the state of its row before it."""

    kind: str
    lease_taken: bool = False
    raced: bool = False  # step 0's attempts moved on underneath
    cancel: bool = False  # the row asks for a cancel
    unless: bool = False  # the progress must not pass a cancel
    clear: bool = False  # the progress delivers the cancel (with a run update)
    moved: bool = False  # the progress expects generation 1; the row is at 0


KINDS = ["plain", "plain+run", "first", "finish", "fail", "recorded", "wait", "dup"]
# Progress the statement does not take: written one by one in the same transaction.
OTHER_KINDS = ["publish", "unleased"]
plans = st.builds(
    Plan,
    kind=st.sampled_from(KINDS + OTHER_KINDS),
    lease_taken=st.booleans(),
    raced=st.booleans(),
    cancel=st.booleans(),
    unless=st.booleans(),
    clear=st.booleans(),
    moved=st.booleans(),
)


def in_flight(run_id: str, position: int) -> EntryRow:
    return EntryRow(run_id, position, "step", "s", f"k{position}", f"s({position})", E_RUNNING,
                    1, 0, 2.0)  # fmt: skip


def completed(run_id: str, position: int, value: bytes = b"v") -> EntryRow:
    e = in_flight(run_id, position)
    e.status, e.finished_at, e.outcome = E_COMPLETED, 3.0, value + run_id.encode()
    return e


def progress_for(run_id: str, plan: Plan) -> Progress:
    """The progress the plan asks for (step 0 is in flight before it)."""
    p = Progress(run_id, update=completed(run_id, 0), insert=in_flight(run_id, 1),
                 expect_attempts=1, lease=(OWNER, 1), unless_cancelled=plan.unless)  # fmt: skip
    if plan.kind == "first":
        p.update, p.expect_attempts = None, None
    elif plan.kind == "plain+run":
        p.run = RunUpdate(RUNNING, 5.0)
    elif plan.kind == "finish":
        p.insert, p.run = None, RunUpdate(COMPLETED, 5.0, finished_at=5.0, result=b"r")
    elif plan.kind == "fail":
        p.insert = None
        p.run = RunUpdate(FAILED, 6.0, finished_at=6.0, error=b"e", error_text="E",
                          unless_cancelled=True)  # fmt: skip
    elif plan.kind == "recorded":
        rec = completed(run_id, 1, b"now")
        rec.kind, rec.name = "now", "now"
        p.recorded, p.insert = (rec,), in_flight(run_id, 2)
    elif plan.kind == "wait":
        p.run = RunUpdate(WAITING, 7.0, due_at=NEVER)
    elif plan.kind == "dup":
        p.update, p.expect_attempts, p.insert = None, None, in_flight(run_id, 0)
    elif plan.kind == "publish":
        p.publish = (("k", b"v" + run_id.encode()),)
    elif plan.kind == "unleased":
        p.lease = None
    if plan.clear:
        p.run = p.run or RunUpdate(RUNNING, 8.0)
        p.run.clear_cancel = True
    if plan.moved:
        p.expect_generation = 1
    return p


def reset(store: PostgresStore, batch: list[tuple[str, Plan]]) -> None:
    """Empty the store, then the runs r0 .. r11, p and q, leased to OWNER (lease 1),
    each with step 0 in flight, their rows as the plans say."""
    with store._writer.transaction() as conn:
        for table in ("runs", "log", "mailbox", "published"):  # cheaper than TRUNCATE here
            conn.execute(f"DELETE FROM {table}")  # (a few rows; no new files to fsync)
        ids = [f"r{i}" for i in range(RUNS)] + list(PARENTS)
        conn.execute(
            "INSERT INTO runs (id, workflow, status, args, created_at, updated_at, due_at, "
            "parent_id, owner, lease) SELECT id, 'wf', CASE WHEN id = 'p' THEN 'waiting' "
            "ELSE 'running' END, '\\x00', 1, 1, CASE WHEN id = 'p' THEN 'Infinity'::float8 END, "
            "CASE WHEN id IN ('p', 'q') THEN NULL WHEN right(id, 1) IN ('1', '3', '5', '7', "
            "'9') THEN 'p' ELSE 'q' END, %s, 1 "
            "FROM unnest(%s::text[]) AS id",
            (OWNER, ids),
        )
        conn.execute(
            "INSERT INTO log (run_id, position, kind, name, key, text, status, attempts, "
            "crashes, started_at) SELECT id, 0, 'step', 's', 'k0', 's(0)', 'running', 1, 0, 2 "
            "FROM unnest(%s::text[]) AS id",
            (ids,),
        )
        for run_id, plan in batch:
            if plan.lease_taken:
                # Another worker (even runs), or this worker again with a new lease.
                conn.execute(
                    "UPDATE runs SET lease = 2, owner = CASE WHEN right(id, 1) IN ('0', '2', "
                    "'4', '6', '8') THEN 'thief' ELSE owner END WHERE id = %s",
                    (run_id,),
                )
            if plan.raced:
                conn.execute("UPDATE log SET attempts = 2 WHERE run_id = %s", (run_id,))
            if plan.cancel:
                conn.execute("UPDATE runs SET cancel_requested = 1 WHERE id = %s", (run_id,))


def dump(store: PostgresStore) -> tuple[list[Any], ...]:
    """Every row the progress writes touch."""
    return (
        store._reader.read("SELECT * FROM log ORDER BY run_id, position"),
        store._reader.read(
            "SELECT id, status, updated_at, due_at, finished_at, result, error, error_text, "
            "owner, lease, cancel_requested, generation FROM runs ORDER BY id"
        ),
        store._reader.read("SELECT * FROM published ORDER BY run_id, key"),
    )


def write(store: PostgresStore, batch: list[tuple[str, Plan]], fast: bool) -> tuple[Any, ...]:
    """Write the batch (queued, then flushed); what each progress was told, and the rows."""
    reset(store, batch)
    fits = pg_batch.fits if fast else (lambda p: False)
    with (
        mock.patch.object(pg_batch, "fits", fits),
        mock.patch.object(pg_batch, "settle", wraps=pg_batch.settle) as settled,
    ):
        tickets = [store.commit_later(progress_for(run_id, plan)) for run_id, plan in batch]
        store.flush()
    assert all(t.done for t in tickets)
    # The statement wrote the batch, unless it had nothing to write or it may have
    # failed (an entry already there) and the batch was written one by one.
    taken = [plan.kind for _, plan in batch if plan.kind not in OTHER_KINDS]
    if fast and taken and "dup" not in taken:
        assert settled.called
    told = [(type(t.error), str(t.error)) if t.error else t.cancel for t in tickets]
    return told, dump(store)


batches = st.lists(
    st.tuples(st.integers(0, RUNS + 1), plans), max_size=RUNS + 2, unique_by=lambda x: x[0]
)


def test_the_statement_leaves_what_writing_one_by_one_leaves(
    two_stores: tuple[PostgresStore, PostgresStore],
) -> None:
    """Same rows, same answer to each progress (error and message, or cancel flag)."""
    fast_store, slow_store = two_stores

    @given(batch=batches)
    @example(batch=[(RUNS, Plan("plain+run")), (1, Plan("finish"))])  # the parent runs on
    @example(batch=[(RUNS, Plan("wait")), (3, Plan("fail")), (5, Plan("finish"))])  # it waits
    @example(batch=[(2, Plan("finish"))])  # q runs: not woken
    def check(batch: list[tuple[int, Plan]]) -> None:
        # The parents first, when they have progress: one by one, a child's end then
        # wakes one after its own progress, as the statement does (it writes both at
        # once); and not with progress the statement does not take (written after it).
        named = sorted(
            ((f"r{i}" if i < RUNS else PARENTS[i - RUNS], plan) for i, plan in batch),
            key=lambda x: x[0] not in PARENTS,
        )
        named = [
            (n, Plan("plain") if n in PARENTS and plan.kind in OTHER_KINDS else plan)
            for n, plan in named
        ]
        fast = write(fast_store, named, fast=True)
        assert fast == write(slow_store, named, fast=False)
        for (_, plan), told in zip(named, fast[0], strict=True):
            if plan.lease_taken and plan.kind != "unleased":
                assert isinstance(told, tuple) and "no longer leased" in told[1]

    check()


def test_one_progress_alone_leaves_what_writing_it_one_by_one_leaves(
    two_stores: tuple[PostgresStore, PostgresStore],
) -> None:
    """A batch of one has a statement of its own (single.ONE): the same rows, the same
    answer."""
    fast_store, slow_store = two_stores

    @given(index=st.integers(0, RUNS + 1), plan=plans)
    @example(index=1, plan=Plan("finish"))  # wakes its parent, which waits
    @example(index=2, plan=Plan("fail"))  # its parent runs: not woken
    @example(index=3, plan=Plan("plain", cancel=True, clear=True))  # delivers the cancel
    @example(index=5, plan=Plan("plain", lease_taken=True))  # same owner, a newer lease
    def check(index: int, plan: Plan) -> None:
        batch = [(f"r{index}" if index < RUNS else PARENTS[index - RUNS], plan)]
        with mock.patch.object(pg_batch, "one_params", wraps=pg_batch.one_params) as one:
            fast = write(fast_store, batch, fast=True)
        assert fast == write(slow_store, batch, fast=False)
        assert one.called == (plan.kind not in OTHER_KINDS and plan.kind != "recorded")

    check()


def round_trips(store: PostgresStore, batch: list[Progress], fast: bool = True) -> list[Any]:
    """Queue and flush the batch: the tickets' errors, and the round trips to the server
    it took (the server's ReadyForQuery messages in libpq's trace of the connection)."""
    conn = store._writer.connect()
    fits = pg_batch.fits if fast else (lambda p: False)
    with tempfile.TemporaryFile() as trace, mock.patch.object(pg_batch, "fits", fits):
        conn.pgconn.trace(trace.fileno())
        try:
            tickets = [store.commit_later(p) for p in batch]
            store.flush()
        finally:
            conn.pgconn.untrace()
        trace.seek(0)
        lines = [x.replace("\t", " ") for x in trace.read().decode().splitlines()]
    return [t.error for t in tickets] + [sum(" ReadyForQuery" in x for x in lines)]


def test_a_batch_of_step_progress_is_one_round_trip(
    two_stores: tuple[PostgresStore, PostgresStore],
) -> None:
    """One run's step, or many runs' steps and ends: one statement, sent on its own (its
    own transaction). Progress the statement does not take joins it in a transaction:
    the rows locked, the statement, then that progress in a savepoint."""
    store, _ = two_stores
    names = [f"r{i}" for i in range(RUNS)]
    reset(store, [])
    assert round_trips(store, [progress_for("r0", Plan("plain+run"))]) == [None, 1]
    assert round_trips(store, [progress_for("r2", Plan("plain+run"))], fast=False) == [None, 6]
    reset(store, [])
    batch = [progress_for(n, Plan("finish" if n in ("r1", "r2") else "plain+run")) for n in names]
    assert round_trips(store, batch) == [None] * RUNS + [1]
    parent = store.get_run("p")
    assert parent is not None and parent.due_at == 5.0  # woken by r1's end
    reset(store, [])
    mixed = [progress_for(n, Plan("publish" if n == "r3" else "plain")) for n in names]
    # BEGIN, lock, statement, SAVEPOINT, update, insert, publish, RELEASE, COMMIT
    assert round_trips(store, mixed) == [None] * RUNS + [9]
    assert store.published("r3") == {"k": b"vr3"}
    assert len(store.load_log("r3")) == len(store.load_log("r4")) == 2


@pytest.mark.parametrize("clear", [False, True])
def test_the_statement_reads_a_row_as_a_concurrent_writer_committed_it(
    two_stores: tuple[PostgresStore, PostgresStore], url: str, clear: bool
) -> None:
    """A cancel asked for in another session, committed while the batch's statement
    waits for the row, is what the statement sees: it reports it (or delivers it), and
    its run update keeps the flag the other session wrote, not its snapshot's."""
    store, _ = two_stores
    reset(store, [])
    other = psycopg.connect(url)
    try:
        other.execute(f'SET search_path TO "{store.schema}"')
        other.execute("UPDATE runs SET cancel_requested = 1, due_at = 9 WHERE id = 'r0'")
        told: list[Any] = []

        def flush() -> None:
            batch = [progress_for("r0", Plan("plain+run", clear=clear)),
                     progress_for("r2", Plan("plain+run"))]  # fmt: skip
            tickets = [store.commit_later(p) for p in batch]
            store.flush()
            told.extend((t.error, t.cancel) for t in tickets)

        writer = threading.Thread(target=flush)
        writer.start()
        held_by = other.info.backend_pid
        assert wait_until(lambda: waiting_for_a_row(url, held_by), timeout=30)
        other.commit()
        writer.join()
    finally:
        other.close()
    assert told == [(None, not clear), (None, False)]
    assert store.pending_cancels(["r0", "r2"]) == (set() if clear else {"r0"})
    row = store.get_run("r0")
    assert row is not None and (row.status, row.updated_at, row.due_at) == (RUNNING, 5.0, None)


def waiting_for_a_row(url: str, behind: int) -> bool:
    """Whether some session waits for a lock the session of pid `behind` holds (never
    another test's sessions)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
            (behind,),
        ).fetchone()
        return row is not None and row[0] > 0
