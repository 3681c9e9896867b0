"""OpenTelemetry traces of runs: an engine hook that makes a span per run and per step
attempt (pip install 'contengine[otel]'; README, Observability).

Every span of a run is in one trace whose id is derived from the run id, under a root
span context derived from it too (never exported itself): a run driven in several
processes, before and after a crash, is one trace, with nothing kept in the store to
link them. A run span made in a process that took the run over after a crash also
carries a Link to that root context and the attribute contengine.resumed.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from ..drive.events import Event

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider

__all__ = ["run_trace_id", "tracing_hook"]

# Run spans open in this process at once (runs asleep keep theirs open): past this,
# the oldest is ended, marked contengine.unfinished, so memory stays bounded.
MAX_OPEN_RUNS = 10_000

_ENDS_RUN = {"run.completed": False, "run.cancelled": False, "run.failed": True}
_ENDS_STEP = {"step.completed": False, "step.retried": True, "step.failed": True}


def _otel() -> Any:
    try:
        from opentelemetry import trace
    except ImportError as exc:
        raise ImportError(
            "contengine's tracing hook needs the OpenTelemetry API: "
            "pip install 'contengine[otel]' (or opentelemetry-api)"
        ) from exc
    return trace


def run_trace_id(run_id: str) -> int:
    """The trace id of every span of a run: 128 bits of a hash of its id (never 0)."""
    digest = hashlib.blake2b(run_id.encode(), digest_size=16, person=b"contengine-trace").digest()
    return int.from_bytes(digest, "big") or 1


def _root_span_id(run_id: str) -> int:
    digest = hashlib.blake2b(run_id.encode(), digest_size=8, person=b"contengine-root").digest()
    return int.from_bytes(digest, "big") or 1


def tracing_hook(tracer_provider: TracerProvider | None = None) -> Tracing:
    """A hook for ce.Engine(hooks=[...]) or engine.add_hook that traces runs and step
    attempts with the given (else the global) OpenTelemetry tracer provider."""
    trace = _otel()
    return Tracing(trace.get_tracer("contengine", tracer_provider=tracer_provider))


class Tracing:
    """The tracing hook: called with each ce.Event, it starts and ends spans."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        self._trace = _otel()
        self._lock = threading.Lock()
        self._runs: OrderedDict[str, Span] = OrderedDict()
        self._steps: dict[tuple[str, int, int | None], Span] = {}

    def __call__(self, event: Event) -> None:
        """Start or end the spans this event begins or ends."""
        kind = event.kind
        ns = int(event.time * 1e9)
        with self._lock:
            if kind in _ENDS_RUN or kind == "run.stuck":
                run = self._runs.pop(event.run_id, None) or self._run_span(event, ns)
                if _ENDS_RUN.get(kind, True):
                    self._error(run, event.error)
                if kind == "run.stuck":
                    run.set_attribute("contengine.stuck", True)
                run.end(end_time=ns)
                return
            run = self._runs.get(event.run_id) or self._run_span(event, ns)
            if event.position is None:
                return  # run.started or run.resumed: the run span is open now
            key = (event.run_id, event.position, event.attempt)
            if kind == "step.started":
                self._steps[key] = self._step_span(run, event, ns)
            elif kind == "step.crashed":
                span = self._step_span(run, event, ns)  # the attempt lost with its process
                span.set_attribute("contengine.crashed", True)
                self._error(span, event.error)
                span.end(end_time=ns)
            elif kind in _ENDS_STEP:
                ended = self._steps.pop(key) if key in self._steps else None
                if ended is None:  # the hook came after the attempt began
                    began = ns - int((event.duration or 0.0) * 1e9)
                    ended = self._step_span(run, event, began)
                if _ENDS_STEP[kind]:
                    self._error(ended, event.error)
                if kind == "step.retried":
                    ended.set_attribute("contengine.retried", True)
                ended.end(end_time=ns)

    def _run_span(self, event: Event, ns: int) -> Span:
        trace = self._trace
        root = trace.SpanContext(
            run_trace_id(event.run_id),
            _root_span_id(event.run_id),
            is_remote=True,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
        )
        resumed = event.kind == "run.resumed"
        span = self.tracer.start_span(
            f"run {event.workflow}",
            context=trace.set_span_in_context(trace.NonRecordingSpan(root)),
            kind=trace.SpanKind.INTERNAL,
            attributes={"contengine.run_id": event.run_id, "contengine.workflow": event.workflow},
            links=[trace.Link(root, {"contengine.link": "resumed after a crash"})]
            if resumed
            else (),
            start_time=ns,
        )
        if resumed:
            span.set_attribute("contengine.resumed", True)
        self._runs[event.run_id] = span
        while len(self._runs) > MAX_OPEN_RUNS:
            _, oldest = self._runs.popitem(last=False)
            oldest.set_attribute("contengine.unfinished", True)
            oldest.end()
        return span

    def _step_span(self, run: Span, event: Event, ns: int) -> Span:
        trace = self._trace
        return self.tracer.start_span(
            f"step {event.step}",
            context=trace.set_span_in_context(run),
            attributes={
                "contengine.run_id": event.run_id,
                "contengine.workflow": event.workflow,
                "contengine.position": event.position if event.position is not None else -1,
                "contengine.step": event.step or "",
                "contengine.attempt": event.attempt if event.attempt is not None else 0,
            },
            start_time=ns,
        )

    def _error(self, span: Span, text: str | None) -> None:
        trace = self._trace
        span.set_status(trace.Status(trace.StatusCode.ERROR, text or None))
