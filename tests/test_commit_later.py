"""Queued commits (Store.commit_later + flush) and the bulk write of a batch.

A queued progress is written by the next flush() or commit(), never before; the
bulk write of plain step progress leaves the file and every progress's outcome
exactly as writing the batch one by one does (a property, over random batches
with leases taken and entries raced).
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import hypothesis.strategies as st
import pytest
from hypothesis import given

from contengine import LeaseLost
from contengine.errors import DatabaseError, DatabaseLocked
from contengine.store.base import (
    COMPLETED,
    E_COMPLETED,
    E_RUNNING,
    RUNNING,
    EntryRow,
    Progress,
    RunRow,
    RunUpdate,
)
from contengine.store.sqlite import bulk as sqlite_bulk
from contengine.store.sqlite.store import SQLiteStore

OWNER = "w"
BULK_WRITES = [0]  # batches the bulk path wrote (it may give way to one by one)


def open_store(path: Path, runs: int) -> SQLiteStore:
    """A store with `runs` runs leased to OWNER (lease 1), each with step 0 in flight."""
    store = SQLiteStore(path, durability="normal")
    for i in range(runs):
        store.create_run(RunRow(f"r{i}", "wf", None, RUNNING, b"args", None, 1.0, 1.0))
    store._conn.execute("UPDATE runs SET owner = ?, lease = 1", (OWNER,))
    store.commit_many([Progress(f"r{i}", insert=in_flight(f"r{i}", 0)) for i in range(runs)])
    return store


def in_flight(run_id: str, position: int) -> EntryRow:
    return EntryRow(
        run_id, position, "step", "s", f"k{position}", f"s({position})", E_RUNNING, 1, 0, 2.0
    )


def completed(run_id: str, position: int, value: bytes = b"v") -> EntryRow:
    e = in_flight(run_id, position)
    e.status, e.finished_at, e.outcome = E_COMPLETED, 3.0, value
    return e


def next_step(run_id: str) -> Progress:
    """A driver's plain progress: step 0's outcome and step 1 in flight, under lease 1."""
    return Progress(run_id, update=completed(run_id, 0), insert=in_flight(run_id, 1),
                    expect_attempts=1, lease=(OWNER, 1))  # fmt: skip


def dump(path: Path) -> tuple[list[Any], list[Any]]:
    """Everything the progress writes touch, read through a connection of its own."""
    with sqlite3.connect(path) as conn:
        log = conn.execute("SELECT * FROM log ORDER BY id").fetchall()
        runs = conn.execute(
            "SELECT id, status, updated_at, due_at, finished_at, result, owner, lease "
            "FROM runs ORDER BY num"
        ).fetchall()
    return log, runs


def test_a_queued_commit_is_written_by_the_next_flush(tmp_path: Path) -> None:
    """Nothing reaches the file before flush(); then every queued progress, at once."""
    path = tmp_path / "q.db"
    store = open_store(path, 3)
    try:
        tickets = [store.commit_later(next_step(f"r{i}")) for i in range(3)]
        assert not any(t.done for t in tickets)
        assert [r[5] for r in dump(path)[0]] == ["running"] * 3  # step 0 of each, as before
        store.flush()
        assert all(t.done and t.error is None for t in tickets)
        log, _ = dump(path)
        assert sum(1 for r in log if r[5] == "completed") == 3
        assert sum(1 for r in log if r[5] == "running") == 3
    finally:
        store.close()


def test_a_commit_writes_the_queued_progress_with_its_own(tmp_path: Path) -> None:
    """A thread that commits and waits writes what was queued before it, in its batch."""
    path = tmp_path / "q.db"
    store = open_store(path, 2)
    try:
        ticket = store.commit_later(next_step("r0"))
        store.commit(Progress("r1", update=completed("r1", 0), expect_attempts=1))
        assert ticket.done and ticket.error is None
        log, _ = dump(path)
        assert [r[5] for r in log] == ["completed", "running", "completed"]
    finally:
        store.close()


def test_a_taken_lease_fails_only_its_own_progress_in_a_bulk_batch(tmp_path: Path) -> None:
    """Another worker took r1: its progress gets LeaseLost, the others are written."""
    path = tmp_path / "q.db"
    store = open_store(path, 4)
    try:
        store._conn.execute("UPDATE runs SET owner = 'thief', lease = 2 WHERE id = 'r1'")
        tickets = [store.commit_later(next_step(f"r{i}")) for i in range(4)]
        store.flush()
        assert [type(t.error) for t in tickets] == [type(None), LeaseLost, type(None), type(None)]
        log, _ = dump(path)
        assert len(log) == 4 + 3  # r1 has only its step 0, still in flight
    finally:
        store.close()


@dataclass(frozen=True)
class Plan:
    """One run's part of a batch."""

    kind: str  # plain, plain+run, first, finish, recorded
    lease_taken: bool
    raced: bool  # the entry's attempts moved on underneath (another driver)
    # How the entries look: the statements differ for a text equal to its key, an
    # outcome after failed attempts (its error text kept) and an outcome past SHORT_BLOB.
    keyed: bool = False
    error_text: bool = False
    long_outcome: bool = False


plans = st.builds(
    Plan,
    kind=st.sampled_from(["plain", "plain+run", "first", "finish", "recorded"]),
    lease_taken=st.booleans(),
    raced=st.booleans(),
    keyed=st.booleans(),
    error_text=st.booleans(),
    long_outcome=st.booleans(),
)


def progress_for(run_id: str, plan: Plan) -> Progress:
    p = _progress_for(run_id, plan)
    for e in (p.update, p.insert):
        if e is not None and plan.keyed:
            e.text = e.key
    if p.update is not None:
        if plan.error_text:
            p.update.error_text = "Traceback: an earlier attempt failed"
        if plan.long_outcome:
            p.update.outcome = bytes(range(256)) * 40  # 10,240 bytes
    return p


def _progress_for(run_id: str, plan: Plan) -> Progress:
    if plan.kind == "first":
        return Progress(run_id, insert=in_flight(run_id, 1), lease=(OWNER, 1))
    p = next_step(run_id)
    if plan.kind == "plain+run":
        p.run = RunUpdate(RUNNING, 5.0, due_at=None)
    elif plan.kind == "finish":
        p.insert = None
        p.run = RunUpdate(COMPLETED, 5.0, finished_at=5.0, result=b"r")
    elif plan.kind == "recorded":
        rec = completed(run_id, 1, b"rec")
        rec.kind, rec.name = "now", "now"
        p.recorded = (rec,)
        p.insert = in_flight(run_id, 2)
    return p


def counted(conn: Any, slots: Any, num_of: Any) -> None:
    """sqlite_bulk.write_plain, counting the batches it wrote."""
    WRITE_PLAIN(conn, slots, num_of)
    BULK_WRITES[0] += 1


WRITE_PLAIN = sqlite_bulk.write_plain


def write(path: Path, batch: list[tuple[int, Plan]], runs: int, bulk: bool) -> tuple[Any, ...]:
    """Write the planned batch (queued, then flushed) on a fresh file; each progress's
    error type (None: written) and the file's content."""
    store = open_store(path, runs)
    try:
        for i, plan in batch:
            if plan.lease_taken:
                store._conn.execute(
                    "UPDATE runs SET owner = 'thief', lease = 2 WHERE id = ?", (f"r{i}",)
                )
            if plan.raced:
                store._conn.execute(
                    "UPDATE log SET attempts = 2 "
                    "WHERE id = (SELECT num << 32 FROM runs WHERE id = ?)",
                    (f"r{i}",),
                )
        with (
            mock.patch.object(
                sqlite_bulk, "plain", sqlite_bulk.plain if bulk else (lambda p: False)
            ),
            mock.patch.object(sqlite_bulk, "write_plain", counted),
        ):
            tickets = [store.commit_later(progress_for(f"r{i}", plan)) for i, plan in batch]
            store.flush()
        assert all(t.done for t in tickets)
        outcomes = [None if t.error is None else type(t.error) for t in tickets]
    finally:
        store.close()
    return outcomes, dump(path)


@given(batch=st.lists(st.tuples(st.integers(0, 11), plans), max_size=12, unique_by=lambda x: x[0]))
def test_the_bulk_write_leaves_what_writing_one_by_one_leaves(
    batch: list[tuple[int, Plan]],
) -> None:
    """Same file, same error for each progress, whatever the mix of plain progress,
    other progress, taken leases and raced entries."""
    with tempfile.TemporaryDirectory() as tmp:
        bulk = write(Path(tmp) / "bulk.db", batch, 12, bulk=True)
        one_by_one = write(Path(tmp) / "one.db", batch, 12, bulk=False)
    assert bulk == one_by_one
    rows = {row[0]: row for row in bulk[1][0]}
    for i, plan in batch:
        sent = progress_for(f"r{i}", plan)
        written = bulk[0][[j for j, _ in batch].index(i)] is None
        for e in (sent.update, sent.insert):
            if e is None or not written:
                continue
            # What was written is what was sent (runs are numbered from 1 in order).
            row = rows[((i + 1) << 32) | e.position]
            if e is sent.insert:  # (an update leaves the text as the insert wrote it)
                assert row[4] == (None if e.text == e.key else e.text)
            assert (row[5], row[11], row[12]) == (e.status, e.outcome, e.error_text)
    for (_, plan), outcome in zip(batch, bulk[0], strict=True):
        if plan.lease_taken:
            assert outcome is LeaseLost
        elif plan.raced and plan.kind != "first":
            assert outcome is not None and issubclass(outcome, DatabaseError)
        else:
            assert outcome is None


@pytest.mark.parametrize("runs", [1, 501])
def test_batches_longer_than_one_statement_are_written_whole(tmp_path: Path, runs: int) -> None:
    """A batch's leases are read in queries of at most so many runs; all of it is written."""
    BULK_WRITES[0] = 0
    outcomes, (log, _) = write(
        tmp_path / "q.db", [(i, Plan("plain", False, False)) for i in range(runs)], runs, bulk=True
    )
    assert outcomes == [None] * runs
    assert sum(1 for r in log if r[5] == "completed") == runs
    assert BULK_WRITES[0] == (1 if runs > 1 else 0)  # a batch of one is written as it is


def test_an_interrupted_writer_tells_queued_commits_they_were_not_written(
    tmp_path: Path,
) -> None:
    """A KeyboardInterrupt in the thread writing a batch (the caller of commit()) must
    not leave the queued commits of that batch looking durable."""
    path = tmp_path / "q.db"
    store = open_store(path, 3)
    real = sqlite_bulk.plain
    calls = [0]

    def interrupted(p: Progress) -> bool:
        calls[0] += 1
        if calls[0] == 1:
            raise KeyboardInterrupt
        return real(p)

    try:
        tickets = [store.commit_later(next_step(f"r{i}")) for i in range(2)]
        with mock.patch.object(sqlite_bulk, "plain", interrupted), pytest.raises(KeyboardInterrupt):
            store.commit(Progress("r2", update=completed("r2", 0), expect_attempts=1))
        assert all(t.done and isinstance(t.error, DatabaseError) for t in tickets)
        assert [r[5] for r in dump(path)[0]] == ["running"] * 3  # nothing was written
        assert not store._writing
    finally:
        store.close()


def test_a_store_closed_after_a_failed_direct_write_lets_go_of_the_file(tmp_path: Path) -> None:
    """The direct write's kept cursor holds a statement that failed (another process had
    the write lock); closing the store still closes the database: its WAL is merged and
    removed, and every commit is in the file itself."""
    path = tmp_path / "q.db"
    store = open_store(path, 2)
    store.commit(next_step("r1"))  # written on the kept cursor
    store._conn.execute("PRAGMA busy_timeout = 50")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    with pytest.raises(DatabaseLocked):
        store.commit(next_step("r0"))
    other.execute("ROLLBACK")
    other.close()
    store.close()
    store.close()  # a second close is no error
    assert sorted(os.listdir(tmp_path)) == ["q.db"]  # no -wal, no -shm: closed for real
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        statuses = [row[0] for row in conn.execute("SELECT status FROM log ORDER BY id")]
    assert statuses == ["running", "completed", "running"]  # r0 as before; r1 moved on
