"""Which workers are alive: facts about processes on this host (no store's business).

A worker is alive while its row is unexpired (renewed by its heartbeat); on the same
host a worker whose process is gone (or a zombie) is dead at once, so a crashed
process's runs are taken over without waiting for its lease to run out. Every store
judges worker rows by `alive`, and so does the engine (engine/leases.py).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from .rows import WorkerRow

HOST = socket.gethostname()


def process_start(pid: int) -> str | None:
    """When the process started (ticks since boot, from /proc), to tell a reused pid apart."""
    stat = _stat(pid)
    return stat[19] if stat is not None and len(stat) > 19 else None


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    return text[text.rfind(")") + 2 :].split()


def process_gone(pid: int, start: str | None) -> bool:
    """Whether the process of this host with this pid (and start time) no longer runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # someone else's process: it exists
    except OSError:
        return False
    stat = _stat(pid)
    if stat is None:
        return False  # no /proc: trust the lease's expiry
    if stat[0] in ("Z", "X"):
        return True  # killed, not yet reaped by its parent
    return start is not None and len(stat) > 19 and stat[19] != start


# How far apart two hosts' clocks may be on a store shared by many hosts (PostgreSQL):
# there a lease counts as run out only this long after its expiry, and an engine whose
# clock is more than half of it off the server's neither claims nor runs steps
# (engine/leases.py), so two engines never disagree by more on when a lease ends.
MAX_CLOCK_SKEW = 1.0


# When a worker's lease runs out: its row's expiry, or later after a stall of the write
# lock (store/sqlite/guard.py LockStalls.expiry).
Expiry = Callable[[WorkerRow], float]


def alive(w: WorkerRow, wall: float, expiry: Expiry | None = None) -> bool:
    """Whether the worker may still hold leases at wall-clock time `wall`."""
    if (w.expires_at if expiry is None else expiry(w)) <= wall:
        return False
    return not (w.host == HOST and process_gone(w.pid, w.pid_start))
