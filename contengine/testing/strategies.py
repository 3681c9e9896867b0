"""Hypothesis strategies for your own `@given` tests of workflows.

- crash_points(), crash_schedules(): where engines die (run them with
  ce.testing.crashes.run_with_crashes); schedules shrink to the fewest, earliest crashes.
- step_values(), step_errors(), step_outcomes(): what fake steps return or raise.
- gather_orders(n): the order a gather's members finish in (see CompletionOrder).
- signal_offsets(), signal_arrivals(): when signals arrive, around a wait and its timeout.

    @given(schedule=crash_schedules(), outcome=step_outcomes())
    def test_checkout_survives(schedule, outcome): ...

This module needs hypothesis (a test dependency); nothing else in contengine imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from .crashes import WHERE, CrashPoint, CrashSchedule, SignalArrival

__all__ = [
    "ERROR_TYPES",
    "StepOutcome",
    "crash_points",
    "crash_schedules",
    "gather_orders",
    "signal_arrivals",
    "signal_offsets",
    "step_errors",
    "step_outcomes",
    "step_values",
]

# Exceptions fake steps raise by default: common, serializable, each with one message argument.
ERROR_TYPES: tuple[type[Exception], ...] = (
    ValueError,
    KeyError,
    RuntimeError,
    ConnectionError,
    ZeroDivisionError,
)
# How close to a deadline the "just before" and "just after" signal times are, in seconds.
EPSILON = 0.001


def crash_points(max_index: int = 8, where: Sequence[str] = WHERE) -> st.SearchStrategy[CrashPoint]:
    """One crash: before or after an engine's k-th commit, or inside its k-th step
    execution, with 1 <= k <= max_index."""
    if max_index < 1:
        raise ValueError(f"max_index must be at least 1, not {max_index}")
    for w in where:
        CrashPoint(w, 1)  # refuses an unknown boundary now, not inside a test
    return st.builds(CrashPoint, st.sampled_from(tuple(where)), st.integers(1, max_index))


def crash_schedules(
    max_crashes: int = 3, max_index: int = 8, where: Sequence[str] = WHERE
) -> st.SearchStrategy[CrashSchedule]:
    """Up to max_crashes crashes, one per engine; the engine after the last runs to the end.

    Keep max_crashes at or under a step's max_crashes (3 by default), or a step that is
    hit every time ends in ce.CrashLoop, as it would in production.
    """
    points = st.lists(crash_points(max_index, where), max_size=max_crashes)
    return points.map(lambda ps: CrashSchedule(tuple(ps)))


def step_values(max_leaves: int = 6) -> st.SearchStrategy[Any]:
    """JSON-like values a step may return: None, booleans, numbers (no NaN), text, and
    lists and dicts of them. They compare equal after a trip through the log."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**63)
        | st.floats(allow_nan=False)
        | st.text(max_size=12)
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
        max_leaves=max_leaves,
    )


def step_errors(
    types: Sequence[type[Exception]] = ERROR_TYPES,
) -> st.SearchStrategy[Exception]:
    """An exception a step raises: one of `types`, with a short message."""
    if not types:
        raise ValueError("step_errors needs at least one exception type")
    return st.builds(lambda t, m: t(m), st.sampled_from(tuple(types)), st.text(max_size=20))


@dataclass(frozen=True)
class StepOutcome:
    """What a fake step does: return `value`, or raise `error_type(message)` (afresh each
    time, so one outcome can serve several steps and replays)."""

    value: Any = None
    error_type: type[Exception] | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        """Whether the step returns (rather than raises)."""
        return self.error_type is None

    def result(self) -> Any:
        """Return the value, or raise the exception: the body of a fake step."""
        if self.error_type is not None:
            raise self.error_type(self.message)
        return self.value

    def __repr__(self) -> str:
        if self.error_type is None:
            return f"StepOutcome(returns {self.value!r})"
        return f"StepOutcome(raises {self.error_type.__name__}({self.message!r}))"


def step_outcomes(
    values: st.SearchStrategy[Any] | None = None,
    error_types: Sequence[type[Exception]] = ERROR_TYPES,
) -> st.SearchStrategy[StepOutcome]:
    """A fake step's outcome: mostly a value (from `values`, default step_values()),
    sometimes an exception of one of `error_types` (none if it is empty)."""
    returns = st.builds(StepOutcome, values if values is not None else step_values())
    if not error_types:
        return returns
    raises = st.builds(
        lambda t, m: StepOutcome(None, t, m),
        st.sampled_from(tuple(error_types)),
        st.text(max_size=20),
    )
    return returns | raises


def gather_orders(n: int) -> st.SearchStrategy[tuple[int, ...]]:
    """The order in which a gather's n members finish: a permutation of 0..n-1 (it
    shrinks towards argument order)."""
    if n < 0:
        raise ValueError(f"a gather has 0 or more members, not {n}")
    return st.permutations(range(n)).map(tuple)


def signal_offsets(
    wait_at: float = 0.0, timeout: float | None = None, horizon: float = 3600.0
) -> st.SearchStrategy[float]:
    """When a signal arrives, in seconds after the run started, for a run that reaches
    its wait at `wait_at`: before the run starts (negative), before the wait, as it is
    reached, during it, and with a timeout just before, at and just after the deadline,
    and long after. Without a timeout, up to `horizon` seconds after the wait."""
    if wait_at < 0 or (timeout is not None and timeout < 0) or horizon <= 0:
        raise ValueError("wait_at and timeout must be >= 0 and horizon > 0")
    options: list[st.SearchStrategy[float]] = [st.just(wait_at), st.just(-1.0)]
    if wait_at > 0:
        options.append(st.floats(0.0, wait_at, exclude_max=True))
    if timeout is None:
        options.append(st.floats(wait_at, wait_at + horizon))
        return st.one_of(options)
    deadline = wait_at + timeout
    options += [st.just(deadline), st.just(deadline + EPSILON), st.just(deadline + timeout + 1)]
    if timeout > EPSILON:
        # Not closer to the deadline than EPSILON: added to an epoch start time, an
        # offset a hair below the deadline rounds to the deadline itself.
        options += [st.just(deadline - EPSILON), st.floats(wait_at, deadline - EPSILON)]
    return st.one_of(options)


def signal_arrivals(
    name: str,
    payloads: st.SearchStrategy[Any] | None = None,
    wait_at: float = 0.0,
    timeout: float | None = None,
) -> st.SearchStrategy[SignalArrival]:
    """A signal `name` with a payload (default step_values()) arriving at a time from
    signal_offsets(wait_at, timeout), for run_with_crashes(signals=[...])."""
    return st.builds(
        SignalArrival,
        signal_offsets(wait_at, timeout),
        st.just(name),
        payloads if payloads is not None else step_values(),
    )
