"""Versioning with ce.patched: deploy new workflow code while old runs are still asleep.

What this teaches
-----------------
* A run's log was written by the code of its day. Replaying it with code that yields
  something else is nondeterminism (guarantee 3). So a change that adds a step is
  guarded: ``if (yield ce.patched("fraud-check")):``.
* A run that reaches the patch live (a new run) logs a marker and gets True: it
  takes the new step. A run whose log already goes past that point (an old run,
  resumed under the new code) gets False, logs nothing, and keeps its old path.
* Retiring the patch: once no run started before the patch is still in flight,
  remove the ``if`` and keep the new code (version 3). Runs that logged the marker
  replay fine (the marker is skipped). A run from before the patch would now take
  the new path on replay: it is stopped as nondeterministic, untouched, which is
  why the patch waits until such runs are gone.
* The three versions share one workflow name, as one would after three deploys.
  Here they live in one file: version 1 is registered with ``@ce.workflow``, later
  ones are made with ``ce.Workflow(fn, name)`` and handed to the Engine, whose
  definitions win over the registry.

Run it::

    python examples/versioning.py

What to watch for in the output
-------------------------------
* order-1 is charged under version 1 and sleeps for a day; the process stops.
* Version 2 is deployed: order-1 wakes and ships with no fraud check; order-2,
  started under version 2, is checked (its log holds a ``patched`` marker).
* Version 3 has no patch: order-3 (started under version 2) resumes under it and
  finishes; a copy of an order still from version 1 is reported stuck.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import tempfile
from collections.abc import Generator
from typing import Any

import contengine as ce
from contengine.testing import VirtualClock

NAME = "versioning.fulfil"
START = datetime.datetime(2026, 5, 4, 9, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


@ce.step
def charge(order_id: str) -> str:
    """Take the payment; returns a receipt."""
    print(f"    charging {order_id}")
    return f"receipt-{order_id}"


@ce.step
def fraud_check(order_id: str) -> str:
    """The check added in version 2."""
    print(f"    fraud check on {order_id}")
    return "clean"


@ce.step
def ship(order_id: str) -> str:
    """Hand the parcel to the courier; returns a tracking number."""
    print(f"    shipping {order_id}")
    return f"parcel-{order_id}"


@ce.workflow(name=NAME)
def fulfil_v1(order_id: str) -> Generator[Any, Any, dict[str, str]]:
    """Version 1: charge, wait a day for cancellations, ship."""
    receipt = yield charge(order_id)
    yield ce.sleep(DAY)
    parcel = yield ship(order_id)
    return {"receipt": receipt, "parcel": parcel}


def _fulfil_v2(order_id: str) -> Generator[Any, Any, dict[str, str]]:
    """Version 2: a fraud check after the charge, for runs that reach it with this code."""
    receipt = yield charge(order_id)
    verdict = "unchecked"
    # An old run has its sleep logged here: it is told False and its log replays as before.
    if (yield ce.patched("fraud-check")):
        verdict = yield fraud_check(order_id)
    yield ce.sleep(DAY)
    parcel = yield ship(order_id)
    return {"receipt": receipt, "fraud": verdict, "parcel": parcel}


def _fulfil_v3(order_id: str) -> Generator[Any, Any, dict[str, str]]:
    """Version 3: the patch retired once every version-1 run has finished."""
    receipt = yield charge(order_id)
    verdict = yield fraud_check(order_id)
    yield ce.sleep(DAY)
    parcel = yield ship(order_id)
    return {"receipt": receipt, "fraud": verdict, "parcel": parcel}


fulfil_v2 = ce.Workflow(_fulfil_v2, NAME)
fulfil_v3 = ce.Workflow(_fulfil_v3, NAME)


def show(engine: ce.Engine, run_id: str) -> None:
    """Print a run's status and log."""
    run = engine.get_run(run_id)
    done = f": {run.result()}" if run.status == "completed" else ""
    print(f"  {run_id} is {run.status}{done}")
    for entry in engine.history(run_id):
        print(f"      {entry.position}  {entry.describe()} [{entry.status}]")


def main() -> None:
    """Three deploys of one workflow over the same database file."""
    clock = VirtualClock(START)
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "orders.db")

        print("Version 1 is deployed:")
        with ce.Engine(db, clock=clock, workflows=[fulfil_v1]) as engine:
            engine.start(fulfil_v1, "order-1", id="order-1")
            engine.run_until_idle(until=START + DAY / 2)  # charged, asleep until tomorrow
            show(engine, "order-1")
        old = os.path.join(tmp, "before-v3.db")
        shutil.copy(db, old)  # for later: a file where a version-1 run is still asleep

        clock.advance(DAY / 2)
        print("\nHalf a day later, version 2 is deployed (adds the fraud check behind a patch):")
        with ce.Engine(db, clock=clock, workflows=[fulfil_v2]) as engine:
            engine.start(fulfil_v2, "order-2", id="order-2")
            engine.run_until_idle(until=START + 2 * DAY)  # order-1 and order-2 wake and ship
            engine.start(fulfil_v2, "order-3", id="order-3")
            engine.run_until_idle(until=START + 2 * DAY)  # charged, checked, asleep
            show(engine, "order-1")
            show(engine, "order-2")
            in_flight = [r.id for r in engine.runs() if r.status != "completed"]
            print(f"  runs still in flight: {in_flight}")

        print("\nVersion 3 is deployed (the patch retired; no version-1 run is left):")
        with ce.Engine(db, clock=clock, workflows=[fulfil_v3]) as engine:
            report = engine.run_until_idle()
            print(f"  finished: {report.finished}, stuck: {list(report.stuck)}")
            show(engine, "order-3")
            engine.start(fulfil_v3, "order-4", id="order-4")
            engine.run_until_idle()
            show(engine, "order-4")

        print("\nHad version 3 been deployed while a version-1 run still slept:")
        with ce.Engine(old, clock=clock, workflows=[fulfil_v3]) as engine:
            logging.getLogger("contengine").setLevel(logging.ERROR)  # printed below instead
            report = engine.run_until_idle()
            for run_id, error in sorted(report.stuck.items()):
                lines = str(error).splitlines()
                print(f"  {run_id} is stuck: {type(error).__name__}")
                print("\n".join(f"    {line.strip()}" for line in lines[1:3]))
            print(f"  order-1 is still {engine.get_run('order-1').status}, its log untouched")


if __name__ == "__main__":
    main()
