"""The embedded store: one SQLite file in WAL mode, written with BEGIN IMMEDIATE."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ...errors import (
    DatabaseError,
    DatabaseLocked,
    IdConflict,
)
from ..base import (
    E_COMPLETED,
    E_RUNNING,
    FINISHED,
    CancelArrived,
    EntryRow,
    Progress,
    ReplayRow,
    RunRow,
    Store,
    Ticket,
)
from ..group_commit import Slot
from . import bulk as sqlite_bulk
from .guard import (
    STALL,
    FileGuard,
    LockStalls,
    connect_readonly,
    identity,
    unwritable,
    unwritable_message,
)
from .leases import LeaseMethods
from .ops import OperatorMethods
from .runs import RunMethods
from .schema import MIGRATIONS
from .sql import (
    _COMPLETE_ENTRY,
    _INSERT_ENTRY,
    _INSERT_NEW_ENTRY,
    _NUM_CACHE,
    _RUN_COLS,
    _RUN_MARKS,
    _UPDATE_ENTRY,
    _UPDATE_RUN,
    CANCEL_PENDING,
    POSITION_BITS,
    POSITION_MASK,
    _checked_position,
    _run_params,
    _run_row,
)

# "Cont" in the file header marks a contengine database among SQLite files.
APPLICATION_ID = 0x436F6E74
SCHEMA_VERSION = 5
SQLITE_MAGIC = b"SQLite format 3\x00"
DURABILITY = {"full": "FULL", "normal": "NORMAL"}


class SQLiteStore(RunMethods, OperatorMethods, LeaseMethods, Store):
    """A Store on one SQLite file (or ":memory:")."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        durability: str = "full",
        busy_timeout: float = 5.0,
        readonly: bool = False,
    ) -> None:
        if durability not in DURABILITY:
            raise ValueError(f"durability must be 'full' or 'normal', not {durability!r}")
        self.path = os.fspath(path)
        self.durability = durability
        self.busy_timeout = busy_timeout
        # Read-only: opened with mode=ro, for commands that only look (runs, show,
        # export); it works on a read-only file or filesystem, and writes nothing.
        self.readonly = readonly
        self._stalls = LockStalls()
        self._guard = FileGuard(self.path, None)
        self._lock = threading.RLock()
        self._queue: list[Slot] = []  # progress waiting for the next group commit
        self._queue_lock = threading.Lock()
        self._writing = False  # a thread is writing a batch (or is about to)
        self._nums: dict[str, int] = {}
        self._refuse_foreign_file()
        before = None
        if self.path != ":memory:" and not readonly:
            why = unwritable(self.path)
            if why is not None:
                raise DatabaseError(unwritable_message(self.path, why))
            before = identity(self.path)
        try:
            self._conn = self._connect()
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot open database {self.path!r}: {exc}") from exc
        try:
            self._prepare()
            if self.path != ":memory:" and not readonly:
                # The file SQLite opened: the one at the path now, unless it changed
                # between the stat above and here (then refuse rather than guess).
                opened = identity(self.path)
                if opened is None or (before is not None and opened != before):
                    raise DatabaseError(
                        f"the database file {self.path!r} was deleted or replaced while "
                        f"it was being opened; nothing was written. Open it again."
                    )
                self._guard = FileGuard(self.path, opened)
        except BaseException:
            self._conn.close()
            raise
        # Reads go through a connection of their own (WAL: readers never wait for
        # the writer), so a drive reading its log does not queue behind the disk
        # sync of a group commit. ":memory:" is one database per connection.
        self._reader = self._conn
        self._rlock: Any = self._lock
        if self.path != ":memory:":
            try:
                self._reader = self._connect()
                self._reader.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            except sqlite3.Error as exc:
                self._conn.close()
                raise DatabaseError(f"cannot open database {self.path!r}: {exc}") from exc
            self._rlock = threading.Lock()

    # -- opening ----------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            return connect_readonly(self.path, self.busy_timeout)
        return sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout
        )

    def _refuse_foreign_file(self) -> None:
        # Checked before SQLite sees the file: opening a non-database in WAL mode
        # would try to write to it.
        if self.path == ":memory:" or not os.path.exists(self.path):
            return
        if os.path.isdir(self.path):
            raise DatabaseError(f"{self.path!r} is a directory, not a database file")
        with open(self.path, "rb") as f:
            head = f.read(16)
        if head and head != SQLITE_MAGIC:
            raise DatabaseError(
                f"{self.path!r} is not an SQLite database (it starts with {head[:8]!r}); "
                f"contengine left it untouched. Point the engine at a new file or at a "
                f"contengine database."
            )

    def _prepare(self) -> None:
        conn = self._conn
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = [
                r[0]
                for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite_%'"
                )
            ]
        except sqlite3.DatabaseError as exc:
            why = None if self.readonly or self.path == ":memory:" else unwritable(self.path)
            if why is not None:  # it went read-only since the check in __init__
                raise DatabaseError(unwritable_message(self.path, why)) from exc
            raise DatabaseError(
                f"{self.path!r} cannot be read as an SQLite database ({exc}); contengine "
                f"left it untouched"
            ) from exc
        if app_id != APPLICATION_ID and (tables or app_id != 0):
            raise DatabaseError(
                f"{self.path!r} is an SQLite database of another application "
                f"(tables: {', '.join(tables) or 'none'}); contengine left it untouched. "
                f"Give the engine a file of its own."
            )
        if version > SCHEMA_VERSION:
            raise DatabaseError(
                f"{self.path!r} was written by a newer contengine (schema version "
                f"{version}; this one knows up to {SCHEMA_VERSION}). It was left untouched: "
                f"upgrade contengine to open it."
            )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        if self.readonly:
            if version < SCHEMA_VERSION:
                raise DatabaseError(
                    f"{self.path!r} has schema version {version}, older than this "
                    f"contengine's {SCHEMA_VERSION}, and a read-only command does not "
                    f"upgrade it: open it once with ce.Engine (which upgrades it in place), "
                    f"or read it with the contengine that wrote it."
                )
            return
        if self.path != ":memory:":
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise DatabaseError(f"{self.path!r} could not be switched to WAL mode ({mode})")
        conn.execute(f"PRAGMA synchronous = {DURABILITY[self.durability]}")
        if version < SCHEMA_VERSION or app_id != APPLICATION_ID:
            self._migrate()

    def _migrate(self) -> None:
        with self._tx() as conn:
            # Re-read under the write lock: another process may have migrated first.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            while version < SCHEMA_VERSION:
                MIGRATIONS[version](conn)
                version += 1
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {version}")

    @property
    def schema_version(self) -> int:
        """The schema version recorded in the file."""
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    # -- transactions -----------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._conn
            got = self._begin(conn)
            try:
                yield conn
                self._commit(conn, got)
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._translate(exc) from exc
                raise

    def _begin(self, conn: sqlite3.Connection) -> float:
        """BEGIN IMMEDIATE (the write lock); when it was taken (monotonic). A long wait
        for it is noted (LockStalls): leases ran out meanwhile for nothing."""
        began = time.monotonic()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            error = self._translate(exc)
            if isinstance(error, DatabaseLocked):
                self._stalls.timed_out(began)
            raise error from exc
        got = time.monotonic()
        if got - began >= STALL or self._stalls.failed_since is not None:
            try:
                self._stalls.waited(conn, began, got)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return got

    def _commit(self, conn: sqlite3.Connection, got: float) -> None:
        """COMMIT the transaction that took the write lock at `got`, unless the file is
        no longer the one at the path (DatabaseGone: the caller rolls back)."""
        now = time.monotonic()
        if now - got >= STALL:
            self._stalls.held(conn, got)
        self._guard.check(now)
        conn.execute("COMMIT")

    def _translate(self, exc: sqlite3.Error) -> DatabaseError:
        if isinstance(exc, sqlite3.ProgrammingError) and "closed" in str(exc):
            return DatabaseError(f"the engine on {self.path!r} is closed; open a new one")
        if isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc):
            if self.readonly:
                return DatabaseError(f"{self.path!r} was opened read-only; nothing was written")
            why = unwritable(self.path) or "could not be written (SQLite: readonly database)"
            return DatabaseError(unwritable_message(self.path, why))
        if isinstance(exc, sqlite3.OperationalError) and (
            "locked" in str(exc) or "busy" in str(exc)
        ):
            return DatabaseLocked(
                f"database {self.path!r} is locked: another connection held its write lock "
                f"for more than {self.busy_timeout:g} s. Nothing was written. Find the "
                f"process holding it (a long transaction, a paused writer) or open the "
                f"engine with a larger busy_timeout."
            )
        if isinstance(exc, sqlite3.DataError) or "too big" in str(exc):
            # Values the engine writes are checked against max_payload() first; this is
            # bytes from elsewhere (an imported run) or a row of several large values.
            return DatabaseError(
                f"database {self.path!r}: a row is larger than SQLite keeps ({exc}; at most "
                f"{self._conn.getlimit(sqlite3.SQLITE_LIMIT_LENGTH):,} bytes). Nothing was "
                f"written."
            )
        return DatabaseError(f"database {self.path!r}: {exc}. Nothing was written.")

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self._rlock:
            try:
                return self._reader.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._translate(exc) from exc

    def _base(self, run_id: str) -> int | None:
        """The first log key of the run (None if there is no such run), read without
        waiting for the writer."""
        num = self._nums.get(run_id)
        if num is None:
            rows = self._read("SELECT num FROM runs WHERE id = ?", (run_id,))
            if not rows:
                return None
            num = int(rows[0][0])
            self._remember_num(run_id, num)
        return num << POSITION_BITS

    # -- the interface ------------------------------------------------------

    def create_run(self, run: RunRow) -> tuple[RunRow, bool]:
        with self._tx() as conn:
            cur = conn.execute(
                f"INSERT INTO runs ({_RUN_COLS}) VALUES ({_RUN_MARKS}) ON CONFLICT (id) DO NOTHING",
                _run_params(run),
            )
            if cur.rowcount == 1:
                self._remember_num(run.id, cur.lastrowid)
                return run, True
            row = conn.execute(f"SELECT {_RUN_COLS} FROM runs WHERE id = ?", (run.id,)).fetchone()
            return _run_row(row), False

    def _remember_num(self, run_id: str, num: int | None) -> None:
        if len(self._nums) >= _NUM_CACHE:
            self._nums.clear()  # a cheap bound; misses are one indexed lookup
        if num is not None:
            self._nums[run_id] = num

    def _num(self, conn: sqlite3.Connection, run_id: str) -> int:
        """The run's integer number, the high half of its log entries' keys."""
        num = self._nums.get(run_id)
        if num is None:
            row = conn.execute("SELECT num FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise DatabaseError(f"no run {run_id!r} in {self.path!r}; nothing was written")
            num = int(row[0])
            self._remember_num(run_id, num)
        return num

    def _key(self, conn: sqlite3.Connection, run_id: str, position: int) -> int:
        if not 0 <= position <= POSITION_MASK:
            raise DatabaseError(f"position {position} of run {run_id!r} is out of range")
        return (self._num(conn, run_id) << POSITION_BITS) | position

    def get_run(self, run_id: str) -> RunRow | None:
        rows = self._read(f"SELECT {_RUN_COLS} FROM runs WHERE id = ?", (run_id,))
        return _run_row(rows[0]) if rows else None

    def list_runs(
        self,
        status: str | None = None,
        workflow: str | None = None,
        limit: int | None = None,
        tag: str | None = None,
    ) -> list[RunRow]:
        where, params = [], []
        if tag is not None:
            where.append("tags LIKE ? ESCAPE '\\'")
            params.append(
                "%," + tag.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + ",%"
            )
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if workflow is not None:
            where.append("workflow = ?")
            params.append(workflow)
        sql = f"SELECT {_RUN_COLS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at, num"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_run_row(r) for r in self._read(sql, params)]

    def load_log(self, run_id: str, start: int = 0, limit: int | None = None) -> list[EntryRow]:
        # text is stored as NULL when it equals key (the usual case), to keep rows small;
        # the query puts it back.
        rows = self._log_window(
            run_id,
            "id & {mask}, kind, name, key, coalesce(text, key), status, attempts, crashes, "
            "started_at, finished_at, due_at, outcome, error_text",
            start,
            limit,
        )
        return [EntryRow(run_id, *r) for r in rows]

    def replay_log(self, run_id: str, start: int = 0, limit: int | None = None) -> list[ReplayRow]:
        rows = self._log_window(
            run_id,
            "?, id & {mask}, kind, name, key, coalesce(text, key), status, outcome",
            start,
            limit,
            (run_id,),
        )
        # tuple.__new__ skips the NamedTuple's Python-level constructor: rows are
        # already in field order, and replay reads thousands of them.
        new = tuple.__new__
        return [new(ReplayRow, r) for r in rows]

    def _log_window(
        self,
        run_id: str,
        columns: str,
        start: int,
        limit: int | None,
        leading: tuple[object, ...] = (),
    ) -> list[tuple[Any, ...]]:
        """Rows of a run's log from position start, at most limit, in position order."""
        base = self._base(run_id)
        if base is None:
            return []
        return self._read(
            f"SELECT {columns.format(mask=POSITION_MASK)} FROM log "
            f"WHERE id BETWEEN ? AND ? ORDER BY id LIMIT ?",
            (
                *leading,
                base + max(start, 0),
                base | POSITION_MASK,
                -1 if limit is None else limit,
            ),
        )

    def log_length(self, run_id: str) -> int:
        base = self._base(run_id)
        if base is None:
            return 0
        # Positions are contiguous, so the last one tells the length (one index probe).
        (last,) = self._read(
            "SELECT max(id) FROM log WHERE id BETWEEN ? AND ?", (base, base | POSITION_MASK)
        )[0]
        return 0 if last is None else (last & POSITION_MASK) + 1

    def commit(self, progress: Progress) -> bool:
        # Group commit: every thread queues its progress. If no write is under way,
        # it becomes the writer of everything queued, in one transaction (one disk
        # sync); otherwise it sleeps until the writer of its batch wakes it (done),
        # or hands it the queue that built up meanwhile (write it). Only the threads
        # concerned are woken. With one thread this is one transaction per commit.
        slot = Slot(progress)
        with self._queue_lock:
            lead = not self._writing
            if not lead:
                slot.wait_here()
            self._queue.append(slot)
            self._writing = True
        interrupted: BaseException | None = None
        if not lead:
            # Released when done, or when this thread is to write. An exception here
            # (KeyboardInterrupt) must wait: the slot may be handed the queue, and
            # leaving would leave everyone after it waiting for a writer.
            while True:
                try:
                    slot.wake.acquire()
                    break
                except BaseException as exc:  # noqa: BLE001 - raised below
                    interrupted = interrupted or exc
        while not slot.done:
            self._write_round(slot)
            if not slot.done:  # cannot happen: a writer's batch holds its own slot
                raise DatabaseError("group commit lost a progress write")
        if interrupted is not None:
            raise interrupted
        if slot.error is not None:
            raise slot.error
        return slot.cancel

    def commit_later(self, progress: Progress) -> Ticket:
        if type(self).commit is not SQLiteStore.commit:
            # A subclass that intercepts commit() (a test's crash injection) sees
            # every write go through it.
            return super().commit_later(progress)
        # Queued for the next batch, which the caller writes with flush() once it has
        # nothing else to do (or a commit() caller writes, whichever comes first):
        # meanwhile the caller drives other runs, whose progress joins the batch.
        ticket = Ticket()
        with self._queue_lock:
            self._queue.append(Slot(progress, ticket))
        return ticket

    def flush(self) -> None:
        # If a write is under way, its writer hands what it did not take to a thread
        # waiting in commit(), if any; else the next flush() writes it.
        with self._queue_lock:
            if self._writing or not self._queue:
                return  # nothing queued, or its writer is at work
            self._writing = True
        self._write_round(None)

    def _write_round(self, own: Slot | None) -> None:
        """Write everything queued in one transaction, say so to each slot (own's
        thread, the writer, needs no waking), and hand what was queued meanwhile to
        the oldest thread waiting in commit(); with none, the next flush() writes it."""
        batch: list[Slot] = []
        try:
            with self._queue_lock:
                batch, self._queue = self._queue, []
            with self._lock:
                self._write_batch(batch)
        finally:
            for other in batch:
                if not other.done:  # the writer was interrupted before telling it
                    other.fail(DatabaseError("the batch holding this progress was not written"))
                if other is not own or other.ticket is not None:
                    other.release()
            with self._queue_lock:
                waiting = next((slot for slot in self._queue if slot.ticket is None), None)
                if waiting is not None:
                    waiting.lead()
                else:
                    self._writing = False

    def commit_many(self, batch: Sequence[Progress]) -> None:
        with self._tx() as conn:
            for progress in batch:
                self._write(conn, progress)

    def _write_batch(self, batch: list[Slot]) -> None:
        """Write each slot's progress in one transaction; a progress that fails (fenced
        out, raced) is rolled back alone, to its savepoint, and gets its own error.
        Plain step progress goes first, in bulk (sqlite_bulk.py), when there is more
        than one; if the bulk write gives up, the whole batch is written one by one."""
        rest: list[Slot] | None = None
        # A run has one progress in a batch (its driver waits for each write); the bulk
        # path, which writes plain progress first, relies on it.
        if len(batch) > 1 and len({slot.progress.run_id for slot in batch}) == len(batch):
            plain: list[Slot] = []
            rest = []
            for slot in batch:
                (plain if sqlite_bulk.plain(slot.progress) else rest).append(slot)
            if len(plain) < 2:
                rest = None
        if rest is not None and self._write_slots(batch, plain, rest):
            return
        self._write_slots(batch, [], batch)

    def _write_slots(self, batch: list[Slot], plain: list[Slot], rest: list[Slot]) -> bool:
        """One transaction: plain in bulk, then rest one by one. False (nothing written,
        no slot told) if the bulk write gave up."""
        conn = self._conn
        try:
            got = self._begin(conn)
        except Exception as exc:
            error = exc if isinstance(exc, DatabaseError) else DatabaseError(str(exc))
            for slot in batch:
                slot.fail(error)
            return True
        alone = len(batch) == 1
        try:
            if plain:
                try:
                    sqlite_bulk.write_plain(conn, plain, lambda run_id: self._num(conn, run_id))
                except (sqlite_bulk.Redo, sqlite3.Error, DatabaseError):
                    conn.execute("ROLLBACK")
                    return False
            for slot in rest:
                if not alone:
                    conn.execute("SAVEPOINT progress")
                try:
                    slot.cancel = self._write(conn, slot.progress)
                except Exception as exc:
                    self._forget_children(slot.progress)
                    if alone:
                        raise
                    conn.execute("ROLLBACK TO progress")
                    slot.fail(self._translate(exc) if isinstance(exc, sqlite3.Error) else exc)
                if not alone:
                    conn.execute("RELEASE progress")
            self._commit(conn, got)
        except BaseException as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # every slot is failed below anyway
                    conn.execute("ROLLBACK")
            failure: BaseException = self._translate(exc) if isinstance(exc, sqlite3.Error) else exc
            for slot in batch:
                self._forget_children(slot.progress)
                slot.fail(
                    failure if isinstance(failure, Exception) else DatabaseError(str(failure))
                )
            if not isinstance(exc, Exception):
                raise
            return True
        for slot in batch:
            slot.done = True
        return True

    def _forget_children(self, p: Progress) -> None:
        # Numbers remembered for child runs whose insert was rolled back are wrong.
        for child in p.new_runs:
            self._nums.pop(child.id, None)

    def _write(self, conn: sqlite3.Connection, p: Progress) -> bool:
        """Write one progress; True if the run's row asks for a cancel (see commit())."""
        num = self._nums.get(p.run_id)
        if num is None:
            num = self._num(conn, p.run_id)
        base = num << POSITION_BITS
        cancel = False
        flag = None
        if p.lease is not None:
            held = conn.execute(
                "SELECT owner, lease, cancel_requested FROM runs WHERE num = ?", (num,)
            ).fetchone()
            if held is None or (held[0], held[1]) != p.lease:
                raise sqlite_bulk.lease_lost(
                    p.run_id, p.lease, None if held is None else (held[0], held[1])
                )
            flag = held[2]
            cancel = flag == CANCEL_PENDING and not (p.run is not None and p.run.clear_cancel)
        if p.unless_cancelled or (p.run is not None and p.run.unless_cancelled):
            # Checked before anything is written: the step (or the run's end) is
            # cancelled instead.
            if flag is None:
                row = conn.execute("SELECT cancel_requested FROM runs WHERE num = ?", (num,))
                flag = (row.fetchone() or (0,))[0]
            if flag == CANCEL_PENDING:
                raise CancelArrived(f"run {p.run_id!r} was cancelled; nothing was written")
        if p.expect_generation is not None:
            current = conn.execute(
                "SELECT generation FROM runs WHERE id = ?", (p.run_id,)
            ).fetchone()
            if current is None or current[0] != p.expect_generation:
                raise DatabaseError(
                    f"run {p.run_id!r} has moved to another generation; nothing was written"
                )
        if p.update is not None:
            e = p.update
            params: tuple[object, ...]
            if e.status == E_COMPLETED and e.due_at is None:
                sql, params = _COMPLETE_ENTRY, (
                    e.attempts, e.crashes, e.finished_at, e.outcome, e.error_text,
                    base | e.position, p.expect_attempts,
                )  # fmt: skip
            else:
                sql, params = _UPDATE_ENTRY, (
                    e.status, e.attempts, e.crashes, e.finished_at, e.due_at, e.outcome,
                    e.error_text, base | e.position, p.expect_attempts,
                )  # fmt: skip
            if conn.execute(sql, params).rowcount != 1:
                raise DatabaseError(
                    f"entry {e.position} of run {e.run_id!r} changed underneath this writer "
                    f"in {self.path!r}: it is no longer in flight with the attempts this "
                    f"writer expected, so another engine is driving the same run. Nothing "
                    f"was written; let one engine drive a file at a time."
                )
        for e in p.recorded:
            conn.execute(
                _INSERT_ENTRY,
                (
                    base | _checked_position(e.position), e.kind, e.name, e.key,
                    None if e.text == e.key else e.text, e.status, e.attempts, e.crashes,
                    e.started_at, e.finished_at, e.due_at, e.outcome, e.error_text,
                ),
            )  # fmt: skip
        if p.insert is not None:
            e = p.insert
            key = base | _checked_position(e.position)
            text = None if e.text == e.key else e.text
            if (
                e.status == E_RUNNING and e.attempts == 1 and e.crashes == 0
                and e.finished_at is None and e.due_at is None and e.outcome is None
                and e.error_text is None
            ):  # fmt: skip
                conn.execute(_INSERT_NEW_ENTRY, (key, e.kind, e.name, e.key, text, e.started_at))
            else:
                conn.execute(
                    _INSERT_ENTRY,
                    (
                        key, e.kind, e.name, e.key, text, e.status, e.attempts, e.crashes,
                        e.started_at, e.finished_at, e.due_at, e.outcome, e.error_text,
                    ),
                )  # fmt: skip
        if p.run is not None:
            r = p.run
            conn.execute(
                _UPDATE_RUN,
                (
                    r.status,
                    r.updated_at,
                    r.due_at,
                    r.finished_at,
                    r.result,
                    r.error,
                    r.error_text,
                    r.clear_cancel,
                    p.run_id,
                ),
            )
        if p.run is not None and p.run.status in FINISHED:
            # A child that ends wakes its parent, which waits for it.
            conn.execute(
                "UPDATE runs SET due_at = ? WHERE id = (SELECT parent_id FROM runs WHERE id = ?) "
                "AND status = 'waiting'",
                (p.run.updated_at, p.run_id),
            )
        for child in p.new_runs:
            cur = conn.execute(
                f"INSERT INTO runs ({_RUN_COLS}) VALUES ({_RUN_MARKS}) ON CONFLICT (id) DO NOTHING",
                _run_params(child),
            )
            if cur.rowcount == 1:
                self._remember_num(child.id, cur.lastrowid)
                continue
            owner = conn.execute("SELECT parent_id FROM runs WHERE id = ?", (child.id,)).fetchone()
            if owner is None or owner[0] != p.run_id:
                raise IdConflict(
                    f"child run id {child.id!r} is taken by a run that is not a child of "
                    f"{p.run_id!r}; nothing was written"
                )
        for published_key, value in p.publish:
            conn.execute(
                "INSERT INTO published (run_id, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value",
                (p.run_id, published_key, value),
            )
        if p.restart is not None:
            # continue_as_new: this generation's log goes; the run starts afresh
            # with new arguments under the same id (mailbox and published values stay).
            conn.execute("DELETE FROM log WHERE id BETWEEN ? AND ?", (base, base | POSITION_MASK))
            conn.execute(
                "UPDATE runs SET args = ?, status = 'pending', due_at = NULL, "
                "generation = generation + 1 WHERE id = ?",
                (p.restart, p.run_id),
            )
        if p.consume is not None:
            deleted = conn.execute("DELETE FROM mailbox WHERE seq = ?", (p.consume,)).rowcount
            if deleted != 1:
                raise DatabaseError(
                    f"signal {p.consume} of run {p.run_id!r} was already taken (another engine "
                    f"is driving the same run); nothing was written"
                )
        return cancel

    def max_payload(self) -> int:
        # SQLite refuses a row longer than its length limit (1,000,000,000 bytes unless
        # the connection lowered it). A row holds up to two values (a run's arguments
        # and its result or exception) and a text (an error's traceback), so a value
        # gets 3/8 of the limit and a text a third of that (Serde.clip).
        try:
            return self._conn.getlimit(sqlite3.SQLITE_LIMIT_LENGTH) * 3 // 8
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    def close(self) -> None:
        with contextlib.suppress(DatabaseError):
            self._guard.check()  # a last look: the file may have gone since
        with self._lock:
            self._conn.close()
        if self._reader is not self._conn:
            with self._rlock:
                self._reader.close()
        self._guard.set_aside_wal()
