"""`contengine cancel` and `retry` of many runs at once, chosen by status, workflow and tag,
after a count and a confirmation (or --yes)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..errors import ContengineError
from ..store.base import CANCELLED, FAILED, FINISHED, RUN_STATUSES
from .common import CommandError, report

if TYPE_CHECKING:
    from ..engine.engine import Engine

SHOWN = 10  # ids listed before the confirmation; the rest are counted


def add_filters(parser: argparse.ArgumentParser, verb: str) -> None:
    """The options that choose runs in bulk, instead of one RUN_ID."""
    parser.add_argument("--status", help=f"{verb} every run with this status")
    parser.add_argument("--workflow", help=f"{verb} every run of this workflow")
    parser.add_argument("--tag", help=f"{verb} every run started with this tag")
    parser.add_argument(
        "--yes", action="store_true", help="do not ask: go on whatever the count (scripts)"
    )


def is_bulk(args: argparse.Namespace) -> bool:
    """Whether the command names runs by filters (not one RUN_ID); checks the combination."""
    filters = [f"--{n}" for n in ("status", "workflow", "tag") if getattr(args, n) is not None]
    if args.run_id is not None:
        if filters:
            raise CommandError(f"give a run id or {', '.join(filters)}, not both", 2)
        return False
    if not filters:
        raise CommandError(
            f"{args.command} needs a run id, or --status, --workflow or --tag to choose runs", 2
        )
    status = args.status
    if status is not None and status not in RUN_STATUSES:
        raise CommandError(f"--status must be one of {', '.join(RUN_STATUSES)}, not {status!r}", 2)
    if args.command == "cancel" and status in FINISHED:
        raise CommandError(f"runs that are {status} have finished: there is nothing to cancel", 2)
    if args.command == "retry" and status not in (None, FAILED, CANCELLED):
        raise CommandError(f"retry resumes failed or cancelled runs, not {status} ones", 2)
    if args.command == "retry" and getattr(args, "at", None) is not None:
        raise CommandError("--at is for one run: give its id", 2)
    return True


def run_bulk(engine: Engine, args: argparse.Namespace) -> int:
    """Cancel or retry every run the filters choose, once confirmed; the exit code."""
    status = args.status if args.command == "cancel" else (args.status or FAILED)
    rows = engine.store.list_runs(status, args.workflow, tag=args.tag)
    if args.command == "cancel":
        # Not one whose cancel is already on its way (another cancel asked for it).
        chosen = [r.id for r in rows if r.status not in FINISHED and not r.cancel_requested]
    else:
        chosen = [r.id for r in rows]
    noun = "unfinished run" if args.command == "cancel" else f"{status} run"
    if not chosen:
        report(args, f"no {noun} matches; nothing changed", _outcome([], [], []))
        return 0
    plural = "" if len(chosen) == 1 else "s"
    listed = ", ".join(repr(i) for i in chosen[:SHOWN])
    more = f" and {len(chosen) - SHOWN} more" if len(chosen) > SHOWN else ""
    verb_s = "match" if plural else "matches"
    print(f"{len(chosen)} {noun}{plural} {verb_s}: {listed}{more}", file=sys.stderr)
    if not args.yes and not _confirmed(f"{args.command} {'it' if not plural else 'them'}?"):
        raise CommandError(
            f"nothing changed: confirm on a terminal, or pass --yes to {args.command} "
            f"{len(chosen)} run{plural}",
            2 if not _interactive() else 1,
        )
    done: list[str] = []
    failed: list[str] = []
    for run_id in chosen:
        try:
            if args.command == "cancel":
                if engine.cancel(run_id):  # False: it finished meanwhile
                    done.append(run_id)
            else:
                engine.retry(run_id)
                done.append(run_id)
        except ContengineError as exc:
            failed.append(run_id)
            print(f"contengine: run {run_id!r}: {exc}", file=sys.stderr)
    verb = "cancelled" if args.command == "cancel" else "retried"
    report(args, f"{verb} {len(done)} of {len(chosen)} run{plural}", _outcome(chosen, done, failed))
    return 1 if failed else 0


def _outcome(matched: list[str], done: list[str], failed: list[str]) -> dict[str, list[str]]:
    """--json's object: the runs chosen, those cancelled or retried, and those refused (a
    chosen run missing from both finished meanwhile)."""
    return {"matched": matched, "done": done, "failed": failed}


def _interactive() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError, OSError):  # closed, or not a real stream
        return False


def _confirmed(question: str) -> bool:
    """Ask on the terminal; False when there is none to ask (no stdin: a script)."""
    if not _interactive():
        return False
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")
