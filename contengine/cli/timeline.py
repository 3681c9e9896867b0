"""Self-contained HTML pages for a run (a timeline drawn in SVG, then its log) and for runs."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from html import escape

from ..core import ids
from ..drive.log import Entry
from ..engine.engine import Engine
from ..store.base import (
    COMPLETED,
    E_FAILED,
    E_RETRYING,
    E_RUNNING,
    FAILED,
    FINISHED,
    RUN_STATUSES,
    RunRow,
)
from ..store.run_search import MAX_PAGE, RunQuery
from . import attempts_view
from .render import (
    ARGS_WIDTH,
    clip,
    iso,
    load,
    outcome,
    run_error,
    short,
    span_text,
)
from .run_tables import Link, runs_table

# Layout of the timeline, in SVG user units (pixels at 100% zoom).
LABEL_W = 300
CHART_W = 660
ROW_H = 24
AXIS_H = 34
PAD = 12
INDENT = 14
MAX_CHILD_DEPTH = 3
TICK_STEPS = (
    *(m / 1000 for m in (1, 2, 5, 10, 20, 50, 100, 200, 500)),
    *(1, 2, 5, 10, 15, 30),
    *(60 * m for m in (1, 2, 5, 10, 15, 30)),
    *(3600 * h for h in (1, 2, 3, 6, 12)),
    *(86400 * d for d in (1, 2, 7, 14, 30, 90, 365)),
)
GROUP_KINDS = ("gather", "race")
Scale = Callable[[float], float]
CHILD_KINDS = ("child", "start_child")

STYLE = """
:root { --ink:#1f2933; --soft:#616e7c; --line:#e4e7eb; --bg:#f8f9fb; --card:#fff;
  --ok:#3f9f7a; --fail:#d64545; --wait:#7b8cde; --sleep:#9aa5b1; --step:#4c86c6;
  --group:#f0f3f8; --warn:#e0a030; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px; background: var(--bg); color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; }
h1 { font-size: 20px; margin: 0 0 12px; font-weight: 600; }
h2 { font-size: 16px; margin: 28px 0 10px; font-weight: 600; }
code, td.mono, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 12.5px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 16px 20px; margin-bottom: 18px; box-shadow: 0 1px 2px rgba(31,41,51,.04); }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px; margin: 0; }
dl.meta dt { color: var(--soft); }
dl.meta dd { margin: 0; word-break: break-word; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 12px;
  font-weight: 600; background: var(--group); color: var(--soft); }
.badge.completed { background: #e3f4ec; color: #23795a; }
.badge.failed { background: #fbe5e5; color: #b02a2a; }
.badge.running, .badge.pending { background: #e6effa; color: #2f6aa8; }
.badge.sleeping, .badge.waiting { background: #eceffb; color: #4d5cb0; }
.badge.cancelled { background: #f1ece2; color: #8a6d3b; }
.badge.retrying { background: #fcf1dc; color: #a26b10; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; background: var(--card); }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { color: var(--soft); font-weight: 600; font-size: 12px; text-transform: uppercase;
  letter-spacing: .04em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td { background: #fdf3f3; }
tr.failed td.outcome { color: #b02a2a; }
.counts { display: flex; flex-wrap: wrap; gap: 10px; }
.counts a { text-decoration: none; color: inherit; }
.error { color: #b02a2a; }
.trace pre { white-space: pre-wrap; font-size: 12px; margin: 6px 0 0; }
.legend { color: var(--soft); font-size: 12px; margin-top: 8px; }
.legend span { margin-right: 14px; }
.sw { display: inline-block; width: 10px; height: 10px; border-radius: 2px;
  margin-right: 4px; vertical-align: -1px; }
svg text { font-family: inherit; font-size: 12px; fill: var(--ink); }
svg .axis text { fill: var(--soft); font-size: 11px; }
svg .grid { stroke: var(--line); }
svg .bar { fill: var(--step); }
svg .kind-sleep .bar { fill: var(--sleep); }
svg .kind-wait .bar { fill: var(--wait); }
svg .kind-gather .bar, svg .kind-race .bar { fill: #b8c4d6; }
svg .kind-child .bar, svg .kind-start_child .bar, svg .kind-join .bar { fill: #8a7cc8; }
svg .completed .bar { opacity: .9; }
svg .failed .bar { fill: var(--fail); }
svg .retrying .bar { fill: var(--warn); }
svg .inflight .bar { fill-opacity: .35; stroke-dasharray: 4 3; stroke-width: 1.5;
  stroke: var(--step); }
svg .errtext { fill: var(--fail); font-size: 11px; }
svg .sub { fill: var(--soft); }
svg text.inbar { fill: #fff; }
svg .group { fill: var(--group); }
svg .child-entry text { fill: var(--soft); }
svg .now { stroke: var(--warn); stroke-dasharray: 3 3; }
svg g.entry:hover .bar, svg g.child-entry:hover .bar { opacity: 1; filter: brightness(.92); }
"""


@dataclass
class _Row:
    """One line of the timeline: a log entry of the run, or of one of its children."""

    entry: Entry
    depth: int
    child_of: str | None = None  # the child run's id, for rows of a child's log


def render_run(engine: Engine, run_id: str, now: float | None = None) -> str:
    """The HTML page of one run: a header, its timeline in SVG, its log and its children."""
    row, body = run_body(engine, run_id, now)
    return _page(f"contengine run {row.id}", [f"<h1>Run <code>{escape(row.id)}</code></h1>", *body])


def run_body(
    engine: Engine, run_id: str, now: float | None = None, link: Link | None = None
) -> tuple[RunRow, list[str]]:
    """A run's row and the parts of its page below the title: header, timeline, log and
    children; with link, run ids (parent, children) link to link(id). LookupError if the
    run is not there."""
    row = engine.store.get_run(run_id)
    if row is None:
        raise LookupError(f"no run with id {run_id!r} in this database")
    now = engine.clock.now() if now is None else now
    entries = engine.history(run_id)
    children = engine.store.find_runs(RunQuery(parent_id=run_id, limit=MAX_PAGE)).runs
    children.reverse()  # oldest first, as they were started
    rows = _rows(engine, row, entries, {c.id: c for c in children}, 0)
    body = [
        _run_header(engine, row, now, link),
        "<h2>Timeline</h2>",
        f'<div class="card scroll">{_svg(row, rows, now, attempts_view.Tries(engine, row.id))}'
        f"{_legend()}</div>",
        "<h2>Log</h2>",
        _log_table(entries),
    ]
    if children:
        body += ["<h2>Child runs</h2>", runs_table(children, now, child_column=True, link=link)]
    return row, body


def render_runs(
    engine: Engine,
    limit: int = 200,
    now: float | None = None,
    status: str | None = None,
    workflow: str | None = None,
) -> str:
    """An overview page of the most recent runs (at most limit), grouped by status."""
    now = engine.clock.now() if now is None else now
    every = engine.store.list_runs(status, workflow)
    runs = every[-limit:] if limit > 0 else []
    runs.reverse()  # newest first
    # Never a silent cap: the page says when it shows only the newest of more.
    shown = (
        f"{len(runs)} most recent runs"
        if len(runs) == len(every)
        else f"the {len(runs)} most recent of {len(every)} runs (<code>contengine runs</code> "
        f"lists them all)"
    )
    by_status = {s: [r for r in runs if r.status == s] for s in RUN_STATUSES}
    present = [s for s in RUN_STATUSES if by_status[s]]
    counts = "".join(
        f'<a href="#status-{s}"><span class="badge {s}">{s} {len(by_status[s])}</span></a>'
        for s in present
    )
    body = [
        "<h1>Runs</h1>",
        f'<div class="card"><p>{shown}, as of {escape(iso(now))}.</p>'
        f'<div class="counts">{counts or "no runs"}</div></div>',
    ]
    for s in present:
        body.append(
            f'<section class="status {s}" id="status-{s}">'
            f'<h2><span class="badge {s}">{s}</span> {len(by_status[s])}</h2>'
            f"{runs_table(by_status[s], now)}</section>"
        )
    return _page("contengine runs", body)


def _page(title: str, body: Iterable[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}{attempts_view.STYLE}</style></head>\n"
        "<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _run_header(engine: Engine, row: RunRow, now: float, link: Link | None = None) -> str:
    items = [
        ("workflow", f"<code>{escape(row.workflow)}</code>"),
        ("status", f'<span class="badge {escape(row.status)}">{escape(row.status)}</span>'),
        ("created", escape(iso(row.created_at))),
    ]
    if row.finished_at is not None:
        took = span_text(row.finished_at - row.created_at)
        items.append(("finished", f"{escape(iso(row.finished_at))} (after {took})"))
    else:
        items.append(("age", escape(span_text(max(0.0, now - row.created_at)))))
    if row.parent_id:
        parent = f"<code>{escape(row.parent_id)}</code>"
        if link is not None:
            parent = f'<a class="parent" href="{escape(link(row.parent_id))}">{parent}</a>'
        items.append(("parent", parent))
    if row.forked_from:
        origin = f"<code>{escape(row.forked_from)}</code>"
        if link is not None:
            origin = f'<a class="forked" href="{escape(link(row.forked_from))}">{origin}</a>'
        items.append(("forked from", origin))
    if row.status == COMPLETED:
        result = load(engine, row.result, row.id, "result", short)
        items.append(("result", f"<code>{escape(result)}</code>"))
    elif row.status == FAILED:
        error = run_error(engine, row)
        items.append(("error", f'<span class="error">{escape(error)}</span>'))
    if row.note:
        items.append(("note", escape(row.note)))
    cells = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
    trace = ""
    if row.status == FAILED and row.error_text:
        trace = (
            '<details class="trace" open><summary>error, as stored when the run failed'
            f"</summary><pre>{escape(row.error_text.rstrip())}</pre></details>"
        )
    return f'<div class="card"><dl class="meta">{cells}</dl>{trace}</div>'


def _rows(
    engine: Engine, run: RunRow, entries: Sequence[Entry], children: dict[str, RunRow], depth: int
) -> list[_Row]:
    """The timeline's rows: each entry, members of a gather or race indented, children nested."""
    run_id = run.id
    rows: list[_Row] = []
    group_end = -1
    for e in entries:
        in_group = e.position <= group_end
        rows.append(_Row(e, depth + in_group, run_id if depth else None))
        if e.kind in GROUP_KINDS and e.key and e.key.isdigit():
            group_end = e.position + int(e.key)
        # The child of this generation: an earlier one's has the same position.
        kid = ids.child_id(run_id, run.generation, e.position)
        child = children.get(kid) if e.kind in CHILD_KINDS else None
        if child is not None and depth < MAX_CHILD_DEPTH:
            grandchildren = {c.id: c for c in engine.store.list_runs() if c.parent_id == child.id}
            nested = _rows(engine, child, engine.history(child.id), grandchildren, depth + 1)
            rows.extend(_Row(r.entry, r.depth + in_group, r.child_of or child.id) for r in nested)
    return rows


def _svg(run: RunRow, rows: Sequence[_Row], now: float, tries: attempts_view.Tries) -> str:
    start, end = _time_range(run, [r.entry for r in rows], now)
    scale = CHART_W / (end - start)

    def x(t: float) -> float:
        return LABEL_W + (min(max(t, start), end) - start) * scale

    height = AXIS_H + len(rows) * ROW_H + PAD
    width = LABEL_W + CHART_W + PAD * 2
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="timeline of run '
        f'{escape(run.id)}">',
        _groups(rows, x),
        _axis(start, end, x, height),
    ]
    for i, r in enumerate(rows):
        parts.append(_entry_svg(r, AXIS_H + i * ROW_H, x, now, tries))
    if run.status not in FINISHED and start < now <= end:
        parts.append(
            f'<line class="now" x1="{x(now):.1f}" y1="{AXIS_H - 6}" x2="{x(now):.1f}" '
            f'y2="{height - PAD}"><title>now {escape(iso(now))}</title></line>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _time_range(run: RunRow, entries: Sequence[Entry], now: float) -> tuple[float, float]:
    start = min([run.created_at, *(e.started_at for e in entries)])
    end = max([start, *(_end(e, now)[0] for e in entries)])
    if run.finished_at is not None:
        end = max(end, run.finished_at)
    if end - start < 1e-3:
        end = start + 1e-3
    return start, end + (end - start) * 0.02


def _end(e: Entry, now: float) -> tuple[float, bool]:
    """When the entry's span ends on the chart, and whether that end is still open."""
    if e.finished_at is not None:
        return e.finished_at, False
    if e.due_at is not None and math.isfinite(e.due_at):
        return max(e.due_at, e.started_at), True
    return max(now, e.started_at), True


def _groups(rows: Sequence[_Row], x: Scale) -> str:
    """Soft bands behind the members of each gather or race, and behind each child's rows."""
    bands = []
    for i, r in enumerate(rows):
        if r.entry.kind not in GROUP_KINDS and r.entry.kind not in CHILD_KINDS:
            continue
        j = i + 1
        while j < len(rows) and rows[j].depth > r.depth:
            j += 1
        if j > i + 1:
            y = AXIS_H + (i + 1) * ROW_H
            bands.append(
                f'<rect class="group" x="{PAD / 2 + r.depth * INDENT}" y="{y}" '
                f'width="{LABEL_W + CHART_W + PAD - r.depth * INDENT}" '
                f'height="{(j - i - 1) * ROW_H}" rx="6"/>'
            )
    return "".join(bands)


def _axis(start: float, end: float, x: Scale, height: int) -> str:
    step = _tick_step(end - start)
    parts = ['<g class="axis">']
    parts.append(
        f'<text x="{PAD}" y="{AXIS_H - 14}">from {escape(iso(start))}</text>'
        f'<text x="{PAD}" y="{AXIS_H - 2}" class="sub">request</text>'
    )
    k = 0
    while start + k * step <= end:
        tx = x(start + k * step)
        label = "0" if k == 0 else "+" + _tick_text(k * step)
        anchor = "start" if k == 0 else "middle"
        parts.append(
            f'<line class="grid" x1="{tx:.1f}" y1="{AXIS_H - 6}" x2="{tx:.1f}" '
            f'y2="{height - PAD}"/><text x="{tx:.1f}" y="{AXIS_H - 12}" '
            f'text-anchor="{anchor}"><title>{escape(iso(start + k * step))}</title>'
            f"{escape(label)}</text>"
        )
        k += 1
    parts.append("</g>")
    return "".join(parts)


def _tick_step(span: float) -> float:
    for step in TICK_STEPS:
        if span / step <= 8:
            return step
    return TICK_STEPS[-1] * math.ceil(span / TICK_STEPS[-1] / 8)


def _tick_text(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds < 60:
        return f"{seconds:g}s"
    if seconds < 3600:
        m, s = divmod(round(seconds), 60)
        return f"{m}m" + (f"{s:02d}s" if s else "")
    if seconds < 86400:
        h, m = divmod(round(seconds) // 60, 60)
        return f"{h}h" + (f"{m:02d}m" if m else "")
    return f"{seconds / 86400:g}d"


def _entry_svg(r: _Row, y: int, x: Scale, now: float, tries: attempts_view.Tries) -> str:
    e = r.entry
    end, open_end = _end(e, now)
    inflight = e.status in (E_RUNNING, E_RETRYING)
    classes = ["child-entry" if r.child_of else "entry", f"kind-{e.kind}", e.status]
    if inflight:
        classes.append("inflight")
    x0, x1 = x(e.started_at), x(end)
    w = max(x1 - x0, 3.0)
    label = clip(f"{e.position} {e.kind} {e.name}({e.text})", 46 - r.depth * 2)
    tip = [
        f"{'child run ' + r.child_of + ': ' if r.child_of else ''}{e.describe()}",
        f"status {e.status}, attempts {e.attempts}, crashes {e.crashes}",
        f"started {iso(e.started_at)}",
        f"{'due' if open_end else 'finished'} {iso(end)}" if e.finished_at or open_end else "",
        outcome(e),
    ]
    parts = [
        f'<g class="{escape(" ".join(classes))}" data-position="{e.position}">',
        f"<title>{escape(chr(10).join(t for t in tip if t))}</title>",
        f'<text x="{PAD + r.depth * INDENT}" y="{y + 16}">{escape(label)}</text>',
        f'<rect class="bar" x="{x0:.1f}" y="{y + 5}" width="{w:.1f}" height="{ROW_H - 10}" '
        'rx="3"/>',
        attempts_view.marks_svg(tries.of(e, r.child_of), x, y, ROW_H),
    ]
    note = ""
    if e.status == E_FAILED:
        note = outcome(e)
    elif e.status == E_RETRYING:
        note = f"retrying (attempt {e.attempts + 1} due)"
    elif inflight:
        note = "in flight"
    if note:
        cls = "errtext" if e.status in (E_FAILED, E_RETRYING) else "sub"
        parts.append(_side_text(note, cls, x0, x0 + w, y))
    parts.append("</g>")
    return "".join(parts)


def _side_text(text: str, cls: str, before: float, after: float, y: int) -> str:
    room = LABEL_W + CHART_W + PAD * 2 - after - 8
    if room < 60:
        # No room after the bar: end the text where the bar begins, so it never
        # covers the bar (or, for a bar that fills the chart, inside it on the right).
        left = before - 6 - LABEL_W
        if left < 60:  # nor before it: inside the bar, in white
            width = int((after - before - 12) / 6.5)
            return (
                f'<text class="{cls} inbar" x="{before + 6:.1f}" y="{y + 16}">'
                f"{escape(clip(text, max(8, width)))}</text>"
            )
        return (
            f'<text class="{cls}" x="{before - 6:.1f}" y="{y + 16}" '
            f'text-anchor="end">{escape(clip(text, max(8, int(left / 6.5))))}</text>'
        )
    return (
        f'<text class="{cls}" x="{after + 6:.1f}" y="{y + 16}">'
        f"{escape(clip(text, max(8, int(room / 6.5))))}</text>"
    )


def _legend() -> str:
    items = [
        ("var(--step)", "step"),
        ("var(--sleep)", "sleep"),
        ("var(--wait)", "wait"),
        ("#b8c4d6", "gather / race"),
        ("#8a7cc8", "child run"),
        ("var(--warn)", "retrying"),
        ("var(--fail)", "failed"),
    ]
    spans = "".join(
        f'<span><i class="sw" style="background:{c}"></i>{escape(t)}</span>' for c, t in items
    )
    return (
        f'<div class="legend">{spans}{attempts_view.LEGEND}'
        "<span>dashed: in flight, drawn to its due time or to now</span></div>"
    )


def _log_table(entries: Sequence[Entry]) -> str:
    if not entries:
        return '<div class="card">The log is empty: the run has not started.</div>'
    head = "".join(
        f'<th class="{c}">{h}</th>'
        for h, c in (
            ("pos", "num"),
            ("kind", ""),
            ("request", ""),
            ("status", ""),
            ("attempts", "num"),
            ("crashes", "num"),
            ("duration", "num"),
            ("outcome", ""),
        )
    )
    body = []
    for e in entries:
        took = "–" if e.duration is None else span_text(e.duration)
        request = f"{e.name}({clip(e.text, ARGS_WIDTH)})"
        body.append(
            f'<tr class="entry-row {escape(e.status)}"><td class="num">{e.position}</td>'
            f'<td>{escape(e.kind)}</td><td class="mono">{escape(request)}</td>'
            f'<td><span class="badge {escape(e.status)}">{escape(e.status)}</span></td>'
            f'<td class="num">{e.attempts}</td><td class="num">{e.crashes}</td>'
            f'<td class="num">{escape(took)}</td>'
            f'<td class="outcome mono">{escape(outcome(e))}</td></tr>'
        )
    return (
        f'<div class="scroll"><table id="log"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )
