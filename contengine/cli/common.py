"""What every `contengine` command shares: its options, its errors and exit codes, its engine."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..engine.engine import Engine

DB_HELP = "database file or postgresql:// URL (default: $CONTENGINE_DB)"
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# The unit is required: a bare number is refused, not taken as seconds (`gc
# --older-than 30` meant as days would delete every run older than 30 seconds).
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([smhd])")


class CommandError(Exception):
    """A command's expected failure: one line for stderr, and the exit code (2: usage)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__((message.strip().splitlines() or [""])[0])
        self.code = code


def shared_options(top: bool, db_help: str = DB_HELP) -> argparse.ArgumentParser:
    """The parent parser of the options every command takes before or after its name.

    top: the copy for the main parser, which holds the defaults. The subcommands' copy
    has none (argparse.SUPPRESS): a subparser writes every default it has over what the
    main parser read, so a default there would undo `contengine --db app.db runs`.
    db_help: what --db means for the command (the default database differs).
    """
    parser = argparse.ArgumentParser(add_help=False)

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    parser.add_argument("--db", metavar="FILE", default=default(None), help=db_help)
    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print one JSON document, for scripts (every command that reports something)",
    )
    parser.add_argument(
        "--debug", action="store_true", default=default(False), help="show tracebacks on errors"
    )
    return parser


# The exit code of a command whose reader closed the pipe: 128 + SIGPIPE, as the shell
# reports a command that signal ended.
BROKEN_PIPE = 141


def run_command(args: argparse.Namespace, command: Callable[[], int]) -> int:
    """Run command(); an expected failure prints one line on stderr and gives its exit code."""
    try:
        return command()
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`contengine show ID | head`): stop quietly, as a command
        # that SIGPIPE ends does. What is left in stdout's buffer goes nowhere, so that
        # the flush at exit does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return BROKEN_PIPE
    except CommandError as exc:
        print(f"contengine: {exc}", file=sys.stderr)
        return exc.code
    except Exception as exc:
        if args.debug:
            raise
        print(f"contengine: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def open_engine(
    db: str | None,
    create: bool = False,
    readonly: bool = False,
    wal_autocheckpoint: int | None = None,
) -> Engine:
    """An engine on the existing database file db (or a new one there, with create);
    CommandError if there is none. readonly: for commands that only look (runs, show,
    export): it opens a read-only file, or one on a read-only filesystem, and can write
    nothing. wal_autocheckpoint: SQLiteStore's (an SQLite file only)."""
    # Imported here: `contengine --help` and a usage error need no engine.
    from ..engine.engine import Engine
    from ..store.postgres.url import is_postgres_url, looks_like_url, other_url_error
    from ..store.sqlite.store import SQLiteStore

    if not db:
        raise CommandError("no database given: pass --db FILE or set CONTENGINE_DB", 2)
    secret = os.environ.get("CONTENGINE_SECRET")
    if is_postgres_url(db):
        # A server's database (and schema) is not a file to look for: the store says
        # clearly if it cannot connect, and creates its tables only with create.
        from ..store.opening import open_store

        return Engine(
            db, secret=secret.encode() if secret else None, store=open_store(db, create=create)
        )
    if looks_like_url(db):
        raise CommandError(str(other_url_error(db)), 2)
    if not create and not os.path.isfile(db):
        # Opening a missing path would create an empty database; a typo should not.
        raise CommandError(f"no database at {db!r}")
    # Signed databases: the secret comes from the environment, never the command line.
    store = SQLiteStore(db, readonly=True) if readonly else None
    if wal_autocheckpoint is not None and not readonly:
        store = SQLiteStore(db, wal_autocheckpoint=wal_autocheckpoint)
    return Engine(db, secret=secret.encode() if secret else None, store=store)


def parse_duration(text: str, option: str = "--older-than") -> float:
    """Seconds in an age such as 30d, 12h, 90m or 45s; CommandError if not one (a bare
    number too: its unit is not guessed)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise CommandError(
            f"{option} needs a number with a unit s, m, h or d (e.g. 30d), not {text!r}", 2
        )
    return float(match.group(1)) * UNITS[match.group(2)]


def report(args: argparse.Namespace, text: str, data: dict[str, Any]) -> None:
    """Print what a command did: text, or with --json the object data on one line."""
    print(json.dumps(data) if getattr(args, "json", False) else text)


def error(message: str) -> None:
    """Print one line on stderr, as every command's errors are."""
    print(f"contengine: {message}", file=sys.stderr)
