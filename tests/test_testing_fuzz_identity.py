"""Determinism fuzzing of what differs between the process or thread that recorded a run
and the one replaying it (process id, host, working directory, time zone, command line,
memory addresses, thread), and of elapsed time measured with a clock."""

from __future__ import annotations

import contextvars
import datetime
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

import fuzz_targets
import pytest

import contengine as ce
from contengine.testing.fuzz import (
    CAUSE_CLOCK,
    CAUSE_ELAPSED,
    CAUSE_PROCESS,
    CAUSE_REPLAY,
    CAUSE_THREAD,
    FuzzReport,
    fuzz,
)

Flow = Generator[Any, Any, Any]
LOCAL = threading.local()
USER: contextvars.ContextVar[str] = contextvars.ContextVar("user", default="nobody")


@ce.step(name="fuzz_identity.note")
def note(label: str) -> str:
    """Return the label: a step that only shows up in the log."""
    return label


def only_cause(report: FuzzReport) -> str:
    """The cause of the report's single finding."""
    assert not report.ok, str(report)
    assert len(report.findings) == 1, str(report)
    return report.findings[0].cause


# -- elapsed time: the pinned clocks at other rates -------------------------------------------

ELAPSED: dict[str, Callable[[], float]] = {
    "time.time": lambda: time.time(),
    "time.monotonic": lambda: time.monotonic(),
    "time.perf_counter": lambda: time.perf_counter(),
    "time.process_time": lambda: time.process_time(),
    "datetime.now": lambda: datetime.datetime.now().timestamp(),
}


@pytest.mark.parametrize("clock", ELAPSED.values(), ids=ELAPSED.keys())
def test_branch_on_elapsed_time_is_blamed_on_elapsed_time(clock: Callable[[], float]) -> None:
    @ce.workflow
    def slow_or_fast() -> Flow:
        started = clock()
        yield note("work")
        yield note("more work")
        if clock() - started > 60:  # never so on replay, which takes no time
            return (yield note("slow"))
        return (yield note("fast"))

    report = fuzz(slow_or_fast)
    assert only_cause(report) == CAUSE_ELAPSED, str(report)
    assert "times as fast" in report.findings[0].perturbation
    assert "ce.now()" in report.findings[0].hint


def test_elapsed_time_across_a_sleep_is_caught_by_a_replay_that_takes_no_time() -> None:
    @ce.workflow
    def waited() -> Flow:
        started = time.monotonic()
        yield ce.sleep(3600)
        if time.monotonic() > started:  # true live; on a fast replay maybe not
            return (yield note("after"))
        return (yield note("same instant"))

    report = fuzz(waited)
    assert only_cause(report) == CAUSE_ELAPSED
    assert report.findings[0].perturbation.startswith("wall clock frozen")


def test_elapsed_time_between_two_reads_without_a_yield_is_caught() -> None:
    @ce.workflow
    def timed() -> Flow:
        started = time.perf_counter()
        sum(range(100))
        took = time.perf_counter() - started
        return (yield note("slow" if took > 0.5 else "fast"))

    assert only_cause(fuzz(timed)) == CAUSE_ELAPSED


def test_the_wall_clock_is_blamed_once_when_it_is_read_for_its_value() -> None:
    @ce.workflow
    def dated() -> Flow:
        yield note("work")
        return (yield note(datetime.date.today().isoformat()))

    report = fuzz(dated)
    assert only_cause(report) == CAUSE_CLOCK
    assert any("wall clock at other rates" in s for s in report.skipped)


def test_elapsed_time_that_decides_nothing_passes() -> None:
    @ce.workflow
    def measured() -> Flow:
        started = time.monotonic()
        result = yield note("work")
        took = time.monotonic() - started
        print(f"took {took:.3f} s")  # logged, never yielded nor returned
        return result

    report = fuzz(measured)
    assert report.ok, str(report)
    assert "wall clock at other rates (2 rates)" in report.tried


# -- another thread ---------------------------------------------------------------------------


def test_branch_on_the_thread_is_blamed_on_the_thread() -> None:
    @ce.workflow
    def by_thread() -> Flow:
        if threading.current_thread() is threading.main_thread():
            return (yield note("main"))
        return (yield note("worker"))

    report = fuzz(by_thread)
    assert only_cause(report) == CAUSE_THREAD
    assert report.findings[0].perturbation == "a replay in another thread"
    assert "-step fuzz_identity.note('main')" in report.findings[0].diff


def test_thread_id_in_a_request_is_blamed_on_the_thread_first() -> None:
    report = fuzz(fuzz_targets.visit_in_thread_order)
    assert report.causes[0] == CAUSE_THREAD  # a fresh process runs in another thread too


def test_thread_local_and_context_variable_are_blamed_on_the_thread() -> None:
    @ce.workflow
    def as_user() -> Flow:
        return (yield note(f"{getattr(LOCAL, 'user', 'nobody')} {USER.get()}"))

    LOCAL.user = "ann"
    token = USER.set("ann")
    try:
        assert only_cause(fuzz(as_user)) == CAUSE_THREAD
    finally:
        USER.reset(token)
        del LOCAL.user


# -- fresh processes: process id, host, working directory, time zone, argv, addresses ---------

IN_ANOTHER_PROCESS = {
    "os.getpid": fuzz_targets.visit_by_pid,
    "socket.gethostname": fuzz_targets.visit_by_host,
    "os.getcwd": fuzz_targets.visit_by_cwd,
    "time zone": fuzz_targets.visit_by_time_zone,
    "sys.argv": fuzz_targets.visit_by_argv,
}


@pytest.mark.parametrize("workflow", IN_ANOTHER_PROCESS.values(), ids=IN_ANOTHER_PROCESS.keys())
def test_what_differs_in_another_process_is_blamed_on_the_process(workflow: Any) -> None:
    report = fuzz(workflow)
    assert only_cause(report) == CAUSE_PROCESS
    assert "another process id, working directory, hostname and time zone" in report.tried[-1]


def test_a_process_id_is_not_blamed_on_the_hash_seed() -> None:
    report = fuzz(fuzz_targets.visit_by_pid)
    assert only_cause(report) == CAUSE_PROCESS
    finding = report.findings[0]
    assert "disagree" in finding.perturbation or "own PYTHONHASHSEED" in finding.perturbation


def test_an_address_in_a_request_is_flagged() -> None:
    # Another object, at another address, even on a plain replay in this process; where
    # the allocator gives the same address back, a fresh process does not.
    report = fuzz(fuzz_targets.visit_by_address)
    assert not report.ok
    assert report.causes[0] in (CAUSE_REPLAY, CAUSE_PROCESS, CAUSE_THREAD)
