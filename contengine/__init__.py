"""contengine: durable execution for Python with generator workflows and an SQLite log."""

from . import testing
from .clock import Clock, SystemClock
from .engine import Engine, IdleReport, Run
from .errors import (
    Cancelled,
    ContengineError,
    CorruptPayload,
    CrashLoop,
    DatabaseError,
    DatabaseLocked,
    IdConflict,
    InvalidYield,
    NonDeterminismError,
    RunNotFound,
    SerializationError,
    StepFailed,
    Timeout,
    WorkflowDefinitionError,
    WorkflowFailed,
    WorkflowNotFound,
)
from .log import Entry
from .requests import (
    Backoff,
    Request,
    StepCall,
    StepOptions,
    gather,
    now,
    patched,
    publish,
    random,
    sleep,
    sleep_until,
    wait,
)
from .requests import uuid4 as uuid
from .workflow import Step, StepContext, Workflow, current_step, step, workflow

__version__ = "0.1.0"

__all__ = [
    "Backoff",
    "Cancelled",
    "Clock",
    "ContengineError",
    "CorruptPayload",
    "CrashLoop",
    "DatabaseError",
    "DatabaseLocked",
    "Engine",
    "Entry",
    "IdConflict",
    "IdleReport",
    "InvalidYield",
    "NonDeterminismError",
    "Request",
    "Run",
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
    "current_step",
    "gather",
    "now",
    "patched",
    "publish",
    "random",
    "sleep",
    "sleep_until",
    "step",
    "testing",
    "uuid",
    "wait",
    "workflow",
]
