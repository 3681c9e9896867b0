"""What the SQLite store watches around its file: that the path still names the file it
opened, whether the file can be written at all, and how long the write lock was out
of reach (so that a lease is not judged lapsed for a renewal no one could write)."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
import urllib.parse

from ...errors import DatabaseError, DatabaseGone
from ..base import WorkerRow

log = logging.getLogger("contengine")

# The path is looked at (a stat, about 1.5 µs) at most once per this many seconds of
# commits: a commit less than this long after the last look goes unchecked. Looking at
# every commit would cost about 5 % of a step in durability "normal".
CHECK_EVERY = 0.001

# A wait for the write lock, or a transaction holding it, at least this long counts as
# a stall: the other processes on the file could not write meanwhile.
STALL = 0.1


def identity(path: str) -> tuple[int, int] | None:
    """The (device, inode) that path names now; None if nothing is there."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class FileGuard:
    """Says (DatabaseGone) when the path no longer names the file the store opened:
    deleted, or replaced by another file (a restore, a mv) under a running engine,
    whose commits would go on into a file no one will ever open again."""

    def __init__(self, path: str, opened: tuple[int, int] | None) -> None:
        self.path = path
        self.opened = opened  # None: nothing to watch (":memory:")
        # The write-ahead log this store's connections have open (SQLite names it by
        # the path, so after a replace the next opener would apply it to the new file).
        self.wal = identity(path + "-wal") if opened is not None else None
        self.gone: str | None = None  # what happened, once found
        self._next = 0.0

    def check(self, now: float | None = None) -> None:
        """DatabaseGone if the file was found changed, now or before (it stays so).
        now: the monotonic time, if the caller has it; None looks whatever the time."""
        if self.gone is not None:
            raise DatabaseGone(self.gone)  # a new one each time: tracebacks do not pile up
        if self.opened is None:
            return
        if now is not None and now < self._next:
            return
        if now is None:
            now = time.monotonic()
        self._next = now + CHECK_EVERY
        found = identity(self.path)
        if found == self.opened:
            return
        what = (
            "was deleted"
            if found is None
            else "was replaced by another file (another device/inode)"
        )
        self.gone = (
            f"the database file {self.path!r} {what} while this engine had it open: its "
            f"writes would go on into a file no one will open again, so it stopped writing "
            f"(nothing more was written). Stop every process that uses the file before "
            f"deleting, moving or restoring it; then start the engine again on the file "
            f"that should be there."
        )
        raise DatabaseGone(self.gone)

    def set_aside_wal(self) -> None:
        """Once the store's connections are closed: if the file was found gone, move the
        old file's write-ahead log away from the path (SQLite did not checkpoint it: the
        file had moved), so that whoever opens the path next does not apply it to the
        file there now (a new, empty one or a restored one). It is kept, renamed."""
        if self.gone is None or self.wal is None:
            return
        wal = self.path + "-wal"
        if identity(wal) != self.wal:
            return  # not ours any more
        aside = f"{wal}.orphaned-{os.getpid()}-{int(time.time())}"
        try:
            os.rename(wal, aside)
        except OSError:
            return
        log.warning(
            "the write-ahead log of the database file that was at %r was moved aside to %r, "
            "so that it is not applied to the file there now",
            self.path,
            aside,
        )


def unwritable(path: str) -> str | None:
    """Why SQLite cannot write the database at path (and its -wal and -shm beside it),
    or None if it can as far as the filesystem says."""
    folder = os.path.dirname(os.path.abspath(path))
    target = path if os.path.exists(path) else folder
    try:
        if os.statvfs(target).f_flag & os.ST_RDONLY:
            return "is on a read-only filesystem"
    except OSError:
        return None
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return "is a read-only file (no write permission for this user)"
    if not os.access(folder, os.W_OK | os.X_OK):
        return (
            f"is in a directory this user cannot write ({folder!r}; SQLite keeps its "
            f"-wal and -shm files beside the database)"
        )
    return None


def unwritable_message(path: str, why: str) -> str:
    """The error for an engine that needs to write a file it cannot."""
    return (
        f"{path!r} {why}: contengine cannot write to it, and left it untouched. The "
        f"read-only commands (contengine runs, show, export, replay) can read it; to drive "
        f"its runs, make it writable or copy it (with its -wal file, if any) somewhere "
        f"writable."
    )


def connect_readonly(path: str, timeout: float) -> sqlite3.Connection:
    """A connection that only reads (mode=ro), also on a read-only file or filesystem."""
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    conn = sqlite3.connect(
        uri, uri=True, isolation_level=None, check_same_thread=False, timeout=timeout
    )
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError as exc:
        conn.close()
        # CANTOPEN (a read-only filesystem), READONLY_DIRECTORY (a directory without
        # write permission): no -shm could be made.
        if getattr(exc, "sqlite_errorname", "") not in (
            "SQLITE_CANTOPEN",
            "SQLITE_READONLY_DIRECTORY",
        ):
            raise
    # A WAL database needs its -shm index, which cannot be created in a read-only
    # directory or filesystem. With no -wal either, no engine is writing it (one would
    # have made both) and the file holds every commit: read it as immutable. A -wal
    # with commits in it would be ignored that way, so that is refused instead.
    wal = path + "-wal"
    if os.path.exists(wal) and os.path.getsize(wal) > 0:
        raise DatabaseError(
            f"{path!r} has commits in its write-ahead log ({wal!r}) that SQLite can read "
            f"only with an index file ({path + '-shm'!r}) it cannot create here (a "
            f"read-only directory or filesystem); nothing was changed. Copy the database "
            f"and its -wal file to a writable directory and read the copy."
        )
    return sqlite3.connect(
        uri + "&immutable=1",
        uri=True,
        isolation_level=None,
        check_same_thread=False,
        timeout=timeout,
    )


class LockStalls:
    """Stretches other workers' leases by the time the write lock was out of reach.

    A worker renews its lease by writing; while another process holds the write lock
    (frozen in a transaction, a long one, a shell's open BEGIN) no one can, and leases
    run out for nothing. This connection notes each stall it sees: a wait for the lock
    of STALL or more (counted from its first failed attempt, if a wait timed out), or
    a transaction of its own that held the lock that long (the holder was frozen). In
    the transaction that ends the stall it reads every worker's expiry, and from then
    on judges an expiry that has not moved since as that much later: a worker gets
    after the stall the time it had left before it. A worker that renews is judged on
    its new expiry; one that never does (dead, frozen) is taken over later by the
    stall's length, once.
    """

    def __init__(self) -> None:
        # worker id -> (its expiry when the stall ended, seconds added to it)
        self.stretch: dict[str, tuple[float, float]] = {}
        self.failed_since: float | None = None  # monotonic start of a wait that timed out

    def waited(self, conn: sqlite3.Connection, began: float, got: float) -> None:
        """The write lock was taken at `got` after asking at `began` (monotonic)."""
        start = began if self.failed_since is None else self.failed_since
        self.failed_since = None
        if got - start >= STALL:
            self._note(conn, start, got)

    def timed_out(self, began: float) -> None:
        """A wait for the write lock that began at `began` ran out of busy timeout."""
        if self.failed_since is None:
            self.failed_since = began

    def held(self, conn: sqlite3.Connection, got: float) -> None:
        """Before the commit of a transaction that took the write lock at `got`."""
        now = time.monotonic()
        if now - got >= STALL:
            self._note(conn, got, now)

    def _note(self, conn: sqlite3.Connection, start: float, end: float) -> None:
        length = end - start
        began_wall = time.time() - (time.monotonic() - start)
        try:
            rows = conn.execute("SELECT id, expires_at FROM workers").fetchall()
        except sqlite3.Error:
            return  # no workers table yet (a file being created or migrated)
        stretch: dict[str, tuple[float, float]] = {}
        for worker_id, expires_at in rows:
            before = self.stretch.get(worker_id)
            added = before[1] if before is not None and before[0] == expires_at else 0.0
            if expires_at > began_wall or added:  # it was still alive when the stall began
                stretch[worker_id] = (expires_at, added + length)
        self.stretch = stretch

    def expiry(self, w: WorkerRow) -> float:
        """When the worker's lease runs out, stalls counted."""
        found = self.stretch.get(w.id)
        if found is not None and found[0] == w.expires_at:
            return w.expires_at + found[1]
        return w.expires_at
