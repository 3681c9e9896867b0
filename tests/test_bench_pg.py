"""`contengine bench --db postgresql://...` measures every metric on the server and
leaves nothing behind; no timing thresholds here."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from postgres_server import server_url

from contengine.cli.main import main
from contengine.store.postgres import raw
from contengine.tools import bench_pg

TINY = [
    "--steps", "50", "--rounds", "1", "--runs", "4", "--claim-runs", "40",
    "--remote-signals", "3", "--claims-asleep", "50",
]  # fmt: skip
WAKES = {"pg_wake_notify", "pg_wake_notify_p99", "pg_wake_poll", "pg_wake_poll_p99"}
CLAIMS = {
    *[f"pg_empty_claim_{n}" for n in (0, 5, 50)],
    *[f"pg_{m}_{part}" for m in ("idle", "start") for part in ("few", "many", "ratio")],
}
METRICS = {
    "pg_one_run", "pg_concurrent_100", "pg_many_runs", "pg_many_runs_started", "pg_claims",
    *WAKES, *CLAIMS,
}  # fmt: skip


def bench_schemas(url: str) -> set[str]:
    """The schemas the benchmark makes (it drops each after its round)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'contengine_bench_%'"
        ).fetchall()
    return {str(r[0]) for r in rows}


def test_json_has_every_metric_and_no_schema_is_left(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = server_url()
    # The schemas this benchmark makes, by name: others may run a benchmark on the same
    # server meanwhile, whose schemas come and go on their own.
    made: list[str] = []
    naming = raw.new_schema_name

    def recorded() -> str:
        made.append(naming())
        return made[-1]

    monkeypatch.setattr(raw, "new_schema_name", recorded)
    monkeypatch.setattr(bench_pg, "new_schema_name", recorded)
    assert main(["bench", "--db", url, "--json", *TINY]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["params"] == {
        "db": url, "steps": 50, "rounds": 1, "runs": 4, "claim_runs": 40,
        "remote_signals": 3, "claims_asleep": 50,
    }  # fmt: skip
    assert doc["machine"]["python_speed"] > 0
    assert doc["machine"]["server"]["version"]
    metrics: dict[str, Any] = doc["metrics"]
    assert set(metrics) == METRICS
    for name, m in metrics.items():
        if name not in WAKES:
            assert m["median"] > 0 and len(m["samples"]) == 1, name
    for name in ("pg_one_run", "pg_concurrent_100", "pg_many_runs"):
        assert metrics[name]["floor"] > 0 and metrics[name]["ratio"] > 0, name
    claims = metrics["pg_claims"]["details"]
    assert claims["duplicates"] == 0 and sum(claims["per_process"]) == 40
    assert claims["processes"] == 4
    assert len(made) >= 4 and bench_schemas(url) & set(made) == set()


def test_the_table_names_the_server_and_each_metric(capsys: pytest.CaptureFixture[str]) -> None:
    url = server_url()
    assert main(["bench", "--db", url, *TINY]) == 0
    out = capsys.readouterr().out
    assert "contengine bench on PostgreSQL" in out and "commit floor" in out
    for label in ("steps/s, one run", "100 runs advancing at once", "runs of 10 steps"):
        assert label in out
    assert "claims/s, 4 processes" in out


def test_a_database_file_is_still_refused_by_bench(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--db", "app.db"]) == 2
    assert "takes no --db" in capsys.readouterr().err
