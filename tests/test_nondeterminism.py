"""Replaying a run against changed workflow code: mismatches stop it, nothing else is touched.

Each scenario runs version 1 of a workflow until a simulated crash (a step raising a
BaseException, which leaves its entry "running"), then opens a new engine on the same
file with version 2 registered under the same name. A changed request sequence must
raise ce.NonDeterminismError without running or writing anything, and putting version 1
back must let the run finish.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from stores import current

import contengine as ce

pytestmark = pytest.mark.both_stores

Body = Callable[[int], Generator[Any, Any, Any]]

# Every step execution, in order: (step name, first argument).
executed: list[tuple[str, Any]] = []
# Data the workflow reads directly, as a workflow reading an env var or a clock would.
WORLD: dict[str, str] = {"region": "eu"}
ARMED = {"halt": True}


class Crash(BaseException):
    """Stands in for the process dying in the middle of a step."""


@pytest.fixture(autouse=True)
def _fresh_world() -> Iterator[None]:
    executed.clear()
    WORLD["region"] = "eu"
    ARMED["halt"] = True
    yield
    executed.clear()


@ce.step
def step_a(n: int) -> int:
    """First step."""
    executed.append(("step_a", n))
    return n + 1


@ce.step
def step_b(x: int, opts: dict[str, Any]) -> int:
    """Second step, with a JSON-like argument."""
    executed.append(("step_b", x))
    return x * 2


@ce.step(name="step_b_v2")
def step_b_renamed(x: int, opts: dict[str, Any]) -> int:
    """step_b under a new name."""
    executed.append(("step_b_v2", x))
    return x * 2


@ce.step
def step_c(x: int, mode: str = "fast") -> int:
    """Third step, with a keyword argument."""
    executed.append(("step_c", x))
    return x + 100


@ce.step
def step_us(x: int) -> int:
    """The other branch of the region switch."""
    executed.append(("step_us", x))
    return x + 200


@ce.step
def extra(x: int) -> int:
    """A step that only version 2 has."""
    executed.append(("extra", x))
    return x


@ce.step
def halt(x: int, *, mode: str = "fast") -> int:
    """The step in flight when version 1 'crashes'."""
    executed.append(("halt", x))
    if ARMED["halt"]:
        raise Crash
    return x


def v1(n: int) -> Generator[Any, Any, Any]:
    """The recorded code: a=6, b=12, c=112, then halt(112) crashes at position 3."""
    a = yield step_a(n)
    b = yield step_b(a, {"k": [1, 2]})
    if WORLD["region"] == "eu":
        c = yield step_c(b, mode="fast")
    else:
        c = yield step_us(b)
    d = yield halt(c, mode="fast")
    return (a, b, c, d)


def define(name: str, body: Body) -> ce.Workflow[[int], Any]:
    """Register body as the current code of workflow `name`, as a redeploy would."""

    @ce.workflow(name=name)
    def flow(n: int) -> Generator[Any, Any, Any]:
        return (yield from body(n))

    return flow


# -- version 2 of the code, one change each ------------------------------------------


def v2_reordered(n: int) -> Generator[Any, Any, Any]:
    b = yield step_b(n, {"k": [1, 2]})
    a = yield step_a(b)
    c = yield step_c(a, mode="fast")
    return (yield halt(c, mode="fast"))


def v2_renamed(n: int) -> Generator[Any, Any, Any]:
    a = yield step_a(n)
    b = yield step_b_renamed(a, {"k": [1, 2]})
    c = yield step_c(b, mode="fast")
    return (yield halt(c, mode="fast"))


def v2_added_in_middle(n: int) -> Generator[Any, Any, Any]:
    a = yield step_a(n)
    a = yield extra(a)
    b = yield step_b(a, {"k": [1, 2]})
    c = yield step_c(b, mode="fast")
    return (yield halt(c, mode="fast"))


def v2_removed(n: int) -> Generator[Any, Any, Any]:
    a = yield step_a(n)
    c = yield step_c(a, mode="fast")
    return (yield halt(c, mode="fast"))


def v2_changed_args(n: int) -> Generator[Any, Any, Any]:
    a = yield step_a(n)
    b = yield step_b(a, {"k": [1, 3]})
    c = yield step_c(b, mode="fast")
    return (yield halt(c, mode="fast"))


def v2_changed_kwargs(n: int) -> Generator[Any, Any, Any]:
    a = yield step_a(n)
    b = yield step_b(a, {"k": [1, 2]})
    c = yield step_c(b, mode="fast")
    return (yield halt(c, mode="slow"))


def v2_returns_early(n: int) -> Generator[Any, Any, Any]:
    a = yield step_a(n)
    b = yield step_b(a, {"k": [1, 2]})
    return (a, b)


def switch_region() -> None:
    WORLD["region"] = "us"


@dataclass(frozen=True)
class Scenario:
    """Version 2 of the code and the mismatch it must be stopped at."""

    body: Body
    position: int
    recorded: str
    replayed: str
    before: Callable[[], None] = lambda: None


SCENARIOS = {
    "reordered": Scenario(v2_reordered, 0, "step step_a(5)", "step step_b(5, {'k': [1, 2]})"),
    "renamed": Scenario(
        v2_renamed, 1, "step step_b(6, {'k': [1, 2]})", "step step_b_v2(6, {'k': [1, 2]})"
    ),
    "added_in_middle": Scenario(
        v2_added_in_middle, 1, "step step_b(6, {'k': [1, 2]})", "step extra(6)"
    ),
    "removed": Scenario(
        v2_removed, 1, "step step_b(6, {'k': [1, 2]})", "step step_c(6, mode='fast')"
    ),
    "changed_args": Scenario(
        v2_changed_args, 1, "step step_b(6, {'k': [1, 2]})", "step step_b(6, {'k': [1, 3]})"
    ),
    # The in-flight entry (logged "running" at the crash) is compared as well.
    "changed_kwargs_of_step_in_flight": Scenario(
        v2_changed_kwargs, 3, "step halt(112, mode='fast')", "step halt(112, mode='slow')"
    ),
    "returns_before_log_ends": Scenario(
        v2_returns_early, 2, "step step_c(12, mode='fast')", "(nothing)"
    ),
    # Same code, but it branches on data that changed between the runs.
    "branch_on_nondeterministic_data": Scenario(
        v1, 2, "step step_c(12, mode='fast')", "step step_us(12)", switch_region
    ),
}


# -- helpers ----------------------------------------------------------------------


def dump_log(path: Path) -> list[tuple[Any, ...]]:
    """Every row of the `log` table, read outside contengine."""
    order = "run_id, position" if current().postgres else "id"
    with current().sql(path) as conn:
        return [tuple(row) for row in conn.execute(f"SELECT * FROM log ORDER BY {order}")]


def history(engine: ce.Engine, run_id: str) -> list[tuple[Any, ...]]:
    """The run's log as plain tuples (outcomes decoded)."""
    return [
        (e.position, e.kind, e.name, e.key, e.text, e.status, e.attempts, e.crashes, e.value)
        for e in engine.history(run_id)
    ]


def crash_version_1(path: Path, name: str, run_id: str) -> ce.Workflow[[int], Any]:
    """Run version 1 until halt() crashes at position 3; return the workflow."""
    flow = define(name, v1)
    with ce.Engine(path) as engine, pytest.raises(Crash):
        engine.run(flow, 5, id=run_id)
    return flow


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A workflow name of this test's own (the registry is process-wide)."""
    return f"nd.{request.node.name}"


# -- mismatches ---------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_changed_code_stops_replay_and_changes_nothing(
    tmp_path: Path, name: str, scenario: Scenario
) -> None:
    """A replay that yields another request raises, runs nothing and writes no log."""
    path = tmp_path / "app.db"
    crash_version_1(path, name, "r")
    ran_by_v1 = list(executed)
    assert [s for s, _ in ran_by_v1] == ["step_a", "step_b", "step_c", "halt"]
    log_rows = dump_log(path)

    scenario.before()
    flow2 = define(name, scenario.body)
    with ce.Engine(path) as engine:
        entries = history(engine, "r")
        assert [e[5] for e in entries] == ["completed", "completed", "completed", "running"]

        with pytest.raises(ce.NonDeterminismError) as info:
            engine.run(flow2, 5, id="r")
        err = info.value
        assert err.position == scenario.position
        assert err.recorded is not None and scenario.recorded in err.recorded
        message = str(err)
        assert f"position {scenario.position}" in message
        assert f"recorded: {scenario.recorded}" in message
        assert f"replayed: {scenario.replayed}" in message
        assert f"-{scenario.recorded}" in err.diff
        if scenario.replayed != "(nothing)":
            assert err.replayed == scenario.replayed
            assert f"+{scenario.replayed}" in err.diff
        else:
            assert err.replayed is None

        # run.result() on a handle raises the same way.
        run = engine.get_run("r")
        with pytest.raises(ce.NonDeterminismError) as again:
            run.result()
        assert again.value.position == scenario.position

        report = engine.run_until_idle()  # must not raise
        assert isinstance(report.stuck.get("r"), ce.NonDeterminismError)
        assert report.finished == []
        assert "r" in engine.stuck()

        assert executed == ran_by_v1, "version 2 executed a step"
        assert history(engine, "r") == entries
        assert run.status == "running"
        assert run.note is not None and f"position {scenario.position}" in run.note
    assert dump_log(path) == log_rows

    # Version 1 back: the run resumes at the step in flight and completes.
    ARMED["halt"] = False
    WORLD["region"] = "eu"
    define(name, v1)
    with ce.Engine(path) as engine:
        assert engine.get_run("r").result() == (6, 12, 112, 112)
        assert executed == [*ran_by_v1, ("halt", 112)]
        assert engine.get_run("r").status == "completed"
        assert engine.get_run("r").note is None
        assert engine.stuck() == {}


def test_stuck_run_is_reported_by_a_fresh_engine_without_raising(tmp_path: Path, name: str) -> None:
    """A process that only calls run_until_idle() sees the mismatch in report.stuck."""
    path = tmp_path / "app.db"
    crash_version_1(path, name, "r")
    log_rows = dump_log(path)
    define(name, v2_reordered)
    with ce.Engine(path) as engine:
        report = engine.run_until_idle()
        err = report.stuck["r"]
        assert isinstance(err, ce.NonDeterminismError)
        assert err.position == 0
        assert report.driven == 1  # tried once, not again and again in one call
        assert engine.get_run("r").status == "running"
        assert engine.get_run("r").note is not None
    assert dump_log(path) == log_rows
    assert [s for s, _ in executed] == ["step_a", "step_b", "step_c", "halt"]


# -- what is not a mismatch -----------------------------------------------------------


class Opaque:
    """An object with no canonical text: its requests are compared by name only."""

    def __init__(self, tag: int) -> None:
        self.tag = tag


@ce.step
def use(obj: Any) -> str:
    """Records what it was given."""
    executed.append(("use", obj))
    return "used"


def opaque_body(tag: int) -> Body:
    def body(n: int) -> Generator[Any, Any, Any]:
        used = yield use(Opaque(tag))
        return (used, (yield halt(n)))

    return body


def dict_body(order: list[str]) -> Body:
    def body(n: int) -> Generator[Any, Any, Any]:
        used = yield use({k: k.upper() for k in order})
        return (used, (yield halt(n)))

    return body


def set_body(order: list[str]) -> Body:
    def body(n: int) -> Generator[Any, Any, Any]:
        members: set[str] = set()
        for m in order:
            members.add(m)
        used = yield use({"tags": members, "frozen": frozenset(reversed(order))})
        return (used, (yield halt(n)))

    return body


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(opaque_body(1), opaque_body(2), id="noncanonical_object_not_compared"),
        pytest.param(
            dict_body(["a", "b", "c"]), dict_body(["c", "a", "b"]), id="dict_insertion_order"
        ),
        pytest.param(
            set_body(["x", "y", "z", "w"]), set_body(["w", "z", "y", "x"]), id="set_build_order"
        ),
    ],
)
def test_equivalent_or_uncomparable_arguments_replay_fine(
    tmp_path: Path, name: str, first: Body, second: Body
) -> None:
    """Arguments without canonical text are not compared; equal dicts and sets match."""
    path = tmp_path / "app.db"
    define(name, first)
    with ce.Engine(path) as engine, pytest.raises(Crash):
        engine.run(name, 7, id="r")
    assert [s for s, _ in executed] == ["use", "halt"]

    ARMED["halt"] = False
    define(name, second)
    with ce.Engine(path) as engine:
        assert engine.get_run("r").result() == ("used", 7)
        # The recorded `use` was replayed, not run again; only halt ran live.
        assert [s for s, _ in executed] == ["use", "halt", "halt"]
        assert [e.status for e in engine.history("r")] == ["completed", "completed"]


def test_noncanonical_argument_is_logged_without_a_key(tmp_path: Path, name: str) -> None:
    """An argument with no canonical text is stored with key None: that is why it is skipped."""
    define(name, opaque_body(1))
    with ce.Engine(tmp_path / "app.db") as engine:
        ARMED["halt"] = False
        engine.run(name, 7, id="r")
        first = engine.history("r")[0]
    assert first.name == "use"
    assert first.key is None
    assert "Opaque" in first.text


# -- finished runs --------------------------------------------------------------------


def test_finished_run_is_never_replayed_so_a_step_added_at_the_end_is_harmless(
    tmp_path: Path, name: str
) -> None:
    """Changing the code of a completed run cannot affect it: it is never rebuilt."""
    path = tmp_path / "app.db"
    ARMED["halt"] = False
    define(name, v1)
    with ce.Engine(path) as engine:
        assert engine.run(name, 5, id="r") == (6, 12, 112, 112)
    log_rows = dump_log(path)
    executed.clear()

    entered: list[int] = []

    def v2_with_step_at_end(n: int) -> Generator[Any, Any, Any]:
        entered.append(n)
        result = yield from v1(n)
        yield extra(0)
        return result

    flow2 = define(name, v2_with_step_at_end)
    with ce.Engine(path) as engine:
        assert engine.run(flow2, 5, id="r") == (6, 12, 112, 112)
        assert engine.get_run("r").result() == (6, 12, 112, 112)
        report = engine.run_until_idle()
        assert report.driven == 0 and report.stuck == {}
        assert engine.get_run("r").status == "completed"
    assert entered == [], "the finished run's workflow was called again"
    assert executed == []
    assert dump_log(path) == log_rows
