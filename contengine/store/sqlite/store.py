"""The embedded store: one SQLite file in WAL mode, written with BEGIN IMMEDIATE."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ...errors import DatabaseError, DatabaseLocked
from ..base import INLINE_OUTCOME, EntryRow, LogRow, ReplayRow, RunRow, Store
from ..group_commit import GroupCommit
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
    NUM_CACHE,
    POSITION_BITS,
    POSITION_MASK,
    RUN_COLS,
    Executes,
    checked_autocheckpoint,
    insert_run,
    run_row,
)
from .stats import StatsMethods
from .writes import WriteMethods

# "Cont" in the file header marks a contengine database among SQLite files.
APPLICATION_ID = 0x436F6E74
SCHEMA_VERSION = 8
SQLITE_MAGIC = b"SQLite format 3\x00"
DURABILITY = {"full": "FULL", "normal": "NORMAL"}


class SQLiteStore(
    WriteMethods, GroupCommit, RunMethods, OperatorMethods, LeaseMethods, StatsMethods, Store
):
    """A Store on one SQLite file (or ":memory:"); progress is written by group commit."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        durability: str = "full",
        busy_timeout: float = 5.0,
        readonly: bool = False,
        wal_autocheckpoint: int | None = None,
    ) -> None:
        if durability not in DURABILITY:
            raise ValueError(f"durability must be 'full' or 'normal', not {durability!r}")
        self.wal_autocheckpoint = checked_autocheckpoint(wal_autocheckpoint)
        self.path = os.fspath(path)
        self.durability = durability
        self.busy_timeout = busy_timeout
        # Read-only: opened with mode=ro, for commands that only look (runs, show,
        # export); it works on a read-only file or filesystem, and writes nothing.
        self.readonly = readonly
        self._stalls = LockStalls()
        self._guard = FileGuard(self.path, None)
        self._lock = threading.RLock()
        super().__init__()  # the group commit's queue
        self._nums: dict[str, int] = {}
        # Workers whose last claim took all it asked for (claim() skips its read first).
        self._claimed_full: set[str] = set()
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
        # The direct path's statements (write_alone: one progress, one thread) run on
        # this one kept cursor: Connection.execute makes and frees a cursor each time,
        # which costs the step path a measurable share. Used under self._lock only.
        self._wcur = self._conn.cursor()
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
            # Litestream adds two tables of its own to every file it replicates, also
            # to a new, empty one: they do not make it another application's database.
            tables = [
                r[0]
                for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite_%' "
                    "AND name NOT IN ('_litestream_seq', '_litestream_lock')"
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
        if self.wal_autocheckpoint is not None:
            conn.execute(f"PRAGMA wal_autocheckpoint = {self.wal_autocheckpoint}")
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

    def _begin(self, conn: Executes) -> float:
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
                self._stalls.waited(self._conn, began, got)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return got

    def _commit(self, conn: Executes, got: float) -> None:
        """COMMIT the transaction that took the write lock at `got`, unless the file is
        no longer the one at the path (DatabaseGone: the caller rolls back)."""
        now = time.monotonic()
        if now - got >= STALL:
            self._stalls.held(self._conn, got)
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
            cur = conn.execute(*insert_run(run))
            if cur.rowcount == 1:
                self._remember_num(run.id, cur.lastrowid)
                return run, True
            row = conn.execute(f"SELECT {RUN_COLS} FROM runs WHERE id = ?", (run.id,)).fetchone()
            return run_row(row), False

    def create_runs(
        self, runs: Sequence[RunRow], vet: Callable[[int, RunRow], None]
    ) -> list[tuple[RunRow, bool]]:
        """All in one transaction; what vet raises rolls it back."""
        select = f"SELECT {RUN_COLS} FROM runs WHERE id = ?"
        made: list[tuple[RunRow, bool]] = []
        nums: list[tuple[str, int | None]] = []
        with self._tx() as conn:
            for i, run in enumerate(runs):
                cur = conn.execute(*insert_run(run))
                if cur.rowcount == 1:
                    nums.append((run.id, cur.lastrowid))
                    made.append((run, True))
                    continue
                stored = run_row(conn.execute(select, (run.id,)).fetchone())
                vet(i, stored)
                made.append((stored, False))
        for run_id, num in nums:  # only once committed: a rollback would reuse them
            self._remember_num(run_id, num)
        return made

    def _remember_num(self, run_id: str, num: int | None) -> None:
        if len(self._nums) >= NUM_CACHE:
            self._nums.clear()  # a cheap bound; misses are one indexed lookup
        if num is not None:
            self._nums[run_id] = num

    def _num(self, conn: Executes, run_id: str) -> int:
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
        rows = self._read(f"SELECT {RUN_COLS} FROM runs WHERE id = ?", (run_id,))
        return run_row(rows[0]) if rows else None

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
        sql = f"SELECT {RUN_COLS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at, num"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [run_row(r) for r in self._read(sql, params)]

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

    def replay_rows(self, run_id: str, start: int, limit: int) -> list[LogRow]:
        # Only what replay reads, straight from the row (no parameter per row, no
        # coalesce); length() of a long outcome does not read its overflow pages.
        rows = self._log_window(
            run_id,
            f"kind, name, key, status, CASE WHEN length(outcome) > {INLINE_OUTCOME} THEN x'' "
            "ELSE outcome END, id & {mask}, text",
            start,
            limit,
        )
        new = tuple.__new__
        return [new(LogRow, r) for r in rows]

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
            # The kept cursor first: after a statement on it failed, it holds that
            # statement (Python 3.11), and the connection would stay open (the file,
            # its WAL unmerged) until the cursor is collected.
            with contextlib.suppress(sqlite3.ProgrammingError):  # closed before: no matter
                self._wcur.close()
            self._conn.close()
        if self._reader is not self._conn:
            with self._rlock:
                self._reader.close()
        self._guard.set_aside_wal()
