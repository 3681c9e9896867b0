"""How runs and steps are named: a generation's id, a child run's id, a step's idempotency key.

One rule, used by the drive that starts a child, by retry and inspection that find it
again, and by the step context: a run's generation is "run" (the first) or "run/gG"
(after G continue_as_new), a child run is "<generation>/<position>" and a step's key is
"<generation>:<position>". So a replay finds the same child and a new generation never
finds an old one's. '/' is kept for these ids: a run started from outside may not use it.
"""

from __future__ import annotations

import re
from typing import Any

CHILD_SEPARATOR = "/"  # between a parent's id (and generation) and a child's position


# The longest name or new run id, in UTF-8 bytes: PostgreSQL indexes ids and names
# (a run's id with a signal's name, say) and refuses an index row over 2,704 bytes.
MAX_NAME_BYTES = 1000


def refuse_nul(value: str, what: str) -> str:
    """value, if it has no NUL character and is at most MAX_NAME_BYTES long; else
    ValueError naming what it is.

    Names (of workflows, steps, signals, queues, tags, published keys) and run ids are
    stored as text, which PostgreSQL refuses with a NUL in it, and indexed: refused
    here, on every store, before anything is written, so a workflow runs alike on
    SQLite and PostgreSQL."""
    if "\x00" in value:
        raise ValueError(
            f"{what} {value!r} contains a NUL character (\\x00), which a database "
            f"cannot keep in a name (PostgreSQL refuses it); choose one without"
        )
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        # Neither database keeps one as text (the write would fail, naming nothing).
        raise ValueError(
            f"{what} {value[:40]!r} contains a lone surrogate, which is not UTF-8 text "
            f"and cannot be stored; choose one of real characters"
        ) from None
    if size > MAX_NAME_BYTES:
        raise ValueError(
            f"{what} {value[:40]!r}... is {size} bytes long (in UTF-8); at most "
            f"{MAX_NAME_BYTES} are allowed (PostgreSQL indexes it): choose a shorter one"
        )
    return value


def generation_id(run_id: str, generation: int) -> str:
    """The name of one generation of a run: "run", then "run/gG" after G continue_as_new."""
    return f"{run_id}/g{generation}" if generation else run_id


def child_id(parent: str, generation: int, position: int) -> str:
    """The id of the child run started at position in the parent's generation:
    "parent/N", or "parent/gG/N" once the parent has continued as new G times."""
    return f"{generation_id(parent, generation)}/{position}"


def idempotency_key(run_id: str, generation: int, position: int) -> str:
    """The key of the step at position: "run:position", and "run/gN:position" once the
    run has continued as new N times (positions start again at 0 in each generation,
    so without N two different steps would share a key)."""
    return f"{generation_id(run_id, generation)}:{position}"


def is_child_id(run_id: str) -> bool:
    """Whether run_id has the shape of a child run's id (it holds the separator)."""
    return CHILD_SEPARATOR in run_id


_CONTROL = re.compile("[\x00-\x1f\x7f]")


def checked_ref(run_id: Any) -> str:
    """run_id if it can name a run (a child's too); ValueError if not."""
    if not isinstance(run_id, str) or not run_id:
        raise ValueError(f"a run id must be a non-empty string, not {run_id!r}")
    if _CONTROL.search(run_id):
        # A NUL or a newline would make an id that prints, logs and is typed in a
        # shell as another one.
        raise ValueError(
            f"run id {run_id!r} contains a control character (NUL, newline, tab, ...); "
            f"choose an id of printable characters"
        )
    return run_id
