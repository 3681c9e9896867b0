"""A new SQLite contengine database filled from another store's rows (a PostgreSQL backup).

The file is made by SQLiteStore itself (its schema, version and application id: a
normal contengine database that ce.Engine opens), filled in one transaction under a
temporary name beside its destination, and put at the destination only once it is
whole and on disk: no one finds half a copy there, and no existing file is replaced.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from types import TracebackType

from ...errors import ContengineError, DatabaseError
from ..rows import AttemptRow, CopiedRun, EntryRow, QueueConfig, Signal
from .ops import refuse_taken
from .sql import (
    INSERT_ENTRY,
    POSITION_BITS,
    PUT_ATTEMPT,
    RUN_COLS,
    RUN_MARKS,
    attempt_params,
    checked_position,
    run_params,
)
from .store import SQLiteStore

_CANCEL = [c.strip() for c in RUN_COLS.split(",")].index("cancel_requested")


class NewDatabase:
    """A contengine SQLite database being filled under a temporary name beside dest:
    add the runs first, then the rest; finish() puts it at dest, and leaving the `with`
    block without finish() removes it."""

    def __init__(self, dest: str | os.PathLike[str]) -> None:
        self.dest = os.fspath(dest)
        refuse_taken(self.dest)
        folder, name = os.path.split(os.path.abspath(self.dest))
        self.temp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.partial")
        self._nums: dict[str, int] = {}
        self._conn: sqlite3.Connection | None = None
        self._finished = False
        try:
            os.close(os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except OSError as exc:
            raise DatabaseError(f"cannot create the backup file {self.dest!r}: {exc}") from exc
        try:
            SQLiteStore(self.temp).close()  # the schema, as every new database gets it
            with self._writing():
                conn = sqlite3.connect(self.temp, isolation_level=None)
                self._conn = conn
                # A new file no one else reads, filled in one transaction: a rollback
                # journal holds next to nothing (every page is new), where a WAL would
                # hold the whole copy once more until its checkpoint.
                conn.execute("PRAGMA journal_mode = DELETE")
                conn.execute("PRAGMA synchronous = FULL")
                conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.discard()
            raise

    def __enter__(self) -> NewDatabase:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._finished:
            self.discard()

    @contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise DatabaseError(
                f"cannot write the backup file {self.dest!r}: {exc}. Nothing was written."
            ) from exc

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise DatabaseError(f"the backup file {self.dest!r} is no longer being written")
        return self._conn

    def add_runs(self, runs: Iterable[CopiedRun]) -> None:
        """Copy runs (their owners are not: no worker of the source works the copy)."""
        conn = self._db()

        def params(r: CopiedRun) -> tuple[object, ...]:
            values = list(run_params(r.row))
            values[_CANCEL] = r.cancel_state  # a delivered cancel (2) stays told apart
            return (*values, r.lease, r.claimed_at)

        with self._writing():
            conn.executemany(
                f"INSERT INTO runs ({RUN_COLS}, lease, claimed_at) VALUES ({RUN_MARKS}, ?, ?)",
                (params(r) for r in runs),
            )
            # A log entry's key is built from its run's number here (sql.py).
            self._nums.update(conn.execute("SELECT id, num FROM runs"))

    def add_log(self, entries: Iterable[EntryRow]) -> None:
        """Copy log entries of runs added before."""

        def params(e: EntryRow) -> tuple[object, ...]:
            num = self._nums.get(e.run_id)
            if num is None:
                raise DatabaseError(
                    f"log entry {e.position} of run {e.run_id!r} has no run in the copy; "
                    f"the backup {self.dest!r} was not written"
                )
            return (
                (num << POSITION_BITS) | checked_position(e.position), e.kind, e.name, e.key,
                None if e.text == e.key else e.text, e.status, e.attempts, e.crashes,
                e.started_at, e.finished_at, e.due_at, e.outcome, e.error_text,
            )  # fmt: skip

        with self._writing():
            self._db().executemany(INSERT_ENTRY, (params(e) for e in entries))

    def add_attempts(self, attempts: Iterable[AttemptRow]) -> None:
        """Copy attempt rows of runs added before."""

        def params(a: AttemptRow) -> tuple[object, ...]:
            num = self._nums.get(a.run_id)
            if num is None:
                raise DatabaseError(
                    f"attempt {a.attempt} of entry {a.position} of run {a.run_id!r} has no "
                    f"run in the copy; the backup {self.dest!r} was not written"
                )
            return attempt_params(num << POSITION_BITS, a)

        with self._writing():
            self._db().executemany(PUT_ATTEMPT, (params(a) for a in attempts))

    def add_mailbox(self, messages: Iterable[Signal]) -> None:
        """Copy mailbox messages, their sequence numbers (their order) kept."""
        with self._writing():
            self._db().executemany(
                "INSERT INTO mailbox (seq, run_id, name, payload, sent_at) VALUES (?, ?, ?, ?, ?)",
                ((m.seq, m.run_id, m.name, m.payload, m.sent_at) for m in messages),
            )

    def add_published(self, values: Iterable[tuple[str, str, bytes]]) -> None:
        """Copy published values: (run id, key, serialized value)."""
        with self._writing():
            self._db().executemany(
                "INSERT INTO published (run_id, key, value) VALUES (?, ?, ?)", values
            )

    def add_queues(self, queues: Iterable[QueueConfig]) -> None:
        """Copy queues' limits."""
        with self._writing():
            self._db().executemany(
                "INSERT INTO queues (name, concurrency, worker_concurrency, rate_limit, "
                "rate_period) VALUES (?, ?, ?, ?, ?)",
                (
                    (q.name, q.concurrency, q.worker_concurrency, q.rate_limit, q.rate_period)
                    for q in queues
                ),
            )

    def finish(self) -> None:
        """Commit and put the file at dest; ContengineError if dest was taken meanwhile
        (the copy is removed then)."""
        conn = self._db()
        with self._writing():
            conn.execute("COMMIT")
            # Back to WAL, which every contengine database is in (recorded in the file).
            conn.execute("PRAGMA journal_mode = WAL")
            conn.close()
        self._conn = None
        if any(os.path.lexists(self.temp + side) for side in ("-wal", "-journal")):
            raise DatabaseError(
                f"the backup file {self.dest!r} was left with a journal beside it; "
                f"nothing was written"
            )
        try:
            with open(self.temp, "rb") as f:
                os.fsync(f.fileno())
            _publish(self.temp, self.dest)
        except OSError as exc:
            raise DatabaseError(f"cannot write the backup file {self.dest!r}: {exc}") from exc
        self._finished = True

    def discard(self) -> None:
        """Remove the temporary file (and anything SQLite made beside it)."""
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()  # an open transaction is rolled back
            self._conn = None
        for side in ("", "-wal", "-journal", "-shm"):
            with contextlib.suppress(OSError):
                os.remove(self.temp + side)


def _publish(temp: str, dest: str) -> None:
    """Give the finished file at temp the name dest, unless dest exists; then make the
    directory entry durable."""
    refuse_taken(dest)  # again: the copy took a while
    try:
        # A hard link fails if dest exists: the name is taken whole or not at all.
        os.link(temp, dest)
    except FileExistsError:
        raise ContengineError(f"{dest!r} already exists; nothing was written") from None
    except OSError:
        # A filesystem without hard links: claim the name with an empty file, then
        # move the copy over that claim (the rename replaces only what this made).
        try:
            os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            raise ContengineError(f"{dest!r} already exists; nothing was written") from None
        try:
            os.replace(temp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(dest)
            raise
    else:
        os.remove(temp)
    folder = os.open(os.path.dirname(os.path.abspath(dest)), os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
