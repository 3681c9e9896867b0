"""Retrying a failed run: where it resumes, which child runs are retried with it, and
what is refused (nothing is written then).

A failed run resumes at the failed request whose exception ended it: the driver
notes that position when the run fails (the earliest failure thrown into the
workflow that its exception is, or was raised from or while handling), and the
first line of the run's error text keeps it. The log from there on is discarded
(a saga's compensating entries, say) and replay up to it is unchanged. A run that
failed in its own code resumes after its log. A parent that failed at a child run
retries the failed child (and its failed child, and so on) in the same transaction.

A cancelled run resumes where the cancel was raised: at the earliest entry the cancel
was logged as (a step, a wait, a sleep, a child; the whole gather or race holding it),
so the cleanup its `finally:` blocks yielded is discarded with the rest and runs again
when the run is cancelled again. The child runs the cancel took down with it (the one it
waited on at that point, and those it started and had not yet joined) are resumed in the
same transaction, each at its own cancel point.

A plan is made from reads outside that transaction, so each of its runs carries a
digest of what was read (Rewind.seen), and the rewind refuses, changing nothing, if
any run is no longer so: another retry and its re-run may have failed it elsewhere
meanwhile, and the old plan would discard steps completed since.
"""

from __future__ import annotations

from ..core import ids
from ..drive.failure import AT_FAILURE_RE, OWN_CODE
from ..errors import ContengineError, RunNotFound
from ..store.base import (
    CANCELLED,
    E_COMPLETED,
    E_FAILED,
    E_RUNNING,
    FAILED,
    EntryRow,
    Rewind,
    RunRow,
    Store,
    run_digest,
)

# Entries that start child runs: discarding one would let the re-run adopt that run.
_STARTS_CHILD = frozenset({"child", "start_child"})


def group_of(entries: list[EntryRow], position: int) -> tuple[int, int] | None:
    """(first, last) positions of the gather or race whose span holds position, if any."""
    for e in entries[: position + 1]:
        if e.kind in ("gather", "race"):
            try:  # a gather's or race's own entry has its member count as key
                last = e.position + int(e.key or 0)
            except ValueError:
                last = e.position
            if e.position <= position <= last:
                return e.position, last
    return None


def resume_position(row: RunRow, entries: list[EntryRow]) -> int:
    """Where the failed run resumes by default (see the module's docstring)."""
    first = (row.error_text or "").split("\n", 1)[0] + "\n"
    if first == OWN_CODE:
        return len(entries)
    match = AT_FAILURE_RE.match(first)
    if match is not None and int(match.group(1)) < len(entries):
        at = int(match.group(1))
        group = group_of(entries, at)
        return group[0] if group is not None else at
    # A run that failed before its error text said where: its failed last entry, the
    # gather or race holding a failure at the end of the log, or after the log.
    if not entries:
        return 0
    last = entries[-1]
    group = group_of(entries, last.position)
    if group is not None and any(e.status == E_FAILED for e in entries[group[0] :]):
        return group[0]
    return last.position if last.status == E_FAILED else len(entries)


CANCEL_TEXT = "Cancelled: the run was cancelled"  # how a cancel's entry's error text begins


def cancel_position(entries: list[EntryRow]) -> int:
    """Where a cancelled run resumes: its earliest entry failed by the cancel (the start
    of the gather or race holding it), or after its log if it has none (cancelled
    before it first ran)."""
    for e in entries:
        if e.status == E_FAILED and (e.error_text or "").startswith(CANCEL_TEXT):
            group = group_of(entries, e.position)
            return group[0] if group is not None else e.position
    return len(entries)


def plan_retry(store: Store, run_id: str, at: int | None = None) -> list[Rewind]:
    """The runs retrying run_id rewinds (it first, then its failed or cancelled child
    runs), each with the position its log is cut at; ContengineError if it cannot be
    done safely."""
    row = store.get_run(run_id)
    if row is None:
        raise RunNotFound(f"no run with id {run_id!r} in this database")
    if row.status not in (FAILED, CANCELLED):
        raise ContengineError(
            f"run {run_id!r} is {row.status}, not failed or cancelled; only a failed or a "
            f"cancelled run can be retried"
        )
    entries = store.load_log(run_id)
    if at is not None:
        position = _checked_at(run_id, entries, at)
    elif row.status == CANCELLED:
        position = cancel_position(entries)
    else:
        position = resume_position(row, entries)
    for e in entries[position:]:
        _check_discard(run_id, e, position)
    plan = [Rewind(run_id, position, run_digest(row, entries))]
    if position < len(entries):
        plan += _child_chain(store, row, entries[position])
    if row.status == CANCELLED:
        plan += _unjoined_cancelled(store, row, entries[:position], {r.run_id for r in plan})
    return plan


def _unjoined_cancelled(
    store: Store, row: RunRow, kept: list[EntryRow], planned: set[str]
) -> list[Rewind]:
    """The cancelled child runs the resumed run started (ce.start_child) in the part of
    its log that is kept and has not joined there: the cancel took them down with it."""
    joined = {e.name for e in kept if e.kind == "join" and e.status != E_RUNNING}
    plan: list[Rewind] = []
    for e in kept:
        if e.kind != "start_child":
            continue
        child_id = ids.child_id(row.id, row.generation, e.position)
        if child_id in joined or child_id in planned:
            continue
        child = store.get_run(child_id)
        if child is not None and child.status == CANCELLED:
            for step in plan_retry(store, child_id):
                if step.run_id not in planned:
                    planned.add(step.run_id)
                    plan.append(step)
    return plan


def _checked_at(run_id: str, entries: list[EntryRow], at: object) -> int:
    if not isinstance(at, int) or isinstance(at, bool) or not 0 <= at <= len(entries):
        raise ContengineError(
            f"cannot retry run {run_id!r} at {at!r}: the position must be a whole number "
            f"from 0 to {len(entries)} (its log has {len(entries)} entries); nothing was changed"
        )
    group = group_of(entries, at) if at < len(entries) else None
    if group is not None and group[0] < at:
        raise ContengineError(
            f"cannot retry run {run_id!r} at {at}: that cuts the gather or race at positions "
            f"{group[0]}..{group[1]} in two; retry at {group[0]} or {group[1] + 1}"
        )
    return at


def _check_discard(run_id: str, e: EntryRow, position: int) -> None:
    """Refuse to discard an entry whose effect outside the log the re-run would miss."""
    if e.kind == "wait" and e.status == E_COMPLETED:
        raise ContengineError(
            f"cannot retry run {run_id!r} at {position}: that discards entry {e.position}, "
            f"a wait that took signal {e.name!r}, which would be lost; retry after it "
            f"(--at {e.position + 1} or later). Nothing was changed"
        )
    if e.kind == "send" and e.status == E_COMPLETED:
        raise ContengineError(
            f"cannot retry run {run_id!r} at {position}: that discards entry {e.position}, "
            f"a send of signal {e.name!r} that was delivered; the re-run would send it a "
            f"second time. Retry after it (--at {e.position + 1} or later). Nothing was "
            f"changed"
        )
    if e.kind in _STARTS_CHILD and not (e.position == position and e.status == E_FAILED):
        raise ContengineError(
            f"cannot retry run {run_id!r} at {position}: that discards entry {e.position}, "
            f"which started a child run that the re-run would take over as it is; retry "
            f"after it (--at {e.position + 1} or later). Nothing was changed"
        )


def _child_chain(store: Store, row: RunRow, entry: EntryRow) -> list[Rewind]:
    """The failed child run (and its failed child...) behind the entry retry resumes at."""
    if entry.kind == "join":
        child_id = entry.name
    elif entry.kind == "child":
        child_id = ids.child_id(row.id, row.generation, entry.position)
    else:
        return []
    child = store.get_run(child_id)
    if child is None:
        # A child entry that failed before its run was created (arguments refused) just
        # starts it afresh; otherwise the run was there and is gone (gc).
        if entry.kind == "join" or (entry.error_text or "").startswith(f"child run {child_id!r}"):
            raise ContengineError(
                f"run {row.id!r} failed at its child run {child_id!r}, which no longer "
                f"exists (deleted by gc); retrying would start the child over and run its "
                f"steps again, so nothing was changed"
            )
        return []
    if child.status == CANCELLED and row.status != CANCELLED:
        raise ContengineError(
            f"run {row.id!r} failed because its child run {child_id!r} was cancelled; "
            f"retrying would only fail again: retry the child run first (a cancelled run "
            f"can be retried), then this one. Nothing was changed"
        )
    if child.status not in (FAILED, CANCELLED):
        return []  # completed or going on (retried on its own): the parent takes its end
    try:
        return plan_retry(store, child_id)
    except ContengineError as exc:
        raise ContengineError(
            f"run {row.id!r} stopped at its child run {child_id!r}, which is {child.status} "
            f"and cannot be retried: {exc}"
        ) from exc
