"""Workflows for tests/test_testing_fuzz.py that another process must be able to import.

The PYTHONHASHSEED perturbation replays a run in fresh processes, which find the
workflow by its import path; a workflow defined inside a test function cannot be found
that way, so the ones that need it live here.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Generator
from socket import gethostname
from typing import Any

import contengine as ce

Flow = Generator[Any, Any, Any]

# Eight names whose set order begins with another name under each of PYTHONHASHSEED=101,
# 202, 303 and 404, so that any three of those seeds diverge from this process differently.
ANIMALS = frozenset({"ant", "ape", "bee", "dog", "eel", "fox", "hen", "yak"})

# Set by a test before it fuzzes `regional`; a fresh process imports the default.
CONFIG = {"region": "eu"}


@ce.step
def visit(name: str) -> str:
    """Return the name: a step that only shows up in the log."""
    return name


@ce.workflow
def visit_in_set_order() -> Flow:
    """Visits each animal in set order, which changes with PYTHONHASHSEED."""
    seen = []
    for name in set(ANIMALS):
        seen.append((yield visit(name)))
    return seen


@ce.workflow
def visit_in_sorted_order() -> Flow:
    """Visits each animal in sorted order, with replay-safe time, randomness and ids."""
    when = yield ce.now()
    luck = yield ce.random()
    ticket = yield ce.uuid()
    seen = []
    for name in sorted(set(ANIMALS)):
        seen.append((yield visit(name)))
    if luck < 0.5:
        yield visit("lucky")
    return {"at": when, "ticket": ticket, "seen": seen}


@ce.workflow
def regional() -> Flow:
    """Branches on module state the calling process may have changed."""
    if CONFIG["region"] == "us":
        return (yield visit("us-east"))
    return (yield visit("eu-west"))


@ce.workflow
def visit_by_pid() -> Flow:
    """Names the process it runs in: another process replays another request."""
    return (yield visit(f"pid {os.getpid()}"))


@ce.workflow
def visit_by_host() -> Flow:
    """Names the machine it runs on."""
    return (yield visit(f"host {gethostname()}"))


@ce.workflow
def visit_by_cwd() -> Flow:
    """Names the directory it runs in."""
    return (yield visit(os.path.basename(os.getcwd())))


@ce.workflow
def visit_by_time_zone() -> Flow:
    """Branches on the local hour of a fixed moment, which depends on the time zone."""
    return (yield visit(f"local hour {time.localtime(0).tm_hour}"))


@ce.workflow
def visit_by_argv() -> Flow:
    """Names the command line of its process."""
    return (yield visit(f"{len(sys.argv)} {sys.argv[-1]}"))


@ce.workflow
def visit_by_address() -> Flow:
    """Shows an object's default repr, which holds its memory address."""
    return (yield visit(repr(Token())))


@ce.workflow
def visit_in_thread_order() -> Flow:
    """Names the thread it runs in."""
    return (yield visit(f"thread {threading.get_ident()}"))


class Token:
    """An object with the default repr."""
