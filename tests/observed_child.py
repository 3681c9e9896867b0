"""A workflow of two steps for tests/test_events.py and tests/test_otel.py, and the child
process that drives it until it is killed inside the second step's first attempt.

Started as `python -c "import observed_child; observed_child.main()" DB RUN_ID OUT` with
this directory on PYTHONPATH: it appends each ce.Event it sees to OUT.events and each
span it ends to OUT.spans (JSON lines, written at once), prints HANG inside the
second step and waits to be killed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from helpers import first_line, reap

import contengine as ce

HANG_ENV = "OBSERVED_HANG"
TESTS = Path(__file__).resolve().parent
WAIT = 120.0  # a bound against hanging, never reached when things work


@ce.step(name="observed_child.first")
def first(x: int) -> int:
    """Adds one."""
    return x + 1


@ce.step(name="observed_child.second")
def second(x: int) -> int:
    """Times ten; hangs in its first attempt when told to (to be killed there)."""
    if os.environ.get(HANG_ENV) == "1" and ce.current_step().attempt == 1:
        print("HANG", flush=True)
        time.sleep(120.0)  # far longer than any test waits: the parent kills us first
    return x * 10


@ce.workflow(name="observed_child.pair")
def pair(x: int) -> Generator[Any, Any, int]:
    """Two steps."""
    a = yield first(x)
    return (yield second(a))


def span_record(span: Any) -> dict[str, Any]:
    """What a test reads of an ended span."""
    return {
        "name": span.name,
        "trace_id": span.context.trace_id,
        "span_id": span.context.span_id,
        "parent": span.parent.span_id if span.parent is not None else None,
        "attributes": dict(span.attributes or {}),
        "error": span.status.status_code.name == "ERROR",
    }


def _append(path: str, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_records(path: str) -> list[dict[str, Any]]:
    """The JSON lines a child wrote (none if it wrote none)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main() -> None:
    """Drive run RUN_ID of pair(1) on DB, telling events and spans to OUT.*."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    from contengine.tools.otel import tracing_hook

    db, run_id, out = sys.argv[1:]

    class FileExporter(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            for span in spans:
                _append(out + ".spans", span_record(span))
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
    hooks = [
        lambda event: _append(out + ".events", dataclasses.asdict(event)),
        tracing_hook(provider),
    ]
    engine = ce.Engine(db, lease=1.0, hooks=hooks)
    print("DONE", engine.start(pair, 1, id=run_id).result(), flush=True)


# -- the parent's side ------------------------------------------------------------------


@pytest.fixture
def child_procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Child processes a test starts; none outlives it."""
    procs: list[subprocess.Popen[str]] = []
    try:
        yield procs
    finally:
        reap(procs)


def kill_in_second_step(
    target: str, run_id: str, out: str, procs: list[subprocess.Popen[str]]
) -> None:
    """Run the child on target (a database as ce.Engine opens it) until it is inside the
    second step, then SIGKILL it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH")) if p)
    env[HANG_ENV] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-c", "import observed_child; observed_child.main()", target, run_id, out],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    procs.append(proc)
    line = first_line(proc)
    if line.strip() != "HANG":
        proc.kill()
        assert proc.stderr is not None
        pytest.fail(f"the child did not reach its second step: {line!r}\n{proc.stderr.read()}")
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(WAIT) == -signal.SIGKILL
