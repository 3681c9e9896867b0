"""Replay in one thread, for instruction counts: the bench's crashed run replayed through
StreamedLog and Driver (no engine, so no threads polling: the count does not move with
the load).

    python benchmarks/replay_instructions.py BASE ROUNDS

BASE is a file holding the crashed run (made there first if missing). Under callgrind,
run it with ROUNDS 5 and 0 and divide the difference by 5:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python benchmarks/replay_instructions.py /tmp/r.db 5
"""

from __future__ import annotations

import os
import sys
import time

from contengine.core.driver import Driver, Pending
from contengine.core.serde import Serde
from contengine.drive.log import StreamedLog
from contengine.store.opening import open_store
from contengine.tools import bench

STEPS = 10_000


def main() -> None:
    base, rounds = sys.argv[1], int(sys.argv[2])
    if not os.path.exists(base):
        bench.build_crashed(base, STEPS)
    store = open_store(base, "normal")
    serde = Serde()

    def once() -> float:
        log = StreamedLog(store, bench._RUN_ID, serde)
        driver = Driver(bench.crashing.fn(STEPS), log, decode=log.decode)
        start = time.perf_counter()
        pending = driver.start()
        elapsed = time.perf_counter() - start
        if not (isinstance(pending, Pending) and pending.position == STEPS):
            raise RuntimeError(f"the replay stopped at {pending}")
        return elapsed

    once()  # warm: imports, the first chunk's statement
    times = sorted(once() for _ in range(rounds))
    if times:
        median = times[len(times) // 2]
        print(f"ms per replay: min {times[0] * 1000:.2f}, median {median * 1000:.2f}")


if __name__ == "__main__":
    main()
