"""What both parts of `contengine bench` use: the result type, the raw SQLite floor, the
trivial workflow, and the benchmark files."""

from __future__ import annotations

import os
import shutil
import sqlite3
import statistics
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from ..core.workflow import step, workflow
from ..store.sqlite.store import DURABILITY

PAYLOAD = b"x" * 100  # the floor's row: about the size of a step's log entry
WAIT = 120.0  # seconds any one phase may take before the benchmark gives up

# Where the benchmark says what it is doing (a progress line, or nothing).
Say = Callable[[str], None]


@step(name="contengine.bench.bump")
def bump(x: int) -> int:
    """The trivial step: its argument plus one."""
    return x + 1


@workflow(name="contengine.bench.loop")
def loop(n: int) -> Generator[Any, Any, int]:
    """n trivial steps in a row."""
    x = 0
    for _ in range(n):
        x = yield bump(x)
    return x


# -- what is measured -------------------------------------------------------------


def floor_round(path: str, durability: str, n: int) -> float:
    """Commits/s of n single-row INSERT transactions on a fresh WAL file."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {DURABILITY[durability]}")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
        start = time.perf_counter()
        for _ in range(n):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (payload) VALUES (?)", (PAYLOAD,))
            conn.execute("COMMIT")
        return n / (time.perf_counter() - start)
    finally:
        conn.close()


# -- results ------------------------------------------------------------------------


@dataclass
class Metric:
    """One measured quantity: its samples, its floor (if any) and its target (if any)."""

    name: str
    label: str
    unit: str
    target: float | None  # None: reported for context, judged by nothing
    samples: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)  # raw SQLite commits/s, same rounds
    lower_is_better: bool = False
    floor_cost: float = 1.0  # commits one unit costs on the floor (a run of 10 steps: 11)
    target_on_median: bool = False  # the floor is context; the target is on the median
    details: dict[str, Any] = field(default_factory=dict)  # sizes and raw figures, for --json
    floor_unit: str = "commits/s"  # what the floor's samples count

    @property
    def median(self) -> float:
        """Median of the samples."""
        return statistics.median(self.samples)

    @property
    def floor_median(self) -> float | None:
        """Median of the floor samples, for metrics compared with the floor."""
        return statistics.median(self.floor) if self.floor else None

    @property
    def cap(self) -> float | None:
        """What the floor's commits/s would give in this metric's unit, one commit at a time."""
        floor = self.floor_median
        return floor / self.floor_cost if floor else None

    @property
    def ratio(self) -> float | None:
        """Median over the floor's cap: the share of raw commit speed the engine keeps."""
        cap = self.cap
        return self.median / cap if cap else None

    @property
    def spread(self) -> float:
        """(max - min) / median of the samples: a rough noise figure."""
        return (max(self.samples) - min(self.samples)) / self.median

    @property
    def passed(self) -> bool | None:
        """Whether the target is met (by the ratio when there is a floor); None without one."""
        if self.target is None:
            return None
        value = self.ratio if self.floor and not self.target_on_median else self.median
        assert value is not None
        return value < self.target if self.lower_is_better else value >= self.target

    def target_text(self) -> str:
        """The target as a reader would write it ("" without one)."""
        if self.target is None:
            return ""
        if self.floor and not self.target_on_median:
            return f"ratio >= {self.target:g}"
        sign = "<" if self.lower_is_better else ">="
        return f"{sign} {num(self.target)} {self.unit}"

    def floor_text(self) -> str:
        """The floor column: commits/s, and what they cap this metric at when a unit costs more."""
        floor, cap = self.floor_median, self.cap
        if floor is None or cap is None:
            return ""
        if self.floor_cost == 1:
            return f"{num(floor)} {self.floor_unit}"
        return f"{num(floor)} {self.floor_unit} / {self.floor_cost:g} = {num(cap)} {self.unit}"

    def as_json(self) -> dict[str, Any]:
        """Plain data for --json."""
        doc = {
            "label": self.label,
            "unit": self.unit,
            "median": self.median,
            "floor": self.floor_median,
            "ratio": self.ratio,
            "target": self.target_text(),
            "pass": self.passed,
            "spread": self.spread,
            "samples": self.samples,
            "floor_samples": self.floor,
        }
        if self.floor_cost != 1:
            doc["floor_cost"] = self.floor_cost
            doc["cap"] = self.cap
        if self.details:
            doc["details"] = self.details
        return doc


def metric_lines(metrics: list[Metric], floor_title: str) -> list[str]:
    """The table's rows, one per metric, under a header naming the floor's column."""
    rows = [("metric", "median", floor_title, "ratio", "target", "", "spread")]
    for m in metrics:
        verdict = {None: "", True: "pass", False: "FAIL"}[m.passed]
        rows.append(
            (
                m.label,
                f"{num(m.median)} {m.unit}",
                m.floor_text(),
                "" if m.ratio is None else f"{m.ratio:.3f}",
                m.target_text(),
                verdict,
                "" if len(m.samples) < 2 else f"{m.spread:.0%}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.rjust(w) for c, w in zip(r, widths, strict=True)]
        cells[0] = r[0].ljust(widths[0])
        lines.append("  ".join(cells).rstrip())
    return lines


def num(x: float) -> str:
    """A figure as a table shows it: thousands separated, or three significant digits."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


# -- files ------------------------------------------------------------------------


def fresh(tmp: str, name: str, fn: Callable[[str, str, int], float], dur: str, n: int) -> float:
    """fn(path, dur, n) on a new file tmp/name.db, removed afterwards; returns what fn gives."""
    path = os.path.join(tmp, f"{name}.db")
    try:
        return fn(path, dur, n)
    finally:
        remove_db(path)


def copy_db(src: str, dst: str) -> None:
    """Copy a database file with its write-ahead log."""
    for suffix in ("", "-wal"):
        if os.path.exists(src + suffix):
            shutil.copyfile(src + suffix, dst + suffix)


def remove_db(path: str) -> None:
    """Remove a database file with its write-ahead log and shared-memory file."""
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)


def child_env() -> dict[str, str]:
    """The environment for a child process, importing this very copy of contengine."""
    env = dict(os.environ)
    # The directory holding the contengine package: three levels above this file.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env
