"""A step's attempts as people read them: each one's real times, how it ended, its error.

The store keeps a row only for an attempt that failed, was found lost in a crash, or
began after one (store/rows.py AttemptRow); the rest comes from the log entry itself
(a first attempt that succeeds is its entry's started_at .. finished_at).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..core.tracebacks import exception_line
from ..store.base import (
    A_CRASHED,
    A_FAILED,
    E_COMPLETED,
    E_FAILED,
    E_RETRYING,
    E_RUNNING,
    AttemptRow,
)

# Attempt.outcome: how an attempt ended (or that it has not).
FAILED, CRASHED, COMPLETED, RUNNING = "failed", "crashed", "completed", "running"
# What the log's status says of its last attempt.
_LAST = {E_COMPLETED: COMPLETED, E_FAILED: FAILED, E_RUNNING: RUNNING, E_RETRYING: FAILED}


class Logged(Protocol):
    """What attempts_of() reads of a log entry (an EntryRow, or a history() Entry)."""

    @property
    def position(self) -> int: ...
    @property
    def status(self) -> str: ...
    @property
    def attempts(self) -> int: ...
    @property
    def started_at(self) -> float: ...
    @property
    def finished_at(self) -> float | None: ...
    @property
    def error_text(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt of a logged step: its number (1, 2, ...), outcome ("failed": it raised,
    "crashed": its worker died during it, "completed", "running"), real start and end,
    when a takeover found a crashed one, and a failed one's traceback text."""

    position: int
    number: int
    outcome: str
    started_at: float
    ended_at: float | None  # None while running, and for a crash (its end is unknown)
    found_at: float | None = None  # crashed: when another drive found it lost
    error_text: str | None = None

    @property
    def error(self) -> str | None:
        """The error's one-line summary ("ValueError: boom"; a crash's own words)."""
        if self.outcome == CRASHED:
            return "crashed: worker lost"
        return first_line(self.error_text)


def first_line(traceback_text: str | None) -> str | None:
    """The exception line of a traceback text ("Type: message", read through a chain of
    exceptions to the last), or the text's first line when it is no traceback."""
    if not traceback_text:
        return None
    found = exception_line(traceback_text)
    if found:
        return found
    lines = [line for line in traceback_text.splitlines() if line.strip()]
    return lines[0] if lines else None


def attempts_of(entry: Logged, rows: Iterable[AttemptRow]) -> list[Attempt]:
    """The entry's attempts, 1 .. entry.attempts, from its attempt rows and itself."""
    by_number = {r.attempt: r for r in rows if r.position == entry.position}
    out: list[Attempt] = []
    last_end = entry.started_at
    for n in range(1, entry.attempts + 1):
        row = by_number.get(n)
        if row is not None and row.outcome in (A_FAILED, A_CRASHED):
            outcome = FAILED if row.outcome == A_FAILED else CRASHED
            attempt = Attempt(
                entry.position, n, outcome, row.started_at, row.ended_at, row.found_at,
                row.error_text,
            )  # fmt: skip
        else:
            # The last attempt (its row, if any, holds only its start), or one of a log
            # written before attempt rows were kept: what the entry says.
            start = row.started_at if row is not None else last_end
            outcome = _LAST.get(entry.status, RUNNING) if n == entry.attempts else FAILED
            done = outcome != RUNNING and n == entry.attempts
            attempt = Attempt(
                entry.position, n, outcome, start, entry.finished_at if done else None,
                None, entry.error_text if outcome == FAILED and done else None,
            )  # fmt: skip
        out.append(attempt)
        last_end = attempt.ended_at or attempt.found_at or attempt.started_at
    return out


def attempts_by_position(
    entries: Sequence[Logged], rows: Iterable[AttemptRow]
) -> dict[int, list[Attempt]]:
    """attempts_of() for each entry that has attempt rows or more than one attempt."""
    grouped: dict[int, list[AttemptRow]] = {}
    for r in rows:
        grouped.setdefault(r.position, []).append(r)
    return {
        e.position: attempts_of(e, grouped.get(e.position, ()))
        for e in entries
        if e.position in grouped or e.attempts > 1
    }
