"""What a workflow may yield: the Request base, step calls and the requests answered at once
(now, random, uuid, patched, publish).

Timers and signals are in core/timers.py, gather and race in core/gather.py, child runs
and continue_as_new in core/children.py, a step's options in core/options.py.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable, Generator
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from .binding import Binder
from .canonical import MAX_KEY, MAX_TEXT, SCALARS, canonical_call, display_call, key_of
from .ids import refuse_nul
from .options import StepOptions

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class StepLike(Protocol[R_co]):
    """What a step call needs of its step (ce.Step is one): taken as a Protocol so that
    requests need not import the module that defines @step."""

    @property
    def name(self) -> str: ...
    @property
    def fn(self) -> Callable[..., R_co]: ...
    @property
    def options_(self) -> StepOptions: ...
    def binder(self) -> Binder: ...


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

    def same_key(self, logged_key: str | None) -> bool:
        """Whether the arguments logged as logged_key are this request's: the keys are
        equal, or either cannot be compared (None), or the logged one is this request
        written another way (accepts)."""
        if logged_key is None:
            return True
        key = self.key
        return key is None or key == logged_key or self.accepts(logged_key)

    def describe(self) -> str:
        """One line such as `step charge('o-1', 500)` for logs and diffs."""
        return f"{self.kind} {self.name}({self.text})"


class StepCall(Request, Generic[R]):
    """A request to run a step once with these arguments; made by calling a @step."""

    __slots__ = ("step", "args", "kwargs", "options", "_canon", "_bound")
    kind: ClassVar[str] = "step"

    def __init__(
        self,
        step: StepLike[R],
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
            args = self.args
            if not self.kwargs and len(args) == 1 and type(args[0]) in SCALARS:
                try:
                    canon = repr(args[0])  # canonical_call's answer, without the call
                except ValueError:  # an int too long for repr(): no canonical text
                    canon = None
            else:
                canon = canonical_call(args, self.kwargs)
            self._canon = canon
        return canon  # type: ignore[return-value]

    @property
    def key(self) -> str | None:
        if not self.kwargs:  # bound by position already: nothing to move
            canon = self._canonical()
            if canon is None or len(canon) <= MAX_KEY:
                return canon  # key_of's answer, without the call
            return key_of(canon)
        bound = self._bound
        if bound is False:
            args, kwargs = self.step.binder().bind(self.args, self.kwargs)
            bound = self._bound = key_of(canonical_call(args, kwargs))
        return bound  # type: ignore[return-value]

    def same_key(self, logged_key: str | None) -> bool:
        # Replay's check of every step (Request.same_key, the same answer): a logged
        # key that is the canonical text itself (any key up to MAX_KEY characters) is
        # compared with the text, without making the key; anything else takes the
        # whole way.
        if logged_key is None:
            return True
        if not self.kwargs:
            canon = self._canon
            if canon is False:
                args = self.args
                if len(args) == 1 and type(args[0]) in SCALARS:
                    try:
                        canon = repr(args[0])  # canonical_call's answer, without the call
                    except ValueError:  # an int too long for repr(): no canonical text
                        canon = None
                else:
                    canon = canonical_call(args, self.kwargs)
                self._canon = canon
            if canon == logged_key:
                return True
        key = self.key
        return key is None or key == logged_key or self.accepts(logged_key)

    def accepts(self, logged_key: str) -> bool:
        """Whether a logged key is this call written another way (a log written before
        arguments were bound to the signature keyed them as written)."""
        for args, kwargs in self.step.binder().spellings(self.args, self.kwargs):
            if key_of(canonical_call(args, kwargs)) == logged_key:
                return True
        return False

    @property
    def text(self) -> str:
        canon = self._canonical()
        if canon is not None and len(canon) <= MAX_TEXT:
            return canon  # display_call's answer, without the call
        return display_call(self.args, self.kwargs, canon)

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
        refuse_nul(change_id, "the change id")
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
        refuse_nul(key, "the published key")
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
