"""ce.testing.lint: a static look at a workflow for code that can behave differently on replay."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import inspect
import os
import re
import types
from collections.abc import Callable
from typing import Any

from ..core.workflow import Workflow
from ..errors import ContengineError
from .lint_rules import Finding
from .lint_scope import Scope, module_imports
from .lint_walk import Checker

__all__ = ["Finding", "lint"]


_IGNORE = re.compile(r"#\s*contengine:\s*ignore(?:\[([\w\s,-]+)\])?")


def lint(
    workflow: Workflow[Any, Any] | Callable[..., Any], *, strict: bool = False
) -> list[Finding]:
    """Findings in the workflow's body, and in the functions of its module that it calls,
    that break replay; strict=True raises AssertionError.

    The functions those call are read too; steps, child workflows and other modules'
    functions are not.
    """
    fn = _function_of(workflow)
    name = workflow.name if isinstance(workflow, Workflow) else fn.__qualname__
    path, text, tree, node = _source_of(fn, name)
    imports = module_imports(tree, fn.__globals__.get("__package__"))
    checker = Checker(Scope(fn, node, imports), text, _display_path(path))
    checker.check_function(node)
    lines = text.splitlines()
    found = checker.findings + _in_helpers(checker.helpers, fn, path, imports, text, lines)
    findings = _unsuppressed(found, lines)
    if strict and findings:
        raise AssertionError(_describe(findings, name))
    return findings


def _in_helpers(
    pending: list[tuple[types.FunctionType, int]],
    fn: Callable[..., Any],
    path: str,
    imports: dict[str, str],
    text: str,
    lines: list[str],
) -> list[Finding]:
    """Findings in the module's own functions the workflow calls (and those they call):
    their code runs between the workflow's yields too. Each names the helper and a line
    that calls it; `# contengine: ignore` on a call's line covers what that call reaches."""
    sites: dict[types.FunctionType, list[int]] = {}  # where each helper is called from
    checked: dict[types.FunctionType, Checker] = {}
    while pending:
        helper, line = pending.pop(0)
        if helper is fn or _ignored(lines, line, None):
            continue
        sites.setdefault(helper, []).append(line)
        if helper in checked:
            continue
        try:
            helper_path, _, _, node = _source_of(helper, helper.__qualname__)
        except (ContengineError, SyntaxError):
            continue  # no source to read (made by exec, say): nothing to say about it
        if helper_path != path:
            continue
        checker = Checker(Scope(helper, node, imports), text, _display_path(path))
        checker.check_function(node)
        checked[helper] = checker
        pending += checker.helpers
    findings: list[Finding] = []
    for helper, checker in checked.items():
        for finding, shown in zip(checker.findings, checker.shown, strict=True):
            calls = [line for line in sites[helper] if not _ignored(lines, line, finding.rule)]
            if calls:
                via = f"{shown} (in {helper.__name__}(), called at line {calls[0]})"
                message = via + finding.message[len(shown) :]
                findings.append(dataclasses.replace(finding, message=message))
    return findings


def _describe(findings: list[Finding], workflow: str) -> str:
    """A report of a workflow's findings: a headline, then one finding per line."""
    count = f"{len(findings)} finding{'' if len(findings) == 1 else 's'}"
    lines = [f"ce.testing.lint: {count} in workflow {workflow!r} that can break replay:"]
    return "\n".join(lines + [f"  {f}" for f in findings])


# -- finding the source ------------------------------------------------------------------------


def _function_of(workflow: object) -> Callable[..., Any]:
    fn = workflow.fn if isinstance(workflow, Workflow) else workflow
    fn = inspect.unwrap(fn) if callable(fn) else fn
    if not inspect.isgeneratorfunction(fn):
        raise TypeError(
            f"ce.testing.lint() needs a @ce.workflow or a generator function, not {workflow!r}"
        )
    return fn


def _source_of(fn: Callable[..., Any], name: str) -> tuple[str, str, ast.Module, ast.FunctionDef]:
    try:
        path = inspect.getsourcefile(fn) or inspect.getfile(fn)
        lines, _ = inspect.findsource(fn)
    except (OSError, TypeError) as exc:
        raise ContengineError(f"cannot read the source of workflow {name!r}: {exc}") from None
    text = "".join(lines)
    tree = ast.parse(text, path)
    first = fn.__code__.co_firstlineno
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == fn.__name__:
            start = min([d.lineno for d in node.decorator_list] + [node.lineno])
            if first in (start, node.lineno):
                return path, text, tree, node
    raise ContengineError(f"cannot find the definition of workflow {name!r} in {path}")


def _display_path(path: str) -> str:
    with contextlib.suppress(ValueError):
        relative = os.path.relpath(path)
        if not relative.startswith(os.pardir):
            return relative
    return path


def _unsuppressed(findings: list[Finding], lines: list[str]) -> list[Finding]:
    """Drop findings whose line says `# contengine: ignore` (or ignore[rule, ...])."""
    kept = [f for f in set(findings) if not _ignored(lines, f.line, f.rule)]
    return sorted(kept, key=lambda f: (f.line, f.col, f.rule, f.message))


def _ignored(lines: list[str], line: int, rule: str | None) -> bool:
    """True if the line says `# contengine: ignore`, bare or naming the rule (None: bare)."""
    match = _IGNORE.search(lines[line - 1]) if 0 < line <= len(lines) else None
    if match is None:
        return False
    return not match.group(1) or rule in {r.strip() for r in match.group(1).split(",")}
