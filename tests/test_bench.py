"""`contengine bench` measures every metric and reports it; no timing thresholds here."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from contengine.cli.main import main
from contengine.tools.bench import Metric
from contengine.tools.bench_wakes import percentile

TINY = [
    *["--steps", "50", "--rounds", "1", "--replay-steps", "200"],
    *["--memory-steps", "300", "--memory-big", "2"],
]
TINY_WORKERS = [
    *["--runs", "5", "--concurrent-steps", "100", "--asleep", "40"],
    *["--signals", "3", "--remote-signals", "2", "--claims-asleep", "300"],
]
METRICS = {
    "steps_full",
    "steps_normal",
    "replay",
    "replay_floor",
    "resume",
    "replay_peak",
    "replay_peak_big",
    "cache_held",
    "cache_counted",
}
SIZES = {"steps": 50, "rounds": 1, "replay_steps": 200, "memory_steps": 300, "memory_big": 2}
WORKER_METRICS = {
    "many_runs",
    "many_runs_started",
    "concurrent_1",
    "concurrent_10",
    "concurrent_100",
    "asleep_rss",
    "asleep_growth",
    "asleep_peak",
    "asleep_wake",
    "wake_local",
    "wake_local_p99",
    "wake_local_done",
    "wake_remote",
    "wake_remote_p99",
    *[f"empty_claim_{n}" for n in (0, 30, 300)],
    *[f"{m}_{part}" for m in ("idle", "start") for part in ("few", "many", "ratio")],
}


def _bench(capsys: pytest.CaptureFixture[str], tmp_path: Path, *extra: str) -> tuple[int, str]:
    code = main(["bench", "--dir", str(tmp_path), *TINY, *extra])
    return code, capsys.readouterr().out


def test_json_has_every_metric_with_positive_numbers(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The single-run part alone (--no-workers): every metric, sampled once per round."""
    code, out = _bench(capsys, tmp_path, "--json", "--no-workers")
    assert code == 0
    doc = json.loads(out)
    assert doc["params"] == {**SIZES, "workers": False}
    assert doc["machine"]["cpus"] >= 1
    assert doc["machine"]["python_speed"] > 0  # what CPU-bound ratios depend on
    metrics: dict[str, Any] = doc["metrics"]
    assert set(metrics) == METRICS
    for name, m in metrics.items():
        assert m["median"] > 0, name
        assert len(m["samples"]) == 1, name
        assert (m["pass"] is None) == (name == "cache_held"), name  # held: for context
        assert bool(m["target"]) == (name != "cache_held"), name
    for name in ("steps_full", "steps_normal"):
        m = metrics[name]
        assert m["floor"] > 0 and m["ratio"] > 0
        assert m["ratio"] == pytest.approx(m["median"] / m["floor"])
        assert len(m["floor_samples"]) == 1
    assert metrics["replay"]["floor"] is None
    floored = metrics["replay_floor"]
    assert floored["ratio"] == pytest.approx(floored["median"] / floored["floor"])
    assert floored["target"] == "ratio >= 0.5"
    assert metrics["replay_peak"]["unit"] == "MB" and metrics["replay_peak"]["target"] == "< 20 MB"
    assert metrics["resume"]["unit"] == "ms"


def test_table_names_each_metric_and_leaves_no_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The table of the single-run part has a verdict per target and cleans up."""
    code, out = _bench(capsys, tmp_path, "--no-workers")
    assert code == 0
    labels = ("durability full", "durability normal", "replayed steps/s", "time to resume")
    for label in (*labels, "against its floor", "peak RSS growth", "live cache"):
        assert label in out
    assert out.count("pass") + out.count("FAIL") == 8
    assert "workers" not in out
    assert list(tmp_path.iterdir()) == []


def test_workers_json_at_tiny_sizes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """With the workers part: every run finished, every latency taken, all numbers positive."""
    code, out = _bench(capsys, tmp_path, "--json", *TINY_WORKERS)
    assert code == 0
    doc = json.loads(out)
    assert doc["params"] == {
        **SIZES,
        "runs": 5,
        "concurrent_steps": 100,
        "asleep": 40,
        "signals": 3,
        "remote_signals": 2,
        "claims_asleep": 300,
        "workers": True,
    }
    metrics: dict[str, Any] = doc["metrics"]
    assert set(metrics) == METRICS | WORKER_METRICS
    for name in WORKER_METRICS:
        m = metrics[name]
        assert m["median"] > 0, name
        assert len(m["samples"]) == 1, name
        assert (m["pass"] is None) == (m["target"] == ""), name
    judged = {n for n in WORKER_METRICS if metrics[n]["target"]}
    assert judged == {
        "many_runs", "many_runs_started", "concurrent_100", "asleep_rss", "asleep_growth",
        "wake_local", "wake_remote_p99", "idle_ratio", "start_ratio",
    }  # fmt: skip
    started = metrics["many_runs_started"]
    assert started["target"] == "ratio >= 0.4" and "floor_cost" not in started
    assert started["ratio"] == pytest.approx(started["median"] / started["floor"])
    assert metrics["idle_ratio"]["target"] == "< 2 x"
    assert metrics["idle_ratio"]["details"]["few"] == 30
    assert metrics["empty_claim_300"]["details"]["asleep"] == 300

    runs = metrics["many_runs"]
    assert runs["floor_cost"] == 11 and runs["cap"] == pytest.approx(runs["floor"] / 11)
    assert runs["ratio"] == pytest.approx(runs["median"] / runs["cap"])
    assert runs["target"] == ">= 1,000 runs/s"  # on the median: the floor is context
    for n in (1, 10, 100):
        m = metrics[f"concurrent_{n}"]
        assert m["floor"] > 0 and m["ratio"] == pytest.approx(m["median"] / m["floor"])
        assert m["details"]["runs"] == n and m["details"]["threads"] == n
        assert m["details"]["steps_per_run"] == max(1, 100 // n)
    assert metrics["concurrent_100"]["target"] == "ratio >= 5"

    asleep = metrics["asleep_rss"]["details"]
    assert asleep["runs"] == asleep["completed"] == 40
    assert asleep["base_rss_mb"] > 0 and 0 < asleep["rss_mb"] <= asleep["hwm_mb"]
    assert asleep["due_after_s"] > asleep["start_s"] + asleep["to_sleep_s"]
    assert metrics["asleep_peak"]["median"] == asleep["hwm_mb"]
    assert metrics["asleep_wake"]["median"] == asleep["wake_s"] >= 0

    local = metrics["wake_local"]["details"]
    assert local["signals"] == 3
    assert len(local["to_step_ms"]) == len(local["to_completed_ms"]) == 3
    for step, done in zip(local["to_step_ms"], local["to_completed_ms"], strict=True):
        assert 0 < step <= done
    remote = metrics["wake_remote"]["details"]
    assert remote["signals"] == 2 and remote["poll_s"] == 0.1
    assert len(remote["to_completed_ms"]) == 2 and min(remote["to_completed_ms"]) > 0
    assert metrics["wake_remote_p99"]["median"] == max(remote["to_completed_ms"])
    assert metrics["wake_remote_p99"]["target"] == "< 150 ms"
    assert list(tmp_path.iterdir()) == []


def test_workers_table_at_tiny_sizes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The table names the workers measurements and their sizes; verdicts only with targets."""
    code, out = _bench(capsys, tmp_path, *TINY_WORKERS)
    assert code == 0
    assert "workers (durability full): 5 runs, 100 steps at each concurrency" in out
    for label in (
        "runs/s, 5 runs of 10 steps",
        "commits/s / 11 = ",
        "100 runs advancing at once",
        "RSS, 40 runs asleep",
        "wake-up, same process",
        "wake-up, across processes",
        "empty claim, 300 runs asleep",
        "run_until_idle(), nothing due: 300 asleep over 30",
    ):
        assert label in out
    assert out.count("pass") + out.count("FAIL") == 17  # 8 of the single-run part
    assert list(tmp_path.iterdir()) == []


def test_bad_parameters_are_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Sizes below 1 and a missing directory are usage errors."""
    assert main(["bench", "--dir", str(tmp_path), "--rounds", "0"]) == 2
    assert "--rounds must be >= 1" in capsys.readouterr().err
    assert main(["bench", "--dir", str(tmp_path), "--asleep", "0"]) == 2
    assert "--asleep must be >= 1" in capsys.readouterr().err
    assert main(["bench", "--dir", str(tmp_path / "missing")]) == 2


def test_targets_compare_the_ratio_or_the_median() -> None:
    """A floor means a ratio target, unless the target is on the median; no target, no verdict."""
    ratio = Metric("s", "steps", "steps/s", 0.8, samples=[90.0], floor=[100.0])
    assert ratio.passed and ratio.target_text() == "ratio >= 0.8"
    ratio.samples = [70.0]
    assert not ratio.passed
    resume = Metric("r", "resume", "ms", 20.0, samples=[25.0, 10.0, 15.0], lower_is_better=True)
    assert resume.median == 15.0 and resume.passed
    assert resume.target_text() == "< 20 ms"
    resume.samples = [20.0]
    assert not resume.passed
    runs = Metric(
        "r", "runs", "runs/s", 1000.0, [1200.0], [5500.0], floor_cost=11, target_on_median=True
    )
    assert runs.cap == 500.0 and runs.ratio == 2.4 and runs.passed
    assert runs.target_text() == ">= 1,000 runs/s"
    assert runs.floor_text() == "5,500 commits/s / 11 = 500 runs/s"
    context = Metric("c", "context", "ms", None, [3.0])
    assert context.passed is None and context.target_text() == ""


def test_percentile_is_nearest_rank() -> None:
    """p99 of fewer than 100 values is the largest; p50 of 1..100 is 50."""
    assert percentile([5.0, 1.0, 3.0], 99) == 5.0
    assert percentile([float(i) for i in range(1, 101)], 50) == 50.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert percentile([7.0], 99) == 7.0


def test_a_burst_is_worked_through_and_its_memory_reported(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--burst N: every started run finished, a peak memory and a rate reported."""
    code, out = _bench(capsys, tmp_path, "--no-workers", "--burst", "30", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["params"]["burst"] == 30
    peak, rate = doc["metrics"]["burst_peak"], doc["metrics"]["burst_rate"]
    assert peak["details"]["runs"] == 30 and peak["median"] > 0 and rate["median"] > 0
    assert peak["details"]["hwm_mb"] >= peak["details"]["base_rss_mb"] > 0
    assert main(["bench", "--dir", str(tmp_path), "--burst", "-1"]) == 2
    assert "--burst must be >= 0" in capsys.readouterr().err


def test_python_speed_is_a_rate_that_falls_with_the_work_per_loop() -> None:
    """The calibration is iterations per second: a loop half the length takes about half
    the time, so the rate stays of the same order (and is never zero)."""
    from contengine.tools.bench import python_speed

    short, long = python_speed(20_000, 3), python_speed(200_000, 3)
    assert short > 0 and long > 0
    assert 0.2 < short / long < 5


def test_runs_asleep_are_measured_again_with_more_time_when_the_machine_is_slow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A due time that comes before every run is asleep is refused by the child (the
    measure would be spoiled); the parent tries again with a wider margin."""
    from contengine.tools import bench_workers

    # The first margin puts the due time in the past: every run wakes at once.
    monkeypatch.setattr(bench_workers, "_ASLEEP_MARGINS", (-1e6, 5))
    said: list[str] = []
    metrics = bench_workers.measure_asleep(str(tmp_path), 30, said.append)
    figures = metrics[0].details
    assert figures["margin"] == 5 and figures["completed"] == 30
    assert any("again" in line for line in said)


def test_a_slow_machine_on_every_margin_is_an_error_that_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from contengine.tools import bench_workers

    monkeypatch.setattr(bench_workers, "_ASLEEP_MARGINS", (-1e6,))
    with pytest.raises(RuntimeError, match="slower than the due time allowed for"):
        bench_workers.measure_asleep(str(tmp_path), 30, lambda text: None)


def test_child_processes_import_this_copy_of_contengine() -> None:
    from contengine.tools.bench_common import child_env

    root = Path(child_env()["PYTHONPATH"].split(os.pathsep)[0])
    assert (root / "contengine" / "__init__.py").is_file()
