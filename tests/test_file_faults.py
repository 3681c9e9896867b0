"""The database file under a running engine: deleted, replaced, read-only.

A worker is a child process (tests/worker_child.py); this process starts runs, then
deletes or replaces the file under it and watches it stop.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import worker_child as wc
from test_workers_processes import Workers, ledger_rows, wait_for, workers

import contengine as ce

__all__ = ["workers"]  # the fixture, imported for the tests below

RUNS = 300


def sha(path: Path) -> str:
    """The file's content hash."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def busy_worker(tmp_path: Path, workers: Workers) -> tuple[Path, Path, object]:
    """A database with RUNS runs of three short steps and a worker in the middle of them."""
    db, ledger = tmp_path / "app.db", tmp_path / "ledger"
    with ce.Engine(db) as engine:
        for n in range(RUNS):
            engine.start(wc.triple, str(ledger), n, id=f"t{n}")
    proc = workers.spawn(db, threads=2, lease=10.0, grace=1.0)
    wait_for(lambda: len(ledger_rows(ledger)) >= 20, "the worker to run some steps", workers)
    return db, ledger, proc


def stopped(workers: Workers, proc: object) -> str:
    """Wait for the worker to exit on its own; its stderr."""
    wait_for(lambda: proc.poll() is not None, "the worker to stop on its own", workers)  # type: ignore[attr-defined]
    return workers.output(proc)  # type: ignore[arg-type]


def test_a_worker_whose_file_is_deleted_stops_with_an_error_and_writes_nothing(
    tmp_path: Path, workers: Workers
) -> None:
    """The file deleted under a busy worker: it exits non-zero naming the path and what
    happened, and nothing is written anywhere: no new file appears at the path."""
    db, ledger, proc = busy_worker(tmp_path, workers)
    os.unlink(db)
    err = stopped(workers, proc)
    assert proc.returncode != 0, workers.report()  # type: ignore[attr-defined]
    assert f"the database file {str(db)!r} was deleted while this engine had it open" in err, err
    assert "DatabaseGone" in err, err
    assert not db.exists()
    # The old file's write-ahead log was moved aside, so a new engine on the path
    # starts an empty database rather than applying it to one.
    assert not Path(f"{db}-wal").exists()
    assert list(tmp_path.glob("app.db-wal.orphaned-*"))
    assert len(ledger_rows(ledger)) < RUNS * 3  # it stopped in the middle
    with ce.Engine(db) as engine:
        assert engine.runs() == []


def test_a_worker_whose_file_is_replaced_stops_with_an_error_and_leaves_the_new_file_alone(
    tmp_path: Path, workers: Workers
) -> None:
    """The file replaced under a busy worker by a backup of it (a restore without
    stopping the worker): it exits non-zero naming the path and what happened, and the
    file now at the path is exactly the backup, which an engine then opens and drives."""
    db, ledger, proc = busy_worker(tmp_path, workers)
    backup, kept = tmp_path / "backup.db", tmp_path / "kept.db"
    with ce.Engine(db) as other:
        other.backup(backup)
    shutil.copyfile(backup, kept)
    os.replace(backup, db)
    err = stopped(workers, proc)
    assert proc.returncode != 0, workers.report()  # type: ignore[attr-defined]
    assert f"the database file {str(db)!r} was replaced by another file" in err, err
    # Nothing the old worker did reached the new file, or a -wal beside it.
    assert sha(db) == sha(kept)
    assert not Path(f"{db}-wal").exists()
    with ce.Engine(kept) as engine:
        expected = [(r.id, r.status) for r in engine.runs()]
    with ce.Engine(db) as engine:
        assert [(r.id, r.status) for r in engine.runs()] == expected
        engine.run_until_idle()
        assert {r.status for r in engine.runs()} == {"completed"}
        assert len(engine.runs()) == RUNS
