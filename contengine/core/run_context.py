"""What a workflow body may know about its run (ce.current_run()), and ce.logger, a
logger that stays silent while the run replays.

The driver marks the run it advances in a context variable for as long as the workflow's
code runs (one set and reset per advance, not per replayed entry), so the body can ask
where it is without any argument threaded through. Whether the code is replaying is read
from the driver at the moment of asking: code between two yields is replaying when the
request it will yield next is already in the run's log, that is, it ran before (in an
earlier process or an earlier drive) and its effects, log lines included, were seen then.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import ContengineError


@dataclass(frozen=True, slots=True)
class RunInfo:
    """The run a workflow body belongs to; see ce.current_run()."""

    id: str
    workflow: str
    parent_id: str | None  # the run that started this one as a child; None at the top
    generation: int  # 0 until the run first continues as new
    _where: Callable[[], tuple[int, bool]] = field(repr=False, compare=False)

    @property
    def replaying(self) -> bool:
        """True while the body runs code it ran before (its next request is logged)."""
        return self._where()[1]

    @property
    def position(self) -> int:
        """The log position of the request the body will yield next."""
        return self._where()[0]


CURRENT_RUN: contextvars.ContextVar[RunInfo | None] = contextvars.ContextVar(
    "contengine_run", default=None
)
"""The run whose workflow code this thread runs now; the driver sets it while it advances
the generator and resets it before it returns."""


def current_run() -> RunInfo:
    """The id, workflow, parent, generation and replay state of the running workflow."""
    info = CURRENT_RUN.get()
    if info is None:
        raise ContengineError(
            "ce.current_run() is only available in a workflow's body, while it runs (in a "
            "step, use ce.current_step())"
        )
    return info


class ReplayFilter(logging.Filter):
    """Drops records logged while a run replays and marks the others with run_id,
    workflow and position (None outside a run)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a record logged by replaying workflow code."""
        info = CURRENT_RUN.get()
        if info is None:
            record.run_id = record.workflow = record.position = None
            return True
        position, replaying = info._where()
        if replaying:
            return False
        record.run_id, record.workflow, record.position = info.id, info.workflow, position
        return True


def _workflow_logger() -> logging.Logger:
    made = logging.getLogger("contengine.workflow")
    if not any(isinstance(f, ReplayFilter) for f in made.filters):
        made.addFilter(ReplayFilter())
    return made


logger: logging.Logger = _workflow_logger()
"""A standard logger ("contengine.workflow") for workflow bodies: nothing it is told while
the run replays is emitted, so a crash and a resumption log each line once; each record
carries run_id, workflow and position attributes."""
