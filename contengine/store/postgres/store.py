"""The PostgreSQL store: a Store on a schema of a PostgreSQL server.

Its semantics are the SQLite store's (the same contract suite passes on both);
what differs is how they are kept with many sessions writing at once: a progress
write locks its run's row (writes.py), claims skip rows other sessions hold and
serialize per limited queue (claims.py), and times are the callers' (as with
SQLite: the store reads no clock).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Sequence
from typing import Any

import psycopg

from ...errors import ContengineError, DatabaseError, RunNotFound
from ..base import (
    INLINE_OUTCOME,
    AttemptRow,
    Claim,
    EntryRow,
    Listening,
    LogRow,
    Progress,
    QueueConfig,
    ReplayRow,
    Rewind,
    RunRow,
    Signal,
    Store,
    WorkerRow,
)
from ..group_commit import GroupCommit, Slot
from ..rows import FINISHED
from . import backup as pg_backup
from . import batch as pg_batch
from . import claims as pg_claims
from . import ops as pg_ops
from . import writes as pg_writes
from .connection import DURABILITY, Link
from .listen import Listener
from .schema import prepare
from .search import SearchMethods
from .sql import (
    CANCEL_PENDING,
    DELETABLE_COUNT,
    DUE,
    ENTRY_COLS,
    NOTIFY,
    RUN_COLS,
    RUN_MARKS,
    SELECT_RUN,
    START_RUN,
    TREE,
    UNFINISHED_SQL,
    as_text,
    channel_of,
    entry_row,
    run_params,
    run_row,
)
from .stats import StatsMethods
from .url import is_postgres_url, redacted, split_url

__all__ = ["PostgresStore", "is_postgres_url"]

# PostgreSQL keeps a bytea of up to 1 GB, and a statement's parameters together must
# stay under that too; a row holds up to two values and a text (as with SQLite).
_MAX_FIELD = 1_000_000_000
# Runs one INSERT of create_runs() writes (20 parameters each: far from the 65,535 limit).
CREATE_CHUNK = 500


class PostgresStore(GroupCommit, SearchMethods, StatsMethods, Store):
    """A Store in one schema of a PostgreSQL server; progress is written by group commit."""

    def __init__(
        self, url: str, schema: str | None = None, durability: str = "full", create: bool = True
    ) -> None:
        """create: make the schema's tables if there are none (else DatabaseError)."""
        if durability not in DURABILITY:
            raise ValueError(f"durability must be 'full' or 'normal', not {durability!r}")
        super().__init__()  # the group commit's queue
        self.url, self.schema = split_url(url, schema)
        self.durability = durability
        self.shown = redacted(url)
        self.channel = channel_of(self.schema)  # of wake-ups (listen.py)
        # Workers whose last claim took all it asked for (claim() skips its read first).
        self._claimed_full: set[str] = set()
        sync = DURABILITY[durability]
        self._writer = Link(self.url, self.shown, self.schema, sync)
        self._reader = Link(self.url, self.shown, self.schema, sync)
        try:
            with self._writer.lock:
                conn = self._writer.connect()
                try:
                    self.schema_version = prepare(conn, self.schema, self.shown, create)
                except psycopg.Error as exc:
                    raise DatabaseError(
                        f"cannot prepare the schema {self.schema!r} at {self.shown}: {exc}"
                    ) from exc
        except BaseException:
            self._writer.close()
            raise

    # -- runs and their log -------------------------------------------------

    def create_run(self, run: RunRow) -> tuple[RunRow, bool]:
        with self._writer.transaction() as conn:
            if conn.execute(START_RUN, (*run_params(run), self.channel)).rowcount == 1:
                return run, True
            row = conn.execute(SELECT_RUN, (run.id,)).fetchone()
            if row is None:  # cannot happen: the conflict was on this id
                raise DatabaseError(f"run {run.id!r} vanished while it was being created")
            return run_row(row), False

    def create_runs(
        self, runs: Sequence[RunRow], vet: Callable[[int, RunRow], None]
    ) -> list[tuple[RunRow, bool]]:
        """All in one transaction, a few hundred runs a statement, and one NOTIFY for
        them all; what vet raises rolls it back."""
        made: set[str] = set()
        # Inserted in id order: two lists naming some of the same ids, written at once
        # by two connections, then wait on each other's ids in the same order (in the
        # order given, each could hold an id the other waits for: a deadlock).
        ordered = sorted(runs, key=lambda run: run.id)
        with self._writer.transaction() as conn:
            for at in range(0, len(ordered), CREATE_CHUNK):
                chunk = ordered[at : at + CREATE_CHUNK]
                marks = ", ".join([f"({RUN_MARKS})"] * len(chunk))
                params = [value for run in chunk for value in run_params(run)]
                query = (
                    f"INSERT INTO runs ({RUN_COLS}) VALUES {marks} "
                    "ON CONFLICT (id) DO NOTHING RETURNING id"
                )
                made.update(row[0] for row in conn.execute(query, params).fetchall())
            others = [run.id for run in runs if run.id not in made]
            stored = {}
            if others:
                query = f"SELECT {RUN_COLS} FROM runs WHERE id = ANY(%s)"
                stored = {r.id: r for r in map(run_row, conn.execute(query, (others,)))}
            out: list[tuple[RunRow, bool]] = []
            for i, run in enumerate(runs):
                if run.id in made:
                    out.append((run, True))
                    continue
                row = stored.get(run.id)
                if row is None:  # cannot happen: the conflict was on this id
                    raise DatabaseError(f"run {run.id!r} vanished while it was being created")
                vet(i, row)
                out.append((row, False))
            if made:
                conn.execute("SELECT pg_notify(%s, 'start')", (self.channel,))
        return out

    def get_run(self, run_id: str) -> RunRow | None:
        rows = self._reader.read(SELECT_RUN, (run_id,))
        return run_row(rows[0]) if rows else None

    def list_runs(
        self,
        status: str | None = None,
        workflow: str | None = None,
        limit: int | None = None,
        tag: str | None = None,
    ) -> list[RunRow]:
        where: list[str] = []
        params: list[object] = []
        if tag is not None:
            where.append("%s = ANY(tags)")
            params.append(tag)
        if status is not None:
            where.append("status = %s")
            params.append(status)
        if workflow is not None:
            where.append("workflow = %s")
            params.append(workflow)
        query = f"SELECT {RUN_COLS} FROM runs"
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY created_at, num"
        if limit is not None:
            query += f" LIMIT {int(limit)}"
        return [run_row(r) for r in self._reader.read(query, params)]

    def load_log(self, run_id: str, start: int = 0, limit: int | None = None) -> list[EntryRow]:
        # In binary: an outcome as text is hex, twice its size, and the client library
        # holds that and its unescaped copy at once (replay reads a long outcome here).
        rows = self._reader.read(
            f"SELECT {ENTRY_COLS} FROM log WHERE run_id = %s AND position >= %s "
            "ORDER BY position LIMIT %s",
            (run_id, max(start, 0), limit),
            binary=True,
        )
        return [entry_row(run_id, r) for r in rows]

    def replay_log(self, run_id: str, start: int = 0, limit: int | None = None) -> list[ReplayRow]:
        rows = self._reader.read(
            "SELECT run_id, position, kind, name, key, text, status, outcome FROM log "
            "WHERE run_id = %s AND position >= %s ORDER BY position LIMIT %s",
            (run_id, max(start, 0), limit),
        )
        return [ReplayRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]) for r in rows]

    def replay_rows(self, run_id: str, start: int, limit: int) -> list[LogRow]:
        # Only what replay reads; octet_length() of a long (TOASTed) outcome reads
        # its size, not its bytes.
        rows = self._reader.read(
            "SELECT kind, name, key, status, CASE WHEN octet_length(outcome) > "
            f"{INLINE_OUTCOME} THEN ''::bytea ELSE outcome END, position, "
            "CASE WHEN text = key THEN NULL ELSE text END FROM log "
            "WHERE run_id = %s AND position >= %s ORDER BY position LIMIT %s",
            (run_id, max(start, 0), limit),
        )
        new = tuple.__new__
        return [new(LogRow, r) for r in rows]

    def log_length(self, run_id: str) -> int:
        # Positions are contiguous, so the last one tells the length (one index probe).
        (last,) = self._reader.read("SELECT max(position) FROM log WHERE run_id = %s", (run_id,))[0]
        return 0 if last is None else int(last) + 1

    def write_batch(self, batch: list[Slot]) -> None:
        pg_batch.write_slots(self._writer, batch)

    def commit_many(self, batch: Sequence[Progress]) -> None:
        """Write several runs' progress in one transaction (all or none)."""
        pg_writes.write_all(self._writer, list(batch))

    def runnable(self, now: float, limit: int | None = None) -> list[str]:
        rows = self._reader.read(
            f"SELECT id FROM runs WHERE {DUE} <= %s ORDER BY num LIMIT %s",
            (now, limit),
        )
        return [str(r[0]) for r in rows]

    def next_due(self, after: float | None = None) -> float | None:
        # The first entry of the runs_due index past `after` (a run without a due time
        # is at minus infinity there, never past it).
        rows = self._reader.read(
            f"SELECT due_at FROM runs WHERE {DUE} > %s ORDER BY {DUE} LIMIT 1",
            (float("-inf") if after is None else after,),
        )
        value = rows[0][0] if rows else None
        # A wait without a timeout is due "never" (infinity): no time will wake it.
        return float(value) if value is not None and value != float("inf") else None

    def send_signal(self, run_id: str, name: str, payload: bytes, now: float) -> None:
        with self._writer.transaction() as conn:
            row = conn.execute(
                "SELECT status FROM runs WHERE id = %s FOR UPDATE", (run_id,)
            ).fetchone()
            if row is None:
                raise RunNotFound(f"no run with id {run_id!r}: the signal {name!r} was not sent")
            if row[0] in FINISHED:
                raise ContengineError(
                    f"run {run_id!r} is {row[0]}: it will never wait again, so the signal "
                    f"{name!r} was not sent"
                )
            # One statement: the message, and a waiting run woken now (it finds out for
            # itself whether this is its signal) with its NOTIFY. A run that does not
            # wait looks at its mailbox before it waits: no wake-up.
            conn.execute(
                "WITH sent AS (INSERT INTO mailbox (run_id, name, payload, sent_at) "
                "VALUES (%s, %s, %s, %s)), woken AS (UPDATE runs SET due_at = %s "
                "WHERE id = %s AND status = 'waiting' RETURNING 1) "
                "SELECT pg_notify(%s, 'signal') FROM woken",
                (run_id, name, payload, now, now, run_id, self.channel),
            )

    def peek_signal(self, run_id: str, name: str) -> Signal | None:
        rows = self._reader.read(
            "SELECT seq, run_id, name, payload, sent_at FROM mailbox "
            "WHERE run_id = %s AND name = %s ORDER BY seq LIMIT 1",
            (run_id, name),
        )
        return self._signal(rows[0]) if rows else None

    @staticmethod
    def _signal(r: tuple[Any, ...]) -> Signal:
        seq, run_id, name, payload, sent_at = r
        return Signal(int(seq), str(run_id), str(name), bytes(payload), float(sent_at))

    def request_cancel(self, run_id: str, now: float) -> bool:
        with self._writer.transaction() as conn:
            row = conn.execute(
                "SELECT status FROM runs WHERE id = %s FOR UPDATE", (run_id,)
            ).fetchone()
            if row is None:
                raise RunNotFound(f"no run with id {run_id!r} to cancel")
            if row[0] in FINISHED:
                return False
            # The run and, recursively, its unfinished children.
            conn.execute(
                TREE + ", marked AS (UPDATE runs SET cancel_requested = 1, due_at = %s "
                f"WHERE id IN (SELECT id FROM tree) AND status IN ({UNFINISHED_SQL})) "
                "SELECT pg_notify(%s, 'cancel')",
                (run_id, now, self.channel),
            )
            return True

    def pending_cancels(self, run_ids: Collection[str]) -> set[str]:
        rows = self._reader.read(
            "SELECT id FROM runs WHERE id = ANY(%s) AND cancel_requested = %s",
            (list(run_ids), CANCEL_PENDING),
        )
        return {str(r[0]) for r in rows}

    def published(self, run_id: str) -> dict[str, bytes]:
        rows = self._reader.read("SELECT key, value FROM published WHERE run_id = %s", (run_id,))
        return {str(k): bytes(v) for k, v in rows}

    def listen(self, woken: Callable[[], None]) -> Listening | None:
        """A Listener on this schema's channel, on a connection of its own (listen.py)."""
        return Listener(self.url, self.shown, self.channel, woken, self._own_pids)

    def _own_pids(self) -> tuple[int, ...]:
        return (self._writer.pid,)

    def max_payload(self) -> int:
        return _MAX_FIELD * 3 // 8

    def close(self) -> None:
        self._writer.close()
        self._reader.close()

    # -- leases, claims, queues --------------------------------------------

    def claim(
        self,
        worker: WorkerRow,
        now: float,
        wall: float,
        limit: int,
        run_id: str | None = None,
        release: Sequence[tuple[str, int]] = (),
        skip: Collection[str] = (),
    ) -> list[Claim]:
        # A read first: a claim that would find nothing takes no transaction on the
        # writer's connection (no locks, no worker row written). Not after a claim that
        # took all it asked for: more are likely due (a backlog), and the read would
        # only add a round trip.
        full = self._claimed_full
        if run_id is None and not release and limit > 0 and worker.id not in full:
            (empty,) = self._reader.read(
                pg_claims.NOTHING_TO_CLAIM, pg_claims.nothing_params(worker, now, wall, skip)
            )[0]
            if empty:
                return []
        with self._writer.transaction() as conn:
            picked = pg_claims.claim(conn, worker, now, wall, limit, run_id, release, skip)
        if run_id is None:
            if limit > 0 and len(picked) >= limit:
                full.add(worker.id)
            else:
                full.discard(worker.id)
        return [Claim(run_row(row), lease) for lease, row in picked]

    def release(self, owner: str, leases: Sequence[tuple[str, int]]) -> None:
        if not leases:
            return
        with self._writer.transaction() as conn, conn.cursor() as cur:
            cur.executemany(
                "UPDATE runs SET owner = NULL WHERE id = %s AND owner = %s AND lease = %s",
                [(r, owner, n) for r, n in leases],
            )

    def hold(self, run_id: str, lease: int, worker: WorkerRow) -> None:
        with self._writer.transaction() as conn:
            pg_claims.check_lease(conn, run_id, worker.id, lease)
            pg_claims.record_worker(conn, worker)

    def heartbeat(self, worker: WorkerRow) -> bool:
        with self._writer.transaction() as conn:
            return pg_claims.record_worker(conn, worker)

    def release_all(self, owner: str) -> None:
        with self._writer.transaction() as conn:
            conn.execute("UPDATE runs SET owner = NULL WHERE owner = %s", (owner,))

    def retire_worker(self, worker_id: str) -> None:
        with self._writer.transaction() as conn:
            conn.execute("UPDATE runs SET owner = NULL WHERE owner = %s", (worker_id,))
            conn.execute("DELETE FROM workers WHERE id = %s", (worker_id,))

    def workers(self) -> list[WorkerRow]:
        with self._writer.transaction() as conn:
            return pg_claims.read_workers(conn)

    def server_time(self) -> float | None:
        rows = self._reader.read("SELECT extract(epoch FROM clock_timestamp())::float8")
        return float(rows[0][0])

    def set_queue(self, config: QueueConfig) -> None:
        with self._writer.transaction() as conn:
            conn.execute(
                "INSERT INTO queues (name, concurrency, worker_concurrency, rate_limit, "
                "rate_period) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET "
                "concurrency = excluded.concurrency, "
                "worker_concurrency = excluded.worker_concurrency, "
                "rate_limit = excluded.rate_limit, rate_period = excluded.rate_period",
                (
                    config.name,
                    config.concurrency,
                    config.worker_concurrency,
                    config.rate_limit,
                    config.rate_period,
                ),
            )

    def queues(self) -> list[QueueConfig]:
        with self._writer.transaction() as conn:
            return list(pg_claims.queue_configs(conn).values())

    def take_slot(
        self,
        queue: str,
        worker: WorkerRow,
        now: float,
        wall: float,
        lease: tuple[str, str, int] | None = None,
    ) -> int | None:
        with self._writer.transaction() as conn:
            return pg_claims.take_slot(conn, queue, worker, now, wall, lease)

    def give_slot(self, slot: int) -> None:
        if slot:
            with self._writer.transaction() as conn:
                pg_claims.give_slot(conn, slot)

    # -- operator tools -----------------------------------------------------

    def set_note(self, run_id: str, note: str | None) -> None:
        with self._writer.transaction() as conn:
            conn.execute("UPDATE runs SET note = %s WHERE id = %s", (as_text(note), run_id))

    def count_deletable(self, before: float) -> int:
        return int(self._reader.read(DELETABLE_COUNT, (before,))[0][0])

    def delete_finished(self, before: float, limit: int) -> int:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit!r}")
        with self._writer.transaction() as conn:
            return pg_ops.delete_finished(conn, before, limit)

    def backup(self, dest_path: str | os.PathLike[str]) -> None:
        """Write the schema's runs, as of one snapshot, to a new SQLite contengine database."""
        pg_backup.backup(self.url, self.schema, self.shown, os.fspath(dest_path))

    def rewind(self, runs: Sequence[Rewind], now: float) -> None:
        with self._writer.transaction() as conn:
            for r in runs:  # any refusal rolls back the runs before it
                pg_ops.rewind_one(conn, r, now)
            if runs:
                conn.execute(NOTIFY, (self.channel, "start"))

    def insert_run(
        self,
        run: RunRow,
        entries: Sequence[EntryRow] = (),
        mailbox: Sequence[Signal] = (),
        published: dict[str, bytes] | None = None,
        attempts: Sequence[AttemptRow] = (),
    ) -> None:
        with self._writer.transaction() as conn:
            pg_ops.insert_run(conn, run, entries, mailbox, published or {}, attempts)
            if run.status not in FINISHED:
                conn.execute(NOTIFY, (self.channel, "start"))

    def load_attempts(self, run_id: str, position: int | None = None) -> list[AttemptRow]:
        return pg_ops.attempts_of(self._reader.read, run_id, position)

    def mailbox(self, run_id: str) -> list[Signal]:
        rows = self._reader.read(
            "SELECT seq, run_id, name, payload, sent_at FROM mailbox WHERE run_id = %s "
            "ORDER BY seq",
            (run_id,),
        )
        return [self._signal(r) for r in rows]

    def unfinished_descendants(self, run_id: str) -> list[RunRow]:
        rows = self._reader.read(
            TREE + f"SELECT {RUN_COLS} FROM runs WHERE id IN (SELECT id FROM tree) "
            f"AND id <> %s AND status IN ({UNFINISHED_SQL}) ORDER BY num",
            (run_id, run_id),
        )
        return [run_row(r) for r in rows]
