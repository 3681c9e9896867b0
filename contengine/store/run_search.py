"""Finding runs a page at a time, newest first: the filters a dashboard or an operator
asks by, turned into one WHERE clause that both stores run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .rows import RunRow

# The most runs one page may hold: a page is read whole, so a bound keeps it small.
MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class RunQuery:
    """Which runs to find: every filter given must hold; offset and limit pick the page."""

    status: str | None = None
    workflow: str | None = None
    tag: str | None = None
    text: str | None = None  # a substring of the id, the workflow or the error, any case
    created_after: float | None = None  # created at or after this time
    created_before: float | None = None  # created before this time
    parent_id: str | None = None  # only the children of this run
    offset: int = 0
    limit: int = 50

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_PAGE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE}, not {self.limit!r}")
        if self.offset < 0:
            raise ValueError(f"offset must be 0 or more, not {self.offset!r}")


@dataclass(frozen=True, slots=True)
class RunPage:
    """One page of a search: its runs (newest first) and how many runs match in all."""

    runs: list[RunRow] = field(default_factory=list)
    total: int = 0
    offset: int = 0


def like_escaped(text: str) -> str:
    """Text for a LIKE pattern, with LIKE's own characters escaped by a backslash."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def conditions(
    q: RunQuery, mark: str, tag_condition: Callable[[str], tuple[str, object]]
) -> tuple[str, list[object]]:
    """The WHERE clause (empty when nothing is asked) and its parameters, written with
    the store's parameter mark; tag_condition gives the store's own test of one tag."""
    where: list[str] = []
    params: list[object] = []

    def add(sql: str, *values: object) -> None:
        where.append(sql)
        params.extend(values)

    if q.status is not None:
        add(f"status = {mark}", q.status)
    if q.workflow is not None:
        add(f"workflow = {mark}", q.workflow)
    if q.tag is not None:
        add(*tag_condition(q.tag))
    if q.parent_id is not None:
        add(f"parent_id = {mark}", q.parent_id)
    if q.created_after is not None:
        add(f"created_at >= {mark}", q.created_after)
    if q.created_before is not None:
        add(f"created_at < {mark}", q.created_before)
    if q.text:
        pattern = f"%{like_escaped(q.text.lower())}%"
        like = f"LIKE {mark} ESCAPE '\\'"
        add(
            f"(lower(id) {like} OR lower(workflow) {like} "
            f"OR lower(coalesce(error_text, '')) {like})",
            pattern,
            pattern,
            pattern,
        )
    return (" WHERE " + " AND ".join(where) if where else ""), params
