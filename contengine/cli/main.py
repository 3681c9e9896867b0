"""The `contengine` command line: run, inspect, operate and check durable workflows."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from ..store.postgres.url import is_postgres_url
from . import ops, run_commands
from . import stats as stats_command
from .common import CommandError, run_command, shared_options
from .web import command as web_command

__all__ = ["CommandError", "main"]

# The commands that read a database (--db, or $CONTENGINE_DB). `demo` takes one too, but
# makes a temporary one when none is given; `replay` also takes it as its first argument.
ENV_DB_COMMANDS = frozenset(
    ("runs", "show", "stats", "serve", *ops.COMMANDS, *run_commands.COMMANDS)
)
# The commands with a JSON form (--json): each prints one JSON document on stdout (the
# keys are in the README's operator commands section).
JSON_COMMANDS = (
    "runs", "show", "stats", "bench", "signal", "cancel", "retry", "fork", "gc", "backup",
    "export", "import", "start", "result", "replay", "lint",
)  # fmt: skip
# Why a command has no JSON form, to say so when --json is given.
NO_JSON = {
    "worker": "it runs until stopped and reports only in its log on stderr",
    "serve": "it runs until stopped and serves pages, not a report",
    "demo": "it is a narrated demonstration for a terminal",
}
# Why a command takes no --db, to say so when one is given.
NO_DB = {
    "bench": "it measures on files of its own (see --dir), or on a postgresql:// URL",
    "lint": "it reads the workflows' source, not a database",
}


# `contengine --help` lists the commands by purpose (tests/test_cli.py checks that each
# command is in one group).
GROUPS = (
    ("run workflows", ("worker", "start", "result", "demo")),
    ("look at runs", ("runs", "show", "stats", "serve")),
    ("operate", ("signal", "cancel", "retry", "fork", "export", "import", "gc", "backup")),
    ("check code and speed", ("replay", "lint", "bench")),
)


def _epilog() -> str:
    lines = ["commands by purpose:"]
    for purpose, names in GROUPS:
        lines.append(f"  {purpose + ':':24}{', '.join(names)}")
    lines.append("`contengine COMMAND --help` tells more of each.")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The `contengine` argument parser, with every command."""
    parser = argparse.ArgumentParser(
        prog="contengine",
        description="Durable execution for Python generator workflows.",
        parents=[shared_options(top=True)],
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # The shared options again on each command, so they may follow its name too.
    parents = [shared_options(top=False)]
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser(
        "demo",
        parents=[shared_options(top=False, db_help="database file (default: a temporary one)")],
        help="kill a workflow mid-step with SIGKILL and resume it",
    )

    bench = sub.add_parser(
        "bench",
        parents=parents,
        help="measure steps/s against the raw SQLite (or PostgreSQL: --db URL) commit floor",
    )
    bench.add_argument("--dir", help="directory for the benchmark files (default: temp)")
    bench.add_argument("--steps", type=int, default=2000, help="steps per round")
    bench.add_argument("--rounds", type=int, default=5, help="alternating rounds (median)")
    bench.add_argument("--replay-steps", type=int, default=10_000)
    bench.add_argument(
        "--memory-steps",
        type=int,
        default=100_000,
        help="steps of the run whose replay's peak memory is measured (in a child process)",
    )
    bench.add_argument(
        "--memory-big", type=int, default=300, help="steps of 1 MB results, replayed the same way"
    )
    bench.add_argument(
        "--workers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure many runs at once, runs asleep and wake-ups (default: yes)",
    )
    bench.add_argument("--runs", type=int, default=200, help="runs of 10 steps at once")
    bench.add_argument(
        "--concurrent-steps", type=int, default=2400, help="steps for 1, 10 and 100 runs at once"
    )
    bench.add_argument("--asleep", type=int, default=10_000, help="runs asleep at once")
    bench.add_argument(
        "--claims-asleep",
        type=int,
        default=20_000,
        help="runs asleep for the claims part (against 100 asleep)",
    )
    bench.add_argument("--signals", type=int, default=100, help="wake-ups in one process")
    bench.add_argument("--remote-signals", type=int, default=40, help="across processes")
    bench.add_argument(
        "--claim-runs", type=int, default=4000, help="runs claimed by 4 processes (--db URL)"
    )
    bench.add_argument(
        "--burst",
        type=int,
        default=0,
        metavar="N",
        help="also start N runs at once and work through them: peak memory (e.g. 100000)",
    )

    for name, text in (("runs", "list runs"), ("show", "print a run's log")):
        p = sub.add_parser(name, parents=parents, help=text)
        p.add_argument(
            "--html", metavar="PATH", help="write a self-contained HTML page to PATH ('-': stdout)"
        )
        if name == "show":
            p.add_argument("run_id")
        else:
            p.add_argument("--status")
            p.add_argument("--workflow")
            p.add_argument("--tag", help="only runs started with this tag")
            p.add_argument("--older-than", metavar="AGE", help="created at least AGE ago (30d)")
            p.add_argument("--newer-than", metavar="AGE", help="created at most AGE ago (12h)")
    from ..testing.lint_cli import add_lint_command
    from ..testing.replay import add_replay_command

    run_commands.add_parsers(sub, parents)
    stats_command.add_parser(sub, parents)
    web_command.add_parser(sub, parents)
    ops.add_parsers(sub, parents)
    add_lint_command(sub, parents)
    add_replay_command(sub, parents)
    return parser


def _bench_on_a_server(args: argparse.Namespace) -> bool:
    # `bench --db postgresql://...` measures on that server, in schemas of its own.

    return args.command == "bench" and is_postgres_url(args.db)


def _check_shared(args: argparse.Namespace) -> None:
    """Refuse a shared option the command has no use for; fill in --db from the environment."""
    if args.json and args.command not in JSON_COMMANDS:
        why = NO_JSON.get(args.command, "it prints no report")
        raise CommandError(f"`{args.command}` takes no --json: {why}", 2)
    if args.db is not None and args.command in NO_DB and not _bench_on_a_server(args):
        raise CommandError(f"`{args.command}` takes no --db: {NO_DB[args.command]}", 2)
    if args.db is None and args.command in ENV_DB_COMMANDS:
        args.db = os.environ.get("CONTENGINE_DB")


def _dispatch(args: argparse.Namespace) -> int:
    _check_shared(args)
    if args.command == "demo":
        from ..tools.demo import main as demo_main

        return demo_main(args.db)
    if args.command == "bench" and args.db is not None:
        from ..tools.bench_pg import main as bench_pg_main

        return bench_pg_main(args)
    if args.command == "bench":
        from ..tools.bench import main as bench_main

        return bench_main(args)
    if args.command in ("runs", "show"):
        from .inspect_commands import main as inspect_main

        return inspect_main(args)
    if args.command == "lint":
        from ..testing.lint_cli import lint_main

        return lint_main(args)
    if args.command == "replay":
        from ..testing.replay import replay_main

        return replay_main(args)
    if args.command == "serve":
        return web_command.main(args)
    if args.command in run_commands.COMMANDS:
        return run_commands.main(args)
    if args.command == "stats":
        return stats_command.main(args)
    return ops.main(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    return run_command(args, lambda: _dispatch(args))
