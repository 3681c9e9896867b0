"""The pure core's own rules: how runs and steps are named, the testing kit loaded on use,
and names registered once even when two threads decorate at the same moment."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Generator
from typing import Any

import pytest

import contengine as ce
from contengine.core import ids


def test_child_ids_and_step_keys_name_the_generation() -> None:
    assert ids.child_id("p", 0, 3) == "p/3"
    assert ids.child_id("p", 2, 3) == "p/g2/3"
    assert ids.child_id("p/0", 1, 0) == "p/0/g1/0"  # a grandchild, after its parent continued
    assert ids.idempotency_key("p", 0, 3) == "p:3"
    assert ids.idempotency_key("p", 2, 3) == "p/g2:3"
    assert ids.is_child_id("p/3") and not ids.is_child_id("p")


def test_the_engine_names_children_by_the_rule(tmp_path: Any) -> None:
    @ce.step(name="core.leaf")
    def leaf(n: int) -> int:
        return n

    @ce.workflow(name="core.kid")
    def kid(n: int) -> Generator[Any, Any, int]:
        return (yield leaf(n))  # type: ignore[no-any-return]

    @ce.workflow(name="core.parent")
    def parent(round_: int) -> Generator[Any, Any, int]:
        yield leaf(round_)
        total: int = yield kid(round_)
        return total if round_ else ce.continue_as_new(1)

    with ce.Engine(tmp_path / "ids.db", workflows=[parent, kid]) as engine:
        assert engine.run(parent, 0, id="p") == 1
        children = sorted(r.id for r in engine.store.list_runs() if r.parent_id == "p")
    assert children == sorted([ids.child_id("p", 0, 1), ids.child_id("p", 1, 1)])


def run_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_the_testing_kit_loads_on_first_use() -> None:
    code = (
        "import sys, contengine as ce\n"
        "assert 'contengine.testing' not in sys.modules\n"
        "clock = ce.testing.VirtualClock()\n"
        "assert callable(ce.testing.check) and 'contengine.testing' in sys.modules\n"
        "from contengine import testing\n"
        "assert testing is ce.testing and testing.VirtualClock is type(clock)\n"
        "print('ok')"
    )
    assert run_python(code) == "ok"


def test_from_contengine_import_testing_works_first() -> None:
    code = "from contengine import testing; print(testing.VirtualClock.__name__)"
    assert run_python(code) == "VirtualClock"


def test_an_unknown_attribute_of_the_package_says_so() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        ce.nothing_here  # type: ignore[attr-defined]  # noqa: B018


def decorate_at_once(decorators: list[Callable[[], object]]) -> list[BaseException | None]:
    """Run each decorator in its own thread, all released together; what each raised."""
    barrier = threading.Barrier(len(decorators))
    raised: list[BaseException | None] = [None] * len(decorators)

    def go(i: int) -> None:
        barrier.wait()
        try:
            decorators[i]()
        except ce.WorkflowDefinitionError as exc:
            raised[i] = exc

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(decorators))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return raised


def test_two_functions_decorated_under_one_name_at_once_one_is_refused() -> None:
    """Whatever the interleaving, one function gets each name and the other is refused."""

    def make_workflow(tag: str, name: str) -> Callable[[], object]:
        def body() -> Generator[Any, Any, None]:
            yield ce.now()

        body.__qualname__ = f"racing_workflow_{tag}"
        return lambda: ce.workflow(name=name)(body)

    def make_step(tag: str, name: str) -> Callable[[], object]:
        def body() -> None:
            return None

        body.__qualname__ = f"racing_step_{tag}"  # another function, in another file
        body.__code__ = body.__code__.replace(co_filename=f"racing_{tag}.py")
        return lambda: ce.step(name=name)(body)

    for make in (make_workflow, make_step):
        for round_ in range(20):
            name = f"core.racing.{make.__name__}.{round_}"  # a name not taken yet
            raised = decorate_at_once([make("a", name), make("b", name)])
            assert sum(r is not None for r in raised) == 1, raised
