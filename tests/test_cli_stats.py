"""engine.stats(), `contengine stats` (table, --json, --prometheus) and the Prometheus
text of contengine.cli.metrics, on both stores."""

from __future__ import annotations

import json
import re
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from stores import current

import contengine as ce
from contengine.cli.main import main
from contengine.cli.metrics import escape, prometheus_text

pytestmark = pytest.mark.both_stores

WAIT = 120.0
TRIES: dict[str, int] = {}


@ce.step(name="test_cli_stats.once_flaky", retries=1, backoff=ce.Backoff(initial=0.0))
def once_flaky(key: str) -> str:
    """Fails its first attempt (per key)."""
    TRIES[key] = TRIES.get(key, 0) + 1
    if TRIES[key] == 1:
        raise ValueError("first try")
    return key


@ce.step(name="test_cli_stats.refuse")
def refuse() -> None:
    """Always fails."""
    raise PermissionError("no")


@ce.workflow(name="test_cli_stats.ok")
def ok(key: str) -> Generator[Any, Any, str]:
    """Two steps, the second retried once."""
    yield once_flaky(key + "-first-ok")
    TRIES[key + "-first-ok"] = 5  # never fails again, even on a replay's re-run
    return (yield once_flaky(key))


@ce.workflow(name="test_cli_stats.bad")
def bad() -> Generator[Any, Any, None]:
    """Fails at its step."""
    yield refuse()


def make_db(path: Path) -> dict[str, str]:
    """A database with a completed run, a failed one, and three pending runs (two in queue
    'q "1"\\' , one in none), the oldest pending one due 100 s ago."""
    ids: dict[str, str] = {}
    with ce.Engine(path) as engine:
        key = f"k-{path.name}-{current().target(path)}"
        ids["ok"] = engine.start(ok, key).id
        ids["bad"] = engine.start(bad).id
        engine.run_until_idle()
        assert engine.get_run(ids["ok"]).status == "completed"
        assert engine.get_run(ids["bad"]).status == "failed"
        ids["q1"] = engine.start(ok, "q1", queue='q "1"\\').id
        ids["q2"] = engine.start(ok, "q2", queue='q "1"\\').id
        ids["none"] = engine.start(ok, "none").id
    with current().sql(path) as sql:
        sql.execute("UPDATE runs SET updated_at = updated_at - 100 WHERE id = ?", (ids["q1"],))
    return ids


def test_engine_stats_counts_runs_steps_queues_and_claim_lag(tmp_path: Path) -> None:
    db = tmp_path / "stats.db"
    make_db(db)
    with ce.Engine(db) as engine:
        stats = engine.stats(window=3600)
        with pytest.raises(ValueError, match="window"):
            engine.stats(window=0)

    assert stats.runs == {
        "pending": 3, "running": 0, "sleeping": 0, "waiting": 0,
        "completed": 1, "failed": 1, "cancelled": 0,
    }  # fmt: skip
    steps = stats.steps
    # ok: two steps of 2 attempts each; bad: one step of 1 attempt, failed
    assert (steps.count, steps.completed, steps.failed) == (3, 2, 1)
    assert (steps.attempts, steps.retried, steps.crashes) == (5, 2, 0)
    assert steps.p50 is not None and steps.max is not None and 0 <= steps.p50 <= steps.max
    assert steps.buckets[-1][1] == 3  # every step took less than 300 s
    assert [n for _, n in steps.buckets] == sorted(n for _, n in steps.buckets)
    assert stats.queue_depth == {'q "1"\\': 2, "": 1}
    assert 100 <= stats.claim_lag_by_queue['q "1"\\'] < 100 + WAIT
    assert 0 <= stats.claim_lag_by_queue[""] < WAIT
    assert stats.claim_lag == stats.claim_lag_by_queue['q "1"\\']


def test_runs_held_by_a_live_worker_are_not_in_the_queue_depth(tmp_path: Path) -> None:
    db = tmp_path / "held.db"
    with ce.Engine(db) as engine:
        run = engine.start(ok, "held", queue="held")
        assert engine.stats().queue_depth == {"held": 1}
        with current().sql(db) as sql:
            # A claim by a worker alive for another hour: the run is held, not waiting.
            sql.execute(
                "INSERT INTO workers (id, host, pid, started_at, expires_at) "
                "VALUES ('w', 'h', 1, 0, ?)",
                (engine.clock.now() + 3600,),
            )
            sql.execute("UPDATE runs SET owner = 'w' WHERE id = ?", (run.id,))
        assert engine.stats().queue_depth == {}
        with current().sql(db) as sql:
            sql.execute("UPDATE workers SET expires_at = 0 WHERE id = 'w'")  # it died
        assert engine.stats().queue_depth == {"held": 1}


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_stats_command_prints_a_table_json_and_prometheus_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "cli.db"
    make_db(db)
    target = current().target(db)

    code, out, err = run_cli(capsys, "stats", "--db", target, "--window", "1h", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["runs"]["completed"] == 1 and data["runs"]["pending"] == 3
    assert data["steps"]["count"] == 3 and data["window"] == 3600
    assert data["queue_depth"] == {'q "1"\\': 2, "": 1}
    assert data["claim_lag"] >= 100

    code, out, err = run_cli(capsys, "stats", "--db", target)
    assert code == 0, err
    assert re.search(r"completed\s+1\n", out) and re.search(r"pending\s+3\n", out)
    assert "(no queue)" in out and "claim lag" in out

    code, out, err = run_cli(capsys, "stats", "--db", target, "--prometheus")
    assert code == 0, err
    assert 'contengine_queue_depth{queue="q \\"1\\"\\\\"} 2' in out.splitlines()

    code, out, err = run_cli(capsys, "stats", "--db", target, "--window", "10")
    assert code == 2 and "--window" in err and "unit" in err
    code, out, err = run_cli(capsys, "stats", "--db", target, "--window", "0s")
    assert code == 2 and "longer than 0s" in err and "ValueError" not in err


def test_prometheus_text_is_well_formed(tmp_path: Path) -> None:
    db = tmp_path / "prom.db"
    make_db(db)
    with ce.Engine(db) as engine:
        text = prometheus_text(engine)

    assert text.endswith("\n")
    declared: dict[str, str] = {}
    sample = re.compile(r'^(contengine_[a-z_]+)(\{([a-z]+="(?:[^"\\\n]|\\.)*",?)*\})? (\S+)$')
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert name not in declared, f"{name} declared twice"
            declared[name] = ""
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert name in declared and kind == "gauge"
            declared[name] = kind
        else:
            match = sample.match(line)
            assert match is not None, line
            assert declared.get(match.group(1)) == "gauge", line
            float(match.group(4).replace("+Inf", "inf"))
    assert 'contengine_runs{status="failed"} 1' in text.splitlines()
    assert 'contengine_recent_steps{outcome="completed"} 2' in text.splitlines()


def test_label_values_are_escaped() -> None:
    assert escape('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
