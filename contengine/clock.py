"""All time the engine uses goes through a Clock, so tests can replace it."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Wall time for the log and timers, monotonic time for waiting, and sleeping."""

    def now(self) -> float:
        """Seconds since the epoch (written to the log, compared with due times)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never goes backwards (for timeouts)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block for this many seconds (a virtual clock just moves on)."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    def monotonic(self) -> float:
        """time.monotonic()."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """time.sleep(), never negative."""
        if seconds > 0:
            time.sleep(seconds)
