"""The log's layout on SQLite, raw (no engine): the current per-run key against
layouts that write a batch's rows side by side.

    python benchmarks/journal_layout.py [ROUNDS] [DIR]

Layouts (each writes, per step, what the group commit's bulk path writes: the UPDATE
that completes entry N of a run and the INSERT of entry N+1, a batch in one
transaction with executemany and one commit):

- current: log(id INTEGER PRIMARY KEY = run << 32 | position), as the store has it.
- rowid:   the log as a rowid table in insertion order, with a UNIQUE index on
           (run, position) (the UPDATE finds its row through the index).
- journal: new entries go to a journal in commit order (rowid = commit sequence, an
           index on (run, position)); the completing UPDATE finds its entry there; a
           move, every MOVE_ROWS finished rows, copies the journal's finished rows
           into the per-run log (current's table) and deletes them, in a transaction
           of its own. A final move at the end empties the journal of finished rows:
           its time is part of the layout's total.

(A WITHOUT ROWID table keyed by (commit sequence, run, position) needs the same
secondary index on (run, position) for the UPDATE and for replay, so it is `rowid`
with a wider key; not measured separately.)

Workloads: `many` (100 runs at once: batches of 100, one step of each run, 100 steps
each), `long` (the same, 600 steps each: a run's entries outgrow an index page), `alone`
(one run, a commit per step), `short` (200 runs of 10 steps, batches of 200). For each
layout, workload and synchronous (FULL, NORMAL), a fresh file per round; the rounds
interleave the layouts. Reported per step, medians over rounds: wall time of the
writes (moves included), user and kernel CPU time (getrusage), WAL frames written
(autocheckpoint off during the writes; counted by a PASSIVE checkpoint after them),
that checkpoint's time (PASSIVE then TRUNCATE), the final move's time with its own
checkpoint and frames, the total of the three, and replay's read of every run's log (wall per entry,
read after the writes and before the final move, so the journal layout reads from
both places), and after the final move.
"""

from __future__ import annotations

import json
import os
import resource
import sqlite3
import statistics
import sys
import tempfile
import time

from contengine.tools.bench import python_speed

BITS = 32
MASK = (1 << BITS) - 1
MOVE_ROWS = 1000
OUTCOME = b"\x80\x05\x95" + b"x" * 37  # a 40-byte pickled outcome

COLS = (
    "kind TEXT NOT NULL, name TEXT NOT NULL, key TEXT, text TEXT, status TEXT NOT NULL, "
    "attempts INTEGER NOT NULL, crashes INTEGER NOT NULL, started_at REAL NOT NULL, "
    "finished_at REAL, due_at REAL, outcome BLOB, error_text TEXT"
)
ENTRY = (
    "kind, name, key, text, status, attempts, crashes, started_at, finished_at, due_at, "
    "outcome, error_text"
)
COMPLETE = (
    "UPDATE {t} SET status = 'completed', attempts = ?, crashes = ?, finished_at = ?, "
    "due_at = NULL, outcome = ?, error_text = ? WHERE {where} "
    "AND status IN ('running', 'retrying') AND attempts = coalesce(?, attempts)"
)


class Current:
    name = "current"

    def setup(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"CREATE TABLE log (id INTEGER PRIMARY KEY, {COLS})")
        self.complete = COMPLETE.format(t="log", where="id = ?")
        self.insert = (
            "INSERT INTO log (id, kind, name, key, text, status, attempts, crashes, "
            "started_at) VALUES (?, ?, ?, ?, ?, 'running', 1, 0, ?)"
        )

    def write(self, conn: sqlite3.Connection, done: list, new: list) -> None:
        if done:
            rows = [(1, 0, t, OUTCOME, None, r << BITS | p, 1) for r, p, t in done]
            if conn.executemany(self.complete, rows).rowcount != len(rows):
                raise AssertionError("raced")
        conn.executemany(
            self.insert,
            [(r << BITS | p, "step", "fetch", f"fetch:{p}", None, t) for r, p, t in new],
        )

    def after(self, conn: sqlite3.Connection, final: bool) -> None:
        pass

    def read(self, conn: sqlite3.Connection, run: int) -> list:
        return conn.execute(
            f"SELECT id & {MASK}, {ENTRY} FROM log WHERE id BETWEEN ? AND ? ORDER BY id",
            (run << BITS, run << BITS | MASK),
        ).fetchall()


class Rowid(Current):
    name = "rowid"

    def setup(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            f"CREATE TABLE log (seq INTEGER PRIMARY KEY, run INTEGER NOT NULL, "
            f"position INTEGER NOT NULL, {COLS})"
        )
        conn.execute("CREATE UNIQUE INDEX log_by_run ON log (run, position)")
        self.complete = COMPLETE.format(t="log", where="run = ? AND position = ?")
        self.insert = (
            "INSERT INTO log (run, position, kind, name, key, text, status, attempts, "
            "crashes, started_at) VALUES (?, ?, ?, ?, ?, ?, 'running', 1, 0, ?)"
        )

    def write(self, conn: sqlite3.Connection, done: list, new: list) -> None:
        if done:
            rows = [(1, 0, t, OUTCOME, None, r, p, 1) for r, p, t in done]
            if conn.executemany(self.complete, rows).rowcount != len(rows):
                raise AssertionError("raced")
        conn.executemany(
            self.insert, [(r, p, "step", "fetch", f"fetch:{p}", None, t) for r, p, t in new]
        )

    def read(self, conn: sqlite3.Connection, run: int) -> list:
        return conn.execute(
            f"SELECT position, {ENTRY} FROM log WHERE run = ? ORDER BY position", (run,)
        ).fetchall()


class Journal(Current):
    name = "journal"

    def setup(self, conn: sqlite3.Connection) -> None:
        super().setup(conn)
        conn.execute(
            f"CREATE TABLE journal (seq INTEGER PRIMARY KEY, run INTEGER NOT NULL, "
            f"position INTEGER NOT NULL, {COLS})"
        )
        conn.execute("CREATE UNIQUE INDEX journal_by_run ON journal (run, position)")
        self.complete_j = COMPLETE.format(t="journal", where="run = ? AND position = ?")
        self.insert_j = (
            "INSERT INTO journal (run, position, kind, name, key, text, status, attempts, "
            "crashes, started_at) VALUES (?, ?, ?, ?, ?, ?, 'running', 1, 0, ?)"
        )
        self.finished = 0
        self.moves = 0

    def write(self, conn: sqlite3.Connection, done: list, new: list) -> None:
        if done:
            rows = [(1, 0, t, OUTCOME, None, r, p, 1) for r, p, t in done]
            n = conn.executemany(self.complete_j, rows).rowcount
            if n != len(rows):
                # Entries moved already (not here: a move takes finished rows only).
                raise AssertionError("raced")
            self.finished += n
        conn.executemany(
            self.insert_j,
            [(r, p, "step", "fetch", f"fetch:{p}", None, t) for r, p, t in new],
        )

    def after(self, conn: sqlite3.Connection, final: bool) -> None:
        if self.finished < (1 if final else MOVE_ROWS):
            return
        with conn:
            top = conn.execute("SELECT max(seq) FROM journal").fetchone()[0]
            conn.execute(
                f"INSERT INTO log (id, {ENTRY}) SELECT run << {BITS} | position, {ENTRY} "
                "FROM journal WHERE seq <= ? AND status = 'completed' ORDER BY run, position",
                (top,),
            )
            conn.execute("DELETE FROM journal WHERE seq <= ? AND status = 'completed'", (top,))
        self.finished = 0
        self.moves += 1

    def read(self, conn: sqlite3.Connection, run: int) -> list:
        return conn.execute(
            f"SELECT id & {MASK} AS position, {ENTRY} FROM log WHERE id BETWEEN ? AND ? "
            f"UNION ALL SELECT position, {ENTRY} FROM journal WHERE run = ? ORDER BY 1",
            (run << BITS, run << BITS | MASK, run),
        ).fetchall()


LAYOUTS = [Current, Rowid, Journal]
# workload: (runs, steps per run, runs per batch)
WORKLOADS = {
    "many": (100, 100, 100),
    "long": (100, 600, 100),
    "alone": (1, 500, 1),
    "short": (200, 10, 200),
}


def cpu() -> tuple[float, float]:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime, u.ru_stime


def one(path: str, layout_cls: type, workload: str, sync: str) -> dict:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {sync}")
    layout = layout_cls()
    with conn:
        layout.setup(conn)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    runs, steps, per_batch = WORKLOADS[workload]
    batches = []
    for group in range(0, runs, per_batch):
        members = list(range(group + 1, min(runs, group + per_batch) + 1))
        for pos in range(steps):
            batches.append((members, pos))
    now = time.time()
    u0, s0 = cpu()
    w0 = time.perf_counter()
    for members, pos in batches:
        conn.execute("BEGIN IMMEDIATE")
        layout.write(
            conn,
            [(r, pos - 1, now) for r in members] if pos else [],
            [(r, pos, now) for r in members],
        )
        conn.execute("COMMIT")
        layout.after(conn, final=False)
    wall = time.perf_counter() - w0
    u1, s1 = cpu()
    # The writes' frames, and the checkpoint that copies them into the file (timed).
    c0 = time.perf_counter()
    frames = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    ckpt = time.perf_counter() - c0
    # replay's read, from both places for the journal
    r0 = time.perf_counter()
    entries = sum(len(layout.read(conn, r)) for r in range(1, runs + 1))
    read_before = time.perf_counter() - r0
    assert entries == runs * steps, entries
    m0 = time.perf_counter()
    mu0, ms0 = cpu()
    layout.after(conn, final=True)
    c1 = time.perf_counter()
    frames_move = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    move = time.perf_counter() - m0  # the final move and its checkpoint
    ckpt_move = time.perf_counter() - c1
    mu1, ms1 = cpu()
    r0 = time.perf_counter()
    entries = sum(len(layout.read(conn, r)) for r in range(1, runs + 1))
    read_after = time.perf_counter() - r0
    conn.close()
    n = runs * steps
    us = 1e6 / n
    return {
        "write_us": wall * us,
        "user_us": (u1 - u0) * us,
        "sys_us": (s1 - s0) * us,
        "frames_per_step": frames / n,
        "final_move_us": move * us,
        "final_move_cpu_us": (mu1 - mu0 + ms1 - ms0) * us,
        "final_move_checkpoint_us": ckpt_move * us,
        "frames_final_move": frames_move / n,
        "checkpoint_us": ckpt * us,
        "total_us": (wall + ckpt + move) * us,
        "read_us_per_entry": read_before * 1e6 / n,
        "read_after_move_us_per_entry": read_after * 1e6 / n,
        "moves": getattr(layout, "moves", 0),
    }


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    results: dict[str, list[dict]] = {}
    print(json.dumps({"python_speed": python_speed(), "sqlite": sqlite3.sqlite_version}))
    with tempfile.TemporaryDirectory(dir=sys.argv[2] if len(sys.argv) > 2 else None) as tmp:
        path = os.path.join(tmp, "j.db")
        for rnd in range(rounds):
            order = LAYOUTS if rnd % 2 == 0 else LAYOUTS[::-1]
            for workload in WORKLOADS:
                for sync in ("FULL", "NORMAL"):
                    for cls in order:
                        key = f"{workload} {sync} {cls.name}"
                        results.setdefault(key, []).append(one(path, cls, workload, sync))
            print(f"round {rnd + 1} done", file=sys.stderr, flush=True)
    table = {}
    for key, rows in results.items():
        table[key] = {k: round(statistics.median(r[k] for r in rows), 2) for k in rows[0]}
        print(key, json.dumps(table[key]))
    print(json.dumps({"python_speed": python_speed()}))


if __name__ == "__main__":
    main()
