"""Text for people about runs and log entries: clipped values, outcomes, times, durations."""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..core.tracebacks import exception_line
from ..errors import ContengineError, StepFailed
from ..store.base import E_COMPLETED, E_FAILED, E_RETRYING

if TYPE_CHECKING:
    from ..drive.log import Entry
    from ..engine.engine import Engine
    from ..store.base import RunRow

ARGS_WIDTH = 40
OUTCOME_WIDTH = 80
NOTE_WIDTH = 100

Formatter = Callable[[Any], str]

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = OUTCOME_WIDTH
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 6


def outcome(e: Entry) -> str:
    """The outcome in short: a value's repr, an exception's type and message, or what is due."""
    try:
        if e.status == E_COMPLETED:
            return short(e.value)
        if e.status == E_FAILED:
            return exc_text(e.error)
    except ContengineError as exc:  # signed, or its classes are not importable here
        line = (
            (exception_line(e.error_text) or last_line(e.error_text))
            if e.status == E_FAILED
            else ""
        )
        return clip(line or unreadable(exc, e.run_id), OUTCOME_WIDTH)
    if e.status == E_RETRYING:
        due = "" if e.due_at is None else f" {iso(e.due_at)}"
        why = last_line(e.error_text)  # none: an attempt given back at a worker's stop
        return clip(f"retry due{due}" + (f" after {why}" if why else ""), OUTCOME_WIDTH)
    return "in flight"


def load(engine: Engine, data: bytes | None, run_id: str, what: str, fmt: Formatter) -> str:
    """A run's stored result or exception, loaded and shown by fmt (or why it cannot be)."""
    try:
        return fmt(engine.serde.loads(data or b"", f"the {what} of run {run_id!r}"))
    except ContengineError as exc:
        return unreadable(exc, run_id)


def run_error(engine: Engine, row: RunRow) -> str:
    """A failed run's exception in short: decoded where its class is importable, else
    the exception line of the traceback stored with it (or why neither can be shown)."""
    try:
        return exc_text(engine.serde.loads(row.error or b"", f"the exception of run {row.id!r}"))
    except ContengineError as exc:
        line = exception_line(row.error_text)
        return clip(line, OUTCOME_WIDTH) if line else unreadable(exc, row.id)


def unreadable(exc: ContengineError, run_id: str) -> str:
    """Why a stored value cannot be shown here, in short."""
    # Serde messages start by naming the payload ("the result of run 'r' ..."); the
    # row already says which one it is, so keep only the reason.
    reason = first_line(str(exc)).split(f" of run {run_id!r}", 1)[-1].strip()
    return clip(f"(unreadable here: it {reason})", OUTCOME_WIDTH)


def short(value: Any) -> str:
    """A value's repr, shortened to fit a table cell."""
    return clip(_repr.repr(value), OUTCOME_WIDTH)


def exc_text(exc: BaseException | None) -> str:
    """An exception as "Type: message", on one short line."""
    # A StepFailed stand-in already reads "OriginalType: message".
    text = str(exc) if isinstance(exc, StepFailed) else f"{type(exc).__name__}: {exc}"
    return clip(first_line(text), OUTCOME_WIDTH)


def first_line(text: str) -> str:
    """The first line of text, stripped ("" if there is none)."""
    return text.strip().splitlines()[0] if text.strip() else ""


def last_line(text: str | None) -> str:
    """The last line of text, stripped ("" if there is none)."""
    lines = (text or "").strip().splitlines()
    return lines[-1].strip() if lines else ""


def clip(text: str, width: int) -> str:
    """text on one line, cut to width characters with "..." at the end if it is longer."""
    text = " ".join(text.split())  # one line, whatever the value held
    return text if len(text) <= width else text[: width - 3] + "..."


def iso(timestamp: float) -> str:
    """A time in seconds since the epoch, as local ISO 8601 to the second."""
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


def span_text(seconds: float) -> str:
    """A duration for people: 12.3 ms, 4.56 s, 3m 05s, 2h 10m, 3d 4h."""
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    total = round(seconds)
    if total < 3600:
        return f"{total // 60}m {total % 60:02d}s"
    if total < 86400:
        return f"{total // 3600}h {total % 3600 // 60:02d}m"
    return f"{total // 86400}d {total % 86400 // 3600}h"
