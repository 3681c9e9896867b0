"""ce.testing.lint: what differs between the process or thread that recorded a run and the
one replaying it, and hazards inside the module's own functions a workflow calls."""

from __future__ import annotations

import contextvars
import getpass
import locale
import os
import platform
import sys
import threading
import time
import uuid
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import pytest

import contengine as ce
from contengine.testing.lint import lint

Flow = Generator[Any, Any, Any]
LOCAL = threading.local()
USER: contextvars.ContextVar[str] = contextvars.ContextVar("user", default="nobody")
SENTINEL = object()


class Plain:
    """A class with the default repr: `<...Plain object at 0x7f...>`."""


@dataclass
class Shown:
    """A class with a repr of its own."""

    n: int


@ce.step(name="lint_identity.note")
def note(label: Any) -> Any:
    """Return the label."""
    return label


def rules(workflow: Any) -> list[tuple[str, str]]:
    """(rule, offending code) of each finding, in source order."""
    return [(f.rule, f.code) for f in lint(workflow)]


# -- the process, the machine, the thread -----------------------------------------------------


@ce.workflow
def who_am_i() -> Flow:
    """Reads everything that tells one process, machine or thread from another."""
    yield note(os.getpid())
    yield note(os.getuid())
    yield note(os.getlogin())
    yield note(getpass.getuser())
    yield note(os.cpu_count())
    yield note(os.uname().nodename)
    yield note(platform.system())
    yield note(locale.getlocale())
    yield note(sys.argv[0])
    yield note(time.tzname)
    yield note(uuid.getnode())
    yield note(threading.get_ident())
    yield note(threading.current_thread().name)
    yield note(threading.get_native_id())


def test_every_process_machine_and_thread_identity_is_flagged() -> None:
    assert rules(who_am_i) == [
        ("host", "os.getpid()"),
        ("host", "os.getuid()"),
        ("host", "os.getlogin()"),
        ("host", "getpass.getuser()"),
        ("host", "os.cpu_count()"),
        ("host", "os.uname()"),
        ("host", "platform.system()"),
        ("host", "locale.getlocale()"),
        ("host", "sys.argv"),
        ("host", "time.tzname"),
        ("host", "uuid.getnode()"),
        ("thread-id", "threading.get_ident()"),
        ("thread-id", "threading.current_thread()"),
        ("thread-id", "threading.get_native_id()"),
    ]
    message = lint(who_am_i)[-1].message
    assert "another thread" in message and "argument" in message


@ce.workflow
def per_thread_state() -> Flow:
    """Reads values that are another in each thread."""
    yield note(getattr(LOCAL, "user", None))
    yield note(USER.get())


def test_thread_local_and_context_variable_are_flagged() -> None:
    assert rules(per_thread_state) == [("thread-id", "LOCAL"), ("thread-id", "USER")]


@ce.workflow
def addresses() -> Flow:
    """Turns objects with the default repr into text."""
    plain = Plain()
    yield note(f"made {plain}")
    yield note(repr(Plain()))
    yield note("%s" % SENTINEL)  # noqa: UP031 (what is checked)
    yield note("{}".format(plain))  # noqa: UP032 (what is checked)
    yield note(str(object()))


def test_default_repr_turned_into_text_is_flagged() -> None:
    found = lint(addresses)
    assert [(f.rule, f.code) for f in found] == [
        ("address", "plain"),
        ("address", "Plain()"),
        ("address", "SENTINEL"),
        ("address", "plain"),
        ("address", "object()"),
    ]
    assert "memory address" in found[0].message and "__repr__" in found[0].message


@ce.workflow
def shown_well(n: int) -> Flow:
    """Turns objects with reprs of their own into text: nothing to flag."""
    shown = Shown(n)
    yield note(f"{shown} {n} {Shown(2)!r}")
    yield note(repr(shown) + str(n) + "%s" % (n,))  # noqa: UP031


def test_objects_with_a_repr_of_their_own_are_not_flagged() -> None:
    assert rules(shown_well) == []


# -- helpers in the workflow's module ---------------------------------------------------------


def elapsed_since(started: float) -> float:
    """A helper that reads the clock."""
    return time.time() - started


def is_slow(started: float) -> bool:
    """A helper that calls a helper that reads the clock."""
    return elapsed_since(started) > 60


def double(n: int) -> int:
    """A pure helper."""
    return n * 2


def worker_name() -> str:
    """A helper that reads the thread."""
    return threading.current_thread().name


@ce.workflow
def uses_helpers(n: int) -> Flow:
    """Calls helpers of its module, one of which reads the clock two calls down."""
    started = yield ce.now()
    yield note(double(n))
    if is_slow(started):
        yield note("slow")
    yield note(list(map(double, [n])))


def test_a_clock_read_inside_a_helper_is_flagged_with_the_call() -> None:
    found = lint(uses_helpers)
    assert [(f.rule, f.code) for f in found] == [("time", "time.time()")]
    line = elapsed_since.__code__.co_firstlineno + 2
    assert found[0].line == line
    assert "(in elapsed_since(), called at line" in found[0].message
    assert "ce.now()" in found[0].message


@ce.workflow
def ignores_a_helper() -> Flow:
    """Accepts what one helper does, on the line that calls it."""
    yield note(worker_name())  # contengine: ignore[thread-id]
    yield note(double(1))


@ce.workflow
def ignores_another_rule() -> Flow:
    """An ignore for another rule does not cover the helper's finding."""
    yield note(worker_name())  # contengine: ignore[time]


def test_an_ignore_on_the_calling_line_covers_the_helper() -> None:
    assert rules(ignores_a_helper) == []
    assert rules(ignores_another_rule) == [("thread-id", "threading.current_thread()")]


def recurse(n: int) -> int:
    """A helper that calls itself."""
    return 0 if n <= 0 else recurse(n - 1) + os.getpid()


@ce.workflow
def recursive_helper() -> Flow:
    """Calls a recursive helper: it is checked once."""
    yield note(recurse(3))


def test_a_recursive_helper_is_checked_once() -> None:
    assert rules(recursive_helper) == [("host", "os.getpid()")]


@pytest.mark.parametrize("workflow", [who_am_i, uses_helpers])
def test_steps_are_not_followed(workflow: Any) -> None:
    assert not any("note" in f.message for f in lint(workflow))
