"""The `contengine` command line: inspect and operate on a database's runs.

Imports the engine, the testing kit's commands (lint, replay) and the tools (demo, bench).
"""

from .main import CommandError, main

__all__ = ["CommandError", "main"]
