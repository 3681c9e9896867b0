"""What the names in a workflow's body refer to: imports, aliases, locals, sets and paths."""

from __future__ import annotations

import ast
import builtins
import contextlib
import importlib.util
import types
from collections.abc import Callable
from pathlib import PurePath
from typing import Any

PATH_TYPES = {"pathlib.Path", "pathlib.PosixPath", "pathlib.WindowsPath"}
_PATH_DERIVED = {"with_name", "with_suffix", "with_stem", "joinpath", "resolve", "absolute"}
_SET_TYPES = {
    "set", "frozenset", "Set", "AbstractSet", "MutableSet", "FrozenSet", "typing.Set",
    "typing.AbstractSet", "typing.FrozenSet", "collections.abc.Set", "collections.abc.MutableSet",
}  # fmt: skip
_SET_OPS = (ast.BitOr, ast.BitAnd, ast.Sub, ast.BitXor)
_SET_METHODS = {"union", "intersection", "difference", "symmetric_difference", "copy"}


def module_imports(tree: ast.Module, package: str | None) -> dict[str, str]:
    """Names bound by the module's own imports (not those inside functions or classes)."""
    names: dict[str, str] = {}
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        stmt = pending.pop(0)
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            names.update(_bound_by_import(stmt, package))
        else:
            pending.extend(
                child for child in ast.iter_child_nodes(stmt) if isinstance(child, ast.stmt)
            )
    return names


def _bound_by_import(stmt: ast.Import | ast.ImportFrom, package: str | None) -> dict[str, str]:
    if isinstance(stmt, ast.Import):
        return {
            a.asname or a.name.partition(".")[0]: a.name if a.asname else a.name.partition(".")[0]
            for a in stmt.names
        }
    module = stmt.module or ""
    if stmt.level:
        try:
            module = importlib.util.resolve_name("." * stmt.level + module, package)
        except (ImportError, ValueError):
            return {}
    return {a.asname or a.name: f"{module}.{a.name}" for a in stmt.names if a.name != "*"}


def _qualify(obj: object) -> str | None:
    """The dotted name of a module, class or function found at run time."""
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str) and "<locals>" not in qualname:
        return f"{module}.{qualname}"
    return None


class Scope:
    """What the names in one workflow function refer to, resolved as far as can be known."""

    def __init__(
        self, fn: Callable[..., Any], node: ast.FunctionDef, imports: dict[str, str]
    ) -> None:
        self.globals: dict[str, Any] = fn.__globals__
        self.closure = _closure_values(fn)
        self.module_imports = imports
        self.local_imports: dict[str, str] = {}
        self.locals = _locally_bound(node)
        package = self.globals.get("__package__")
        for sub in ast.walk(node):
            if isinstance(sub, ast.Import | ast.ImportFrom):
                self.local_imports.update(_bound_by_import(sub, package))
        self.kinds = _local_kinds(node, self)

    def resolve(self, node: ast.expr) -> str | None:
        """The dotted name an expression such as `t.time` or `datetime.now` stands for."""
        if isinstance(node, ast.Name):
            return self.resolve_name(node.id)
        if isinstance(node, ast.Attribute):
            base = self.resolve(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def resolve_name(self, name: str) -> str | None:
        """The dotted name a bare name stands for, or None for locals and unknowns."""
        if name in self.local_imports:
            return self.local_imports[name]
        if name in self.locals:
            return None
        if name in self.closure:
            return _qualify(self.closure[name])
        if name in self.module_imports:
            return self.module_imports[name]
        if name in self.globals:
            return _qualify(self.globals[name])
        return f"builtins.{name}" if hasattr(builtins, name) else None

    def module_global(self, name: str) -> tuple[bool, Any]:
        """(True, value) when the name is one of the module's globals, not a local."""
        if name in self.locals or name in self.local_imports or name in self.closure:
            return False, None
        return (True, self.globals[name]) if name in self.globals else (False, None)


def _closure_values(fn: Callable[..., Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=False):
        with contextlib.suppress(ValueError):  # an empty cell: not assigned yet
            values[name] = cell.cell_contents
    return values


def _locally_bound(node: ast.FunctionDef) -> set[str]:
    """Parameters and names assigned anywhere in the function, less global/nonlocal ones."""
    bound: set[str] = set()
    declared: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.arguments):
            every = sub.posonlyargs + sub.args + sub.kwonlyargs + [sub.vararg, sub.kwarg]
            bound.update(a.arg for a in every if a is not None)
        elif isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store | ast.Del):
            bound.add(sub.id)
        elif isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if sub is not node:
                bound.add(sub.name)
        elif isinstance(sub, ast.ExceptHandler) and sub.name:
            bound.add(sub.name)
        elif isinstance(sub, ast.Global | ast.Nonlocal):
            declared.update(sub.names)
    return bound - declared


def _annotation_kind(annotation: ast.expr | None) -> str | None:
    if annotation is None:
        return None
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        try:
            annotation = ast.parse(annotation.value, mode="eval").body
        except SyntaxError:
            return None
    base = annotation.value if isinstance(annotation, ast.Subscript) else annotation
    text = ast.unparse(base)
    if text in _SET_TYPES:
        element = ast.unparse(annotation.slice) if isinstance(annotation, ast.Subscript) else ""
        return None if element in ("int", "bool") else "set"
    if text in {"Path", "PosixPath", "WindowsPath"} | PATH_TYPES:
        return "path"
    return None


def _local_kinds(node: ast.FunctionDef, scope: Scope) -> dict[str, str]:
    """Locals that always hold a set (or a path): every assignment to them makes one."""
    seen: dict[str, set[str | None]] = {}
    for sub in ast.walk(node):
        if isinstance(sub, ast.arg):
            kind = _annotation_kind(sub.annotation)
            if kind:
                seen.setdefault(sub.arg, set()).add(kind)
        elif isinstance(sub, ast.AnnAssign) and isinstance(sub.target, ast.Name):
            kinds = {_annotation_kind(sub.annotation)}
            seen.setdefault(sub.target.id, set()).update(kinds)
        elif isinstance(sub, ast.Assign):
            kind = expr_kind(sub.value, scope, {})
            for target in sub.targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        direct = isinstance(target, ast.Name)
                        seen.setdefault(name.id, set()).add(kind if direct else None)
        elif isinstance(sub, ast.For | ast.AsyncFor | ast.With | ast.comprehension):
            targets = (
                [sub.target]
                if not isinstance(sub, ast.With)
                else [i.optional_vars for i in sub.items if i.optional_vars is not None]
            )
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        seen.setdefault(name.id, set()).add(None)
    return {name: k for name, kinds in seen.items() if len(kinds) == 1 for k in kinds if k}


def default_repr(cls: type) -> bool:
    """True for a class whose instances show as `<module.Class object at 0x...>`."""
    default = vars(object)  # compared as plain objects: the class's own may be anything
    return (
        getattr(cls, "__repr__", None) is default["__repr__"]
        and getattr(cls, "__str__", None) is default["__str__"]
    )


def expr_kind(node: ast.expr, scope: Scope, kinds: dict[str, str]) -> str | None:
    """'set' for an expression that makes a set of unknown order, 'path' for a path,
    'object' for an object whose text is its default repr (its address)."""
    if isinstance(node, ast.Set):
        ints = all(isinstance(e, ast.Constant) and isinstance(e.value, int) for e in node.elts)
        return None if ints else "set"
    if isinstance(node, ast.SetComp):
        return "set"
    if isinstance(node, ast.Name):
        if node.id in kinds:
            return kinds[node.id]
        found, value = scope.module_global(node.id)
        if not found:
            found, value = node.id in scope.closure, scope.closure.get(node.id)
        if found and isinstance(value, set | frozenset):
            return None if all(isinstance(v, int) for v in value) else "set"
        if found and default_repr(type(value)):
            return "object"
        return "path" if found and isinstance(value, PurePath) else None
    if isinstance(node, ast.BinOp):
        left, right = expr_kind(node.left, scope, kinds), expr_kind(node.right, scope, kinds)
        if isinstance(node.op, _SET_OPS) and "set" in (left, right):
            return "set"
        return "path" if isinstance(node.op, ast.Div) and left == "path" else None
    if isinstance(node, ast.Call):
        return _call_kind(node, scope, kinds)
    return None


def _call_kind(node: ast.Call, scope: Scope, kinds: dict[str, str]) -> str | None:
    func = scope.resolve(node.func)
    if func in ("builtins.set", "builtins.frozenset"):
        arg = node.args[0] if node.args else None
        ranged = isinstance(arg, ast.Call) and scope.resolve(arg.func) == "builtins.range"
        return None if ranged else "set"
    if func in PATH_TYPES:
        return "path"
    if func == "builtins.object":
        return "object"
    if isinstance(node.func, ast.Name):
        found, value = scope.module_global(node.func.id)
        if not found:
            found, value = node.func.id in scope.closure, scope.closure.get(node.func.id)
        if found and isinstance(value, type) and default_repr(value):
            return "object"
    if isinstance(node.func, ast.Attribute):
        receiver = expr_kind(node.func.value, scope, kinds)
        if receiver == "set" and node.func.attr in _SET_METHODS:
            return "set"
        if receiver == "path" and node.func.attr in _PATH_DERIVED:
            return "path"
    return None
