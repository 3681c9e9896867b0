"""Requests carried out concurrently: gather (all of them) and race (the first to finish)."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any, ClassVar

from ..errors import Cancelled
from .children import ChildRequest
from .messages import SendRequest
from .outcome import Outcome
from .requests import Immediate, PatchedRequest, Request, StepCall
from .timers import SleepRequest, WaitRequest


class GatherRequest(Request):
    """Several requests carried out concurrently; their results come back in argument order."""

    __slots__ = ("members", "return_exceptions")
    kind: ClassVar[str] = "gather"

    def __init__(self, members: tuple[Request, ...], return_exceptions: bool) -> None:
        for m in members:
            if (
                not isinstance(m, StepCall | SleepRequest | WaitRequest | Immediate | ChildRequest)
                or isinstance(m, PatchedRequest | SendRequest)
                or (isinstance(m, ChildRequest) and m.detached)
            ):
                raise TypeError(  # self.kind: a race is refused under its own name
                    f"ce.{self.kind}() takes step calls, child runs, sleeps, waits, "
                    f"now/random/uuid and publish requests, not {m!r}"
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
