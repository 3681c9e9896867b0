"""The OpenTelemetry tracing hook (contengine.tools.otel), with the SDK's in-memory
exporter: a span per run and per step attempt, errors, and one trace across a real
crash (SIGKILL) and the resumed run."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import observed_child
import pytest
from helpers import fail_first_calls
from observed_child import child_procs, kill_in_second_step  # noqa: F401 (a fixture)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from stores import current

import contengine as ce
from contengine.tools.otel import run_trace_id, tracing_hook

pytestmark = pytest.mark.both_stores

WAIT = 120.0
FAILS: dict[str, int] = {}


@ce.step(name="test_otel.charge", retries=1, backoff=ce.Backoff(initial=0.0))
def charge(key: str, fail_times: int) -> str:
    """Fails fail_times times (per key), then returns."""
    fail_first_calls(FAILS, key, fail_times, "declined")
    return key


@ce.workflow(name="test_otel.order")
def order(key: str, fail_times: int) -> Generator[Any, Any, str]:
    """A step, then another."""
    yield charge(key + "-a", 0)
    return (yield charge(key, fail_times))


@pytest.fixture
def exporter() -> Iterator[tuple[InMemorySpanExporter, TracerProvider]]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield memory, provider
    provider.shutdown()


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def test_a_run_is_one_span_with_a_child_span_per_step_attempt(
    exporter: tuple[InMemorySpanExporter, TracerProvider],
) -> None:
    memory, provider = exporter
    key = f"ok-{uuid.uuid4().hex}"
    with ce.Engine(hooks=[tracing_hook(provider)]) as engine:
        run = engine.start(order, key, 1)
        assert run.result(timeout=WAIT) == key

    spans = memory.get_finished_spans()
    runs = [s for s in spans if s.name == "run test_otel.order"]
    steps = [s for s in spans if s.name == "step test_otel.charge"]
    assert len(runs) == 1 and len(spans) == 4
    root = runs[0]
    assert attrs(root) == {"contengine.run_id": run.id, "contengine.workflow": "test_otel.order"}
    assert root.status.status_code is StatusCode.UNSET
    assert root.context is not None
    assert root.context.trace_id == run_trace_id(run.id)
    assert [(attrs(s)["contengine.position"], attrs(s)["contengine.attempt"]) for s in steps] == [
        (0, 1),
        (1, 1),
        (1, 2),
    ]
    for s in steps:
        assert s.parent is not None and s.parent.span_id == root.context.span_id
        assert s.context is not None and s.context.trace_id == root.context.trace_id
        assert attrs(s)["contengine.run_id"] == run.id
        assert s.start_time is not None and s.end_time is not None
        assert root.start_time is not None and root.end_time is not None
        assert root.start_time <= s.start_time <= s.end_time <= root.end_time
    retried = steps[1]
    assert retried.status.status_code is StatusCode.ERROR
    assert retried.status.description == "ValueError: declined 1"
    assert attrs(retried)["contengine.retried"] is True
    assert steps[2].status.status_code is StatusCode.UNSET


def test_a_failed_run_s_span_and_its_failed_step_s_span_carry_the_error(
    exporter: tuple[InMemorySpanExporter, TracerProvider],
) -> None:
    memory, provider = exporter
    with ce.Engine(hooks=[tracing_hook(provider)]) as engine:
        run = engine.start(order, f"fails-{uuid.uuid4().hex}", 5)
        with pytest.raises(ValueError):
            run.result(timeout=WAIT)

    by_name = {(s.name, attrs(s).get("contengine.attempt")): s for s in memory.get_finished_spans()}
    failed_step = by_name[("step test_otel.charge", 2)]
    assert failed_step.status.status_code is StatusCode.ERROR
    assert failed_step.status.description == "ValueError: declined 2"
    run_span = by_name[("run test_otel.order", None)]
    assert run_span.status.status_code is StatusCode.ERROR
    assert "declined 2" in (run_span.status.description or "")


def test_spans_of_a_run_are_one_trace_across_a_crash_and_its_resumption(
    tmp_path: Path,
    child_procs: list[subprocess.Popen[str]],  # noqa: F811
    exporter: tuple[InMemorySpanExporter, TracerProvider],
) -> None:
    memory, provider = exporter
    db, out, run_id = tmp_path / "crash.db", str(tmp_path / "out"), "traced-crash"
    kill_in_second_step(current().target(db), run_id, out, child_procs)
    # What the killed process exported: its first step's span (its run span never ended).
    before = observed_child.read_records(out + ".spans")
    assert [s["name"] for s in before] == ["step observed_child.first"]
    trace_id = run_trace_id(run_id)
    assert before[0]["trace_id"] == trace_id

    with ce.Engine(db, hooks=[tracing_hook(provider)]) as engine:
        assert engine.get_run(run_id).result(timeout=WAIT) == 20

    spans = memory.get_finished_spans()
    assert {s.context.trace_id for s in spans if s.context is not None} == {trace_id}
    (run_span,) = [s for s in spans if s.name == "run observed_child.pair"]
    assert attrs(run_span)["contengine.resumed"] is True
    (link,) = run_span.links
    assert link.context.trace_id == trace_id
    assert link.attributes is not None and link.attributes["contengine.link"]
    steps = [(attrs(s)["contengine.position"], attrs(s)["contengine.attempt"]) for s in spans
             if s.name.startswith("step ")]  # fmt: skip
    # The lost attempt as a span of its own (marked crashed), then the attempt that ran;
    # nothing for the first step, which completed before the crash.
    assert steps == [(1, 1), (1, 2)]
    crashed = next(s for s in spans if attrs(s).get("contengine.crashed"))
    assert crashed.status.status_code is StatusCode.ERROR
    assert run_span.context is not None
    for s in spans:
        if s is not run_span:
            assert s.parent is not None and s.parent.span_id == run_span.context.span_id
    # The resumed run span hangs under the run's root context, as the killed process's did.
    assert run_span.parent is not None and run_span.parent.trace_id == trace_id


def test_without_opentelemetry_the_hook_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ImportError, match=r"contengine\[otel\]"):
        tracing_hook()
