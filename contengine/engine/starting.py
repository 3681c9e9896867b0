"""Starting runs: the row of a new run, checked as start() checks it, and a list of
starts (start_many) checked whole before anything is written."""

from __future__ import annotations

import functools
import inspect
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..core.canonical import canonical_call, key_of
from ..core.ids import refuse_nul
from ..core.serde import Serde
from ..core.workflow import Workflow
from ..errors import IdConflict, SerializationError
from ..store.base import PENDING, RunRow
from .transfer import checked_id, checked_tags

__all__ = ["StartBatch", "check_same_start", "new_row"]

# The keyword arguments of a start that are start()'s own, not the workflow's.
START_OPTIONS = ("id", "tags", "queue", "priority")


MIN_PRIORITY, MAX_PRIORITY = -(2**31), 2**31 - 1  # a PostgreSQL integer


@functools.lru_cache(maxsize=1024)
def _signature(wf: Workflow[Any, Any]) -> inspect.Signature:
    """The signature of wf's function, read once per workflow: reading it costs more
    than the rest of a start's checks (start_many checks every start against it)."""
    return inspect.signature(wf.fn)


def new_row(
    wf: Workflow[Any, Any],
    serde: Serde,
    now: float,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    id: str | None = None,
    tags: Iterable[str] = (),
    queue: str | None = None,
    priority: int = 0,
) -> RunRow:
    """The row of a new run of wf; raises what start() refuses it with."""
    try:
        _signature(wf).bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"workflow {wf.name!r} cannot take these arguments: {exc}") from None
    run_id = checked_id(id if id is not None else uuid.uuid4().hex)
    args = tuple(args)
    try:
        # Read back now: arguments that could not be read later would leave the
        # run impossible to rebuild.
        data = serde.dumps_checked((args, kwargs), f"the arguments of run {run_id!r}")[0]
    except SerializationError:
        # Name the offending argument rather than the whole tuple.
        for i, a in enumerate(args):
            serde.dumps_checked(a, f"argument {i} of run {run_id!r} ({wf.name})")
        for k, v in kwargs.items():
            serde.dumps_checked(v, f"argument {k!r} of run {run_id!r} ({wf.name})")
        raise
    args_key = key_of(canonical_call(args, kwargs))
    if queue is not None and (not isinstance(queue, str) or not queue):
        raise ValueError(f"a queue name must be a non-empty string, not {queue!r}")
    if queue is not None:
        refuse_nul(queue, "the queue name")
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise TypeError(f"priority must be an int, not {priority!r}")
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        # PostgreSQL keeps a priority as an integer: the same bounds on both stores.
        raise ValueError(
            f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}, not {priority}"
        )
    return RunRow(
        run_id, wf.name, wf.ref, PENDING, data, args_key, now, now,
        tags=checked_tags(tags), queue=queue, priority=priority,
    )  # fmt: skip


def check_same_start(
    stored: RunRow, wf: Workflow[Any, Any], key: str | None, where: str = ""
) -> None:
    """IdConflict unless the stored run is the one a start of wf with args key `key`
    would record (where: the start that recorded it, when it is in the same list)."""
    exists = f"run {stored.id!r} already exists" + (f" (from {where})" if where else "")
    if stored.workflow != wf.name:
        raise IdConflict(
            f"{exists} for workflow {stored.workflow!r}; it was "
            f"not started again for {wf.name!r}. Use another id."
        )
    if stored.args_key is not None and key is not None and stored.args_key != key:
        raise IdConflict(
            f"{exists} with other arguments "
            f"(recorded {stored.args_key}, now {key}); ids are idempotency keys, "
            f"so one id is one run. Use another id for other arguments."
        )


class StartBatch:
    """The starts of a start_many(), each checked: what to write and how to vet it."""

    def __init__(
        self,
        resolve: Callable[[Any], Workflow[Any, Any]],
        serde: Serde,
        now: float,
        starts: Iterable[Any],
    ) -> None:
        self.prepared: list[tuple[Workflow[Any, Any], RunRow]] = []  # one per start
        self.unique: list[RunRow] = []  # the rows to write: one per id
        self._first: dict[str, int] = {}  # a run id: the first start that names it
        for i, start in enumerate(starts):
            try:
                workflow, args, kwargs = unpack_start(start)
                options = {k: kwargs.pop(k) for k in START_OPTIONS if k in kwargs}
                wf = resolve(workflow)
                row = new_row(wf, serde, now, args, kwargs, **options)
                seen = self._first.get(row.id)
                if seen is None:
                    self._first[row.id] = i
                    self.unique.append(row)
                else:
                    check_same_start(self.prepared[seen][1], wf, row.args_key, f"start {seen}")
            except Exception as exc:
                raise naming_start(exc, i) from exc.__cause__
            self.prepared.append((wf, row))

    def vet(self, index: int, stored: RunRow) -> None:
        """IdConflict, naming the start, unless unique[index] may be the stored run."""
        row = self.unique[index]
        i = self._first[row.id]
        try:
            check_same_start(stored, self.prepared[i][0], row.args_key)
        except Exception as exc:
            raise naming_start(exc, i) from None


def unpack_start(start: Any) -> tuple[Any, Sequence[Any], dict[str, Any]]:
    """A start_many() item as (workflow, args, a copy of kwargs)."""
    if isinstance(start, tuple) and len(start) in (2, 3):
        workflow, args, *rest = start
        kwargs = rest[0] if rest else {}
        if isinstance(args, (list, tuple)) and isinstance(kwargs, dict):
            return workflow, args, dict(kwargs)
    raise TypeError(
        f"a start is a tuple (workflow, args) or (workflow, args, kwargs) with args a "
        f"list or tuple and kwargs a dict, not {start!r}"
    )


def naming_start(exc: Exception, index: int) -> Exception:
    """exc, of the same type, with a message that begins by naming the start it refuses."""
    message = f"start {index} of the list: {exc}"
    try:
        named = type(exc)(message)
    except Exception:
        exc.add_note(message)
        return exc
    return named
