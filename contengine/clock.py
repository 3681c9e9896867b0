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

    # The builtins themselves (seconds since the epoch; time.monotonic()), not methods
    # that call them: a step reads the clock a few times, and a Python frame per read
    # shows in the per-step cost.
    now = staticmethod(time.time)
    monotonic = staticmethod(time.monotonic)

    def sleep(self, seconds: float) -> None:
        """time.sleep(), never negative."""
        if seconds > 0:
            time.sleep(seconds)
