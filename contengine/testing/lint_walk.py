"""The AST walker of ce.testing.lint: one function's code, read for the rules' findings."""

from __future__ import annotations

import ast
import collections
import contextvars
import threading
import types

from .lint_rules import RULES, Finding, rule_for, rule_id
from .lint_scope import Scope, expr_kind

_PATH_METHODS = {"read_text", "read_bytes", "write_text", "write_bytes", "iterdir"}
_PATH_METHODS_ON_PATHS = _PATH_METHODS | {
    "open", "exists", "is_file", "is_dir", "stat", "lstat", "glob", "rglob", "unlink",
    "touch", "mkdir", "rmdir", "rename", "replace", "samefile", "readlink", "chmod",
}  # fmt: skip
# Calls that consume their argument in iteration order (sorted, len, sum... do not).
_ORDERED_CONSUMERS = {
    "builtins.list", "builtins.tuple", "builtins.iter", "builtins.enumerate", "builtins.zip",
    "builtins.map", "builtins.filter", "builtins.dict.fromkeys",
}  # fmt: skip
# Calls whose result does not depend on the order of what they are given.
_ORDER_FREE = {
    "builtins.sorted", "builtins.sum", "builtins.any", "builtins.all", "builtins.min",
    "builtins.max", "builtins.len", "builtins.set", "builtins.frozenset",
}  # fmt: skip
_MUTATORS = {
    "append", "extend", "insert", "pop", "remove", "clear", "update", "add", "discard",
    "setdefault", "popitem", "sort", "reverse", "appendleft", "extendleft", "popleft",
    "rotate", "difference_update", "intersection_update", "symmetric_difference_update",
}  # fmt: skip
_MUTABLE_TYPES = (list, dict, set, bytearray, collections.deque)
_MUTABLE_FACTORIES = {
    "builtins.list", "builtins.dict", "builtins.set", "builtins.bytearray",
    "collections.defaultdict", "collections.deque", "collections.OrderedDict",
    "collections.Counter",
}  # fmt: skip
_COMPREHENSIONS = (ast.ListComp, ast.GeneratorExp, ast.DictComp)
# Values that hold something else in each thread: reading one is reading the thread.
_PER_THREAD = (threading.local, contextvars.ContextVar)
# Calls that turn their argument into text (an object's default repr shows its address).
_TO_TEXT = {"builtins.repr", "builtins.str", "builtins.ascii", "builtins.format"}
_STEP_DECORATORS = {"contengine.step", "contengine.core.workflow.step"}


class Checker(ast.NodeVisitor):
    """Walks one workflow function and collects findings."""

    def __init__(self, scope: Scope, text: str, path: str) -> None:
        self.scope = scope
        self.text = text
        self.path = path
        self.findings: list[Finding] = []
        self.shown: list[str] = []  # how each finding's message names its code
        self.order_free: set[int] = set()  # ids of comprehensions whose order cannot show
        # Functions of the workflow's module used here, with the line: checked next.
        self.helpers: list[tuple[types.FunctionType, int]] = []

    def report(self, node: ast.AST, rule: str, code: str | None = None, name: str = "") -> None:
        """Add a finding for node, with the rule's reason and the replay-safe alternative."""
        code = code if code is not None else self.segment(node)
        spec = RULES[rule]
        alias = name and not name.startswith("builtins.") and not code.startswith(name)
        shown = f"`{code}`" + (f" ({name})" if alias else "")
        line, col = getattr(node, "lineno", 0), getattr(node, "col_offset", 0)
        message = f"{shown} {spec.why}: {spec.fix}"
        self.shown.append(shown)
        self.findings.append(Finding(line, col, code, rule_id(rule), message, self.path))

    def segment(self, node: ast.AST) -> str:
        """The node's source on one line, shortened if long."""
        text = ast.get_source_segment(self.text, node) or ast.unparse(node)
        first, *rest = text.splitlines() or [""]
        text = first + (" ..." if rest else "")
        return text if len(text) <= 72 else text[:69] + "..."

    def kind(self, node: ast.expr) -> str | None:
        """'set' or 'path' when the expression surely is one."""
        return expr_kind(node, self.scope, self.scope.kinds)

    def check_function(self, node: ast.FunctionDef) -> None:
        """Check the workflow: its defaults, then every statement of its body."""
        self.check_defaults(node.args)
        for stmt in node.body:
            self.visit(stmt)

    def check_defaults(self, args: ast.arguments) -> None:
        """Flag mutable default values."""
        positional = args.posonlyargs + args.args
        pairs = list(
            zip(positional[len(positional) - len(args.defaults) :], args.defaults, strict=True)
        )
        pairs += [
            (a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None
        ]
        for arg, default in pairs:
            factory = self.scope.resolve(default.func) if isinstance(default, ast.Call) else None
            literal = (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp)
            if isinstance(default, literal) or factory in _MUTABLE_FACTORIES:
                code = f"{arg.arg}={self.segment(default)}"
                self.report(default, "mutable-default", code)

    # Nested functions run as part of the workflow when it calls them; steps do not.
    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if not any(
            self.scope.resolve(_decorator(d)) in _STEP_DECORATORS for d in node.decorator_list
        ):
            for stmt in node.body:
                self.visit(stmt)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        for stmt in node.body:
            self.visit(stmt)

    def visit_Global(self, node: ast.Global) -> None:
        self.report(node, "global-state")

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        self.report(node, "global-state")

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.visit(node.target)  # the annotation is not run
        if node.value is not None:
            self.visit(node.value)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.check_name(node, None)
            self.check_global_value(node)

    def check_global_value(self, node: ast.Name) -> None:
        """A module global (or closed-over value) that is per-thread state or a helper."""
        found, value = self.scope.module_global(node.id)
        if not found and node.id in self.scope.closure and node.id not in self.scope.locals:
            found, value = True, self.scope.closure[node.id]
        if not found:
            return
        if isinstance(value, _PER_THREAD):
            self.report(node, "thread-id")
        elif (
            isinstance(value, types.FunctionType)
            and value.__module__ == self.scope.globals.get("__name__")
            and value.__globals__ is self.scope.globals
        ):
            self.helpers.append((value, node.lineno))

    def visit_FormattedValue(self, node: ast.FormattedValue) -> None:
        if node.conversion != ord("a") and self.kind(node.value) == "object":
            self.report(node.value, "address")  # f"{obj}", f"{obj!r}"
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if isinstance(node.op, ast.Mod) and isinstance(node.left, ast.Constant):
            values = node.right.elts if isinstance(node.right, ast.Tuple) else [node.right]
            for value in values:  # "%s" % obj, "%r" % (obj,)
                if self.kind(value) == "object":
                    self.report(value, "address")
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if not isinstance(node.ctx, ast.Load):
            self.check_store(node, node.value)
        if self.scope.resolve(node) is None:
            self.generic_visit(node)
        else:
            self.check_name(node, None)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if not isinstance(node.ctx, ast.Load):
            self.check_store(node, node.value)
        name = self.scope.resolve(node.value)
        if name and rule_for(name, None) == "environ":
            self.report(node, "environ", name=name)  # the whole `os.environ["X"]`
            self.visit(node.slice)
        else:
            self.generic_visit(node)

    def check_name(self, node: ast.Name | ast.Attribute, call: ast.Call | None) -> None:
        """Report a use of a name that breaks replay."""
        name = self.scope.resolve(node)
        rule = rule_for(name, call) if name else None
        if name and rule:
            self.report(call or node, rule, name=name)

    def check_store(self, node: ast.expr, target: ast.expr) -> None:
        """Flag `X[k] = v`, `X.a = v` and `del X[k]` on a module global X."""
        if isinstance(target, ast.Name) and self.scope.module_global(target.id)[0]:
            self.report(node, "global-state")

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name):
            self.check_global_value(func)
        if isinstance(func, ast.Name | ast.Attribute) and self.scope.resolve(func) is not None:
            self.check_name(func, node)
            self.check_consumer(node, self.scope.resolve(func))
            if self.scope.resolve(func) in _TO_TEXT:  # repr(obj), str(obj)
                self.check_text_of(node.args[:1])
            if self.scope.resolve(func) in _ORDER_FREE:  # sorted(x for x in some_set)
                self.order_free.update(id(a) for a in node.args if isinstance(a, _COMPREHENSIONS))
        else:
            if isinstance(func, ast.Attribute):
                self.check_method(node, func)
            self.visit(func)
        for arg in node.args:
            self.visit(arg)
        for keyword in node.keywords:
            self.visit(keyword.value)

    def check_method(self, call: ast.Call, func: ast.Attribute) -> None:
        """Methods whose receiver matters: path I/O, set.pop, mutating a module global."""
        receiver = self.kind(func.value)
        if func.attr in _PATH_METHODS or (
            receiver == "path" and func.attr in _PATH_METHODS_ON_PATHS
        ):
            self.report(call, "io")
        elif receiver == "set" and func.attr == "pop" and not call.args:
            self.report(call, "set-order")
        elif func.attr == "join" and call.args:
            self.check_iterated(call.args[0], call)
        elif func.attr == "format" and isinstance(func.value, ast.Constant):
            self.check_text_of([*call.args, *(k.value for k in call.keywords)])
        if isinstance(func.value, ast.Name) and func.attr in _MUTATORS:
            found, value = self.scope.module_global(func.value.id)
            if found and isinstance(value, _MUTABLE_TYPES):
                self.report(call, "global-state")

    def check_text_of(self, values: list[ast.expr]) -> None:
        """Flag values turned into text that have the default repr (an address)."""
        for value in values:
            if self.kind(value) == "object":
                self.report(value, "address")

    def check_consumer(self, call: ast.Call, func: str | None) -> None:
        """list(s), tuple(s), enumerate(s)...: the order of a set becomes visible."""
        if func in _ORDERED_CONSUMERS:
            for arg in call.args:
                self.check_iterated(arg, call)

    def check_iterated(self, iterable: ast.expr, where: ast.AST, code: str | None = None) -> None:
        """Flag iterating over an expression that is a set."""
        if self.kind(iterable) == "set":
            self.report(where, "set-order", code)

    def visit_For(self, node: ast.For) -> None:
        self.check_iterated(node.iter, node, self.loop_text(node.target, node.iter))
        self.generic_visit(node)

    def visit_AsyncFor(self, node: ast.AsyncFor) -> None:
        self.check_iterated(node.iter, node, "async " + self.loop_text(node.target, node.iter))
        self.generic_visit(node)

    def visit_ListComp(self, node: ast.ListComp | ast.GeneratorExp | ast.DictComp) -> None:
        if id(node) not in self.order_free:
            for loop in node.generators:
                self.check_iterated(loop.iter, loop.iter, self.loop_text(loop.target, loop.iter))
        self.generic_visit(node)

    def loop_text(self, target: ast.expr, iterable: ast.expr) -> str:
        """`for x in xs`, for a finding's code."""
        return f"for {ast.unparse(target)} in {self.segment(iterable)}"

    visit_GeneratorExp = visit_DictComp = visit_ListComp

    def visit_Assign(self, node: ast.Assign) -> None:
        if any(isinstance(t, ast.Tuple | ast.List) for t in node.targets):
            self.check_iterated(node.value, node)  # a, b = some_set
        self.generic_visit(node)

    def visit_Starred(self, node: ast.Starred) -> None:
        if isinstance(node.ctx, ast.Load):
            self.check_iterated(node.value, node)  # [*some_set]
        self.generic_visit(node)


def _decorator(node: ast.expr) -> ast.expr:
    return node.func if isinstance(node, ast.Call) else node
