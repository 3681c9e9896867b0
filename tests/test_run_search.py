"""Store.find_runs: a page of runs newest first, by status, workflow, tag, time and text;
the pages of a search put together are exactly the runs a filter of all of them keeps."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

import contengine as ce
from contengine.store.rows import RunRow
from contengine.store.run_search import MAX_PAGE, RunQuery
from contengine.testing.clock import VirtualClock

pytestmark = pytest.mark.both_stores


@ce.step(name="search.charge")
def search_charge(order: str) -> str:
    """Fails for orders that say so."""
    if "bad" in order:
        raise ValueError(f"card declined for {order} 100%_off")
    return order


@ce.workflow(name="search.order")
def search_order(order: str) -> Generator[Any, Any, str]:
    """One step."""
    return (yield search_charge(order))


@ce.workflow(name="search.wait")
def search_wait(order: str) -> Generator[Any, Any, Any]:
    """Waits for a signal."""
    return (yield ce.wait("go"))


@pytest.fixture
def engine(tmp_path: Path) -> Generator[ce.Engine, None, None]:
    clock = VirtualClock(start=1_000_000.0)
    with ce.Engine(tmp_path / "search.db", clock=clock) as engine:
        for i in range(24):
            clock.advance(10)
            tags = ["even"] if i % 2 == 0 else ["odd", "x_y"]
            if i % 3 == 0:
                engine.start(search_wait, f"o{i}", id=f"Wait-{i:02}", tags=tags)
            else:
                order = f"bad-{i}" if i % 4 == 1 else f"ok-{i}"
                engine.start(search_order, order, id=f"ord-{i:02}", tags=tags)
        engine.run_until_idle()
        yield engine


def expected(engine: ce.Engine, q: RunQuery) -> list[str]:
    def keep(r: RunRow) -> bool:
        text = (q.text or "").lower()
        return (
            (q.status is None or r.status == q.status)
            and (q.workflow is None or r.workflow == q.workflow)
            and (q.tag is None or q.tag in r.tags)
            and (q.created_after is None or r.created_at >= q.created_after)
            and (q.created_before is None or r.created_at < q.created_before)
            and (
                not text
                or text in r.id.lower()
                or text in r.workflow.lower()
                or text in (r.error_text or "").lower()
            )
        )

    return [r.id for r in reversed(engine.store.list_runs()) if keep(r)]


QUERIES = [
    RunQuery(),
    RunQuery(status="failed"),
    RunQuery(status="waiting", tag="even"),
    RunQuery(workflow="search.order", tag="odd"),
    RunQuery(tag="x_y"),
    RunQuery(tag="x%y"),  # LIKE's own characters match only themselves
    RunQuery(text="WAIT"),
    RunQuery(text="declined"),
    RunQuery(text="100%_"),
    RunQuery(text="0%_"),
    RunQuery(text="_"),
    RunQuery(created_after=1_000_100.0, created_before=1_000_200.0),
    RunQuery(status="completed", text="ok-1"),
]


@pytest.mark.parametrize("q", QUERIES, ids=repr)
def test_pages_put_together_are_the_filtered_runs_newest_first(
    engine: ce.Engine, q: RunQuery
) -> None:
    want = expected(engine, q)
    got: list[str] = []
    for offset in range(0, 30, 7):
        page = engine.store.find_runs(RunQuery(**{**_fields(q), "offset": offset, "limit": 7}))
        assert page.total == len(want)
        assert page.offset == offset
        got += [r.id for r in page.runs]
    assert got == want


def _fields(q: RunQuery) -> dict[str, Any]:
    return {name: getattr(q, name) for name in q.__dataclass_fields__}


def test_the_filters_find_what_they_should(engine: ce.Engine) -> None:
    failed = engine.store.find_runs(RunQuery(status="failed"))
    assert failed.total == len(failed.runs) > 0
    assert all("bad" in r.id or "card declined" in (r.error_text or "") for r in failed.runs)
    assert engine.store.find_runs(RunQuery(tag="x%y")).total == 0
    assert engine.store.find_runs(RunQuery(text="100%_off")).total == failed.total
    assert engine.store.find_runs(RunQuery(text="100%_of_")).total == 0
    assert engine.store.find_runs(RunQuery(text="no such thing")).runs == []


def test_a_page_past_the_end_is_empty_and_still_counts(engine: ce.Engine) -> None:
    page = engine.store.find_runs(RunQuery(offset=500, limit=10))
    assert page.runs == [] and page.total == 24


@pytest.mark.parametrize("bad", [{"limit": 0}, {"limit": MAX_PAGE + 1}, {"offset": -1}])
def test_a_page_out_of_bounds_is_refused(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="limit|offset"):
        RunQuery(**bad)
