"""Determinism fuzzing: replay a recorded run under changes a deterministic workflow
cannot notice, and name what made it diverge.

fuzz() runs the workflow once for real, on a fresh engine with a virtual clock, with
the wall clock, `random`, `uuid.uuid4` and `os.environ` pinned for its code between
yields (see world.py). Then it replays the log, running no step: first with nothing
changed (a workflow that diverges here depends on state that differs from one run
to the next), then with the wall clock shifted, `random` and `uuid4` reseeded, each
environment variable the workflow read changed, and in fresh processes with other
PYTHONHASHSEEDs. A replay that yields another request, or ends differently, is a
finding named after what was changed.
"""

from __future__ import annotations

import contextlib
import datetime
import difflib
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from ..canonical import canonical_call
from ..clock import Clock
from ..driver import Driver, Next, Pending, Raised, Returned
from ..engine import Engine
from ..errors import ContengineError, NonDeterminismError, WorkflowFailed, WorkflowNotFound
from ..log import Entry
from ..requests import GatherRequest, RaceRequest, StepCall
from ..serde import Serde
from ..workflow import Step, Workflow, lookup
from .clock import VirtualClock
from .world import ALL, Stub, World, pinned

ClockSpec = Clock | float | datetime.datetime | Callable[[], Clock] | None
Signals = Mapping[str, Any] | Iterable[tuple[Any, ...]] | None

__all__ = ["FuzzFinding", "FuzzReport", "assert_deterministic", "fuzz"]

# Each shift moves the date, the weekday, the hour, the minute and the second.
CLOCK_SHIFTS = (285_197.5, 17_325_067.25, -129_600.5)  # +3 d 7 h, +200 d 12 h, -1 d 12 h
RANDOM_SEEDS = (1, 2, 3, 4, 5)
UUID_SEEDS = (1, 2)
HASH_SEEDS = (101, 202, 303, 404)  # three are used: not this process's own
# Values tried for each environment variable the workflow reads (besides unset and "").
ENV_VALUES = ("1", "0", "true", "false", "on", "off", "yes", "no", "fuzzed")
CHILD_TIMEOUT = 120.0  # seconds for a replay in another process
RUN_ID = "fuzz"
UNFINISHED = "unfinished (waits at its last logged request)"

CAUSE_REPLAY = (
    "the workflow diverges on a plain replay, with nothing changed: it depends on state "
    "that differs from one run to the next (a module-level variable it changes, a mutable "
    "default argument, id() or hash() of an object, a file's contents)"
)
CAUSE_CLOCK = "branch depends on the wall clock (time.time() / datetime.now())"
CAUSE_RANDOM = "branch depends on the random module"
CAUSE_UUID = "branch depends on uuid.uuid4()"
CAUSE_ENV = "branch depends on os.environ"
CAUSE_HASH = (
    "branch depends on the iteration order of a set of str or bytes (or on their hash()), "
    "which changes with PYTHONHASHSEED"
)
CAUSE_PROCESS = (
    "the workflow diverges in a fresh process: it depends on the iteration order of a set "
    "of str or bytes (PYTHONHASHSEED), on hash() or id() values, or on state the calling "
    "process set up before fuzz()"
)

HINT_REPLAY = (
    "keep the code between yields a function of the arguments and of what the yields "
    "return; read files and shared state in a step"
)
HINT_CLOCK = "take the time with `now = yield ce.now()` (recorded once), or pass it in"
HINT_RANDOM = "draw with `r = yield ce.random()` (recorded once), or in a step"
HINT_UUID = "make ids with `u = yield ce.uuid()` (recorded once), or in a step"
HINT_ENV = "read the variable in a step, or pass its value in as an argument"
HINT_HASH = "iterate over sorted(the_set), not the set"


@dataclass(frozen=True)
class FuzzFinding:
    """A perturbation the replay noticed: what was changed, the likely cause, the diff."""

    perturbation: str
    cause: str
    diff: str
    message: str = ""
    hint: str = ""

    def __str__(self) -> str:
        lines = [self.perturbation, f"  cause: {self.cause}"]
        if self.hint:
            lines.append(f"  fix: {self.hint}")
        lines += ["  " + line for line in self.diff.splitlines()]
        return "\n".join(lines)


@dataclass
class FuzzReport:
    """What fuzz() tried, what it had to skip, and what diverged."""

    workflow: str
    findings: list[FuzzFinding] = field(default_factory=list)
    tried: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    replays: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True if every replay matched the recorded run."""
        return not self.findings

    @property
    def causes(self) -> list[str]:
        """The cause of each finding, in order."""
        return [f.cause for f in self.findings]

    def __str__(self) -> str:
        took = f"{self.replays} replays ({self.seconds:.2f} s)"
        if self.ok:
            lines = [f"fuzz: workflow {self.workflow!r} replayed the same under {took}"]
        else:
            lines = [f"fuzz: workflow {self.workflow!r} diverged; {took}"]
            for i, finding in enumerate(self.findings, 1):
                lines += ["", f"{i}. {finding}"]
            lines.append("")
        lines.append("tried: " + ("; ".join(self.tried) or "nothing"))
        lines += [f"skipped: {s}" for s in self.skipped]
        return "\n".join(lines)


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


@dataclass
class _Recording:
    workflow: Workflow[Any, Any]
    arguments: Callable[[], tuple[tuple[Any, ...], dict[str, Any]]]  # a fresh copy each time
    history: list[Entry]
    end: str  # how the run ended, in the form _end_of() gives
    db: str  # a copy of the database, for replays in other processes


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
) -> _Recording | None:
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
        arguments = _arguments(engine.serde, row.args)
        end = _recorded_end(engine)
        copy = os.path.join(tmp, "replay.db")
        engine.backup(copy)
    finally:
        engine.close()
    return _Recording(workflow, arguments, history, end, copy)


def _arguments(serde: Serde, data: bytes) -> Callable[[], tuple[tuple[Any, ...], dict[str, Any]]]:
    """The run's arguments read afresh for each replay, as the engine does for each drive:
    a workflow that changes an argument in place must not change the next replay's."""

    def load() -> tuple[tuple[Any, ...], dict[str, Any]]:
        args, kwargs = serde.loads(data, "the arguments of the run")
        return tuple(args), dict(kwargs)

    return load


def _recorded_end(engine: Engine) -> str:
    run = engine.get_run(RUN_ID)
    status = run.status
    if status == "completed":
        return "returned " + _value_text(run.result())
    if status in ("failed", "cancelled"):
        try:
            run.result()
        except BaseException as exc:  # the run's exception, read back from the file
            return "raised " + _error_text(exc)
    return UNFINISHED


def _value_text(value: Any) -> str:
    text = canonical_call((value,), {})
    return text if text is not None else f"<a {type(value).__qualname__}>"


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, WorkflowFailed):  # a stand-in for an exception that could not be stored
        return str(exc)
    return f"{type(exc).__qualname__}: {exc}"


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


@dataclass(frozen=True)
class _Divergence:
    message: str
    diff: str
    signature: str  # where and how it diverged, to compare replays in several processes


def _replay(rec: _Recording, world: World) -> _Divergence | None:
    """Replay the recorded log in world, running nothing; None if it matched."""
    fn = rec.workflow.fn
    args, kwargs = rec.arguments()
    gen = pinned(fn(*args, **kwargs), world, getattr(fn, "__globals__", None))
    driver = Driver(gen, rec.history, label=f"workflow {rec.workflow.name!r}")
    try:
        nxt = driver.start()
    except NonDeterminismError as exc:
        return _Divergence(str(exc), _diff_of(exc), f"{exc.position}: {exc.replayed}")
    except ContengineError as exc:  # an invalid yield
        return _Divergence(str(exc), str(exc), str(exc))
    finally:
        with contextlib.suppress(Exception):
            gen.close()
    if isinstance(nxt, Pending) and nxt.recorded is None:  # went on where the log had ended
        replayed = nxt.request.describe()
        message = (
            f"workflow {rec.workflow.name!r} yielded {replayed} at position {nxt.position}, "
            f"where the recorded run had no request (it {rec.end})"
        )
        recorded = f"(nothing: the log ends here; the run {rec.end})"
        return _Divergence(message, _diff(recorded, replayed), f"{nxt.position}: {replayed}")
    end = _end_of(nxt)
    if end == rec.end:
        return None
    message = (
        f"workflow {rec.workflow.name!r} replayed its logged requests but ended "
        f"differently: recorded {rec.end}; replayed {end}"
    )
    return _Divergence(message, _diff(rec.end, end), end)


def _diff_of(exc: NonDeterminismError) -> str:
    """exc's diff; for a workflow that ended before its log did, saying how it ended."""
    ended = exc.__context__  # the driver raises while handling the workflow's end
    if exc.replayed is not None or exc.recorded is None or ended is None:
        return exc.diff
    if isinstance(ended, StopIteration):
        how = "returned " + _value_text(ended.value)
    else:
        how = "raised " + _error_text(ended)
    return _diff(exc.recorded, f"(nothing: the workflow {how})")


def _diff(recorded: str, replayed: str) -> str:
    lines = difflib.unified_diff([recorded], [replayed], "recorded", "replayed", lineterm="", n=0)
    return "\n".join(lines)


def _end_of(nxt: Next) -> str:
    if isinstance(nxt, Returned):
        return "returned " + _value_text(nxt.value)
    if isinstance(nxt, Raised):
        return "raised " + _error_text(nxt.error)
    return UNFINISHED  # at the request in flight: the replay matched the log up to it


@dataclass
class _Family:
    """Variants of one perturbation; the first that diverges is the finding."""

    label: str
    cause: str
    hint: str
    variants: list[tuple[str, World]]


def _families(base: World, reads: set[str]) -> list[_Family]:
    families = [
        _Family(
            f"wall clock shifted ({len(CLOCK_SHIFTS)} shifts)",
            CAUSE_CLOCK,
            HINT_CLOCK,
            [(f"wall clock shifted by {_span(s)}", base.but(shift=s)) for s in CLOCK_SHIFTS],
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
        return FuzzFinding(what, CAUSE_REPLAY, _diff_of(exc), str(exc), HINT_REPLAY)
    what = f"the recording of run {run_id!r}"
    cause = f"the run could not go on ({type(exc).__name__})"
    return FuzzFinding(what, cause, str(exc), str(exc))


def _fuzz(rec: _Recording, base: World, tmp: str, report: FuzzReport) -> None:
    plain = base.but()
    report.tried.append("plain replay")
    report.replays += 1
    div = _replay(rec, plain)
    if div is not None:  # every perturbation would diverge too: the cause is elsewhere
        what = "plain replay (nothing changed)"
        report.findings.append(FuzzFinding(what, CAUSE_REPLAY, div.diff, div.message, HINT_REPLAY))
        return
    children = _start_children(rec, base, tmp, report)  # they run while we replay here
    try:
        for family in _families(base, plain.reads):
            report.tried.append(family.label)
            for label, world in family.variants:
                report.replays += 1
                div = _replay(rec, world)
                if div is not None:
                    finding = FuzzFinding(label, family.cause, div.diff, div.message, family.hint)
                    report.findings.append(finding)
                    break
    finally:
        _collect_children(children, report)


# -- replays in fresh processes (PYTHONHASHSEED) --------------------------------

_CHILD = "from contengine.testing.fuzz import _replay_in_child; _replay_in_child()"

PROBE = "contengine fuzz probe"  # hashed in each process: equal hashes, equal seeds


@dataclass
class _Child:
    seed: int
    proc: subprocess.Popen[str]
    control: bool  # started with this process's own seed, to tell hash order from the rest


def _hash_seeds() -> tuple[list[int], int | None]:
    """Seeds other than this process's, and this process's own when it is known."""
    mine = os.environ.get("PYTHONHASHSEED", "")
    own = int(mine) if mine.isdigit() and int(mine) < 2**32 else None
    others = [s for s in HASH_SEEDS if s != own][:3]
    return others, own


def _start_children(rec: _Recording, base: World, tmp: str, report: FuzzReport) -> list[_Child]:
    why = _not_importable(rec.workflow)
    if why is not None:
        report.skipped.append(f"PYTHONHASHSEED (set and hash order, in fresh processes): {why}")
        return []
    others, own = _hash_seeds()
    path = [os.getcwd() if p == "" else p for p in sys.path if isinstance(p, str)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    spec = {
        "run_id": RUN_ID,
        "workflow": rec.workflow.name,
        "ref": rec.workflow.ref,
        "end": rec.end,
        "world": base.to_json(),
    }
    children: list[_Child] = []
    for seed, control in [(s, False) for s in others] + ([(own, True)] if own is not None else []):
        db = os.path.join(tmp, f"replay-{seed}.db")
        shutil.copyfile(rec.db, db)  # each process reads a copy of its own
        spec_path = os.path.join(tmp, f"spec-{seed}.json")
        with open(spec_path, "w", encoding="utf-8") as f:
            json.dump({**spec, "db": db}, f)
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, spec_path],
            env={**env, "PYTHONHASHSEED": str(seed)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        children.append(_Child(seed, proc, control))
    return children


def _not_importable(workflow: Workflow[Any, Any]) -> str | None:
    module, _, qualname = workflow.ref.partition(":")
    if "<locals>" in qualname:
        return (
            f"{workflow.ref} is defined inside a function, so another process cannot import "
            f"it; define the workflow at module level to fuzz set and hash order"
        )
    if module == "__main__":
        return (
            f"{workflow.ref} is defined in __main__, so another process cannot import it; "
            f"define the workflow in an importable module to fuzz set and hash order"
        )
    return None


def _collect_children(children: list[_Child], report: FuzzReport) -> None:
    if children:
        seeds = ", ".join(str(c.seed) for c in children if not c.control)
        report.tried.append(f"PYTHONHASHSEED={seeds} (fresh processes)")
    answers: list[tuple[_Child, dict[str, Any]]] = []
    for child in children:
        answer = _answer(child, report)
        if answer is not None:
            report.replays += 1
            answers.append((child, answer))
    # A control (this process's own seed, checked by hashing PROBE) tells for sure:
    # if it diverges too, the cause is not hash order.
    own_hash = hash(PROBE)
    controls = [a for c, a in answers if c.control and a.get("probe") == own_hash]
    seeded = [(c, a) for c, a in answers if not (c.control and a.get("probe") == own_hash)]
    diverged = [(c, a) for c, a in seeded if a["status"] == "diverged"]
    if controls and controls[0]["status"] == "diverged":
        what = "a fresh process with this process's own PYTHONHASHSEED"
        control = controls[0]
        report.findings.append(
            FuzzFinding(what, CAUSE_PROCESS, control["diff"], control["message"], HINT_REPLAY)
        )
        return
    if not diverged:
        return
    if controls:
        cause = CAUSE_HASH
    else:
        # The processes differ from each other only in their hash seed: if they
        # disagree, hash order is the cause; if all diverge alike, it may be anything
        # a fresh process does not share with this one.
        signatures = {a.get("signature", "ok") for _, a in seeded}
        cause = CAUSE_HASH if len(signatures) > 1 else CAUSE_PROCESS
    child, answer = diverged[0]
    what = f"PYTHONHASHSEED={child.seed} (a fresh process)"
    hint = HINT_HASH if cause == CAUSE_HASH else f"{HINT_HASH}; {HINT_REPLAY}"
    report.findings.append(FuzzFinding(what, cause, answer["diff"], answer["message"], hint))


def _answer(child: _Child, report: FuzzReport) -> dict[str, Any] | None:
    """The child's answer, or None (with a note in the report) if it has none."""
    name = f"PYTHONHASHSEED={child.seed}"
    try:
        out, err = child.proc.communicate(timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        child.proc.kill()
        child.proc.communicate()
        report.skipped.append(f"{name}: the replay took over {CHILD_TIMEOUT:g} s")
        return None
    answer = _last_json(out)
    if child.proc.returncode != 0 or answer is None:
        tail = " ".join(err.strip().splitlines()[-1:]) or f"exit code {child.proc.returncode}"
        report.skipped.append(f"{name}: the replay process failed: {tail}")
        return None
    if answer["status"] == "unavailable":
        report.skipped.append(f"{name}: {answer['message']}")
        return None
    return answer


def _last_json(out: str) -> dict[str, Any] | None:
    for line in reversed(out.strip().splitlines()):
        with contextlib.suppress(ValueError):
            data = json.loads(line)
            if isinstance(data, dict) and "status" in data:
                return data
    return None


def _replay_in_child() -> None:
    """Entry point of a replay in a fresh process: prints one line of JSON."""
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    print(json.dumps(_child_answer(spec)))


def _child_answer(spec: dict[str, Any]) -> dict[str, Any]:
    try:
        workflow = lookup(spec["workflow"], spec["ref"], {})
    except WorkflowNotFound as exc:
        return {"status": "unavailable", "message": str(exc)}
    with Engine(spec["db"]) as engine:
        history = engine.history(spec["run_id"])
        row = engine.store.get_run(spec["run_id"])
        assert row is not None
        arguments = _arguments(engine.serde, row.args)
    rec = _Recording(workflow, arguments, history, spec["end"], spec["db"])
    div = _replay(rec, World.from_json(spec["world"]))
    if div is None:
        return {"status": "ok", "probe": hash(PROBE)}
    return {
        "status": "diverged",
        "probe": hash(PROBE),
        "message": div.message,
        "diff": div.diff,
        "signature": div.signature,
    }
