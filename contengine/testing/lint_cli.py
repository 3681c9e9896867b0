"""`contengine lint TARGET...`: ce.testing.lint for workflows named on the command line."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import json
import os
import sys
import types
from collections.abc import Iterator, Sequence
from typing import Any

from ..core.workflow import Workflow
from ..errors import ContengineError
from .lint import Finding, lint

__all__ = ["add_lint_command", "lint_main"]


def add_lint_command(sub: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    """Add `contengine lint TARGET...` to the command's subparsers (with parents: the
    options every command shares)."""
    p = sub.add_parser(
        "lint",
        parents=list(parents),
        help="look for code in workflows that breaks replay (time, random, I/O, sets...)",
        description="Check workflows' source for code that gives other values on replay. "
        "Exit 0: nothing found; 1: findings (one per line); 2: a target cannot be used.",
    )
    p.add_argument(
        "targets",
        nargs="+",
        metavar="module:workflow",
        help="a workflow (myapp.flows:checkout), every workflow in a module (myapp.flows), "
        "or in a file (path/to/flows.py, path/to/flows.py:checkout)",
    )


class _BadTarget(Exception):
    """A target that cannot be imported or is not a workflow."""


def lint_main(args: argparse.Namespace) -> int:
    """Lint every target; print findings one per line; returns 0, 1 (findings) or 2 (bad target)."""
    bad = linted = 0
    findings: list[Finding] = []
    for target in args.targets:
        try:
            workflows = _load(target)
            for wf in workflows:
                findings += lint(wf)
        except (_BadTarget, ContengineError) as exc:
            print(f"contengine lint: {_one_line(str(exc))}", file=sys.stderr)
            bad += 1
            continue
        linted += len(workflows)
    if getattr(args, "json", False):
        # One list (also when empty): each finding's fields, of which the text shows
        # path, line, message and rule.
        print(json.dumps([dataclasses.asdict(f) for f in findings]))
    else:
        for finding in findings:
            print(finding)
    noun = f"{linted} workflow{'' if linted == 1 else 's'}"
    if findings:
        count = f"{len(findings)} finding{'' if len(findings) == 1 else 's'}"
        print(f"contengine lint: {count} in {noun} that can break replay", file=sys.stderr)
    elif not bad:
        print(f"contengine lint: {noun} checked, nothing that breaks replay", file=sys.stderr)
    return 2 if bad else 1 if findings else 0


def _one_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


def _load(target: str) -> list[Workflow[Any, Any]]:
    """The workflows a target names: module:attr, module, file.py or file.py:attr."""
    module_text, _, attr = target.rpartition(":") if ":" in target else (target, "", "")
    if not module_text:
        raise _BadTarget(f"{target!r} names no module (expected module:workflow)")
    module = _import(module_text)
    if not attr:
        found = [
            v
            for v in vars(module).values()
            if isinstance(v, Workflow) and getattr(v.fn, "__module__", None) == module.__name__
        ]
        if not found:
            raise _BadTarget(f"{module_text!r} defines no @ce.workflow")
        return list(dict.fromkeys(found))
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise _BadTarget(f"{module_text!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, Workflow):
        raise _BadTarget(f"{target!r} is not a @ce.workflow but {type(obj).__name__} {obj!r}")
    return [obj]


@contextlib.contextmanager
def _on_path(directory: str) -> Iterator[None]:
    """Let imports find modules in a directory (a console script's path lacks the cwd)."""
    added = directory not in sys.path
    if added:
        sys.path.insert(0, directory)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(directory)


def _import(text: str) -> types.ModuleType:
    is_file = text.endswith(".py") or os.sep in text or "/" in text
    try:
        if not is_file:
            with _on_path(os.getcwd()):
                return importlib.import_module(text)
        return _import_file(text)
    except _BadTarget:
        raise
    except (Exception, SystemExit) as exc:  # whatever the import raised, in one line
        raise _BadTarget(f"cannot import {text!r}: {type(exc).__name__}: {exc}") from None


def _import_file(path: str) -> types.ModuleType:
    if not os.path.isfile(path):
        problem = "a directory, not a .py file" if os.path.isdir(path) else "no such file"
        raise _BadTarget(f"cannot import {path!r}: {problem}")
    full = os.path.abspath(path)
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) == full:
            return module
    stem = os.path.splitext(os.path.basename(full))[0]
    name = stem if stem not in sys.modules else f"contengine_lint_{stem}"
    spec = importlib.util.spec_from_file_location(name, full)
    if spec is None or spec.loader is None:
        raise _BadTarget(f"cannot import {path!r}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        with _on_path(os.path.dirname(full)):
            spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
