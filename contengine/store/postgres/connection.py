"""Connections to the server: the URL and its schema, connecting, transactions, errors.

The store keeps two connections, each behind a lock: one writes (every write is one
explicit transaction on it) and one reads (autocommit: each read sees what was
committed when it ran). A connection the server closed while it was idle (a
restart, a terminated session) is replaced before use, so the call goes on. One
lost during a read is replaced and the read asked again, once; one lost during a
write makes that call raise DatabaseError (and is replaced on next use): its writes
were not committed, unless the connection was lost during the COMMIT itself.
"""

from __future__ import annotations

import select
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from ...errors import DatabaseError
from .url import scrubbed

# libpq's own default waits forever for a server that does not answer.
CONNECT_TIMEOUT = 10
DURABILITY = {"full": "on", "normal": "off"}


# SQLSTATEs of a connection lost or refused (class 08, and the server shutting down or
# starting up); psycopg's OperationalError covers more (a statement timeout, a value
# too large for an index), after which the connection is fine.
_LOST = ("08", "57P01", "57P02", "57P03")
# What to do about the errors a server's settings or limits cause.
_HINTS = {
    "57014": "The statement was cancelled: a statement_timeout set on the role or database "
    "(ALTER ROLE ... SET statement_timeout) is shorter than this statement needs; raise it "
    "for contengine's role, or add ?options=-c%20statement_timeout%3D0 to the URL.",
    "55P03": "A lock was not granted in time: a lock_timeout is set on the role or database; "
    "raise it for contengine's role, or add ?options=-c%20lock_timeout%3D0 to the URL.",
    "25P03": "The server ended a transaction left idle (idle_in_transaction_session_timeout).",
    "54000": "A value is larger than PostgreSQL allows there (an id or name in an index "
    "holds at most about 2,700 bytes).",
}


def lost(exc: BaseException) -> bool:
    """Whether exc is a connection lost or refused (not an error of the statement)."""
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = getattr(exc, "sqlstate", None)
    return state is None or state.startswith(_LOST)


def database_error(shown: str, exc: BaseException) -> DatabaseError:
    """The DatabaseError for a psycopg error met on the server named shown."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = _HINTS.get(getattr(exc, "sqlstate", None) or "")
    if hint is not None:
        return DatabaseError(f"PostgreSQL at {shown}: {detail}. {hint} Nothing was written.")
    if lost(exc):
        return DatabaseError(
            f"PostgreSQL at {shown}: {detail}. The connection was lost or refused; "
            f"what this call wrote was not committed (unless it was lost during the "
            f"COMMIT itself). The next call reconnects."
        )
    return DatabaseError(f"PostgreSQL at {shown}: {detail}. Nothing was written.")


class Link:
    """One connection behind a lock, (re)made on demand, with the session settings."""

    def __init__(self, url: str, shown: str, schema: str, synchronous_commit: str) -> None:
        self.url, self.shown, self.schema = url, shown, schema
        self.synchronous_commit = synchronous_commit
        self.lock = threading.RLock()
        self.conn: psycopg.Connection[Any] | None = None
        self.closed = False
        # The server process of the current connection: a listener knows its own
        # store's wake-ups by it (the engine woke itself for those already).
        self.pid = 0

    def connect(self) -> psycopg.Connection[Any]:
        """The connection, made now if there is none (or the last one broke)."""
        if self.closed:
            raise DatabaseError(f"the store on {self.shown} is closed; open a new engine")
        conn = self.conn
        if conn is not None and not conn.closed and not conn.broken:
            if not said_goodbye(conn):
                return conn
            conn.close()
        self.conn = None
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
        except psycopg.Error as exc:
            raise unreachable(self.shown, exc, self.url) from exc
        try:
            # The schema first on the path: every statement names bare tables.
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            conn.execute(
                sql.SQL("SET synchronous_commit TO {}").format(sql.Literal(self.synchronous_commit))
            )
        except psycopg.Error as exc:
            conn.close()
            raise database_error(self.shown, exc) from exc
        self.conn = conn
        self.pid = conn.info.backend_pid
        return conn

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """One transaction, committed at the end of the block (rolled back on error)."""
        with self.lock:
            conn = self.connect()
            try:
                with conn.transaction():
                    yield conn
            except psycopg.Error as exc:
                raise database_error(self.shown, exc) from exc

    def read(
        self, query: str, params: Sequence[object] = (), binary: bool = False
    ) -> list[tuple[Any, ...]]:
        """The rows of one query, run on its own (autocommit); with binary, in the
        binary format (a bytea comes as its bytes, not as hex text twice its size)."""
        with self.lock:
            conn = self.connect()
            try:
                return conn.execute(query, params, binary=binary).fetchall()
            except psycopg.Error as exc:
                if not conn.broken:
                    raise database_error(self.shown, exc) from exc
            # The connection was lost under the read (a session ended, a restart): a
            # read changes nothing, so it is asked once more on a new connection.
            try:
                return self.connect().execute(query, params, binary=binary).fetchall()
            except psycopg.Error as exc:
                raise database_error(self.shown, exc) from exc

    def close(self) -> None:
        """Close the connection; later use raises DatabaseError."""
        with self.lock:
            self.closed = True
            if self.conn is not None:
                self.conn.close()
                self.conn = None


def said_goodbye(conn: psycopg.Connection[Any]) -> bool:
    """Whether the server has closed this idle connection: its socket has something to
    read (the server's last message, or the end of the stream), where an idle session
    gets nothing unasked (the store never LISTENs on it). One poll, no round trip:
    after a server restart, the next call makes a new connection instead of failing."""
    if not hasattr(select, "poll"):  # Windows: the call finds out for itself
        return False
    try:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError, psycopg.Error):
        return True


def unreachable(shown: str, exc: BaseException, url: str) -> DatabaseError:
    """The error of a server that could not be reached or refused the login (at url:
    whatever libpq quoted of its password is hidden)."""
    detail = scrubbed(" ".join(str(exc).split()), url) or type(exc).__name__
    return DatabaseError(
        f"cannot connect to PostgreSQL at {shown}: {detail}. Check that the server is "
        f"running and accepts connections there, and that the user, password and "
        f"database in the URL are right."
    )
