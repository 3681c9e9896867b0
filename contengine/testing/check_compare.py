"""How ce.testing.check compares a run with the reference, and words what differs."""

from __future__ import annotations

import difflib
import reprlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ..core.canonical import canonical_call
from ..core.serde import Serde
from ..core.workflow import Workflow
from ..errors import ContengineError, NonDeterminismError
from ..store.base import E_COMPLETED, E_FAILED
from .check_events import RUN_ID, Ending, Execution, Line, Played
from .check_points import Boundary, Names

DETERMINISM_HINT = (
    "Workflow code between yields must be deterministic: it may not read the clock "
    "(use `yield ce.now()`), random numbers (`yield ce.random()`), uuid4 (`yield "
    "ce.uuid()`), environment variables, files or the network, nor state that outlives a "
    "run (module-level variables, caches, mutable default arguments). Do such things in a "
    "step, whose outcome is logged."
)


@dataclass(frozen=True)
class Failure:
    """How a run differed from the reference."""

    headline: str
    details: list[str]
    nondeterminism: bool = True


def reference_problem(wf: Workflow[..., Any], ref: Played, names: Names) -> str | None:
    """Why the reference run is no reference (it must be rebuilt from its own log and
    finish), or None."""
    if ref.stuck is not None:
        return "\n".join(
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
    if ref.ending is None:
        in_flight = [line for line in ref.log if line.status not in (E_COMPLETED, E_FAILED)]
        where = f"; it waits at {names.entry(*_where(in_flight[-1]))}" if in_flight else ""
        return (
            f"ce.testing.check: the reference run of workflow {wf.name!r} did not finish: "
            f"it is {ref.status!r}{where}. Send what it waits for with signals= "
            f"(signals={{'name': payload}}, or (after_seconds, name, payload) triples)."
        )
    return None


def _where(line: Line) -> tuple[str, int, str, str]:
    return line.run_id, line.position, line.kind, line.name


def compare(ref: Played, got: Played, names: Names) -> Failure | None:
    """The first way got differs from the reference, or None."""
    if got.again:
        return Failure(
            "a step whose outcome was committed before the crash ran again (guarantee 1 is "
            "broken: this is a bug in contengine itself; please report it)",
            sorted({names.entry(x.run_id, x.position, "step", x.name) for x in got.again}),
            nondeterminism=False,
        )
    if got.error is not None:
        error = got.error
        return Failure(
            "the engine raised an error while it carried the run on (a bug in contengine, or "
            "trouble with the database)",
            [f"{type(error).__qualname__}: {error}"],
            nondeterminism=False,
        )
    if got.stuck is not None:
        return Failure(
            "the resumed run could not be rebuilt from its log",
            _error_lines(got.stuck, got.stuck_run),
        )
    diff = _log_diff(ref.log, got.log)
    if got.ending is None:
        return Failure(f"the run did not finish: it was left {got.status!r}", diff)
    if diff:
        return Failure("it logged other requests than the reference run", diff)
    assert ref.ending is not None
    if not _same_ending(ref.ending, got.ending):
        return Failure(
            "it ended differently",
            [
                f"reference run: {_ending_text(ref.ending)}",
                f"this run:      {_ending_text(got.ending)}",
            ],
        )
    return None


def ran_again(ref: Played, got: Played, names: Names) -> list[str]:
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


def short(value: Any) -> str:
    """The value's repr, cut short to fit a line of the report."""
    return _REPR.repr(value)


def exception_text(error: BaseException) -> str:
    """An exception as "Type: message"."""
    return f"{type(error).__qualname__}: {error}"


def _ending_text(ending: Ending) -> str:
    if ending.ok:
        return f"returned {short(ending.value)}"
    return f"raised {exception_text(ending.value)}"


def failure_message(
    wf: Workflow[..., Any],
    ref: Played,
    got: Played,
    boundary: Boundary,
    number: int,
    total: int,
    failure: Failure,
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
