"""What a workflow may yield: requests that the engine carries out and logs."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Never, TypeVar

from ..errors import Cancelled
from .canonical import canonical_call, display_call, key_of

if TYPE_CHECKING:
    from .workflow import Step

R = TypeVar("R")


DEFAULT_CAP = 300.0


@dataclass(frozen=True, slots=True, init=False)
class Backoff:
    """Exponential delay between attempts: initial, initial*factor, ... never above cap."""

    initial: float
    factor: float
    cap: float

    def __init__(self, initial: float = 1.0, factor: float = 2.0, cap: float | None = None) -> None:
        """cap defaults to 300 s, or to initial when that is longer (never below it)."""
        if cap is None:
            cap = max(DEFAULT_CAP, initial) if isinstance(initial, int | float) else DEFAULT_CAP
        if initial < 0 or factor < 1 or cap < 0:
            raise ValueError("Backoff needs initial >= 0, factor >= 1 and cap >= 0")
        if initial > cap:
            # Every delay is cut to the cap, so retries would silently wait less than asked.
            raise ValueError(
                f"Backoff(initial={initial!r}, cap={cap!r}): the first delay is above the cap, "
                f"so every delay would be cut to {cap!r} s; pass cap >= {initial!r} (or leave "
                f"cap out: it is then at least initial), or a smaller initial"
            )
        object.__setattr__(self, "initial", initial)
        object.__setattr__(self, "factor", factor)
        object.__setattr__(self, "cap", cap)

    def delay(self, failed_attempts: int) -> float:
        """Seconds to wait after the given number of failed attempts (1, 2, ...)."""
        exponent = max(failed_attempts - 1, 0)
        try:
            return float(min(self.initial * self.factor**exponent, self.cap))
        except OverflowError:
            return self.cap


@dataclass(frozen=True, slots=True)
class StepOptions:
    """How a step is retried and bounded; set on @step, overridden per call by .options()."""

    retries: int = 0
    backoff: Backoff = field(default_factory=Backoff)
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    timeout: float | None = None
    # A process that dies during a step is not an exception the step can see; this
    # bounds how often that may happen before the step is given up (a crash loop).
    max_crashes: int = 3
    # Executions of the step take a slot of this queue (engine.set_queue limits).
    queue: str | None = None

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, not {self.retries}")
        if self.max_crashes < 0:
            raise ValueError(f"max_crashes must be >= 0, not {self.max_crashes}")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, not {self.timeout}")
        if self.queue is not None and (not isinstance(self.queue, str) or not self.queue):
            raise ValueError(f"a queue name must be a non-empty string, not {self.queue!r}")
        for exc_type in self.retry_on:
            if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
                raise TypeError(f"retry_on must hold exception classes, not {exc_type!r}")

    def merged(self, **changes: Any) -> StepOptions:
        """A copy with the given options changed (None leaves an option as it is)."""
        return replace(self, **normalize_options(changes))


def normalize_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Accept the friendly spellings: backoff as seconds, retry_on as one class."""
    out: dict[str, Any] = {}
    for name, value in options.items():
        if value is None and name != "timeout":
            continue
        if name == "backoff" and isinstance(value, int | float):
            value = Backoff(initial=float(value))
        elif name == "retry_on" and isinstance(value, type):
            value = (value,)
        elif name == "retry_on":
            value = tuple(value)
        elif name not in StepOptions.__dataclass_fields__:
            raise TypeError(f"unknown step option {name!r}")
        out[name] = value
    return out


class Request:
    """Base of everything a workflow may yield."""

    __slots__ = ()
    kind: ClassVar[str] = "request"

    @property
    def name(self) -> str:
        """The name compared on replay (a step's name, a signal's name)."""
        return ""

    @property
    def key(self) -> str | None:
        """Arguments' comparison key; None when they cannot be compared."""
        return None

    @property
    def text(self) -> str:
        """Readable, bounded text of the arguments."""
        return ""

    def accepts(self, logged_key: str) -> bool:
        """Whether a logged key that differs from this request's key still means it."""
        return False

    def describe(self) -> str:
        """One line such as `step charge('o-1', 500)` for logs and diffs."""
        return f"{self.kind} {self.name}({self.text})"


class StepCall(Request, Generic[R]):
    """A request to run a step once with these arguments; made by calling a @step."""

    __slots__ = ("step", "args", "kwargs", "options", "_canon", "_bound")
    kind: ClassVar[str] = "step"

    def __init__(
        self,
        step: Step[Any, R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: StepOptions,
    ) -> None:
        self.step = step
        self.args = args
        self.kwargs = kwargs
        self.options = options
        self._canon: str | None | bool = False  # False: not computed yet
        self._bound: str | None | bool = False  # the key of a call with keywords, once made

    def __iter__(self) -> Generator[StepCall[R], Any, R]:
        """Lets `x = yield from charge(...)` carry the step's return type to type checkers."""
        result: R = yield self
        return result

    @property
    def name(self) -> str:
        return self.step.name

    def _canonical(self) -> str | None:
        canon = self._canon
        if canon is False:
            canon = self._canon = canonical_call(self.args, self.kwargs)
        return canon  # type: ignore[return-value]

    @property
    def key(self) -> str | None:
        if not self.kwargs:
            return key_of(self._canonical())  # bound by position already: nothing to move
        bound = self._bound
        if bound is False:
            args, kwargs = self.step.binder().bind(self.args, self.kwargs)
            bound = self._bound = key_of(canonical_call(args, kwargs))
        return bound  # type: ignore[return-value]

    def accepts(self, logged_key: str) -> bool:
        """Whether a logged key is this call written another way (a log written before
        arguments were bound to the signature keyed them as written)."""
        for args, kwargs in self.step.binder().spellings(self.args, self.kwargs):
            if key_of(canonical_call(args, kwargs)) == logged_key:
                return True
        return False

    @property
    def text(self) -> str:
        return display_call(self.args, self.kwargs, self._canonical())

    def __repr__(self) -> str:
        return f"<StepCall {self.describe()}>"


class Immediate(Request):
    """A request the engine answers at once, without running user code; its answer is logged."""

    __slots__ = ()

    @property
    def key(self) -> str | None:
        return ""  # no arguments to compare (publish, which has one, says otherwise)


class NowRequest(Immediate):
    """The current time, taken once and replayed (an aware UTC datetime)."""

    __slots__ = ()
    kind: ClassVar[str] = "now"

    def __iter__(self) -> Generator[NowRequest, Any, datetime.datetime]:
        """`t = yield from ce.now()` gives type checkers a datetime."""
        result: datetime.datetime = yield self
        return result


class RandomRequest(Immediate):
    """A float in [0, 1), drawn once and replayed."""

    __slots__ = ()
    kind: ClassVar[str] = "random"

    def __iter__(self) -> Generator[RandomRequest, Any, float]:
        """`r = yield from ce.random()` gives type checkers a float."""
        result: float = yield self
        return result


class UuidRequest(Immediate):
    """A random UUID (version 4), made once and replayed."""

    __slots__ = ()
    kind: ClassVar[str] = "uuid"

    def __iter__(self) -> Generator[UuidRequest, Any, uuid.UUID]:
        """`u = yield from ce.uuid()` gives type checkers a UUID."""
        result: uuid.UUID = yield self
        return result


class PatchedRequest(Immediate):
    """Whether this run took a code change named change_id (see ce.patched)."""

    __slots__ = ("change_id",)
    kind: ClassVar[str] = "patched"

    def __init__(self, change_id: str) -> None:
        if not isinstance(change_id, str) or not change_id:
            raise ValueError(f"a change id must be a non-empty string, not {change_id!r}")
        self.change_id = change_id

    @property
    def name(self) -> str:
        return self.change_id

    def __iter__(self) -> Generator[PatchedRequest, Any, bool]:
        """`new = yield from ce.patched("x")` gives type checkers a bool."""
        result: bool = yield self
        return result


class PublishRequest(Immediate):
    """Make value visible to outsiders under key (engine.published), as of this point."""

    __slots__ = ("pkey", "value", "_canon")
    kind: ClassVar[str] = "publish"

    def __init__(self, key: str, value: Any) -> None:
        if not isinstance(key, str) or not key:
            raise ValueError(f"a published key must be a non-empty string, not {key!r}")
        self.pkey = key
        self.value = value
        self._canon: str | None | bool = False

    @property
    def name(self) -> str:
        return self.pkey

    def _canonical(self) -> str | None:
        if self._canon is False:
            self._canon = canonical_call((self.value,), {})
        return self._canon  # type: ignore[return-value]

    @property
    def key(self) -> str | None:
        return key_of(self._canonical())

    @property
    def text(self) -> str:
        return display_call((self.value,), {}, self._canonical())

    def __iter__(self) -> Generator[PublishRequest, Any, None]:
        """`yield from ce.publish(k, v)` for symmetry with the other requests."""
        yield self


class SleepRequest(Request):
    """A durable timer: the run sleeps until a wake time recorded when it first sleeps."""

    __slots__ = ("seconds", "until")
    kind: ClassVar[str] = "sleep"

    def __init__(self, seconds: float | None, until: float | None) -> None:
        self.seconds = seconds
        self.until = until

    @property
    def key(self) -> str | None:
        if self.until is not None:
            return f"until={self.until!r}"
        return repr(self.seconds)

    @property
    def text(self) -> str:
        if self.until is not None:
            stamp = datetime.datetime.fromtimestamp(self.until, datetime.UTC)
            if stamp.timestamp() != self.until:  # finer than a microsecond: say so
                return f"until {stamp.isoformat()} ({self.until!r})"
            return f"until {stamp.isoformat()}"
        return exact_duration(self.seconds or 0.0)

    def wake_time(self, now: float) -> float:
        """The absolute time to wake at, for a sleep that starts now."""
        return self.until if self.until is not None else now + (self.seconds or 0.0)

    def __iter__(self) -> Generator[SleepRequest, Any, None]:
        """`yield from ce.sleep(...)` for symmetry with the other requests."""
        yield self


def _duration(seconds: float) -> str:
    """Readable seconds: 0.25s, 90s -> 1m30s, 2592000 -> 30d."""
    if seconds != seconds or abs(seconds) == float("inf"):
        return "forever" if seconds > 0 else f"{seconds}"
    if seconds < 60:
        return f"{seconds:g}s"
    parts, rest = [], int(round(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts)


def exact_duration(seconds: float) -> str:
    """Readable seconds that still tell two durations apart: 2h, but 2h (7200.4s)."""
    text = _duration(seconds)
    if seconds != seconds or abs(seconds) == float("inf"):
        return text
    if seconds < 60:
        return text if float(f"{seconds:g}") == seconds else f"{seconds!r}s"
    return text if seconds == int(seconds) else f"{text} ({seconds!r}s)"


def now() -> NowRequest:
    """Request the current time (an aware UTC datetime), logged once and replayed."""
    return NowRequest()


def random() -> RandomRequest:
    """Request a random float in [0, 1), logged once and replayed."""
    return RandomRequest()


def uuid4() -> UuidRequest:
    """Request a random UUID, logged once and replayed."""
    return UuidRequest()


def patched(change_id: str) -> PatchedRequest:
    """True for runs that reach it with new code; False, for the whole run, if logged before it."""
    return PatchedRequest(change_id)


def publish(key: str, value: Any) -> PublishRequest:
    """Publish value under key for outsiders to read with engine.published()."""
    return PublishRequest(key, value)


def sleep(duration: float | datetime.timedelta) -> SleepRequest:
    """Sleep durably for a number of seconds or a timedelta; a restart keeps the deadline."""
    seconds = duration.total_seconds() if isinstance(duration, datetime.timedelta) else duration
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        raise TypeError(f"ce.sleep() needs seconds or a timedelta, not {duration!r}")
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError(
            f"ce.sleep() needs a finite duration, not {duration!r}; to wait until something "
            f"happens, use ce.wait(name) and send it a signal"
        )
    return SleepRequest(float(seconds), None)


def sleep_until(when: datetime.datetime) -> SleepRequest:
    """Sleep durably until an aware datetime (naive ones are refused: whose clock?)."""
    if not isinstance(when, datetime.datetime):
        raise TypeError(f"ce.sleep_until() needs a datetime, not {when!r}")
    if when.tzinfo is None:
        raise ValueError(
            "ce.sleep_until() needs an aware datetime (e.g. with tzinfo=datetime.UTC); a "
            "naive one would mean different times on different machines"
        )
    return SleepRequest(None, when.timestamp())


class WaitRequest(Request):
    """Wait for the next signal sent to this run under a name, for at most timeout seconds."""

    __slots__ = ("signal", "timeout")
    kind: ClassVar[str] = "wait"

    def __init__(self, signal: str, timeout: float | None) -> None:
        self.signal = signal
        self.timeout = timeout

    @property
    def name(self) -> str:
        return self.signal

    @property
    def key(self) -> str | None:
        return "" if self.timeout is None else f"timeout={self.timeout!r}"

    @property
    def text(self) -> str:
        return "" if self.timeout is None else f"timeout={exact_duration(self.timeout)}"

    def __iter__(self) -> Generator[WaitRequest, Any, Any]:
        """`payload = yield from ce.wait(name)`."""
        result: Any = yield self
        return result


def wait(name: str, timeout: float | datetime.timedelta | None = None) -> WaitRequest:
    """Wait durably for a signal sent with engine.signal(run_id, name, payload).

    Returns the payload. Signals sent before the run waits are kept, oldest first;
    each is delivered once. After timeout seconds ce.Timeout is raised at the yield,
    and that is logged, so a replay takes the same branch even if the signal came later.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a signal name must be a non-empty string, not {name!r}")
    if isinstance(timeout, datetime.timedelta):
        timeout = timeout.total_seconds()
    if timeout is not None and (not isinstance(timeout, int | float) or timeout < 0):
        raise ValueError(f"a wait's timeout must be seconds >= 0 or None, not {timeout!r}")
    return WaitRequest(name, None if timeout is None else float(timeout))


class GatherRequest(Request):
    """Several requests carried out concurrently; their results come back in argument order."""

    __slots__ = ("members", "return_exceptions")
    kind: ClassVar[str] = "gather"

    def __init__(self, members: tuple[Request, ...], return_exceptions: bool) -> None:
        for m in members:
            if not isinstance(m, StepCall | SleepRequest | WaitRequest | Immediate) or isinstance(
                m, PatchedRequest
            ):
                raise TypeError(  # self.kind: a race is refused under its own name
                    f"ce.{self.kind}() takes step calls, sleeps, waits, now/random/uuid and "
                    f"publish requests, not {m!r}"
                )
        self.members = members
        self.return_exceptions = return_exceptions

    @property
    def width(self) -> int:
        """Log positions the gather takes: its own entry, then one per member in argument
        order (none at all when it is empty)."""
        return len(self.members) + 1 if self.members else 0

    @property
    def key(self) -> str | None:
        # The gather's own entry records how many members it has, so a replay notices
        # members added or removed even while the gather is still in flight.
        return str(len(self.members))

    @property
    def text(self) -> str:
        return f"{len(self.members)} members"

    def describe(self) -> str:
        return "gather(" + ", ".join(m.describe() for m in self.members) + ")"

    def combine(self, outcomes: Sequence[Any]) -> Any:
        """The gather's own outcome from its members' (all present), the same live and on replay.

        Cancellation wins over everything; otherwise the first failure in argument
        order is raised (after all members finished), unless return_exceptions.
        """
        from .driver import Outcome  # the driver module imports this one

        for o in outcomes:
            if not o.ok and isinstance(o.value, Cancelled):
                return o
        if not self.return_exceptions:
            for o in outcomes:
                if not o.ok:
                    return o
        return Outcome(True, [o.value for o in outcomes])

    def __iter__(self) -> Generator[GatherRequest, Any, list[Any]]:
        """`results = yield from ce.gather(...)` gives type checkers a list."""
        result: list[Any] = yield self
        return result


def gather(*requests: Request, return_exceptions: bool = False) -> GatherRequest:
    """Carry out requests concurrently; results (or exceptions) come back in argument order.

    Each member takes a log position when the gather is yielded, in argument order,
    whatever order they finish in, so a replay is the same however they interleaved.
    When members fail, the gather waits for all of them and then raises the first
    failure in argument order (as durabletask does); with return_exceptions=True the
    exceptions are returned in place of results (as asyncio.gather does).
    """
    return GatherRequest(tuple(requests), return_exceptions)


class ChildRequest(Request, Generic[R]):
    """Run a workflow as a child of this run (made by calling a @workflow inside a workflow)."""

    __slots__ = ("workflow", "args", "kwargs", "detached", "_canon")

    def __init__(
        self, workflow: Any, args: tuple[Any, ...], kwargs: dict[str, Any], detached: bool
    ) -> None:
        self.workflow = workflow
        self.args = args
        self.kwargs = kwargs
        self.detached = detached  # ce.start_child: a handle now, the result when it is yielded
        self._canon: str | None | bool = False

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "start_child" if self.detached else "child"

    @property
    def name(self) -> str:
        return str(self.workflow.name)

    def _canonical(self) -> str | None:
        if self._canon is False:
            self._canon = canonical_call(self.args, self.kwargs)
        return self._canon  # type: ignore[return-value]

    @property
    def key(self) -> str | None:
        return key_of(self._canonical())

    @property
    def text(self) -> str:
        return display_call(self.args, self.kwargs, self._canonical())

    def __iter__(self) -> Generator[ChildRequest[R], Any, R]:
        """`result = yield from child(...)` gives type checkers the child's return type."""
        result: R = yield self
        return result


class ChildHandle(Request):
    """A child run started with ce.start_child; yield it to wait for its result."""

    __slots__ = ("run_id",)
    kind: ClassVar[str] = "join"

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    @property
    def name(self) -> str:
        return self.run_id

    @property
    def key(self) -> str | None:
        return ""

    def __reduce__(self) -> tuple[Any, ...]:
        return (ChildHandle, (self.run_id,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChildHandle) and other.run_id == self.run_id

    def __hash__(self) -> int:
        return hash(self.run_id)

    def __repr__(self) -> str:
        return f"<child run {self.run_id!r}>"

    def __iter__(self) -> Generator[ChildHandle, Any, Any]:
        """`result = yield from handle`."""
        result: Any = yield self
        return result


def start_child(workflow: Any, /, *args: Any, **kwargs: Any) -> ChildRequest[Any]:
    """Start a child run without waiting: the yield returns a handle; yield it for the result."""
    if not hasattr(workflow, "fn") or not hasattr(workflow, "ref"):
        raise TypeError(f"ce.start_child() needs a @ce.workflow, not {workflow!r}")
    return ChildRequest(workflow, args, kwargs, detached=True)


class ContinueAsNew:
    """Returned by a workflow: end this log and start again, same run id, new arguments."""

    __slots__ = ("args", "kwargs")

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.args = args
        self.kwargs = kwargs

    def __repr__(self) -> str:
        return f"<continue_as_new {display_call(self.args, self.kwargs, None)}>"


def continue_as_new(*args: Any, **kwargs: Any) -> Never:
    """`return ce.continue_as_new(...)`: the run goes on as a fresh log under the same id.

    A loop that never ends (a monitor, an agent) keeps a bounded log this way: the
    current log is dropped and the workflow starts again with these arguments.
    The run's mailbox and published values carry over.
    """
    # Typed Never so that `return ce.continue_as_new(...)` fits any workflow's return type.
    return ContinueAsNew(args, kwargs)  # type: ignore[misc]


class RaceRequest(GatherRequest):
    """Several requests at once; the first to finish wins, the rest are cancelled or ignored."""

    __slots__ = ()
    kind: ClassVar[str] = "race"

    def __init__(self, members: tuple[Request, ...]) -> None:
        if not members:
            raise ValueError("ce.race() needs at least one request")
        super().__init__(members, return_exceptions=False)

    def describe(self) -> str:
        return "race(" + ", ".join(m.describe() for m in self.members) + ")"

    def __iter__(self) -> Generator[RaceRequest, Any, tuple[int, Any]]:  # type: ignore[override]
        """`index, value = yield from ce.race(...)`."""
        result: tuple[int, Any] = yield self
        return result


def race(*requests: Request) -> RaceRequest:
    """Carry out requests at once; the first to finish wins: returns (index, value).

    If the winner failed, its exception is raised. Losers are cancelled where they
    can be (a timer, a wait); a losing step already running is left to finish, its
    outcome logged but unused. Which member won is logged, so a replay agrees.
    """
    return RaceRequest(tuple(requests))
