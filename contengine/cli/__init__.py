"""The `contengine` command line: inspect, operate on and check a database's runs.

May import every layer below it: the testing kit (lint, replay), the tools (demo, bench),
the engine and what it stands on. Within it, main.py builds the parser and imports the
commands; the commands import only common.py (shared options, errors, the engine) and
render.py (text for people), never main.py.
"""

from .common import CommandError
from .main import main

__all__ = ["CommandError", "main"]
