"""Replay against its floor, in one process: the engine timed from the workflow body's
first line (replay itself), the floor of contengine/tools/bench_replay.py, alternating.

    python benchmarks/replay_floor.py [STEPS] [ROUNDS] [DIR]

To compare two versions, run it under each in turn (PYTHONPATH=<other tree>, from a
directory without a contengine package in it), several times, alternating.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile

from contengine.tools import bench, bench_replay
from contengine.tools.bench_common import copy_db, remove_db


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 9
    with tempfile.TemporaryDirectory(dir=sys.argv[3] if len(sys.argv) > 3 else None) as tmp:
        base = os.path.join(tmp, "crashed.db")
        bench.build_crashed(base, n)
        floor, replay, whole = [], [], []
        for _ in range(rounds):
            floor.append(bench_replay.floor_round(base, "bench-crashed", n))
            path = os.path.join(tmp, "r.db")
            copy_db(base, path)
            total, _, replayed = bench.resume_round(base, path, n)
            remove_db(path)
            replay.append(replayed)
            whole.append(total)
    m = statistics.median
    print(
        f"floor {m(floor):,.0f}  engine (body to end) {m(replay):,.0f}  "
        f"whole round {m(whole):,.0f} steps/s  ratio {m(replay) / m(floor):.3f}"
    )


if __name__ == "__main__":
    main()
