"""A step's attempts on the pages and in `show`: each at its real time, a crash told
apart from an exception, and the time a dead worker held the step until a takeover."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from html import escape

from ..drive.history import CRASHED, FAILED, Attempt, Logged, attempts_of
from ..engine.engine import Engine
from ..store.base import AttemptRow

# Added to the page's style sheet (timeline.py).
STYLE = """
svg .try { fill: #fff; stroke: var(--ink); stroke-width: 1; }
svg .try.failed { stroke: var(--fail); fill: #fde8e8; }
svg .try.crashed { fill: none; stroke: var(--fail); stroke-dasharray: 2 1.5; stroke-width: 1.5; }
svg .dead { fill: #c3c9d1; fill-opacity: .55; stroke: #9aa5b1; stroke-dasharray: 3 2; }
"""
LEGEND = (
    "<span>○ attempt, at its start (red: failed; dashed: crashed, its worker lost)</span>"
    '<span><i class="sw" style="background:#c3c9d1"></i>worker dead until a takeover</span>'
)


def at(timestamp: float) -> str:
    """A time to the millisecond (attempts a few ms apart stay apart)."""
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="milliseconds")


def summary(a: Attempt) -> str:
    """One line: "attempt 2 failed: ValueError: boom", "attempt 1 crashed: worker lost"."""
    if a.outcome == CRASHED:
        return f"attempt {a.number} crashed: worker lost"
    error = a.error if a.outcome == FAILED else None
    return f"attempt {a.number} {a.outcome}" + (f": {error}" if error else "")


def times(a: Attempt) -> str:
    """When the attempt ran (and, for a crash, when a takeover found it lost)."""
    if a.outcome == CRASHED:
        found = f", found lost at {at(a.found_at)}" if a.found_at is not None else ""
        return f"started {at(a.started_at)}, end unknown{found}"
    end = f", ended {at(a.ended_at)}" if a.ended_at is not None else ""
    took = f" ({(a.ended_at - a.started_at) * 1000:.1f} ms)" if a.ended_at is not None else ""
    return f"started {at(a.started_at)}{end}{took}"


class Tries:
    """The attempts of the log entries a page or `show` draws, read once per run."""

    def __init__(self, engine: Engine, run_id: str) -> None:
        self.engine, self.run_id = engine, run_id
        self._rows: dict[str, list[AttemptRow]] = {}

    def of(self, e: Logged, run_id: str | None = None) -> list[Attempt]:
        """The entry's attempts ([] for an entry tried once, with no row of its own)."""
        rid = run_id or self.run_id
        rows = self._rows.get(rid)
        if rows is None:
            rows = self._rows[rid] = self.engine.store.load_attempts(rid)
        mine = [r for r in rows if r.position == e.position]
        if e.attempts <= 1 and not mine:
            return []
        return attempts_of(e, mine)


def marks_svg(tries: Sequence[Attempt], x: Callable[[float], float], y: int, h: int) -> str:
    """The attempts of one timeline row: a mark at each start, with its tooltip, and a grey
    segment from a crashed attempt's start to the takeover that found it lost."""
    parts = []
    for a in tries:
        if a.outcome == CRASHED and a.found_at is not None:
            x0, x1 = x(a.started_at), x(a.found_at)
            tip = (
                f"worker dead during attempt {a.number}: from its start {at(a.started_at)} "
                f"(the last moment it was known alive) to the takeover at {at(a.found_at)}"
            )
            parts.append(
                f'<rect class="dead" x="{x0:.1f}" y="{y + 3}" width="{max(x1 - x0, 2.0):.1f}" '
                f'height="{h - 6}"><title>{escape(tip)}</title></rect>'
            )
    for a in tries:
        tip = "\n".join([summary(a), times(a)])
        parts.append(
            f'<circle class="try {a.outcome}" cx="{x(a.started_at):.1f}" cy="{y + h / 2}" '
            f'r="3.5"><title>{escape(tip)}</title></circle>'
        )
    return "".join(parts)


def attempt_lines(tries: Tries, entries: Sequence[Logged]) -> list[str]:
    """For `show`: each attempt of each entry that has more than one attempt or a row,
    with its time, outcome and error's first line."""
    lines: list[str] = []
    for e in entries:
        found = tries.of(e)
        if not found:
            continue
        lines.append(f"  position {e.position}:")
        lines += [f"    {summary(a)}; {times(a)}" for a in found]
    return lines
