"""The replay state machine: the only place that decides what a workflow is fed.

A driver holds one workflow generator and the run's log. It pushes recorded
outcomes into the generator, checking each yielded request against the one that
was logged at that position, until it reaches a request with no recorded outcome;
then it hands that request to its caller, who carries it out and sends the
outcome back. It does no I/O, keeps no time and starts no threads, so it can be
tested on its own in microseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import Cancelled, InvalidYield, NonDeterminismError
from .gather import GatherRequest
from .outcome import Outcome
from .requests import Request, StepCall
from .run_context import CURRENT_RUN, RunInfo


class Recorded(Protocol):
    """One entry of a run's log as the driver sees it (read-only)."""

    @property
    def position(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def key(self) -> str | None: ...
    @property
    def text(self) -> str: ...


def _own_outcome(rec: Any) -> Outcome | None:
    # Entries that decode themselves (ce.Entry, test doubles) have an outcome() method.
    return rec.outcome()  # type: ignore[no-any-return]


@dataclass(slots=True)  # not frozen: frozen instances cost several times more to make
class Pending:
    """The workflow waits at `position` for the outcome of `request`."""

    position: int
    request: Request
    # The logged entry for this position if the request was logged before (it is
    # in flight, or was when the process died); None if it is new.
    recorded: Recorded | None
    # For a gather: the logged entry (or None) of each member, in argument order.
    members: list[Recorded | None] | None = None


@dataclass(slots=True)  # not frozen: frozen instances cost several times more to make
class Returned:
    """The workflow returned value."""

    value: Any


@dataclass(slots=True)  # not frozen: frozen instances cost several times more to make
class Raised:
    """The workflow raised error; failed_at is the position of the earliest failed
    request whose exception error is or comes from (None: its own code's)."""

    error: BaseException
    failed_at: int | None = None


Next = Pending | Returned | Raised


def describe_recorded(rec: Recorded) -> str:
    """One line for a logged request, in the same form as Request.describe()."""
    return f"{rec.kind} {rec.name}({rec.text})"


PATCHED = "patched"
# Failures thrown into the workflow that are kept to tell which one its exception came
# from (a saga re-raises one after compensating): the most recent ones, so that a run
# that catches failures in a loop holds a bounded number of them.
KEEP_THROWN = 256


class Driver:
    """Feeds one workflow generator its logged outcomes, then runs it live."""

    __slots__ = (
        "_gen", "_history", "_logged", "_label", "_decode", "_width", "_thrown", "_unpatched",
        "position", "replayed", "info",
    )  # fmt: skip

    def __init__(
        self,
        gen: Generator[Any, Any, Any],
        history: Sequence[Recorded],
        label: str = "workflow",
        decode: Callable[[Any], Outcome | None] = _own_outcome,
    ) -> None:
        """decode(entry) gives an entry's outcome afresh, or None while it is in flight."""
        self._gen = gen
        self._history = history
        self._logged = len(history)  # the log does not grow while this driver reads it
        self._label = label
        self._decode = decode
        self.position = 0
        self.replayed = 0  # outcomes fed from the log, for reporting
        self._width = 1  # log positions the pending request takes (a gather takes several)
        # Exceptions thrown in at the yields of failed requests, by id, with the position.
        self._thrown: dict[int, tuple[BaseException, int]] = {}
        # Changes this run was told False about: it was logged before them, and keeps
        # their old path at every later ce.patched() too, live or replayed.
        self._unpatched: set[str] = set()
        # What ce.current_run() answers while this driver runs the workflow's code (the
        # caller sets it; None: the code runs outside any run, as in a bare test).
        self.info: RunInfo | None = None

    def where(self) -> tuple[int, bool]:
        """(the position of the next request, whether the code running now ran before):
        code is replaying while the request it will yield next is in the log."""
        return self.position, self.position < self._logged

    def start(self) -> Next:
        """Run the workflow up to its first request without an outcome (or its end)."""
        return self._advance(None)

    def send(self, outcome: Outcome) -> Next:
        """Feed the outcome of the pending request and run to the next one."""
        at = self.position
        self.position += self._width
        self._width = 1
        return self._advance(outcome, at)

    def _advance(self, outcome: Outcome | None, at: int = 0) -> Next:
        """Run the generator on from `outcome` (of the request at position `at`), with
        its run marked as current (ce.current_run(), ce.logger) while its code runs."""
        if self.info is None:
            return self._run_on(outcome, at)
        token = CURRENT_RUN.set(self.info)
        try:
            return self._run_on(outcome, at)
        finally:
            CURRENT_RUN.reset(token)

    def _run_on(self, outcome: Outcome | None, at: int) -> Next:
        gen, history, logged, decode = self._gen, self._history, self._logged, self._decode
        while True:
            try:
                if outcome is None:
                    yielded = gen.send(None)
                elif outcome.ok:
                    yielded = gen.send(outcome.value)
                else:
                    self._keep_thrown(outcome.value, at)
                    yielded = gen.throw(outcome.value)
            except StopIteration as stop:
                self._check_log_ends("returned")
                return Returned(stop.value)
            except (Exception, Cancelled) as exc:
                self._check_log_ends(f"raised {type(exc).__name__}")
                return Raised(exc, self._failed_at(exc))
            pos = self.position
            rec: Recorded | None
            if type(yielded) is StepCall and pos < logged:
                # Replaying a step call (most of any replay): the general path below,
                # with what cannot apply to a step call left out.
                rec = history[pos]
                if (
                    rec.kind == "step"
                    and rec.name == yielded.step.name
                    and yielded.same_key(rec.key)
                ):
                    outcome, at = decode(rec), pos
                    if outcome is None:
                        if pos + 1 >= logged:
                            self._release()  # in flight at the log's end: read no more
                        return Pending(pos, yielded, rec)
                    self.replayed += 1
                    self.position = pos + 1
                    continue
            if not isinstance(yielded, Request):
                raise InvalidYield(self._invalid_yield_message(yielded))
            rec = None
            if pos < logged:
                rec = history[pos]  # read once: the log is a stream (drive/log.py)
                if yielded.kind == PATCHED or rec.kind == PATCHED:
                    # Versioning markers. A marker the code does not ask about here
                    # belongs to a retired patch and is skipped; a patch the log holds
                    # no marker for was added after this part of the run was logged,
                    # so the run is told False and keeps its old path (nothing is
                    # consumed).
                    marker = yielded.name if yielded.kind == PATCHED else None
                    j = pos
                    while j < logged and history[j].kind == PATCHED and history[j].name != marker:
                        j += 1
                    found = j < logged and history[j].kind == PATCHED
                    if marker is not None and not found:
                        self._unpatched.add(marker)
                        outcome, at = Outcome(True, False), pos
                        continue
                    pos = self.position = j
                    rec = history[pos] if pos < logged else None
            elif yielded.kind == PATCHED and yielded.name in self._unpatched:
                # Past the log, a change the run was told False about earlier stays
                # False (logging nothing): half of each path is neither version's code.
                # A replay answers the same, since the first False came from the log,
                # which only grows.
                outcome, at = Outcome(True, False), pos
                continue
            if rec is None and history:
                # Past the log, which is not read again: let it go (a run kept alive
                # at a sleep must not hold its whole log).
                self._release()
                history = self._history
            if isinstance(yielded, GatherRequest):
                gathered = self._gather(pos, yielded)
                if isinstance(gathered, Pending):
                    return gathered
                outcome, at = gathered, pos
                continue
            if rec is None:
                return Pending(pos, yielded, None)
            self._check_same(rec, yielded)
            outcome, at = decode(rec), pos
            if outcome is None:
                if pos + 1 >= logged:
                    self._release()  # in flight at the log's end: read no more
                return Pending(pos, yielded, rec)
            self.replayed += 1
            self.position = pos + 1

    def held(self) -> list[Any]:
        """What this driver keeps of its run beyond its fixed parts (for the live
        cache's count): failures thrown in, and the log while it is not past it."""
        held: list[Any] = [error for error, _ in self._thrown.values()]
        held.append(self._unpatched)
        history = self._history
        if history:
            window = getattr(history, "window", None)  # a streamed log: what it holds
            held.append(window() if window is not None else history)
        return held

    def _release(self) -> None:
        """The driver went past the end of the log: drop it (and what it holds)."""
        release = getattr(self._history, "release", None)
        if release is not None:
            release()
        self._history = ()

    def _keep_thrown(self, error: BaseException, at: int) -> None:
        thrown = self._thrown
        thrown[id(error)] = (error, at)
        if len(thrown) > KEEP_THROWN:
            del thrown[next(iter(thrown))]  # the oldest (dicts keep insertion order)

    def _failed_at(self, error: BaseException) -> int | None:
        """The earliest position whose thrown failure is error, or is in its chain of
        causes and contexts (raise ... from it, or raised while handling it)."""
        found: int | None = None
        seen: set[int] = set()
        todo: list[BaseException] = [error]
        while todo:
            exc = todo.pop()
            if id(exc) in seen:
                continue
            seen.add(id(exc))
            kept = self._thrown.get(id(exc))
            if kept is not None and kept[0] is exc and (found is None or kept[1] < found):
                found = kept[1]
            todo.extend(e for e in (exc.__cause__, exc.__context__) if e is not None)
        return found

    def _gather(self, pos: int, request: GatherRequest) -> Pending | Outcome:  # also races
        """Check a gather (its own entry, then its members) against the log; replay it if
        every member is done."""
        if not request.members:
            return Outcome(True, [])  # an empty gather takes no position
        history, logged = self._history, self._logged
        header: Recorded | None = None
        if pos < logged:
            header = history[pos]
            self._check_same(header, request)
        recorded: list[Recorded | None] = []
        outcomes: list[Outcome | None] = []
        for i, member in enumerate(request.members):
            at = pos + 1 + i
            if at < logged:
                rec = history[at]
                self.position = at  # so a mismatch names the member's position
                self._check_same(rec, member)
                recorded.append(rec)
                outcomes.append(self._decode(rec))
            else:
                recorded.append(None)
                outcomes.append(None)
        self.position = pos
        width = request.width
        if request.kind == "race":
            # A race's own entry holds the winner (index and value, or its exception).
            decided = self._decode(header) if header is not None else None
            if decided is not None:
                self.position = pos + width
                self.replayed += width
                return decided
        elif all(o is not None for o in outcomes):
            self.position = pos + width
            self.replayed += width
            return request.combine(outcomes)  # type: ignore[no-any-return]
        self._width = width
        return Pending(pos, request, header, recorded)

    def _check_same(self, rec: Recorded, req: Request) -> None:
        if rec.kind != req.kind or rec.name != req.name:
            what = "it yielded a different request"
        else:
            if req.same_key(rec.key):
                return
            what = "it yielded the same request with different arguments"
        recorded, replayed = describe_recorded(rec), req.describe()
        if recorded == replayed:
            # Readable texts may round (a log written before durations were shown
            # exactly says `2h` for 7200.4 s); the keys are what differed, so show them.
            recorded, replayed = f"{recorded} [key {rec.key}]", f"{replayed} [key {req.key}]"
        self._diverged(what, recorded, replayed)

    def _check_log_ends(self, ended: str) -> None:
        # A deterministic workflow reaches every logged position again; ending
        # before the log does means its code took another path this time.
        while self.position < self._logged and self._history[self.position].kind == PATCHED:
            self.position += 1  # a retired patch's marker asks nothing of the code
        if self.position < self._logged:
            rec = self._history[self.position]
            self._diverged(
                f"the workflow {ended} before reaching it", describe_recorded(rec), None, ended
            )

    def _diverged(
        self, what: str, recorded: str, replayed: str | None, ended: str = "returned"
    ) -> None:
        pos = self.position
        lines = [
            f"{self._label} diverged from its log at position {pos}: {what}.",
            f"  recorded: {recorded}",
            f"  replayed: {replayed if replayed is not None else '(nothing)'}",
            "Workflow code between yields must be deterministic. Nothing was run and the "
            "log is unchanged; restore the code path the run was recorded with (keep the "
            "old path for runs already in flight) and it resumes where it stopped.",
        ]
        raise NonDeterminismError(
            "\n".join(lines), position=pos, recorded=recorded, replayed=replayed, ended=ended
        )

    def _invalid_yield_message(self, yielded: Any) -> str:
        text = repr(yielded)
        if len(text) > 80:
            text = text[:77] + "..."
        hint = "yield a request such as a step call (`x = yield charge(...)`)"
        if isinstance(yielded, Generator):
            hint = (
                "it looks like a generator: use `yield from` to inline a sub-generator, "
                "or decorate the function with @ce.workflow"
            )
        elif callable(yielded):
            hint = "it is a callable: call the step (`yield charge(...)`), don't yield the step"
        else:
            hint += "; a plain value usually means the function was not decorated with @ce.step"
        return (
            f"{self._label} yielded {text} ({type(yielded).__name__}) at position "
            f"{self.position}, which is not a request: {hint}. The log is unchanged."
        )
