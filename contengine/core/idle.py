"""How a drive says a run must wait: NotDue, and the due time of waiting forever."""

from __future__ import annotations

from .timers import short_duration

NEVER = float("inf")  # the due time of a wait without a timeout (no time wakes it)


class NotDue(Exception):
    """The run waits (a retry, a timer, a signal, a child) until `due_at`; nothing more now."""

    def __init__(self, due_at: float) -> None:
        super().__init__(due_at)
        self.due_at = due_at


def duration_text(seconds: float | None) -> str:
    """Readable seconds, or "forever" for None."""
    return "forever" if seconds is None else short_duration(seconds)
