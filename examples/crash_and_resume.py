"""Crash and resume: a process dies in the middle of a workflow, and another one finishes it.

What this teaches
-----------------
* Each completed step's result is committed to the log (a SQLite file) before the next
  step starts. A crash loses only the step that was in flight.
* A new Engine on the same file resumes the run: it calls the workflow again and feeds it
  the logged results, so a completed step is replayed from the log, not run again.
* The step that was in flight when the process died is found still "running" in the log;
  it is run again (at least once), and its entry counts one crash.

Run it::

    python examples/crash_and_resume.py

What to watch for in the output
-------------------------------
* The child process runs step 1, starts step 2 and dies there with ``os._exit(1)``: no
  exception handler, no cleanup, as abrupt as a power cut.
* The parent opens the same file and resumes: step 1 does not run again, step 2 runs a
  second time, step 3 runs once.
* The ledger lists every step execution that really happened, and in which process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Generator
from typing import Any

import contengine as ce

# Where executions are recorded (a file shared by both processes), and the step to die in.
LEDGER: dict[str, str] = {}


def record(step: str) -> None:
    """Append one real execution to the ledger, and die here if this process is doomed."""
    if "path" not in LEDGER:
        return
    with open(LEDGER["path"], "a") as ledger:
        ledger.write(f"{LEDGER['process']} {step}\n")
    print(f"  [{LEDGER['process']}] running {step}", flush=True)
    if step == LEDGER.get("die_in"):
        print(f"  [{LEDGER['process']}] the process dies inside {step}", flush=True)
        os._exit(1)  # the step stays "running" in the log: that is how a crash is seen


@ce.step
def fetch_order(order_id: str) -> dict[str, Any]:
    """Step 1: read the order."""
    record("step 1 fetch_order")
    return {"id": order_id, "amount": 4200}


@ce.step
def charge_order(order: dict[str, Any]) -> str:
    """Step 2: charge the customer (in the doomed process, it dies here)."""
    record("step 2 charge")
    return f"charge-{order['id']}"


@ce.step
def send_receipt(order: dict[str, Any], charge_id: str) -> str:
    """Step 3: send the receipt."""
    record("step 3 send_receipt")
    return f"receipt for {charge_id}: {order['amount'] / 100:.2f}"


@ce.workflow(name="crash_and_resume.checkout")
def checkout(order_id: str) -> Generator[Any, Any, str]:
    """Three chained steps; each result is logged before the next step starts."""
    # On resume, this yield returns the logged order: fetch_order does not run again.
    order = yield fetch_order(order_id)
    charge_id = yield charge_order(order)
    return (yield send_receipt(order, charge_id))


# Run by the child: import this file by path and start the run, dying in step 2.
CHILD = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('crash_and_resume', sys.argv[1])\n"
    "example = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(example)\n"
    "example.LEDGER.update(path=sys.argv[3], process='child', die_in='step 2 charge')\n"
    "with example.ce.Engine(sys.argv[2]) as engine:\n"
    "    engine.run(example.checkout, 'order-7', id='order-7')\n"
    "print('  (not reached: the process died)')\n"
)


def main() -> None:
    """Start the run in a child that dies in step 2, then resume it here."""
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "checkout.db")
        ledger = os.path.join(tmp, "ledger.txt")

        print("A child process starts the run:")
        child = subprocess.run(
            [sys.executable, "-c", CHILD, os.path.abspath(__file__), db, ledger],
            capture_output=True,
            text=True,
            timeout=60,
        )
        print(child.stdout.rstrip())
        print(f"  (the child exited with code {child.returncode})")

        print("\nThis process opens the same file and resumes the run:")
        LEDGER.update(path=ledger, process="parent")
        with ce.Engine(db) as engine:
            print(f"  result: {engine.run(checkout, 'order-7', id='order-7')!r}")
            print("  the log:")
            for e in engine.history("order-7"):
                print(f"    {e.position}  {e.name} [{e.status}, crashes={e.crashes}]")

        print("\nThe ledger of step executions that really happened:")
        with open(ledger) as f:
            for line in f:
                process, step = line.rstrip().split(" ", 1)
                print(f"  {process:6}  {step}")


if __name__ == "__main__":
    main()
