"""engine.stats() as Prometheus text exposition (format 0.0.4), for a `/metrics` page.

The step numbers are over engine.stats()'s recent window, not counters since a start (the
store keeps no counters), so every metric is a gauge: graph them as they are, do not
rate() them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..engine.stats import EngineStats

if TYPE_CHECKING:
    from ..engine.engine import Engine

__all__ = ["CONTENT_TYPE", "prometheus_text", "render"]

# What a /metrics page's Content-Type says.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def prometheus_text(engine: Engine) -> str:
    """The engine's stats (default window) as Prometheus text exposition."""
    return render(engine.stats())


def escape(value: str) -> str:
    """A label value as the format quotes it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def number(value: float) -> str:
    """A sample value as the format writes it (+Inf, -Inf, NaN spelled its way)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Page:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, text: str, samples: Sequence[tuple[dict[str, str], float]]) -> None:
        full = f"contengine_{name}"
        self.lines.append(f"# HELP {full} {text}")
        self.lines.append(f"# TYPE {full} gauge")
        for labels, value in samples:
            inner = ",".join(f'{k}="{escape(v)}"' for k, v in labels.items())
            self.lines.append(
                f"{full}{{{inner}}} {number(value)}" if inner else f"{full} {number(value)}"
            )


def render(stats: EngineStats) -> str:
    """EngineStats as Prometheus text exposition."""
    page = _Page()
    steps = stats.steps
    page.metric("runs", "Runs by status.", [({"status": s}, n) for s, n in stats.runs.items()])
    page.metric("stats_window_seconds", "The window of the recent_* metrics.", [({}, stats.window)])
    page.metric(
        "recent_steps",
        "Steps that got their outcome in the window, by outcome.",
        [({"outcome": "completed"}, steps.completed), ({"outcome": "failed"}, steps.failed)],
    )
    page.metric(
        "recent_step_latency_sum_seconds",
        "Seconds from logged to outcome, summed over the window's steps.",
        [({}, steps.seconds_sum)],
    )
    page.metric(
        "recent_step_latency_seconds",
        "Quantiles of seconds from logged to outcome over the window's steps.",
        [
            ({"quantile": q}, v)
            for q, v in (("0.5", steps.p50), ("0.9", steps.p90), ("0.99", steps.p99))
            if v is not None
        ],
    )
    page.metric(
        "recent_steps_at_most_seconds",
        "Steps of the window that took at most le seconds (cumulative).",
        [({"le": number(le)}, n) for le, n in steps.buckets] + [({"le": "+Inf"}, steps.count)],
    )
    page.metric("recent_step_attempts", "Attempts of the window's steps.", [({}, steps.attempts)])
    page.metric(
        "recent_steps_retried", "The window's steps that took more than one attempt.",
        [({}, steps.retried)],
    )  # fmt: skip
    page.metric(
        "recent_step_crashes", "Attempts of the window's steps lost with their process.",
        [({}, steps.crashes)],
    )  # fmt: skip
    page.metric(
        "queue_depth",
        'Runnable runs no live worker holds, by queue ("" for runs in no queue).',
        [({"queue": q}, n) for q, n in sorted(stats.queue_depth.items())],
    )
    page.metric(
        "claim_lag_seconds",
        "Seconds since the oldest runnable unheld run became due (0 when none).",
        [({}, stats.claim_lag)],
    )
    page.metric(
        "queue_claim_lag_seconds",
        "Claim lag by queue.",
        [({"queue": q}, v) for q, v in sorted(stats.claim_lag_by_queue.items())],
    )
    return "\n".join(page.lines) + "\n"
