"""The database file under a running engine: deleted, replaced, read-only.

A worker is a child process (tests/worker_child.py); this process starts runs, then
deletes or replaces the file under it and watches it stop.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
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


def busy_worker(tmp_path: Path, workers: Workers) -> tuple[Path, Path, subprocess.Popen[bytes]]:
    """A database with RUNS runs of three short steps and a worker in the middle of them."""
    db, ledger = tmp_path / "app.db", tmp_path / "ledger"
    with ce.Engine(db) as engine:
        for n in range(RUNS):
            engine.start(wc.triple, str(ledger), n, id=f"t{n}")
    proc = workers.spawn(db, threads=2, lease=10.0, grace=1.0)
    wait_for(lambda: len(ledger_rows(ledger)) >= 20, "the worker to run some steps", workers)
    return db, ledger, proc


def stopped(workers: Workers, proc: subprocess.Popen[bytes]) -> str:
    """Wait for the worker to exit on its own; its stderr."""
    wait_for(lambda: proc.poll() is not None, "the worker to stop on its own", workers)
    return workers.output(proc)


def test_a_worker_whose_file_is_deleted_stops_with_an_error_and_writes_nothing(
    tmp_path: Path, workers: Workers
) -> None:
    """The file deleted under a busy worker: it exits non-zero naming the path and what
    happened, and nothing is written anywhere: no new file appears at the path."""
    db, ledger, proc = busy_worker(tmp_path, workers)
    os.unlink(db)
    err = stopped(workers, proc)
    assert proc.returncode != 0, workers.report()
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
    assert proc.returncode != 0, workers.report()
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


# -- a read-only file or filesystem ------------------------------------------------------

TESTS = Path(__file__).resolve().parent
CLI = [sys.executable, "-m", "contengine"]


def made_db(path: Path, ledger: Path, keep_wal: bool = False) -> None:
    """A database with one finished run of wc.triple (id "r1"), written by a child process;
    keep_wal: the child exits without closing it, leaving its commits in the -wal."""
    code = (
        "import os, sys, contengine as ce, worker_child as wc\n"
        "e = ce.Engine(sys.argv[1])\n"
        "e.run(wc.triple, sys.argv[2], 1, id='r1')\n"
        "os._exit(0) if sys.argv[3] == '1' else e.close()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    args = [sys.executable, "-c", code, str(path), str(ledger), "1" if keep_wal else "0"]
    subprocess.run(args, check=True, env=env)
    assert Path(f"{path}-wal").exists() == keep_wal


def in_namespace(unshare: list[str], script: str) -> None:
    """Run the shell script under `unshare ...`; skip (saying why) where this machine
    does not allow the namespace."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to make a read-only mount without touching the machine")
    probe = subprocess.run([*unshare, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"user and mount namespaces are not allowed here: {probe.stderr.strip()}")
    done = subprocess.run([*unshare, "sh", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def commands(db: Path, out: Path) -> str:
    """Shell lines: each read-only command on db, its output and exit code into out/."""
    cli = " ".join(CLI)
    lines = [f"export PYTHONPATH={TESTS}", f"mkdir -p {out}"]
    for name, args in (
        ("runs", f"runs --db {db}"),
        ("show", f"show r1 --db {db}"),
        ("export", f"export r1 --db {db}"),
        ("replay", f"replay {db} --all --import worker_child"),
    ):
        lines.append(f"{cli} {args} >{out}/{name}.out 2>&1; echo $? >{out}/{name}.rc")
    engine = "import sys, contengine as ce; ce.Engine(sys.argv[1])"
    lines.append(
        f"{sys.executable} -c '{engine}' {db} >{out}/engine.out 2>&1; echo $? >{out}/engine.rc"
    )
    return "\n".join(lines)


def results(out: Path) -> dict[str, tuple[int, str]]:
    """Each command's exit code and output."""
    return {
        p.stem: (int(p.read_text()), (out / f"{p.stem}.out").read_text()) for p in out.glob("*.rc")
    }


def assert_read_only_commands_work(found: dict[str, tuple[int, str]], db: Path, why: str) -> None:
    """runs, show, export and replay read the file; an engine, which writes, says why not."""
    assert found["runs"][0] == 0 and "r1" in found["runs"][1], found["runs"]
    assert found["show"][0] == 0 and "completed" in found["show"][1], found["show"]
    assert found["export"][0] == 0 and '"id": "r1"' in found["export"][1], found["export"]
    assert found["replay"][0] == 0 and "1 ok" in found["replay"][1], found["replay"]
    code, text = found["engine"]
    assert code == 1, text
    assert f"{str(db)!r} {why}: contengine cannot write to it" in text, text
    assert "The read-only commands (contengine runs, show, export, replay) can read it" in text


def test_read_only_commands_work_on_a_read_only_filesystem(tmp_path: Path) -> None:
    """A tmpfs remounted read-only (in a user and mount namespace of a child, so the
    machine is untouched): runs, show, export and replay read a database there, closed
    cleanly or with its commits still in its -wal and -shm; an engine is refused with
    the reason. A -wal without its -shm cannot be read there: a clear error."""
    src, ro, ledger = tmp_path / "src", tmp_path / "ro", tmp_path / "ledger"
    src.mkdir()
    ro.mkdir()
    made_db(src / "clean.db", ledger)
    made_db(src / "wal.db", ledger, keep_wal=True)
    made_db(src / "noshm.db", ledger, keep_wal=True)
    os.unlink(src / "noshm.db-shm")
    script = "\n".join(
        [
            f"mount -t tmpfs tmpfs {ro} && cp {src}/* {ro}/ && mount -o remount,ro {ro} || exit 9",
            commands(ro / "clean.db", tmp_path / "clean"),
            commands(ro / "wal.db", tmp_path / "wal"),
            commands(ro / "noshm.db", tmp_path / "noshm"),
        ]
    )
    in_namespace(["unshare", "--map-root-user", "--mount"], script)
    why = "is on a read-only filesystem"
    assert_read_only_commands_work(results(tmp_path / "clean"), ro / "clean.db", why)
    assert_read_only_commands_work(results(tmp_path / "wal"), ro / "wal.db", why)
    code, text = results(tmp_path / "noshm")["runs"]
    assert code == 1, text
    assert "has commits in its write-ahead log" in text, text
    assert "Copy the database and its -wal file to a writable directory" in text, text


def test_read_only_commands_work_on_a_read_only_file_in_a_read_only_directory(
    tmp_path: Path,
) -> None:
    """chmod 444 on the file and 555 on its directory, read by a user without the right
    to override them (root's does: the commands run as an unprivileged user of a user
    namespace): the read-only commands work; an engine says the file is read-only, or,
    with the file writable, that its directory is."""
    ledger, folder = tmp_path / "ledger", tmp_path / "ro"
    folder.mkdir()
    made_db(folder / "app.db", ledger)
    os.chmod(folder / "app.db", 0o444)
    os.chmod(folder, 0o555)
    try:
        as_user = ["unshare", "--map-user=1000", "--map-group=1000"]
        in_namespace(as_user, commands(folder / "app.db", tmp_path / "file"))
        os.chmod(folder / "app.db", 0o644)
        in_namespace(as_user, commands(folder / "app.db", tmp_path / "dir"))
    finally:
        os.chmod(folder, 0o755)
    why = "is a read-only file (no write permission for this user)"
    assert_read_only_commands_work(results(tmp_path / "file"), folder / "app.db", why)
    why = f"is in a directory this user cannot write ({str(folder)!r}"
    found = results(tmp_path / "dir")
    assert f"{str(folder / 'app.db')!r} {why}" in found["engine"][1], found["engine"]
