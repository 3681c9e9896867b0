"""The `contengine` command line: run, inspect, operate and check durable workflows."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


class CommandError(Exception):
    """A command's expected failure: one line for stderr, and the exit code (2: usage)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__((message.strip().splitlines() or [""])[0])
        self.code = code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="contengine", description="Durable execution for Python generator workflows."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="kill a workflow mid-step with SIGKILL and resume it")
    demo.add_argument("--db", help="database file (default: a temporary one)")

    bench = sub.add_parser("bench", help="measure steps/s against the raw SQLite commit floor")
    bench.add_argument("--dir", help="directory for the benchmark files (default: temp)")
    bench.add_argument("--steps", type=int, default=2000, help="steps per round")
    bench.add_argument("--rounds", type=int, default=5, help="alternating rounds (median)")
    bench.add_argument("--replay-steps", type=int, default=10_000)
    bench.add_argument("--json", action="store_true", help="print results as JSON")
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
    bench.add_argument("--signals", type=int, default=100, help="wake-ups in one process")
    bench.add_argument("--remote-signals", type=int, default=40, help="across processes")
    bench.add_argument(
        "--burst",
        type=int,
        default=0,
        metavar="N",
        help="also start N runs at once and work through them: peak memory (e.g. 100000)",
    )

    for name, text in (("runs", "list runs"), ("show", "print a run's log")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--db", default=os.environ.get("CONTENGINE_DB"), help="database file")
        p.add_argument("--html", metavar="PATH", help="write a self-contained HTML page to PATH")
        if name == "show":
            p.add_argument("run_id")
        else:
            p.add_argument("--status")
            p.add_argument("--workflow")
            p.add_argument("--tag", help="only runs started with this tag")
            p.add_argument("--json", action="store_true", help="print a JSON list, for scripts")
            p.add_argument("--older-than", metavar="AGE", help="created at least AGE ago (30d)")
            p.add_argument("--newer-than", metavar="AGE", help="created at most AGE ago (12h)")
    from ..testing.lint_cli import add_lint_command
    from ..testing.replay import add_replay_command
    from .ops import add_parsers

    add_parsers(sub)
    add_lint_command(sub)
    add_replay_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from ..tools.demo import main as demo_main

            return demo_main(args.db)
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
        from .ops import main as ops_main

        return ops_main(args)
    except KeyboardInterrupt:
        return 130
    except CommandError as exc:
        print(f"contengine: {exc}", file=sys.stderr)
        return exc.code
    except Exception as exc:
        if args.debug:
            raise
        print(f"contengine: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
