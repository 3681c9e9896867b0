"""The empty claim (a poll that finds nothing due) with 0, 10,000 and 100,000 runs asleep.

    python benchmarks/empty_claims.py [--db postgresql://...] [SIZES...]

Runs asleep are copies of one sleeping run (contengine/tools/bench_claims.py). Each size
gets a fresh SQLite file (or PostgreSQL schema, dropped after); the figure is the median
of 5 rounds of the median of 200 claims. Run against an older commit by copying
bench_claims.py (and, for PostgreSQL, clone_run in store/postgres/raw.py) into it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

from contengine.tools.bench import python_speed
from contengine.tools.bench_claims import Target, empty_claim_ms, populate
from contengine.tools.bench_common import remove_db


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("sizes", nargs="*", type=int, default=[0, 10_000, 100_000])
    parser.add_argument("--db", help="a postgresql:// URL (default: SQLite files)")
    args = parser.parse_args()
    print(f"python_speed {python_speed()} M loop iterations/s")
    for n in args.sizes:
        if args.db:
            from contengine.store.postgres.raw import drop_schema, new_schema_name

            target = Target(args.db, new_schema_name())
        else:
            target = Target(os.path.join(tempfile.mkdtemp(), f"asleep-{n}.db"))
        try:
            populate(target, n)
            rounds = [empty_claim_ms(target) for _ in range(5)]
        finally:
            if target.schema is not None:
                drop_schema(target.path, target.schema)
            else:
                remove_db(target.path)
                os.rmdir(os.path.dirname(target.path))
        shown = ", ".join(f"{r:.4f}" for r in rounds)
        print(f"{n:>7,} asleep: empty claim {statistics.median(rounds):.4f} ms ({shown})")


if __name__ == "__main__":
    main()
