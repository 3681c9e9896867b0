"""Operator commands (signal, cancel, retry, fork, export, import, gc, backup) on a database."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import TYPE_CHECKING, Any, TextIO

from ..core.ids import checked_ref
from ..engine.retrying import plan_retry
from ..engine.transfer import check_export, checked_id
from ..errors import ContengineError
from ..store.postgres.url import is_postgres_url, redacted
from .bulk import add_filters, is_bulk, run_bulk
from .common import CommandError, open_engine, parse_duration, report

if TYPE_CHECKING:
    from ..engine.engine import Engine

# The operator commands; each takes a database (--db).
COMMANDS = ("signal", "cancel", "gc", "backup", "retry", "fork", "export", "import")


def add_parsers(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the operator commands to the `contengine` subcommand parsers, each with parents
    (the options every command shares)."""

    def command(name: str, text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, parents=parents, help=text)
        return parser

    signal = command("signal", "send a signal (a JSON payload) to a run")
    signal.add_argument("run_id")
    signal.add_argument("name", help="the signal's name, as the run's ce.wait(name) has it")
    signal.add_argument("payload", help="the payload as JSON, e.g. '{\"ok\": true}'")
    cancel = command("cancel", "cancel a run (and its unfinished children), or runs chosen")
    cancel.add_argument("run_id", nargs="?")
    add_filters(cancel, "cancel")
    gc = command("gc", "delete runs that finished long ago, with their logs")
    gc.add_argument(
        "--older-than", required=True, metavar="AGE", help="with its unit: 30d, 12h, 90m, 45s"
    )
    gc.add_argument(
        "--dry-run", action="store_true", help="say how many runs would go; delete nothing"
    )
    backup = command(
        "backup", "copy the database (or a PostgreSQL schema) to a new SQLite file, while in use"
    )
    backup.add_argument("dest", help="the new SQLite database file (never overwritten)")
    retry = command("retry", "resume a failed or cancelled run where it stopped, or runs chosen")
    retry.add_argument("run_id", nargs="?")
    add_filters(retry, "retry")
    retry.add_argument(
        "--at", type=int, metavar="N", help="resume at position N instead (entries kept: N)"
    )
    fork = command("fork", "a new run from a copy of the first N log entries")
    fork.add_argument("run_id")
    fork.add_argument("--at", type=int, required=True, metavar="N", help="entries to keep")
    fork.add_argument("--id", dest="new_id", help="the new run's id (default: a fresh one)")
    export = command("export", "print a run (log, pending signals) as JSON")
    export.add_argument("run_id")
    imp = command("import", "recreate an exported run in this database")
    imp.add_argument("file", help="a file written by `contengine export` ('-': stdin)")
    imp.add_argument("--id", dest="new_id", help="import under this id instead")


def main(args: argparse.Namespace) -> int:
    """Run one operator command against args.db; returns the exit code."""
    # Arguments are checked before the database is opened.
    if args.command == "signal" and not args.name:
        raise CommandError("a signal name must be a non-empty string", 2)
    payload = _json(args.payload) if args.command == "signal" else None
    bulk = args.command in ("cancel", "retry") and is_bulk(args)
    age = parse_duration(args.older_than) if args.command == "gc" else 0.0
    if math.isinf(age):
        raise CommandError("--older-than is too large", 2)
    data = _read_export(args.file) if args.command == "import" else None
    try:
        if getattr(args, "run_id", None) is not None:
            checked_ref(args.run_id)
        if getattr(args, "new_id", None) is not None:
            checked_id(args.new_id)
        if args.command == "import":
            check_export(data, args.new_id)
    except ValueError as exc:
        raise CommandError(str(exc), 2) from None
    except ContengineError as exc:
        raise CommandError(str(exc)) from None
    # A server's schema is created on first use too, but there is no file to announce.
    created = (
        args.command == "import"
        and bool(args.db)
        and not is_postgres_url(args.db)
        and not os.path.exists(args.db)
    )
    # An import may be the first thing in a new database (moving a run to a new file).
    with open_engine(
        args.db, create=args.command == "import", readonly=args.command == "export"
    ) as engine:
        if created and not args.json:  # with --json, import's object says so
            print(f"created a new database at {args.db!r}")
        try:
            if bulk:
                return run_bulk(engine, args)
            if args.command == "signal":
                engine.signal(args.run_id, args.name, payload)
                text = f"sent signal {args.name!r} to run {args.run_id!r}"
                report(args, text, {"run_id": args.run_id, "signal": args.name, "sent": True})
            elif args.command == "cancel":
                if engine.cancel(args.run_id):
                    # Another process's engine delivers it when it next drives or waits.
                    text = f"cancelled run {args.run_id!r} (delivered when it is next driven)"
                    report(args, text, {"run_id": args.run_id, "cancelled": True})
                else:
                    # Nothing was cancelled: a failure, so a script sees it (exit 1).
                    status = engine.get_run(args.run_id).status
                    raise CommandError(
                        f"run {args.run_id!r} had already finished ({status}); nothing changed"
                    )
            elif args.command in ("retry", "fork", "export", "import"):
                _move(engine, args, data, created)
            elif args.command == "gc" and args.dry_run:
                count = engine.gc(age, dry_run=True)
                text = (
                    f"would delete {count} finished run{'' if count == 1 else 's'} "
                    f"(--dry-run: nothing was deleted)"
                )
                report(args, text, {"deleted": 0, "would_delete": count, "dry_run": True})
            elif args.command == "gc":
                deleted = _gc(engine, age, Progress())
                text = f"deleted {deleted} finished run{'' if deleted == 1 else 's'}"
                report(args, text, {"deleted": deleted, "would_delete": deleted, "dry_run": False})
            else:
                # A URL's password is never printed.
                source = redacted(args.db)
                _backup(engine, source, args.dest, Progress())
                text = f"backed up {source} to {args.dest}"
                report(args, text, {"source": source, "dest": args.dest})
        except ContengineError as exc:
            # The engine's message names the run and what was (not) done.
            raise CommandError(str(exc)) from exc
    return 0


class Progress:
    """A progress line, rewritten in place on a terminal; silent when the stream is not one."""

    def __init__(self, stream: TextIO | None = None, is_tty: bool | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.on = self.stream.isatty() if is_tty is None else is_tty
        self._shown = False

    def update(self, text: str) -> None:
        """Show text as the current progress line (erasing the previous one)."""
        if self.on:
            self.stream.write(f"\r{text}\x1b[K")
            self.stream.flush()
            self._shown = True

    def finish(self) -> None:
        """End the progress line, so that what is printed next starts on its own line."""
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False


def _gc(engine: Engine, age: float, progress: Progress) -> int:
    """engine.gc(age), showing the runs deleted so far after each batch; returns the count."""
    try:
        return engine.gc(
            age, on_batch=lambda total: progress.update(f"gc: deleted {total} finished runs so far")
        )
    finally:
        progress.finish()


def _backup(engine: Engine, db: str, dest: str, progress: Progress) -> None:
    """engine.backup(dest), with a line while it copies (the store reports no page counts)."""
    progress.update(f"backup: copying {db} to {dest} ...")
    try:
        engine.backup(dest)
        progress.update(f"backup: copied {db} to {dest}")
    finally:
        progress.finish()


def _move(engine: Engine, args: argparse.Namespace, data: Any, created: bool) -> None:
    """retry, fork, export or import; prints what was done (export: the JSON, with or
    without --json)."""
    if args.command == "retry":
        # Planned here to say what was done; rewind() refuses it if the run changed since.
        plan = plan_retry(engine.store, args.run_id, args.at)
        was = {step.run_id: engine.get_run(step.run_id).status for step in plan}
        engine.rewind(plan)
        lines = []
        for n, step in enumerate(plan):
            what = (
                f"run {step.run_id!r}"
                if n == 0
                else f"  and its {was[step.run_id]} child run {step.run_id!r}"
            )
            lines.append(
                f"{what} is pending again; it resumes at position {step.position} when driven"
            )
        # The first is the run named; the rest its children, retried with it.
        pending = [{"run_id": step.run_id, "position": step.position} for step in plan]
        report(args, "\n".join(lines), {"run_id": args.run_id, "retried": pending})
    elif args.command == "fork":
        run = engine.fork(args.run_id, args.at, args.new_id)
        text = f"forked run {args.run_id!r} at {args.at} as {run.id!r} (pending)"
        report(args, text, {"run_id": args.run_id, "at": args.at, "new_run_id": run.id})
    elif args.command == "export":
        print(json.dumps(engine.export_run(args.run_id), indent=1))
    else:
        run = engine.import_run(data, args.new_id)
        text = f"imported run {run.id!r} ({run.status})"
        shown = {"run_id": run.id, "status": run.status, "created_database": created}
        report(args, text, shown)


def _read_export(path: str) -> Any:
    try:
        if path == "-":
            return json.load(sys.stdin)
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as exc:
        raise CommandError(f"cannot read {path!r}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CommandError(f"{path!r} is not JSON written by `contengine export`: {exc}") from None


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise CommandError(f"the payload {shown!r} is not valid JSON: {exc}", 2) from None
