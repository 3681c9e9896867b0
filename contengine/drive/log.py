"""Log entries as users and the driver see them: a stored row plus lazy decoding."""

from __future__ import annotations

import operator
import pickle
from collections.abc import Sequence
from typing import Any, overload

from ..core.outcome import Outcome
from ..core.serde import Serde, short
from ..errors import CorruptPayload
from ..store.base import (
    E_COMPLETED,
    E_FAILED,
    E_RETRYING,
    E_RUNNING,
    EntryRow,
    LogRow,
    ReplayRow,
    Store,
)


def decode_outcome(serde: Serde, e: EntryRow | ReplayRow | Entry) -> Outcome | None:
    """A log entry's outcome read from its stored bytes; None while it is in flight."""
    status = e.status
    if status != E_COMPLETED and status != E_FAILED:
        _check_in_flight(e, e.run_id)
        return None
    data = e._data if isinstance(e, Entry) else e.outcome
    try:
        value = serde.loads(data or b"", _GENERIC)
    except CorruptPayload as exc:  # say which entry, on the rare path only
        raise CorruptPayload(str(exc).replace(_GENERIC, _which(e, e.run_id), 1)) from exc.__cause__
    if status == E_FAILED and not isinstance(value, BaseException):
        raise _not_an_exception(e, e.run_id, value)
    return Outcome(status == E_COMPLETED, value)


def _check_in_flight(e: EntryRow | ReplayRow | LogRow | Entry, run_id: str) -> None:
    """Nothing if e's status is one of a request in flight; CorruptPayload otherwise."""
    if e.status in (E_RUNNING, E_RETRYING):
        return
    # Taken for one in flight, its resumption's write would be refused as another
    # engine's doing (a DatabaseError, no note) and a worker would claim the run
    # again and again.
    raise CorruptPayload(
        f"{e.kind} {e.name!r} at position {e.position} of run {run_id!r} has an "
        f"unknown status {e.status!r}; the database was changed outside contengine. The "
        f"log is left as it is."
    )


def _not_an_exception(
    e: EntryRow | ReplayRow | LogRow | Entry, run_id: str, value: Any
) -> CorruptPayload:
    # Raised at the yield, it would be a TypeError that looks like the workflow's own.
    return CorruptPayload(
        f"{_which(e, run_id)} is a failure but decodes to {type(value).__name__} "
        f"{short(value)}, not an exception; the database was changed outside contengine. "
        f"The log is left as it is."
    )


def _which(e: EntryRow | ReplayRow | LogRow | Entry, run_id: str) -> str:
    return f"the outcome of {e.kind} {e.name!r} at position {e.position} of run {run_id!r}"


_GENERIC = "a log entry's outcome"


class StreamedLog(Sequence[LogRow]):
    """A run's log as replay reads it: a window of rows read ahead in chunks, each
    chunk dropped once replay has gone past it.

    Replay reads the log once, forward (a driver never looks back at a position it
    went past), so only the current chunk is held: memory does not grow with the
    log. The first chunk is small, so a long log does not delay the workflow's
    first line; later chunks are up to CHUNK rows and about CHUNK_BYTES of outcomes
    (an outcome longer than INLINE_OUTCOME is not in the chunk at all: it is read
    alone when its step is replayed, and dropped once decoded). Reading a position
    behind the window reads again from there: correct, only slower.
    """

    FIRST_CHUNK = 64
    # Small enough that reading a chunk (a tuple per row from the driver, another per
    # row made of it) leaves fewer new objects than the collector's first threshold
    # (700 by default): a chunk of thousands set off a young collection every few
    # hundred rows, and the full collections those lead to, which cost a 10,000-step
    # replay more than the extra queries of small chunks do (notes/decisions.md).
    CHUNK = 256
    CHUNK_BYTES = 1 << 20
    MIN_CHUNK = 16

    __slots__ = (
        "_store", "_run_id", "_serde", "_plain", "_rows", "_start", "_held", "_length", "_next",
        "most",
    )  # fmt: skip

    def __init__(self, store: Store, run_id: str, serde: Serde | None = None) -> None:
        self._store = store
        self._run_id = run_id
        self._serde = serde = serde or Serde()
        self._plain = not serde.signs
        self._rows: list[LogRow] = []
        self._start = 0  # the position of _rows[0]
        self._held = 0  # len(_rows)
        self._length = store.log_length(run_id)
        self._next = self.FIRST_CHUNK  # how many rows the next read asks for
        self.most = 0  # the most rows held at once (for tests and benchmarks)

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> LogRow: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[LogRow]: ...
    def __getitem__(self, index: int | slice) -> LogRow | Sequence[LogRow]:
        # Replay reads every row through here: the window's rows first, a slice (rare)
        # after them.
        if type(index) is int:
            at = index - self._start
            if 0 <= at < self._held:
                return self._rows[at]
        elif isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._length))]
        return self._read_from(index)

    def _read_from(self, index: int) -> LogRow:
        """Drop the window and read the next one, from index."""
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(index)
        self._rows, self._held = [], 0  # let the old chunk go before the next one is read
        index = operator.index(index)
        rows = self._store.replay_rows(self._run_id, index, self._next)
        if not rows:
            raise IndexError(index)
        self._rows, self._start, self._held = rows, index, len(rows)
        if len(rows) > self.most:
            self.most = len(rows)
        size = 0
        for row in rows:
            outcome = row[4]
            if outcome:
                size += len(outcome)
        # As many rows next time as fit CHUNK_BYTES at this chunk's average size.
        fit = self.CHUNK_BYTES * len(rows) // size if size else self.CHUNK
        self._next = max(self.MIN_CHUNK, min(self.CHUNK, fit))
        return rows[0]

    def window(self) -> list[LogRow]:
        """The rows held now."""
        return self._rows

    def release(self) -> None:
        """Replay is over: let the window go (the log is not read again)."""
        self._rows, self._held = [], 0
        self._start = self._length

    def decode(self, row: LogRow) -> Outcome | None:
        """A row's outcome read from its stored bytes (in place: no copy of them); None
        while its request is in flight."""
        status = row[3]
        if status == E_COMPLETED:
            ok = True
        elif status == E_FAILED:
            ok = False
        else:
            _check_in_flight(row, self._run_id)
            return None
        data = row[4]
        if not data:  # too long to read ahead: read alone, now
            data = self._store.load_log(self._run_id, row[5], 1)[0].outcome
        elif self._plain and data[0] == _PICKLE_TAG and len(data) <= _SHORT:
            # The common case (a short, unsigned pickle) without Serde.loads's
            # checks; anything it refuses takes the whole way, for its message.
            try:
                value = _pickle_loads(data[1:])
            except Exception:
                pass
            else:
                if ok or isinstance(value, BaseException):
                    outcome = _new(Outcome)  # Outcome(ok, value) without calling __init__
                    outcome.ok = ok
                    outcome.value = value
                    return outcome
        try:
            value = self._serde.loads(data or b"", _GENERIC)
        except CorruptPayload as exc:  # say which entry, on the rare path only
            which = _which(row, self._run_id)
            raise CorruptPayload(str(exc).replace(_GENERIC, which, 1)) from exc.__cause__
        if not ok and not isinstance(value, BaseException):
            raise _not_an_exception(row, self._run_id, value)
        return Outcome(ok, value)


_PICKLE_TAG = ord("P")  # core/serde.py's tag of a payload the standard pickler wrote
_SHORT = 512  # bytes: a slice of up to this many is cheaper than a view
_pickle_loads = pickle.loads
_new = object.__new__


class Entry:
    """One request in a run's log: position, kind, name, status, attempts and outcome."""

    __slots__ = (
        "run_id",
        "position",
        "kind",
        "name",
        "key",
        "text",
        "status",
        "attempts",
        "crashes",
        "started_at",
        "finished_at",
        "due_at",
        "error_text",
        "_data",
        "_serde",
    )

    def __init__(self, row: EntryRow, serde: Serde) -> None:
        self.run_id = row.run_id
        self.position = row.position
        self.kind = row.kind
        self.name = row.name
        self.key = row.key
        self.text = row.text
        self.status = row.status
        self.attempts = row.attempts
        self.crashes = row.crashes
        self.started_at = row.started_at
        self.finished_at = row.finished_at
        self.due_at = row.due_at
        self.error_text = row.error_text
        self._data = row.outcome
        self._serde = serde

    def outcome(self) -> Outcome | None:
        """The recorded outcome, decoded afresh each time; None while in flight."""
        return decode_outcome(self._serde, self)

    @property
    def done(self) -> bool:
        """Whether the outcome is recorded."""
        return self.status in (E_COMPLETED, E_FAILED)

    @property
    def value(self) -> Any:
        """The recorded value of a completed entry (None otherwise)."""
        return self.outcome().value if self.status == E_COMPLETED else None  # type: ignore[union-attr]

    @property
    def error(self) -> BaseException | None:
        """The recorded exception of a failed entry (None otherwise)."""
        return self.outcome().value if self.status == E_FAILED else None  # type: ignore[union-attr]

    @property
    def duration(self) -> float | None:
        """Seconds from the first attempt to the outcome, once there is one."""
        return None if self.finished_at is None else self.finished_at - self.started_at

    def describe(self) -> str:
        """One line such as `step charge('o-1', 500)`."""
        return f"{self.kind} {self.name}({self.text})"

    def __repr__(self) -> str:
        return f"<Entry {self.position}: {self.describe()} {self.status} attempts={self.attempts}>"
