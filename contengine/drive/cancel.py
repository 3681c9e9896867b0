"""A cancel that comes while a step runs: raised at that step's own yield.

As asyncio raises CancelledError at the await in progress, the yield of the step that
was running when the cancel came gets ce.Cancelled, so a `finally:` or `except
ce.Cancelled:` around it runs, and the cleanup steps it yields run. The step's own
result is dropped (its text is kept in the entry's error_text for operators), and the
entry is logged failed with ce.Cancelled, so a replay raises it at the same yield
(DriveState.fail_cancelled).

A step's outcome is written with the next request, after the workflow has gone on to
that request. A cancel found before that write (noted in this process, looked up, or
read by the write itself: Progress.unless_cancelled) is still raised at the step's
yield: the write is not made, the cancel is logged at the step, and the run is driven
again from its log, which raises it there (DriveState.cancel_carried, Rewound; the
outbox's fresh carry marks such an outcome). A cancel noted when the step ends, before
its outcome is sent in, needs no rewind (at_step).
"""

from __future__ import annotations

from typing import Any

from ..core.driver import Pending
from ..core.gather import GatherRequest
from ..core.outcome import Outcome
from ..errors import Cancelled, StepFailed
from ..store.base import E_COMPLETED, E_FAILED, EntryRow
from .state import DriveState


def noted(d: DriveState) -> bool:
    """Whether the drive knows of a cancel not delivered yet (read by a write, or sent
    from this process), without asking the store."""
    return d.cancel_pending or (bool(d.r.cancelled) and d.run.id in d.r.cancelled)


def at_step(d: DriveState, entry: EntryRow, ok: bool, value: Any, tb: str) -> Outcome:
    """The step's attempt ended with a cancel noted: the step's yield gets ce.Cancelled
    (logged with the next commit, as its outcome would have been); no retry starts."""
    d.take_cancel()
    d.fail_cancelled(entry, ok, value, tb, d.r.clock.now())
    d.out.carry = entry
    return d.finished_outcome(entry)


def member_ended(d: DriveState, entry: EntryRow, ok: bool, value: Any, tb: str) -> Outcome:
    """A gather's member step ended with a cancel noted: logged cancelled (its result
    dropped), so the gather's outcome is ce.Cancelled. The cancel is delivered by the
    gather, once its running members have ended (settle_gather)."""
    d.fail_cancelled(entry, ok, value, tb, d.r.clock.now())
    d.commit(update=entry)
    return d.finished_outcome(entry)


def is_cancel(o: Outcome | None) -> bool:
    """Whether a member's outcome is a cancellation."""
    return o is not None and not o.ok and isinstance(o.value, Cancelled)


def settle_gather(
    d: DriveState,
    pending: Pending,
    request: GatherRequest,
    entries: list[EntryRow],
    outcomes: list[Outcome | None],
) -> Outcome | None:
    """A gather (or race) whose running members have ended: if a member was cancelled
    as it ended, or a cancel is noted with members left to run or wait, the members
    left are cancelled (none starts) and the gather's yield gets ce.Cancelled; None
    when the gather goes on as usual."""
    if request.kind == "race":
        first = next((o for o in outcomes if o is not None), None)
        hit = is_cancel(first) or (first is None and noted(d))
    else:
        hit = any(is_cancel(o) for o in outcomes) or (noted(d) and any(o is None for o in outcomes))
    if not hit:
        return None
    error = d.take_cancel()
    now = d.r.clock.now()
    if request.kind == "race":
        header = d.read_entry(pending.position)
        if header.status not in (E_COMPLETED, E_FAILED):
            d.fail_entry(header, error, "Cancelled: the run was cancelled", now)
            d.commit(update=header)
    for i, entry in enumerate(entries):
        if outcomes[i] is None and entry.status not in (E_COMPLETED, E_FAILED):
            d.fail_entry(entry, error, "Cancelled: the run was cancelled", now)
            d.commit(update=entry)
    serde = d.r.serde
    return Outcome(
        False, serde.loads(serde.dumps_error(error, "a cancellation", StepFailed), "a cancellation")
    )
