"""Log entries as users and the driver see them: a stored row plus lazy decoding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, overload

from ..core.outcome import Outcome
from ..core.serde import Serde, short
from ..errors import CorruptPayload
from ..store.base import E_COMPLETED, E_FAILED, E_RETRYING, E_RUNNING, EntryRow, ReplayRow, Store


def decode_outcome(serde: Serde, e: EntryRow | ReplayRow | Entry) -> Outcome | None:
    """A log entry's outcome read from its stored bytes; None while it is in flight."""
    status = e.status
    if status != E_COMPLETED and status != E_FAILED:
        if status in (E_RUNNING, E_RETRYING):
            return None
        # Taken for one in flight, its resumption's write would be refused as another
        # engine's doing (a DatabaseError, no note) and a worker would claim the run
        # again and again.
        raise CorruptPayload(
            f"{e.kind} {e.name!r} at position {e.position} of run {e.run_id!r} has an "
            f"unknown status {status!r}; the database was changed outside contengine. The "
            f"log is left as it is."
        )
    data = e._data if isinstance(e, Entry) else e.outcome
    try:
        value = serde.loads(data or b"", _GENERIC)
    except CorruptPayload as exc:  # say which entry, on the rare path only
        raise CorruptPayload(str(exc).replace(_GENERIC, _which(e), 1)) from exc.__cause__
    if status == E_FAILED and not isinstance(value, BaseException):
        # Raised at the yield, it would be a TypeError that looks like the workflow's own.
        raise CorruptPayload(
            f"{_which(e)} is a failure but decodes to {type(value).__name__} {short(value)}, "
            f"not an exception; the database was changed outside contengine. The log is "
            f"left as it is."
        )
    return Outcome(status == E_COMPLETED, value)


def _which(e: EntryRow | ReplayRow | Entry) -> str:
    return f"the outcome of {e.kind} {e.name!r} at position {e.position} of run {e.run_id!r}"


_GENERIC = "a log entry's outcome"


class StreamedLog(Sequence[ReplayRow]):
    """A run's log, read in growing chunks as replay reaches them.

    A long log does not delay the workflow's first line: the first chunk is small,
    and the rest is read while the replay is already under way.
    """

    FIRST_CHUNK = 64
    CHUNK = 4096

    def __init__(self, store: Store, run_id: str) -> None:
        self._store = store
        self._run_id = run_id
        self._rows: list[ReplayRow] = []
        self._length = store.log_length(run_id)

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> ReplayRow: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[ReplayRow]: ...
    def __getitem__(self, index: int | slice) -> ReplayRow | Sequence[ReplayRow]:
        if isinstance(index, slice) or index < 0:
            self._load(self._length)
            return self._rows[index]
        rows = self._rows
        if index >= len(rows):
            self._load(index + 1)
        return rows[index]

    def _load(self, count: int) -> None:
        rows = self._rows
        while len(rows) < min(count, self._length):
            chunk = self.FIRST_CHUNK if not rows else self.CHUNK
            more = self._store.replay_log(self._run_id, len(rows), chunk)
            if not more:
                break
            rows.extend(more)
        if count > len(rows) and count <= self._length:
            raise IndexError(count - 1)


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
