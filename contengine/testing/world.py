"""A pinned world for workflow code: the wall clock, `random`, `uuid.uuid4` and
`os.environ` as a workflow sees them between its yields.

The pinned clocks (time.time, time.monotonic, time.perf_counter, datetime.now...) move
at a rate: each resumption of the generator adds RESUME_TICK seconds times the rate,
each read of a clock READ_TICK times the rate. What a workflow reads thus depends only
on the path its code took, so a replay sees the values the recording saw, and a replay
at another rate (0: a replay that takes no time; a million: one that took days) shows
a branch that measures elapsed time.

Determinism fuzzing records a run with these fixed and replays it with one of them
changed. Only the workflow's own code runs inside the world (each resumption of its
generator); steps run outside it and see the real ones. The patches are global
while the workflow's code runs, so a thread that runs at that very moment (a losing
step of a race, still running) sees them too, for those microseconds.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import random
import time
import uuid
from collections.abc import Callable, Generator, Iterator, MutableMapping
from typing import Any

BASE_SEED = 20_260_101
ALL = "*"  # in World.reads: the workflow looked at the whole environment

_REAL_TIME = time.time
_REAL_TIME_NS = time.time_ns
_REAL_MONOTONIC = time.monotonic
_REAL_MONOTONIC_NS = time.monotonic_ns
_REAL_PERF_COUNTER = time.perf_counter
_REAL_PERF_COUNTER_NS = time.perf_counter_ns
_REAL_PROCESS_TIME = time.process_time
_REAL_PROCESS_TIME_NS = time.process_time_ns
_REAL_THREAD_TIME = time.thread_time
_REAL_THREAD_TIME_NS = time.thread_time_ns
_REAL_LOCALTIME = time.localtime
_REAL_GMTIME = time.gmtime
_REAL_CTIME = time.ctime
_REAL_STRFTIME = time.strftime
_REAL_DATETIME = datetime.datetime
_REAL_DATE = datetime.date
_REAL_UUID4 = uuid.uuid4
_REAL_ENVIRON = os.environ

_PATCHED: tuple[tuple[Any, str, object], ...] = (
    (time, "time", _REAL_TIME),
    (time, "time_ns", _REAL_TIME_NS),
    (time, "monotonic", _REAL_MONOTONIC),
    (time, "monotonic_ns", _REAL_MONOTONIC_NS),
    (time, "perf_counter", _REAL_PERF_COUNTER),
    (time, "perf_counter_ns", _REAL_PERF_COUNTER_NS),
    (time, "process_time", _REAL_PROCESS_TIME),
    (time, "process_time_ns", _REAL_PROCESS_TIME_NS),
    (time, "thread_time", _REAL_THREAD_TIME),
    (time, "thread_time_ns", _REAL_THREAD_TIME_NS),
    (time, "localtime", _REAL_LOCALTIME),
    (time, "gmtime", _REAL_GMTIME),
    (time, "ctime", _REAL_CTIME),
    (time, "strftime", _REAL_STRFTIME),
    (datetime, "datetime", _REAL_DATETIME),
    (datetime, "date", _REAL_DATE),
    (uuid, "uuid4", _REAL_UUID4),
    (os, "environ", _REAL_ENVIRON),
)
# (a module's or the workflow's globals, a name, the value to put there)
_Patch = tuple[dict[str, Any], str, Any]
_active: list[_Session] = []  # innermost last

# Seconds the pinned clocks move at rate 1: per resumption of the generator (a yield
# came back), and per read (so two reads with no yield between differ as well).
RESUME_TICK = 1.0
READ_TICK = 0.001


def _now() -> float:
    return _active[-1].now() if _active else _REAL_TIME()


def _time() -> float:
    return _now()


def _time_ns() -> int:
    return int(_now() * 1e9) if _active else _REAL_TIME_NS()


def _monotonic() -> float:
    return _active[-1].monotonic() if _active else _REAL_MONOTONIC()


def _monotonic_ns() -> int:
    return int(_monotonic() * 1e9) if _active else _REAL_MONOTONIC_NS()


def _perf_counter() -> float:
    return _active[-1].monotonic() if _active else _REAL_PERF_COUNTER()


def _perf_counter_ns() -> int:
    return int(_perf_counter() * 1e9) if _active else _REAL_PERF_COUNTER_NS()


def _process_time() -> float:
    return _active[-1].monotonic() if _active else _REAL_PROCESS_TIME()


def _process_time_ns() -> int:
    return int(_process_time() * 1e9) if _active else _REAL_PROCESS_TIME_NS()


def _thread_time() -> float:
    return _active[-1].monotonic() if _active else _REAL_THREAD_TIME()


def _thread_time_ns() -> int:
    return int(_thread_time() * 1e9) if _active else _REAL_THREAD_TIME_NS()


def _localtime(secs: float | None = None) -> time.struct_time:
    return _REAL_LOCALTIME(_now() if secs is None else secs)


def _gmtime(secs: float | None = None) -> time.struct_time:
    return _REAL_GMTIME(_now() if secs is None else secs)


def _ctime(secs: float | None = None) -> str:
    return _REAL_CTIME(_now() if secs is None else secs)


def _strftime(fmt: str, t: Any = None) -> str:
    return _REAL_STRFTIME(fmt, _REAL_LOCALTIME(_now()) if t is None else t)


def _uuid4() -> uuid.UUID:
    return _active[-1].uuid4() if _active else _REAL_UUID4()


class _ClockedMeta(type):
    """Makes a stand-in class behave as the real one, except for the methods it defines."""

    _real: type

    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, cls._real)

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, cls._real)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return cls._real(*args, **kwargs)  # instances are always of the real class

    def __getattr__(cls, name: str) -> Any:
        return getattr(cls._real, name)


class _Datetime(metaclass=_ClockedMeta):
    """datetime.datetime whose now(), utcnow() and today() read the pinned clock."""

    _real = _REAL_DATETIME

    @staticmethod
    def now(tz: datetime.tzinfo | None = None) -> datetime.datetime:
        return _REAL_DATETIME.fromtimestamp(_now(), tz)

    @staticmethod
    def utcnow() -> datetime.datetime:
        return _REAL_DATETIME.fromtimestamp(_now(), datetime.UTC).replace(tzinfo=None)

    @staticmethod
    def today() -> datetime.datetime:
        return _REAL_DATETIME.fromtimestamp(_now())


class _Date(metaclass=_ClockedMeta):
    """datetime.date whose today() reads the pinned clock."""

    _real = _REAL_DATE

    @staticmethod
    def today() -> datetime.date:
        return _REAL_DATE.fromtimestamp(_now())


class RecordingEnviron(MutableMapping[str, str]):
    """os.environ as a workflow sees it: a copy that notes every name read."""

    def __init__(self, data: dict[str, str], reads: set[str]) -> None:
        self._data = data
        self.reads = reads

    def __getitem__(self, key: str) -> str:
        self.reads.add(key)
        return self._data[key]

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.reads.add(key)
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        self.reads.add(ALL)
        return iter(list(self._data))

    def __len__(self) -> int:
        self.reads.add(ALL)
        return len(self._data)

    def __setitem__(self, key: str, value: str) -> None:
        self._data[key] = value

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def copy(self) -> dict[str, str]:
        """A plain dict of the variables (as os.environ.copy())."""
        self.reads.add(ALL)
        return dict(self._data)


@dataclasses.dataclass
class World:
    """What workflow code sees between yields: the clock, seeds for `random` and
    `uuid.uuid4`, and the environment."""

    t0: float  # time.time() (shift added)
    m0: float  # time.monotonic() (shift added)
    environ: dict[str, str]
    random_seed: int = BASE_SEED
    uuid_seed: int = BASE_SEED
    shift: float = 0.0  # seconds added to the wall clock and the monotonic clock
    rate: float = 1.0  # how fast the pinned clocks move (see RESUME_TICK and READ_TICK)
    # Environment variables workflow code read (ALL if it looked at all of them).
    reads: set[str] = dataclasses.field(default_factory=set, init=False, compare=False)

    @classmethod
    def here(cls) -> World:
        """This process's world as it is now, to be pinned."""
        return cls(_REAL_TIME(), _REAL_MONOTONIC(), dict(_REAL_ENVIRON))

    def but(self, **changes: Any) -> World:
        """A copy with some things changed (and no reads noted yet)."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The world as JSON-ready data, for a replay in another process."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> World:
        """The world to_json() described."""
        return cls(**data)


class _Session:
    """One workflow generator's view of a world; entered at each of its resumptions."""

    def __init__(self, world: World, namespace: dict[str, Any] | None) -> None:
        self.world = world
        self._random_state = random.Random(world.random_seed).getstate()
        self._uuids = random.Random(world.uuid_seed)
        self.environ = RecordingEnviron(dict(world.environ), world.reads)
        self._patches = self._find_patches(namespace)
        self._saved: list[tuple[list[_Patch], Any]] = []  # what each enter replaced
        # Seconds the clocks moved so far, at rate 1; the first resumption moves them to
        # 0, so the first read is the world's own time at any rate.
        self._moved = -RESUME_TICK

    def _find_patches(self, namespace: dict[str, Any] | None) -> list[_Patch]:
        stand_ins: dict[int, Any] = {
            id(_REAL_TIME): _time,
            id(_REAL_TIME_NS): _time_ns,
            id(_REAL_MONOTONIC): _monotonic,
            id(_REAL_MONOTONIC_NS): _monotonic_ns,
            id(_REAL_PERF_COUNTER): _perf_counter,
            id(_REAL_PERF_COUNTER_NS): _perf_counter_ns,
            id(_REAL_PROCESS_TIME): _process_time,
            id(_REAL_PROCESS_TIME_NS): _process_time_ns,
            id(_REAL_THREAD_TIME): _thread_time,
            id(_REAL_THREAD_TIME_NS): _thread_time_ns,
            id(_REAL_LOCALTIME): _localtime,
            id(_REAL_GMTIME): _gmtime,
            id(_REAL_CTIME): _ctime,
            id(_REAL_STRFTIME): _strftime,
            id(_REAL_DATETIME): _Datetime,
            id(_REAL_DATE): _Date,
            id(_REAL_UUID4): _uuid4,
            id(_REAL_ENVIRON): self.environ,
        }
        patches: list[_Patch] = [
            (vars(module), name, stand_ins[id(real)]) for module, name, real in _PATCHED
        ]
        # Names the workflow's module bound with `from time import time` and the like.
        for name, value in (namespace or {}).items():
            if namespace is not None and id(value) in stand_ins:
                patches.append((namespace, name, stand_ins[id(value)]))
        return patches

    def _elapsed(self) -> float:
        """Seconds the pinned clocks have moved in this generator; a read moves them on."""
        elapsed = self._moved * self.world.rate
        self._moved += READ_TICK
        return elapsed

    def now(self) -> float:
        """The pinned wall clock."""
        return self.world.t0 + self.world.shift + self._elapsed()

    def monotonic(self) -> float:
        """The pinned monotonic clock."""
        return self.world.m0 + self.world.shift + self._elapsed()

    def uuid4(self) -> uuid.UUID:
        """The next uuid4 of this session's stream."""
        return uuid.UUID(int=self._uuids.getrandbits(128), version=4)

    def __enter__(self) -> None:
        self._moved += RESUME_TICK
        undo = [(d, k, d.get(k, _MISSING)) for d, k, _ in self._patches]
        for d, k, stand_in in self._patches:
            d[k] = stand_in
        outer_random = random.getstate()
        random.setstate(self._random_state)
        self._saved.append((undo, outer_random))
        _active.append(self)

    def __exit__(self, *exc: object) -> None:
        _active.pop()
        undo, outer_random = self._saved.pop()
        self._random_state = random.getstate()
        random.setstate(outer_random)
        for d, k, old in reversed(undo):
            if old is _MISSING:
                d.pop(k, None)
            else:
                d[k] = old


_MISSING = object()

Stub = Callable[[Any], Any]


def pinned(
    gen: Generator[Any, Any, Any],
    world: World,
    namespace: dict[str, Any] | None = None,
    stub: Stub | None = None,
) -> Generator[Any, Any, Any]:
    """Run gen's code between yields inside world; pass on what it yields (through stub).

    namespace is the workflow's module globals, where names bound by `from time
    import time` and the like are found and swapped too.
    """
    session = _Session(world, namespace)
    value: Any = None
    error: BaseException | None = None
    while True:
        with session:
            try:
                request = gen.send(value) if error is None else gen.throw(error)
            except StopIteration as stop:
                return stop.value
        error = None
        if stub is not None:
            request = stub(request)
        try:
            value = yield request
        except GeneratorExit:
            with session:
                gen.close()  # its finally blocks run in the world too
            raise
        except BaseException as exc:  # thrown in at the yield: hand it on to the workflow
            value, error = None, exc
