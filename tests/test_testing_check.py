"""ce.testing.check: crash a workflow at every boundary, resume it, compare with the reference.

Correct workflows pass, whatever they use (steps and retries, sleeps, signals, gathers,
races, child runs, patches, published values, recorded values), and the report says what
was tried. Workflows that break replay fail with a CheckFailed (an AssertionError) that
names the crash schedule and shows the first divergence. A hypothesis test generates
random well-formed workflow programs and checks them all.
"""

from __future__ import annotations

import datetime
import random
import re
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import contengine as ce
import contengine.store.sqlite.writes as sqlite_writes
from contengine.drive.log import StreamedLog
from contengine.testing.check import CheckFailed, CheckReport, check

Flow = Generator[Any, Any, Any]
START = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)

CALLS: list[str] = []  # every call of a real step function (not of a stand-in)


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    CALLS.clear()
    yield
    CALLS.clear()


class Declined(Exception):
    """A step's own failure."""


@ce.step
def add(a: int, b: int) -> int:
    """Adds, and notes the call."""
    CALLS.append(f"add({a}, {b})")
    return a + b


@ce.step(retries=3, backoff=ce.Backoff(initial=600, factor=2))
def flaky(x: int) -> int:
    """Fails its first two tries."""
    CALLS.append(f"flaky({x})")
    if ce.current_step().attempt <= 2:
        raise ConnectionError(f"try {ce.current_step().attempt} failed")
    return x * 10


@ce.step(name="check.charge")
def charge(order: str, cents: int) -> str:
    """A payment: in tests it is always replaced by a stand-in."""
    CALLS.append(f"charge({order!r}, {cents})")
    raise AssertionError("the real payment service must not be called in tests")


@ce.step
def decline(order: str) -> str:
    """Always fails."""
    raise Declined(f"card of {order} declined")


@ce.step(name="check.fetch")
def fetch(url: str) -> str:
    """A page's text."""
    return f"<{url}>"


# -- correct workflows pass ---------------------------------------------------------------


@ce.workflow
def retrying_sleeper(n: int) -> Flow:
    """Steps, a step with retries and backoff, a day's sleep."""
    a = yield add(n, 1)
    b = yield flaky(a)
    yield ce.sleep(datetime.timedelta(days=1))
    return (yield add(a, b))


def test_steps_retries_and_a_sleep_pass_and_the_report_says_what_was_tried() -> None:
    began = time.perf_counter()
    report = check(retrying_sleeper, 3)

    assert isinstance(report, CheckReport)
    assert report.result == 4 + 40 and report.error is None
    assert report.log == (
        "0: step add(3, 1)",
        "1: step flaky(4)",
        "2: sleep (1d)",
        "3: step add(4, 40)",
    )
    # One run per crash point, plus the reference and a second run with no crash.
    assert report.runs == report.boundaries + 2
    assert report.engines == 2 * report.boundaries + 2  # each crash needs a second engine
    # Every try of every step is a point of its own (flaky has three tries).
    assert report.kinds["after a step ran, before its outcome was committed"] == 5
    assert report.boundaries >= 2 * 5
    # A day's sleep and 30 minutes of backoff took no time: the clocks are virtual.
    assert report.seconds < 5 and time.perf_counter() - began < 5
    # Steps that a crash makes run again are named (they must be idempotent).
    assert "step 'flaky' at position 1" in report.rerun


def test_the_report_reads_well() -> None:
    text = str(check(retrying_sleeper, 3))

    assert text.splitlines()[0].startswith(
        "check of workflow 'test_testing_check.retrying_sleeper' passed: "
    )
    assert "every run returned 44, logged the same 4 requests" in text
    assert "after a step ran, before its outcome was committed" in text


@ce.workflow
def approval(doc: str) -> Flow:
    """A signal taken at once, and a wait that times out before its signal comes."""
    first = yield ce.wait("decision")
    try:
        second = yield ce.wait("second-opinion", timeout=3600)
    except ce.Timeout:
        second = "none in time"
    late = yield ce.wait("late")
    return doc, first, second, late


def test_waits_with_signals_sent_up_front_and_later_pass() -> None:
    report = check(
        approval,
        "Q3",
        signals=[("decision", "yes"), (7200, "second-opinion", "no"), (7300, "late", "ok")],
    )

    assert report.result == ("Q3", "yes", "none in time", "ok")
    assert [line.split(": ", 1)[1] for line in report.log] == [
        "wait decision()",
        "wait second-opinion(timeout=1h)",
        "wait late()",
    ]


def test_signals_may_be_a_dict_sent_up_front() -> None:
    report = check(approval, "Q4", signals={"decision": 1, "second-opinion": 2, "late": 3})

    assert report.result == ("Q4", 1, 2, 3)


@ce.workflow
def fan_out(urls: list[str]) -> Flow:
    """A gather of steps and a recorded value, then a race of a step and a timer."""
    pages = yield ce.gather(*[fetch(u) for u in urls], ce.random())
    index, value = yield ce.race(fetch("mirror-1"), fetch("mirror-2"), ce.sleep(3600))
    return pages[:-1], 0 <= pages[-1] < 1, index, value


def test_gather_and_race_pass_with_crashes_between_their_members() -> None:
    report = check(fan_out, ["a", "b", "c"])

    # Which of two running steps wins a race is the threads' timing: every run after
    # the reference is made to agree with it, whatever the timing after a crash.
    pages, drew, index, value = report.result
    assert (pages, drew) == (["<a>", "<b>", "<c>"], True)
    assert (index, value) in ((0, "<mirror-1>"), (1, "<mirror-2>"))
    assert report.kinds["inside a gather or race"] >= 4  # each member's end, at least
    assert "step 'check.fetch' at position 2 (member 2 of the gather at position 0)" in report.rerun
    assert report.missed == 0


@ce.workflow
def price(item: str) -> Flow:
    """A child workflow: one step."""
    return (yield add(len(item), 100))


@ce.workflow
def delivery(order: str) -> Flow:
    """A child workflow that waits for a signal of its own."""
    proof = yield ce.wait("delivered")
    return f"{order} signed by {proof}"


@ce.workflow
def order_with_children(order: str) -> Flow:
    """A child run waited for, and one started with ce.start_child and joined later."""
    total = yield price("lamp")
    shipping = yield ce.start_child(delivery, order)
    receipt = yield add(total, 1)
    return total, receipt, (yield shipping)


def test_child_runs_pass_and_a_timed_signal_reaches_the_child_that_waits_for_it() -> None:
    report = check(order_with_children, "o-1", signals=[(60, "delivered", "Rui")])

    assert report.result == (104, 105, "o-1 signed by Rui")
    # The children's logs are compared too, under their derived run ids.
    assert "child run 'check/0' 0: step add(4, 100)" in report.log
    assert any(line.startswith("child run 'check/1' 0: wait delivered") for line in report.log)


@ce.workflow
def versioned(order: str) -> Flow:
    """A patch, published progress and recorded values."""
    if (yield ce.patched("add-fee")):
        fee = yield add(1, 2)
    else:
        fee = 0
    yield ce.publish("stage", "paid")
    when = yield ce.now()
    lucky = yield ce.random()
    ticket = yield ce.uuid()
    return order, fee, when, lucky, str(ticket)


def test_patched_publish_and_recorded_values_pass_and_every_run_sees_the_same_values() -> None:
    report = check(versioned, "o-2", clock=START)

    order, fee, when, lucky, ticket = report.result
    assert (order, fee, when) == ("o-2", 3, START)  # each run's clock starts at `clock`
    assert 0 <= lucky < 1 and len(ticket) == 36
    assert [line.split(": ", 1)[1].split("(")[0] for line in report.log] == [
        "patched add-fee", "step add", "publish stage", "now ", "random ", "uuid ",
    ]  # fmt: skip


@ce.workflow
def checkout(order: str, cents: int) -> Flow:
    """A payment (replaced in tests), then a failure that is handled."""
    receipt = yield charge(order, cents)
    try:
        yield decline(order)
    except Declined as exc:
        return receipt, str(exc)
    return receipt, None


def test_steps_are_replaced_by_name_or_by_step_and_the_real_ones_never_run() -> None:
    def fake_charge(order: str, cents: int) -> str:
        return f"receipt-{order}-{cents}"

    by_name = check(checkout, "o-3", 500, steps={"check.charge": fake_charge})
    by_step = check(checkout, "o-3", 500, steps={charge: fake_charge})

    assert by_name.result == by_step.result == ("receipt-o-3-500", "card of o-3 declined")
    assert CALLS == []


# One dict of stand-ins shared by every test, each path calling some of them.
SHARED_STEPS: dict[str | ce.Step[..., Any], Callable[..., Any]] = {
    "check.charge": lambda o, c: f"r-{o}",
    "add": lambda a, b: a + b,
    "check.fetch": str,
}


def test_stand_ins_for_steps_this_path_never_yields_are_accepted_and_named() -> None:
    report = check(checkout, "o-4", 1, steps=SHARED_STEPS)

    assert report.result == ("r-o-4", "card of o-4 declined")
    assert report.unused_fakes == ("add", "check.fetch")
    assert "stand-ins in steps= for steps this path never yielded: 'add', 'check.fetch'" in str(
        report
    )
    assert check(gives_up, "o-4", steps=SHARED_STEPS).unused_fakes == (
        "check.charge",
        "check.fetch",
    )


def test_a_misspelt_stand_in_is_named_in_the_report() -> None:
    steps: dict[str | ce.Step[..., Any], Callable[..., Any]] = {
        "chrage": lambda o, c: "x",
        "check.charge": lambda o, c: "r",
    }
    assert check(checkout, "o-4", 1, steps=steps).unused_fakes == ("chrage",)


@ce.workflow
def gives_up(order: str) -> Flow:
    """A workflow whose run fails: its exception is the ending every run must reach."""
    yield add(1, 1)
    yield decline(order)


def test_a_workflow_that_fails_passes_when_every_run_fails_the_same_way() -> None:
    report = check(gives_up, "o-5")

    assert report.result is None
    assert isinstance(report.error, Declined) and str(report.error) == "card of o-5 declined"
    assert "raised Declined: card of o-5 declined" in str(report)


@ce.workflow
def looping(n: int) -> Flow:
    """Continues as new twice."""
    yield add(n, 0)
    if n < 2:
        return ce.continue_as_new(n + 1)
    return n


def test_continue_as_new_passes() -> None:
    report = check(looping, 0)

    assert report.result == 2
    assert report.log == ("0: step add(2, 0)",)  # the last generation's log


def test_clock_may_be_a_factory_and_timed_signals_follow_it() -> None:
    clocks: list[ce.testing.VirtualClock] = []

    def make() -> ce.testing.VirtualClock:
        clocks.append(ce.testing.VirtualClock(START))
        return clocks[-1]

    report = check(approval, "Q5", signals=[(1, "decision", 1), (2, "second-opinion", 2),
                                            (3, "late", 3)], clock=make)  # fmt: skip

    assert report.result == ("Q5", 1, 2, 3)
    assert len(clocks) == report.runs  # a fresh clock for every run
    assert all(c.now() == START.timestamp() + 3 for c in clocks)


# -- broken workflows fail, and say why ------------------------------------------------------

COUNTER = 0


@ce.workflow
def counts_runs() -> Flow:
    """Branches on a module-level counter that survives from one run to the next."""
    global COUNTER
    COUNTER += 1
    total = yield add(1, 1)
    if COUNTER == 1:
        total = yield add(total, 1)
    return total


def test_a_branch_on_a_global_counter_fails_even_without_a_crash() -> None:
    with pytest.raises(AssertionError) as caught:
        check(counts_runs)

    message = str(caught.value)
    assert isinstance(caught.value, CheckFailed)
    assert "does not run the same way twice, even without a crash" in message
    assert "run it again in a fresh engine, with no crash at all" in message
    assert "-1: step add(2, 1)" in message  # the diff of the two logs
    assert "state that outlives a run" in message


@ce.step
def slow_report() -> str:
    """Takes a while."""
    time.sleep(0.03)
    return "report"


@ce.step
def alert(seconds: int) -> str:
    """Raises the alarm."""
    return f"slow: over {seconds} ms"


@ce.workflow
def times_itself() -> Flow:
    """Branches on time.time() measured across a yield: a replay is fast, so it differs."""
    started = time.time()
    report = yield slow_report()
    if time.time() - started > 0.01:
        yield alert(10)
    return report


def test_a_branch_on_time_time_fails_and_the_message_names_the_crash_point() -> None:
    with pytest.raises(AssertionError) as caught:
        check(times_itself)

    message = str(caught.value)
    assert "does not survive a crash" in message
    assert (
        "crash just after the commit that records the outcome of step 'slow_report' at "
        "position 0 and logs step 'alert' at position 1" in message
    )
    assert "2. open a fresh engine on the same file and resume the run" in message
    # The engine's own diff of the divergence, from its NonDeterminismError.
    assert "-step alert(10)" in message and "+(nothing: the workflow returned)" in message
    assert "use `yield ce.now()`" in message


@ce.workflow
def sleeps_until_the_minute() -> Flow:
    """Computes a sleep from time.time(): its own rebuild after the sleep differs."""
    yield ce.sleep(60 - time.time() % 60)
    return (yield add(1, 2))


def test_a_sleep_computed_from_time_time_fails_without_any_crash() -> None:
    with pytest.raises(CheckFailed, match="could not be rebuilt from its own log") as caught:
        check(sleeps_until_the_minute)

    assert re.search(r"-sleep \(\d", str(caught.value))  # the recorded sleep, in the diff


@ce.workflow
def flips_a_coin() -> Flow:
    """Takes a branch on random.random() between yields."""
    total = yield add(1, 1)
    if random.random() < 0.5:
        total = yield add(total, 10)
    return (yield add(total, 100))


def test_a_branch_on_random_random_fails_and_names_where() -> None:
    random.seed(7)
    with pytest.raises(CheckFailed) as caught:
        check(flips_a_coin)

    message = str(caught.value)
    assert re.search(r"no crash at all|crash (just )?(before|after)", message)
    assert "random numbers (`yield ce.random()`)" in message


@ce.workflow
def waits_forever() -> Flow:
    """Waits for a signal no one sends."""
    return (yield ce.wait("never"))


def test_a_reference_run_that_cannot_finish_says_what_it_waits_for() -> None:
    with pytest.raises(CheckFailed, match=r"it is 'waiting'; it waits at wait 'never' at "
                       r"position 0\. Send what it waits for with signals="):  # fmt: skip
        check(waits_forever)


@ce.workflow
def two_steps(n: int) -> Flow:
    """Two steps, nothing else."""
    a = yield add(n, 1)
    return (yield add(a, 1))


def test_a_core_bug_that_runs_a_committed_step_again_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Simulate an engine whose replay forgets committed step outcomes, and whose store
    lets a finished entry be written again: the ledger sees the step run again."""

    real = StreamedLog.decode

    def forgetful(log: StreamedLog, row: Any) -> Any:
        return None if row.kind == "step" else real(log, row)

    monkeypatch.setattr(StreamedLog, "decode", forgetful)
    fence = "AND status IN ('running', 'retrying') "
    for sql in ("COMPLETE_ENTRY", "UPDATE_ENTRY"):
        monkeypatch.setattr(sqlite_writes, sql, getattr(sqlite_writes, sql).replace(fence, ""))
    with pytest.raises(CheckFailed) as caught:
        check(two_steps, 3)

    message = str(caught.value)
    assert "a step whose outcome was committed before the crash ran again" in message
    assert "bug in contengine itself" in message
    assert "  step 'add' at position 0\n" in message
    assert "crash just after the commit that records the outcome of step 'add' at position 0" in (
        message
    )


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match="needs a @ce.workflow"):
        check(add, 1, 2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="each signal is"):
        check(approval, "x", signals=["decision"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="after_seconds must be >= 0"):
        check(approval, "x", signals=[(-1, "decision", 1)])
    with pytest.raises(TypeError, match="must be callable"):
        check(checkout, "x", 1, steps={"check.charge": "receipt"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="workflow 'test_testing_check.approval' cannot take"):
        check(approval)


# -- random well-formed workflows pass ----------------------------------------------------------

MOD = 1009
Op = tuple[Any, ...]
Program = tuple[Op, ...]


@ce.step
def work(tag: int, acc: int) -> int:
    """A step that always succeeds."""
    return (acc * 31 + tag) % MOD


@ce.step(backoff=60)
def shaky(tag: int, acc: int, fails: int) -> int:
    """Fails its first `fails` tries."""
    if ce.current_step().attempt <= fails:
        raise ConnectionError(f"shaky {tag} try {ce.current_step().attempt}")
    return (acc * 17 + tag) % MOD


@ce.step
def doomed(tag: int, acc: int) -> int:
    """Always fails."""
    raise Declined(f"doomed {tag} at {acc}")


@ce.workflow
def sub_program(tag: int, acc: int) -> Flow:
    """A child workflow."""
    return (yield work(tag, acc))


def perform(op: Op, acc: int) -> Flow:
    """Carry out one op of a program; returns the new accumulator."""
    kind = op[0]
    if kind == "step":
        return (yield work(op[1], acc))
    if kind == "shaky":
        return (yield shaky.options(retries=op[2])(op[1], acc, op[2]))
    if kind == "doomed":
        try:
            return (yield doomed(op[1], acc))
        except Declined:
            if not op[2]:
                raise
            return (acc * 7 + 1) % MOD
    if kind == "sleep":
        yield ce.sleep(op[1])
        return acc
    if kind == "gather":
        values = yield ce.gather(*[work(t, acc) for t in op[1]], ce.random())
        return (sum(values[:-1]) + int(values[-1] * 100)) % MOD
    if kind == "race":
        _, value = yield ce.race(work(op[1], acc), work(op[1] + 1, acc), ce.sleep(3600))
        return int(value)
    if kind == "wait":
        return (acc + (yield ce.wait("go"))) % MOD
    if kind == "timeout":
        try:
            yield ce.wait("never", timeout=op[1])
        except ce.Timeout:
            return (acc + 3) % MOD
        return acc
    if kind == "now":
        return (acc + (yield ce.now()).minute) % MOD
    if kind == "random":
        return (acc + int((yield ce.random()) * 100)) % MOD
    if kind == "publish":
        yield ce.publish("acc", acc)
        return acc
    if kind == "child":
        return (yield sub_program(op[1], acc))
    if kind == "branch":
        for inner in op[1] if acc % 2 == 0 else op[2]:
            acc = yield from perform(inner, acc)
        return acc
    raise RuntimeError(f"gave up at {acc}")  # "fail"


@ce.workflow(name="tests.testing_check.program")
def program_wf(program: Program) -> Flow:
    """Interpret a program; return the final accumulator."""
    acc = 1
    for op in program:
        acc = yield from perform(op, acc)
    return acc


KINDS = ["step", "shaky", "doomed", "sleep", "gather", "race", "wait", "timeout", "now"]
KINDS += ["random", "publish", "child", "fail"]


@st.composite
def programs(draw: st.DrawFn, max_ops: int = 4) -> Program:
    """Random programs of at most max_ops ops in all, branches nested one deep."""
    budget = [max_ops]
    tags = st.integers(0, 99)

    def ops(depth: int) -> Program:
        out: list[Op] = []
        while budget[0] > 0 and draw(st.integers(0, 3)) > 0:
            budget[0] -= 1
            kinds = [*KINDS, "branch"] if depth < 1 else KINDS
            kind = draw(st.sampled_from(kinds))
            if kind in ("step", "race", "child"):
                out.append((kind, draw(tags)))
            elif kind == "shaky":
                out.append((kind, draw(tags), draw(st.integers(0, 2))))
            elif kind == "doomed":
                out.append((kind, draw(tags), draw(st.booleans())))
            elif kind in ("sleep", "timeout"):
                out.append((kind, draw(st.sampled_from([0, 5, 3600]))))
            elif kind == "gather":
                out.append((kind, tuple(draw(st.lists(tags, min_size=1, max_size=3)))))
            elif kind == "branch":
                out.append((kind, ops(depth + 1), ops(depth + 1)))
            else:
                out.append((kind,))
        return tuple(out)

    return ops(0)


@settings(max_examples=min(settings().max_examples, 40))
@given(program=programs())
def test_random_well_formed_workflows_pass(program: Program) -> None:
    report = check(program_wf, program, signals=[("go", n) for n in range(1, 5)])

    assert report.runs == report.boundaries + 2
    # Every step that ran is a crash point of its own (but a race's losers, whose
    # timing decides when they run), and every commit at least one more.
    steps_logged = sum(": step " in line for line in report.log)
    if "race" not in repr(program):
        assert report.kinds["after a step ran, before its outcome was committed"] >= steps_logged
    assert report.boundaries > steps_logged or not report.log
    assert report.missed == 0  # every run reached its crash point
