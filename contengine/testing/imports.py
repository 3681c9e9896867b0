"""The `--import MODULE` option of the commands that need the workflows' code (replay,
worker, start, result): the option, the imports, and the current directory on the path."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Iterable, Iterator

__all__ = ["add_import_option", "cwd_importable", "import_modules"]


def add_import_option(parser: argparse.ArgumentParser) -> None:
    """`--import MODULE` (repeatable, into args.imports): the commands that need the
    workflows' code (replay, worker, start, result) take it the same way."""
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module first, so its workflows register (repeatable)",
    )


def import_modules(modules: Iterable[str]) -> None:
    """Import each module, in order; ValueError naming the one that failed, and how
    (an exception, or a sys.exit() in the module)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # the user's module failed to import: say how
            raise ValueError(f"--import {module}: {type(exc).__name__}: {exc}") from exc
        except SystemExit as exc:  # not a silent exit with nothing done
            raise ValueError(f"--import {module}: it called sys.exit({exc.code!r})") from exc


@contextlib.contextmanager
def cwd_importable() -> Iterator[None]:
    """Let `--import myapp.flows` find modules under the current directory, as `python -m`
    does (a console script's sys.path starts at its own directory instead)."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)
