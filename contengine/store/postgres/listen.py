"""Wake-ups on PostgreSQL: NOTIFY from the writes that make a run due, LISTEN on one
connection per engine.

Only four writes send a NOTIFY, on the schema's channel (sql.channel_of), in the
transaction that makes the change, so it is delivered at commit and only if it
commits: a run's start (and a child run's, or a retried or imported run's), a signal
that wakes a waiting run, a cancel, and a child's end that wakes its waiting parent.
Plain step progress never does: at commit a transaction with a NOTIFY pending takes a
lock that every other such transaction waits for, so notifying per step would
serialize the group commit of every engine on the server. The payload is the kind
("start", "signal", "cancel", "child"); PostgreSQL folds identical notifications of
one transaction into one, so a batch ending many children sends one.

A Listener is the other end: its own connection, LISTENing in a thread of its own,
which calls `woken` once for every burst of notifications from other sessions (not
for its own store's: the engine woke itself for what it wrote) and once after each
(re)connection, so whatever was sent while it was away is found by that look. A lost
connection is made again with a back-off; meanwhile wake-ups come from the engine's
poll interval, as they would without a listener.
"""

from __future__ import annotations

import logging
import os
import selectors
import threading
from collections.abc import Callable, Collection
from typing import Any

import psycopg
from psycopg import pq, sql

from ..base import Listening
from .connection import CONNECT_TIMEOUT
from .url import scrubbed

log = logging.getLogger("contengine")

# Seconds between attempts to connect again: doubling from the first to the last.
RETRY_FIRST, RETRY_MAX = 0.05, 5.0
APPLICATION = "contengine listener"


class Listener(Listening):
    """LISTENs on a channel in a thread of its own, calling woken as it hears."""

    def __init__(
        self,
        url: str,
        shown: str,
        channel: str,
        woken: Callable[[], None],
        own: Callable[[], Collection[int]],
    ) -> None:
        self.url, self.shown, self.channel = url, shown, channel
        self.woken = woken
        self.own = own  # server processes of this store's own connections
        self.connects = 0  # connections made so far (a test waits for a reconnection)
        self.heard = 0  # notifications from other sessions so far
        self._lock = threading.Lock()
        self._closed = False
        # close() writes a byte here: the thread's wait ends at once, not at a timeout.
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="contengine-listen", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread and close its connection."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.write(self._stop_w, b"x")
        if self._thread is not threading.current_thread():
            # A connect under way ends within its timeout; the thread is a daemon.
            self._thread.join(CONNECT_TIMEOUT + 1)

    # -- the thread -------------------------------------------------------------

    def _run(self) -> None:
        delay = RETRY_FIRST
        lost: str | None = None  # why the last connection failed, until one is made
        try:
            while not self._closed:
                try:
                    conn = self._connect()
                except psycopg.Error as exc:
                    lost = self._lost(lost, exc)
                    if self._wait(delay):
                        return
                    delay = min(delay * 2, RETRY_MAX)
                    continue
                delay = RETRY_FIRST
                self.connects += 1
                if lost is not None:
                    log.warning("listening for wake-ups at %s again", self.shown)
                    lost = None
                try:
                    self.woken()  # what was sent before LISTEN took effect
                    self._listen(conn)
                except psycopg.Error as exc:
                    lost = self._lost(lost, exc)
                finally:
                    conn.close()
        finally:
            with self._lock:
                self._closed = True  # close() writes to the pipe no more
                os.close(self._stop_r)
                os.close(self._stop_w)

    def _lost(self, lost: str | None, exc: BaseException) -> str:
        """Say once (per loss) that wake-ups from elsewhere are not heard for now."""
        detail = scrubbed(" ".join(str(exc).split()), self.url) or type(exc).__name__
        if lost is None and not self._closed:
            log.warning(
                "not listening for wake-ups at %s (%s); other processes' starts, signals "
                "and cancels are seen every poll interval until the connection is back",
                self.shown,
                detail,
            )
        return detail

    def _connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(
            self.url,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT,
            application_name=APPLICATION,
            # TCP keepalives: a connection whose peer vanished (a host down, a network
            # cut) is found dead in about 20 s instead of never (a listener only reads).
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=3,
            keepalives_count=3,
        )
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        except BaseException:
            conn.close()
            raise
        return conn

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        """Hear notifications until closed (return) or the connection is lost (raise)."""
        pgconn = conn.pgconn
        with selectors.DefaultSelector() as sel:
            sel.register(conn.fileno(), selectors.EVENT_READ)
            sel.register(self._stop_r, selectors.EVENT_READ)
            while True:
                ready = {key.fd for key, _ in sel.select()}
                if self._stop_r in ready:
                    return
                pgconn.consume_input()  # OperationalError once the server is gone
                heard = 0
                own = self.own()
                while (note := pgconn.notifies()) is not None:
                    heard += note.be_pid not in own
                if pgconn.status != pq.ConnStatus.OK:
                    raise psycopg.OperationalError("the listening connection was closed")
                if heard:
                    self.heard += heard
                    self.woken()  # once for the burst: one look finds every run it made due

    def _wait(self, seconds: float) -> bool:
        """Sleep seconds before connecting again; True if closed meanwhile."""
        with selectors.DefaultSelector() as sel:
            sel.register(self._stop_r, selectors.EVENT_READ)
            return bool(sel.select(seconds)) or self._closed
