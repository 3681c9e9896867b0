"""Offline replay: rebuild every recorded run of a database against the current code.

Each run's log is fed to the driver exactly as the engine would on a restart, but
nothing is carried out: no step runs, no timer fires, nothing is written. A run
whose replay yields a request other than the logged one would stop with
NonDeterminismError after a deploy; this finds it first. The database is copied
to a temporary file before it is opened, so the user's file is never written.

A run passes when its whole log replays: the code may go on past the log's end
(for a finished run too), since that is where a resumed run would carry on live.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..core.driver import Driver, describe_recorded
from ..core.run_context import RunInfo
from ..core.serde import Serde
from ..core.workflow import Workflow, lookup
from ..drive.log import decode_outcome
from ..errors import (
    ContengineError,
    DatabaseError,
    NonDeterminismError,
    RunNotFound,
    WorkflowNotFound,
)
from ..store.base import FINISHED, RUN_STATUSES, EntryRow, RunRow
from ..store.opening import open_store
from ..store.postgres.url import is_postgres_url, looks_like_url, other_url_error, redacted
from ..store.sqlite.store import SQLiteStore
from .imports import add_import_option, cwd_importable, import_modules

__all__ = [
    "DIVERGED",
    "ERROR",
    "MISSING",
    "OK",
    "ReplayReport",
    "RunReplay",
    "add_replay_command",
    "assert_replays",
    "replay",
    "replay_main",
]

OK, DIVERGED, MISSING, ERROR = "ok", "diverged", "missing", "error"
# status="unfinished" selects the runs a deploy would rebuild.
UNFINISHED = "unfinished"
UNFINISHED_STATUSES = tuple(s for s in RUN_STATUSES if s not in FINISHED)
# Log entries shown before the divergence in a diff.
CONTEXT = 3
ADVICE = (
    "Workflow code between yields must be deterministic. To change a workflow that has "
    "runs in flight, keep the old path for them behind "
    '`if (yield ce.patched("change-id")):` (see notes/workflows.md).'
)


@dataclass
class RunReplay:
    """How one recorded run replayed: ok, diverged, missing (workflow) or error."""

    run_id: str
    workflow: str
    status: str  # the run's recorded status
    outcome: str
    message: str = ""  # the error's text (NonDeterminismError's for a divergence)
    diff: str = ""  # the log around the divergence: recorded (-) against replayed (+)
    cause: str = ""  # the workflow's own exception, when that is what ended it early
    position: int | None = None  # where it diverged
    replayed: int = 0  # logged outcomes fed back before it stopped

    @property
    def ok(self) -> bool:
        """Whether the run replays against the current code."""
        return self.outcome == OK

    def __str__(self) -> str:
        head = f"run {self.run_id!r} ({self.workflow}, {self.status}): "
        if self.outcome == OK:
            return head + f"ok ({self.replayed} logged outcomes replayed)"
        if self.outcome == DIVERGED:
            headline = self.message.splitlines()[0] if self.message else ""
            reason = headline.partition(": ")[2] or headline
            lines = [head + f"diverged at position {self.position}: {reason}"]
            if self.cause:
                lines.append(f"    the workflow raised {self.cause}")
            lines += ["    " + line for line in self.diff.splitlines()]
            return "\n".join(lines)
        what = "workflow missing" if self.outcome == MISSING else "error"
        return head + what + "\n" + "\n".join("    " + ln for ln in self.message.splitlines())


@dataclass
class ReplayReport:
    """Every run replayed from one database, and which of them would break."""

    db_path: str
    runs: list[RunReplay] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every replayed run replays against the current code."""
        return not self.broken

    @property
    def broken(self) -> list[RunReplay]:
        """The runs that would not replay: diverged, workflow missing, or another error."""
        return [r for r in self.runs if not r.ok]

    def counts(self) -> dict[str, int]:
        """How many runs ended each way (ok, diverged, missing, error)."""
        out = dict.fromkeys((OK, DIVERGED, MISSING, ERROR), 0)
        for r in self.runs:
            out[r.outcome] += 1
        return out

    def summary(self) -> str:
        """One line: how many runs were replayed and how many are broken."""
        n = len(self.runs)
        counts = self.counts()
        line = f"replayed {n} run{'' if n == 1 else 's'} from {self.db_path}: {counts[OK]} ok"
        if self.broken:
            parts = [f"{counts[DIVERGED]} diverged"] if counts[DIVERGED] else []
            if counts[MISSING]:
                parts.append(f"{counts[MISSING]} with the workflow missing")
            if counts[ERROR]:
                parts.append(f"{counts[ERROR]} with errors")
            line += f", {len(self.broken)} broken ({', '.join(parts)})"
        return line + f" in {self.seconds:.2f} s"

    def __str__(self) -> str:
        blocks = [self.summary()] + [str(r) for r in self.broken]
        if any(r.outcome == DIVERGED for r in self.runs):
            blocks.append(ADVICE)
        return "\n\n".join(blocks)


def replay(
    db_path: str | os.PathLike[str],
    workflows: Iterable[Workflow[Any, Any]] | None = None,
    runs: Iterable[str] | None = None,
    status: str | Iterable[str] | None = None,
    *,
    secret: bytes | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayReport:
    """Replay recorded runs against the current code, running nothing; the database is only read.

    db_path is an SQLite file (copied first) or a postgresql:// URL (its schema is
    backed up into a temporary file from one snapshot first).

    Workflows are found as the engine finds them (given in `workflows`, registered
    by name, or imported from their recorded module:qualname). `runs` limits the
    replay to these ids, `status` to these statuses ("unfinished" for the runs a
    deploy would rebuild). `progress(done, total)` is called after each run.
    """
    extra = {wf.name: wf for wf in workflows or ()}
    wanted = _statuses(status)
    started = time.perf_counter()
    shown = os.fspath(db_path)
    report = ReplayReport(redacted(shown) if is_postgres_url(shown) else shown)
    with _snapshot(db_path) as copy:
        try:
            store = SQLiteStore(copy, durability="normal")
        except DatabaseError as exc:  # name the user's file, not the private copy
            raise DatabaseError(str(exc).replace(copy, report.db_path)) from exc
        try:
            rows = _select(store, runs, wanted)
            serde = Serde(secret)
            for i, row in enumerate(rows):
                report.runs.append(_replay_run(row, store.load_log(row.id), serde, extra))
                if progress is not None:
                    progress(i + 1, len(rows))
        finally:
            store.close()
    report.seconds = time.perf_counter() - started
    return report


def assert_replays(
    db_path: str | os.PathLike[str],
    workflows: Iterable[Workflow[Any, Any]] | None = None,
    runs: Iterable[str] | None = None,
    status: str | Iterable[str] | None = None,
    *,
    secret: bytes | None = None,
) -> ReplayReport:
    """replay(), raising AssertionError that lists every broken run with its diff."""
    report = replay(db_path, workflows, runs, status, secret=secret)
    if not report.ok:
        raise AssertionError(str(report))
    return report


# -- one run ---------------------------------------------------------------------


def _replay_run(
    row: RunRow, log: Sequence[EntryRow], serde: Serde, extra: dict[str, Workflow[Any, Any]]
) -> RunReplay:
    result = RunReplay(row.id, row.workflow, row.status, OK)
    try:
        wf = lookup(row.workflow, row.ref, extra)
    except WorkflowNotFound as exc:
        result.outcome, result.message = MISSING, str(exc)
        return result
    try:
        args, kwargs = serde.loads(row.args, f"the arguments of run {row.id!r}")
        gen = wf.fn(*args, **kwargs)
    except TypeError as exc:
        result.outcome = ERROR
        result.message = (
            f"its recorded arguments no longer fit workflow {wf.name!r} ({exc}); "
            f"a deploy would leave it stuck. Restore the signature."
        )
        return result
    except ContengineError as exc:
        result.outcome, result.message = ERROR, f"{type(exc).__name__}: {exc}"
        return result
    driver = Driver(
        gen,
        log,
        label=f"workflow {wf.name!r} (run {row.id!r})",
        decode=lambda entry: decode_outcome(serde, entry),
    )
    # Nothing here runs live (the replay stops at the first request without an outcome):
    # all of the body's code ran before, the part after a finished run's last yield too.
    driver.info = RunInfo(
        row.id, wf.name, row.parent_id, row.generation, lambda: (driver.position, True)
    )
    try:
        driver.start()  # stops at the first request without an outcome: nothing is run
    except NonDeterminismError as exc:
        result.outcome, result.position = DIVERGED, exc.position
        result.cause = _cause(exc)
        result.message = str(exc) + (
            f"\n  the workflow raised {result.cause}" if result.cause else ""
        )
        result.diff = render_diff(log, exc)
    except Exception as exc:  # invalid yields, corrupt payloads, a broken decode
        result.outcome, result.message = ERROR, f"{type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(Exception):  # a yield in a finally block, as the engine does
            gen.close()
    result.replayed = driver.replayed
    return result


def _cause(exc: NonDeterminismError) -> str:
    """The workflow's own exception (type: message) when it ended the replay early, else ""."""
    cause = exc.__context__
    if isinstance(cause, Exception) and not isinstance(cause, ContengineError | StopIteration):
        return f"{type(cause).__name__}: {cause}"
    return ""


def render_diff(log: Sequence[EntryRow], exc: NonDeterminismError) -> str:
    """The log up to a divergence, with the recorded request (-) against the replayed one (+)."""
    pos = exc.position
    width = len(str(max(len(log) - 1, pos, 0)))
    lines = [
        f"  {e.position:>{width}}  {describe_recorded(e)}" for e in log[max(0, pos - CONTEXT) : pos]
    ]
    if pos > CONTEXT:
        lines.insert(0, f"  {'':>{width}}  ... {pos - CONTEXT} earlier entries replayed the same")
    recorded = exc.recorded if exc.recorded is not None else "(nothing: the log ends here)"
    replayed = exc.replayed if exc.replayed is not None else "(nothing: the workflow ended here)"
    lines.append(f"- {pos:>{width}}  {recorded}")
    lines.append(f"+ {pos:>{width}}  {replayed}")
    after = len(log) - pos - 1
    if after > 0:
        more = f"{after} more recorded entr{'y' if after == 1 else 'ies'}"
        lines.append(f"  {'':>{width}}  ... {more}")
    return "\n".join(lines)


# -- the database ----------------------------------------------------------------


@contextlib.contextmanager
def _snapshot(db_path: str | os.PathLike[str]) -> Iterator[str]:
    """A private copy of the database (and its write-ahead log), deleted afterwards; of a
    PostgreSQL schema, its backup (one snapshot, written as an SQLite file)."""
    src = os.fspath(db_path)
    if is_postgres_url(src):
        with tempfile.TemporaryDirectory(prefix="contengine-replay-") as tmp:
            copy = os.path.join(tmp, "replay.db")
            server = open_store(src, create=False)
            try:
                server.backup(copy)
            finally:
                server.close()
            yield copy
        return
    if not os.path.isfile(src):
        raise FileNotFoundError(f"no database at {src!r}")
    with tempfile.TemporaryDirectory(prefix="contengine-replay-") as tmp:
        copy = os.path.join(tmp, "replay.db")
        # Commits not yet checkpointed live in the -wal file; SQLite rebuilds its index
        # (-shm) from it when the copy is opened. A file being written meanwhile may be
        # copied between two commits: replay a backup (`contengine backup`) of a live one.
        shutil.copyfile(src, copy)
        if os.path.isfile(src + "-wal"):
            shutil.copyfile(src + "-wal", copy + "-wal")
        yield copy


def _statuses(status: str | Iterable[str] | None) -> set[str] | None:
    if status is None:
        return None
    given = [status] if isinstance(status, str) else list(status)
    out: set[str] = set()
    for s in given:
        if s == UNFINISHED:
            out.update(UNFINISHED_STATUSES)
        elif s in RUN_STATUSES:
            out.add(s)
        else:
            raise ValueError(
                f"status must be one of {', '.join(RUN_STATUSES)} or {UNFINISHED!r}, not {s!r}"
            )
    return out


def _select(
    store: SQLiteStore, runs: Iterable[str] | None, wanted: set[str] | None
) -> list[RunRow]:
    if runs is None:
        rows = store.list_runs()
    else:
        rows = []
        for run_id in runs:
            row = store.get_run(run_id)
            if row is None:
                raise RunNotFound(f"no run with id {run_id!r} in this database")
            rows.append(row)
    return [r for r in rows if wanted is None or r.status in wanted]


# -- the command line ------------------------------------------------------------


def add_replay_command(
    sub: Any, parents: Sequence[argparse.ArgumentParser] = ()
) -> argparse.ArgumentParser:
    """Add `contengine replay DB --import MODULE ...` to the subcommand parsers (with
    parents: the options every command shares, --db among them)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "replay",
        parents=list(parents),
        help="replay recorded runs against the current code (runs nothing, writes nothing)",
        description=(
            "Rebuild every unfinished run (those a deploy resumes; --all: every run; "
            "--run, --status: those selected) from its log against the "
            "code importable now, as a restart after a deploy would, without running "
            "anything, and list each run that would break with its diff. The database "
            "is copied first (a PostgreSQL schema: backed up from one snapshot) and never "
            "written. Exit code 0: all replay; 1: some are "
            "broken; 2: bad input."
        ),
    )
    # Not dest "db": an absent positional would write its default over a --db given
    # before the command's name.
    p.add_argument(
        "database",
        nargs="?",
        metavar="db",
        help="database file or postgresql:// URL (or --db; default: $CONTENGINE_DB)",
    )
    add_import_option(p)
    p.add_argument(
        "--run", dest="runs", action="append", metavar="ID", help="only this run (repeatable)"
    )
    p.add_argument(
        "--status",
        action="append",
        metavar="STATUS",
        help="only runs with this status (repeatable; 'unfinished': those a deploy rebuilds)",
    )
    p.add_argument(
        "--all",
        dest="all_runs",
        action="store_true",
        help="every run, finished ones too (default: unfinished runs, or those --run names)",
    )
    return p


def replay_main(args: argparse.Namespace) -> int:
    """Run `contengine replay`: 0 if every run replays, 1 if some are broken, 2 on bad input."""
    db, option = getattr(args, "database", None), getattr(args, "db", None)
    if db is not None and option is not None and db != option:
        return _bad(
            f"two databases given, {redacted(db)!r} and --db {redacted(option)!r}: pass one"
        )
    db = db if db is not None else option if option is not None else os.environ.get("CONTENGINE_DB")
    if not db:
        return _bad(
            "no database given: pass the file (replay app.db, or --db) or set CONTENGINE_DB"
        )
    if looks_like_url(db) and not is_postgres_url(db):
        return _bad(str(other_url_error(db)))
    if not is_postgres_url(db) and not os.path.isfile(db):
        return _bad(f"no database at {db!r}")
    runs, status = getattr(args, "runs", None), getattr(args, "status", None)
    every = bool(getattr(args, "all_runs", False))
    if every and (runs or status):
        return _bad("--all replays every run: pass it without --run or --status")
    # By default the runs a deploy would resume: a finished run is never driven again,
    # so a change to code it went through breaks nothing (--all checks those too).
    unfinished_only = not every and not runs and not status
    if unfinished_only:
        status = [UNFINISHED]
    secret = os.environ.get("CONTENGINE_SECRET")
    with cwd_importable():
        try:
            import_modules(getattr(args, "imports", None) or [])
        except ValueError as exc:
            return _bad(str(exc))
        try:
            report = replay(
                db,
                runs=runs,
                status=status,
                secret=secret.encode() if secret else None,
                progress=_progress_line if sys.stderr.isatty() else None,
            )
        except (ContengineError, ValueError, OSError) as exc:
            return _bad(str(exc))
        finally:
            if sys.stderr.isatty():
                print("\r\033[K", end="", file=sys.stderr, flush=True)
    if getattr(args, "json", False):
        # One object: the summary's numbers and every run replayed, as RunReplay has it.
        runs_shown = [dataclasses.asdict(r) for r in report.runs]
        shown = {"database": report.db_path, "ok": report.ok, "counts": report.counts()}
        print(json.dumps(shown | {"seconds": report.seconds, "runs": runs_shown}))
        return 0 if report.ok else 1
    if not report.runs:
        where = redacted(db) if is_postgres_url(db) else db
        if unfinished_only:
            print(f"no unfinished runs to replay in {where} (--all replays finished runs too)")
        else:
            print(f"no runs to replay in {where}")
        return 0
    print(report)
    return 0 if report.ok else 1


def _bad(message: str) -> int:
    first = (message.strip().splitlines() or [""])[0]
    print(f"contengine: {first}", file=sys.stderr)
    return 2


def _progress_line(done: int, total: int) -> None:
    print(f"\rreplaying {done}/{total} runs", end="", file=sys.stderr, flush=True)
