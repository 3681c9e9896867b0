"""Values too large for the database are refused before anything is written (guarantee 4).

SQLite refuses a row longer than its length limit (1,000,000,000 bytes by default). The
tests lower the limit of the engine's own connection, so the engine's check (the one it
makes in production, against that connection's limit) is what refuses the values,
without allocating a gigabyte.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from stores import current

import contengine as ce

pytestmark = pytest.mark.both_stores

LIMIT = 100_000  # bytes per row, as lowered for these tests
BIG = b"x" * LIMIT  # more than a value may take under LIMIT
calls: list[str] = []


class _SmallPayloads:
    """A store whose values may take what SQLite's rows of LIMIT bytes allow."""

    def max_payload(self) -> int:
        return LIMIT * 3 // 8


def small_engine(path: Path) -> ce.Engine:
    """An engine whose SQLite connection refuses rows longer than LIMIT (on PostgreSQL,
    whose fields may take a gigabyte whatever the connection, a store that says so)."""
    if current().postgres:
        return ce.Engine(store=current().store_class(_SmallPayloads)(path))
    engine = ce.Engine(path)
    engine.store._conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, LIMIT)  # type: ignore[attr-defined]
    return engine


@ce.step(name="too_large.big_result", retries=3)
def big_result() -> bytes:
    calls.append("big_result")
    return BIG


@ce.workflow(name="too_large.step")
def step_flow() -> Generator[Any, Any, bytes]:
    return (yield from big_result())


@ce.workflow(name="too_large.caught")
def caught_flow() -> Generator[Any, Any, str]:
    try:
        yield big_result()
    except ce.SerializationError as exc:
        return f"caught: {exc}"
    return "stored"


@ce.workflow(name="too_large.returns")
def returns_flow() -> Generator[Any, Any, bytes]:
    yield ce.now()
    return BIG


@ce.workflow(name="too_large.waits")
def waits_flow() -> Generator[Any, Any, Any]:
    return (yield ce.wait("go"))


@ce.workflow(name="too_large.publishes")
def publishes_flow() -> Generator[Any, Any, str]:
    try:
        yield ce.publish("blob", BIG)
    except ce.SerializationError:
        yield ce.publish("blob", b"small")
        return "refused"
    return "published"


@ce.workflow(name="too_large.takes")
def takes_flow(data: bytes) -> Generator[Any, Any, int]:
    yield ce.now()
    return len(data)


@pytest.fixture(autouse=True)
def _fresh() -> None:
    calls.clear()


def test_a_step_result_too_large_fails_the_step_at_once(tmp_path: Path) -> None:
    """Not four runs of the step and a false ce.CrashLoop: one run, SerializationError."""
    engine = small_engine(tmp_path / "e.db")
    run = engine.start(step_flow, id="r")
    report = engine.run_until_idle()
    assert report.finished == ["r"] and not report.stuck
    assert calls == ["big_result"]  # never retried, though the step has retries=3
    with pytest.raises(ce.SerializationError, match="too large to store") as info:
        run.result()
    assert not isinstance(info.value, ce.CrashLoop)
    assert "big_result" in str(info.value) and "position 0" in str(info.value)
    (entry,) = engine.history("r")
    assert (entry.status, entry.attempts, entry.crashes) == ("failed", 1, 0)


def test_the_workflow_can_catch_a_step_result_too_large(tmp_path: Path) -> None:
    engine = small_engine(tmp_path / "e.db")
    assert engine.run(caught_flow, id="r").startswith("caught: the result of step")
    assert calls == ["big_result"]


def test_a_workflow_result_too_large_fails_the_run(tmp_path: Path) -> None:
    engine = small_engine(tmp_path / "e.db")
    run = engine.start(returns_flow, id="r")
    engine.run_until_idle()
    assert run.status == "failed"
    with pytest.raises(ce.SerializationError, match="result of workflow .* too large"):
        run.result()


def test_a_signal_payload_too_large_is_refused_and_the_run_waits_on(tmp_path: Path) -> None:
    engine = small_engine(tmp_path / "e.db")
    run = engine.start(waits_flow, id="r")
    engine.run_until_idle()
    with pytest.raises(ce.SerializationError, match="payload of signal 'go'.*too large"):
        engine.signal("r", "go", BIG)
    assert engine.store.mailbox("r") == []
    assert run.status == "waiting"
    engine.signal("r", "go", "small")
    engine.run_until_idle()
    assert run.result() == "small"


def test_a_published_value_too_large_is_raised_at_its_yield(tmp_path: Path) -> None:
    engine = small_engine(tmp_path / "e.db")
    assert engine.run(publishes_flow, id="r") == "refused"
    assert engine.published("r") == {"blob": b"small"}


def test_start_arguments_too_large_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    engine = small_engine(tmp_path / "e.db")
    with pytest.raises(ce.SerializationError, match="argument 0 of run 'r'.*too large"):
        engine.start(takes_flow, BIG, id="r")
    assert engine.runs() == []
    assert engine.run(takes_flow, b"abc", id="r") == 3


def test_an_exception_too_large_is_kept_shortened(tmp_path: Path) -> None:
    """A step's exception whose message is too large arrives as a ce.StepFailed whose
    message and traceback are shortened to fit; the run fails as it should."""

    @ce.step(name="too_large.raises")
    def raises() -> None:
        raise ValueError("y" * LIMIT)

    @ce.workflow(name="too_large.raising")
    def raising() -> Generator[Any, Any, None]:
        yield raises()

    engine = small_engine(tmp_path / "e.db")
    run = engine.start(raising, id="r")
    engine.run_until_idle()
    with pytest.raises(ce.StepFailed, match="ValueError: yyy") as info:
        run.result()
    assert "characters cut" in info.value.message
    assert len(info.value.message) < LIMIT // 2


@pytest.mark.sqlite_only(reason="SQLite's row limit is the connection's; PostgreSQL's is fixed")
def test_the_limit_is_read_from_the_connection(tmp_path: Path) -> None:
    """By default a value may take 3/8 of SQLite's row limit: 375,000,000 bytes."""
    engine = ce.Engine(tmp_path / "e.db")
    assert engine.store.max_payload() == 375_000_000
    engine.store._conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, LIMIT)  # type: ignore[attr-defined]
    assert engine.store.max_payload() == LIMIT * 3 // 8
