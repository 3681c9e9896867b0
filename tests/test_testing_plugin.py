"""The pytest plugin: fixtures ce_clock, ce_db_path and ce_engine, and ce_check (marker and
fixture), run in test sessions of their own with pytester."""

from __future__ import annotations

import sys
import types
from importlib.metadata import entry_points
from typing import Any

import pytest

pytest_plugins = ["pytester"]

# Loads the plugin whether or not the package's entry point is installed.
PLUGIN = ("-p", "contengine.testing.plugin")

FIXTURES = """
import pytest
import contengine as ce

@ce.step(name="fixtures.greet")
def greet(name):
    return f"hello {name}"

@ce.workflow(name="plugin_tests.slow_hello")
def slow_hello(name):
    yield ce.sleep(30 * 86400)
    return (yield greet(name))

ENGINES = []

def test_engine_uses_the_virtual_clock(ce_engine, ce_clock, ce_db_path, tmp_path):
    assert isinstance(ce_clock, ce.testing.VirtualClock)
    assert ce_engine.clock is ce_clock
    start = ce_clock.now()
    assert ce_engine.run(slow_hello, "ann", id="r1") == "hello ann"
    assert ce_clock.now() - start >= 30 * 86400  # a month passed, virtually
    assert ce_db_path.parent == tmp_path and ce_db_path.exists()
    with ce.Engine(ce_db_path, clock=ce_clock) as again:  # what a restart finds
        assert [(r.id, r.status) for r in again.runs()] == [("r1", "completed")]
    ENGINES.append(ce_engine)

def test_each_test_gets_a_fresh_engine_and_clock(ce_engine, ce_clock):
    assert ce_engine.runs() == []
    assert ce_clock.now() == ce.testing.VirtualClock().now()
    assert ENGINES and ENGINES[0] is not ce_engine

def test_the_previous_engine_was_closed():
    with pytest.raises(Exception, match="closed"):
        ENGINES[0].runs()
"""


def test_fixtures_work(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_fixtures=FIXTURES)
    result = pytester.runpytest(*PLUGIN)
    result.assert_outcomes(passed=3)


def test_fixtures_come_from_the_entry_point_once_installed(pytester: pytest.Pytester) -> None:
    names = {(ep.name, ep.value) for ep in entry_points(group="pytest11")}
    if ("contengine.testing.plugin", "contengine.testing.plugin") not in names:
        pytest.skip("the package is not installed with its entry point (pip install -e .)")
    pytester.makepyfile(test_fixtures=FIXTURES)
    pytester.runpytest().assert_outcomes(passed=3)
    # -p with the module's name finds it already loaded rather than loading it twice.
    pytester.runpytest(*PLUGIN).assert_outcomes(passed=3)
    pytester.makeconftest('pytest_plugins = ["contengine.testing.plugin"]')
    pytester.runpytest().assert_outcomes(passed=3)
    # And it can be turned off by that name.
    pytester.makeconftest("")
    result = pytester.runpytest("-p", "no:contengine.testing.plugin")
    result.assert_outcomes(errors=2, failed=1)  # the third test finds no engine to look at
    result.stdout.fnmatch_lines(["*fixture 'ce_engine' not found*"])


CHECKED = """
import pytest
import contengine as ce

@ce.step(name="plugin_tests.greet")
def greet(name):
    return f"hello {name}"

@ce.workflow(name="plugin_tests.hello")
def hello(name):
    return (yield greet(name))

@ce.workflow(name="plugin_tests.broken")
def broken():
    return (yield greet("x"))

BODIES = []

@pytest.mark.ce_check(hello, "ann", steps={"plugin_tests.greet": str.upper})
def test_marked():
    BODIES.append("marked")

@pytest.mark.ce_check(broken)
def test_marked_broken():
    BODIES.append("broken")

@pytest.mark.ce_check
def test_marked_without_a_workflow():
    BODIES.append("bare")

def test_helper(ce_check):
    assert ce_check(hello, "bob") == "report of plugin_tests.hello"

def test_bodies_ran_only_after_a_passing_check():
    assert BODIES == ["marked"]
"""


class FakeCheck:
    """Stands in for contengine.testing.check: records calls, fails for `broken`."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def check(self, workflow: Any, *args: Any, **kwargs: Any) -> str:
        """Record the call; raise AssertionError for the broken workflow."""
        self.calls.append((workflow.name, args, kwargs))
        if workflow.name == "plugin_tests.broken":
            raise AssertionError("crash after commit 1 changed the result")
        return f"report of {workflow.name}"


def test_ce_check_marker_and_helper_call_check(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeCheck()
    module = types.ModuleType("contengine.testing.check")
    module.check = fake.check  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "contengine.testing.check", module)
    pytester.makepyfile(test_checked=CHECKED)
    result = pytester.runpytest(*PLUGIN, "--strict-markers")
    result.assert_outcomes(passed=3, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*_ test_marked_broken _*",
            "E * AssertionError: crash after commit 1 changed the result",
            "*_ test_marked_without_a_workflow _*",
            "@pytest.mark.ce_check needs the workflow to check*",
        ]
    )
    assert fake.calls == [
        ("plugin_tests.hello", ("ann",), {"steps": {"plugin_tests.greet": str.upper}}),
        ("plugin_tests.broken", (), {}),
        ("plugin_tests.hello", ("bob",), {}),
    ]


def test_the_marker_is_declared(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest(*PLUGIN, "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.ce_check(workflow, *args, **kwargs):*"])


REAL_CHECK = """
import pytest
import contengine as ce

@ce.step(name="real_check.greet")
def greet(name):
    return f"hello {name}"

@ce.workflow(name="plugin_tests.real_hello")
def real_hello(name):
    first = yield greet(name)
    second = yield greet(first)
    return second

@pytest.mark.ce_check(real_hello, "ann")
def test_a_deterministic_workflow_passes():
    pass
"""


def test_the_marker_runs_the_real_check(pytester: pytest.Pytester) -> None:
    pytest.importorskip("contengine.testing.check")
    pytester.makepyfile(test_real=REAL_CHECK)
    pytester.runpytest(*PLUGIN).assert_outcomes(passed=1)
