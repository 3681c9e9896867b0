"""VirtualClock: time that only moves when the engine (or the test) moves it."""

from __future__ import annotations

import datetime
import threading


class VirtualClock:
    """A clock for tests: sleeping advances it at once, and run_until_idle() jumps it
    straight to the next due timer, so `ce.sleep(days=30)` takes microseconds."""

    virtual = True  # tells the engine it may jump this clock to the next timer

    def __init__(self, start: float | datetime.datetime = 1_767_225_600.0) -> None:
        """Start at `start` (epoch seconds or an aware datetime; default 2026-01-01 UTC)."""
        if isinstance(start, datetime.datetime):
            if start.tzinfo is None:
                raise ValueError("VirtualClock needs an aware datetime (with a tzinfo)")
            start = start.timestamp()
        self._t = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        """The virtual time, in seconds since the epoch."""
        return self._t

    def monotonic(self) -> float:
        """The same virtual time: it never goes backwards."""
        return self._t

    def sleep(self, seconds: float) -> None:
        """Advance by seconds, without waiting."""
        self.advance(max(seconds, 0.0))

    def advance(self, seconds: float | datetime.timedelta) -> None:
        """Move time forward (a test saying "an hour passes")."""
        if isinstance(seconds, datetime.timedelta):
            seconds = seconds.total_seconds()
        if seconds < 0:
            raise ValueError("a VirtualClock only moves forward")
        with self._lock:
            self._t += seconds

    def jump_to(self, when: float) -> None:
        """Move time forward to `when` (epoch seconds); earlier times are ignored."""
        with self._lock:
            self._t = max(self._t, when)

    @property
    def datetime(self) -> datetime.datetime:
        """The virtual time as an aware UTC datetime."""
        return datetime.datetime.fromtimestamp(self._t, datetime.UTC)

    def __repr__(self) -> str:
        return f"<VirtualClock {self.datetime.isoformat()}>"
