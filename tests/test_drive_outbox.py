"""The drive's Outbox (what the next commit writes) and the reuse of a kept drive."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from contengine.drive.loop import Drive
from contengine.drive.outbox import Outbox
from contengine.store.base import (
    E_COMPLETED,
    E_RUNNING,
    RUNNING,
    SLEEPING,
    EntryRow,
    RunRow,
    RunUpdate,
)


def entry(position: int, status: str = E_COMPLETED, attempts: int = 1) -> EntryRow:
    return EntryRow("r", position, "step", "s", None, "s()", status, attempts, 0, 1.0)


def run_row(status: str = RUNNING, due_at: float | None = None, cancel: bool = False) -> RunRow:
    return RunRow(
        "r", "wf", None, status, b"", None, 0.0, 0.0, due_at=due_at, cancel_requested=cancel
    )


def test_the_next_commit_writes_everything_the_outbox_holds_and_it_is_empty_once_durable() -> None:
    out = Outbox()
    carried, complete = entry(3, attempts=2), entry(4)
    child = run_row()
    out.hold(carried, logged=True)
    out.add(complete)
    out.take_signal(7)
    out.start_run(child)
    out.publish("k", b"v")
    assert out.has_unwritten()
    p = out.progress("r", None, entry(5, E_RUNNING), None, {3: 2}, ("owner", 1))
    assert (p.update, p.recorded, p.consume, p.new_runs, p.publish) == (
        carried,
        (complete,),
        7,
        (child,),
        (("k", b"v"),),
    )
    assert p.expect_attempts == 2  # the carried entry's attempts as last committed
    assert p.lease == ("owner", 1)
    # Until the commit is durable, everything stays (a failed commit loses nothing).
    assert out.has_unwritten()
    out.sent(p)
    assert not out.has_unwritten()
    assert (out.carry, out.complete, out.consume, out.new_runs, out.published) == (
        None,
        [],
        None,
        [],
        [],
    )


def test_a_delivered_cancel_is_cleared_with_the_next_commit_of_the_run() -> None:
    out = Outbox()
    out.delivered = True
    p = out.progress("r", None, None, RunUpdate(RUNNING, 1.0), {}, None)
    assert p.run is not None and p.run.clear_cancel
    out.sent(p)
    assert not out.delivered


def test_a_gather_members_immediate_answer_is_not_left_in_the_outbox() -> None:
    """A member's answer is inserted with the other members: building it adds no entry
    of its own to the outbox (only a publish's value, written with that entry)."""
    from contengine.core.requests import PublishRequest, RandomRequest
    from contengine.core.serde import Serde
    from contengine.drive.answers import answer

    runner = SimpleNamespace(
        clock=SimpleNamespace(now=lambda: 5.0),
        serde=Serde(),
        random=SimpleNamespace(random=lambda: 0.5),
    )
    d = Drive(cast(Any, runner), run_row(), cast(Any, None), cast(Any, None))
    member, outcome = answer(d, 2, RandomRequest())
    assert (member.position, member.status, outcome.ok, outcome.value) == (
        2,
        E_COMPLETED,
        True,
        0.5,
    )
    assert not d.out.has_unwritten()
    published, _ = answer(d, 3, PublishRequest("k", 1))
    assert published.status == E_COMPLETED and d.out.complete == []
    assert [key for key, _ in d.out.published] == ["k"]


def test_a_kept_drive_takes_up_the_run_as_stored_now_with_one_reset() -> None:
    d = Drive(cast(Any, None), run_row(RUNNING), cast(Any, None), cast(Any, None), ("a", 1))
    assert (d.status, d.due_at, d.lease, d.park, d.lapses, d.cancel_pending) == (
        RUNNING,
        None,
        ("a", 1),
        False,
        0,
        False,
    )
    woken = run_row(SLEEPING, due_at=9.0, cancel=True)
    d.reset(woken, ("a", 2), park=True, lapses=3)
    assert d.run is woken
    assert (d.status, d.due_at, d.lease, d.park, d.lapses, d.cancel_pending) == (
        SLEEPING,
        9.0,
        ("a", 2),
        True,
        3,
        True,
    )
    # A cancel the kept drive already had stays pending.
    d.reset(run_row(RUNNING), ("a", 3), park=False)
    assert d.cancel_pending
