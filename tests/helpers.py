"""Test doubles shared by the test modules."""

from __future__ import annotations


class FakeClock:
    """A virtual clock: sleeping records the delay and moves time on at once."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.t = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        """Virtual wall time."""
        return self.t

    def monotonic(self) -> float:
        """Virtual monotonic time (the same as wall time here)."""
        return self.t

    def sleep(self, seconds: float) -> None:
        """Record the delay and jump ahead."""
        self.sleeps.append(seconds)
        self.t += max(seconds, 0.0)


class Crash(BaseException):
    """Stands for the process dying in the middle of a step."""
