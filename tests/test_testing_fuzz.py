"""Determinism fuzzing: a workflow that depends on the wall clock, `random`, `uuid4`,
os.environ, set order or state outside its arguments is flagged with that cause; a
replay-safe workflow passes, and fuzzing leaves the process as it found it."""

from __future__ import annotations

import datetime
import os
import random
import time
import uuid
from collections.abc import Callable, Generator
from datetime import date
from time import time as wall_clock
from typing import Any

import fuzz_targets
import pytest

import contengine as ce
from contengine.testing.fuzz import (
    CAUSE_CLOCK,
    CAUSE_ENV,
    CAUSE_HASH,
    CAUSE_PROCESS,
    CAUSE_RANDOM,
    CAUSE_REPLAY,
    CAUSE_UUID,
    FuzzReport,
    assert_deterministic,
    fuzz,
)

Flow = Generator[Any, Any, Any]


@ce.step(name="fuzz.note")
def note(label: str) -> str:
    """Return the label: a step that only shows up in the log."""
    return label


@ce.step(name="fuzz.charge")
def charge(cents: int) -> str:
    """A step that cannot run in a test: it is replaced by a stand-in."""
    raise RuntimeError("no payment service in tests")


def only_cause(report: FuzzReport) -> str:
    """The cause of the report's single finding."""
    assert not report.ok, str(report)
    assert len(report.findings) == 1, str(report)
    return report.findings[0].cause


# -- each source of nondeterminism, named -------------------------------------------------


def test_branch_on_time_time_is_blamed_on_the_wall_clock() -> None:
    @ce.workflow
    def remind(created: float) -> Flow:
        if time.time() - created > 86_400:
            return (yield note("escalate"))
        return (yield note("remind"))

    report = fuzz(remind, time.time())
    assert only_cause(report) == CAUSE_CLOCK
    finding = report.findings[0]
    assert finding.perturbation.startswith("wall clock shifted by +3 d")
    assert "-step fuzz.note('remind')" in finding.diff
    assert "+step fuzz.note('escalate')" in finding.diff
    assert "ce.now()" in finding.hint


READ_THE_DAY: dict[str, Callable[[], datetime.date]] = {
    "datetime.now": lambda: datetime.datetime.now(datetime.UTC).date(),
    "datetime.today": lambda: datetime.datetime.today().date(),
    "date.today": lambda: datetime.date.today(),
    "from datetime import date": lambda: date.today(),
    "from time import time": lambda: datetime.date.fromtimestamp(wall_clock()),
    "time.localtime": lambda: datetime.date(*time.localtime()[:3]),
}


@pytest.mark.parametrize("today", READ_THE_DAY.values(), ids=READ_THE_DAY.keys())
def test_every_way_of_reading_the_clock_is_shifted(today: Callable[[], datetime.date]) -> None:
    @ce.workflow
    def due(opened: datetime.date) -> Flow:
        if today() > opened:
            return (yield note("overdue"))
        return (yield note("on time"))

    assert only_cause(fuzz(due, today())) == CAUSE_CLOCK


def test_result_computed_from_the_clock_is_flagged_even_without_a_branch() -> None:
    @ce.workflow
    def stamp(created: float) -> Flow:
        yield note("work")
        return time.time() - created > 86_400

    report = fuzz(stamp, time.time())
    assert only_cause(report) == CAUSE_CLOCK
    assert "-returned False" in report.findings[0].diff
    assert "+returned True" in report.findings[0].diff


def test_branch_on_random_is_blamed_on_the_random_module() -> None:
    @ce.workflow
    def coin() -> Flow:
        if random.random() < 0.5:
            return (yield note("heads"))
        return (yield note("tails"))

    report = fuzz(coin)
    assert only_cause(report) == CAUSE_RANDOM
    assert report.findings[0].perturbation.startswith("random reseeded with")


def test_shuffled_step_order_is_blamed_on_the_random_module() -> None:
    @ce.workflow
    def deal(cards: list[str]) -> Flow:
        random.shuffle(cards)
        for card in cards:
            yield note(card)

    assert only_cause(fuzz(deal, ["a", "b", "c", "d", "e"])) == CAUSE_RANDOM


def test_step_argument_from_uuid4_is_blamed_on_uuid4() -> None:
    @ce.workflow
    def order() -> Flow:
        return (yield note(f"order-{uuid.uuid4()}"))

    report = fuzz(order)
    assert only_cause(report) == CAUSE_UUID
    assert "ce.uuid()" in report.findings[0].hint


def test_branch_on_an_unset_variable_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CE_FUZZ_FEATURE", raising=False)

    @ce.workflow
    def flagged() -> Flow:
        if os.environ.get("CE_FUZZ_FEATURE") == "on":
            yield note("new path")
        return (yield note("old path"))

    report = fuzz(flagged)
    assert only_cause(report) == f"{CAUSE_ENV} (CE_FUZZ_FEATURE)"
    assert report.findings[0].perturbation == "os.environ['CE_FUZZ_FEATURE'] = 'on'"


def test_branch_on_a_set_variable_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CE_FUZZ_MODE", "fast")

    @ce.workflow
    def mode() -> Flow:
        if "CE_FUZZ_MODE" in os.environ:
            return (yield note("fast"))
        return (yield note("slow"))

    report = fuzz(mode)
    assert only_cause(report) == f"{CAUSE_ENV} (CE_FUZZ_MODE)"
    assert report.findings[0].perturbation == "os.environ without CE_FUZZ_MODE"


def test_workflow_that_fails_without_a_variable_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CE_FUZZ_REGION", "eu")

    @ce.workflow
    def regional() -> Flow:
        return (yield note(os.environ["CE_FUZZ_REGION"] + "-west"))

    report = fuzz(regional)
    assert only_cause(report) == f"{CAUSE_ENV} (CE_FUZZ_REGION)"
    assert "-step fuzz.note('eu-west')" in report.findings[0].diff
    assert "+(nothing: the workflow raised KeyError: 'CE_FUZZ_REGION')" in report.findings[0].diff


def test_set_order_is_blamed_on_the_hash_seed() -> None:
    report = fuzz(fuzz_targets.visit_in_set_order)
    assert only_cause(report) == CAUSE_HASH
    assert report.findings[0].perturbation.startswith("PYTHONHASHSEED=")
    assert "sorted(" in report.findings[0].hint
    assert any(t.startswith("PYTHONHASHSEED=") for t in report.tried)


def test_state_a_fresh_process_lacks_is_not_blamed_on_the_hash_seed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every fresh process imports the default region, whatever its hash seed: they all
    # diverge alike, so set order cannot be told apart from the test's own setup.
    monkeypatch.setitem(fuzz_targets.CONFIG, "region", "us")
    assert only_cause(fuzz(fuzz_targets.regional)) == CAUSE_PROCESS


def test_mutable_default_diverges_on_a_plain_replay() -> None:
    @ce.workflow
    def collect(item: str, seen: list[str] = []) -> Flow:  # noqa: B006 - the defect
        seen.append(item)
        for label in seen:
            yield note(label)

    report = fuzz(collect, "x")
    assert only_cause(report) == CAUSE_REPLAY
    assert report.findings[0].perturbation == "plain replay (nothing changed)"
    assert report.tried == ["plain replay"]  # nothing else would tell more


def test_global_counter_is_caught_by_the_engines_own_replay_after_a_sleep() -> None:
    calls: list[int] = []

    @ce.workflow
    def counted() -> Flow:
        calls.append(1)
        yield note(f"call {len(calls)}")
        yield ce.sleep(60)  # the run is set aside, then rebuilt from its log

    report = fuzz(counted)
    assert only_cause(report) == CAUSE_REPLAY
    assert "engine's own replay" in report.findings[0].perturbation
    assert "-step fuzz.note('call 1')" in report.findings[0].diff


# -- replay-safe workflows pass -------------------------------------------------------------


def test_replay_safe_workflow_passes_in_fresh_processes_too() -> None:
    report = fuzz(fuzz_targets.visit_in_sorted_order)
    assert report.ok, str(report)
    assert report.skipped == []
    assert any(t.startswith("PYTHONHASHSEED=") for t in report.tried)
    assert report.replays > 10


def test_replay_safe_workflow_passes_and_sees_the_real_types(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CE_FUZZ_FEATURE", "on")
    seen: list[str] = []

    @ce.step
    def feature() -> str | None:
        return os.environ.get("CE_FUZZ_FEATURE")  # read in a step: logged, replayed

    @ce.step
    def record(text: str) -> None:
        seen.append(text)

    @ce.workflow
    def safe(items: list[str]) -> Flow:
        when = yield ce.now()
        ticket = yield ce.uuid()
        if (yield ce.random()) < 2 and (yield feature()) == "on":
            yield ce.sleep(datetime.timedelta(days=2))
        later = yield ce.now()
        made = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
        kinds = [isinstance(when, datetime.datetime), isinstance(made, datetime.date)]
        yield record(f"{kinds} {later - when} {isinstance(ticket, uuid.UUID)}")
        for item in sorted(set(items)):
            yield note(item)
        return len(items)

    report = fuzz(safe, ["b", "a", "c"])
    assert report.ok, str(report)
    assert seen == ["[True, True] 2 days, 0:00:00 True"]  # the real run's step, once
    assert "defined inside a function" in report.skipped[0]


def test_run_left_waiting_for_a_signal_replays_the_same() -> None:
    @ce.workflow
    def approve(doc: str) -> Flow:
        yield note(f"asked about {doc}")
        return (yield ce.wait("approved"))

    assert fuzz(approve, "budget").ok
    assert fuzz(approve, "budget", signals={"approved": "yes"}).ok


def test_signals_arrive_when_planned() -> None:
    answers: list[str] = []

    @ce.step
    def record(text: str) -> None:
        answers.append(text)

    @ce.workflow
    def approve() -> Flow:
        try:
            answer = yield ce.wait("approved", timeout=3600)
        except ce.Timeout:
            answer = "timed out"
        yield record(answer)

    assert fuzz(approve, signals=[(60, "approved", "yes")]).ok
    assert fuzz(approve, signals=[(7200, "approved", "too late")]).ok
    assert answers == ["yes", "timed out"]
    with pytest.raises(TypeError, match="signals= takes"):
        fuzz(approve, signals=[("approved",)])


def test_clock_takes_a_start_time_as_check_does() -> None:
    stamps: list[datetime.datetime] = []

    @ce.step
    def record(when: datetime.datetime) -> None:
        stamps.append(when)

    @ce.workflow
    def stamp() -> Flow:
        yield ce.sleep(60)
        yield record((yield ce.now()))

    start = datetime.datetime(2030, 5, 1, tzinfo=datetime.UTC)
    assert fuzz(stamp, clock=start).ok
    assert stamps == [start + datetime.timedelta(seconds=60)]


def test_waiting_run_that_branched_on_the_clock_is_flagged() -> None:
    @ce.workflow
    def approve(created: float) -> Flow:
        if time.time() > created + 86_400:
            yield note("reminder")
        return (yield ce.wait("approved"))

    assert only_cause(fuzz(approve, time.time())) == CAUSE_CLOCK


def test_workflow_that_raises_the_same_way_passes() -> None:
    @ce.workflow
    def refuse(cents: int) -> Flow:
        yield note("checked")
        raise ValueError(f"{cents} is too much")

    assert fuzz(refuse, 10_000).ok


def test_stand_in_steps_run_in_place_of_the_real_ones() -> None:
    charged: list[int] = []

    def fake_charge(cents: int) -> str:
        charged.append(cents)
        return f"r-{cents}"

    @ce.workflow
    def pay(cents: int) -> Flow:
        first = yield charge(cents)
        rest = yield ce.gather(charge(1), charge(2))
        return [first, *rest]

    assert fuzz(pay, 500, steps={"fuzz.charge": fake_charge}).ok
    assert fuzz(pay, 7, steps={charge: fake_charge}).ok
    assert charged == [500, 1, 2, 7, 1, 2]


def test_fuzz_leaves_the_process_as_it_found_it() -> None:
    originals = [time.time, time.monotonic, datetime.datetime, datetime.date, uuid.uuid4]
    environ, here = os.environ, globals()
    random.seed(7)
    state = random.getstate()

    @ce.workflow
    def busy() -> Flow:
        random.random()
        uuid.uuid4()
        os.environ.get("CE_FUZZ_FEATURE")
        os.environ["CE_FUZZ_WRITTEN"] = "1"
        yield note(f"{wall_clock()} {date.today()}")

    fuzz(busy)
    assert [time.time, time.monotonic, datetime.datetime, datetime.date, uuid.uuid4] == originals
    assert os.environ is environ and "CE_FUZZ_WRITTEN" not in os.environ
    assert here["wall_clock"] is time.time and here["date"] is datetime.date
    assert random.getstate() == state  # the workflow drew from a stream of its own


# -- reports ----------------------------------------------------------------------------------


def test_assert_deterministic_raises_with_the_cause_and_the_diff() -> None:
    @ce.workflow
    def coin() -> Flow:
        if random.random() < 0.5:
            return (yield note("heads"))
        return (yield note("tails"))

    with pytest.raises(AssertionError) as caught:
        assert_deterministic(coin)
    text = str(caught.value)
    assert CAUSE_RANDOM in text
    assert "fix: draw with `r = yield ce.random()`" in text
    assert "--- recorded" in text and "+++ replayed" in text


def test_assert_deterministic_returns_the_report_when_nothing_diverged() -> None:
    @ce.workflow
    def steady(n: int) -> Flow:
        return (yield note(str(n)))

    report = assert_deterministic(steady, 3)
    assert report.ok and report.causes == []
    text = str(report)
    assert "replayed the same" in text
    assert "tried: plain replay; a replay in another thread; wall clock shifted" in text
    assert "skipped: PYTHONHASHSEED" in text


def test_fuzz_refuses_what_is_not_a_workflow() -> None:
    with pytest.raises(TypeError, match="needs a @ce.workflow"):
        fuzz(note)  # type: ignore[arg-type]
