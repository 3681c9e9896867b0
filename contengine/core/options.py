"""How a step is retried and bounded: Backoff and StepOptions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .ids import refuse_nul

DEFAULT_CAP = 300.0


@dataclass(frozen=True, slots=True, init=False)
class Backoff:
    """Exponential delay between attempts: initial, initial*factor, ... never above cap."""

    initial: float
    factor: float
    cap: float

    def __init__(self, initial: float = 1.0, factor: float = 2.0, cap: float | None = None) -> None:
        """cap defaults to 300 s, or to initial when that is longer (never below it)."""
        if cap is None:
            cap = max(DEFAULT_CAP, initial) if isinstance(initial, int | float) else DEFAULT_CAP
        if initial < 0 or factor < 1 or cap < 0:
            raise ValueError("Backoff needs initial >= 0, factor >= 1 and cap >= 0")
        if initial > cap:
            # Every delay is cut to the cap, so retries would silently wait less than asked.
            raise ValueError(
                f"Backoff(initial={initial!r}, cap={cap!r}): the first delay is above the cap, "
                f"so every delay would be cut to {cap!r} s; pass cap >= {initial!r} (or leave "
                f"cap out: it is then at least initial), or a smaller initial"
            )
        object.__setattr__(self, "initial", initial)
        object.__setattr__(self, "factor", factor)
        object.__setattr__(self, "cap", cap)

    def delay(self, failed_attempts: int) -> float:
        """Seconds to wait after the given number of failed attempts (1, 2, ...)."""
        exponent = max(failed_attempts - 1, 0)
        try:
            return float(min(self.initial * self.factor**exponent, self.cap))
        except OverflowError:
            return self.cap


@dataclass(frozen=True, slots=True)
class StepOptions:
    """How a step is retried and bounded; set on @step, overridden per call by .options()."""

    retries: int = 0
    backoff: Backoff = field(default_factory=Backoff)
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    timeout: float | None = None
    # A process that dies during a step is not an exception the step can see; this
    # bounds how often that may happen before the step is given up (a crash loop).
    max_crashes: int = 3
    # Executions of the step take a slot of this queue (engine.set_queue limits).
    queue: str | None = None

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, not {self.retries}")
        if self.max_crashes < 0:
            raise ValueError(f"max_crashes must be >= 0, not {self.max_crashes}")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, not {self.timeout}")
        if self.queue is not None and (not isinstance(self.queue, str) or not self.queue):
            raise ValueError(f"a queue name must be a non-empty string, not {self.queue!r}")
        if self.queue is not None:
            refuse_nul(self.queue, "the queue name")
        for exc_type in self.retry_on:
            if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
                raise TypeError(f"retry_on must hold exception classes, not {exc_type!r}")

    def merged(self, **changes: Any) -> StepOptions:
        """A copy with the given options changed (None leaves an option as it is)."""
        return replace(self, **normalize_options(changes))


def normalize_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Accept the friendly spellings: backoff as seconds, retry_on as one class."""
    out: dict[str, Any] = {}
    for name, value in options.items():
        if value is None and name != "timeout":
            continue
        if name == "backoff" and isinstance(value, int | float):
            value = Backoff(initial=float(value))
        elif name == "retry_on" and isinstance(value, type):
            value = (value,)
        elif name == "retry_on":
            value = tuple(value)
        elif name not in StepOptions.__dataclass_fields__:
            raise TypeError(f"unknown step option {name!r}")
        out[name] = value
    return out
