"""Connections to the server: the URL and its schema, connecting, transactions, errors.

The store keeps two connections, each behind a lock: one writes (every write is one
explicit transaction on it) and one reads (autocommit: each read sees what was
committed when it ran). A connection the server dropped is replaced on next use;
the call that found it dropped raises DatabaseError (nothing of it was committed
unless the server had acknowledged the COMMIT).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from ...errors import DatabaseError

SCHEMES = ("postgresql://", "postgres://")
DEFAULT_SCHEMA = "contengine"
# libpq's own default waits forever for a server that does not answer.
CONNECT_TIMEOUT = 10
DURABILITY = {"full": "on", "normal": "off"}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")


def is_postgres_url(target: object) -> bool:
    """Whether target names a PostgreSQL server (postgresql:// or postgres://)."""
    return isinstance(target, str) and target.startswith(SCHEMES)


def split_url(url: str, schema: str | None) -> tuple[str, str]:
    """The libpq URL (without contengine's ?schema=) and the schema to use.

    schema= given both ways must agree; the name must be a plain identifier."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    in_url = [v for k, v in query if k == "schema"]
    rest = [(k, v) for k, v in query if k != "schema"]
    if in_url and schema is not None and in_url[-1] != schema:
        raise ValueError(
            f"the schema is given twice and differently: schema={schema!r} and "
            f"?schema={in_url[-1]} in the URL; give it once"
        )
    chosen = schema if schema is not None else (in_url[-1] if in_url else DEFAULT_SCHEMA)
    if not _NAME.fullmatch(chosen):
        raise ValueError(
            f"schema must be a plain PostgreSQL name (letters, digits, _ and $, not "
            f"starting with a digit, at most 63 characters), not {chosen!r}"
        )
    return urlunsplit(parts._replace(query=urlencode(rest))), chosen


def redacted(url: str) -> str:
    """The URL with its password (if any) replaced by ***, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def database_error(shown: str, exc: BaseException) -> DatabaseError:
    """The DatabaseError for a psycopg error met on the server named shown."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, psycopg.OperationalError):
        return DatabaseError(
            f"PostgreSQL at {shown}: {detail}. The connection was lost or refused; "
            f"whatever this call wrote was not committed. The next call reconnects."
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

    def connect(self) -> psycopg.Connection[Any]:
        """The connection, made now if there is none (or the last one broke)."""
        if self.closed:
            raise DatabaseError(f"the store on {self.shown} is closed; open a new engine")
        conn = self.conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self.conn = None
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
        except psycopg.Error as exc:
            raise unreachable(self.shown, exc) from exc
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

    def read(self, query: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """The rows of one query, run on its own (autocommit)."""
        with self.lock:
            conn = self.connect()
            try:
                return conn.execute(query, params).fetchall()
            except psycopg.Error as exc:
                raise database_error(self.shown, exc) from exc

    def close(self) -> None:
        """Close the connection; later use raises DatabaseError."""
        with self.lock:
            self.closed = True
            if self.conn is not None:
                self.conn.close()
                self.conn = None


def unreachable(shown: str, exc: BaseException) -> DatabaseError:
    """The error of a server that could not be reached or refused the login."""
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return DatabaseError(
        f"cannot connect to PostgreSQL at {shown}: {detail}. Check that the server is "
        f"running and accepts connections there, and that the user, password and "
        f"database in the URL are right."
    )
