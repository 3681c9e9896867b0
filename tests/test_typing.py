"""Static types: `yield from step(...)` carries the step's return type; calls are checked."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import contengine

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None, reason="mypy is not installed"
)

# Each line to check ends with a `# <label>` comment; results are keyed by label.
SNIPPET = textwrap.dedent(
    """
    from collections.abc import Generator
    from typing import Any

    import contengine as ce


    @ce.step
    def charge(order_id: str, cents: int) -> str:
        return f"{order_id}:{cents}"


    @ce.step(retries=3, backoff=0.5, timeout=10)
    def refund(receipt: str) -> int:
        return len(receipt)


    @ce.workflow
    def checkout(order_id: str) -> Generator[Any, Any, str]:
        x = yield from charge(order_id, 5)
        reveal_type(x)  # reveal-bare
        n = yield from refund(x)
        reveal_type(n)  # reveal-options
        y = yield from charge.options(retries=5)(order_id, 7)
        reveal_type(y)  # reveal-per-call
        yield from charge(order_id, "five")  # wrong-type
        yield from refund(42)  # wrong-type-options
        yield from charge(order_id)  # missing-arg
        yield from charge(order_id, 5, cents=6)  # double-arg
        return x


    @ce.workflow
    def parent() -> Generator[Any, Any, None]:
        receipt = yield from checkout("o-2")
        reveal_type(receipt)  # reveal-child
        when = yield from ce.now()
        reveal_type(when)  # reveal-now
        r = yield from ce.random()
        reveal_type(r)  # reveal-random
        u = yield from ce.uuid()
        reveal_type(u)  # reveal-uuid
        new = yield from ce.patched("x")
        reveal_type(new)  # reveal-patched
        both = yield from ce.gather(charge("a", 1), refund("b"))
        reveal_type(both)  # reveal-gather
        won = yield from ce.race(charge("a", 1), ce.sleep(5))
        reveal_type(won)  # reveal-race


    reveal_type(refund)  # reveal-step-options
    reveal_type(checkout)  # reveal-workflow
    reveal_type(ce.Engine().run(checkout, "o-1"))  # reveal-run
    """
)


def _labels(source: str) -> dict[int, str]:
    labels = {}
    for number, line in enumerate(source.splitlines(), start=1):
        found = re.search(r"# ([a-z-]+)$", line)
        if found:
            labels[number] = found.group(1)
    return labels


@pytest.fixture(scope="module")
def mypy_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Run mypy once on the snippet; map each label to mypy's messages for its line."""
    tmp = tmp_path_factory.mktemp("typing")
    source = tmp / "snippet.py"
    source.write_text(SNIPPET)
    package_root = Path(contengine.__file__).resolve().parent.parent
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--no-error-summary",
            "--show-column-numbers",
            "--config-file",
            "",
            "--cache-dir",
            str(tmp / "cache"),
            "--python-version",
            "3.11",
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp,
        env={**os.environ, "MYPYPATH": str(package_root)},
    )
    labels = _labels(SNIPPET)
    report: dict[str, str] = {label: "" for label in labels.values()}
    for line in proc.stdout.splitlines():
        found = re.match(r".*snippet\.py:(\d+):\d+: (.*)$", line)
        if found and int(found.group(1)) in labels:
            report[labels[int(found.group(1))]] += found.group(2) + "\n"
        elif found:
            report.setdefault("unexpected", "")
            report["unexpected"] += line + "\n"
    assert "snippet.py" in proc.stdout, (
        f"mypy did not check the snippet:\n{proc.stdout}\n{proc.stderr}"
    )
    return report


def revealed(report: dict[str, str], label: str) -> str:
    """The type mypy revealed on a line, in mypy 1's spelling (builtins.str) or mypy 2's (str)."""
    found = re.search(r'Revealed type is "(.*)"', report[label])
    assert found, f"no reveal_type output for {label}: {report[label]!r}"
    return found.group(1).replace("builtins.", "")


def test_yield_from_a_step_has_the_steps_return_type(mypy_report: dict[str, str]) -> None:
    """`x = yield from charge(...)` is a str to mypy."""
    assert revealed(mypy_report, "reveal-bare") == "str"


def test_step_with_options_keeps_its_types(mypy_report: dict[str, str]) -> None:
    """@ce.step(retries=3, ...) and .options(...) keep the signature and return type."""
    assert revealed(mypy_report, "reveal-options") == "int"
    assert revealed(mypy_report, "reveal-per-call") == "str"
    step_type = revealed(mypy_report, "reveal-step-options")
    assert step_type == "contengine.core.workflow.Step[[receipt: str], int]"


def test_wrong_argument_to_a_step_is_flagged(mypy_report: dict[str, str]) -> None:
    """The ParamSpec carries the step's signature to its call sites."""
    wrong = mypy_report["wrong-type"]
    assert "error:" in wrong and "incompatible type" in wrong
    assert '"str"; expected "int"' in wrong
    assert '"int"; expected "str"' in mypy_report["wrong-type-options"]
    assert "error:" in mypy_report["missing-arg"] and "cents" in mypy_report["missing-arg"]
    assert "error:" in mypy_report["double-arg"]


def test_workflow_and_engine_run_carry_types(mypy_report: dict[str, str]) -> None:
    """A workflow's parameters and result reach engine.run()'s return type."""
    workflow_type = revealed(mypy_report, "reveal-workflow")
    assert workflow_type == "contengine.core.workflow.Workflow[[order_id: str], str]"
    assert revealed(mypy_report, "reveal-run") == "str"


def test_yield_from_other_requests_has_their_types(mypy_report: dict[str, str]) -> None:
    """Child runs, recorded values, patches, gather and race carry their types too."""
    assert revealed(mypy_report, "reveal-child") == "str"
    assert revealed(mypy_report, "reveal-now") == "datetime.datetime"
    assert revealed(mypy_report, "reveal-random") == "float"
    assert revealed(mypy_report, "reveal-uuid") == "uuid.UUID"
    assert revealed(mypy_report, "reveal-patched") == "bool"
    assert revealed(mypy_report, "reveal-gather") == "list[Any]"
    assert revealed(mypy_report, "reveal-race") == "tuple[int, Any]"


def test_nothing_else_is_reported(mypy_report: dict[str, str]) -> None:
    """Correct lines type-check cleanly: no errors outside the labelled ones."""
    assert "unexpected" not in mypy_report, mypy_report.get("unexpected")
