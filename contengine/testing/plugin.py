"""The pytest plugin (loaded on install through the `pytest11` entry point).

Fixtures:

- `ce_clock`: a ce.testing.VirtualClock, so `ce.sleep(days=3)` takes microseconds.
- `ce_db_path`: the path of a fresh database file in the test's temporary directory.
- `ce_engine`: a ce.Engine on `ce_db_path` using `ce_clock`, closed after the test.
  Open a second `ce.Engine(ce_db_path, clock=ce_clock)` to see what a restart finds.
- `ce_check`: `ce_check(workflow, *args, **kwargs)` runs ce.testing.check on the
  workflow (crashing it at every boundary) and returns its report.

The marker `@pytest.mark.ce_check(workflow, *args, **kwargs)` runs the same check
before the test body; a failing check fails the test.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ..engine.engine import Engine
    from .clock import VirtualClock

MARKER = "ce_check"


def pytest_configure(config: pytest.Config) -> None:
    """Declare the ce_check marker, so --strict-markers accepts it."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}(workflow, *args, **kwargs): run ce.testing.check on the workflow with "
        f"these arguments before the test body (crashing it at every boundary)",
    )


def run_check(workflow: Any, *args: Any, **kwargs: Any) -> Any:
    """ce.testing.check(workflow, *args, **kwargs), imported when first used."""
    # Imported here, so the plugin loads (and its fixtures work) without the checker.
    check = importlib.import_module("contengine.testing.check").check
    return check(workflow, *args, **kwargs)


@pytest.fixture
def ce_clock() -> VirtualClock:
    """A virtual clock: it moves only when the engine jumps it to the next timer."""
    from .clock import VirtualClock

    return VirtualClock()


@pytest.fixture
def ce_db_path(tmp_path: Path) -> Path:
    """The path of a fresh database file, in the test's temporary directory."""
    return tmp_path / "contengine.db"


@pytest.fixture
def ce_engine(ce_db_path: Path, ce_clock: VirtualClock) -> Iterator[Engine]:
    """A fresh engine on a temporary file with the virtual clock; closed after the test."""
    from ..engine.engine import Engine

    engine = Engine(ce_db_path, clock=ce_clock)
    try:
        yield engine
    finally:
        engine.close()


@pytest.fixture
def ce_check() -> Callable[..., Any]:
    """ce_check(workflow, *args, **kwargs): ce.testing.check, returning its report."""
    return run_check


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    """Run the check a ce_check marker asks for before the test body; a failing check fails
    the test (and the body does not run)."""
    marker = item.get_closest_marker(MARKER)
    if marker is None:
        return
    if not marker.args:
        pytest.fail(
            f"@pytest.mark.{MARKER} needs the workflow to check: "
            f"@pytest.mark.{MARKER}(my_workflow, arg1, ...)",
            pytrace=False,
        )
    __tracebackhide__ = True
    run_check(*marker.args, **marker.kwargs)
