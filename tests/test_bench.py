"""`contengine bench` measures every metric and reports it; no timing thresholds here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from contengine.bench import Metric
from contengine.cli import main

TINY = ["--steps", "50", "--rounds", "1", "--replay-steps", "200"]
METRICS = {"steps_full", "steps_normal", "replay", "resume"}


def _bench(capsys: pytest.CaptureFixture[str], tmp_path: Path, *extra: str) -> tuple[int, str]:
    code = main(["bench", "--dir", str(tmp_path), *TINY, *extra])
    return code, capsys.readouterr().out


def test_json_has_every_metric_with_positive_numbers(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out = _bench(capsys, tmp_path, "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["params"] == {"steps": 50, "rounds": 1, "replay_steps": 200}
    assert doc["machine"]["cpus"] >= 1
    metrics: dict[str, Any] = doc["metrics"]
    assert set(metrics) == METRICS
    for name, m in metrics.items():
        assert m["median"] > 0, name
        assert len(m["samples"]) == 1, name
        assert isinstance(m["pass"], bool), name
        assert m["target"], name
    for name in ("steps_full", "steps_normal"):
        m = metrics[name]
        assert m["floor"] > 0 and m["ratio"] > 0
        assert m["ratio"] == pytest.approx(m["median"] / m["floor"])
        assert len(m["floor_samples"]) == 1
    assert metrics["replay"]["floor"] is None
    assert metrics["resume"]["unit"] == "ms"


def test_table_names_each_metric_and_leaves_no_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out = _bench(capsys, tmp_path)
    assert code == 0
    for label in ("durability full", "durability normal", "replayed steps/s", "time to resume"):
        assert label in out
    assert out.count("pass") + out.count("FAIL") == 4
    assert list(tmp_path.iterdir()) == []


def test_bad_parameters_are_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["bench", "--dir", str(tmp_path), "--rounds", "0"]) == 2
    assert "--rounds must be >= 1" in capsys.readouterr().err
    assert main(["bench", "--dir", str(tmp_path / "missing")]) == 2


def test_targets_compare_the_ratio_or_the_median() -> None:
    ratio = Metric("s", "steps", "steps/s", 0.8, samples=[90.0], floor=[100.0])
    assert ratio.passed and ratio.target_text() == "ratio >= 0.8"
    ratio.samples = [70.0]
    assert not ratio.passed
    resume = Metric("r", "resume", "ms", 20.0, samples=[25.0, 10.0, 15.0], lower_is_better=True)
    assert resume.median == 15.0 and resume.passed
    assert resume.target_text() == "< 20 ms"
    resume.samples = [20.0]
    assert not resume.passed
