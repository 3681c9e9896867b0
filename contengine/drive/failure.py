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


# Between the workflow's traceback (the exception as raised at its yield) and the failed
# step's own, in a failed run's error text.
STEP_FRAMES = (
    "\nThe step at position {} failed with the exception thrown in at its yield; "
    "its traceback, as logged:\n"
)


def with_step_frames(text: str, failed_at: int | None, step_text: str | None) -> str:
    """text (the workflow's traceback: its frame at the yield) followed by the failed
    step's own traceback, indented: a reader of the exception line (cli/render.py) reads
    the workflow's, and a person sees both where the step raised and where it was yielded.
    The step's exception crossed a serialization on its way in (so that a replay sees the
    same one), which is why its frames are not in the workflow's traceback."""
    if failed_at is None or not step_text or not step_text.startswith("Traceback"):
        return text
    lines = step_text.rstrip("\n").splitlines(keepends=True)
    body = "".join("    " + line if line.strip() else line for line in lines)
    return text.rstrip("\n") + "\n" + STEP_FRAMES.format(failed_at) + body + "\n"


def failure_line(failed_at: int | None) -> str:
    """The first line of a failed run's error text: where retry resumes."""
    return OWN_CODE if failed_at is None else AT_FAILURE.format(failed_at)
