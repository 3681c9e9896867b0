"""`contengine stats`: runs by status, recent step latency, queue depth and claim lag."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..engine.stats import EngineStats
from .common import CommandError, open_engine, parse_duration
from .metrics import render

__all__ = ["add_parser", "main"]


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add `stats` to the `contengine` subcommand parsers."""
    p = sub.add_parser(
        "stats", parents=parents, help="runs by status, step latency, queue depth, claim lag"
    )
    p.add_argument(
        "--window", default="5m", metavar="AGE", help="steps that ended within AGE (default 5m)"
    )
    p.add_argument(
        "--prometheus", action="store_true", help="print Prometheus text exposition instead"
    )


def main(args: argparse.Namespace) -> int:
    """Print the database's stats: a table, JSON (--json) or Prometheus text."""
    window = parse_duration(args.window, "--window")
    if not window > 0:
        raise CommandError(f"--window must be longer than 0s, not {args.window!r}", 2)
    engine = open_engine(args.db, readonly=True)
    try:
        stats = engine.stats(window)
    finally:
        engine.close()
    if args.json:
        print(json.dumps(stats.as_dict(), indent=2, allow_nan=False))
    elif args.prometheus:
        print(render(stats), end="")
    else:
        print(table(stats))
    return 0


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def table(stats: EngineStats) -> str:
    """The stats as a few aligned lines for a terminal."""
    steps = stats.steps
    lines = ["runs"]
    lines += [f"  {status:<12}{n:>10}" for status, n in stats.runs.items()]
    lines.append(f"steps that ended in the last {stats.window:g}s")
    lines.append(f"  {'completed':<12}{steps.completed:>10}")
    lines.append(f"  {'failed':<12}{steps.failed:>10}")
    lines.append(f"  {'attempts':<12}{steps.attempts:>10}")
    lines.append(f"  {'retried':<12}{steps.retried:>10}")
    lines.append(f"  {'crashes':<12}{steps.crashes:>10}")
    for label, value in (("p50", steps.p50), ("p90", steps.p90), ("p99", steps.p99)):
        lines.append(f"  {label:<12}{_seconds(value):>10}")
    lines.append(f"  {'max':<12}{_seconds(steps.max):>10}")
    if stats.truncated:
        lines.append("  (summed over the newest steps only: more ended in the window)")
    lines.append("runnable runs no worker holds, by queue")
    if not stats.queue_depth:
        lines.append("  none")
    for queue, n in sorted(stats.queue_depth.items()):
        lag = stats.claim_lag_by_queue.get(queue, 0.0)
        lines.append(f"  {queue or '(no queue)':<12}{n:>10}   waiting {lag:.1f}s")
    lines.append(f"claim lag {stats.claim_lag:.1f}s")
    return "\n".join(lines)
