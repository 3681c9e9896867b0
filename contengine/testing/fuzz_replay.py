"""The recorded run that fuzz() replays, and one replay of it: what fuzz's parts share.

A replay calls the workflow function again with the run's arguments and sends it the
logged outcomes through the Driver, running nothing, inside a pinned World; it matches
when it yields the logged requests and ends as the recorded run did.
"""

from __future__ import annotations

import contextlib
import difflib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core.canonical import canonical_call
from ..core.driver import Driver, Next, Pending, Raised, Returned
from ..core.serde import Serde
from ..core.workflow import Workflow
from ..drive.log import Entry
from ..errors import ContengineError, NonDeterminismError, WorkflowFailed
from .world import World, pinned

RUN_ID = "fuzz"
UNFINISHED = "unfinished (waits at its last logged request)"
# The run's arguments, loaded afresh at each call.
Arguments = Callable[[], tuple[tuple[Any, ...], dict[str, Any]]]

CAUSE_REPLAY = (
    "the workflow diverges on a plain replay, with nothing changed: it depends on state "
    "that differs from one run to the next (a module-level variable it changes, a mutable "
    "default argument, id() or hash() of an object, a file's contents)"
)
CAUSE_CLOCK = "branch depends on the wall clock (time.time() / datetime.now())"
CAUSE_ELAPSED = (
    "branch depends on elapsed time read from a clock (time.time() - started, "
    "time.monotonic(), time.perf_counter(), datetime.now()): a replay runs the same code "
    "in no time, or days later"
)
CAUSE_RANDOM = "branch depends on the random module"
CAUSE_UUID = "branch depends on uuid.uuid4()"
CAUSE_ENV = "branch depends on os.environ"
CAUSE_HASH = (
    "branch depends on the iteration order of a set of str or bytes (or on their hash()), "
    "which changes with PYTHONHASHSEED"
)
CAUSE_PROCESS = (
    "the workflow diverges in a fresh process (another process id, working directory, "
    "hostname, time zone and memory addresses): it depends on os.getpid(), os.getcwd() or "
    "a file read by a relative path, the hostname or the platform, sys.argv, hash() or "
    "id() values, an object's default repr (its address), the iteration order of a set "
    "of objects or of str or bytes (PYTHONHASHSEED), or on state the calling process set "
    "up before fuzz()"
)
CAUSE_THREAD = (
    "the workflow diverges in another thread: it depends on the thread it runs in "
    "(threading.get_ident(), threading.current_thread().name, a threading.local, a "
    "context variable)"
)

HINT_REPLAY = (
    "keep the code between yields a function of the arguments and of what the yields "
    "return; read files and shared state in a step"
)
HINT_CLOCK = "take the time with `now = yield ce.now()` (recorded once), or pass it in"
HINT_ELAPSED = (
    "measure time with logged values (`start = yield ce.now()` ... `end = yield ce.now()`), "
    "and wait with `yield ce.sleep(...)` or a wait's timeout"
)
HINT_THREAD = "pass the value in as an argument, or get it in a step (its outcome is logged)"
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


@dataclass
class Recording:
    workflow: Workflow[Any, Any]
    arguments: Arguments  # a fresh copy each time
    history: list[Entry]
    end: str  # how the run ended, in the form end_of() gives
    db: str  # a copy of the database, for replays in other processes


def load_arguments(
    serde: Serde, data: bytes
) -> Callable[[], tuple[tuple[Any, ...], dict[str, Any]]]:
    """The run's arguments read afresh for each replay, as the engine does for each drive:
    a workflow that changes an argument in place must not change the next replay's."""

    def load() -> tuple[tuple[Any, ...], dict[str, Any]]:
        args, kwargs = serde.loads(data, "the arguments of the run")
        return tuple(args), dict(kwargs)

    return load


def value_text(value: Any) -> str:
    text = canonical_call((value,), {})
    return text if text is not None else f"<a {type(value).__qualname__}>"


def error_text(exc: BaseException) -> str:
    if isinstance(exc, WorkflowFailed):  # a stand-in for an exception that could not be stored
        return str(exc)
    return f"{type(exc).__qualname__}: {exc}"


@dataclass(frozen=True)
class Divergence:
    message: str
    diff: str
    signature: str  # where and how it diverged, to compare replays in several processes


def replay(rec: Recording, world: World) -> Divergence | None:
    """Replay the recorded log in world, running nothing; None if it matched."""
    fn = rec.workflow.fn
    args, kwargs = rec.arguments()
    gen = pinned(fn(*args, **kwargs), world, getattr(fn, "__globals__", None))
    driver = Driver(gen, rec.history, label=f"workflow {rec.workflow.name!r}")
    try:
        nxt = driver.start()
    except NonDeterminismError as exc:
        return Divergence(str(exc), diff_of(exc), f"{exc.position}: {exc.replayed}")
    except ContengineError as exc:  # an invalid yield
        return Divergence(str(exc), str(exc), str(exc))
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
        return Divergence(message, diff(recorded, replayed), f"{nxt.position}: {replayed}")
    end = end_of(nxt)
    if end == rec.end:
        return None
    message = (
        f"workflow {rec.workflow.name!r} replayed its logged requests but ended "
        f"differently: recorded {rec.end}; replayed {end}"
    )
    return Divergence(message, diff(rec.end, end), end)


def diff_of(exc: NonDeterminismError) -> str:
    """exc's diff; for a workflow that ended before its log did, saying how it ended."""
    ended = exc.__context__  # the driver raises while handling the workflow's end
    if exc.replayed is not None or exc.recorded is None or ended is None:
        return exc.diff
    if isinstance(ended, StopIteration):
        how = "returned " + value_text(ended.value)
    else:
        how = "raised " + error_text(ended)
    return diff(exc.recorded, f"(nothing: the workflow {how})")


def diff(recorded: str, replayed: str) -> str:
    lines = difflib.unified_diff([recorded], [replayed], "recorded", "replayed", lineterm="", n=0)
    return "\n".join(lines)


def end_of(nxt: Next) -> str:
    if isinstance(nxt, Returned):
        return "returned " + value_text(nxt.value)
    if isinstance(nxt, Raised):
        return "raised " + error_text(nxt.error)
    return UNFINISHED  # at the request in flight: the replay matched the log up to it


def replay_in_thread(rec: Recording, world: World) -> Divergence | None:
    """replay(), in a new thread of its own (named, with an empty context) and waited for."""
    result: list[Divergence | None] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(replay(rec, world))
        except BaseException as exc:  # handed back to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="contengine-fuzz-replay", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]
