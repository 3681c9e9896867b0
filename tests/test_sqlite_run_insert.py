"""A new run's INSERT on SQLite with its NULLs written in the statement: every column
reads back as the row had it, whichever of them are NULL."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from contengine.store.rows import RunRow
from contengine.store.sqlite.sql import RUN_COLS, insert_run, run_params, run_row
from contengine.store.sqlite.store import SQLiteStore


def _row(run_id: str, **changes: object) -> RunRow:
    row = RunRow(run_id, "wf", None, "pending", b"\x80args", None, 1.0, 1.0)
    for name, value in changes.items():
        setattr(row, name, value)
    return row


ROWS = [
    _row("plain"),
    _row(
        "full",
        ref="r1",
        args_key="k",
        finished_at=3.0,
        due_at=2.0,
        result=b"res",
        error=b"err",
        error_text="tb",
        note="n",
        parent_id="p",
        tags=("a", "b"),
        queue="q",
        priority=5,
    ),  # fmt: skip
    _row("big", args=b"x" * 10_000, result=b"", note=""),
]


def test_each_row_reads_back_as_written(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "runs.db"))
    try:
        for row in ROWS:
            made, new = store.create_run(row)
            assert new and made is row
        assert store.create_run(_row("plain", note="other"))[1] is False  # the id is taken
    finally:
        store.close()
    conn = sqlite3.connect(tmp_path / "runs.db")
    try:
        for row in ROWS:
            got = conn.execute(f"SELECT {RUN_COLS} FROM runs WHERE id = ?", (row.id,)).fetchone()
            assert run_params(run_row(got)) == run_params(row)
            blob = conn.execute("SELECT typeof(args) FROM runs WHERE id = ?", (row.id,))
            assert blob.fetchone() == ("blob",)
    finally:
        conn.close()


def test_the_statement_binds_no_null_and_no_bytes() -> None:
    for row in ROWS:
        sql, params = insert_run(row)
        assert None not in params and not any(type(p) is bytes and len(p) <= 4096 for p in params)
        assert sql.count("?") == len(params)
        assert sql.count("NULL") == run_params(row).count(None)
