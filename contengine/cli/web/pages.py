"""The dashboard's HTML: whole pages, and the fragments of them that refresh while runs move."""

from __future__ import annotations

import math
from collections.abc import Mapping
from html import escape
from urllib.parse import quote, urlencode

from ...engine.engine import Engine
from ...errors import ContengineError
from ...store.base import FINISHED, RUN_STATUSES
from ...store.run_search import MAX_PAGE, RunQuery
from ..common import CommandError, parse_duration
from ..render import clip, iso, short
from ..run_tables import runs_table
from ..timeline import run_body

PAGE_SIZE = 50
MAX_OFFSET = 10**9  # past any database's runs, and within every store's integers
# The choices of the "created" filter: (value, label); a value is an age (see parse_duration).
WINDOWS = (("", "any time"), ("1h", "last hour"), ("24h", "last day"), ("7d", "last week"))
FILTERS = ("status", "workflow", "tag", "q", "since", "offset", "limit")


class BadRequest(ValueError):
    """A request the dashboard cannot answer as asked (a bad filter, a bad page)."""


def run_link(run_id: str) -> str:
    """The dashboard's address of a run's page."""
    return "/runs/" + quote(run_id, safe="")


def parse_query(params: Mapping[str, str], now: float) -> RunQuery:
    """The search a runs page's address asks for; BadRequest saying what is wrong."""
    if any("\x00" in v for v in params.values()):
        raise BadRequest("a filter holds a NUL character")
    unknown = set(params) - set(FILTERS) - {"token"}
    if unknown:
        raise BadRequest(f"unknown filter {sorted(unknown)[0]!r}; filters: {', '.join(FILTERS)}")
    status = params.get("status") or None
    if status is not None and status not in RUN_STATUSES:
        raise BadRequest(f"status must be one of {', '.join(RUN_STATUSES)}, not {status!r}")
    created_after = None
    if params.get("since"):
        try:
            created_after = now - parse_duration(params["since"], "since")
        except CommandError as exc:
            raise BadRequest(str(exc)) from None
    try:
        offset = _whole(params.get("offset") or "0")
        limit = _whole(params.get("limit") or str(PAGE_SIZE))
        if offset > MAX_OFFSET:
            raise ValueError(f"offset must be at most {MAX_OFFSET}")
        return RunQuery(
            status=status,
            workflow=params.get("workflow") or None,
            tag=params.get("tag") or None,
            text=params.get("q") or None,
            created_after=created_after,
            offset=offset,
            limit=limit,
        )
    except ValueError as exc:
        raise BadRequest(f"bad page: {exc} (limit at most {MAX_PAGE})") from None


def _whole(text: str) -> int:
    """A whole number written in ASCII digits (int() takes other scripts' digits too)."""
    if not (text.isascii() and text.lstrip("-").isdigit()) or len(text) > 12:
        raise ValueError(f"not a whole number: {text[:20]!r}")
    return int(text)


def page(title: str, body: str, token: str) -> str:
    """A whole dashboard page around body."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="contengine-token" content="{escape(token)}">'
        f"<title>{escape(title)}</title>"
        '<link rel="stylesheet" href="/static/style.css"></head>\n<body>\n'
        '<nav class="top"><a class="brand" href="/">contengine</a><a href="/">runs</a>'
        '<a href="/metrics">metrics</a><span class="live" id="live-status">live</span></nav>\n'
        f"{body}\n"
        '<script src="/static/app.js"></script>\n</body></html>\n'
    )


def runs_page(engine: Engine, params: Mapping[str, str], token: str) -> str:
    """The runs page: the filters, then the matching runs (refreshed while shown)."""
    now = engine.clock.now()
    query = parse_query(params, now)
    kept = {k: v for k, v in params.items() if k in FILTERS and v}
    body = (
        f"<h1>Runs</h1>{_filters(kept)}"
        f'<div id="runs" data-live="/fragment/runs?{escape(urlencode(kept))}">'
        f"{runs_fragment(engine, query, kept, now)}</div>"
    )
    return page("contengine runs", body, token)


def _filters(kept: Mapping[str, str]) -> str:
    status_options = "".join(
        f'<option value="{s}"{" selected" if kept.get("status") == s else ""}>{s or "any"}</option>'
        for s in ("", *RUN_STATUSES)
    )
    window_options = "".join(
        f'<option value="{v}"{" selected" if kept.get("since", "") == v else ""}>{t}</option>'
        for v, t in WINDOWS
    )

    def text(name: str, label: str, hint: str) -> str:
        value = escape(kept.get(name, ""))
        return f'<label>{label}<input name="{name}" value="{value}" placeholder="{hint}"></label>'

    return (
        '<div class="card"><form class="filters" method="get" action="/" id="filters">'
        f'<label>status<select name="status">{status_options}</select></label>'
        f"{text('workflow', 'workflow', 'exact name')}{text('tag', 'tag', 'one tag')}"
        f"{text('q', 'search', 'id, workflow or error')}"
        f'<label>created<select name="since">{window_options}</select></label>'
        '<button type="submit">filter</button><a href="/">clear</a></form></div>'
    )


def runs_fragment(engine: Engine, query: RunQuery, kept: Mapping[str, str], now: float) -> str:
    """The counts, the pager and the table of one page of runs (never a silent cap)."""
    found = engine.store.find_runs(query)
    if not found.runs:
        shown = f"No run matches (of {found.total})." if found.total else "No run matches."
        return f'<div class="card"><p id="shown">{shown}</p></div>'
    first, last = query.offset + 1, query.offset + len(found.runs)
    pages = max(1, math.ceil(found.total / query.limit))
    here = query.offset // query.limit + 1

    def to(offset: int, text: str) -> str:
        address = urlencode({**kept, "offset": str(offset)})
        return f'<a class="page" href="/?{escape(address)}">{text}</a>'

    pager = [f'<span id="shown">runs {first}–{last} of {found.total}</span>']
    if query.offset > 0:
        pager.append(to(max(0, query.offset - query.limit), "← newer"))
    if last < found.total:
        pager.append(to(query.offset + query.limit, "older →"))
    pager.append(f"<span>page {here} of {pages}, as of {escape(iso(now))}</span>")
    return (
        f'<div class="pager">{"".join(pager)}</div>'
        f"{runs_table(found.runs, now, child_column=True, link=run_link)}"
    )


def run_page(engine: Engine, run_id: str, token: str) -> str:
    """A run's page: its actions, then header, timeline, log, published values and
    children (refreshed while shown). LookupError if there is no such run."""
    fragment = run_fragment(engine, run_id)
    address = "/fragment" + run_link(run_id)
    body = (
        f"<h1>Run <code>{escape(run_id)}</code></h1>{_actions(run_id)}"
        f'<div id="run" data-live="{escape(address)}">{fragment}</div>'
    )
    return page(f"contengine run {run_id}", body, token)


def run_fragment(engine: Engine, run_id: str) -> str:
    """The moving part of a run's page."""
    row, parts = run_body(engine, run_id, link=run_link)
    published = _published(engine, run_id)
    if published:
        parts.insert(1, published)
    if row.status in FINISHED:
        parts.insert(0, '<p class="sub" id="ended">This run has ended.</p>')
    return "\n".join(parts)


def _published(engine: Engine, run_id: str) -> str:
    values = engine.store.published(run_id)
    if not values:
        return ""
    rows = []
    for key in sorted(values):
        try:
            shown = short(engine.serde.loads(values[key], f"the value {key!r} published"))
        except ContengineError as exc:
            shown = clip(f"(unreadable here: {exc})", 200)
        rows.append(
            f'<tr><td class="mono">{escape(key)}</td><td><pre class="mono">{escape(shown)}'
            "</pre></td></tr>"
        )
    return (
        '<h2>Published values</h2><div class="scroll published"><table>'
        f"<thead><tr><th>key</th><th>value</th></tr></thead><tbody>{''.join(rows)}</tbody>"
        "</table></div>"
    )


def _actions(run_id: str) -> str:
    base = "/api" + run_link(run_id)
    rid = run_id  # escaped once, with the whole confirmation text, by form()

    def form(action: str, confirm: str, fields: str, label: str, danger: bool = False) -> str:
        cls = ' class="danger"' if danger else ""
        return (
            f'<form data-action="{escape(base)}/{action}" data-confirm="{escape(confirm)}" '
            f'id="{action}-form">{fields}<button type="submit"{cls}>{label}</button></form>'
        )

    return (
        '<div class="card"><div class="actions">'
        + form("cancel", f"Cancel run {rid}?", "", "cancel", danger=True)
        + form("retry", f"Retry run {rid} from where it failed or was cancelled?", "", "retry")
        + form(
            "fork",
            f"Fork run {rid}? A new run copies its log up to the position given.",
            '<label>at position <input name="at" size="4" required></label>',
            "fork",
        )
        + form(
            "signal",
            f"Send a signal to run {rid}?",
            '<label>signal <input name="name" size="10" required></label>'
            '<label>payload (JSON) <input name="payload" size="16" placeholder="null"></label>',
            "send",
        )
        + '</div><div class="message" id="action-message" role="status"></div></div>'
    )
