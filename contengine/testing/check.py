"""ce.testing.check: crash a workflow at every boundary and check that it resumes the same."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..clock import Clock
from ..core.workflow import Step, Workflow
from .check_compare import (
    compare,
    exception_text,
    failure_message,
    ran_again,
    reference_problem,
    short,
)
from .check_events import SignalPlan, losing_events
from .check_points import K_AFTER, K_BEFORE, K_BETWEEN, K_INSIDE, K_RAN, Names, boundaries
from .check_runs import Harness
from .clock import VirtualClock

__all__ = ["CheckFailed", "CheckReport", "check"]

ClockSpec = Clock | float | datetime.datetime | Callable[[], Clock] | None
StepsSpec = Mapping[str | Step[..., Any], Callable[..., Any]] | None
SignalsSpec = Mapping[str, Any] | Iterable[tuple[Any, ...]] | None


class CheckFailed(AssertionError):
    """ce.testing.check found a crash point the workflow does not survive (or a run
    that does not repeat); the message shows the schedule and the first divergence."""


@dataclass(frozen=True)
class CheckReport:
    """What ce.testing.check tried: crash points, runs, time, and the reference's ending."""

    workflow: str
    boundaries: int  # crash points tried
    runs: int  # runs of the workflow from start to end: reference, no crash, one per point
    engines: int  # engines opened (a crashed run needs two)
    seconds: float
    # A workflow that raises passes check as long as every run raises alike: its
    # exception is here (and result is None), for the test to assert on.
    result: Any = None  # the reference run's value (None if it raised)
    error: BaseException | None = None  # the reference run's exception, if it raised
    log: tuple[str, ...] = ()  # the reference run's requests, one line each
    kinds: dict[str, int] = field(default_factory=dict)  # crash points by kind
    rerun: tuple[str, ...] = ()  # steps that ran again when a crash lost their outcome
    # Crash points a run never reached although it ended like the reference (it went
    # another way first, as threads' timing may decide in a gather); 0 normally.
    missed: int = 0
    # Stand-ins from steps= for steps this path never yielded (one dict of stand-ins may
    # serve many tests); assert it is empty to catch a misspelt step name.
    unused_fakes: tuple[str, ...] = ()

    def __str__(self) -> str:
        ending = (
            f"returned {short(self.result)}"
            if self.error is None
            else f"raised {exception_text(self.error)}"
        )
        kinds = ", ".join(f"{n} {kind}" for kind, n in self.kinds.items() if n)
        lines = [
            f"check of workflow {self.workflow!r} passed: {self.boundaries} crash points, "
            f"{self.runs} runs, {self.engines} engines, {self.seconds:.2f} s",
            f"  crash points: {kinds or 'none'}",
            f"  every run {ending}, logged the same {len(self.log)} requests and ran no "
            f"committed step again",
        ]
        if self.missed:
            lines.append(
                f"  {self.missed} crash points were never reached: those runs went another "
                f"way first (threads' timing in a gather or race)"
            )
        if self.unused_fakes:
            names = ", ".join(map(repr, self.unused_fakes))
            lines.append(f"  stand-ins in steps= for steps this path never yielded: {names}")
        if self.rerun:
            lines.append(
                f"  {len(self.rerun)} steps ran again after a crash lost their outcome, as "
                f"they may in production: their effects need an idempotency key "
                f"(ce.current_step().idempotency_key)"
            )
        return "\n".join(lines)


def check(
    workflow: Workflow[..., Any],
    /,
    *args: Any,
    steps: StepsSpec = None,
    signals: SignalsSpec = None,
    clock: ClockSpec = None,
    **kwargs: Any,
) -> CheckReport:
    """Crash the workflow at every boundary, resume each time in a fresh engine, and check
    that every run ends as the uninterrupted one did; raises CheckFailed if one does not.

    `args` and `kwargs` are the workflow's arguments. `steps` maps step names (or @ce.step
    objects) to stand-ins called in their place with the same arguments; stand-ins for
    steps this path never yields are accepted (one dict can serve every test) and named
    in `report.unused_fakes`. `signals` is
    sent to the run: a dict {name: payload} or a list of (name, payload) pairs, in its
    mailbox before it first runs; or (after_seconds, name, payload) triples, sent once
    the run's clock has passed that many seconds from its start, to the run (or child
    run) that waits for that name then, else to the run. `clock` is where
    each run's virtual clock starts (epoch seconds, an aware datetime, or a VirtualClock
    whose time is taken), or a clock, or a zero-argument factory of clocks
    (`clock=ce.SystemClock` for real time).

    A workflow that raises does not fail check: check asks whether every run ends as
    the uninterrupted one did, and raising the same exception is ending the same. The
    exception is in `report.error` (and `report.result` is None): assert on it.
    """
    if not isinstance(workflow, Workflow):
        raise TypeError(f"ce.testing.check() needs a @ce.workflow, not {workflow!r}")
    fakes = _fakes(steps)
    plans = _signal_plans(signals)
    make_clock = _clock_factory(clock)
    began = time.perf_counter()
    with (
        _quiet_stuck_warnings(),
        tempfile.TemporaryDirectory(prefix="contengine-check-", dir=_scratch()) as directory,
    ):
        harness = Harness(
            workflow,
            args,
            kwargs,
            fakes=fakes,
            signals=plans,
            clock=make_clock,
            directory=Path(directory),
        )
        reference = harness.play(record=True)
        names = Names(reference.log)
        problem = reference_problem(workflow, reference, names)
        if problem is not None:
            raise CheckFailed(problem)
        skip = losing_events(reference.events, harness.losers)
        points = boundaries(reference, names, skip)
        rerun: dict[str, None] = {}
        missed = 0
        for number, boundary in enumerate(points):
            got = harness.play(boundary.point)
            failure = compare(reference, got, names)
            if failure is not None:
                message = failure_message(
                    workflow, reference, got, boundary, number, len(points) - 1, failure
                )
                raise CheckFailed(message) from got.error
            rerun.update(dict.fromkeys(ran_again(reference, got, names)))
            missed += boundary.point is not None and not got.fired
    assert reference.ending is not None
    kinds = Counter(b.kind for b in points if b.point is not None)
    return CheckReport(
        workflow=workflow.name,
        boundaries=len(points) - 1,
        runs=harness.plays,
        engines=harness.engines,
        seconds=time.perf_counter() - began,
        result=reference.ending.value if reference.ending.ok else None,
        error=None if reference.ending.ok else reference.ending.value,
        log=tuple(line.describe() for line in reference.log),
        kinds={
            K_BEFORE: kinds[K_BEFORE],
            K_AFTER: kinds[K_AFTER],
            K_BETWEEN: kinds[K_BETWEEN],
            K_RAN: kinds[K_RAN],
            K_INSIDE: sum(1 for b in points if b.inside),
        },
        rerun=tuple(rerun),
        missed=missed,
        unused_fakes=tuple(sorted(set(fakes) - harness.yielded)),
    )


@contextlib.contextmanager
def _quiet_stuck_warnings() -> Iterator[None]:
    """The engine warns of every run it leaves stuck; here those are findings, reported
    in the CheckFailed, so the warnings are held back while check runs."""
    logger = logging.getLogger("contengine")

    def not_stuck(record: logging.LogRecord) -> bool:
        return getattr(record, "event", None) != "run.stuck" and "is stuck" not in (
            record.getMessage()
        )

    logger.addFilter(not_stuck)
    try:
        yield
    finally:
        logger.removeFilter(not_stuck)


def _scratch() -> str | None:
    """Where the runs' files go: memory-backed /dev/shm where there is one (files are
    made and deleted by the dozen), else the usual temporary directory."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


# -- arguments --------------------------------------------------------------------------


def _fakes(steps: StepsSpec) -> dict[str, Callable[..., Any]]:
    if steps is None:
        return {}
    if not isinstance(steps, Mapping):
        raise TypeError(f"steps= takes a dict {{step name: stand-in}}, not {steps!r}")
    fakes: dict[str, Callable[..., Any]] = {}
    for key, fake in steps.items():
        name = key.name if isinstance(key, Step) else key
        if not isinstance(name, str):
            raise TypeError(f"steps= keys are step names or @ce.step functions, not {key!r}")
        if not callable(fake):
            raise TypeError(f"the stand-in for step {name!r} must be callable, not {fake!r}")
        fakes[name] = fake
    return fakes


def _signal_plans(signals: SignalsSpec) -> list[SignalPlan]:
    if signals is None:
        return []
    if isinstance(signals, Mapping):
        items: list[tuple[Any, ...]] = [(name, payload) for name, payload in signals.items()]
    elif isinstance(signals, str | bytes) or not isinstance(signals, Iterable):
        raise TypeError(f"signals= takes a dict or a list of tuples, not {signals!r}")
    else:
        items = list(signals)
    plans = []
    for item in items:
        if not isinstance(item, tuple) or len(item) not in (2, 3):
            raise TypeError(
                f"each signal is (name, payload) or (after_seconds, name, payload), not {item!r}"
            )
        after: Any = None
        if len(item) == 3:
            after, name, payload = item
            if isinstance(after, datetime.timedelta):
                after = after.total_seconds()
            if isinstance(after, bool) or not isinstance(after, int | float) or not after >= 0:
                raise ValueError(f"a signal's after_seconds must be >= 0, not {item[0]!r}")
            after = float(after)
        else:
            name, payload = item
        if not isinstance(name, str) or not name:
            raise ValueError(f"a signal name must be a non-empty string, not {name!r}")
        plans.append(SignalPlan(after, name, payload))
    return plans


def _clock_factory(clock: ClockSpec) -> Callable[[], Clock]:
    if clock is None:
        return VirtualClock
    if isinstance(clock, VirtualClock):
        start = clock.now()
        return lambda: VirtualClock(start)
    if isinstance(clock, int | float | datetime.datetime) and not isinstance(clock, bool):
        begin = clock
        return lambda: VirtualClock(begin)
    if not isinstance(clock, type) and all(
        hasattr(clock, a) for a in ("now", "monotonic", "sleep")
    ):
        shared: Clock = clock  # type: ignore[assignment]
        return lambda: shared
    if callable(clock):
        return clock
    raise TypeError(f"clock= takes a start time, a clock or a clock factory, not {clock!r}")
