"""Tools for testing workflows: a virtual clock, crash schedules and offline replay.

check() crashes a workflow at every boundary; fuzz() replays its log in another thread,
in fresh processes and with the clock, randomness and environment changed; lint() reads
its source (and its module's helpers) for values that differ between the process or
thread that recorded a run and the one replaying it; replay() checks recorded runs
against new code. notes/determinism.md says what each catches.

ce.testing.strategies (hypothesis strategies) and ce.testing.plugin (the pytest
plugin) are imported on their own, never from here.
"""

from .check import CheckFailed, CheckReport, check
from .clock import VirtualClock
from .crashes import (
    CompletionOrder,
    CrashedRun,
    CrashPoint,
    CrashSchedule,
    SignalArrival,
    SimulatedCrash,
    run_with_crashes,
)
from .fuzz import FuzzFinding, FuzzReport, assert_deterministic, fuzz
from .lint import Finding, lint
from .replay import ReplayReport, RunReplay, assert_replays, replay

__all__ = [
    "CheckFailed",
    "CheckReport",
    "CompletionOrder",
    "CrashPoint",
    "CrashSchedule",
    "CrashedRun",
    "Finding",
    "FuzzFinding",
    "FuzzReport",
    "ReplayReport",
    "RunReplay",
    "SignalArrival",
    "SimulatedCrash",
    "VirtualClock",
    "assert_deterministic",
    "assert_replays",
    "check",
    "fuzz",
    "lint",
    "replay",
    "run_with_crashes",
]
