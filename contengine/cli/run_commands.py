"""`contengine worker`, `start` and `result`: run workflows from a shell, no main.py needed.

contengine worker --import app.flows --db app.db        # drives runs until SIGTERM
contengine start app.checkout '["o-1", 500]' --db app.db   # prints the new run's id
contengine result order-o-1 --timeout 60 --db app.db    # waits; prints it as JSON
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from ..errors import Cancelled, ContengineError, RunNotFound, WorkflowNotFound
from ..store.postgres.url import is_postgres_url, redacted
from ..testing.imports import add_import_option, cwd_importable, import_modules
from .common import CommandError, open_engine, report
from .render import exc_text

COMMANDS = ("worker", "start", "result")

log = logging.getLogger("contengine")


def add_parsers(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the worker, start and result commands to the subcommand parsers."""

    def command(name: str, text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, parents=parents, help=text)
        add_import_option(parser)
        return parser

    worker = command("worker", "drive runs until SIGTERM or Ctrl-C (several may share a db)")
    worker.add_argument("--threads", type=int, default=8, help="runs driven at once (8)")
    worker.add_argument(
        "--grace", type=float, default=30.0, help="seconds running steps get to finish at a stop"
    )
    worker.add_argument(
        "--wal-autocheckpoint",
        type=int,
        metavar="PAGES",
        help="SQLite: checkpoint after a commit past this many pages of WAL (default 1000); "
        "0: never, for a file Litestream replicates (it checkpoints)",
    )
    start = command("start", "start a run of a workflow; prints its id")
    start.add_argument("workflow", help="the workflow's name, as @ce.workflow registers it")
    start.add_argument(
        "arguments",
        nargs="?",
        default="[]",
        metavar="ARGS_JSON",
        help="a JSON list of arguments, or an object of keyword arguments (default: [])",
    )
    start.add_argument("--id", dest="run_id", help="the run's id (default: a fresh one)")
    start.add_argument("--queue", help="the queue whose limits the run is claimed under")
    start.add_argument("--tag", dest="tags", action="append", default=[], help="(repeatable)")
    start.add_argument("--priority", type=int, default=0, help="higher is claimed first")
    result = command("result", "wait for a run to end; print its result as JSON")
    result.add_argument("run_id")
    result.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="give up after this long (exit 1)"
    )


def main(args: argparse.Namespace) -> int:
    """Run worker, start or result against args.db; returns the exit code."""
    if not args.db:
        raise CommandError("no database given: pass --db FILE or set CONTENGINE_DB", 2)
    arguments = _arguments(args.arguments) if args.command == "start" else None
    if args.command == "worker" and args.threads < 1:
        raise CommandError(f"--threads must be at least 1, not {args.threads}", 2)
    if args.command == "worker" and not args.grace >= 0:
        raise CommandError(f"--grace must be >= 0 seconds, not {args.grace}", 2)
    if args.command == "worker" and args.wal_autocheckpoint is not None:
        if not 0 <= args.wal_autocheckpoint <= 2**31 - 1:
            raise CommandError(
                f"--wal-autocheckpoint must be a number of pages from 0 to {2**31 - 1} "
                f"(0: never), not {args.wal_autocheckpoint}",
                2,
            )
        if is_postgres_url(args.db):
            raise CommandError(
                "--wal-autocheckpoint is for an SQLite file; a PostgreSQL server "
                "checkpoints on its own: leave it out",
                2,
            )
    if args.command == "result" and args.timeout is not None and not args.timeout >= 0:
        raise CommandError(f"--timeout must be >= 0 seconds, not {args.timeout}", 2)
    with cwd_importable():
        try:
            import_modules(args.imports)
        except ValueError as exc:
            raise CommandError(str(exc), 2) from exc
        if args.command == "worker":
            return _worker(args)
        if args.command == "start":
            assert arguments is not None
            return _start(args, arguments)
        return _result(args)


# engine.start()'s own keywords: a workflow's keyword argument cannot be passed by one.
_START_KEYWORDS = ("id", "tags", "queue", "priority")


def _arguments(text: str) -> tuple[list[Any], dict[str, Any]]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise CommandError(f"ARGS_JSON is not JSON ({exc}): {shown!r}", 2) from None
    if isinstance(value, list):
        return value, {}
    if isinstance(value, dict):
        taken = [k for k in _START_KEYWORDS if k in value]
        if taken:
            raise CommandError(
                f"keyword arguments named {', '.join(taken)} cannot be given in ARGS_JSON "
                f"(start takes them as --id, --tag, --queue, --priority): pass them by "
                f"position in a JSON list",
                2,
            )
        return [], value
    raise CommandError(
        f"ARGS_JSON must be a JSON list (arguments) or object (keyword arguments), not {text!r}",
        2,
    )


def _worker(args: argparse.Namespace) -> int:
    _log_to_stderr()
    db = args.db
    shown = redacted(db) if is_postgres_url(db) else db
    if not is_postgres_url(db) and not os.path.exists(db):
        log.info("no database at %s: creating it", shown)
    with open_engine(db, create=True, wal_autocheckpoint=args.wal_autocheckpoint) as engine:
        log.info(
            "worker started on %s: pid %d, %d threads; SIGTERM or Ctrl-C stops it",
            shown,
            os.getpid(),
            args.threads,
        )
        try:
            engine.work(args.threads, grace=args.grace)
        except ContengineError as exc:
            raise CommandError(f"the worker stopped: {exc}") from exc
        log.info("worker stopped: it claims nothing more and has let its leases go")
    return 0


def _log_to_stderr() -> None:
    """Show the engine's INFO records on stderr, unless the app configured logging."""
    if logging.getLogger().handlers or log.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def _start(args: argparse.Namespace, arguments: tuple[list[Any], dict[str, Any]]) -> int:
    positional, keywords = arguments
    with open_engine(args.db) as engine:
        try:
            run = engine.start(
                args.workflow,
                *positional,
                id=args.run_id,
                tags=args.tags,
                queue=args.queue,
                priority=args.priority,
                **keywords,
            )
        except WorkflowNotFound as exc:
            hint = (
                "is the name the one @ce.workflow registers (module.function, unless the "
                "decorator gives name=)?"
                if args.imports
                else "pass --import MODULE to register it"
            )
            raise CommandError(f"{exc} ({hint})", 2) from exc
        except (TypeError, ValueError) as exc:  # arguments, an id, a priority refused
            raise CommandError(str(exc), 2) from exc
        except ContengineError as exc:
            raise CommandError(str(exc)) from exc
    report(args, run.id, {"run_id": run.id, "workflow": run.workflow})
    return 0


def _result(args: argparse.Namespace) -> int:
    with open_engine(args.db) as engine:
        try:
            run = engine.get_run(args.run_id)
        except RunNotFound as exc:
            raise CommandError(str(exc)) from exc
        try:
            value = run.result(args.timeout)
        except WorkflowNotFound as exc:
            raise CommandError(
                f"{exc}; no worker is driving this database: start one "
                f"(contengine worker --import MODULE) or pass --import MODULE"
            ) from exc
        except (Exception, Cancelled) as exc:
            # The run failed or was cancelled, the wait timed out, or the result cannot be
            # read here: one line, exit 1.
            raise CommandError(f"run {run.id!r} {_ended(run.status)}: {exc_text(exc)}") from exc
    text = _shown(value)
    # --json: the value where JSON holds it, else null and its repr() as text.
    exact = _as_json(value) is not None
    # A result is returned only by a completed run (the engine is closed by now).
    shown = {"run_id": run.id, "status": "completed", "result": value if exact else None}
    report(args, text, shown | {"repr": None if exact else text})
    return 0


def _as_json(value: Any) -> str | None:
    """The value as JSON if JSON holds it exactly enough (no NaN), else None."""
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None


def _shown(value: Any) -> str:
    """The result as JSON where JSON holds it exactly enough (no NaN), else as repr()."""
    as_json = _as_json(value)
    if as_json is not None:
        return as_json
    try:
        return repr(value)
    except Exception as exc:  # an int past Python's digit limit, a broken __repr__
        return f"<a {type(value).__name__} that cannot be shown: {exc}>"


def _ended(status: str) -> str:
    if status in ("failed", "cancelled"):
        return f"ended {status}"
    if status == "completed":
        return "completed, but its result cannot be read here"
    return f"has not finished ({status})"
