"""The table of runs the HTML pages share (the runs page, a run page's child runs)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape

from ..core.tracebacks import exception_line
from ..store.base import FAILED, RunRow
from .render import NOTE_WIDTH, clip, iso, span_text

# Where a run id links to on a page: the dashboard's run page (static pages link nowhere).
Link = Callable[[str], str]


def runs_table(
    runs: Sequence[RunRow], now: float, child_column: bool = False, link: Link | None = None
) -> str:
    """A table of runs for the pages: id, workflow, (status,) created, duration, and a
    failed run's exception or the run's note; with link, each id links to link(id)."""
    head = "<th>id</th><th>workflow</th>"
    head += "<th>status</th>" if child_column else ""
    head += '<th>created</th><th class="num">duration</th><th>note or error</th>'
    body = []
    for r in runs:
        if r.finished_at is not None:
            took = span_text(r.finished_at - r.created_at)
        else:
            took = f"{span_text(max(0.0, now - r.created_at))} so far"
        status = (
            f'<td><span class="badge {escape(r.status)}">{escape(r.status)}</span></td>'
            if child_column
            else ""
        )
        shown_id = escape(r.id)
        if link is not None:
            shown_id = f'<a href="{escape(link(r.id))}">{shown_id}</a>'
        body.append(
            f'<tr class="run-row {escape(r.status)}" data-run="{escape(r.id)}">'
            f'<td class="mono">{shown_id}</td>'
            f'<td class="mono">{escape(r.workflow)}</td>{status}'
            f'<td>{escape(iso(r.created_at))}</td><td class="num">{escape(took)}</td>'
            f"<td>{note_or_error(r)}</td></tr>"
        )
    return (
        f'<div class="scroll"><table class="runs"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def note_or_error(r: RunRow) -> str:
    """A row's last cell: a failed run's exception (read from its stored traceback, so
    no code is needed), then its note."""
    parts = []
    if r.status == FAILED:
        line = exception_line(r.error_text)
        if line:
            parts.append(f'<span class="error">{escape(clip(line, NOTE_WIDTH))}</span>')
    if r.note:
        parts.append(escape(clip(r.note, NOTE_WIDTH)))
    return "<br>".join(parts)
