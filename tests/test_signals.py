"""Signals: `payload = yield ce.wait(name, timeout)` and `engine.signal(run_id, name, payload)`.

Each run has a mailbox per signal name, read oldest first. A signal sent before
the run waits is kept; each payload is taken exactly once, and taking it (the
DELETE from the mailbox) and logging it (the wait entry completed with the
payload) are one transaction. A timeout is logged as the wait's outcome, so a
replay takes the same branch even if a signal came later.

Time is a VirtualClock. Crashes are simulated in-process (a step or a commit
raises a BaseException, which the engine lets through, and a new Engine on the
same file carries on) and, once, for real: a child process is SIGKILLed.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from crashing_child import HANG_ENV, read_ledger, work
from helpers import Crash, CrashingStore, crash_at, engine_on
from hypothesis import given
from hypothesis import strategies as st
from stores import current

import contengine as ce
from contengine.testing import VirtualClock

pytestmark = pytest.mark.both_stores

START = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
RUN = "r"
FINISHED = ("completed", "failed", "cancelled")


# -- the world outside the engine ----------------------------------------------------

EXECUTED: list[str] = []  # every step execution that got past its crash check, in order
ARMED: set[str] = set()  # steps that crash (once) on their next execution


@pytest.fixture(autouse=True)
def _fresh_world() -> Iterator[None]:
    EXECUTED.clear()
    ARMED.clear()
    yield
    EXECUTED.clear()
    ARMED.clear()


def enter(label: str) -> None:
    """Crash here if this step is armed; otherwise record that it ran."""
    if label in ARMED:
        ARMED.discard(label)
        raise Crash
    EXECUTED.append(label)


@ce.step(name="signals.note")
def note(label: str, value: Any = None) -> Any:
    """Record an execution under label; returns value."""
    enter(label)
    return value


@ce.step(name="signals.escalate")
def escalate(level: int) -> str:
    """What a workflow does when nobody answered in time."""
    enter(f"escalate:{level}")
    return f"escalated-{level}"


# -- workflows -------------------------------------------------------------------------


@ce.workflow(name="signals.collect")
def collect(n: int, name: str) -> Generator[Any, Any, list[Any]]:
    """Wait for n signals under name, with a step after each one."""
    got = []
    for i in range(n):
        payload = yield ce.wait(name)
        got.append((yield note(f"got:{i}", payload)))
    return got


@ce.workflow(name="signals.back_to_back")
def back_to_back(n: int) -> Generator[Any, Any, list[Any]]:
    """Wait for n signals "go" with nothing between the waits."""
    got = []
    for _ in range(n):
        got.append((yield ce.wait("go")))
    return got


@ce.workflow(name="signals.once")
def once(timeout: float | None) -> Generator[Any, Any, Any]:
    """Wait for one signal "go"."""
    return (yield ce.wait("go", timeout=timeout))


@ce.workflow(name="signals.approval")
def approval(timeout: float, later_wait: bool) -> Generator[Any, Any, list[Any]]:
    """Wait for "approve"; on timeout escalate, then (maybe) wait again."""
    try:
        first = yield ce.wait("approve", timeout=timeout)
    except ce.Timeout:
        first = yield escalate(1)
    path = [first]
    if later_wait:
        path.append((yield ce.wait("approve")))
    path.append((yield note("done", "done")))
    return path


@ce.workflow(name="signals.around")
def around(timeout: float | None) -> Generator[Any, Any, list[Any]]:
    """A step, a wait (escalating on timeout), a step that uses the payload."""
    a = yield note("before", "a")
    try:
        payload = yield ce.wait("go", timeout=timeout)
    except ce.Timeout:
        payload = yield escalate(0)
    b = yield note("after", payload)
    yield ce.sleep(600)  # a signal that comes now is kept, for nobody
    return [a, payload, b]


@ce.workflow(name="signals.schedule")
def schedule(waits: list[tuple[float | None, bool]]) -> Generator[Any, Any, list[Any]]:
    """One wait per (timeout, with_step); a step after the wait's outcome if with_step."""
    seen: list[Any] = []
    for i, (timeout, with_step) in enumerate(waits):
        try:
            payload = yield ce.wait("go", timeout=timeout)
        except ce.Timeout:
            seen.append((yield escalate(i)) if with_step else f"timeout-{i}")
        else:
            seen.append((yield note(f"got:{i}", payload)) if with_step else payload)
    return seen


@ce.workflow(name="signals.two_deliveries")
def two_deliveries(ledger: str) -> Generator[Any, Any, str]:
    """For the real crash test: two signals "go", each recorded in the ledger by a step."""
    first = yield ce.wait("go")
    acc = yield from work(ledger, f"got-{first}", "start")
    second = yield ce.wait("go")
    return (yield from work(ledger, f"got-{second}", acc))


# -- helpers ---------------------------------------------------------------------------


def mailbox(path: Path, run_id: str = RUN) -> list[tuple[str, bytes]]:
    """The run's mailbox as stored: (name, payload bytes), oldest first."""
    with current().sql(path) as conn:
        rows = conn.execute(
            "SELECT name, payload FROM mailbox WHERE run_id = ? ORDER BY seq", (run_id,)
        ).fetchall()
    return [(name, payload) for name, payload in rows]


def letters(engine: ce.Engine, path: Path, run_id: str = RUN) -> list[tuple[str, Any]]:
    """The run's mailbox with payloads decoded."""
    return [(n, engine.serde.loads(p, "a payload")) for n, p in mailbox(path, run_id)]


def outcomes(engine: ce.Engine, run_id: str = RUN) -> list[tuple[str, str, str, Any]]:
    """(kind, name, status, value or exception type name) of every log entry."""
    rows = []
    for e in engine.history(run_id):
        what = type(e.error).__name__ if e.status == "failed" else e.value
        rows.append((e.kind, e.name, e.status, what))
    return rows


def snapshot(engine: ce.Engine, run_id: str = RUN) -> list[tuple[Any, ...]]:
    """Every stored field of the run's log, to show it did not change."""
    return [
        (e.position, e.kind, e.name, e.key, e.status, e.attempts, e.crashes, e.started_at,
         e.finished_at, e.due_at, e.error_text, e._data)
        for e in engine.history(run_id)
    ]  # fmt: skip


def due_at(engine: ce.Engine, run_id: str = RUN) -> float | None:
    """The run's stored due time."""
    row = engine.store.get_run(run_id)
    assert row is not None
    return row.due_at


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(START)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "signals.db"


@pytest.fixture
def engine(db: Path, clock: VirtualClock) -> Iterator[ce.Engine]:
    with engine_on(db, clock) as eng:
        yield eng


# -- order, keeping, exactly once -----------------------------------------------------------


def test_payloads_under_one_name_arrive_oldest_first(engine: ce.Engine, db: Path) -> None:
    run = engine.start(collect, 4, "item", id=RUN)
    engine.signal(RUN, "item", "first")  # before the run ever ran: kept
    engine.signal(RUN, "other", "not mine")  # another name: another mailbox
    engine.signal(RUN, "item", {"n": 2})
    engine.run_until_idle()
    assert run.status == "waiting"
    engine.signal(RUN, "item", [3])  # while it waits
    engine.signal(RUN, "item", None)

    engine.run_until_idle()

    assert run.result() == ["first", {"n": 2}, [3], None]
    waits = [(e.name, e.status, e.value) for e in engine.history(RUN) if e.kind == "wait"]
    assert waits == [
        ("item", "completed", "first"),
        ("item", "completed", {"n": 2}),
        ("item", "completed", [3]),
        ("item", "completed", None),
    ]
    assert letters(engine, db) == [("other", "not mine")]


def test_a_signal_sent_before_the_run_waits_is_kept(engine: ce.Engine, db: Path) -> None:
    @ce.workflow(name="signals.sleep_then_wait")
    def sleep_then_wait() -> Generator[Any, Any, Any]:
        yield ce.sleep(3600)
        return (yield ce.wait("go"))

    run = engine.start(sleep_then_wait, id=RUN)
    engine.run_until_idle(until=START + 10)
    assert run.status == "sleeping"
    wake = due_at(engine)

    engine.signal(RUN, "go", "early")

    # Kept, and a sleeping run is not woken early by it.
    assert letters(engine, db) == [("go", "early")]
    assert run.status == "sleeping" and due_at(engine) == wake == START + 3600
    engine.run_until_idle()
    assert run.result() == "early"
    assert outcomes(engine)[-1] == ("wait", "go", "completed", "early")
    assert mailbox(db) == []


def test_one_signal_is_taken_by_one_wait_and_the_next_wait_waits_on(
    engine: ce.Engine, db: Path
) -> None:
    run = engine.start(collect, 2, "go", id=RUN)
    engine.signal(RUN, "go", "only")

    engine.run_until_idle()

    assert run.status == "waiting"
    assert outcomes(engine) == [
        ("wait", "go", "completed", "only"),
        ("step", "signals.note", "completed", "only"),
        ("wait", "go", "running", None),
    ]
    assert mailbox(db) == []
    engine.signal(RUN, "go", "second")
    engine.run_until_idle()
    assert run.result() == ["only", "second"]


def test_back_to_back_waits_take_one_signal_each(engine: ce.Engine, db: Path) -> None:
    """Two waits with nothing between them: one signal answers only the first."""
    run = engine.start(back_to_back, 2, id=RUN)
    engine.signal(RUN, "go", "only")

    engine.run_until_idle()

    assert outcomes(engine) == [
        ("wait", "go", "completed", "only"),
        ("wait", "go", "running", None),
    ]
    assert run.status == "waiting"
    assert mailbox(db) == []


def test_back_to_back_waits_take_queued_signals_in_order(engine: ce.Engine, db: Path) -> None:
    run = engine.start(back_to_back, 3, id=RUN)
    for payload in ("a", "b", "c"):
        engine.signal(RUN, "go", payload)

    engine.run_until_idle()

    assert run.result() == ["a", "b", "c"]
    assert mailbox(db) == []


# -- timeouts ------------------------------------------------------------------------


def test_a_timeout_is_raised_at_the_yield_and_the_escalation_runs(
    engine: ce.Engine, clock: VirtualClock, db: Path
) -> None:
    run = engine.start(approval, 3600.0, True, id=RUN)
    engine.run_until_idle(until=START + 3599)
    assert run.status == "waiting" and due_at(engine) == START + 3600
    assert EXECUTED == []

    engine.run_until_idle(until=START + 7200)

    # The clock jumped to the deadline, the timeout was logged, the escalation ran.
    assert clock.now() == START + 3600
    assert EXECUTED == ["escalate:1"]
    wait = engine.history(RUN)[0]
    assert (wait.kind, wait.status, wait.started_at, wait.finished_at) == (
        "wait", "failed", START, START + 3600,
    )  # fmt: skip
    assert isinstance(wait.error, ce.Timeout)
    assert "no signal 'approve' arrived within 1h" in str(wait.error)
    assert wait.text == "timeout=1h"
    # Escalated, it waits again (without a timeout) until the answer comes.
    assert run.status == "waiting" and due_at(engine) == float("inf")
    engine.signal(RUN, "approve", "boss said yes")
    engine.run_until_idle()
    assert run.result() == ["escalated-1", "boss said yes", "done"]
    assert outcomes(engine) == [
        ("wait", "approve", "failed", "Timeout"),
        ("step", "signals.escalate", "completed", "escalated-1"),
        ("wait", "approve", "completed", "boss said yes"),
        ("step", "signals.note", "completed", "done"),
    ]
    assert mailbox(db) == []


def test_a_signal_that_beats_the_deadline_wins(engine: ce.Engine, clock: VirtualClock) -> None:
    run = engine.start(approval, 3600.0, False, id=RUN)
    engine.run_until_idle(until=START + 10)
    clock.advance(3599)
    engine.signal(RUN, "approve", "just in time")
    assert due_at(engine) == clock.now()  # woken at once

    engine.run_until_idle()

    assert run.result() == ["just in time", "done"]
    assert EXECUTED == ["done"]
    assert clock.now() == START + 3599


@pytest.mark.parametrize("later_wait", [True, False], ids=["later-wait", "no-later-wait"])
def test_a_late_signal_does_not_change_the_replay(
    db: Path, clock: VirtualClock, later_wait: bool
) -> None:
    engine = engine_on(db, clock)
    run = engine.start(approval, 60.0, later_wait, id=RUN)
    ARMED.add("escalate:1")
    with pytest.raises(Crash):
        engine.run_until_idle()  # the timeout is logged, then the escalation crashes
    engine.close()
    assert clock.now() == START + 60

    # The answer comes after the deadline, while no process runs the workflow.
    clock.advance(5)
    late = engine_on(db, clock)
    late.signal(RUN, "approve", "late yes")
    assert outcomes(late)[0] == ("wait", "approve", "failed", "Timeout")
    late.close()

    engine = engine_on(db, clock)
    engine.run_until_idle()

    run = engine.get_run(RUN)
    log = outcomes(engine)
    assert log[:2] == [
        ("wait", "approve", "failed", "Timeout"),
        ("step", "signals.escalate", "completed", "escalated-1"),
    ]
    assert [(e.attempts, e.crashes) for e in engine.history(RUN)][1] == (2, 1)
    if later_wait:
        # The late signal was kept for the later wait, which takes it once.
        assert run.result() == ["escalated-1", "late yes", "done"]
        assert log[2] == ("wait", "approve", "completed", "late yes")
        assert mailbox(db) == []
    else:
        assert run.result() == ["escalated-1", "done"]
        assert letters(engine, db) == [("approve", "late yes")]
    assert EXECUTED == ["escalate:1", "done"]
    engine.close()


def test_a_zero_timeout_takes_a_waiting_signal_or_times_out_at_once(
    engine: ce.Engine, clock: VirtualClock
) -> None:
    engine.start(once, 0, id="empty")
    engine.start(once, 0, id="full")
    engine.signal("full", "go", "here")

    engine.run_until_idle()

    assert engine.get_run("full").result() == "here"
    with pytest.raises(ce.Timeout, match="no signal 'go' arrived within 0s"):
        engine.get_run("empty").result()
    assert engine.get_run("empty").status == "failed"
    assert clock.now() == START


def test_result_on_a_virtual_clock_says_who_must_send_the_signal(engine: ce.Engine) -> None:
    run = engine.start(once, None, id=RUN)
    with pytest.raises(ce.ContengineError, match=r"send it with engine.signal\(\) first"):
        run.result()
    assert run.status == "waiting"
    engine.signal(RUN, "go", 1)
    assert run.result() == 1


# -- refusing signals --------------------------------------------------------------------


def test_a_signal_to_an_unknown_run_raises_run_not_found(engine: ce.Engine, db: Path) -> None:
    with pytest.raises(ce.RunNotFound, match="nope"):
        engine.signal("nope", "go", 1)
    assert mailbox(db, "nope") == []


@pytest.mark.parametrize("end", ["completed", "failed", "cancelled"])
def test_a_signal_to_a_finished_run_is_refused(engine: ce.Engine, db: Path, end: str) -> None:
    run = engine.start(once, 0 if end == "failed" else None, id=RUN)
    if end == "completed":
        engine.signal(RUN, "go", 1)
    elif end == "cancelled":
        engine.cancel(RUN)
    engine.run_until_idle()
    assert run.status == end
    before = snapshot(engine)

    with pytest.raises(ce.ContengineError, match=f"run 'r' is {end}"):
        engine.signal(RUN, "go", 2)

    assert mailbox(db) == []
    assert snapshot(engine) == before and run.status == end


@pytest.mark.parametrize(
    "payload",
    [(i for i in range(3)), {"conn": sqlite3.connect(":memory:")}],
    ids=["generator", "nested-connection"],
)
def test_an_unserializable_payload_is_refused_and_nothing_is_written(
    engine: ce.Engine, db: Path, payload: Any
) -> None:
    run = engine.start(once, None, id=RUN)
    engine.run_until_idle()
    before, wake = snapshot(engine), due_at(engine)

    with pytest.raises(ce.SerializationError, match="the payload of signal 'go' to 'r'"):
        engine.signal(RUN, "go", payload)

    assert mailbox(db) == []
    assert snapshot(engine) == before
    assert run.status == "waiting" and due_at(engine) == wake == float("inf")
    engine.signal(RUN, "go", "fine")
    engine.run_until_idle()
    assert run.result() == "fine"


def test_bad_signal_names_and_timeouts_are_refused(engine: ce.Engine, db: Path) -> None:
    engine.start(once, None, id=RUN)
    with pytest.raises(ValueError, match="signal name"):
        engine.signal(RUN, "", 1)
    with pytest.raises(ValueError, match="signal name"):
        ce.wait("")
    with pytest.raises(ValueError, match="timeout"):
        ce.wait("go", timeout=-1)
    assert mailbox(db) == []


# -- waking ----------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [None, 600.0], ids=["no-timeout", "timeout"])
def test_a_signal_under_another_name_wakes_the_run_which_waits_on(
    engine: ce.Engine, db: Path, clock: VirtualClock, timeout: float | None
) -> None:
    run = engine.start(once, timeout, id=RUN)
    engine.run_until_idle(until=START + 1)
    deadline = START + timeout if timeout is not None else float("inf")
    assert run.status == "waiting" and due_at(engine) == deadline
    assert [r.id for r in engine.runs(status="waiting")] == [RUN]
    before = snapshot(engine)

    engine.signal(RUN, "b", "for someone else")
    assert due_at(engine) == clock.now()  # woken: it cannot know the name without looking
    report = engine.run_until_idle(until=START + 1)

    assert report.driven == 1 and report.finished == []
    assert run.status == "waiting" and due_at(engine) == deadline
    assert snapshot(engine) == before  # nothing logged
    assert letters(engine, db) == [("b", "for someone else")]
    engine.signal(RUN, "go", "mine")
    engine.run_until_idle()
    assert run.result() == "mine"
    assert letters(engine, db) == [("b", "for someone else")]


def test_result_wakes_within_moments_of_a_signal_from_another_thread(tmp_path: Path) -> None:
    with ce.Engine(tmp_path / "real.db") as engine:
        run = engine.start(once, None, id=RUN)
        timer = threading.Timer(0.2, engine.signal, args=(RUN, "go", "from a thread"))
        began = time.monotonic()
        timer.start()
        try:
            assert run.result(timeout=5) == "from a thread"
        finally:
            timer.cancel()
        elapsed = time.monotonic() - began
    assert 0.15 < elapsed < 2.0


# -- crashes around a wait ---------------------------------------------------------------


Action = tuple[Any, ...]  # ("drive", until or None) or ("signal", at, name, payload)


@dataclass
class Played:
    """An engine left after carrying out a schedule, and how many crashes it took."""

    engine: ce.Engine
    crashes: int
    commits: int
    sent: list[tuple[str, Any]]  # the signals the engine accepted, in order


def play(
    path: Path,
    wf: ce.Workflow[..., Any],
    args: tuple[Any, ...],
    actions: list[Action],
    crash: tuple[str, int] | None = None,
) -> Played:
    """Start the run on a fresh clock and carry out the actions.

    With crash=(when, k) the k-th commit crashes (before or after writing); the
    action under way is then done again by a fresh engine on the same file, at
    the same virtual time, as a restarted process would.
    """
    clock = VirtualClock(START)
    store = crash_at(path, *crash) if crash else crash_at(path)
    engine = engine_on(path, clock, store)
    engine.start(wf, *args, id=RUN)
    played = Played(engine, 0, 0, [])
    for action in actions:
        while True:
            try:
                _act(played, clock, action)
                break
            except Crash:
                played.crashes += 1
                played.engine.close()
                played.engine = engine_on(path, clock)
    played.commits = store.commits
    return played


def _act(played: Played, clock: VirtualClock, action: Action) -> None:
    engine = played.engine
    if action[0] == "drive":
        engine.run_until_idle(until=action[1])
    else:
        _, at, name, payload = action
        clock.jump_to(at)
        if engine.get_run(RUN).status in FINISHED:
            with pytest.raises(ce.ContengineError, match="will never wait again"):
                engine.signal(RUN, name, payload)
        else:
            engine.signal(RUN, name, payload)
            played.sent.append((name, payload))


def state(played: Played, path: Path) -> tuple[Any, ...]:
    """Everything a crash must not change: status, result, log, mailbox."""
    engine = played.engine
    run = engine.get_run(RUN)
    result = run.result() if run.status == "completed" else None
    log = [
        (e.position, e.kind, e.name, e.status, e.started_at, e.finished_at, e.due_at,
         type(e.error).__name__ if e.status == "failed" else e.value)
        for e in engine.history(RUN)
    ]  # fmt: skip
    return run.status, result, log, letters(engine, path)


SCHEDULES: dict[str, tuple[float | None, list[Action]]] = {
    "signal-before-the-run": (None, [("signal", START, "go", 7), ("drive", None)]),
    "signal-while-waiting": (
        None,
        [("drive", START + 10), ("signal", START + 10, "go", 7), ("drive", None)],
    ),
    "signal-in-time": (
        60.0,
        [("drive", START + 30), ("signal", START + 30, "go", 7), ("drive", None)],
    ),
    "signal-too-late": (
        60.0,
        [("drive", START + 90), ("signal", START + 90, "go", 7), ("drive", None)],
    ),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_a_crash_at_any_commit_around_a_wait_changes_nothing(tmp_path: Path, name: str) -> None:
    timeout, actions = SCHEDULES[name]
    reference = play(tmp_path / "ref.db", around, (timeout,), actions)
    want = state(reference, tmp_path / "ref.db")
    ran = set(EXECUTED)
    assert reference.crashes == 0 and reference.commits >= 3
    for when in ("before", "after"):
        for k in range(1, reference.commits + 1):
            EXECUTED.clear()
            path = tmp_path / f"{when}-{k}.db"
            played = play(path, around, (timeout,), actions, crash=(when, k))
            assert played.crashes == 1, (when, k)
            assert state(played, path) == want, (when, k)
            # Steps whose commit was lost run again; nothing else does.
            assert set(EXECUTED) == ran and len(EXECUTED) <= len(ran) + 1, (when, k, EXECUTED)
            played.engine.close()
    reference.engine.close()


def test_a_crash_before_the_wait_is_logged_leaves_the_signal_in_the_mailbox(
    db: Path, clock: VirtualClock
) -> None:
    engine = engine_on(db, clock)
    engine.start(around, None, id=RUN)
    engine.signal(RUN, "go", "kept")
    # Commit 1 logs step "before"; commit 2 would complete it, log the wait with the
    # signal's payload, take the signal and log step "after".
    store = crash_at(db, "before", 2)
    crashing = engine_on(db, clock, store)
    with pytest.raises(Crash):
        crashing.run_until_idle()
    crashing.close()

    assert outcomes(engine) == [("step", "signals.note", "running", None)]
    assert letters(engine, db) == [("go", "kept")]

    fresh = engine_on(db, clock)
    fresh.run_until_idle()
    assert fresh.get_run(RUN).result() == ["a", "kept", "kept"]
    assert mailbox(db) == []
    assert [e.kind for e in fresh.history(RUN)] == ["step", "wait", "step", "sleep"]
    assert EXECUTED == ["before", "before", "after"]
    engine.close()
    fresh.close()


def test_a_run_stopped_while_waiting_takes_its_signal_in_a_new_engine(
    db: Path, clock: VirtualClock
) -> None:
    engine = engine_on(db, clock)
    engine.start(around, None, id=RUN)
    engine.run_until_idle()
    assert engine.get_run(RUN).status == "waiting"
    engine.close()  # the process stops while the run waits

    sender = engine_on(db, clock)
    sender.signal(RUN, "go", "hello")
    sender.close()

    fresh = engine_on(db, clock)
    report = fresh.run_until_idle()
    assert report.finished == [RUN]
    assert fresh.get_run(RUN).result() == ["a", "hello", "hello"]
    assert EXECUTED == ["before", "after"]
    assert mailbox(db) == []
    fresh.close()


def test_a_crash_after_the_signal_is_taken_does_not_deliver_it_again(
    db: Path, clock: VirtualClock
) -> None:
    engine = engine_on(db, clock)
    engine.start(around, None, id=RUN)
    engine.run_until_idle()
    engine.signal(RUN, "go", "once")
    engine.signal(RUN, "go", "spare")
    ARMED.add("after")
    with pytest.raises(Crash):
        engine.run_until_idle()
    engine.close()

    fresh = engine_on(db, clock)
    # Taken and logged together: the log has it, the mailbox does not.
    assert outcomes(fresh) == [
        ("step", "signals.note", "completed", "a"),
        ("wait", "go", "completed", "once"),
        ("step", "signals.note", "running", None),
    ]
    assert letters(fresh, db) == [("go", "spare")]
    fresh.run_until_idle()
    assert fresh.get_run(RUN).result() == ["a", "once", "once"]
    assert [(e.attempts, e.crashes) for e in fresh.history(RUN)][2] == (2, 1)
    assert letters(fresh, db) == [("go", "spare")]
    assert EXECUTED == ["before", "after"]
    fresh.close()


Waits = list[tuple[float | None, bool]]


@st.composite
def schedules(draw: st.DrawFn) -> tuple[Waits, list[Action]]:
    """Waits with random timeouts (back to back or not), and signals at random times."""
    timeout = st.one_of(st.none(), st.sampled_from([0.0, 5.0, 20.0, 45.0]))
    waits = draw(st.lists(st.tuples(timeout, st.booleans()), max_size=3))
    offsets = draw(st.lists(st.integers(0, 80), max_size=4))
    actions: list[Action] = []
    for i, offset in enumerate(sorted(offsets)):
        name = draw(st.sampled_from(["go", "go", "other"]))
        actions += [("drive", START + offset), ("signal", START + offset, name, i)]
    actions.append(("drive", None))
    return waits, actions


def check_signals_and_timeouts(played: Played, waits: Waits, end: tuple[Any, ...]) -> None:
    """Each accepted signal is delivered once, oldest first, or still in the mailbox;
    a wait times out exactly at its deadline and is never answered after it."""
    _, _, log, left = end
    waited = [row for row in log if row[1] == "wait"]
    delivered = [("go", row[7]) for row in waited if row[3] == "completed"]
    go_left = [letter for letter in left if letter[0] == "go"]
    assert delivered + go_left == [s for s in played.sent if s[0] == "go"]
    assert [letter for letter in left if letter[0] != "go"] == [
        s for s in played.sent if s[0] != "go"
    ]
    for row, (timeout, _) in zip(waited, waits, strict=False):
        _, _, _, status, started, finished, _, _ = row
        if status == "failed":
            assert timeout is not None and finished == started + timeout
        elif status == "completed" and timeout is not None:
            assert finished <= started + timeout


@given(schedule_=schedules(), data=st.data())
def test_random_signal_times_replay_the_same_across_a_crash(
    schedule_: tuple[Waits, list[Action]], data: st.DataObject
) -> None:
    """A run crashed at any commit and resumed ends exactly like the one that never crashed."""
    waits, actions = schedule_
    with tempfile.TemporaryDirectory() as tmp:
        EXECUTED.clear()
        ref_path = Path(tmp, "ref.db")
        reference = play(ref_path, schedule, (waits,), actions)
        want = state(reference, ref_path)
        check_signals_and_timeouts(reference, waits, want)
        reference.engine.close()
        if reference.commits == 0:
            return
        when = data.draw(st.sampled_from(["before", "after"]), label="when")
        k = data.draw(st.integers(1, reference.commits), label="k")
        path = Path(tmp, "crash.db")
        played = play(path, schedule, (waits,), actions, crash=(when, k))
        assert played.crashes == 1
        assert state(played, path) == want
        played.engine.close()


def test_a_signal_sent_between_the_mailbox_check_and_the_waiting_commit_is_not_lost(
    db: Path, clock: VirtualClock
) -> None:
    """Another process signals just after the run looked into its mailbox."""

    class Interleaved(CrashingStore):
        sent = False

        def peek_signal(self, run_id: str, name: str) -> Any:
            found = super().peek_signal(run_id, name)
            if found is None and not self.sent:
                self.sent = True
                sender = engine_on(db, clock)
                sender.signal(run_id, name, "between")
                sender.close()
            return found

    engine = engine_on(db, clock, Interleaved(db))
    run = engine.start(once, None, id=RUN)

    engine.run_until_idle()
    engine.run_until_idle()

    assert run.status == "completed" and run.result() == "between"
    assert mailbox(db) == []
    engine.close()


# -- a real crash: a child process is killed after taking a signal -----------------------


TESTS = Path(__file__).resolve().parent
CHILD = """
import sys
import contengine as ce
from test_signals import two_deliveries

db, ledger = sys.argv[1:]
print("DONE", ce.Engine(db).start(two_deliveries, ledger, id="real").result(), flush=True)
"""
WAIT = 20.0  # seconds a child may take to reach the point the test waits for


def _spawn(db: Path, ledger: str, hang_in: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != HANG_ENV}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH")) if p)
    env[HANG_ENV] = hang_in
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, current().target(db), ledger],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _until(predicate: Any, what: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"child never got to {what}:\n{err}")
        time.sleep(0.02)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
def test_a_killed_child_that_took_a_signal_delivers_it_exactly_once(tmp_path: Path) -> None:
    db, ledger = tmp_path / "real.db", str(tmp_path / "ledger")
    parent = ce.Engine(db)
    run = parent.start(two_deliveries, ledger, id="real")
    child = _spawn(db, ledger, hang_in="got-one")
    try:
        _until(lambda: run.status == "waiting", "its first wait", child)
        parent.signal("real", "go", "one")
        assert child.stdout is not None
        watchdog = threading.Timer(WAIT, child.kill)
        watchdog.start()
        try:
            line = child.stdout.readline()
        finally:
            watchdog.cancel()
        assert line.strip() == "HANG got-one", line
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(WAIT) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate()

    # Taken and logged in one transaction: the log has it, the mailbox does not.
    assert [(e.kind, e.status, e.value) for e in parent.history("real")] == [
        ("wait", "completed", "one"),
        ("step", "running", None),
    ]
    assert mailbox(db, "real") == []
    parent.signal("real", "go", "two")

    parent.run_until_idle()

    assert run.result() == "start>got-one>got-two"
    assert [(e.kind, e.status, e.value) for e in parent.history("real")] == [
        ("wait", "completed", "one"),
        ("step", "completed", "start>got-one"),
        ("wait", "completed", "two"),
        ("step", "completed", "start>got-one>got-two"),
    ]
    assert mailbox(db, "real") == []
    # "one" reached the workflow once: its step was retried in place (attempt 2 of
    # the same entry), never reached again by a second delivery; "two" was not lost.
    assert read_ledger(ledger) == [
        ("got-one", child.pid, 1),
        ("got-one", os.getpid(), 2),
        ("got-two", os.getpid(), 1),
    ]
    parent.close()
