"""@workflow and @step: turning plain functions into durable workflows and steps."""

from __future__ import annotations

import contextvars
import importlib
import inspect
import types
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, overload

from ..errors import ContengineError, WorkflowDefinitionError, WorkflowNotFound
from .binding import Binder, signature_of
from .children import ChildRequest
from .ids import idempotency_key, refuse_nul
from .options import Backoff, StepOptions, normalize_options
from .requests import StepCall

P = ParamSpec("P")
R = TypeVar("R")


class Step(Generic[P, R]):
    """A function whose calls inside a workflow become logged, retried requests."""

    __slots__ = ("fn", "name", "options_", "__wrapped__", "__dict__", "_binder", "_method_binder")

    def __init__(self, fn: Callable[P, R], name: str, options: StepOptions) -> None:
        self.fn = fn
        self.name = name
        self.options_ = options
        self.__wrapped__ = fn
        self.__doc__ = fn.__doc__
        # Made on first use and kept: a call's key binds its arguments to the signature.
        self._binder: Binder | None = None
        self._method_binder: Binder | None = None

    def binder(self) -> Binder:
        """Binds calls to the step's signature (read once)."""
        binder = self._binder
        if binder is None:
            binder = self._binder = Binder(signature_of(self.fn))
        return binder

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> StepCall[R]:
        """Make a request to run this step; nothing runs until a workflow yields it."""
        return StepCall(self, args, kwargs, self.options_)

    def __get__(self, obj: object, objtype: type | None = None) -> Any:
        """A step defined in a class: bound to the instance, under the same name."""
        if obj is None:
            return self
        bound = Step(types.MethodType(self.fn, obj), self.name, self.options_)
        if self._method_binder is None:  # the function's signature without self, read once
            sig = self.binder().sig
            params = list(sig.parameters.values())[1:] if sig is not None else None
            self._method_binder = Binder(None if sig is None else sig.replace(parameters=params))
        bound._binder = self._method_binder
        return bound

    def options(
        self,
        *,
        retries: int | None = None,
        backoff: float | Backoff | None = None,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
        timeout: float | None = None,
        max_crashes: int | None = None,
    ) -> Step[P, R]:
        """This step with some options changed, for values known only at the call site."""
        changes: dict[str, Any] = {
            "retries": retries,
            "backoff": backoff,
            "retry_on": retry_on,
            "max_crashes": max_crashes,
        }
        if timeout is not None:
            changes["timeout"] = timeout
        changed = Step(self.fn, self.name, self.options_.merged(**changes))
        changed._binder = self._binder
        return changed

    def __repr__(self) -> str:
        return f"<step {self.name}>"


class Workflow(Generic[P, R]):
    """A generator function registered as a durable workflow."""

    def __init__(self, fn: Callable[P, Generator[Any, Any, R]], name: str) -> None:
        self.fn = fn
        self.name = name
        self.ref = f"{fn.__module__}:{fn.__qualname__}"
        self.__wrapped__ = fn
        self.__doc__ = fn.__doc__

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> ChildRequest[R]:
        """Inside a workflow: a request to run this workflow as a child run and wait for it.

        Outside one, start runs with engine.start()/engine.run(); workflow.fn(...)
        gives the bare generator.
        """
        return ChildRequest(self, args, kwargs, detached=False)

    def __repr__(self) -> str:
        return f"<workflow {self.name}>"


_registry: dict[str, Workflow[Any, Any]] = {}


def register(wf: Workflow[Any, Any]) -> None:
    """Make a workflow findable by name; a name may not be taken by another function."""
    # No lock (the core holds none): setdefault is one atomic dict operation, so of two
    # functions registered under one name at once, one is stored and the other finds it.
    # A name once taken only ever holds definitions of the same module:qualname.
    existing = _registry.setdefault(wf.name, wf)
    if existing is wf:
        return
    # The same module:qualname registering again is a re-import or a test
    # redefining a local function: the newest definition wins.
    if existing.ref != wf.ref:
        raise WorkflowDefinitionError(
            f"workflow name {wf.name!r} is already used by {existing.ref}; "
            f"give {wf.ref} another name with @ce.workflow(name=...)"
        )
    _registry[wf.name] = wf


def lookup(name: str, ref: str | None, extra: dict[str, Workflow[Any, Any]]) -> Workflow[Any, Any]:
    """Find a run's workflow: given to the engine, registered by name, then by import."""
    wf = extra.get(name) or _registry.get(name)
    if wf is not None:
        return wf
    problem = "it is not registered in this process"
    if ref:
        module_name, _, qualname = ref.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except Exception as exc:  # any import failure means "not here"; say which
            problem += f" and importing {ref} failed ({type(exc).__name__}: {exc})"
        else:
            if isinstance(obj, Workflow):
                return obj
            problem += f" and {ref} is not a @workflow"
        wf = _registry.get(name)  # importing may have registered it under its name
        if wf is not None:
            return wf
    raise WorkflowNotFound(
        f"workflow {name!r} ({ref or 'no import path'}) cannot be found: {problem}. "
        f"Import the module that defines it, or pass it to ce.Engine(..., workflows=[...])."
    )


def _check_generator(fn: Callable[..., Any], what: str) -> None:
    if not callable(fn):
        raise WorkflowDefinitionError(f"@ce.{what} needs a function, not {fn!r}")
    label = getattr(fn, "__qualname__", repr(fn))
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        raise WorkflowDefinitionError(
            f"{label} is an async function; a workflow is a plain generator function "
            f"(`def`, with `x = yield step(...)`)"
        )
    if not inspect.isgeneratorfunction(fn):
        raise WorkflowDefinitionError(
            f"{label} is a plain function, not a generator function, so it cannot be a "
            f"workflow: a workflow hands each step to the engine with `yield` "
            f"(x = yield charge(...)) so that it can be logged and replayed. Add the "
            f"yields, or decorate it with @ce.step if it should simply run once."
        )


@overload
def workflow(fn: Callable[P, Generator[Any, Any, R]], /) -> Workflow[P, R]: ...
@overload
def workflow(
    *, name: str | None = None
) -> Callable[[Callable[P, Generator[Any, Any, R]]], Workflow[P, R]]: ...
def workflow(fn: Any = None, /, *, name: str | None = None) -> Any:
    """Declare a generator function as a durable workflow (bare or with name=...)."""

    def decorate(f: Callable[P, Generator[Any, Any, R]]) -> Workflow[P, R]:
        _check_generator(f, "workflow")
        if name is not None:
            refuse_nul(name, "the workflow name")
        wf: Workflow[P, R] = Workflow(f, name or f"{f.__module__}.{f.__qualname__}")
        register(wf)
        return wf

    return decorate(fn) if fn is not None else decorate


@overload
def step(fn: Callable[P, R], /) -> Step[P, R]: ...
@overload
def step(
    *,
    name: str | None = None,
    retries: int = 0,
    backoff: float | Backoff = 1.0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
    timeout: float | None = None,
    max_crashes: int = 3,
    queue: str | None = None,
) -> Callable[[Callable[P, R]], Step[P, R]]: ...
def step(fn: Any = None, /, *, name: str | None = None, **options: Any) -> Any:
    """Declare a function as a step: logged once, retried per its options, never re-run."""
    opts = StepOptions(**normalize_options(options))

    def decorate(f: Callable[P, R]) -> Step[P, R]:
        if not callable(f):
            raise WorkflowDefinitionError(f"@ce.step needs a function, not {f!r}")
        label = getattr(f, "__qualname__", repr(f))
        if inspect.isgeneratorfunction(f):
            raise WorkflowDefinitionError(
                f"{label} is a generator function; a step runs to completion and returns "
                f"a value. If it yields steps of its own, it is a workflow: use @ce.workflow."
            )
        if inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f):
            raise WorkflowDefinitionError(
                f"{label} is an async function; steps are plain functions (wrap it with "
                f"asyncio.run inside a plain function to use it as a step)"
            )
        if name is not None:
            refuse_nul(name, "the step name")
        made: Step[P, R] = Step(f, name or label, opts)
        register_step(made)
        return made

    return decorate(fn) if fn is not None else decorate


# Step name -> (module:qualname, (source file, qualname)) of the function that has it.
_step_names: dict[str, tuple[str, tuple[str, str] | None]] = {}


def register_step(made: Step[Any, Any]) -> None:
    """Reserve a step's name for its function: the log, replay's check and check(steps=...)
    know a step by its name alone, so two functions may not share one."""
    fn = made.fn
    qualname = getattr(fn, "__qualname__", repr(fn))
    ref = f"{getattr(fn, '__module__', None)}:{qualname}"
    code = getattr(fn, "__code__", None)
    # The same function may be defined again: a module reloaded, a file imported under
    # two names (a script run as __main__ and imported by its workers), a step made in
    # a loop. Its file and qualname say it is the same one.
    where = (code.co_filename, qualname) if code is not None else None
    mine = (ref, where)
    # setdefault, one atomic dict operation, stands in for a lock (the core holds none):
    # of two functions decorated under one new name at once, one is stored first and
    # the other is checked against it.
    existing = _step_names.setdefault(made.name, mine)
    if existing is mine:
        return
    if existing[0] != ref and (where is None or existing[1] != where):
        raise WorkflowDefinitionError(
            f"step name {made.name!r} is already used by {existing[0]}; give {ref} a "
            f"name of its own with @ce.step(name=...) (the log, replay and "
            f"ce.testing.check(steps=...) know a step by its name alone, so two "
            f"functions may not share one)"
        )
    _step_names[made.name] = mine


class CancelCheck(Protocol):
    """What a step's context asks of the drive's cancel watch: is this run cancelled?"""

    def cancelled(self, run_id: str) -> bool:
        """True once run_id is known to be cancelled."""
        ...


@dataclass(frozen=True, slots=True)
class StepContext:
    """What a running step may know about itself; see current_step()."""

    run_id: str
    workflow: str
    step: str
    position: int
    attempt: int
    idempotency_key: str
    _watch: CancelCheck | None = field(default=None, repr=False, compare=False)

    @property
    def cancelled(self) -> bool:
        """True once the step's run is cancelled (at once from this process, within a
        poll interval from another): a long step may check it and return early."""
        return self._watch is not None and self._watch.cancelled(self.run_id)


# A plain tuple, because it is set on every step and read rarely. A context variable, not
# a thread-local: a timeout's helper thread runs the step in a copy of the context.
RUNNING_STEP: contextvars.ContextVar[tuple[str, str, str, int, int, int, CancelCheck] | None] = (
    contextvars.ContextVar("contengine_step", default=None)
)
"""(run_id, workflow, step, position, attempt, generation, cancel watch) of the step this
thread runs, read by current_step(); the drive sets it around each attempt and resets it."""


def current_step() -> StepContext:
    """The run id, position, attempt and idempotency key of the step now running."""
    ctx = RUNNING_STEP.get()
    if ctx is None:
        raise ContengineError("ce.current_step() is only available while a step is running")
    run_id, wf, name, position, attempt, generation, watch = ctx
    return StepContext(
        run_id, wf, name, position, attempt, idempotency_key(run_id, generation, position), watch
    )
