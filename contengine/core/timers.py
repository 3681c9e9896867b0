"""Requests about time and signals: durable sleeps and waits, and durations as text."""

from __future__ import annotations

import datetime
from collections.abc import Generator
from typing import Any, ClassVar

from .ids import refuse_nul
from .requests import Request


class SleepRequest(Request):
    """A durable timer: the run sleeps until a wake time recorded when it first sleeps."""

    __slots__ = ("seconds", "until")
    kind: ClassVar[str] = "sleep"

    def __init__(self, seconds: float | None, until: float | None) -> None:
        self.seconds = seconds
        self.until = until

    @property
    def key(self) -> str | None:
        if self.until is not None:
            return f"until={self.until!r}"
        return repr(self.seconds)

    @property
    def text(self) -> str:
        if self.until is not None:
            stamp = datetime.datetime.fromtimestamp(self.until, datetime.UTC)
            if stamp.timestamp() != self.until:  # finer than a microsecond: say so
                return f"until {stamp.isoformat()} ({self.until!r})"
            return f"until {stamp.isoformat()}"
        return exact_duration(self.seconds or 0.0)

    def wake_time(self, now: float) -> float:
        """The absolute time to wake at, for a sleep that starts now."""
        return self.until if self.until is not None else now + (self.seconds or 0.0)

    def __iter__(self) -> Generator[SleepRequest, Any, None]:
        """`yield from ce.sleep(...)` for symmetry with the other requests."""
        yield self


def short_duration(seconds: float) -> str:
    """Readable seconds: 0.25s, 90s -> 1m30s, 2592000 -> 30d."""
    if seconds != seconds or abs(seconds) == float("inf"):
        return "forever" if seconds > 0 else f"{seconds}"
    if seconds < 60:
        return f"{seconds:g}s"
    parts, rest = [], int(round(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts)


def exact_duration(seconds: float) -> str:
    """Readable seconds that still tell two durations apart: 2h, but 2h (7200.4s)."""
    text = short_duration(seconds)
    if seconds != seconds or abs(seconds) == float("inf"):
        return text
    if seconds < 60:
        return text if float(f"{seconds:g}") == seconds else f"{seconds!r}s"
    return text if seconds == int(seconds) else f"{text} ({seconds!r}s)"


def sleep(duration: float | datetime.timedelta) -> SleepRequest:
    """Sleep durably for a number of seconds or a timedelta; a restart keeps the deadline."""
    seconds = duration.total_seconds() if isinstance(duration, datetime.timedelta) else duration
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        raise TypeError(f"ce.sleep() needs seconds or a timedelta, not {duration!r}")
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError(
            f"ce.sleep() needs a finite duration, not {duration!r}; to wait until something "
            f"happens, use ce.wait(name) and send it a signal"
        )
    return SleepRequest(float(seconds), None)


def sleep_until(when: datetime.datetime) -> SleepRequest:
    """Sleep durably until an aware datetime (naive ones are refused: whose clock?)."""
    if not isinstance(when, datetime.datetime):
        raise TypeError(f"ce.sleep_until() needs a datetime, not {when!r}")
    if when.tzinfo is None:
        raise ValueError(
            "ce.sleep_until() needs an aware datetime (e.g. with tzinfo=datetime.UTC); a "
            "naive one would mean different times on different machines"
        )
    return SleepRequest(None, when.timestamp())


class WaitRequest(Request):
    """Wait for the next signal sent to this run under a name, for at most timeout seconds."""

    __slots__ = ("signal", "timeout")
    kind: ClassVar[str] = "wait"

    def __init__(self, signal: str, timeout: float | None) -> None:
        self.signal = signal
        self.timeout = timeout

    @property
    def name(self) -> str:
        return self.signal

    @property
    def key(self) -> str | None:
        return "" if self.timeout is None else f"timeout={self.timeout!r}"

    @property
    def text(self) -> str:
        return "" if self.timeout is None else f"timeout={exact_duration(self.timeout)}"

    def __iter__(self) -> Generator[WaitRequest, Any, Any]:
        """`payload = yield from ce.wait(name)`."""
        result: Any = yield self
        return result


def wait(name: str, timeout: float | datetime.timedelta | None = None) -> WaitRequest:
    """Wait durably for a signal sent with engine.signal(run_id, name, payload).

    Returns the payload. Signals sent before the run waits are kept, oldest first;
    each is delivered once. After timeout seconds ce.Timeout is raised at the yield,
    and that is logged, so a replay takes the same branch even if the signal came later.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a signal name must be a non-empty string, not {name!r}")
    refuse_nul(name, "the signal name")
    if isinstance(timeout, datetime.timedelta):
        timeout = timeout.total_seconds()
    if timeout is not None and (not isinstance(timeout, int | float) or timeout < 0):
        raise ValueError(f"a wait's timeout must be seconds >= 0 or None, not {timeout!r}")
    return WaitRequest(name, None if timeout is None else float(timeout))
