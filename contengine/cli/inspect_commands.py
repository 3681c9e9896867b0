"""The `runs` and `show` commands: print a database's runs and their logs; no run is changed."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, cast

from ..core import ids
from ..drive.log import Entry
from ..engine.engine import Engine
from ..store.base import COMPLETED, FAILED, RUN_STATUSES, RunRow
from .attempts_view import Tries, attempt_lines
from .common import CommandError, error, open_engine, parse_duration
from .render import ARGS_WIDTH, NOTE_WIDTH, clip, iso, load, outcome, run_error, short

MAX_CHILD_DEPTH = 3  # child runs shown inside their parent's log, this deep
# What `runs --json` gives of each run (times in seconds since the epoch).
JSON_FIELDS = (
    "id", "workflow", "status", "created_at", "finished_at", "parent_id", "forked_from", "note",
    "tags",
)  # fmt: skip
# (least, most) age in seconds a listed run may have; None: no bound.
AgeWindow = tuple[float | None, float | None]


def main(args: argparse.Namespace) -> int:
    """Run `runs` or `show` against args.db; returns the exit code."""
    window = _age_window(args)  # checked before the database is opened
    tag = getattr(args, "tag", None)
    with open_engine(args.db, readonly=True) as engine:
        if window != (None, None) or tag is not None:
            engine = _aged(engine, window, tag)
        if getattr(args, "html", None):
            return _write_html(engine, args)
        if args.command == "runs":
            return _runs(engine, args.status, args.workflow, args.json)
        if args.json:
            return _show_json(engine, args.run_id)
        return _show(engine, args.run_id)


def _age_window(args: argparse.Namespace) -> AgeWindow:
    """The --older-than and --newer-than ages of `runs`, in seconds (None if not given)."""
    older, newer = getattr(args, "older_than", None), getattr(args, "newer_than", None)
    return (
        None if older is None else parse_duration(older, "--older-than"),
        None if newer is None else parse_duration(newer, "--newer-than"),
    )


def created_within(row: RunRow, window: AgeWindow, now: float) -> bool:
    """True if the run was created at least window[0] and at most window[1] seconds ago."""
    age = now - row.created_at
    least, most = window
    return (least is None or age >= least) and (most is None or age <= most)


class _AgedStore:
    """A store whose list_runs keeps only the runs created within an age window (and
    carrying a tag, if one is asked for)."""

    def __init__(self, engine: Engine, window: AgeWindow, tag: str | None) -> None:
        self._store, self._window, self._tag = engine.store, window, tag
        self._now = engine.clock.now()  # one instant for the whole listing

    def list_runs(
        self, status: str | None = None, workflow: str | None = None, limit: int | None = None
    ) -> list[RunRow]:
        """The store's runs (oldest first) that were created within the window."""
        rows = self._store.list_runs(status, workflow, tag=self._tag)
        rows = [r for r in rows if created_within(r, self._window, self._now)]
        return rows if limit is None else rows[:limit]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class _AgedEngine:
    """An engine seen through _AgedStore: every listing of runs (table, JSON, HTML) agrees."""

    def __init__(self, engine: Engine, window: AgeWindow, tag: str | None) -> None:
        self._engine, self.store = engine, _AgedStore(engine, window, tag)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


def _aged(engine: Engine, window: AgeWindow, tag: str | None) -> Engine:
    return cast(Engine, _AgedEngine(engine, window, tag))


def _write_html(engine: Engine, args: argparse.Namespace) -> int:
    """Render `runs` or `show` as an HTML page, write it to args.html and print its path."""
    from .timeline import render_run, render_runs  # the HTML pages load only for --html

    if args.command == "runs":
        if args.status is not None and args.status not in RUN_STATUSES:
            error(f"--status must be one of {', '.join(RUN_STATUSES)}, not {args.status!r}")
            return 2
        page = render_runs(engine, status=args.status, workflow=args.workflow)
    elif engine.store.get_run(args.run_id) is None:
        error(f"no run with id {args.run_id!r} in this database")
        return 1
    else:
        page = render_run(engine, args.run_id)
    if args.html == "-":  # the page on stdout, for a pipe or a redirect
        sys.stdout.write(page)
        sys.stdout.flush()
        return 0
    try:
        with open(args.html, "w", encoding="utf-8") as out:
            out.write(page)
    except OSError as exc:
        raise CommandError(f"cannot write {args.html!r}: {exc.strerror or exc}") from exc
    print(os.path.abspath(args.html))
    return 0


def _runs(engine: Engine, status: str | None, workflow: str | None, as_json: bool) -> int:
    if status is not None and status not in RUN_STATUSES:
        error(f"--status must be one of {', '.join(RUN_STATUSES)}, not {status!r}")
        return 2
    rows = engine.store.list_runs(status, workflow)
    if as_json:
        print(json.dumps([{field: getattr(r, field) for field in JSON_FIELDS} for r in rows]))
        return 0
    if not rows:
        print("no runs")
        return 0
    table = [
        [r.id, r.workflow, r.status, iso(r.created_at), clip(r.note or "", NOTE_WIDTH)]
        for r in rows
    ]
    _print_table(["id", "workflow", "status", "created", "note"], table)
    return 0


# What `show --json` gives of each log entry (times in seconds since the epoch).
ENTRY_FIELDS = (
    "position", "kind", "name", "text", "status", "attempts", "crashes", "started_at",
    "finished_at", "due_at", "duration", "error_text",
)  # fmt: skip


# What `show --json` gives of each attempt of an entry (ce.Attempt's fields).
ATTEMPT_FIELDS = ("number", "outcome", "started_at", "ended_at", "found_at", "error_text")


def _show_json(engine: Engine, run_id: str) -> int:
    """The run and its log as one JSON object: the fields of `runs --json`, the result or
    error in short (as `show` prints them) with the stored traceback, and the entries."""
    row = engine.store.get_run(run_id)
    if row is None:
        error(f"no run with id {run_id!r} in this database")
        return 1
    shown: dict[str, Any] = {field: getattr(row, field) for field in JSON_FIELDS}
    shown["result"] = (
        load(engine, row.result, run_id, "result", short) if row.status == COMPLETED else None
    )
    shown["error"] = run_error(engine, row) if row.status == FAILED else None
    shown["error_text"] = row.error_text
    tries = Tries(engine, run_id)
    shown["log"] = [
        {
            **{f: getattr(e, f) for f in ENTRY_FIELDS},
            "outcome": outcome(e),
            # Each attempt of a retried or crashed step ([] for one tried once).
            "attempt_history": [
                {f: getattr(a, f) for f in ATTEMPT_FIELDS} | {"error": a.error} for a in tries.of(e)
            ],
        }
        for e in engine.history(run_id)
    ]
    print(json.dumps(shown))
    return 0


def _show(engine: Engine, run_id: str) -> int:
    row = engine.store.get_run(run_id)
    if row is None:
        error(f"no run with id {run_id!r} in this database")
        return 1
    print(f"run       {row.id}")
    print(f"workflow  {row.workflow}")
    print(f"status    {row.status}")
    print(f"created   {iso(row.created_at)}")
    if row.finished_at is not None:
        took = (row.finished_at - row.created_at) * 1000
        print(f"finished  {iso(row.finished_at)} ({took:.1f} ms after it was created)")
    if row.parent_id:
        print(f"parent    {row.parent_id}")
    if row.forked_from:
        print(f"forked    from {row.forked_from}")
    if row.status == COMPLETED:
        print(f"result    {load(engine, row.result, run_id, 'result', short)}")
    elif row.status == FAILED:
        print(f"error     {run_error(engine, row)}")
    if row.note:
        print(f"note      {row.note}")
    entries = engine.history(run_id)
    print()
    if not entries:
        print("(the log is empty: the run has not started)")
        return 0
    _print_table(
        ["pos", "kind", "request", "status", "attempts", "crashes", "ms", "outcome"],
        _timeline_rows(engine, row.id, row.generation, entries, 0),
        right={"attempts", "crashes", "ms"},
    )
    tried = attempt_lines(Tries(engine, run_id), entries)
    if tried:
        # Each attempt at its real time: a crash (its worker lost) apart from an exception.
        print()
        print("attempts:")
        print("\n".join(tried))
    if row.status == FAILED and row.error_text:
        # The whole traceback, as stored when the run failed: it reads without the code.
        print()
        print("error, as stored when the run failed:")
        for line in row.error_text.rstrip().splitlines():
            print(f"  {line}")
    return 0


def _timeline_rows(
    engine: Engine, run_id: str, generation: int, entries: list[Entry], depth: int
) -> list[list[str]]:
    """Rows of a run's log: gather/race members and child runs' logs indented under them."""
    rows: list[list[str]] = []
    members_left = 0
    for e in entries:
        indent = depth + (1 if members_left else 0)
        members_left = max(members_left - 1, 0)
        rows.append(_timeline_row(e, indent))
        if e.kind in ("gather", "race") and e.key and e.key.isdigit():
            members_left = int(e.key)
        if e.kind in ("child", "start_child") and depth < MAX_CHILD_DEPTH:
            child_id = ids.child_id(run_id, generation, e.position)
            child = engine.store.get_run(child_id)
            if child is not None:
                child_entries = engine.history(child_id)
                rows.append(_child_header(child_id, child.status, indent + 1))
                rows.extend(
                    _timeline_rows(engine, child_id, child.generation, child_entries, indent + 1)
                )
    return rows


def _child_header(child_id: str, status: str, depth: int) -> list[str]:
    return ["  " * depth + "-", "run", child_id, status, "", "", "", ""]


def _timeline_row(e: Entry, depth: int = 0) -> list[str]:
    request = f"{e.name}({clip(e.text, ARGS_WIDTH)})"
    ms = "-" if e.duration is None else f"{e.duration * 1000:.1f}"
    pad = "  " * depth
    return [
        f"{pad}{e.position}",
        e.kind,
        request,
        e.status,
        str(e.attempts),
        str(e.crashes),
        ms,
        outcome(e),
    ]


def _print_table(
    headers: list[str], rows: Sequence[list[str]], right: frozenset[str] | set[str] = frozenset()
) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for cells in [headers, *rows]:
        parts = [
            c.rjust(w) if h in right else c.ljust(w)
            for c, w, h in zip(cells, widths, headers, strict=True)
        ]
        print("  ".join(parts).rstrip())
