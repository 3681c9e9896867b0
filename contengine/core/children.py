"""Child runs and new generations: a child request, its handle, start_child, continue_as_new."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, ClassVar, Generic, Never, TypeVar

from .canonical import canonical_call, display_call, key_of
from .requests import Request

R = TypeVar("R")


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
