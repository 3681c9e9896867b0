"""A start's arguments are checked against its workflow's signature, read once per
workflow: every start is checked, and a workflow defined again is checked against its
new signature."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

import contengine as ce


def _defined(takes_two: bool) -> ce.Workflow[Any, Any]:
    # The same name and module:qualname defined twice, as a re-import or a test would.
    if takes_two:

        def start_signature_wf(x: int, y: int) -> Generator[Any, Any, int]:
            yield ce.now()
            return x + y

    else:

        def start_signature_wf(x: int) -> Generator[Any, Any, int]:  # type: ignore[misc]
            yield ce.now()
            return x

    return ce.workflow(name="start_signature.wf")(start_signature_wf)


def test_every_start_is_checked_and_a_new_definition_by_its_own_signature(
    tmp_path: Path,
) -> None:
    two = _defined(True)
    with ce.Engine(str(tmp_path / "a.db"), workflows=[two]) as engine:
        engine.start_many([(two, (1, 2))] * 3)
        with pytest.raises(TypeError, match="'start_signature.wf' cannot take these arguments"):
            engine.start_many([(two, (1, 2)), (two, (1,))])
        with pytest.raises(TypeError, match="cannot take these arguments"):
            engine.start(two, 1, 2, 3)
        assert engine.run(two, 3, 4) == 7
    one = _defined(False)
    with ce.Engine(str(tmp_path / "b.db"), workflows=[one]) as engine:
        with pytest.raises(TypeError, match="cannot take these arguments"):
            engine.start(one, 1, 2)
        assert engine.run(one, 5) == 5
