"""A cancel that comes while a step runs: raised at that step's own yield.

As asyncio raises CancelledError at the await in progress, the yield of the step that
was running when the cancel came gets ce.Cancelled, so a `finally:` or `except
ce.Cancelled:` around it runs, and the cleanup steps it yields run. The step's own
result is dropped (its text is kept in the entry's error_text for operators), and the
entry is logged failed with ce.Cancelled, so a replay raises it at the same yield.

A step's outcome is written with the next request, after the workflow has gone on to
that request. A cancel found before that write (noted in this process, looked up, or
read by the write itself: Progress.unless_cancelled) is still raised at the step's
yield: the write is not made, the cancel is logged at the step, and the run is driven
again from its log (rewind), which raises it there. A cancel noted when the step ends,
before its outcome is sent in, needs no rewind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

from ..core.driver import Pending
from ..core.gather import GatherRequest
from ..core.idle import NotDue
from ..core.outcome import Outcome
from ..core.serde import short
from ..errors import Cancelled, StepFailed
from ..store.base import E_COMPLETED, E_FAILED, EntryRow, RunUpdate

if TYPE_CHECKING:
    from .loop import _Drive


class Rewound(NotDue):
    """The run is due now and must be replayed from its log (its generator is not kept)."""


def noted(d: _Drive) -> bool:
    """Whether the drive knows of a cancel not delivered yet (read by a write, or sent
    from this process), without asking the store."""
    return d.cancel_pending or (bool(d.r.cancelled) and d.run.id in d.r.cancelled)


def deliver(d: _Drive) -> None:
    """The cancel is raised now: the next commit says so (the row's flag goes to
    delivered), and this process's note of it is taken out."""
    d.cancel_pending = False
    with d.r.cancel_lock:  # a cancel() still between its write and its note
        d.r.cancelled.discard(d.run.id)
    d.clear_cancel = True


def cancelled_error(d: _Drive, entry: EntryRow) -> Cancelled:
    """The ce.Cancelled raised at the yield of the step (entry) that was running."""
    error = Cancelled(f"run {d.run.id!r} was cancelled")
    error.add_note(
        f"contengine: the cancel came while step {entry.name!r} (position {entry.position}) "
        f"ran; it is raised at that step's yield and the step's result was dropped"
    )
    return error


def dropped(ok: bool, value: Any, tb: str) -> str:
    """The error_text of a step's entry cancelled while it ran: what it gave, dropped."""
    head = "Cancelled: the run was cancelled while this step ran; "
    if ok:
        return head + f"its result was dropped: {short(value)}"
    return head + "its failure was dropped:\n" + tb


def at_step(d: _Drive, entry: EntryRow, ok: bool, value: Any, tb: str) -> Outcome:
    """The step's attempt ended with a cancel noted: the step's yield gets ce.Cancelled
    (logged with the next commit, as its outcome would have been); no retry starts."""
    deliver(d)
    d._fail_entry(entry, cancelled_error(d, entry), dropped(ok, value, tb), d.r.clock.now())
    d.carry = entry
    return d._finished_outcome(entry)


def rewind(d: _Drive) -> NoReturn:
    """A cancel found after the workflow went past a step whose outcome is not written
    yet (d.carry): write the step as cancelled instead, drop everything the workflow did
    after it (none of it is written), and drive the run again from its log, whose
    replay raises ce.Cancelled at that step's yield (NotDue: due now)."""
    entry = d.carry
    assert entry is not None and d.fresh, "only a step's unwritten outcome is rewound"
    d.fresh = False
    d.recorded.clear()
    d.consume = None
    d.new_runs.clear()
    d.publish.clear()
    d.restart = None
    d.idle_at = None  # the generator went past the step: it must not be kept
    serde = d.r.serde
    if entry.status == E_COMPLETED and entry.outcome is not None:
        value = serde.loads(entry.outcome, f"the result of step {entry.name!r}")
        text = dropped(True, value, "")
    else:
        text = dropped(False, None, entry.error_text or "")
    deliver(d)
    now = d.r.clock.now()
    d._fail_entry(entry, cancelled_error(d, entry), text, now)
    d._commit(run=RunUpdate(d.status, now, due_at=now))
    raise Rewound(now)


def member_ended(d: _Drive, entry: EntryRow, ok: bool, value: Any, tb: str) -> Outcome:
    """A gather's member step ended with a cancel noted: logged cancelled (its result
    dropped), so the gather's outcome is ce.Cancelled. The cancel is delivered by the
    gather, once its running members have ended (settle_gather)."""
    d._fail_entry(entry, cancelled_error(d, entry), dropped(ok, value, tb), d.r.clock.now())
    d._commit(update=entry)
    return d._finished_outcome(entry)


def is_cancel(o: Outcome | None) -> bool:
    """Whether a member's outcome is a cancellation."""
    return o is not None and not o.ok and isinstance(o.value, Cancelled)


def settle_gather(
    d: _Drive,
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
    deliver(d)
    now = d.r.clock.now()
    error = Cancelled(f"run {d.run.id!r} was cancelled")
    if request.kind == "race":
        header = d.r.store.load_log(d.run.id, pending.position, 1)[0]
        d.stored[header.position] = header.attempts
        if header.status not in (E_COMPLETED, E_FAILED):
            d._fail_entry(header, error, "Cancelled: the run was cancelled", now)
            d._commit(update=header)
    for i, entry in enumerate(entries):
        if outcomes[i] is None and entry.status not in (E_COMPLETED, E_FAILED):
            d._fail_entry(entry, error, "Cancelled: the run was cancelled", now)
            d._commit(update=entry)
    serde = d.r.serde
    return Outcome(
        False, serde.loads(serde.dumps_error(error, "a cancellation", StepFailed), "a cancellation")
    )
