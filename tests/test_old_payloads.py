"""Payloads written before the package was laid out in layers still read back.

A pickle names a class by its module path: logs written by earlier versions name a
ce.start_child handle contengine.requests.ChildHandle (now contengine.core.children),
a Backoff contengine.requests.Backoff (now contengine.core.options). The bytes below
are what such a version wrote.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Generator
from pathlib import Path
from typing import Any

import contengine as ce
from contengine.core.serde import Serde

# Serde().dumps(ChildHandle("p/0"), ...) as written before the move.
OLD_HANDLE = (
    b"P\x80\x05\x951\x00\x00\x00\x00\x00\x00\x00\x8c\x13contengine.requests\x94\x8c\x0b"
    b"ChildHandle\x94\x93\x94\x8c\x03p/0\x94\x85\x94R\x94."
)
# Serde().dumps(ce.Backoff(initial=2.0), ...) as written before the move.
OLD_BACKOFF = (
    b"P\x80\x05\x95F\x00\x00\x00\x00\x00\x00\x00\x8c\x13contengine.requests\x94\x8c\x07"
    b"Backoff\x94\x93\x94)\x81\x94]\x94(G@\x00\x00\x00\x00\x00\x00\x00G@\x00\x00\x00\x00"
    b"\x00\x00\x00G@r\xc0\x00\x00\x00\x00\x00eb."
)
# Serde().dumps({"h": ChildHandle("p/0"), "f": lambda x: x + 1}, ...) (dill) before the move.
OLD_DILL = (
    b"D\x80\x05\x95\x07\x01\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01h\x94\x8c\x13contengine."
    b"requests\x94\x8c\x0bChildHandle\x94\x93\x94\x8c\x03p/0\x94\x85\x94R\x94\x8c\x01f\x94"
    b"\x8c\ndill._dill\x94\x8c\x10_create_function\x94\x93\x94(h\t\x8c\x0c_create_code\x94"
    b"\x93\x94(C\x00\x94K\x01K\x00K\x00K\x01K\x02K\x03C\x0c\x97\x00|\x00d\x01z\x00\x00\x00S"
    b"\x00\x94NK\x01\x86\x94)\x8c\x01x\x94\x85\x94\x8c\x08<string>\x94\x8c\x08<lambda>\x94h"
    b"\x14K\x07C\n\x80\x00\xb0Q\xb8\x11\xb1U\x80\x00\x94h\x0e))t\x94R\x94c__builtin__\n"
    b"__main__\nh\x14NNt\x94R\x94}\x94}\x94\x8c\x0f__annotations__\x94}\x94s\x86\x94bu."
)


@ce.step(name="old.add")
def old_add(x: int, y: int) -> int:
    """x + y."""
    return x + y


@ce.workflow(name="old.kid")
def old_kid(n: int) -> Generator[Any, Any, int]:
    """One step."""
    value: int = yield old_add(n, 1)
    return value


@ce.workflow(name="old.parent")
def old_parent(n: int) -> Generator[Any, Any, int]:
    """Starts a child without waiting, waits for a signal, then joins the child."""
    handle = yield ce.start_child(old_kid, n)
    go: int = yield ce.wait("go")
    value: int = yield handle
    return value + go


def test_values_pickled_under_the_old_module_paths_read_back() -> None:
    serde = Serde()
    assert serde.loads(OLD_HANDLE, "a handle") == ce.ChildHandle("p/0")
    assert serde.loads(OLD_BACKOFF, "a backoff") == ce.Backoff(initial=2.0)
    both = serde.loads(OLD_DILL, "a dill payload")
    assert both["h"] == ce.ChildHandle("p/0") and both["f"](1) == 2


def test_a_run_whose_log_holds_an_old_child_handle_goes_on(tmp_path: Path) -> None:
    """A run waiting after ce.start_child, its handle logged by an earlier version, is
    replayed and finishes after the upgrade (it was stuck: the module was not found)."""
    path = tmp_path / "old.db"
    with ce.Engine(path, workflows=[old_parent, old_kid]) as engine:
        engine.start(old_parent, 1, id="p")
        engine.run_until_idle()
        assert engine.get_run("p").status == "waiting"
    # The handle's entry as an earlier version wrote it.
    with sqlite3.connect(path) as conn:
        changed = conn.execute(
            "UPDATE log SET outcome = ? WHERE kind = 'start_child'", (OLD_HANDLE,)
        ).rowcount
    conn.close()
    assert changed == 1
    with ce.Engine(path, workflows=[old_parent, old_kid]) as engine:
        assert engine.history("p")[0].value == ce.ChildHandle("p/0")
        engine.signal("p", "go", 10)
        engine.run_until_idle()
        assert engine.get_run("p").result() == 12
        assert engine.stuck() == {}
