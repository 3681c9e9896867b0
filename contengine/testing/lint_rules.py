"""The rules of ce.testing.lint: which names and calls break replay, why, and the fix."""

from __future__ import annotations

import ast
from dataclasses import dataclass


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
class Rule:
    """Why code breaking a rule differs on replay, and the replay-safe alternative."""

    why: str
    fix: str


# The rules cover the clock, randomness, ids, the environment, I/O, and everything that
# differs between the process or thread that recorded a run and the one replaying it
# (process and user ids, host, platform, locale, time zone, argv, cwd, thread ids,
# per-thread state, set order, hashes and addresses).
RULES: dict[str, Rule] = {
    "time": Rule(
        "reads the wall clock, which gives another value on replay",
        "use `now = yield ce.now()` (logged once, the same on every replay)",
    ),
    "duration": Rule(
        "reads a clock that gives another value on replay",
        "time the work inside a step, or use `now = yield ce.now()`",
    ),
    "sleep": Rule(
        "blocks the engine's thread, and a crash forgets how long was left",
        "use `yield ce.sleep(seconds)`, a durable timer",
    ),
    "random": Rule(
        "draws another value on replay",
        "use `r = yield ce.random()` (logged once), or random.Random(seed) seeded from it",
    ),
    "uuid": Rule("makes another id on replay", "use `u = yield ce.uuid()`"),
    "environ": Rule(
        "is read again on replay, maybe in another process where it differs",
        "pass the value as an argument, or read it in a step",
    ),
    "io": Rule(
        "touches files, which is not logged: it runs again on every replay and may find "
        "other contents",
        "do it in a step (`text = yield read_config(path)`) so the outcome is logged",
    ),
    "network": Rule(
        "talks to the network, which is not logged: it runs again on every replay and may "
        "get another answer",
        "make it a step",
    ),
    "process": Rule("runs a program again on every replay", "make it a step"),
    "host": Rule(
        "differs from one process or machine to the next, and a replay may run elsewhere",
        "pass it as an argument, or get it in a step",
    ),
    "thread-id": Rule(
        "differs from one thread to the next, and a replay may run in another thread or process",
        "pass the value as an argument, or get it in a step",
    ),
    "address": Rule(
        "shows the object's default repr, which holds its memory address: another text in "
        "every process and on every replay",
        "give the class a __repr__ (a @dataclass has one), or show a key you choose",
    ),
    "thread": Rule(
        "runs work beside the workflow's yields, neither logged nor replayed, finishing at "
        "another moment each time",
        "make the work steps and run them together with `yield ce.gather(...)`",
    ),
    "set-order": Rule(
        "iterates a set, whose order for strings and objects changes with PYTHONHASHSEED "
        "from one process to the next",
        "iterate sorted(...) instead, or keep the items in a list or a dict",
    ),
    "id": Rule(
        "is a memory address, different in every process and on every replay",
        "use a key you choose (an order id, a position)",
    ),
    "hash": Rule(
        "differs between processes for str and bytes (PYTHONHASHSEED) and is an address "
        "for most objects",
        "use a stable digest such as hashlib.sha256(...).hexdigest(), or a key you choose",
    ),
    "global-state": Rule(
        "changes state that outlives the run: a replay, or the next run in this process, "
        "sees what earlier runs left there",
        "keep the value in a local variable, or get it from a step",
    ),
    "mutable-default": Rule(
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


def rule_for(name: str, call: ast.Call | None) -> str | None:
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


def rule_id(rule: str) -> str:
    """The rule a finding names: "duration" is reported as "time"."""
    return "time" if rule == "duration" else rule
