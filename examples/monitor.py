"""A monitor that never ends, with a log that never grows: ce.continue_as_new.

What this teaches
-----------------
* A loop that runs forever (a health check, an agent, a poller) would add a few
  log entries every round, and a log that grows without end makes every replay
  slower. ``return ce.continue_as_new(...)`` ends the current *generation*: its
  log is dropped and the workflow starts again from the top, under the same run
  id, with the arguments given. Whatever the next generation needs (here: the
  incident count) is passed along as arguments.
* The run keeps what outsiders see: values published with ``ce.publish`` and
  signals waiting in its mailbox carry over from one generation to the next.
  Here an operator stops the monitor with a signal; each generation looks for
  it once, when it begins (``ce.wait("stop", timeout=0)``).
* Each round is a step (the health check, its result logged) and a durable
  ``ce.sleep``. With ``ce.testing.VirtualClock``, ``run_until_idle`` jumps
  straight to each timer, so hours of monitoring take milliseconds.

Run it::

    python examples/monitor.py

What to watch for in the output
-------------------------------
* One line per check, ten virtual minutes apart; the generation goes up every
  five checks, and one check (at 01:10) finds the service down.
* The log length printed after each check climbs to 21 entries (the look for a
  stop signal, then five rounds of four) and falls back to 5 when the next
  generation starts: it never holds more than one generation, however long the
  monitor runs (the four generations wrote 64 entries in all).
* The stop signal is sent during generation 2, while the run sleeps. It waits in
  the mailbox and is taken when generation 3 begins, which then ends the run.
* The published status follows the run across generations; the result counts
  every check and the incident, and the whole thing takes a few milliseconds.
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

START = datetime.datetime(2026, 3, 2, 0, 0, tzinfo=datetime.UTC)
ROUNDS = 5  # checks per generation
EVERY = datetime.timedelta(minutes=10)
STOP_AFTER = 12  # the operator asks the monitor to stop after this many checks
RUN_ID = "monitor-api"


@ce.step
def check_health(service: str, when: datetime.datetime) -> dict[str, Any]:
    """Ask the service how it is (here: a made-up answer that depends on the time)."""
    latency = 80 + (when.minute * 7) % 60
    up = not (when.hour == 1 and when.minute == 10)
    return {"up": up, "latency_ms": latency if up else None}


@ce.workflow(name="monitor.watch")
def watch(
    service: str, generation: int = 0, checks: int = 0, incidents: int = 0
) -> Generator[Any, Any, Any]:
    """Check the service every ten minutes; start a new generation every ROUNDS checks.

    Returns a summary dict once stopped (typed Any: the other return, which goes on as
    a new generation, is a ce.continue_as_new request).
    """
    try:
        operator = yield ce.wait("stop", timeout=0)  # a stop request, if one is waiting
    except ce.Timeout:
        pass
    else:
        return {"generations": generation, "checks": checks, "incidents": incidents, **operator}
    for _ in range(ROUNDS):
        when = yield ce.now()
        health = yield check_health(service, when)
        checks += 1
        incidents += not health["up"]
        yield ce.publish(
            "status", {"generation": generation, "checks": checks, "incidents": incidents}
        )
        yield ce.sleep(EVERY)
    # The log of this generation is dropped; the run goes on from the top.
    return ce.continue_as_new(service, generation + 1, checks, incidents)


def main() -> None:
    """Drive the monitor one check at a time, watching its log length."""
    clock = VirtualClock(START)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        engine = ce.Engine(os.path.join(tmp, "monitor.db"), clock=clock)
        run = engine.start(watch, "api", id=RUN_ID)
        engine.run_until_idle(until=clock.now())  # the first check, then the first sleep
        longest = 0
        while run.status != "completed":
            log = engine.history(RUN_ID)
            longest = max(longest, len(log))
            status = engine.published(RUN_ID, "status")
            health = [e.value for e in log if e.kind == "step"][-1]  # the latest check
            reading = f"up, {health['latency_ms']:3} ms" if health["up"] else "DOWN"
            print(
                f"  {clock.datetime:%H:%M}  generation {status['generation']}  "
                f"check {status['checks']:2}: {reading:<10}  log: {len(log):2} entries"
            )
            if status["checks"] == STOP_AFTER:
                engine.signal(RUN_ID, "stop", {"stopped_by": "ops"})
                print("         the operator sends 'stop'; the run sleeps, the signal waits")
            # Jumps to the next timer (ten minutes on) and runs the next check.
            engine.run_until_idle(until=clock.now() + EVERY.total_seconds())
        result = run.result()
        last = result["generations"]
        print(f"  {clock.datetime:%H:%M}  generation {last} begins, takes the signal and stops")
        print(f"\nresult: {result}")
        print(f"published status: {engine.published(RUN_ID, 'status')}")
        print(f"longest log: {longest} entries (one generation: {ROUNDS * 4 + 1})")
        written = result["checks"] * 4 + last + 1  # four per check, one look per generation
        print(f"the {last + 1} generations wrote {written} entries in all")
        engine.close()
    print(f"virtual time passed: {clock.datetime - START}")
    print(f"real time taken: {time.perf_counter() - began:.3f} s")


if __name__ == "__main__":
    main()
