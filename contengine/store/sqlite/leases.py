"""The SQLite store's lease and queue methods (the SQL is in sqlite_claims.py)."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Collection, Sequence

from ..base import Claim, QueueConfig, RunRow, WorkerRow
from . import claims as sqlite_claims
from .sql import CANCEL_PENDING, RUN_COLS, SQLiteParts, run_row


def as_written(worker: WorkerRow, asked: float) -> WorkerRow:
    """The row with its expiry moved on by the time its write waited for the write lock
    (since `asked`, monotonic): a renewal that waited out a stall must not write a lease
    that ran out meanwhile. Its holder still counts from when it asked (valid_until), so
    it gives up no later than the others think it will."""
    waited = time.monotonic() - asked
    return dataclasses.replace(worker, expires_at=worker.expires_at + waited)


class LeaseMethods(SQLiteParts):
    """Part of SQLiteStore: claiming runs, workers on record, queues, and the cancel
    flags a worker reads for the runs whose steps it runs."""

    def pending_cancels(self, run_ids: Collection[str]) -> set[str]:
        # One read for every run with a step running in an engine, each poll interval.
        ids = list(run_ids)
        found: set[str] = set()
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            rows = self._read(
                f"SELECT id FROM runs WHERE id IN ({', '.join('?' * len(part))}) "
                "AND cancel_requested = ?",
                [*part, CANCEL_PENDING],
            )
            found.update(str(r[0]) for r in rows)
        return found

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
        asked = time.monotonic()
        # A read first: a claim that would find nothing takes no write lock. Not after
        # a claim that took all it asked for: more are likely due (a backlog), and the
        # read would select them twice.
        full = self._claimed_full
        if (
            run_id is None
            and not release
            and worker.id not in full
            and self._nothing_to_claim(worker, now, wall, limit, skip)
        ):
            return []
        with self._tx() as conn:
            picked = sqlite_claims.claim(
                conn,
                as_written(worker, asked),
                now,
                wall,
                limit,
                run_id,
                release,
                skip,
                self._stalls.expiry,
            )
            if run_id is None:
                if limit > 0 and len(picked) >= limit:
                    full.add(worker.id)
                else:
                    full.discard(worker.id)
            if not picked:
                return []
            leases = dict(picked)
            rows = conn.execute(
                f"SELECT num, {RUN_COLS} FROM runs WHERE num IN ({', '.join('?' * len(picked))})",
                list(leases),
            ).fetchall()
        runs = {}
        for num, *rest in rows:
            runs[num] = run_row(tuple(rest))
            self._remember_num(runs[num].id, num)
        return [Claim(runs[num], lease) for num, lease in picked]

    def _nothing_to_claim(
        self, worker: WorkerRow, now: float, wall: float, limit: int, skip: Collection[str]
    ) -> bool:
        """Whether a claim would find nothing to take (and nothing to write), read in one
        snapshot on the reading connection, without the write lock (claims.py)."""
        self._guard.check(time.monotonic())  # as a claim's commit would
        with self._rlock:
            conn = self._reader
            own = not conn.in_transaction  # ":memory:": the writer's connection
            try:
                if own:
                    conn.execute("BEGIN")
                try:
                    return sqlite_claims.nothing_to_claim(
                        conn, worker, now, wall, limit, skip, self._stalls.expiry
                    )
                finally:
                    if own and conn.in_transaction:
                        conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._translate(exc) from exc

    def unfinished_descendants(self, run_id: str) -> list[RunRow]:
        rows = self._read(
            "WITH RECURSIVE tree(id) AS (SELECT ? UNION ALL "
            "SELECT runs.id FROM runs JOIN tree ON runs.parent_id = tree.id) "
            f"SELECT {RUN_COLS} FROM runs WHERE id IN (SELECT id FROM tree) AND id != ? "
            "AND status NOT IN ('completed', 'failed', 'cancelled')",
            (run_id, run_id),
        )
        return [run_row(r) for r in rows]

    def hold(self, run_id: str, lease: int, worker: WorkerRow) -> None:
        asked = time.monotonic()
        with self._tx() as conn:
            sqlite_claims.check_lease(conn, run_id, worker.id, lease)
            sqlite_claims.record_worker(conn, as_written(worker, asked))

    def release(self, owner: str, leases: Sequence[tuple[str, int]]) -> None:
        if not leases:
            return
        with self._tx() as conn:
            conn.executemany(
                "UPDATE runs SET owner = NULL WHERE id = ? AND owner = ? AND lease = ?",
                [(r, owner, n) for r, n in leases],
            )

    def heartbeat(self, worker: WorkerRow) -> bool:
        asked = time.monotonic()
        with self._tx() as conn:
            return sqlite_claims.record_worker(conn, as_written(worker, asked))

    def release_all(self, owner: str) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE runs SET owner = NULL WHERE owner = ?", (owner,))

    def retire_worker(self, worker_id: str) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE runs SET owner = NULL WHERE owner = ?", (worker_id,))
            conn.execute("DELETE FROM workers WHERE id = ?", (worker_id,))

    def workers(self) -> list[WorkerRow]:
        with self._lock:
            return sqlite_claims.read_workers(self._conn)

    def set_queue(self, config: QueueConfig) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO queues (name, concurrency, worker_concurrency, "
                "rate_limit, rate_period) VALUES (?, ?, ?, ?, ?)",
                (
                    config.name,
                    config.concurrency,
                    config.worker_concurrency,
                    config.rate_limit,
                    config.rate_period,
                ),
            )

    def queues(self) -> list[QueueConfig]:
        with self._lock:
            return list(sqlite_claims.queue_configs(self._conn).values())

    def take_slot(
        self,
        queue: str,
        worker: WorkerRow,
        now: float,
        wall: float,
        lease: tuple[str, str, int] | None = None,
    ) -> int | None:
        asked = time.monotonic()
        with self._tx() as conn:
            return sqlite_claims.take_slot(
                conn, queue, as_written(worker, asked), now, wall, lease, self._stalls.expiry
            )

    def give_slot(self, slot: int) -> None:
        if slot:
            with self._tx() as conn:
                sqlite_claims.give_slot(conn, slot)
