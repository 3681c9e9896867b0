"""Run and step events: records of the `contengine` logger and calls of the engine's
hooks, on both stores; a real crash (SIGKILL) and what the resumed run tells."""

from __future__ import annotations

import logging
import subprocess
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Any

import observed_child
import pytest
from helpers import fail_first_calls
from observed_child import child_procs, kill_in_second_step  # noqa: F401 (a fixture)
from stores import current

import contengine as ce
from contengine.drive import events as events_module

pytestmark = pytest.mark.both_stores

WAIT = 120.0  # a bound against hanging, never reached when things work

CALLS: dict[str, int] = {}


@ce.step(name="test_events.flaky", retries=2, backoff=ce.Backoff(initial=0.0))
def flaky(key: str, fail_times: int) -> str:
    """Fails fail_times times (per key), then returns."""
    fail_first_calls(CALLS, key, fail_times, "boom")
    return key


@ce.workflow(name="test_events.one")
def one(key: str, fail_times: int) -> Generator[Any, Any, str]:
    """One step that may fail."""
    return (yield flaky(key, fail_times))


@ce.step(name="test_events.double")
def double(x: int) -> int:
    """Doubles."""
    return 2 * x


@ce.workflow(name="test_events.fan")
def fan() -> Generator[Any, Any, list[int]]:
    """Two steps at once, then one more."""
    both = yield ce.gather(double(1), double(2))
    return [*both, (yield double(3))]


@ce.workflow(name="test_events.waits")
def waits() -> Generator[Any, Any, Any]:
    """Waits for a signal that never comes."""
    return (yield ce.wait("never"))


@ce.workflow(name="test_events.invalid")
def invalid() -> Generator[Any, Any, Any]:
    """Yields what is no request: the run cannot go on (stuck)."""
    yield 42


def kinds(events: list[ce.Event]) -> list[tuple[str, int | None, int | None]]:
    """(kind, position, attempt) of each event."""
    return [(e.kind, e.position, e.attempt) for e in events]


def test_a_retried_step_and_the_run_s_end_are_told_to_hooks_and_the_logger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[ce.Event] = []
    caplog.set_level(logging.DEBUG, logger="contengine")
    with ce.Engine(hooks=[seen.append]) as engine:
        key = f"retried-once-{uuid.uuid4().hex}"  # CALLS counts per key
        run = engine.start(one, key, 1)
        assert run.result(timeout=WAIT) == key

    assert kinds(seen) == [
        ("run.started", None, None),
        ("step.started", 0, 1),
        ("step.retried", 0, 1),
        ("step.started", 0, 2),
        ("step.completed", 0, 2),
        ("run.completed", None, None),
    ]
    assert {(e.run_id, e.workflow) for e in seen} == {(run.id, "test_events.one")}
    retried = seen[2]
    assert retried.step == "test_events.flaky" and retried.error == "ValueError: boom 1"
    assert retried.duration is not None and retried.duration >= 0
    assert seen[4].duration is not None and seen[4].error is None
    assert all(a.time <= b.time for a, b in zip(seen, seen[1:], strict=False))

    records = [r for r in caplog.records if getattr(r, "event", None)]
    assert [(r.event, r.position, r.attempt) for r in records] == kinds(seen)  # type: ignore[attr-defined]
    levels = {r.event: r.levelno for r in records}  # type: ignore[attr-defined]
    assert levels["run.started"] == levels["run.completed"] == logging.INFO
    assert levels["step.started"] == levels["step.completed"] == logging.DEBUG
    assert levels["step.retried"] == logging.INFO
    assert all(r.run_id == run.id and r.workflow == "test_events.one" for r in records)  # type: ignore[attr-defined]


def test_a_failed_run_tells_its_step_s_failure_and_its_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[ce.Event] = []
    caplog.set_level(logging.INFO, logger="contengine")
    with ce.Engine() as engine:
        engine.add_hook(seen.append)
        run = engine.start(one, f"fails-always-{uuid.uuid4().hex}", 5)
        with pytest.raises(ValueError):
            run.result(timeout=WAIT)

    assert [k for k, _, _ in kinds(seen)] == [
        "run.started",
        *["step.started", "step.retried"] * 2,
        "step.started",
        "step.failed",
        "run.failed",
    ]
    failed = seen[-2]
    assert (failed.position, failed.attempt, failed.error) == (0, 3, "ValueError: boom 3")
    assert seen[-1].error is not None and "ValueError: boom 3" in seen[-1].error
    records = [r for r in caplog.records if getattr(r, "event", None)]
    # At INFO the per-step success events are not logged; failures are, at INFO (a
    # failure is an outcome, not a fault of the engine: nothing on stderr by default).
    assert "step.started" not in {r.event for r in records}  # type: ignore[attr-defined]
    assert {r.levelno for r in records if r.event.endswith("failed")} == {logging.INFO}  # type: ignore[attr-defined]


def test_each_member_of_a_gather_tells_its_attempt() -> None:
    seen: list[ce.Event] = []
    with ce.Engine(hooks=[seen.append]) as engine:
        assert engine.run(fan) == [2, 4, 6]

    steps = [(e.kind, e.position) for e in seen if e.kind.startswith("step.")]
    members = {p for _, p in steps} - {max(p for _, p in steps)}
    assert len(members) == 2  # the gather's two members, each at a position of its own
    for position in members:
        assert [k for k, p in steps if p == position] == ["step.started", "step.completed"]
    assert [k for k, p in steps if p not in members] == ["step.started", "step.completed"]
    assert {e.step for e in seen if e.step} == {"test_events.double"}
    assert seen[-1].kind == "run.completed"


def test_a_cancelled_run_and_a_stuck_run_are_told() -> None:
    seen: list[ce.Event] = []
    with ce.Engine(hooks=[seen.append]) as engine:
        waiting = engine.start(waits)
        engine.run_until_idle()
        engine.cancel(waiting.id)
        engine.run_until_idle()
        stuck = engine.start(invalid)
        engine.run_until_idle()

    by_run = {(e.run_id, e.kind) for e in seen}
    assert (waiting.id, "run.cancelled") in by_run
    assert (stuck.id, "run.stuck") in by_run
    stuck_event = next(e for e in seen if e.kind == "run.stuck")
    assert stuck_event.error is not None and "42" in stuck_event.error


def test_a_hook_that_raises_is_logged_once_per_kind_and_the_run_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[ce.Event] = []

    def broken(event: ce.Event) -> None:
        raise RuntimeError("hook bug")

    caplog.set_level(logging.WARNING, logger="contengine")
    with ce.Engine(hooks=[broken, seen.append]) as engine:
        assert engine.run(one, "hooked-1", 0) == "hooked-1"
        assert engine.run(one, "hooked-2", 0) == "hooked-2"
        engine.remove_hook(broken)
        engine.remove_hook(seen.append)
        assert engine.run(one, "hooked-3", 0) == "hooked-3"
        with pytest.raises(ValueError, match="not a hook"):
            engine.remove_hook(broken)
        with pytest.raises(TypeError, match="callable"):
            engine.add_hook("not a function")  # type: ignore[arg-type]

    assert len(seen) == 8  # 4 a run, the hook after the broken one called every time
    complaints = [
        r for r in caplog.records if "hook" in r.getMessage() and "raised" in r.getMessage()
    ]
    # run.started, step.started, step.completed, run.completed: once each, not per run
    assert len(complaints) == 4
    assert all("hook bug" in r.getMessage() for r in complaints)


def test_with_no_listener_a_step_builds_no_event(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="contengine")

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an event was built with no one listening")

    monkeypatch.setattr(events_module, "Event", refuse)
    with ce.Engine() as engine:
        assert engine.run(one, "unheard", 0) == "unheard"


# -- a real crash ------------------------------------------------------------------


def test_a_run_resumed_after_a_crash_tells_the_crash_and_not_the_steps_before_it(
    tmp_path: Path,
    child_procs: list[subprocess.Popen[str]],  # noqa: F811
) -> None:
    db, out = tmp_path / "crash.db", str(tmp_path / "out")
    kill_in_second_step(current().target(db), "crashed-run", out, child_procs)
    before = [
        (e["kind"], e["position"], e["attempt"])
        for e in observed_child.read_records(out + ".events")
    ]
    assert before == [
        ("run.started", None, None),
        ("step.started", 0, 1),
        ("step.completed", 0, 1),
        ("step.started", 1, 1),
    ]

    seen: list[ce.Event] = []
    with ce.Engine(db, hooks=[seen.append]) as engine:
        # result() drives the run here once the dead process's lease is seen gone.
        assert engine.get_run("crashed-run").result(timeout=WAIT) == 20

    assert kinds(seen) == [
        ("run.resumed", None, None),
        ("step.crashed", 1, 1),
        ("step.started", 1, 2),
        ("step.completed", 1, 2),
        ("run.completed", None, None),
    ]
    assert seen[1].step == "observed_child.second"
