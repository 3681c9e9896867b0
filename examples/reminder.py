"""Durable timers: a reminder every three days, across a restart, in no time at all.

What this teaches
-----------------
* ``yield ce.sleep(timedelta(days=3))`` is a durable timer. The engine writes the
  absolute wake time to the log and sets the run aside as ``"sleeping"``; no thread
  and no process waits for it. Whoever drives the engine after the wake time
  (this process, or another one started next week) carries the run on.
* The wake time is fixed when the sleep is first logged. A process that stops and
  starts again does not restart the countdown: the run wakes at the original time.
* ``yield ce.now()`` reads the time through the engine, so a replay sees the time
  the run first saw; reading ``datetime.now()`` in a workflow would not replay.
* ``yield ce.publish(key, value)`` lets the outside world follow a run:
  ``engine.published(run_id)`` returns the latest value under each key, even while
  the run sleeps.
* ``ce.testing.VirtualClock`` makes all of this testable: time moves only when the
  engine jumps it to the next timer, so nine days pass in milliseconds.

Run it::

    python examples/reminder.py

What to watch for in the output
-------------------------------
* Each ``sending reminder`` line is three virtual days after the one before, and
  each reminder is sent once, although the engine was replaced halfway.
* Halfway, the run is ``sleeping``; its published progress says two of three
  reminders were sent, and the log shows the wake time of the sleep in flight.
* After the restart, the last reminder goes out on the day first planned (the
  countdown did not start over), and the real time taken is a few milliseconds.
"""

from __future__ import annotations

import datetime
import os
import tempfile
import time
from collections.abc import Generator
from typing import Any

import contengine as ce
from contengine.testing import VirtualClock

START = datetime.datetime(2026, 3, 2, 9, 0, tzinfo=datetime.UTC)


@ce.step
def send_reminder(user: str, number: int, when: datetime.datetime) -> str:
    """Send one reminder (here: print it); returns a receipt."""
    print(f"  sending reminder {number} to {user} on {when:%a %d %b %Y %H:%M} UTC")
    return f"reminder-{number}"


@ce.workflow(name="reminders")
def reminders(user: str, every_days: int, times: int) -> Generator[Any, Any, list[str]]:
    """Remind the user `times` times, `every_days` days apart, publishing progress."""
    receipts: list[str] = []
    yield ce.publish("progress", {"sent": 0, "of": times})
    for number in range(1, times + 1):
        # The run sleeps in the database, not in memory: nothing waits for it.
        yield ce.sleep(datetime.timedelta(days=every_days))
        when = yield ce.now()
        receipts.append((yield send_reminder(user, number, when)))
        yield ce.publish("progress", {"sent": number, "of": times, "last": when.isoformat()})
    return receipts


def show_log(engine: ce.Engine, run_id: str) -> None:
    """Print the run's log, with the wake time of a sleep still in flight."""
    for entry in engine.history(run_id):
        state = entry.status
        if entry.kind == "sleep" and entry.due_at is not None:
            wake = datetime.datetime.fromtimestamp(entry.due_at, datetime.UTC)
            state += f", wakes {wake:%a %d %b %Y %H:%M} UTC"
        print(f"    {entry.position:2}  {entry.describe()} [{state}]")


def main() -> None:
    """Start the reminders, stop halfway, restart, and let the rest of the timers fire."""
    clock = VirtualClock(START)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "reminders.db")

        print("First process:")
        engine = ce.Engine(db, clock=clock)
        engine.start(reminders, "ada", 3, 3, id="remind-ada")
        # Drive until a week has passed: two timers fire, the third is in flight.
        engine.run_until_idle(until=START + datetime.timedelta(days=7))
        run = engine.get_run("remind-ada")
        print(f"  a week later: run is {run.status}")
        print(f"  published: {engine.published('remind-ada', 'progress')}")
        show_log(engine, "remind-ada")
        engine.close()

        print("\nThe process stops; one more day passes; a new process opens the file:")
        clock.advance(datetime.timedelta(days=1))
        engine = ce.Engine(db, clock=clock)
        report = engine.run_until_idle()
        run = engine.get_run("remind-ada")
        print(f"  run is {run.status}: {run.result()}")
        print(f"  published: {engine.published('remind-ada', 'progress')}")
        print(f"  finished runs: {report.finished}")
        engine.close()

    elapsed = clock.datetime - START
    print(f"\nvirtual time passed: {elapsed.days} days")
    print(f"real time taken: {time.perf_counter() - began:.3f} s")


if __name__ == "__main__":
    main()
