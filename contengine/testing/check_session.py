"""The state of ce.testing.check's plays: the crash, each engine's life, the pinned random draws."""

from __future__ import annotations

import random as random_module
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..engine.engine import Engine
from ..store.base import FINISHED, Store
from ..store.sqlite.store import SQLiteStore
from .check_events import DONE, RUN_ID, Ending, Event, Execution, Key, Line, Point, Stuck, Where


class Crash(BaseException):
    """The process dies here: a BaseException, so nothing in the engine catches it."""


class _Dead(Exception):
    """What a dead engine's other threads get: an error they are built to swallow."""


@dataclass
class Left:
    """What an engine that lived to the end of its life left behind."""

    ending: Ending | None
    status: str
    stuck: Stuck | None
    log: list[Line]
    committed: set[Where]  # the steps whose outcome was on the file when it took over
    error: Exception | None = None  # what the engine raised while driving, if it did


class Session:
    """One engine's life within a play: the crash planned for it, and whether it died."""

    def __init__(self, index: int, plan: Point | None, driver: int) -> None:
        self.index = index
        self.plan = plan
        self.driver = driver  # the thread that drives runs; only its commits are crash points
        self.store: SQLiteStore | None = None
        self.dead = False
        self.over = False  # the engine is closing: nothing will decide a race any more
        self._seen: Counter[Key] = Counter()
        self._lock = threading.Lock()

    def occurrence(self, key: Key) -> int:
        """Count an event with this key; how many there have been, this one included."""
        with self._lock:
            self._seen[key] += 1
            return self._seen[key]

    def due(self, when: str, key: Key, occurrence: int) -> bool:
        """Whether this is the planned crash."""
        return self.plan == Point(when, key, occurrence)

    def in_driver(self) -> bool:
        """Whether the current thread is the one that drives runs."""
        return threading.get_ident() == self.driver

    def die(self) -> None:
        """The process is dead from here on: raise in the driving thread; other threads
        go on, but nothing they do reaches the file."""
        self.dead = True
        if self.in_driver():
            raise Crash
        raise _Dead("the engine crashed")


class Play:
    """The state of one play, across the engines that carry it."""

    def __init__(self, plan: Point | None, record: bool, start: float) -> None:
        self.plan = plan
        self.record = record  # the reference: record events, and pin outcomes
        self.start = start
        self.sessions: list[Session] = []
        self.ledger: list[Execution] = []
        self.events: list[Event] = []
        self.sent: set[int] = set()  # timed signals already sent
        self.lock = threading.Lock()

    @property
    def session(self) -> Session:
        """The engine now carrying the play."""
        return self.sessions[-1]


class PinnedRandom(random_module.Random):
    """The engine's source of ce.random() and ce.uuid(): each draw as in the reference."""

    def __init__(self, draw: Callable[[Callable[[], Any]], Any]) -> None:
        self._draw = draw  # the harness's: the reference's value for each draw
        super().__init__()

    def random(self) -> float:
        """A float in [0, 1): the reference's for this draw."""
        return float(self._draw(super().random))

    def getrandbits(self, k: int, /) -> int:
        """k random bits: the reference's for this draw."""
        fresh = super().getrandbits
        return int(self._draw(lambda: fresh(k)))


def top_status(engine: Engine) -> str:
    row = engine.store.get_run(RUN_ID)
    return row.status if row is not None else "missing"


def waiting_for(store: Store, name: str) -> str:
    """The run a timed signal goes to: the first (the top run, then child runs by id)
    that waits for it now, else the top run, whose mailbox keeps it."""
    for run in sorted(store.list_runs(), key=lambda r: r.id):
        if run.status in FINISHED:
            continue
        for e in store.load_log(run.id):
            if e.kind == "wait" and e.name == name and e.status not in DONE:
                return run.id
    return RUN_ID


def committed_steps(store: Store) -> set[Where]:
    """The steps whose outcome a store holds (run, generation, position)."""
    return {
        (run.id, run.generation, e.position)
        for run in store.list_runs()
        for e in store.load_log(run.id)
        if e.kind == "step" and e.status in DONE
    }
