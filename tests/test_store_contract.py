"""The Store contract: every store implementation must pass this suite unchanged.

Written against contengine.store.base only (Store and its rows): the tests ask for a
`store` (or `store_factory`, for more than one) and know nothing of how it keeps its
data. A new store joins by adding one fixture that makes its stores and naming it in
STORE_KINDS; tests about one store's own machinery are marked as such below.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from postgres_server import fresh_schema, pg_schemas, server_url

import contengine as ce
from contengine.store.base import (
    CANCELLED,
    COMPLETED,
    E_COMPLETED,
    E_FAILED,
    E_RETRYING,
    E_RUNNING,
    FAILED,
    INLINE_OUTCOME,
    PENDING,
    RUNNING,
    SLEEPING,
    WAITING,
    CancelArrived,
    EntryRow,
    Progress,
    QueueConfig,
    Rewind,
    RunRow,
    RunUpdate,
    Signal,
    Store,
    WorkerRow,
    run_digest,
)
from contengine.store.postgres import PostgresStore
from contengine.store.sqlite.store import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION
from contengine.store.sqlite.store import SQLiteStore

__all__ = ["pg_schemas"]  # a fixture, used by postgres_stores

# Makes a fresh, empty store in the directory given (one of its own per call).
StoreMaker = Callable[[Path], Store]
# Makes a fresh, empty store of the kind under test; each is closed after the test.
StoreFactory = Callable[[], Store]


# -- the stores under contract: one fixture per kind -------------------------------------


@pytest.fixture
def sqlite_file_stores() -> StoreMaker:
    """SQLite stores on a file."""
    return lambda directory: SQLiteStore(directory / "contract.db")


@pytest.fixture
def sqlite_memory_stores() -> StoreMaker:
    """SQLite stores in memory (":memory:")."""
    return lambda directory: SQLiteStore(":memory:")


@pytest.fixture
def postgres_stores(pg_schemas: list[str]) -> StoreMaker:
    """PostgreSQL stores, each in a fresh schema of the test server (dropped after)."""
    url = server_url()
    return lambda directory: PostgresStore(url, schema=fresh_schema(pg_schemas))


STORE_KINDS = ["sqlite_file_stores", "sqlite_memory_stores", "postgres_stores"]


@pytest.fixture(params=STORE_KINDS)
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Fresh, empty stores of one kind (each test runs once per kind)."""
    maker: StoreMaker = request.getfixturevalue(request.param)
    made: list[Store] = []

    def make() -> Store:
        directory = tmp_path / f"store{len(made)}"
        directory.mkdir()
        made.append(maker(directory))
        return made[-1]

    yield make
    for s in made:
        s.close()


@pytest.fixture
def store(store_factory: StoreFactory) -> Store:
    """A fresh, empty store of the kind under test."""
    return store_factory()


def run_row(run_id: str, created: float = 100.0, **fields: Any) -> RunRow:
    """A pending run with plain values in every column."""
    values: dict[str, Any] = {
        "workflow": "orders.checkout",
        "ref": "shop.flows:checkout",
        "status": PENDING,
        "args": b"P\x00args",
        "args_key": "'o-1', 500",
        "created_at": created,
        "updated_at": created,
    }
    values.update(fields)
    return RunRow(id=run_id, **values)


def entry(run_id: str, position: int, status: str = E_RUNNING, **fields: Any) -> EntryRow:
    """A log entry for step `charge` at position."""
    values: dict[str, Any] = {
        "kind": "step",
        "name": "charge",
        "key": f"'o-1', {position}",
        "text": f"'o-1', {position}",
        "attempts": 1,
        "crashes": 0,
        "started_at": 200.0 + position,
    }
    values.update(fields)
    return EntryRow(run_id, position, status=status, **values)


def started(store: Store, run_id: str, created: float = 100.0, **fields: Any) -> RunRow:
    """Create a run in the store and return the row."""
    row, created_new = store.create_run(run_row(run_id, created, **fields))
    assert created_new
    return row


# -- runs -------------------------------------------------------------------------------


def test_create_run_round_trips_every_field(store: Store) -> None:
    """What create_run stores is what get_run returns, bytes and None included."""
    row = run_row(
        "r1",
        args=b"\x00\xffraw bytes, never unpickled",
        args_key=None,
        ref=None,
        due_at=150.5,
    )
    assert store.create_run(row) == (row, True)
    assert store.get_run("r1") == row


def test_create_run_is_idempotent_by_id(store: Store) -> None:
    """A second create with the same id returns the stored run untouched, created False."""
    first = started(store, "r1", workflow="orders.checkout", args=b"first")
    again, created = store.create_run(
        run_row("r1", 999.0, workflow="other.flow", args=b"second", status=RUNNING)
    )
    assert created is False
    assert again == first
    assert store.get_run("r1") == first
    assert [r.id for r in store.list_runs()] == ["r1"]


def test_get_run_of_unknown_id_is_none(store: Store) -> None:
    """An unknown id is None, not an error."""
    assert store.get_run("nope") is None
    started(store, "r1")
    assert store.get_run("r2") is None


def test_list_runs_filters_and_orders_oldest_first(store: Store) -> None:
    """list_runs orders by creation time (not insertion) and filters by status/workflow."""
    started(store, "c", 30.0, workflow="a")
    started(store, "a", 10.0, workflow="b", status=RUNNING)
    started(store, "d", 40.0, workflow="a", status=RUNNING)
    started(store, "b", 20.0, workflow="a", status=COMPLETED)

    assert [r.id for r in store.list_runs()] == ["a", "b", "c", "d"]
    assert [r.id for r in store.list_runs(status=RUNNING)] == ["a", "d"]
    assert [r.id for r in store.list_runs(workflow="a")] == ["b", "c", "d"]
    assert [r.id for r in store.list_runs(status=RUNNING, workflow="a")] == ["d"]
    assert [r.id for r in store.list_runs(limit=2)] == ["a", "b"]
    assert store.list_runs(status=FAILED) == []
    assert store.list_runs(workflow="missing") == []


# -- the log ----------------------------------------------------------------------------


def test_load_log_is_ordered_by_position_and_per_run(store: Store) -> None:
    """load_log returns one run's entries in position order, whatever the write order."""
    started(store, "r1")
    started(store, "r2")
    for run_id, position in [("r1", 2), ("r2", 0), ("r1", 0), ("r1", 1), ("r2", 1)]:
        store.commit(Progress(run_id, insert=entry(run_id, position)))
    assert [e.position for e in store.load_log("r1")] == [0, 1, 2]
    assert [(e.run_id, e.position) for e in store.load_log("r2")] == [("r2", 0), ("r2", 1)]
    assert store.load_log("unknown") == []


def test_load_log_reads_a_window_and_log_length_counts(store: Store) -> None:
    """load_log(start, limit) reads part of a log; log_length says how long it is."""
    started(store, "r1")
    started(store, "r2")
    for position in range(7):
        store.commit(Progress("r1", insert=entry("r1", position)))
    store.commit(Progress("r2", insert=entry("r2", 0)))
    assert store.log_length("r1") == 7
    assert store.log_length("r2") == 1
    assert store.log_length("unknown") == 0
    assert [e.position for e in store.load_log("r1", 2, 3)] == [2, 3, 4]
    assert [e.position for e in store.load_log("r1", 5)] == [5, 6]
    assert store.load_log("r1", 7, 10) == []
    assert store.load_log("r1", 0, 0) == []


def test_an_update_with_stale_attempts_fails_and_writes_nothing(store: Store) -> None:
    """expect_attempts fences out a writer whose view of an entry is out of date."""
    started(store, "r1")
    store.commit(Progress("r1", insert=entry("r1", 0)))
    newer = entry("r1", 0, attempts=2, crashes=1)
    store.commit(Progress("r1", update=newer, expect_attempts=1))
    stale = entry("r1", 0, status=E_COMPLETED, finished_at=300.0, outcome=b"stale")
    with pytest.raises(ce.ContengineError):
        store.commit(Progress("r1", update=stale, insert=entry("r1", 1), expect_attempts=1))
    assert store.load_log("r1") == [newer]


def test_commit_writes_update_insert_and_run_together(store: Store) -> None:
    """One Progress: the previous entry's outcome, the next request and the run's state."""
    started(store, "r1")
    first = entry("r1", 0)
    store.commit(Progress("r1", insert=first, run=RunUpdate(RUNNING, 201.0)))

    first.status, first.finished_at, first.outcome = E_COMPLETED, 202.0, b"\x01outcome"
    second = entry("r1", 1)
    store.commit(Progress("r1", update=first, insert=second, run=RunUpdate(RUNNING, 202.0)))

    assert store.load_log("r1") == [first, second]
    run = store.get_run("r1")
    assert run is not None
    assert (run.status, run.updated_at) == (RUNNING, 202.0)


def test_a_write_fenced_by_a_lease_reads_the_cancel_flag(store: Store) -> None:
    """A store with leases says, with every fenced write, whether the run asks for a
    cancel (drives look for a cancel on their own only between writes)."""
    started(store, "r1")
    worker = WorkerRow("w1", "host", 1, None, 100.0, 10_000.0)
    (claim,) = store.claim(worker, 150.0, 150.0, 1)
    lease = (worker.id, claim.lease)
    first = entry("r1", 0)
    begun = Progress("r1", insert=first, run=RunUpdate(RUNNING, 201.0), lease=lease)
    assert not store.commit(begun)

    assert store.request_cancel("r1", 202.0) is True
    first.status, first.finished_at, first.outcome = E_COMPLETED, 203.0, b"\x01outcome"
    second = entry("r1", 1)
    assert store.commit(Progress("r1", update=first, insert=second, lease=lease, expect_attempts=1))

    # Queued and written in a batch (with another run's progress), the same.
    started(store, "r2")
    (claim2,) = store.claim(worker, 204.0, 204.0, 1, run_id="r2")
    lease2 = (worker.id, claim2.lease)
    second.status, second.finished_at, second.outcome = E_COMPLETED, 205.0, b"\x01outcome"
    tickets = [
        store.commit_later(Progress("r1", update=second, insert=entry("r1", 2), lease=lease,
                                    expect_attempts=1)),
        store.commit_later(Progress("r2", insert=entry("r2", 0), run=RunUpdate(RUNNING, 205.0),
                                    lease=lease2)),
    ]  # fmt: skip
    store.flush()
    told = [(t.done, t.error, t.cancel) for t in tickets]
    assert told == [(True, None, True), (True, None, False)]


def test_commit_update_writes_every_mutable_field(store: Store) -> None:
    """status, attempts, crashes, finished_at, due_at, outcome and error_text all persist."""
    started(store, "r1")
    e = entry("r1", 0)
    store.commit(Progress("r1", insert=e))
    e.status, e.attempts, e.crashes, e.due_at = E_RETRYING, 3, 1, 500.0
    e.error_text = "ValueError: card declined"
    store.commit(Progress("r1", update=e))
    assert store.load_log("r1") == [e]

    e.status, e.due_at, e.finished_at, e.outcome = E_FAILED, None, 510.0, b"\x02error"
    store.commit(Progress("r1", update=e))
    assert store.load_log("r1") == [e]


def test_run_update_writes_the_end_of_a_run(store: Store) -> None:
    """A finishing RunUpdate stores status, finished_at, result, error and error_text."""
    started(store, "ok")
    started(store, "bad")
    store.commit(Progress("ok", run=RunUpdate(COMPLETED, 300.0, finished_at=300.0, result=b"r")))
    store.commit(
        Progress(
            "bad",
            run=RunUpdate(FAILED, 301.0, finished_at=301.0, error=b"e", error_text="Traceback"),
        )
    )
    ok, bad = store.get_run("ok"), store.get_run("bad")
    assert ok is not None and bad is not None
    assert (ok.status, ok.finished_at, ok.result, ok.error) == (COMPLETED, 300.0, b"r", None)
    assert (bad.status, bad.error, bad.error_text) == (FAILED, b"e", "Traceback")
    assert ok.args == b"P\x00args" and ok.workflow == "orders.checkout"  # untouched


def test_commit_is_atomic(store: Store) -> None:
    """If the insert fails (same position twice), the update and run update roll back too."""
    started(store, "r1")
    first = entry("r1", 0)
    store.commit(Progress("r1", insert=first, run=RunUpdate(RUNNING, 201.0)))
    log_before = store.load_log("r1")
    run_before = store.get_run("r1")

    done = entry("r1", 0, E_COMPLETED, finished_at=250.0, outcome=b"value")
    duplicate = entry("r1", 0, name="refund")
    with pytest.raises(Exception):  # noqa: B017 - each store raises its driver's error
        store.commit(
            Progress(
                "r1",
                update=done,
                insert=duplicate,
                run=RunUpdate(COMPLETED, 250.0, finished_at=250.0, result=b"x"),
            )
        )
    assert store.load_log("r1") == log_before
    assert store.get_run("r1") == run_before

    # The store is still usable after the failed transaction.
    store.commit(Progress("r1", update=done, insert=entry("r1", 1)))
    assert [(e.position, e.status) for e in store.load_log("r1")] == [
        (0, E_COMPLETED),
        (1, E_RUNNING),
    ]


def test_commit_many_writes_every_runs_progress(store: Store) -> None:
    """A batch of progress for several runs lands whole."""
    for run_id in ("r1", "r2", "r3"):
        started(store, run_id)
    store.commit_many(
        [
            Progress("r1", insert=entry("r1", 0), run=RunUpdate(RUNNING, 201.0)),
            Progress("r2", insert=entry("r2", 0), run=RunUpdate(RUNNING, 202.0)),
            Progress("r3", run=RunUpdate(COMPLETED, 203.0, finished_at=203.0, result=b"r")),
        ]
    )
    assert [e.position for e in store.load_log("r1")] == [0]
    assert [e.position for e in store.load_log("r2")] == [0]
    assert store.load_log("r3") == []
    statuses = {r.id: r.status for r in store.list_runs()}
    assert statuses == {"r1": RUNNING, "r2": RUNNING, "r3": COMPLETED}


def test_commit_many_of_nothing_is_harmless(store: Store) -> None:
    """An empty batch writes nothing and does not fail."""
    started(store, "r1")
    store.commit_many([])
    assert store.load_log("r1") == []


# -- scheduling -------------------------------------------------------------------------


def _schedule(store: Store) -> None:
    started(store, "pending", 1.0)
    started(store, "due_past", 2.0, status=RUNNING, due_at=50.0)
    started(store, "due_now", 3.0, status=SLEEPING, due_at=100.0)
    started(store, "due_later", 4.0, status=RUNNING, due_at=150.0)
    started(store, "waiting", 5.0, status=WAITING, due_at=120.0)
    started(store, "running", 6.0, status=RUNNING)
    started(store, "completed", 7.0, status=COMPLETED, due_at=10.0)
    started(store, "failed", 8.0, status=FAILED)
    started(store, "cancelled", 9.0, status=CANCELLED, due_at=20.0)


def test_runnable_respects_due_at_and_finished_statuses(store: Store) -> None:
    """Unfinished runs with no due time or one at/before now, oldest first."""
    _schedule(store)
    assert store.runnable(100.0) == ["pending", "due_past", "due_now", "running"]
    assert store.runnable(120.0) == ["pending", "due_past", "due_now", "waiting", "running"]
    assert store.runnable(0.0) == ["pending", "running"]
    assert store.runnable(1000.0, limit=2) == ["pending", "due_past"]


def test_runnable_follows_commits(store: Store) -> None:
    """A run leaves the runnable set when it finishes or is given a future due time."""
    started(store, "r1")
    assert store.runnable(100.0) == ["r1"]
    store.commit(Progress("r1", run=RunUpdate(RUNNING, 101.0, due_at=160.0)))
    assert store.runnable(100.0) == []
    assert store.runnable(160.0) == ["r1"]
    store.commit(Progress("r1", run=RunUpdate(COMPLETED, 161.0, finished_at=161.0)))
    assert store.runnable(1000.0) == []


def test_next_due_is_the_earliest_unfinished_due_time(store: Store) -> None:
    """Finished runs and runs without a due time do not count."""
    assert store.next_due() is None
    started(store, "plain")
    started(store, "done", status=COMPLETED, due_at=5.0)
    assert store.next_due() is None
    _schedule(store)
    assert store.next_due() == 50.0
    store.commit(Progress("due_past", run=RunUpdate(COMPLETED, 60.0, finished_at=60.0)))
    assert store.next_due() == 100.0


# -- notes ------------------------------------------------------------------------------


def test_set_note_touches_nothing_else(store: Store) -> None:
    """A note is set and cleared without changing the run's other fields or its log."""
    row = started(store, "r1")
    store.commit(Progress("r1", insert=entry("r1", 0)))
    log = store.load_log("r1")

    store.set_note("r1", "stuck: workflow 'x' diverged at position 0")
    noted = store.get_run("r1")
    assert noted is not None
    assert noted.note == "stuck: workflow 'x' diverged at position 0"
    noted.note = None
    assert noted == row
    assert store.load_log("r1") == log

    store.set_note("r1", None)
    assert store.get_run("r1") == row
    store.set_note("unknown", "ignored")  # no such run: nothing happens
    assert store.get_run("unknown") is None


# -- garbage collection and backup ------------------------------------------------------


def _lived(
    store: Store, run_id: str, status: str | None, finished_at: float = 0.0, **fields: Any
) -> None:
    """A run with two log entries, a mailbox message and a published value; finished with
    status at finished_at, or left running when status is None."""
    started(store, run_id, **fields)
    store.commit(Progress(run_id, insert=entry(run_id, 0)))
    store.commit(
        Progress(
            run_id,
            update=entry(run_id, 0, E_COMPLETED, outcome=b"v0", finished_at=201.0),
            insert=entry(run_id, 1),
            publish=(("stage", b"one"),),
        )
    )
    store.send_signal(run_id, "approved", b"yes", 10.0)
    if status is not None:
        store.commit(Progress(run_id, run=RunUpdate(status, finished_at, finished_at=finished_at)))


# A forest of runs: each (parent, status, finished at); the parent is the run of that
# index if it came before, else none; status None leaves the run unfinished.
forests = st.lists(
    st.tuples(
        st.integers(0, 15),
        st.sampled_from([COMPLETED, FAILED, CANCELLED, None]),
        st.sampled_from([50.0, 100.0, 150.0]),
    ),
    max_size=12,
)


# A store per example (a schema of the server on PostgreSQL): a tenth of the profile's.
@settings(
    max_examples=max(5, settings.default.max_examples // 10),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(forest=forests)
def test_count_deletable_is_what_deleting_until_none_is_left_deletes(
    store_factory: StoreFactory, forest: list[tuple[int, str | None, float]]
) -> None:
    """count_deletable (gc --dry-run) against a model of the rules, and against what
    delete_finished then deletes: trees leaves first, a run kept by any descendant."""
    store = store_factory()
    try:
        _check_count_deletable(store, forest)
    finally:
        store.close()  # now, not after the test: each example holds server connections


def _check_count_deletable(store: Store, forest: list[tuple[int, str | None, float]]) -> None:
    parents: dict[str, str | None] = {}
    statuses: dict[str, str | None] = {}
    finished: dict[str, float] = {}
    for i, (parent, status, at) in enumerate(forest):
        run_id = f"r{i}"
        parents[run_id] = f"r{parent}" if parent < i else None
        statuses[run_id], finished[run_id] = status, at
        started(store, run_id, parent_id=parents[run_id])
        if status is not None:
            store.commit(Progress(run_id, run=RunUpdate(status, at, finished_at=at)))

    def may_go(run_id: str) -> bool:
        parent = parents[run_id]
        return (
            statuses[run_id] is not None
            and finished[run_id] < 100.0
            and (parent is None or statuses[parent] is not None)
        )

    def goes(run_id: str) -> bool:
        children = [c for c, p in parents.items() if p == run_id]
        return may_go(run_id) and all(goes(c) for c in children)

    expected = {run_id for run_id in parents if goes(run_id)}
    assert store.count_deletable(100.0) == len(expected)
    assert {r.id for r in store.list_runs()} == set(parents)  # nothing deleted
    deleted = 0
    while True:
        batch = store.delete_finished(100.0, 3)
        deleted += batch
        if batch < 3:
            break
    assert deleted == len(expected)
    assert {r.id for r in store.list_runs()} == set(parents) - expected
    assert store.count_deletable(100.0) == 0


def _kept(store: Store, run_id: str) -> bool:
    """Whether the run and everything of it survived."""
    if store.get_run(run_id) is None:
        return False
    assert store.log_length(run_id) == 2 and store.load_log(run_id)[0].outcome == b"v0"
    assert store.published(run_id) == {"stage": b"one"}
    message = store.peek_signal(run_id, "approved")
    assert message is not None and message.payload == b"yes"
    return True


def _gone(store: Store, run_id: str) -> bool:
    """Whether the run and everything of it was deleted."""
    return (
        store.get_run(run_id) is None
        and store.load_log(run_id) == []
        and store.log_length(run_id) == 0
        and store.published(run_id) == {}
        and store.peek_signal(run_id, "approved") is None
    )


def test_delete_finished_deletes_only_old_finished_runs_free_of_unfinished_relatives(
    store: Store,
) -> None:
    """Old completed/failed/cancelled runs go with their logs, mailboxes and published
    values; unfinished runs, young runs, children of unfinished parents and parents
    with children left stay whole; trees go leaves first; batches respect the limit."""
    _lived(store, "old_done", COMPLETED, 50.0)
    _lived(store, "old_failed", FAILED, 60.0)
    _lived(store, "old_cancelled", CANCELLED, 70.0)
    _lived(store, "young_done", COMPLETED, 150.0)
    _lived(store, "unfinished", None)
    _lived(store, "parent", None)
    _lived(store, "parent/1", COMPLETED, 40.0, parent_id="parent")
    _lived(store, "tree", COMPLETED, 30.0)
    _lived(store, "tree/1", COMPLETED, 35.0, parent_id="tree")
    _lived(store, "tree/1/2", FAILED, 36.0, parent_id="tree/1")
    _lived(store, "busy", COMPLETED, 30.0)
    _lived(store, "busy/1", None, parent_id="busy")
    _lived(store, "recent_kid", COMPLETED, 30.0)
    _lived(store, "recent_kid/1", COMPLETED, 150.0, parent_id="recent_kid")
    deletable = {"old_done", "old_failed", "old_cancelled", "tree", "tree/1", "tree/1/2"}
    everyone = {r.id for r in store.list_runs()}

    assert store.count_deletable(100.0) == len(deletable)  # what gc --dry-run reports
    assert {r.id for r in store.list_runs()} == everyone  # and it deleted nothing
    assert store.delete_finished(100.0, 4) == 4  # one transaction, at most `limit` runs
    assert len(everyone - {r.id for r in store.list_runs()}) == 4
    assert store.delete_finished(100.0, 4) == 2  # fewer than the limit: none is left
    assert store.delete_finished(100.0, 4) == 0

    assert all(_gone(store, run_id) for run_id in deletable)
    assert all(_kept(store, run_id) for run_id in everyone - deletable)
    # Finished at exactly `before` is not older than it.
    assert store.delete_finished(150.0, 10) == 0
    # A new run under a deleted id starts with nothing of the old one.
    started(store, "old_done")
    assert store.load_log("old_done") == [] and store.published("old_done") == {}
    assert store.peek_signal("old_done", "approved") is None


def test_backup_never_overwrites_an_existing_file(store: Store, tmp_path: Path) -> None:
    """A backup onto an existing path fails with ContengineError and leaves the file as it was."""
    started(store, "r1")
    dest = tmp_path / "taken.db"
    dest.write_bytes(b"precious")
    with pytest.raises(ce.ContengineError, match="already exists"):
        store.backup(dest)
    assert dest.read_bytes() == b"precious"


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


def test_a_backup_is_an_sqlite_database_holding_the_same_runs(store: Store, tmp_path: Path) -> None:
    """Whatever the store, its backup is a new SQLite contengine database with every run,
    log entry, mailbox message, published value and queue as they were, and nothing
    beside it (no temporary file left)."""
    started(store, "r1", tags=("a", "b"), queue="q", priority=3, status=WAITING, due_at=1e300)
    done = entry("r1", 0, E_COMPLETED, finished_at=201.5, outcome=b"\x00out")
    store.commit(Progress("r1", insert=done, publish=(("stage", b"\x00one"),)))
    store.commit(Progress("r1", insert=entry("r1", 1, key="k", text="a longer text")))
    started(store, "r1/1", parent_id="r1", status=COMPLETED, result=b"r", finished_at=9.0)
    started(store, "r2", 50.0, status=FAILED, error=b"e", error_text="ValueError: no")
    started(store, "r3", 60.0, status=WAITING, due_at=float("inf"))
    store.send_signal("r1", "go", b"first", 300.0)
    store.send_signal("r3", "go", b"other", 301.0)
    store.send_signal("r1", "go", b"second", 302.0)
    store.request_cancel("r3", 303.0)
    store.set_queue(QueueConfig("q", concurrency=2, rate_limit=5, rate_period=60.0))
    dest = tmp_path / "copy.db"
    store.backup(dest)
    assert [p.name for p in tmp_path.iterdir() if not p.is_dir()] == ["copy.db"]
    copy = SQLiteStore(dest)
    try:
        assert copy.schema_version == SQLITE_SCHEMA_VERSION
        assert contents(copy) == contents(store)
        assert copy.pending_cancels(["r1", "r3"]) == {"r3"}
    finally:
        copy.close()


# -- signals, cancels, children, published values, restarts ----------------------------


def test_signals_are_kept_oldest_first_per_name_and_taken_by_a_commit(store: Store) -> None:
    started(store, "r1")
    store.send_signal("r1", "go", b"first", 300.0)
    store.send_signal("r1", "other", b"x", 301.0)
    store.send_signal("r1", "go", b"second", 302.0)
    first = store.peek_signal("r1", "go")
    assert first is not None and first.payload == b"first" and first.sent_at == 300.0
    assert store.peek_signal("r1", "nope") is None
    store.commit(Progress("r1", insert=entry("r1", 0), consume=first.seq))
    second = store.peek_signal("r1", "go")
    assert second is not None and second.payload == b"second"
    with pytest.raises(ce.ContengineError):  # taken already: the whole commit fails
        store.commit(Progress("r1", insert=entry("r1", 1), consume=first.seq))
    assert [e.position for e in store.load_log("r1")] == [0]


def test_a_signal_wakes_a_waiting_run_and_is_refused_for_unknown_or_finished_runs(
    store: Store,
) -> None:
    started(store, "r1", status=WAITING, due_at=float("inf"))
    store.send_signal("r1", "go", b"p", 300.0)
    assert store.runnable(300.0) == ["r1"]
    with pytest.raises(ce.RunNotFound):
        store.send_signal("nope", "go", b"p", 300.0)
    started(store, "r2", status=COMPLETED)
    with pytest.raises(ce.ContengineError):
        store.send_signal("r2", "go", b"p", 300.0)
    assert store.peek_signal("r2", "go") is None


def test_cancel_marks_the_run_and_its_children_and_not_finished_ones(store: Store) -> None:
    started(store, "p", status=WAITING, due_at=float("inf"))
    store.commit(
        Progress("p", new_runs=(run_row("p/0", parent_id="p", status=SLEEPING, due_at=900.0),))
    )
    assert store.request_cancel("p", 300.0) is True
    parent, child = store.get_run("p"), store.get_run("p/0")
    assert parent is not None and child is not None
    assert parent.cancel_requested and child.cancel_requested
    assert set(store.runnable(300.0)) == {"p", "p/0"}
    started(store, "done", status=COMPLETED)
    assert store.request_cancel("done", 300.0) is False
    with pytest.raises(ce.RunNotFound):
        store.request_cancel("nope", 300.0)


def test_a_finished_child_wakes_its_waiting_parent(store: Store) -> None:
    started(store, "p", status=WAITING, due_at=float("inf"))
    store.commit(Progress("p", new_runs=(run_row("p/0", parent_id="p"),)))
    assert store.runnable(300.0) == ["p/0"]
    store.commit(Progress("p/0", run=RunUpdate(COMPLETED, 310.0, finished_at=310.0)))
    assert store.runnable(310.0) == ["p"]


def test_published_values_and_a_restart(store: Store) -> None:
    started(store, "r1")
    store.commit(Progress("r1", insert=entry("r1", 0), publish=(("stage", b"one"),)))
    store.commit(Progress("r1", publish=(("stage", b"two"), ("n", b"1"))))
    assert store.published("r1") == {"stage": b"two", "n": b"1"}
    store.commit(Progress("r1", restart=b"new args"))
    row = store.get_run("r1")
    assert row is not None and row.args == b"new args" and row.generation == 1
    assert row.status == PENDING and store.load_log("r1") == []
    assert store.published("r1") == {"stage": b"two", "n": b"1"}
    with pytest.raises(ce.ContengineError):  # fenced to generation 0
        store.commit(Progress("r1", insert=entry("r1", 0), expect_generation=0))
    assert store.load_log("r1") == []


def test_replay_log_reads_what_replay_needs(store: Store) -> None:
    started(store, "r1")
    first = entry("r1", 0, status=E_COMPLETED, finished_at=201.0, outcome=b"o")
    store.commit(Progress("r1", insert=first))
    store.commit(Progress("r1", insert=entry("r1", 1, key=None, text="<object>")))
    rows = store.replay_log("r1")
    assert [(r.position, r.kind, r.name, r.key, r.text, r.status, r.outcome) for r in rows] == [
        (0, "step", "charge", "'o-1', 0", "'o-1', 0", E_COMPLETED, b"o"),
        (1, "step", "charge", None, "<object>", E_RUNNING, None),
    ]
    assert store.replay_log("r1", 1, 5)[0].position == 1


def test_replay_rows_read_only_what_replay_needs(store: Store) -> None:
    """replay_rows: the columns replay reads; a long outcome is left out (b"") for a
    read of its own; the text only where it differs from the key."""
    started(store, "r1")
    long = b"P" + b"x" * INLINE_OUTCOME
    for position, outcome in ((0, b"o"), (1, long)):
        done = entry("r1", position, status=E_COMPLETED, finished_at=201.0, outcome=outcome)
        store.commit(Progress("r1", insert=done))
    store.commit(Progress("r1", insert=entry("r1", 2, key=None, text="<object>")))
    rows = store.replay_rows("r1", 0, 10)
    assert [tuple(r) for r in rows] == [
        ("step", "charge", "'o-1', 0", E_COMPLETED, b"o", 0, None),
        ("step", "charge", "'o-1', 1", E_COMPLETED, b"", 1, None),
        ("step", "charge", None, E_RUNNING, None, 2, "<object>"),
    ]
    assert [r.text for r in rows] == ["'o-1', 0", "'o-1', 1", "<object>"]
    assert [r.position for r in store.replay_rows("r1", 1, 1)] == [1]
    assert store.load_log("r1", 1, 1)[0].outcome == long


def test_tags_round_trip_and_filter(store: Store) -> None:
    started(store, "r1", tags=("a", "b"))
    started(store, "r2", tags=("b",))
    started(store, "r3")
    row = store.get_run("r1")
    assert row is not None and row.tags == ("a", "b")
    assert [r.id for r in store.list_runs(tag="b")] == ["r1", "r2"]
    assert [r.id for r in store.list_runs(tag="a")] == ["r1"]
    assert store.list_runs(tag="%") == []


# -- leases, claims and queues (LeaseStore) --------------------------------------------


def worker_row(worker_id: str, expires_at: float = 10_000.0) -> WorkerRow:
    """A worker on another host (so only its expiry tells whether it is alive)."""
    return WorkerRow(worker_id, "elsewhere", 1, None, 100.0, expires_at)


def test_a_claim_leases_due_runs_by_priority_and_skips_runs_held_by_the_living(
    store: Store,
) -> None:
    """Due runs go highest priority first; a run leased to a live worker is not claimed
    again, and a release or the holder's expiry lets another worker claim it."""
    started(store, "low", 1.0)
    started(store, "high", 2.0, priority=5)
    started(store, "later", 3.0, due_at=500.0)
    a, b = worker_row("a", expires_at=300.0), worker_row("b")

    claims = store.claim(a, 150.0, 150.0, 10)
    assert [(c.run.id, c.run.priority) for c in claims] == [("high", 5), ("low", 0)]
    assert store.claim(b, 150.0, 150.0, 10) == []
    assert store.claim(b, 150.0, 150.0, 10, run_id="low") == []

    store.release("a", [("low", claims[1].lease)])
    (low,) = store.claim(b, 150.0, 150.0, 10)
    assert low.run.id == "low" and low.lease > claims[1].lease
    # a's lease ran out at 300: b takes its run over, with a new lease number.
    (high,) = store.claim(b, 160.0, 400.0, 10)
    assert high.run.id == "high" and high.lease != claims[0].lease
    assert {w.id for w in store.workers()} == {"b"}  # a was found dead on the way


def test_among_many_runs_asleep_a_claim_takes_only_the_due_ones_by_priority_then_age(
    store: Store,
) -> None:
    """Runs asleep (due later), waits without a timeout (due never) and finished runs are
    left; what is due by now goes highest priority first, then oldest: a run due exactly
    now, one due earlier, one without a due time (ready now)."""
    now = 500.0
    for i in range(200):
        started(store, f"asleep-{i}", 1.0 + i, status=SLEEPING, due_at=now + 1 + i, priority=i % 3)
    started(store, "never", 300.0, status=WAITING, due_at=float("inf"), priority=9)
    started(store, "done", 301.0, status=COMPLETED, priority=9)
    started(store, "exactly-now", 302.0, status=SLEEPING, due_at=now)
    started(store, "ready", 303.0, priority=1)  # pending, no due time
    started(store, "earlier", 304.0, status=WAITING, due_at=now - 100, priority=1)
    assert store.runnable(now) == ["exactly-now", "ready", "earlier"]
    assert store.next_due(after=now) == now + 1
    claims = store.claim(worker_row("a"), now, 150.0, 10)
    assert [c.run.id for c in claims] == ["ready", "earlier", "exactly-now"]
    assert store.claim(worker_row("b"), now, 150.0, 10) == []  # held by a, alive
    assert store.claim(worker_row("a"), now + 1.5, 150.0, 10)[0].run.id == "asleep-0"


def test_a_run_without_a_due_time_is_claimed_unless_its_holder_lives(store: Store) -> None:
    """due_at NULL is "now": a pending run, or a running one whose holder died; a running
    run held by a live worker is not taken."""
    started(store, "r1", status=RUNNING)
    a, b = worker_row("a", expires_at=300.0), worker_row("b")
    assert [c.run.id for c in store.claim(a, 150.0, 150.0, 5)] == ["r1"]
    assert store.claim(b, 150.0, 150.0, 5) == []
    assert [c.run.id for c in store.claim(b, 150.0, 400.0, 5)] == ["r1"]  # a died at 300


def test_a_wait_without_a_timeout_is_due_when_a_signal_comes(store: Store) -> None:
    started(store, "w", status=WAITING, due_at=float("inf"))
    assert store.next_due() is None and store.runnable(1e12) == []
    assert store.claim(worker_row("a"), 1e12, 150.0, 5) == []
    store.send_signal("w", "go", b"x", 600.0)
    assert store.runnable(600.0) == ["w"]
    assert [c.run.id for c in store.claim(worker_row("a"), 600.0, 150.0, 5)] == ["w"]


def test_a_write_under_a_lease_taken_over_writes_nothing(store: Store) -> None:
    """Progress fenced by a lease no longer held raises LeaseLost, and so does hold()."""
    started(store, "r1")
    a, b = worker_row("a", expires_at=300.0), worker_row("b")
    (old,) = store.claim(a, 150.0, 150.0, 1)
    store.hold("r1", old.lease, a)
    (new,) = store.claim(b, 150.0, 400.0, 1)

    with pytest.raises(ce.LeaseLost):
        store.commit(Progress("r1", insert=entry("r1", 0), lease=("a", old.lease)))
    ticket = store.commit_later(Progress("r1", insert=entry("r1", 0), lease=("a", old.lease)))
    store.flush()
    assert ticket.done and isinstance(ticket.error, ce.LeaseLost)
    with pytest.raises(ce.LeaseLost):
        store.hold("r1", old.lease, a)
    assert store.load_log("r1") == []
    store.commit(Progress("r1", insert=entry("r1", 0), lease=("b", new.lease)))
    assert [e.position for e in store.load_log("r1")] == [0]


def test_a_step_outcome_under_a_lease_taken_over_writes_nothing(store: Store) -> None:
    """A step's outcome with the next request (the write of almost every step, which
    SQLite fences in the entry's UPDATE itself): refused when the lease moved, when the
    run asks for a cancel (unless_cancelled) or when the entry is no longer in flight;
    nothing of it is written, and the holder of the lease writes on."""
    started(store, "r1")
    a, b = worker_row("a", expires_at=300.0), worker_row("b")
    (old,) = store.claim(a, 150.0, 150.0, 1)
    store.commit(Progress("r1", insert=entry("r1", 0), lease=("a", old.lease)))
    (new,) = store.claim(b, 150.0, 400.0, 1)
    done = entry("r1", 0, E_COMPLETED, finished_at=210.0, outcome=b"\x01x")

    def outcome(lease: tuple[str, int], **fields: Any) -> Progress:
        return Progress(
            "r1", update=done, insert=entry("r1", 1), expect_attempts=1, lease=lease, **fields
        )

    stale = outcome(("a", old.lease))
    with pytest.raises(ce.LeaseLost):
        store.commit(stale)
    ticket = store.commit_later(outcome(("a", old.lease), unless_cancelled=True))
    store.flush()
    assert ticket.done and isinstance(ticket.error, ce.LeaseLost)
    assert store.load_log("r1") == [entry("r1", 0)]

    assert store.request_cancel("r1", 211.0) is True
    with pytest.raises(CancelArrived):
        store.commit(outcome(("b", new.lease), unless_cancelled=True))
    with pytest.raises(ce.LeaseLost):  # the lease is checked first
        store.commit(outcome(("a", old.lease), unless_cancelled=True))
    assert store.load_log("r1") == [entry("r1", 0)]

    assert store.commit(outcome(("b", new.lease)))  # True: the run asks for a cancel
    assert store.load_log("r1") == [done, entry("r1", 1)]
    again = Progress("r1", update=done, insert=entry("r1", 2), expect_attempts=1,
                     lease=("b", new.lease))  # fmt: skip
    with pytest.raises(ce.DatabaseError, match="changed underneath"):
        store.commit(again)  # entry 0 is no longer in flight
    with pytest.raises(ce.LeaseLost):
        store.commit(outcome(("a", old.lease)))
    assert store.load_log("r1") == [done, entry("r1", 1)]


def leased(store: Store, worker: WorkerRow, *run_ids: str) -> dict[str, tuple[str, int]]:
    """Create the runs, each with step 0 in flight, leased to worker: their leases."""
    leases = {}
    for run_id in run_ids:
        started(store, run_id)
        (claim,) = store.claim(worker, 150.0, 150.0, 1, run_id=run_id)
        leases[run_id] = (worker.id, claim.lease)
        store.commit(Progress(run_id, insert=entry(run_id, 0), lease=leases[run_id]))
    return leases


def step_done(run_id: str, lease: tuple[str, int], **fields: Any) -> Progress:
    """A driver's progress: step 0's outcome and step 1 in flight."""
    done = entry(run_id, 0, E_COMPLETED, finished_at=210.0, outcome=b"\x01" + run_id.encode())
    return Progress(
        run_id, update=done, insert=entry(run_id, 1), expect_attempts=1, lease=lease, **fields
    )


def test_a_batch_fails_only_the_progress_of_runs_whose_lease_was_taken(store: Store) -> None:
    """In one batch (queued, then flushed), the runs another worker took are fenced out
    with LeaseLost and write nothing; every other run's progress is written."""
    a, b = worker_row("a", expires_at=300.0), worker_row("b")
    ids = [f"r{i}" for i in range(6)]
    leases = leased(store, a, *ids)
    store.hold("r0", leases["r0"][1], a)
    taken = {"r1", "r4"}
    for run_id in sorted(taken):  # a's lease ran out at 300: b takes these over
        assert [c.run.id for c in store.claim(b, 160.0, 400.0, 1, run_id=run_id)] == [run_id]
    tickets = [
        store.commit_later(step_done(i, leases[i], run=RunUpdate(RUNNING, 210.0))) for i in ids
    ]
    store.flush()
    assert all(t.done for t in tickets)
    errors = {i: type(t.error) for i, t in zip(ids, tickets, strict=True) if t.error is not None}
    assert errors == {i: ce.LeaseLost for i in taken}
    for run_id in ids:
        log = store.load_log(run_id)
        run = store.get_run(run_id)
        assert run is not None
        if run_id in taken:
            assert [(e.position, e.status) for e in log] == [(0, E_RUNNING)]
            assert (run.status, run.updated_at) == (PENDING, 100.0)
        else:
            assert [(e.position, e.status, e.outcome) for e in log] == [
                (0, E_COMPLETED, b"\x01" + run_id.encode()),
                (1, E_RUNNING, None),
            ]
            assert (run.status, run.updated_at) == (RUNNING, 210.0)


def test_a_batch_mixing_step_progress_with_every_other_kind_of_progress(store: Store) -> None:
    """A batch of plain steps, a run's end (waking its parent), recorded entries, a
    child started, a signal taken, values published and a restart: each written as
    if alone, the fenced ones refused alone."""
    w = worker_row("w")
    leases = leased(store, w, "plain", "fenced", "ends", "records", "spawns", "takes", "again")
    started(store, "parent", status=WAITING, due_at=float("inf"))
    store.commit(Progress("ends", run=RunUpdate(RUNNING, 205.0)))
    store.set_note("ends", None)
    store.insert_run(run_row("kid", parent_id="parent", status=RUNNING))
    (claim,) = store.claim(w, 150.0, 150.0, 1, run_id="kid")
    leases["kid"] = (w.id, claim.lease)
    store.send_signal("takes", "go", b"payload", 206.0)
    (signal,) = store.mailbox("takes")
    recorded = entry("records", 1, E_COMPLETED, kind="now", finished_at=210.0, outcome=b"t")
    batch = [
        step_done("plain", leases["plain"]),
        step_done("fenced", ("w", leases["fenced"][1] + 7)),
        Progress("kid", run=RunUpdate(COMPLETED, 211.0, finished_at=211.0, result=b"r"),
                 lease=leases["kid"]),
        step_done("records", leases["records"], recorded=(recorded,)),
        step_done("spawns", leases["spawns"], new_runs=(run_row("spawns/0", parent_id="spawns"),),
                  publish=(("stage", b"one"),)),
        step_done("takes", leases["takes"], consume=signal.seq),
        Progress("again", restart=b"new args", lease=leases["again"]),
        Progress("ends", update=entry("ends", 0, E_COMPLETED, finished_at=212.0, outcome=b"x"),
                 run=RunUpdate(FAILED, 212.0, finished_at=212.0, error=b"e", error_text="E"),
                 expect_attempts=1, lease=leases["ends"]),
    ]  # fmt: skip
    records = batch[3]
    assert records.insert is not None
    records.insert.position = 2
    tickets = [store.commit_later(p) for p in batch]
    store.flush()
    assert all(t.done for t in tickets)
    assert [type(t.error) for t in tickets] == [type(None)] + [ce.LeaseLost] + [type(None)] * 6
    assert [e.status for e in store.load_log("plain")] == [E_COMPLETED, E_RUNNING]
    assert [e.status for e in store.load_log("fenced")] == [E_RUNNING]
    kid, parent = store.get_run("kid"), store.get_run("parent")
    assert kid is not None and parent is not None
    assert (kid.status, kid.result, parent.due_at) == (COMPLETED, b"r", 211.0)
    assert [(e.position, e.kind) for e in store.load_log("records")] == [
        (0, "step"), (1, "now"), (2, "step"),
    ]  # fmt: skip
    child = store.get_run("spawns/0")
    assert child is not None and child.parent_id == "spawns"
    assert store.published("spawns") == {"stage": b"one"}
    assert store.mailbox("takes") == [] and len(store.load_log("takes")) == 2
    again = store.get_run("again")
    assert again is not None and (again.generation, again.args) == (1, b"new args")
    ends = store.get_run("ends")
    assert ends is not None and (ends.status, ends.error_text) == (FAILED, "E")
    assert [e.outcome for e in store.load_log("ends")] == [b"x"]


def test_a_batch_reports_each_runs_cancel(store: Store) -> None:
    """With every fenced write, each run of a batch is told whether its row asks for a
    cancel; a progress that must not pass one is refused (CancelArrived) alone, and one
    that delivers it clears it."""
    w = worker_row("w")
    leases = leased(store, w, "quiet", "asked", "refused", "delivers", "ends")
    for run_id in ("asked", "refused", "delivers", "ends"):
        assert store.request_cancel(run_id, 205.0) is True
    batch = [
        step_done("quiet", leases["quiet"]),
        step_done("asked", leases["asked"]),
        step_done("refused", leases["refused"], unless_cancelled=True),
        step_done("delivers", leases["delivers"], run=RunUpdate(RUNNING, 210.0, clear_cancel=True)),
        Progress("ends", run=RunUpdate(COMPLETED, 210.0, finished_at=210.0, result=b"r",
                                       unless_cancelled=True), lease=leases["ends"]),
    ]  # fmt: skip
    tickets = [store.commit_later(p) for p in batch]
    store.flush()
    # (The cancel flag of a refused progress means nothing: it wrote nothing.)
    told = [(t.done, type(t.error) if t.error else t.cancel) for t in tickets]
    assert told == [
        (True, False), (True, True), (True, CancelArrived), (True, False), (True, CancelArrived)
    ]  # fmt: skip
    assert [len(store.load_log(i)) for i in leases] == [2, 2, 1, 2, 1]
    assert store.pending_cancels(leases) == {"asked", "refused", "ends"}
    ends = store.get_run("ends")
    assert ends is not None and ends.status == PENDING


def test_heartbeats_workers_and_retiring(store: Store) -> None:
    """A heartbeat keeps a worker on record; one judged dead finds its row gone; a
    retired worker's runs, and the runs let go of, may be claimed at once."""
    started(store, "r1")
    started(store, "r2")
    a, b = worker_row("a", expires_at=300.0), worker_row("b")
    assert store.heartbeat(b) is False  # not on record before
    assert store.heartbeat(b) is True
    (first,) = store.claim(a, 150.0, 150.0, 1)
    (taken,) = store.claim(b, 150.0, 400.0, 1, run_id=first.run.id)  # a is dead at 400
    assert taken.run.id == first.run.id
    assert store.heartbeat(a) is False  # its row had gone: a was judged dead
    assert {w.id for w in store.workers()} == {"a", "b"}

    store.retire_worker("b")
    assert {w.id for w in store.workers()} == {"a"}
    assert [c.run.id for c in store.claim(a, 150.0, 150.0, 2)] == ["r1", "r2"]
    assert store.claim(worker_row("c"), 150.0, 150.0, 2) == []
    store.release_all("a")
    assert len(store.claim(worker_row("c"), 150.0, 150.0, 2)) == 2


def test_queues_limit_claims_and_step_slots(store: Store) -> None:
    """A queue's limits are shared; it lets that many runs be claimed and that many
    step slots be taken at once, and a slot given back makes room."""
    config = QueueConfig("mail", concurrency=1)
    store.set_queue(config)
    assert store.queues() == [config]
    started(store, "m1", 1.0, queue="mail")
    started(store, "m2", 2.0, queue="mail")
    started(store, "free", 3.0)
    a = worker_row("a")
    assert [c.run.id for c in store.claim(a, 150.0, 150.0, 10)] == ["m1", "free"]

    assert store.take_slot("unlimited", a, 150.0, 150.0) == 0
    slot = store.take_slot("mail", a, 150.0, 150.0)
    assert slot is not None
    assert store.take_slot("mail", worker_row("b"), 150.0, 150.0) is None
    store.give_slot(slot)
    assert store.take_slot("mail", worker_row("b"), 150.0, 150.0) is not None


# -- operator tools (AdminStore) ---------------------------------------------------------


def test_insert_run_writes_a_whole_run_or_nothing(store: Store) -> None:
    """A run with its log, mailbox and published values in one write; a taken id
    raises IdConflict and writes nothing."""
    row = run_row("copy", status=WAITING)
    entries = [entry("copy", 0, status=E_COMPLETED, finished_at=201.0, outcome=b"o")]
    mail = [Signal(0, "copy", "approved", b"yes", 150.0)]
    store.insert_run(row, entries, mail, {"stage": b"one"})
    assert store.get_run("copy") == row
    assert store.load_log("copy") == entries
    assert [(m.name, m.payload, m.sent_at) for m in store.mailbox("copy")] == [
        ("approved", b"yes", 150.0)
    ]
    assert store.published("copy") == {"stage": b"one"}
    with pytest.raises(ce.IdConflict):
        store.insert_run(run_row("copy", workflow="other"), [entry("copy", 5)])
    assert store.get_run("copy") == row and store.load_log("copy") == entries


def planned(store: Store, run_id: str, position: int) -> Rewind:
    """A rewind of run_id to position, planned from the run as stored now."""
    row = store.get_run(run_id)
    assert row is not None
    return Rewind(run_id, position, run_digest(row, store.load_log(run_id)))


def test_rewind_makes_failed_runs_pending_from_a_position(store: Store) -> None:
    """rewind cuts the log at the position and clears the error; any run that has not
    failed refuses the whole rewind."""
    started(store, "bad", status=FAILED, error=b"e", error_text="boom", finished_at=150.0)
    started(store, "ok", status=RUNNING)
    for position in range(3):
        store.commit(Progress("bad", insert=entry("bad", position, status=E_COMPLETED)))
    bad, ok = planned(store, "bad", 1), planned(store, "ok", 0)
    with pytest.raises(ce.ContengineError):
        store.rewind([bad, ok], 300.0)
    assert len(store.load_log("bad")) == 3
    store.rewind([bad], 300.0)
    row = store.get_run("bad")
    assert row is not None and (row.status, row.error, row.error_text) == (PENDING, None, None)
    assert [e.position for e in store.load_log("bad")] == [0]


def test_unfinished_descendants_walk_the_tree_of_children(store: Store) -> None:
    started(store, "root")
    started(store, "child", 2.0, parent_id="root")
    started(store, "done", 3.0, parent_id="root", status=COMPLETED)
    started(store, "grandchild", 4.0, parent_id="child", status=WAITING)
    assert {r.id for r in store.unfinished_descendants("root")} == {"child", "grandchild"}
    assert store.unfinished_descendants("grandchild") == []
