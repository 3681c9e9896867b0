"""ce.testing.lint and `contengine lint`: replay hazards found in a workflow's source."""

from __future__ import annotations

import argparse
import ast
import collections
import datetime
import datetime as dt
import hashlib
import importlib.util
import inspect
import os
import pathlib
import random
import random as rnd
import re
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.request
import uuid
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime as DateTime
from os import environ, getenv
from pathlib import Path
from random import choice as pick
from time import time as wall
from typing import Any

import broken_workflows
import crashing_child
import pytest
import test_gather

import contengine as ce
from contengine.testing.lint import Finding, lint
from contengine.testing.lint_cli import add_lint_command, lint_main

Flow = Generator[Any, Any, Any]
REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "examples").glob("*.py"))
TAGS = frozenset({"red", "green", "blue"})
PORTS = frozenset({80, 443})
STATE: dict[str, int] = {}
LOG: list[str] = []


@ce.step(name="lint.note")
def note(label: Any) -> Any:
    """Return the label."""
    return label


@ce.step
def stamped(label: str) -> str:
    """A step may read the clock: only the workflow's body is checked."""
    return f"{label}@{time.time()}"


def rules(workflow: Any) -> list[tuple[str, str]]:
    """(rule, offending code) of each finding, in source order."""
    return [(f.rule, f.code) for f in lint(workflow)]


def source_line(finding: Finding) -> str:
    """The source line a finding points at."""
    return (REPO / "tests" / Path(finding.path).name).read_text().splitlines()[finding.line - 1]


# -- the corpus ----------------------------------------------------------------------------------

# The replay-safe alternative each rule's message must offer.
ALTERNATIVES = {
    "time": "yield ce.now()",
    "random": "yield ce.random()",
    "set-order": "sorted(",
    "environ": "as an argument",
    "global-state": "local variable",
    "hash": "hashlib.sha256",
    "io": "in a step",
    "mutable-default": "default to None",
}


def test_the_corpus_has_twelve_different_defects_four_of_them_code_changes() -> None:
    names = [d.name for d in broken_workflows.DEFECTS]
    assert len(names) >= 12 and len(set(names)) == len(names)
    assert len({d.cause for d in broken_workflows.DEFECTS}) == len(names)
    assert {d.name for d in broken_workflows.PAIRS} == {
        "step_order",
        "step_args",
        "step_added",
        "real_time_timeout",
    }
    for pair in broken_workflows.PAIRS:
        assert pair.redeployed is not None and pair.redeployed.name == pair.workflow.name
        assert pair.redeployed.fn is not pair.workflow.fn


@pytest.mark.parametrize("defect", broken_workflows.LINT_FLAGGED, ids=lambda d: d.name)
def test_lint_flags_each_detectable_defect_naming_the_cause_and_the_fix(
    defect: broken_workflows.Defect,
) -> None:
    findings = lint(defect.code)
    assert [f.rule for f in findings] == [defect.lint_rule], findings
    finding = findings[0]
    assert finding.path.endswith("broken_workflows.py")
    assert finding.code.split("=")[0].split("(")[0] in source_line(finding)
    assert f"`{finding.code}`" in finding.message
    assert ALTERNATIVES[finding.rule] in finding.message
    assert str(finding) == f"{finding.path}:{finding.line}: {finding.message} [{finding.rule}]"


def test_every_defect_that_lint_cannot_see_is_a_code_change_for_the_replay_checker() -> None:
    blind = [d for d in broken_workflows.DEFECTS if d.lint_rule is None]
    assert blind and all(d.redeployed is not None for d in blind)
    for defect in blind:
        # Each version on its own is sound code: lint must not invent a finding.
        assert lint(defect.workflow) == [] and lint(defect.code) == []


def test_strict_raises_an_assertion_listing_every_finding() -> None:
    @ce.workflow(name="tests.lint.two_hazards")
    def two_hazards() -> Flow:
        yield note(time.time())
        yield note(uuid.uuid4())

    with pytest.raises(AssertionError) as info:
        lint(two_hazards, strict=True)
    text = str(info.value)
    assert "2 findings in workflow 'tests.lint.two_hazards'" in text
    assert "`time.time()`" in text and "`uuid.uuid4()`" in text
    assert "yield ce.uuid()" in text
    assert lint(broken_workflows.step_order_v1, strict=True) == []


# -- zero false positives ------------------------------------------------------------------------


def import_example(path: Path) -> types.ModuleType:
    """Import examples/NAME.py as the module examples.NAME (once per process)."""
    name = f"examples.{path.stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def has_main_guard(path: Path) -> bool:
    """True if the file has a top-level `if __name__ == "__main__":`."""
    for node in ast.parse(path.read_text()).body:
        test = ast.unparse(node.test) if isinstance(node, ast.If) else ""
        if test in ("__name__ == '__main__'", '__name__ == "__main__"'):
            return True
    return False


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_lint_passes_every_workflow_in_the_examples(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert has_main_guard(path), f"{path.name} runs its main on import"
    module = import_example(path)
    assert capsys.readouterr().out == ""  # importing ran nothing
    workflows = [v for v in vars(module).values() if isinstance(v, ce.Workflow)]
    assert workflows, f"{path.name} defines no workflow"
    for wf in workflows:
        assert lint(wf) == [], "\n".join(map(str, lint(wf)))


def test_the_examples_are_all_there() -> None:
    assert len(EXAMPLES) >= 8
    assert {"hello", "approval", "fan_out", "monitor"} <= {p.stem for p in EXAMPLES}


@pytest.mark.parametrize(
    "workflow",
    [
        crashing_child.pipeline,
        crashing_child.doomed,
        test_gather.reverse,
        test_gather.failing,
        test_gather.collected,
        test_gather.cancellable,
    ],
    ids=lambda wf: wf.name,
)
def test_lint_passes_known_good_workflows_of_the_test_suite(
    workflow: ce.Workflow[..., Any],
) -> None:
    assert lint(workflow) == []


def test_replay_safe_lookalikes_are_not_flagged() -> None:
    namespace = uuid.UUID(int=7)

    @ce.workflow(name="tests.lint.lookalikes")
    def lookalikes(order_id: str, random: float = 0.5, tags: tuple[str, ...] = ()) -> Flow:
        now = yield ce.now()
        r = yield ce.random()
        u = yield ce.uuid()
        time = now.isoformat()  # a local named like a module
        rng = rnd.Random(r)  # seeded from a logged value
        yield note(rng.choice(["a", "b"]) + time + str(random))
        for tag in sorted({"b", "a"}):  # sorted: a fixed order
            yield note(tag)
        for port in {443, 80}:  # small ints hash to themselves
            yield note(port)
        if order_id in {"vip", "staff"} and len(set(tags)) > 1:
            yield note(datetime.timedelta(days=1) + datetime.datetime(2026, 1, 1, tzinfo=dt.UTC))
        names = [t for t in tags if t]
        names.append(order_id)
        yield note(", ".join(names) + os.path.join("a", "b") + str(uuid.uuid5(namespace, "x")))
        yield note(hashlib.sha256(order_id.encode()).hexdigest())
        yield note({k: v for k, v in STATE.items()})  # reading module state
        yield note(sum(1 for port in PORTS))
        return u

    assert lint(lookalikes) == []


def test_only_the_workflow_body_is_checked_not_its_steps() -> None:
    @ce.workflow(name="tests.lint.body_only")
    def body_only() -> Flow:
        @ce.step
        def inline_step() -> float:
            return time.time()

        def helper() -> float:
            return time.monotonic()  # a plain helper runs in the workflow: checked

        yield stamped("x")
        yield inline_step()
        return helper()

    assert rules(body_only) == [("time", "time.monotonic()")]


# -- what is flagged, however it is imported ----------------------------------------------------


def test_aliases_and_from_imports_resolve_to_the_call_they_make() -> None:
    import time as clock  # captured by the workflow below as a closure variable

    @ce.workflow(name="tests.lint.aliases")
    def aliases() -> Flow:
        yield note(wall())
        yield note(DateTime.now())
        yield note(dt.datetime.utcnow())
        yield note(dt.date.today())
        yield note(clock.perf_counter())
        yield note(pick(["a", "b"]))
        yield note(environ["HOME"])
        yield note(getenv("HOME"))
        from uuid import uuid1 as make_id

        yield note(make_id())

    found = lint(aliases)
    assert [(f.rule, f.code) for f in found] == [
        ("time", "wall()"),
        ("time", "DateTime.now()"),
        ("time", "dt.datetime.utcnow()"),
        ("time", "dt.date.today()"),
        ("time", "clock.perf_counter()"),
        ("random", 'pick(["a", "b"])'),
        ("environ", 'environ["HOME"]'),
        ("environ", 'getenv("HOME")'),
        ("uuid", "make_id()"),
    ]
    first = found[0]
    assert first.message.startswith("`wall()` (time.time) reads the wall clock")
    assert first.line == inspect.getsourcelines(aliases.fn)[1] + 2


def test_each_kind_of_hazard_is_named_with_its_alternative() -> None:
    @ce.workflow(name="tests.lint.hazards")
    def hazards(path: str) -> Flow:
        yield note(random.randint(1, 6))
        yield note(rnd.Random())  # unseeded
        time.sleep(1)
        yield note(Path(path).read_text())
        yield note(os.path.exists(path))
        yield note(urllib.request.urlopen("http://example.com"))
        yield note(socket.create_connection(("example.com", 80)))
        yield note(subprocess.run(["true"]))
        threading.Thread(target=print).start()
        with ThreadPoolExecutor() as pool:
            yield note(pool)
        yield note(id(object()))

    found = {f.rule: f for f in lint(hazards)}
    expected = {
        "random": "yield ce.random()",
        "sleep": "yield ce.sleep(seconds)",
        "io": "in a step",
        "network": "make it a step",
        "process": "make it a step",
        "thread": "ce.gather(",
        "id": "a key you choose",
    }
    assert set(found) == set(expected)
    for rule, alternative in expected.items():
        assert alternative in found[rule].message
    assert [f.code for f in lint(hazards) if f.rule == "io"] == [
        "Path(path).read_text()",
        "os.path.exists(path)",
    ]


def test_set_iteration_is_flagged_where_the_order_shows() -> None:
    @ce.workflow(name="tests.lint.sets")
    def sets(items: list[str], chosen: set[str], ids: set[int]) -> Flow:
        pending = set(items)
        extra = {i.upper() for i in items}
        for item in pending:
            yield note(item)
        yield note(list(extra | {"x"}))
        yield note(", ".join(chosen))
        yield note([x for x in TAGS])
        first, *rest = pending
        yield note(pending.pop())
        for i in ids:  # ints: a fixed order
            yield note(i)
        for t in sorted(TAGS):
            yield note(t)
        # Where the order cannot show: sorted, counted, tested, or made into a set again.
        yield note(sorted(t.upper() for t in chosen) + [str(len([t for t in pending]))])
        yield note(any(t == "x" for t in chosen) or {t.lower() for t in chosen})
        ordered = set(items)
        ordered = sorted(ordered)  # type: ignore[assignment]
        for o in ordered:  # no longer a set
            yield note(o)

    assert rules(sets) == [
        ("set-order", "for item in pending"),
        ("set-order", 'list(extra | {"x"})'),
        ("set-order", '", ".join(chosen)'),
        ("set-order", "for x in TAGS"),
        ("set-order", "first, *rest = pending"),
        ("set-order", "pending.pop()"),
    ]


def test_state_that_outlives_a_run_is_flagged() -> None:
    count = 0

    @ce.workflow(name="tests.lint.state")
    def state(key: str) -> Flow:
        nonlocal count
        count += 1
        LOG.append(key)
        STATE[key] = count
        mine: list[str] = []
        mine.append(key)  # a local list: fine
        return (yield note(mine))

    assert rules(state) == [
        ("global-state", "nonlocal count"),
        ("global-state", "LOG.append(key)"),
        ("global-state", "STATE[key]"),
    ]


def test_mutable_defaults_are_flagged_immutable_ones_are_not() -> None:
    @ce.workflow(name="tests.lint.defaults")
    def defaults(
        a: list[str] = [],  # noqa: B006
        b: dict[str, int] = {},  # noqa: B006
        c: set[str] = set(),  # noqa: B006, B008
        d: Any = collections.defaultdict(list),  # noqa: B006, B008
        e: tuple[str, ...] = (),
        f: frozenset[str] = frozenset(),  # noqa: B008
        *,
        g: list[int] = [1],  # noqa: B006
        h: str | None = None,
    ) -> Flow:
        return (yield note(1))

    assert rules(defaults) == [
        ("mutable-default", "a=[]"),
        ("mutable-default", "b={}"),
        ("mutable-default", "c=set()"),
        ("mutable-default", "d=collections.defaultdict(list)"),
        ("mutable-default", "g=[1]"),
    ]


def test_a_line_can_say_a_finding_is_intended() -> None:
    @ce.workflow(name="tests.lint.ignored")
    def ignored() -> Flow:
        yield note(time.time())  # contengine: ignore
        yield note(time.time() + random.random())  # contengine: ignore[random]
        yield note(time.time())  # contengine: ignore[random, io]

    assert [f.rule for f in lint(ignored)] == ["time", "time"]


def test_lint_refuses_what_is_not_a_workflow_and_code_without_source() -> None:
    with pytest.raises(TypeError, match="needs a @ce.workflow or a generator function"):
        lint(note)
    code: dict[str, Any] = {}
    exec("def made() -> Any:\n    yield 1\n", {"Any": Any}, code)
    with pytest.raises(ce.ContengineError, match="cannot read the source of workflow"):
        lint(ce.Workflow(code["made"], "tests.lint.no_source"))


def test_a_plain_generator_function_can_be_linted() -> None:
    def bare() -> Flow:
        yield note(pathlib.Path.cwd())

    assert rules(bare) == [("host", "pathlib.Path.cwd()")]


# -- the command -------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    """Parse `contengine lint ...` with the command's own parser."""
    parser = argparse.ArgumentParser(prog="contengine")
    add_lint_command(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["lint", *argv])


FINDING_LINE = re.compile(r"^\S+\.py:\d+: `.+` .+: .+ \[[a-z-]+\]$")


def test_command_prints_one_finding_per_line_and_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert lint_main(parse("broken_workflows:wall_clock", "broken_workflows:coin_flip")) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 2 and all(FINDING_LINE.match(line) for line in lines), out
    assert lines[0].startswith(f"{lint(broken_workflows.wall_clock)[0].path}:")
    assert "yield ce.now()" in lines[0] and "yield ce.random()" in lines[1]
    assert err.strip() == "contengine lint: 2 findings in 2 workflows that can break replay"


def test_command_on_a_whole_module_lints_the_workflows_defined_there(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert lint_main(parse("broken_workflows")) == 1
    out, _ = capsys.readouterr()
    # Every module-level workflow, redeployed versions too: one finding per flagged defect.
    expected = [str(f) for d in broken_workflows.LINT_FLAGGED for f in lint(d.code)]
    assert sorted(out.splitlines()) == sorted(expected)
    assert len(expected) == len(broken_workflows.LINT_FLAGGED)


def test_command_exits_0_on_clean_workflows_given_by_module_or_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    hello = str(REPO / "examples" / "hello.py")
    targets = (f"{hello}:hello", "crashing_child", "broken_workflows:step_args_v1")
    assert lint_main(parse(*targets)) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert re.fullmatch(
        r"contengine lint: \d+ workflows checked, nothing that breaks replay\n", err
    )


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ("no_such_module_for_lint:flow", "cannot import 'no_such_module_for_lint': ModuleNotFound"),
        ("broken_workflows:record", "'broken_workflows:record' is not a @ce.workflow but Step"),
        ("broken_workflows:nothing_here", "'broken_workflows' has no attribute 'nothing_here'"),
        ("test_testing_lint_no_such_file.py", "no such file"),
        ("argparse", "'argparse' defines no @ce.workflow"),
        (":flow", "names no module"),
    ],
)
def test_command_exits_2_with_one_line_for_a_bad_target(
    target: str, error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert lint_main(parse(target)) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert err.startswith("contengine lint: ") and error in err


def test_command_still_reports_the_good_targets_beside_a_bad_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert lint_main(parse("broken_workflows:env_flag", "no_such_module_for_lint")) == 2
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 and "[environ]" in out
    assert "cannot import 'no_such_module_for_lint'" in err


def test_command_needs_at_least_one_target() -> None:
    with pytest.raises(SystemExit):
        parse()
