"""The testing kit against the corpus of broken workflows: each defect is caught.

Lint reads the code; fuzz replays a run under perturbations the defect cannot hide from;
replay runs logs written by the old version against the new one. Every defect in
tests/broken_workflows.py must be flagged by the tools that can see it, naming its cause.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from broken_workflows import DEFECTS, PAIRS, Defect

import contengine as ce

BY_NAME = {d.name: d for d in DEFECTS}


def test_the_corpus_has_a_dozen_different_defects() -> None:
    assert len(DEFECTS) >= 12
    assert len({d.cause for d in DEFECTS}) == len(DEFECTS)


@pytest.mark.parametrize("defect", DEFECTS, ids=[d.name for d in DEFECTS])
def test_every_defect_is_flagged_by_the_kit(defect: Defect, tmp_path: Path) -> None:
    flagged_by: list[str] = []
    if defect.lint_rule is not None:
        findings = ce.testing.lint(defect.code)
        assert defect.lint_rule in {f.rule for f in findings}, findings
        flagged_by.append("lint")
    if defect.redeployed is not None:
        path = tmp_path / "recorded.db"
        with ce.Engine(path, clock=ce.testing.VirtualClock()) as engine:
            engine.start(defect.workflow, *defect.args, id="recorded")
            engine.run_until_idle(until=engine.clock.now() + 60)
        report = ce.testing.replay(path, workflows=[defect.redeployed])
        assert not report.ok
        assert [b.run_id for b in report.broken] == ["recorded"]
        flagged_by.append("replay")
    assert flagged_by, f"nothing in the kit flags {defect.name}"


# Defects a perturbed replay can show, and the words the cause must use.
FUZZED = {
    "wall_clock": "clock",
    "coin_flip": "random",
    "env_flag": "environ",
    "global_counter": "state that differs from one run to the next",
    "mutable_default": "state that differs from one run to the next",
}


@pytest.mark.parametrize("name", sorted(FUZZED))
def test_fuzz_names_the_cause(name: str) -> None:
    defect = BY_NAME[name]
    report = ce.testing.fuzz(defect.workflow, *defect.args)
    assert not report.ok
    causes = " ".join(f.cause for f in report.findings).lower()
    assert FUZZED[name] in causes, str(report)


def test_the_code_changes_are_pairs_for_replay() -> None:
    assert {d.name for d in PAIRS} >= {"step_order", "step_args", "step_added"}
