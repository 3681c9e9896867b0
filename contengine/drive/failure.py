"""The first line of a failed run's error text: where engine.retry() resumes the run.

A drive writes it when the run fails (drive/loop.py); the engine's retry planning
(engine/retrying.py) reads it back.
"""

from __future__ import annotations

import re

# The run failed with the failure thrown into it at a position of its log.
AT_FAILURE = "contengine: the run failed with the failure at position {}; retry resumes there\n"
# The run's own code raised after its last entry.
OWN_CODE = (
    "contengine: the run's own code raised this after its last entry; retry resumes after it\n"
)
AT_FAILURE_RE = re.compile(r"contengine: the run failed with the failure at position (\d+);")


def failure_line(failed_at: int | None) -> str:
    """The first line of a failed run's error text: where retry resumes."""
    return OWN_CODE if failed_at is None else AT_FAILURE.format(failed_at)
