"""200 workflows of 10 steps on DBOS Transact and on contengine, on one PostgreSQL server.

Each side runs in a fresh process of its own, rounds alternating (DBOS, contengine,
DBOS, ...), and each round on a fresh store: DBOS in a database of its own
(`dbos_bench`, created for the round and dropped after), contengine in a fresh
schema of the given database (dropped after). Both sides are timed the same way:
from the first workflow started to the last result read, every step a trivial
function (its argument + 1), both with the server's synchronous_commit on.

    python3 -m venv .venv-dbos && .venv-dbos/bin/pip install dbos
    .venv/bin/python benchmarks/dbos_compare.py --db postgresql://postgres@127.0.0.1:5432/test

DBOS is not a dependency of contengine: it runs in the interpreter given by
--dbos-python (default .venv-dbos/bin/python), which imports this file for its side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

WORKFLOWS = 200
STEPS = 10
DBOS_DATABASE = "dbos_bench"


# -- DBOS side (runs under --dbos-python) ---------------------------------------------


def dbos_round(url: str, pool: int) -> float:
    """Workflows/s of WORKFLOWS workflows of STEPS steps on DBOS Transact (launch untimed)."""
    from dbos import DBOS

    @DBOS.step()
    def bump(x: int) -> int:
        return x + 1

    @DBOS.workflow()
    def loop(n: int) -> int:
        x = 0
        for _ in range(n):
            x = bump(x)
        return x

    config: Any = {
        "name": "contengine-compare",
        "system_database_url": url,
        "sys_db_pool_size": pool,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()
    try:
        start = time.perf_counter()
        handles = [DBOS.start_workflow(loop, STEPS) for _ in range(WORKFLOWS)]
        results = [h.get_result() for h in handles]
        elapsed = time.perf_counter() - start
    finally:
        DBOS.destroy()
    if results != [STEPS] * WORKFLOWS:
        raise RuntimeError(f"DBOS workflows returned {sorted(set(results))}")
    return WORKFLOWS / elapsed


# -- contengine side -------------------------------------------------------------------


def contengine_round(url: str, threads: int) -> float:
    """Runs/s of WORKFLOWS runs of STEPS steps: started while a worker of `threads`
    threads drives them, then every result read (opening the engine untimed)."""
    import contengine as ce
    from contengine.tools.bench_common import loop

    schema = f"compare_{uuid.uuid4().hex[:12]}"
    try:
        with (
            ce.Engine(url, schema=schema, workflows=[loop]) as engine,
            engine.worker(threads=threads),
        ):
            start = time.perf_counter()
            runs = [engine.start(loop, STEPS) for _ in range(WORKFLOWS)]
            results = [run.result() for run in runs]
            elapsed = time.perf_counter() - start
    finally:
        _admin(url, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    if results != [STEPS] * WORKFLOWS:
        raise RuntimeError(f"contengine runs returned {sorted(set(results))}")
    return WORKFLOWS / elapsed


# -- the comparison --------------------------------------------------------------------


def _admin(url: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement)


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _child(python: str, side: str, url: str, size: int) -> float:
    # The repository's root first on the path: its contengine, whatever is installed.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [python, os.path.abspath(__file__), "--side", side, "--db", url, "--size", str(size)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the {side} round failed:\n{done.stderr[-3000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["rate"])


def compare(url: str, dbos_python: str, rounds: int, pool: int, threads: int) -> dict[str, Any]:
    """Alternating rounds of both sides; their samples, medians and ratio."""
    dbos_url = _with_database(url, DBOS_DATABASE)
    samples: dict[str, list[float]] = {"dbos": [], "contengine": []}
    for i in range(rounds):
        _admin(url, f"DROP DATABASE IF EXISTS {DBOS_DATABASE} WITH (FORCE)")
        _admin(url, f"CREATE DATABASE {DBOS_DATABASE}")
        try:
            samples["dbos"].append(_child(dbos_python, "dbos", dbos_url, pool))
        finally:
            _admin(url, f"DROP DATABASE IF EXISTS {DBOS_DATABASE} WITH (FORCE)")
        samples["contengine"].append(_child(sys.executable, "contengine", url, threads))
        print(
            f"round {i + 1}/{rounds}: DBOS {samples['dbos'][-1]:,.0f} workflows/s, "
            f"contengine {samples['contengine'][-1]:,.0f} runs/s",
            file=sys.stderr,
        )
    medians = {side: statistics.median(values) for side, values in samples.items()}
    return {
        "workflows": WORKFLOWS,
        "steps": STEPS,
        "dbos_pool": pool,
        "contengine_threads": threads,
        "samples": samples,
        "medians": medians,
        "ratio": medians["contengine"] / medians["dbos"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="postgresql:// URL of the server")
    parser.add_argument("--dbos-python", default=".venv-dbos/bin/python")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dbos-pool", type=int, default=20, help="DBOS's pool (its default)")
    parser.add_argument("--threads", type=int, default=64, help="contengine's worker threads")
    parser.add_argument("--side", choices=["dbos", "contengine"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side == "dbos":
        print(json.dumps({"rate": dbos_round(args.db, args.size)}))
        return 0
    if args.side == "contengine":
        print(json.dumps({"rate": contengine_round(args.db, args.size)}))
        return 0
    result = compare(args.db, args.dbos_python, args.rounds, args.dbos_pool, args.threads)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
