"""No false positives: ce.testing.check passes on every workflow of the examples."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import contengine as ce

REPO = Path(__file__).resolve().parent.parent


def example(stem: str) -> ModuleType:
    """Import examples/STEM.py as examples.STEM, once per process (as the lint tests do)."""
    name = f"examples.{stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{stem}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# (example, workflow attribute, arguments, signals)
# Every workflow of every example, on its happy path.
CASES: list[tuple[str, str, tuple[Any, ...], Any]] = [
    ("hello", "hello", ("u-1",), None),
    ("payment_retries", "checkout", ("ada", 1999), None),
    ("compensation", "place_order", ("ada", "lamp", 4500, "Lyon"), None),
    (
        "approval",
        "approval",
        ("doc-1", "ann", "bob"),
        {"decision": {"approved": True, "by": "ann"}},
    ),
    (
        "approval",
        "approval",
        ("doc-2", "ann", "bob"),
        [(3 * 86400, "decision", {"approved": False, "by": "bob"})],
    ),
    ("reminder", "reminders", ("ada", 3, 2), None),
    ("fan_out", "word_count", (["/about"],), None),  # a real page; each takes 0.1 s
    ("child_runs", "price_all", (["lamp", "vase"],), None),
    ("child_runs", "ship", ("o-1", "Lyon"), {"delivered": {"signed_by": "ada"}}),
    (
        "child_runs",
        "checkout",
        ("o-1", ["lamp"], "Lyon"),
        [(60, "delivered", {"signed_by": "ada"})],
    ),
    ("monitor", "watch", ("api",), [(3600, "stop", {"stopped_by": "operator"})]),
    ("agent_loop", "agent", ("Book me a flight to Lisbon.",), None),
    ("crash_and_resume", "checkout", ("order-7",), None),
    ("versioning", "fulfil_v1", ("o-1",), None),
    ("versioning", "fulfil_v2", ("o-1",), None),
    ("versioning", "fulfil_v3", ("o-1",), None),
    ("workers", "thumbnail", ("img-1",), None),
    ("replicated", "fulfil", ("order-1",), None),
]


def scripted_charges(module: ModuleType) -> dict[str, Any]:
    """payment_retries' gateway misbehaves on a script kept in the module, spent by the
    first run: here each attempt gets a fresh gateway and its behaviour by attempt
    number, so every run, and every test order, retries alike."""
    script = {1: "timeout-after-charging", 2: "unavailable"}

    def charge_card(customer: str, cents: int) -> str:
        step = ce.current_step()
        ATTEMPTS.append(step.attempt)
        gateway = module.FakeGateway(script=[script.get(step.attempt, "ok")])
        return str(gateway.charge(customer, cents, idempotency_key=step.idempotency_key))

    return {"charge_card": charge_card}


# Stand-ins for steps whose example keeps state in the module; the attempts they saw.
ATTEMPTS: list[int] = []
STEPS = {"payment_retries": scripted_charges}


@pytest.mark.parametrize(("stem", "attr", "args", "signals"), CASES, ids=[c[0] for c in CASES])
def test_check_passes_on_the_examples(stem: str, attr: str, args: Any, signals: Any) -> None:
    module = example(stem)
    workflow = getattr(module, attr)
    steps = STEPS[stem](module) if stem in STEPS else None
    report = ce.testing.check(workflow, *args, signals=signals, steps=steps)
    assert report.boundaries > 0
    assert report.missed == 0
    assert report.error is None, report.error  # the happy path: no exception
    if stem in STEPS:  # the misbehaving attempts happened, and were retried
        assert {1, 2, 3} <= set(ATTEMPTS), ATTEMPTS


def test_every_example_workflow_is_checked() -> None:
    checked = {(stem, attr) for stem, attr, _, _ in CASES}
    for path in sorted((REPO / "examples").glob("*.py")):
        module = example(path.stem)
        for attr, value in vars(module).items():
            if isinstance(value, ce.Workflow) and value.fn.__module__ == module.__name__:
                assert (path.stem, attr) in checked, f"examples/{path.name}: {attr} not checked"
