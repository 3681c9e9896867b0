"""Unpicklers for payloads that name contengine classes by the modules they were in before.

A pickle names each class by its module path. Logs written before the package was laid
out in layers (contengine/core/, drive/, engine/, ...) name, for instance, a
ce.start_child handle as contengine.requests.ChildHandle; that module is now
contengine.core.children. Those payloads are read with these unpicklers, which look a
name up where it lives now. They are used only after the plain read failed, so reading a
current payload costs nothing more.
"""

from __future__ import annotations

import importlib
import io
import pickle
from typing import Any

import dill

# The modules that were moved or split, and where their names are now (looked up in
# this order; then in the package itself, which exports every public name).
MOVED: dict[str, tuple[str, ...]] = {
    "contengine.requests": (
        "contengine.core.requests",
        "contengine.core.children",
        "contengine.core.gather",
        "contengine.core.options",
        "contengine.core.timers",
        "contengine.core.outcome",
    ),
    "contengine.driver": ("contengine.core.driver", "contengine.core.outcome"),
    "contengine.workflow": ("contengine.core.workflow",),
    "contengine.canonical": ("contengine.core.canonical",),
    "contengine.binding": ("contengine.core.binding",),
    "contengine.idle": ("contengine.core.idle",),
    "contengine.serde": ("contengine.core.serde",),
    "contengine.log": ("contengine.drive.log",),
    "contengine.engine": ("contengine.engine.engine", "contengine.engine.dispatch"),
}


def where_now(module: str, name: str) -> tuple[str, str]:
    """(module, name) of a class a payload names, as it can be imported now."""
    candidates = MOVED.get(module)
    if candidates is None:
        return module, name
    for place in (module, *candidates, "contengine"):
        try:
            found = importlib.import_module(place)
        except ImportError:
            continue
        if hasattr(found, name):
            return place, name
    return module, name


class _PickleReader(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(*where_now(module, name))


class _DillReader(dill.Unpickler):  # type: ignore[misc]
    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(*where_now(module, name))


def read_moved(body: bytes, with_dill: bool) -> Any:
    """Read a pickle (or, with_dill, a dill payload) whose classes may be named by the
    modules they were in before; raises as pickle.loads would if it still cannot."""
    reader = _DillReader if with_dill else _PickleReader
    return reader(io.BytesIO(body)).load()
