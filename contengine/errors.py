"""Every exception contengine raises, rooted at ContengineError."""

from __future__ import annotations

from typing import Any


class ContengineError(Exception):
    """Base class of every error contengine raises on its own account."""


class WorkflowDefinitionError(ContengineError, TypeError):
    """A function given to @workflow or @step cannot be one."""


class InvalidYield(ContengineError, TypeError):
    """A workflow yielded something that is not a request."""


class SerializationError(ContengineError):
    """A value could not be serialized (or read back); names the value and its origin."""


class CorruptPayload(ContengineError):
    """A stored payload could not be decoded or failed its signature check."""


class WorkflowNotFound(ContengineError):
    """A run's workflow is neither registered nor importable in this process."""


class DatabaseError(ContengineError):
    """The database file cannot be used (not a database, newer schema, locked)."""


class DatabaseLocked(DatabaseError):
    """Another connection held the write lock for longer than the busy timeout."""


class DatabaseGone(DatabaseError):
    """The database file was deleted or replaced while an engine had it open."""


class ClockSkew(DatabaseError):
    """This host's clock is too far off the database server's for leases to be safe."""


class LeaseLost(ContengineError):
    """A driver's lease on a run was taken over by another worker; it wrote nothing."""


class RunNotFound(ContengineError, KeyError):
    """No run with that id exists in this database."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else "run not found"


class IdConflict(ContengineError):
    """A run id was reused for a different workflow or different arguments."""


class Timeout(ContengineError, TimeoutError):
    """A step attempt or a wait ran out of time."""


class Cancelled(BaseException):
    """Raised inside a cancelled run; a BaseException so `except Exception` does not swallow it."""


class ChildCancelled(ContengineError):
    """Raised in a parent whose child run was cancelled (the parent itself was not)."""


class NonDeterminismError(ContengineError):
    """A replayed workflow yielded a request that differs from its log."""

    def __init__(
        self,
        message: str,
        *,
        position: int,
        recorded: str | None,
        replayed: str | None,
        run_id: str | None = None,
        ended: str = "returned",
    ) -> None:
        super().__init__(message)
        self.position = position
        self.recorded = recorded
        self.replayed = replayed
        self.run_id = run_id
        self.ended = ended  # how the workflow ended when it stopped short of its log

    @property
    def diff(self) -> str:
        """A unified diff of the recorded request against the replayed one."""
        import difflib

        old = (self.recorded or "(nothing: the log ends here)").splitlines()
        new = (self.replayed or f"(nothing: the workflow {self.ended})").splitlines()
        return "\n".join(difflib.unified_diff(old, new, "recorded", "replayed", lineterm="", n=0))


class StepFailed(ContengineError):
    """Stands in for a step's exception that could not be serialized."""

    def __init__(self, type_name: str, message: str, traceback_text: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.type_name, self.message, self.traceback_text))


class WorkflowFailed(StepFailed):
    """Stands in for a workflow's exception that could not be serialized."""


class CrashLoop(StepFailed):
    """A step's process died during it more often than the step's max_crashes allows."""
