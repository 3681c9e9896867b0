"""One run of trivial steps at durability normal, for instruction counts per step.

    python benchmarks/step_instructions.py STEPS

Under callgrind, run it with two step counts and divide the difference by the
difference in steps (start-up, imports and opening the file cancel out):

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python benchmarks/step_instructions.py 200
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python benchmarks/step_instructions.py 4200

An instruction count does not move with the host's load, as wall-clock time does;
it leaves out what the kernel does (the WAL's write()), which the engine and the
floor pay alike. `floor` instead of a step count counts the raw SQLite floor's
commits the same way: `python benchmarks/step_instructions.py floor 4200`.

The engine's own threads (the lease's heartbeat, the cancel watch) run for as long as
the process does, which under callgrind varies from run to run: whole-process counts
of the same tree differ by about 1,000 instructions a step. The steps run in the main
thread; counted alone (`--separate-threads=yes`, the first thread's file `<out>-01`,
its `summary:` line) the same tree repeats within about 50:

    valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file=/tmp/cg.200 \\
        python benchmarks/step_instructions.py 200
    grep summary: /tmp/cg.200-01
"""

from __future__ import annotations

import os
import sys
import tempfile

from contengine.tools import bench
from contengine.tools.bench_common import floor_round


def main() -> None:
    """Run the engine (or the floor) for the given number of steps on a fresh file."""
    args = sys.argv[1:]
    floor = bool(args) and args[0] == "floor"
    steps = int(args[-1])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "steps.db")
        if floor:
            floor_round(path, "normal", steps)
        else:
            bench.engine_round(path, "normal", steps)


if __name__ == "__main__":
    main()
