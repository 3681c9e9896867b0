"""The `signal`, `cancel`, `gc` and `backup` commands: an operator's hands on a database."""

from __future__ import annotations

import argparse
import json
import os
import re
from typing import Any

from .cli import CommandError
from .errors import ContengineError

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([smhd]?)")


def add_parsers(sub: Any) -> None:
    """Add the operator commands to the `contengine` subcommand parsers."""
    db_help = "database file (default: $CONTENGINE_DB)"
    signal = sub.add_parser("signal", help="send a signal (a JSON payload) to a run")
    signal.add_argument("run_id")
    signal.add_argument("name", help="the signal's name, as the run's ce.wait(name) has it")
    signal.add_argument("payload", help="the payload as JSON, e.g. '{\"ok\": true}'")
    cancel = sub.add_parser("cancel", help="cancel a run (and its unfinished children)")
    cancel.add_argument("run_id")
    gc = sub.add_parser("gc", help="delete runs that finished long ago, with their logs")
    gc.add_argument("--older-than", required=True, metavar="AGE", help="e.g. 30d, 12h, 90m, 45s")
    backup = sub.add_parser("backup", help="copy the database to a new file, while it is in use")
    backup.add_argument("dest", help="the new file (never overwritten)")
    for p in (signal, cancel, gc, backup):
        p.add_argument("--db", default=os.environ.get("CONTENGINE_DB"), help=db_help)


def main(args: argparse.Namespace) -> int:
    """Run one operator command against args.db; returns the exit code."""
    from .inspect_cli import open_engine  # the engine loads only for a command that uses it

    # Arguments are checked before the database is opened.
    if args.command == "signal" and not args.name:
        raise CommandError("a signal name must be a non-empty string", 2)
    payload = _json(args.payload) if args.command == "signal" else None
    age = parse_duration(args.older_than) if args.command == "gc" else 0.0
    with open_engine(args.db) as engine:
        try:
            if args.command == "signal":
                engine.signal(args.run_id, args.name, payload)
                print(f"sent signal {args.name!r} to run {args.run_id!r}")
            elif args.command == "cancel":
                if engine.cancel(args.run_id):
                    # Another process's engine delivers it when it next drives or waits.
                    print(f"cancelled run {args.run_id!r} (delivered when it is next driven)")
                else:
                    status = engine.get_run(args.run_id).status
                    print(f"run {args.run_id!r} had already finished ({status}); nothing changed")
            elif args.command == "gc":
                deleted = engine.gc(age)
                print(f"deleted {deleted} finished run{'' if deleted == 1 else 's'}")
            else:
                engine.backup(args.dest)
                print(f"backed up {args.db} to {args.dest}")
        except ContengineError as exc:
            # The engine's message names the run and what was (not) done.
            raise CommandError(str(exc)) from exc
    return 0


def parse_duration(text: str) -> float:
    """Seconds in an age such as 30d, 12h, 90m, 45s or 10 (seconds); CommandError if not one."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise CommandError(
            f"--older-than needs a number with a unit s, m, h or d (e.g. 30d), not {text!r}", 2
        )
    return float(match.group(1)) * UNITS[match.group(2) or "s"]


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise CommandError(f"the payload {shown!r} is not valid JSON: {exc}", 2) from None
