"""The engine's public hooks: its random source, a workflow registry, and what a Runner is
told by its owner (a DriveContext) rather than having its methods replaced."""

from __future__ import annotations

import ast
import random
import re
import threading
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from stores import current

import contengine as ce
from contengine.clock import SystemClock
from contengine.core.serde import Serde
from contengine.drive.runner import DriveContext, Runner
from contengine.store.base import PENDING, RunRow

pytestmark = pytest.mark.both_stores


@ce.workflow(name="hooks.draws")
def draws() -> Generator[Any, Any, tuple[float, uuid.UUID]]:
    r = yield ce.random()
    u = yield ce.uuid()
    return r, u


def test_a_seeded_random_source_answers_random_and_uuid() -> None:
    """Engine(random=...) is where ce.random() and ce.uuid() draw from: runs repeat."""
    results = []
    for _ in range(2):
        with ce.Engine(random=random.Random(7)) as engine:
            results.append(engine.run(draws))
    expected = random.Random(7)
    value = expected.random()
    drawn = uuid.UUID(int=expected.getrandbits(128), version=4)
    assert results == [(value, drawn), (value, drawn)]


def test_a_registered_workflow_is_found_for_a_run_started_elsewhere(tmp_path: Path) -> None:
    """engine.register() makes a workflow known by name to an engine that never started
    it: a run started by another engine on the file is driven with it."""

    def body(x: int) -> Generator[Any, Any, int]:
        return x * 2
        yield

    unlisted = ce.Workflow(body, "hooks.unlisted")  # in no registry, not importable
    path = tmp_path / "hooks.db"
    with ce.Engine(path, durability="normal") as starter:
        starter.start(unlisted, 21, id="r")
    with ce.Engine(path, durability="normal") as engine:
        with pytest.raises(ce.ContengineError, match="cannot be found"):
            engine.get_run("r").result()
        engine.register(unlisted)
        assert engine.get_run("r").result() == 42
        with pytest.raises(TypeError, match="takes @ce.workflow functions"):
            engine.register(body)  # type: ignore[arg-type]


@ce.step(name="hooks.queued", queue="hooks.q")
def queued() -> str:
    return "done"


@ce.workflow(name="hooks.one_step")
def one_step() -> Generator[Any, Any, str]:
    result: str = yield queued()
    return result


def test_a_runner_asks_its_drive_context_for_step_queue_slots() -> None:
    """A Runner takes slots of step queues from the DriveContext it was made with."""
    calls: list[tuple[str, Any]] = []

    def take_slot(
        queue: str,
        give_up: threading.Event | None = None,
        lease: tuple[str, str, int] | None = None,
    ) -> int | None:
        calls.append(("take", queue))
        return 5

    def give_slot(slot: int) -> None:
        calls.append(("give", slot))

    store = current().open(":memory:", "normal")
    serde = Serde(None, store.max_payload)
    context = DriveContext(take_slot=take_slot, give_slot=give_slot)
    runner = Runner(store, serde, SystemClock(), lambda row: one_step, context=context)
    args = serde.dumps_checked(((), {}), "the arguments")[0]
    row = RunRow("r", one_step.name, one_step.ref, PENDING, args, None, 0.0, 0.0)
    store.create_run(row)
    try:
        runner.drive(row)
        assert calls == [("take", "hooks.q"), ("give", 5)]
        done = store.get_run("r")
        assert done is not None and done.status == "completed"
    finally:
        runner.close()
        store.close()


def test_the_worker_and_the_testing_kit_reach_no_private_member_of_the_engine() -> None:
    """The worker and the testing kit use the engine's (and its parts') public names only:
    no engine._x, runner._x, ... (read from the source, nothing imported)."""
    package = Path(ce.__file__).parent
    parts = re.compile(r"(engine|runner|holder|dispatch|store)\b")
    found = []
    for path in [package / "engine" / "worker.py", *sorted((package / "testing").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Attribute) or not re.match(r"_[a-z]", node.attr):
                continue
            owner = ast.unparse(node.value)
            if owner not in ("self", "cls") and parts.search(owner):
                found.append(f"{path.relative_to(package)}:{node.lineno}: {ast.unparse(node)}")
    assert found == []
