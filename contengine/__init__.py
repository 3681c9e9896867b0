"""contengine: durable execution for Python with generator workflows and an SQLite log."""

from typing import TYPE_CHECKING, Any

from .clock import Clock, SystemClock
from .core.children import ChildHandle, continue_as_new, start_child
from .core.gather import gather, race
from .core.messages import send
from .core.options import Backoff, StepOptions
from .core.requests import Request, StepCall, now, patched, publish, random
from .core.requests import uuid4 as uuid
from .core.run_context import RunInfo, current_run, logger
from .core.timers import sleep, sleep_until, wait
from .core.workflow import Step, StepContext, Workflow, current_step, step, workflow
from .drive.events import Event
from .drive.history import Attempt
from .drive.log import Entry
from .engine.engine import Engine, IdleReport, Run
from .errors import (
    Cancelled,
    ChildCancelled,
    ClockSkew,
    ContengineError,
    CorruptPayload,
    CrashLoop,
    DatabaseError,
    DatabaseGone,
    DatabaseLocked,
    IdConflict,
    InvalidYield,
    LeaseLost,
    NonDeterminismError,
    RunNotFound,
    SerializationError,
    StepFailed,
    Timeout,
    WorkflowDefinitionError,
    WorkflowFailed,
    WorkflowNotFound,
)

if TYPE_CHECKING:
    from . import testing

__version__ = "0.1.0"

__all__ = [
    "Backoff",
    "Cancelled",
    "ChildCancelled",
    "ChildHandle",
    "Clock",
    "ContengineError",
    "CorruptPayload",
    "CrashLoop",
    "DatabaseError",
    "DatabaseGone",
    "DatabaseLocked",
    "ClockSkew",
    "LeaseLost",
    "Engine",
    "Attempt",
    "Entry",
    "Event",
    "IdConflict",
    "IdleReport",
    "InvalidYield",
    "NonDeterminismError",
    "Request",
    "Run",
    "RunInfo",
    "RunNotFound",
    "SerializationError",
    "Step",
    "StepCall",
    "StepContext",
    "StepFailed",
    "StepOptions",
    "SystemClock",
    "Timeout",
    "Workflow",
    "WorkflowDefinitionError",
    "WorkflowFailed",
    "WorkflowNotFound",
    "continue_as_new",
    "current_run",
    "current_step",
    "gather",
    "logger",
    "now",
    "patched",
    "publish",
    "race",
    "random",
    "send",
    "sleep",
    "sleep_until",
    "start_child",
    "step",
    "testing",
    "uuid",
    "wait",
    "workflow",
]


def __getattr__(name: str) -> Any:
    """ce.testing, imported on first use: an application that only runs workflows never
    loads the testing kit (nor what it imports)."""
    if name == "testing":
        import importlib

        return importlib.import_module(".testing", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
