"""A static look at a workflow's body for code whose value or effect can differ on replay.

The body and the functions of the workflow's own module that it calls (and that those
call) are read; steps, child workflows and other modules' functions are not. The rules
cover the clock, randomness, ids, the environment, I/O, and everything that differs
between the process or thread that recorded a run and the one replaying it (process and
user ids, host, platform, locale, time zone, argv, cwd, thread ids, per-thread state,
set order, hashes and addresses).
"""

from __future__ import annotations

import ast
import collections
import contextlib
import contextvars
import dataclasses
import inspect
import os
import re
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.workflow import Workflow
from ..errors import ContengineError
from .lint_scope import Scope, expr_kind, module_imports

__all__ = ["Finding", "lint"]


@dataclass(frozen=True)
class Finding:
    """One place in a workflow's body that can behave differently on replay."""

    line: int
    col: int
    code: str
    rule: str
    message: str
    path: str = ""

    def __str__(self) -> str:
        return f"{self.path or '<unknown>'}:{self.line}: {self.message} [{self.rule}]"


@dataclass(frozen=True)
class _Rule:
    why: str
    fix: str


_RULES: dict[str, _Rule] = {
    "time": _Rule(
        "reads the wall clock, which gives another value on replay",
        "use `now = yield ce.now()` (logged once, the same on every replay)",
    ),
    "duration": _Rule(
        "reads a clock that gives another value on replay",
        "time the work inside a step, or use `now = yield ce.now()`",
    ),
    "sleep": _Rule(
        "blocks the engine's thread, and a crash forgets how long was left",
        "use `yield ce.sleep(seconds)`, a durable timer",
    ),
    "random": _Rule(
        "draws another value on replay",
        "use `r = yield ce.random()` (logged once), or random.Random(seed) seeded from it",
    ),
    "uuid": _Rule("makes another id on replay", "use `u = yield ce.uuid()`"),
    "environ": _Rule(
        "is read again on replay, maybe in another process where it differs",
        "pass the value as an argument, or read it in a step",
    ),
    "io": _Rule(
        "touches files, which is not logged: it runs again on every replay and may find "
        "other contents",
        "do it in a step (`text = yield read_config(path)`) so the outcome is logged",
    ),
    "network": _Rule(
        "talks to the network, which is not logged: it runs again on every replay and may "
        "get another answer",
        "make it a step",
    ),
    "process": _Rule("runs a program again on every replay", "make it a step"),
    "host": _Rule(
        "differs from one process or machine to the next, and a replay may run elsewhere",
        "pass it as an argument, or get it in a step",
    ),
    "thread-id": _Rule(
        "differs from one thread to the next, and a replay may run in another thread or process",
        "pass the value as an argument, or get it in a step",
    ),
    "address": _Rule(
        "shows the object's default repr, which holds its memory address: another text in "
        "every process and on every replay",
        "give the class a __repr__ (a @dataclass has one), or show a key you choose",
    ),
    "thread": _Rule(
        "runs work beside the workflow's yields, neither logged nor replayed, finishing at "
        "another moment each time",
        "make the work steps and run them together with `yield ce.gather(...)`",
    ),
    "set-order": _Rule(
        "iterates a set, whose order for strings and objects changes with PYTHONHASHSEED "
        "from one process to the next",
        "iterate sorted(...) instead, or keep the items in a list or a dict",
    ),
    "id": _Rule(
        "is a memory address, different in every process and on every replay",
        "use a key you choose (an order id, a position)",
    ),
    "hash": _Rule(
        "differs between processes for str and bytes (PYTHONHASHSEED) and is an address "
        "for most objects",
        "use a stable digest such as hashlib.sha256(...).hexdigest(), or a key you choose",
    ),
    "global-state": _Rule(
        "changes state that outlives the run: a replay, or the next run in this process, "
        "sees what earlier runs left there",
        "keep the value in a local variable, or get it from a step",
    ),
    "mutable-default": _Rule(
        "is one object made once and shared by every run in the process, so a change one "
        "run makes is seen by the next and by replays",
        "default to None and make a fresh one in the body",
    ),
}


def _table(groups: dict[str, str]) -> dict[str, str]:
    """{"rule": "name1 name2"} -> {"name1": "rule", "name2": "rule"}."""
    return {name: rule for rule, names in groups.items() for name in names.split()}


# Fully qualified names (after resolving imports and aliases) and the rule each breaks.
_EXACT = _table(
    {
        "time": "time.time time.time_ns time.clock_gettime time.clock_gettime_ns "
        "datetime.datetime.now datetime.datetime.utcnow "
        "datetime.datetime.today datetime.date.today arrow.now arrow.utcnow pendulum.now",
        "duration": "time.monotonic time.monotonic_ns time.perf_counter time.perf_counter_ns "
        "time.process_time time.process_time_ns time.thread_time",
        "sleep": "time.sleep",
        "random": "os.urandom os.getrandom",
        "uuid": "uuid.uuid1 uuid.uuid4",
        "environ": "os.environ os.environb os.getenv os.getenvb",
        "io": "builtins.open builtins.input io.open io.open_code os.open os.listdir os.scandir "
        "os.walk os.stat os.remove os.unlink os.rename os.replace os.mkdir os.makedirs os.rmdir "
        "os.path.exists os.path.lexists os.path.isfile os.path.isdir os.path.islink "
        "os.path.getsize os.path.getmtime os.path.getatime os.path.getctime",
        "process": "os.system os.popen os.spawnl os.spawnv",
        "host": "os.getpid os.getppid os.getcwd os.getcwdb os.getuid os.geteuid os.getgid "
        "os.getegid os.getlogin os.uname os.cpu_count os.getloadavg os.times "
        "os.get_terminal_size platform.node socket.gethostname socket.getfqdn getpass.getuser "
        "uuid.getnode sys.argv sys.orig_argv time.tzname time.timezone time.altzone "
        "time.daylight pathlib.Path.cwd pathlib.Path.home",
        "thread-id": "threading.get_ident threading.get_native_id threading.current_thread "
        "threading.currentThread threading.main_thread threading.active_count "
        "threading.activeCount threading.enumerate threading.local _thread.get_ident "
        "_thread.get_native_id contextvars.copy_context",
        "thread": "threading.Thread threading.Timer _thread.start_new_thread",
        "id": "builtins.id",
        "hash": "builtins.hash",
    }
)

# Calls into these modules break replay (exception classes aside).
_PREFIXES = _table(
    {
        "random": "random. secrets. numpy.random.",
        "network": "socket. requests. httpx. urllib.request. urllib3. http.client. aiohttp. "
        "smtplib. ftplib.",
        "process": "subprocess.",
        "thread": "concurrent.futures. multiprocessing.",
        "io": "shutil. glob. tempfile.",
        "host": "platform. locale.",
    }
)

# Seeded generators are deterministic: only their unseeded construction is flagged.
_SEEDABLE = {"random.Random", "numpy.random.default_rng", "numpy.random.RandomState"}
# These read the current time only when no time is passed: max positional args that do.
_CLOCK_WITHOUT_ARG = {"time.localtime": 0, "time.gmtime": 0, "time.ctime": 0, "time.strftime": 1}

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
_IGNORE = re.compile(r"#\s*contengine:\s*ignore(?:\[([\w\s,-]+)\])?")


def lint(
    workflow: Workflow[Any, Any] | Callable[..., Any], *, strict: bool = False
) -> list[Finding]:
    """Findings in the workflow's body, and in the functions of its module that it calls,
    that break replay; strict=True raises AssertionError."""
    fn = _function_of(workflow)
    name = workflow.name if isinstance(workflow, Workflow) else fn.__qualname__
    path, text, tree, node = _source_of(fn, name)
    imports = module_imports(tree, fn.__globals__.get("__package__"))
    checker = _Checker(Scope(fn, node, imports), text, _display_path(path))
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
    checked: dict[types.FunctionType, _Checker] = {}
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
        checker = _Checker(Scope(helper, node, imports), text, _display_path(path))
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


# -- the checks --------------------------------------------------------------------------------


def _match(name: str, call: ast.Call | None) -> str | None:
    """The rule a use of the dotted name breaks (call: the call it is made in, if any)."""
    if name in _CLOCK_WITHOUT_ARG:
        return "time" if call is not None and len(call.args) <= _CLOCK_WITHOUT_ARG[name] else None
    if name in _EXACT:
        return _EXACT[name]
    # os.environ.get(...), os.environ["X"]: the mapping's methods read it too.
    parts = name.split(".")
    for i in range(len(parts) - 1, 1, -1):
        if _EXACT.get(".".join(parts[:i])) == "environ":
            return "environ"
    if call is None or name.rsplit(".", 1)[-1].endswith(("Error", "Exception", "Warning")):
        return None
    if name in _SEEDABLE and (call.args or call.keywords):
        return None
    return next((rule for prefix, rule in _PREFIXES.items() if name.startswith(prefix)), None)


class _Checker(ast.NodeVisitor):
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
        spec = _RULES[rule]
        alias = name and not name.startswith("builtins.") and not code.startswith(name)
        shown = f"`{code}`" + (f" ({name})" if alias else "")
        line, col = getattr(node, "lineno", 0), getattr(node, "col_offset", 0)
        message = f"{shown} {spec.why}: {spec.fix}"
        self.shown.append(shown)
        self.findings.append(Finding(line, col, code, _rule_id(rule), message, self.path))

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
        if name and _match(name, None) == "environ":
            self.report(node, "environ", name=name)  # the whole `os.environ["X"]`
            self.visit(node.slice)
        else:
            self.generic_visit(node)

    def check_name(self, node: ast.Name | ast.Attribute, call: ast.Call | None) -> None:
        """Report a use of a name that breaks replay."""
        name = self.scope.resolve(node)
        rule = _match(name, call) if name else None
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


def _rule_id(rule: str) -> str:
    return "time" if rule == "duration" else rule
