"""ce.testing.check: crash a workflow at every boundary and check that it resumes the same.

    def test_checkout_survives_crashes():
        report = ce.testing.check(checkout, "o-1", 500, steps={"charge": fake_charge})
        assert report.result == {"receipt": "r-1", "tracking": "t-1"}

check() runs the workflow once, uninterrupted, as the reference run. Then it runs it
again in a fresh engine with no crash at all, and then once per crash point of the
reference run: just before and just after each commit, and as each step returns
(it ran, its outcome was not committed), gathers' and races' members and child runs
included; two points that leave the same file and the same effects behind (just
after one commit and just before the next, with nothing run between) are tried
once. At the crash the engine dies; a brand-new engine on the same file resumes
the run.
Every run must end as the reference did (the same value, or the same exception),
log the same requests in the same order, and never run a step again whose outcome
was committed before the crash. The first crash point that breaks one of these is
reported, with a diff of the first divergence, in a CheckFailed (an AssertionError).

Steps still run in every run (their functions are called, fakes from `steps=` in
place of the named ones), but after the reference each attempt ends as it did there:
check is about the workflow's code and its recovery, so a step that returns
something else each time (an id, a timestamp) does not make runs differ. For the
same reason ce.random() and ce.uuid() give every run the reference's values, and
every run has its own virtual clock starting at the same time, so sleeps, waits'
timeouts and retries' backoff take no time.

A workflow that raises is not a failure of check: every run must raise the same, and
the exception is in `report.error` (`report.result` is None) for the test to assert
on. Stand-ins in `steps=` for steps the path under test never yields are accepted, so
that one dict of stand-ins can serve every test; `report.unused_fakes` names them.
"""

from __future__ import annotations

import contextlib
import datetime
import difflib
import logging
import os
import reprlib
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..clock import Clock
from ..core.canonical import canonical_call
from ..core.serde import Serde
from ..core.workflow import Step, Workflow
from ..errors import ContengineError, NonDeterminismError
from ..store.base import E_COMPLETED, E_FAILED, E_RETRYING, FINISHED, EntryRow, Progress
from .check_events import (
    AFTER,
    BEFORE,
    RAN,
    RUN_ID,
    Ending,
    Execution,
    Line,
    Played,
    Point,
    SignalPlan,
    losing_events,
)
from .check_runs import Harness
from .clock import VirtualClock

__all__ = ["CheckFailed", "CheckReport", "check"]

ClockSpec = Clock | float | datetime.datetime | Callable[[], Clock] | None
StepsSpec = Mapping[str | Step[..., Any], Callable[..., Any]] | None
SignalsSpec = Mapping[str, Any] | Iterable[tuple[Any, ...]] | None

# Kinds of crash points, as the report counts them.
K_BEFORE = "just before a commit"
K_AFTER = "just after a commit"
K_BETWEEN = "between two commits"
K_RAN = "after a step ran, before its outcome was committed"
K_INSIDE = "inside a gather or race"

DETERMINISM_HINT = (
    "Workflow code between yields must be deterministic: it may not read the clock "
    "(use `yield ce.now()`), random numbers (`yield ce.random()`), uuid4 (`yield "
    "ce.uuid()`), environment variables, files or the network, nor state that outlives a "
    "run (module-level variables, caches, mutable default arguments). Do such things in a "
    "step, whose outcome is logged."
)


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
            f"returned {_short(self.result)}"
            if self.error is None
            else f"raised {_exception_text(self.error)}"
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


@dataclass(frozen=True)
class _Boundary:
    """A crash point with its description; point None is a run with no crash."""

    point: Point | None
    text: str
    kind: str
    inside: bool = False


@dataclass(frozen=True)
class _Failure:
    """How a run differed from the reference."""

    headline: str
    details: list[str]
    nondeterminism: bool = True


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
        names = _Names(reference.log)
        _check_reference(workflow, reference, names)
        skip = losing_events(reference.events, harness.losers)
        boundaries = _boundaries(reference, names, skip)
        rerun: dict[str, None] = {}
        missed = 0
        for number, boundary in enumerate(boundaries):
            got = harness.play(boundary.point)
            failure = _compare(reference, got, names)
            if failure is not None:
                message = _message(
                    workflow, reference, got, boundary, number, len(boundaries) - 1, failure
                )
                raise CheckFailed(message) from got.error
            rerun.update(dict.fromkeys(_ran_again(reference, got, names)))
            missed += boundary.point is not None and not got.fired
    assert reference.ending is not None
    kinds = Counter(b.kind for b in boundaries if b.point is not None)
    return CheckReport(
        workflow=workflow.name,
        boundaries=len(boundaries) - 1,
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
            K_INSIDE: sum(1 for b in boundaries if b.inside),
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
        return "is stuck" not in record.getMessage()

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


# -- crash points --------------------------------------------------------------------------


class _Names:
    """Readable names of log entries and commits, from the reference run's log."""

    def __init__(self, log: list[Line]) -> None:
        self.members: dict[tuple[str, int], tuple[int, str, int]] = {}
        for line in log:
            if line.kind in ("gather", "race") and line.key is not None and line.key.isdigit():
                for i in range(int(line.key)):
                    self.members[(line.run_id, line.position + 1 + i)] = (
                        i + 1, line.kind, line.position,
                    )  # fmt: skip

    def inside(self, run_id: str, position: int) -> bool:
        """Whether the entry is a member of a gather or race."""
        return (run_id, position) in self.members

    def entry(self, run_id: str, position: int, kind: str, name: str) -> str:
        """Such as "step 'charge' at position 2 (member 1 of the gather at position 1)"."""
        text = f"{kind} {name!r}" if name else kind
        text += f" at position {position}"
        member = self.members.get((run_id, position))
        if member is not None:
            text += f" (member {member[0]} of the {member[1]} at position {member[2]})"
        if run_id != RUN_ID:
            text += f" of child run {run_id!r}"
        return text

    def row(self, run_id: str, e: EntryRow) -> str:
        """entry() for a stored row."""
        return self.entry(run_id, e.position, e.kind, e.name)

    def commit(self, p: Progress) -> str:
        """What a commit writes, in words: "records the outcome of ... and logs ..."."""
        parts: list[str] = []
        u = p.update
        if u is not None:
            what = self.row(p.run_id, u)
            if u.status == E_COMPLETED:
                parts.append(f"records the outcome of {what}")
            elif u.status == E_FAILED and (u.error_text or "").startswith("Cancelled"):
                parts.append(f"records that {what} was cancelled")
            elif u.status == E_FAILED:
                parts.append(f"records that {what} failed")
            elif u.status == E_RETRYING and not u.error_text:
                parts.append(f"gives back attempt {u.attempts + 1} of {what} (due again now)")
            elif u.status == E_RETRYING:
                parts.append(f"records that attempt {u.attempts} of {what} failed (a retry is due)")
            else:
                parts.append(f"starts attempt {u.attempts} of {what}")
        parts.extend(self._recorded(p))
        if p.insert is not None:
            parts.append(f"logs {self.row(p.run_id, p.insert)}")
        if p.consume is not None:
            parts.append("takes a signal out of the mailbox")
        parts.extend(f"creates child run {r.id!r}" for r in p.new_runs)
        if p.restart is not None:
            parts.append("starts the run afresh (continue_as_new)")
        run = "the run" if p.run_id == RUN_ID else f"child run {p.run_id!r}"
        if p.run is not None and p.run.status in FINISHED:
            parts.append(f"ends {run} ({p.run.status})")
        elif p.run is not None and not parts:
            parts.append(f"marks {run} {p.run.status}")
        if not parts:
            return f"writes nothing new for {run}"
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]

    def _recorded(self, p: Progress) -> list[str]:
        headers = {e.position: e for e in p.recorded if e.kind in ("gather", "race")}
        parts = []
        for e in p.recorded:
            member = self.members.get((p.run_id, e.position))
            if member is not None and member[2] in headers:
                continue  # told with its gather
            if e.position in headers:
                count = sum(
                    1
                    for m in p.recorded
                    if self.members.get((p.run_id, m.position), (0, "", -1))[2] == e.position
                )
                parts.append(f"logs the {e.kind} at position {e.position} with {count} members")
            elif e.status in (E_COMPLETED, E_FAILED):
                parts.append(f"logs {self.row(p.run_id, e)} with its outcome")
            else:
                parts.append(f"logs {self.row(p.run_id, e)}")
        return parts


def _boundaries(reference: Played, names: _Names, skip: set[int]) -> list[_Boundary]:
    """The crash points of the reference run, in the order it reached them; the first
    is no crash at all. Points that leave the same file and the same side effects are
    tried once: just after a commit and just before the next (nothing ran between), or
    a step's return and the commit of its outcome. Events in `skip` are left out."""
    out = [_Boundary(None, "run it again in a fresh engine, with no crash at all", "none")]
    last = ""
    for index, event in enumerate(reference.events):
        if index in skip:
            continue
        p, x = event.progress, event.execution
        if p is not None:
            what = names.commit(p)
            inside = _commit_inside(p, names)
            if last == "commit":
                prev = out[-1]
                out[-1] = replace(
                    prev,
                    text=f"{prev.text}, before the commit that {what}",
                    kind=K_BETWEEN,
                    inside=prev.inside or inside,
                )
            elif last != RAN:
                point = Point(BEFORE, event.key, event.occurrence)
                text = f"crash just before the commit that {what}"
                out.append(_Boundary(point, text, K_BEFORE, inside))
            point = Point(AFTER, event.key, event.occurrence)
            out.append(
                _Boundary(point, f"crash just after the commit that {what}", K_AFTER, inside)
            )
            last = "commit"
        elif x is not None:
            step = names.entry(x.run_id, x.position, "step", x.name)
            text = f"crash after {step} ran (try {x.attempt}), before its outcome was committed"
            point = Point(RAN, event.key, event.occurrence)
            out.append(_Boundary(point, text, K_RAN, names.inside(x.run_id, x.position)))
            last = RAN
    return out


def _commit_inside(p: Progress, names: _Names) -> bool:
    rows = [e for e in (p.update, p.insert, *p.recorded) if e is not None]
    return any(names.inside(p.run_id, e.position) for e in rows)


# -- comparing runs ------------------------------------------------------------------------


def _check_reference(wf: Workflow[..., Any], ref: Played, names: _Names) -> None:
    """The reference run must be rebuilt from its own log and finish."""
    if ref.stuck is not None:
        raise CheckFailed(
            "\n".join(
                [
                    f"ce.testing.check: workflow {wf.name!r} could not be rebuilt from its own "
                    f"log, without any crash.",
                    "A run is rebuilt by replaying its log whenever it comes back from a sleep, "
                    "a wait or a retry's backoff, as this one did; the replay went another way "
                    "than the run had gone.",
                    "",
                    *_error_lines(ref.stuck, ref.stuck_run),
                    "",
                    DETERMINISM_HINT,
                ]
            )
        )
    if ref.ending is None:
        in_flight = [line for line in ref.log if line.status not in (E_COMPLETED, E_FAILED)]
        where = f"; it waits at {names.entry(*_where(in_flight[-1]))}" if in_flight else ""
        raise CheckFailed(
            f"ce.testing.check: the reference run of workflow {wf.name!r} did not finish: "
            f"it is {ref.status!r}{where}. Send what it waits for with signals= "
            f"(signals={{'name': payload}}, or (after_seconds, name, payload) triples)."
        )


def _where(line: Line) -> tuple[str, int, str, str]:
    return line.run_id, line.position, line.kind, line.name


def _compare(ref: Played, got: Played, names: _Names) -> _Failure | None:
    """The first way got differs from the reference, or None."""
    if got.again:
        return _Failure(
            "a step whose outcome was committed before the crash ran again (guarantee 1 is "
            "broken: this is a bug in contengine itself; please report it)",
            sorted({names.entry(x.run_id, x.position, "step", x.name) for x in got.again}),
            nondeterminism=False,
        )
    if got.error is not None:
        error = got.error
        return _Failure(
            "the engine raised an error while it carried the run on (a bug in contengine, or "
            "trouble with the database)",
            [f"{type(error).__qualname__}: {error}"],
            nondeterminism=False,
        )
    if got.stuck is not None:
        return _Failure(
            "the resumed run could not be rebuilt from its log",
            _error_lines(got.stuck, got.stuck_run),
        )
    diff = _log_diff(ref.log, got.log)
    if got.ending is None:
        return _Failure(f"the run did not finish: it was left {got.status!r}", diff)
    if diff:
        return _Failure("it logged other requests than the reference run", diff)
    assert ref.ending is not None
    if not _same_ending(ref.ending, got.ending):
        return _Failure(
            "it ended differently",
            [
                f"reference run: {_ending_text(ref.ending)}",
                f"this run:      {_ending_text(got.ending)}",
            ],
        )
    return None


def _ran_again(ref: Played, got: Played, names: _Names) -> list[str]:
    """Steps executed more often than in the reference (a crash lost their outcome)."""
    before = _executions(ref.ledger)
    return [
        names.entry(run_id, position, "step", name)
        for (run_id, gen, position, name), n in _executions(got.ledger).items()
        if n > before.get((run_id, gen, position, name), 0)
    ]


def _executions(ledger: list[Execution]) -> Counter[tuple[str, int, int, str]]:
    return Counter((x.run_id, x.generation, x.position, x.name) for x in ledger)


def _log_diff(ref: list[Line], got: list[Line]) -> list[str]:
    """A unified diff of the requests of two final logs; empty when they are the same."""
    if [line.identity for line in ref] == [line.identity for line in got]:
        return []
    old = [line.describe() for line in ref]
    new = [line.describe() for line in got]
    if old == new:  # the same text, other arguments (compared by key)
        old = [f"{line.describe()}  key={line.key}" for line in ref]
        new = [f"{line.describe()}  key={line.key}" for line in got]
    return list(difflib.unified_diff(old, new, "reference run", "this run", lineterm="", n=2))


def _error_lines(error: ContengineError, run_id: str | None) -> list[str]:
    lines = []
    if run_id is not None and run_id != RUN_ID:
        lines.append(f"(in child run {run_id!r})")
    if isinstance(error, NonDeterminismError):
        lines.extend(error.diff.splitlines())
    lines.extend(f"{type(error).__name__}: {error}".splitlines())
    return lines


def _same_ending(a: Ending, b: Ending) -> bool:
    if a.ok != b.ok:
        return False
    if not a.ok:
        return type(a.value) is type(b.value) and str(a.value) == str(b.value)
    return _same_value(a.value, b.value)


def _same_value(a: Any, b: Any) -> bool:
    """Equal by ==, or, for objects that do not define it, by their serialized state."""
    try:
        if bool(a == b):
            return True
    except Exception:  # a value whose == raises compares by its state below
        pass
    canon = canonical_call((a,), {})
    if canon is not None:
        return canon == canonical_call((b,), {})
    serde = Serde()
    try:
        return serde.dumps(a, "a result") == serde.dumps(b, "a result")
    except ContengineError:
        return False


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80


def _short(value: Any) -> str:
    return _REPR.repr(value)


def _exception_text(error: BaseException) -> str:
    return f"{type(error).__qualname__}: {error}"


def _ending_text(ending: Ending) -> str:
    if ending.ok:
        return f"returned {_short(ending.value)}"
    return f"raised {_exception_text(ending.value)}"


def _message(
    wf: Workflow[..., Any],
    ref: Played,
    got: Played,
    boundary: _Boundary,
    number: int,
    total: int,
    failure: _Failure,
) -> str:
    """The failure report: the schedule, what went wrong, both endings, and a hint."""
    assert ref.ending is not None
    if boundary.point is None:
        lines = [
            f"ce.testing.check: workflow {wf.name!r} does not run the same way twice, even "
            f"without a crash.",
            "Schedule: run it once (the reference run), then " + boundary.text + ".",
        ]
    else:
        lines = [
            f"ce.testing.check: workflow {wf.name!r} does not survive a crash.",
            f"The shortest crash schedule that breaks it (crash point {number} of {total}, "
            f"tried in the order the reference run reached them):",
            f"  1. run the workflow in a fresh engine and {boundary.text};",
            "  2. open a fresh engine on the same file and resume the run.",
        ]
        if not got.fired:
            lines.append(
                "  (The crash never came: before reaching that point this run had already "
                "gone another way than the reference run.)"
            )
    lines += ["", f"First divergence: {failure.headline}."]
    lines += ["  " + line for line in failure.details]
    this_run = _ending_text(got.ending) if got.ending is not None else f"left {got.status!r}"
    lines += [
        "",
        f"Reference run (no crash): {_ending_text(ref.ending)}",
        f"This run:                 {this_run}",
    ]
    if failure.nondeterminism:
        lines.append("")
        if boundary.point is None:
            lines.append(
                "A second run in the same process went another way: look first for state "
                "that outlives a run, or for something that changes from run to run."
            )
        lines.append(DETERMINISM_HINT)
    return "\n".join(lines)
