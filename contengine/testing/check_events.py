"""What ce.testing.check's runs are made of: crash points, events, endings, final logs.

Plain data and the pure functions that read it (no engine, no threads): how a commit
is recognised from one run to the next, and which steps lost a race.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ContengineError
from ..store.base import E_COMPLETED, E_FAILED, EntryRow, Progress

RUN_ID = "check"
DONE = (E_COMPLETED, E_FAILED)
BEFORE, AFTER, RAN = "before", "after", "ran"  # a crash point's place: commit, commit, step

Key = tuple[Any, ...]
Where = tuple[str, int, int]  # a step's run, generation and position
Stuck = tuple[str, ContengineError]  # a run that cannot be rebuilt, and why


@dataclass(frozen=True, slots=True)
class Point:
    """A crash point: at the occurrence-th event with this key (a commit or a step's
    return), crash before the commit, after it, or as the step returns."""

    when: str
    key: Key
    occurrence: int


@dataclass(frozen=True, slots=True)
class Execution:
    """One call of a step function: which engine of the play ran it, and where."""

    session: int
    run_id: str
    generation: int
    position: int
    attempt: int  # counted without crashes: the n-th try that could end the step
    name: str


@dataclass(frozen=True, slots=True)
class Event:
    """Something the reference play did that another play may crash at."""

    key: Key
    occurrence: int
    progress: Progress | None = None  # a commit, as the engine made it
    execution: Execution | None = None  # a step function's return


@dataclass(frozen=True, slots=True)
class Ending:
    """How a run ended: returned value (ok) or raised value (not ok)."""

    ok: bool
    value: Any


@dataclass(frozen=True, slots=True)
class Line:
    """One entry of a run's final log, as plays are compared."""

    run_id: str
    position: int
    kind: str
    name: str
    key: str | None
    text: str
    status: str

    @property
    def identity(self) -> tuple[Any, ...]:
        """What must be the same in every play: where, and which request."""
        return (self.run_id, self.position, self.kind, self.name, self.key)

    def describe(self) -> str:
        """One line for a diff: run, position and request."""
        where = "" if self.run_id == RUN_ID else f"child run {self.run_id!r} "
        return f"{where}{self.position}: {self.kind} {self.name}({self.text})"


@dataclass(frozen=True, slots=True)
class SignalPlan:
    """A signal for the run: sent before it first runs (after is None), or once the
    play's clock has passed `after` seconds from its start."""

    after: float | None
    name: str
    payload: Any


@dataclass
class Played:
    """What one play came to."""

    plan: Point | None
    fired: bool  # the planned crash happened
    engines: int
    ending: Ending | None  # None: the run did not finish
    status: str
    stuck: ContengineError | None  # why a run could not be rebuilt
    stuck_run: str | None
    log: list[Line]
    ledger: list[Execution]
    events: list[Event]
    again: list[Execution]  # executions of steps whose outcome was committed before the crash
    error: Exception | None = None  # an error the engine raised while resuming the run


def commit_key(p: Progress) -> Key:
    """What identifies a commit from one play to the next (never times or payloads)."""
    update = None if p.update is None else (p.update.position, p.update.status, p.update.attempts)
    insert = None if p.insert is None else (p.insert.position, p.insert.kind, p.insert.name)
    recorded = tuple((e.position, e.kind, e.name, e.status) for e in p.recorded)
    run = None if p.run is None else p.run.status
    return (
        "commit", p.run_id, update, insert, recorded, run,
        p.consume is not None, tuple(r.id for r in p.new_runs), p.restart is not None,
    )  # fmt: skip


def race_losers(events: Sequence[Event]) -> dict[Where, int]:
    """The step members of each race that did not win it, from a play's commits in their
    order: (run, generation, position) -> the race's position."""
    generation: Counter[str] = Counter()
    races: dict[Where, list[EntryRow]] = {}  # (run, generation, race) -> its members
    done: set[Where] = set()
    losers: dict[Where, int] = {}
    for event in events:
        p = event.progress
        if p is None:
            continue
        run_id, gen = p.run_id, generation[p.run_id]
        rows = [e for e in (p.update, *p.recorded) if e is not None]
        for e in p.recorded:
            if e.kind == "race" and e.key is not None and e.key.isdigit():
                first, count = e.position + 1, int(e.key)
                members = [m for m in p.recorded if first <= m.position < first + count]
                races[(run_id, gen, e.position)] = members
        done.update((run_id, gen, e.position) for e in rows if e.status in DONE)
        for e in rows:
            members = races.get((run_id, gen, e.position), [])
            if e.status in DONE and e.kind == "race":
                # As the engine decides: the first member in argument order that was done.
                finished = [m for m in members if (run_id, gen, m.position) in done]
                winner = finished[0].position if finished else None
                for m in members:
                    if m.kind == "step" and m.position != winner:
                        losers[(run_id, gen, m.position)] = e.position
        if p.restart is not None:
            generation[run_id] += 1
    return losers


def losing_events(events: Sequence[Event], losers: Mapping[Where, int]) -> set[int]:
    """Indices of the events that concern only a race's losing steps: their timing
    decides whether they happen at all, and in which thread, so they are no crash points."""
    generation: Counter[str] = Counter()
    out: set[int] = set()
    for index, event in enumerate(events):
        x, p = event.execution, event.progress
        if x is not None and (x.run_id, x.generation, x.position) in losers:
            out.add(index)
        elif p is not None:
            gen = generation[p.run_id]
            loser = p.update is not None and (p.run_id, gen, p.update.position) in losers
            if loser and p.insert is None and not p.recorded and p.run is None:
                out.add(index)
            if p.restart is not None:
                generation[p.run_id] += 1
    return out


__all__ = [
    "AFTER",
    "BEFORE",
    "DONE",
    "RAN",
    "RUN_ID",
    "Ending",
    "Event",
    "Execution",
    "Key",
    "Line",
    "Played",
    "Point",
    "SignalPlan",
    "Stuck",
    "Where",
    "commit_key",
    "losing_events",
    "race_losers",
]
