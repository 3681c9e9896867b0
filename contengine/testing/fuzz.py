"""Determinism fuzzing: replay a recorded run under changes a deterministic workflow
cannot notice, and name what made it diverge.

fuzz() runs the workflow once for real, on a fresh engine with a virtual clock, with
the wall clock, `random`, `uuid.uuid4` and `os.environ` pinned for its code between
yields (see world.py). Then it replays the log, running no step: first with nothing
changed (a workflow that diverges here depends on state that differs from one run
to the next), then in another thread, then with the wall clock shifted, the wall
clock running at other rates (elapsed time), `random` and `uuid4` reseeded, each
environment variable the workflow read changed, and in fresh processes (another
PYTHONHASHSEED, process id, working directory, hostname and time zone; see
fuzz_process.py). A replay that yields another request, or ends differently, is a
finding named after what was changed.
"""

from __future__ import annotations

import datetime
import functools
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from ..clock import Clock
from ..core.gather import GatherRequest, RaceRequest
from ..core.requests import StepCall
from ..core.workflow import Step, Workflow
from ..engine.engine import Engine
from ..errors import ContengineError, NonDeterminismError
from .clock import VirtualClock
from .fuzz_process import collect_children, start_children
from .fuzz_replay import (
    CAUSE_CLOCK,
    CAUSE_ELAPSED,
    CAUSE_ENV,
    CAUSE_HASH,
    CAUSE_PROCESS,
    CAUSE_RANDOM,
    CAUSE_REPLAY,
    CAUSE_THREAD,
    CAUSE_UUID,
    HINT_CLOCK,
    HINT_ELAPSED,
    HINT_ENV,
    HINT_RANDOM,
    HINT_REPLAY,
    HINT_THREAD,
    HINT_UUID,
    RUN_ID,
    UNFINISHED,
    FuzzFinding,
    FuzzReport,
    Recording,
    diff_of,
    error_text,
    load_arguments,
    replay,
    replay_in_thread,
    value_text,
)
from .world import ALL, Stub, World, pinned

ClockSpec = Clock | float | datetime.datetime | Callable[[], Clock] | None
Signals = Mapping[str, Any] | Iterable[tuple[Any, ...]] | None

__all__ = [
    "CAUSE_CLOCK",
    "CAUSE_ELAPSED",
    "CAUSE_ENV",
    "CAUSE_HASH",
    "CAUSE_PROCESS",
    "CAUSE_RANDOM",
    "CAUSE_REPLAY",
    "CAUSE_THREAD",
    "CAUSE_UUID",
    "FuzzFinding",
    "FuzzReport",
    "assert_deterministic",
    "fuzz",
]

# Each shift moves the date, the weekday, the hour, the minute and the second.
CLOCK_SHIFTS = (285_197.5, 17_325_067.25, -129_600.5)  # +3 d 7 h, +200 d 12 h, -1 d 12 h
# Rates of the pinned clocks, against the recording's 1 (see world.py): a replay that
# takes no time, and one whose every yield takes over eleven days.
CLOCK_RATES = (0.0, 1_000_000.0)
RANDOM_SEEDS = (1, 2, 3, 4, 5)
UUID_SEEDS = (1, 2)
# Values tried for each environment variable the workflow reads (besides unset and "").
ENV_VALUES = ("1", "0", "true", "false", "on", "off", "yes", "no", "fuzzed")


def fuzz(
    workflow: Workflow[Any, Any],
    /,
    *args: Any,
    steps: Mapping[str | Step[Any, Any], Callable[..., Any]] | None = None,
    signals: Signals = None,
    clock: ClockSpec = None,
    **kwargs: Any,
) -> FuzzReport:
    """Run workflow(*args, **kwargs) once, replay its log under perturbations a
    deterministic workflow cannot notice, and report each divergence with its cause.

    steps maps step names (or steps) to stand-ins run in their place. signals, as
    for check(): {name: payload} or (name, payload) pairs, sent before the run starts,
    or (after_seconds, name, payload) triples, sent once the clock has moved that far.
    clock, as for check(): where the run's VirtualClock starts (epoch seconds or an
    aware datetime), a clock, or a zero-argument factory of clocks.
    """
    if not isinstance(workflow, Workflow):
        raise TypeError(f"fuzz() needs a @ce.workflow, not {workflow!r}")
    began = time.perf_counter()
    report = FuzzReport(workflow.name)
    base = World.here()
    with tempfile.TemporaryDirectory(prefix="contengine-fuzz-") as tmp:
        stub = _stubber(steps) if steps else None
        rec = _record(workflow, args, kwargs, base, stub, signals, clock, tmp, report)
        if rec is not None:
            _fuzz(rec, base, tmp, report)
    report.seconds = time.perf_counter() - began
    return report


def assert_deterministic(
    workflow: Workflow[Any, Any],
    /,
    *args: Any,
    steps: Mapping[str | Step[Any, Any], Callable[..., Any]] | None = None,
    signals: Signals = None,
    clock: ClockSpec = None,
    **kwargs: Any,
) -> FuzzReport:
    """fuzz(), raising AssertionError with the report if any replay diverged."""
    report = fuzz(workflow, *args, steps=steps, signals=signals, clock=clock, **kwargs)
    if not report.ok:
        raise AssertionError(str(report))
    return report


# -- the recorded run -----------------------------------------------------------


def _record(
    workflow: Workflow[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    base: World,
    stub: Stub | None,
    signals: Signals,
    clock: ClockSpec,
    tmp: str,
    report: FuzzReport,
) -> Recording | None:
    """Run the workflow for real in the base world; None if the engine's own replays
    (after a sleep, a wait or a retry) already diverged."""
    namespace = getattr(workflow.fn, "__globals__", None)

    @functools.wraps(workflow.fn)  # the same signature, module and name
    def in_world(*a: Any, **k: Any) -> Any:
        return pinned(workflow.fn(*a, **k), base, namespace, stub)

    stand_in: Workflow[Any, Any] = Workflow(in_world, workflow.name)
    stand_in.ref = workflow.ref
    db = os.path.join(tmp, "run.db")
    engine = Engine(
        db, durability="normal", clock=_make_clock(clock), workflows=[stand_in], cache_runs=0
    )
    try:
        engine.start(stand_in, *args, id=RUN_ID, **kwargs)
        stuck = _drive(engine, _signal_plan(signals))
        if stuck:
            report.tried.append("the engine's own replays while recording")
            report.findings += [_stuck_finding(run_id, exc) for run_id, exc in stuck.items()]
            return None
        history = engine.history(RUN_ID)
        row = engine.store.get_run(RUN_ID)
        assert row is not None
        arguments = load_arguments(engine.serde, row.args)
        end = _recorded_end(engine)
        copy = os.path.join(tmp, "replay.db")
        engine.backup(copy)
    finally:
        engine.close()
    return Recording(workflow, arguments, history, end, copy)


def _recorded_end(engine: Engine) -> str:
    run = engine.get_run(RUN_ID)
    status = run.status
    if status == "completed":
        return "returned " + value_text(run.result())
    if status in ("failed", "cancelled"):
        try:
            run.result()
        except BaseException as exc:  # the run's exception, read back from the file
            return "raised " + error_text(exc)
    return UNFINISHED


def _make_clock(spec: ClockSpec) -> Clock:
    if spec is None:
        return VirtualClock()
    if isinstance(spec, int | float | datetime.datetime):
        return VirtualClock(spec)
    if isinstance(spec, type) or not hasattr(spec, "now"):
        return cast(Callable[[], Clock], spec)()  # a factory (ce.SystemClock, a lambda)
    return cast(Clock, spec)


def _signal_plan(signals: Signals) -> list[tuple[float, str, Any]]:
    """(seconds after the start, name, payload), soonest first; 0 for "before it runs"."""
    if signals is None:
        return []
    items = list(signals.items()) if isinstance(signals, Mapping) else list(signals)
    plan: list[tuple[float, str, Any]] = []
    for item in items:
        if len(item) == 2:
            plan.append((0.0, item[0], item[1]))
        elif len(item) == 3:
            plan.append((float(item[0]), item[1], item[2]))
        else:
            raise TypeError(
                f"signals= takes {{name: payload}}, (name, payload) pairs or "
                f"(after_seconds, name, payload) triples, not {item!r}"
            )
    return sorted(plan, key=lambda p: p[0])


def _drive(engine: Engine, plan: list[tuple[float, str, Any]]) -> dict[str, ContengineError]:
    """Drive the run until idle, sending each signal when its time comes; the stuck runs."""
    clock = engine.clock
    start = clock.now()
    stuck: dict[str, ContengineError] = {}
    for after, name, payload in plan:
        if after > 0:
            stuck.update(engine.run_until_idle(until=start + after).stuck)
            jump = getattr(clock, "jump_to", None)
            if jump is not None:
                jump(start + after)
        if engine.get_run(RUN_ID).status in ("completed", "failed", "cancelled"):
            break  # it ended before the signal came: nothing more to send
        engine.signal(RUN_ID, name, payload)
    stuck.update(engine.run_until_idle().stuck)
    return stuck


def _stubber(steps: Mapping[str | Step[Any, Any], Callable[..., Any]]) -> Stub:
    """Swap the function of each named step for its stand-in (name and arguments kept)."""
    fakes = {k.name if isinstance(k, Step) else k: v for k, v in steps.items()}

    def stub(request: Any) -> Any:
        if isinstance(request, StepCall) and request.step.name in fakes:
            fake = Step(fakes[request.step.name], request.step.name, request.options)
            return StepCall(fake, request.args, request.kwargs, request.options)
        if isinstance(request, GatherRequest):
            members = tuple(stub(m) for m in request.members)
            if isinstance(request, RaceRequest):
                return RaceRequest(members)
            return GatherRequest(members, request.return_exceptions)
        return request

    return stub


# -- replaying ------------------------------------------------------------------


@dataclass
class _Family:
    """Variants of one perturbation; the first that diverges is the finding."""

    label: str
    cause: str
    hint: str
    variants: list[tuple[str, World]]
    # Not tried once a finding has this cause: what it would find is blamed already.
    unless: str | None = None


def _families(base: World, reads: set[str]) -> list[_Family]:
    families = [
        _Family(
            f"wall clock shifted ({len(CLOCK_SHIFTS)} shifts)",
            CAUSE_CLOCK,
            HINT_CLOCK,
            [(f"wall clock shifted by {_span(s)}", base.but(shift=s)) for s in CLOCK_SHIFTS],
        ),
        _Family(
            f"wall clock at other rates ({len(CLOCK_RATES)} rates)",
            CAUSE_ELAPSED,
            HINT_ELAPSED,
            [(_rate_label(r), base.but(rate=r)) for r in CLOCK_RATES],
            unless=CAUSE_CLOCK,  # another rate moves the time read too, after a yield
        ),
        _Family(
            f"random reseeded ({len(RANDOM_SEEDS)} seeds)",
            CAUSE_RANDOM,
            HINT_RANDOM,
            [(f"random reseeded with {s}", base.but(random_seed=s)) for s in RANDOM_SEEDS],
        ),
        _Family(
            f"uuid.uuid4 reseeded ({len(UUID_SEEDS)} seeds)",
            CAUSE_UUID,
            HINT_UUID,
            [(f"uuid.uuid4 reseeded with {s}", base.but(uuid_seed=s)) for s in UUID_SEEDS],
        ),
    ]
    for key in sorted(reads - {ALL}):
        families.append(_env_family(base, key))
    if ALL in reads:
        extra = {**base.environ, "CONTENGINE_FUZZ_EXTRA": "1"}
        families.append(
            _Family(
                "os.environ with an extra variable",
                f"{CAUSE_ENV} (the whole environment)",
                HINT_ENV,
                [("os.environ with CONTENGINE_FUZZ_EXTRA=1 added", base.but(environ=extra))],
            )
        )
    return families


def _env_family(base: World, key: str) -> _Family:
    """The variable removed, emptied, or set to values that flags are usually compared to."""
    env = base.environ
    current = env.get(key)
    variants: list[tuple[str, World]] = []
    if current is not None:
        without = {k: v for k, v in env.items() if k != key}
        variants.append((f"os.environ without {key}", base.but(environ=without)))
    for value in ("", *ENV_VALUES):
        if current is None and value == "":
            continue  # set but empty reads much like unset; the values below decide
        if current is None or value.lower() != current.lower():
            world = base.but(environ={**env, key: value})
            variants.append((f"os.environ[{key!r}] = {value!r}", world))
    label = f"os.environ[{key!r}] changed"
    return _Family(label, f"{CAUSE_ENV} ({key})", HINT_ENV, variants)


def _rate_label(rate: float) -> str:
    if rate == 0:
        return "wall clock frozen (a replay that takes no time)"
    return f"wall clock running {rate:,.0f} times as fast (a replay that takes days)"


def _span(seconds: float) -> str:
    sign = "-" if seconds < 0 else "+"
    days, rest = divmod(abs(seconds), 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    return f"{sign}{int(days)} d {int(hours):02}:{int(minutes):02}:{secs:04.1f}"


def _stuck_finding(run_id: str, exc: ContengineError) -> FuzzFinding:
    """A run the engine could not carry on while recording (it is stuck)."""
    if isinstance(exc, NonDeterminismError):
        what = f"the engine's own replay of run {run_id!r} (after a sleep, wait or retry)"
        return FuzzFinding(what, CAUSE_REPLAY, diff_of(exc), str(exc), HINT_REPLAY)
    what = f"the recording of run {run_id!r}"
    cause = f"the run could not go on ({type(exc).__name__})"
    return FuzzFinding(what, cause, str(exc), str(exc))


def _fuzz(rec: Recording, base: World, tmp: str, report: FuzzReport) -> None:
    plain = base.but()
    report.tried.append("plain replay")
    report.replays += 1
    div = replay(rec, plain)
    if div is not None:  # every perturbation would diverge too: the cause is elsewhere
        what = "plain replay (nothing changed)"
        report.findings.append(FuzzFinding(what, CAUSE_REPLAY, div.diff, div.message, HINT_REPLAY))
        return
    children = start_children(rec, base, tmp, report)  # they run while we replay here
    try:
        what = "a replay in another thread"
        report.tried.append(what)
        report.replays += 1
        div = replay_in_thread(rec, base.but())
        if div is not None:
            finding = FuzzFinding(what, CAUSE_THREAD, div.diff, div.message, HINT_THREAD)
            report.findings.append(finding)
        for family in _families(base, plain.reads):
            if family.unless is not None and family.unless in report.causes:
                report.skipped.append(f"{family.label}: the cause is blamed already, above")
                continue
            report.tried.append(family.label)
            for label, world in family.variants:
                report.replays += 1
                div = replay(rec, world)
                if div is not None:
                    finding = FuzzFinding(label, family.cause, div.diff, div.message, family.hint)
                    report.findings.append(finding)
                    break
    finally:
        collect_children(children, report)
