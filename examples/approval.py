"""Human approval: wait for a person's answer, and escalate when none comes in time.

What this teaches
-----------------
* ``decision = yield ce.wait("decision", timeout=...)`` parks the run in the
  database as ``"waiting"``. No thread and no process waits for the answer:
  whoever has it calls ``engine.signal(run_id, "decision", payload)`` (a web
  handler, a chat bot, another process) and the payload is what the ``yield``
  returns.
* When the timeout passes first, ``ce.Timeout`` is raised at the ``yield``, so an
  ordinary ``try/except ce.Timeout`` escalates -- here: ask the manager -- and
  waits again. The timeout is written to the log like any outcome: a replay
  takes the same branch even if the first approver answers after the deadline.
* Signals are durable too. One sent while no process runs the workflow is kept
  in the run's mailbox, and each one is delivered exactly once: taking it from
  the mailbox and logging it happen in one transaction.
* A finished run refuses signals (``ce.ContengineError``): an answer that comes
  too late is not silently lost.
* ``ce.testing.VirtualClock`` lets three days of office life pass in milliseconds.

Run it::

    python examples/approval.py

What to watch for in the output
-------------------------------
* doc-1: ana answers three hours after being asked; nobody is escalated to.
* doc-2: ben stays silent. Two days after he was asked -- in a second process,
  the first one having stopped -- the wait times out, cleo is asked instead,
  and her answer, sent by a third process that only records it, decides.
  Ben's late answer is refused: the run is finished.
* In the logs, doc-2's first wait is ``failed`` with ``Timeout`` after exactly two
  days, followed by the escalation and a second wait that got cleo's decision.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from collections.abc import Generator
from typing import Any

import contengine as ce
from contengine.testing import VirtualClock

START = datetime.datetime(2026, 3, 2, 9, 0, tzinfo=datetime.UTC)  # a Monday
ANSWER_WITHIN = datetime.timedelta(days=2)


def stamp(when: float | datetime.datetime) -> str:
    """A short readable time such as `Mon 09:00`."""
    if not isinstance(when, datetime.datetime):
        when = datetime.datetime.fromtimestamp(when, datetime.UTC)
    return f"{when:%a %H:%M}"


@ce.step
def ask(doc: str, person: str) -> None:
    """Ask someone to approve a document (here: print it)."""
    print(f"  -> asking {person} to approve {doc!r}")


@ce.step
def escalate(doc: str, silent: str, manager: str) -> None:
    """Tell the manager that the first approver did not answer in time."""
    print(f"  -> {silent} did not answer about {doc!r}: asking {manager} instead")


@ce.step
def announce(doc: str, decision: dict[str, Any]) -> str:
    """Tell the author what was decided; returns the verdict."""
    verdict = "approved" if decision["approved"] else "rejected"
    print(f"  -> {doc!r} was {verdict} by {decision['by']}")
    return verdict


@ce.workflow(name="approval")
def approval(doc: str, approver: str, manager: str) -> Generator[Any, Any, str]:
    """Ask the approver; after ANSWER_WITHIN without an answer, ask the manager."""
    yield ask(doc, approver)
    try:
        decision = yield ce.wait("decision", timeout=ANSWER_WITHIN)
    except ce.Timeout:
        yield escalate(doc, approver, manager)
        decision = yield ce.wait("decision")  # no timeout: someone has to decide
    verdict = yield announce(doc, decision)
    return f"{verdict} by {decision['by']}"


def show(engine: ce.Engine, run_id: str) -> None:
    """Print the run's status and log, with when each wait ended and how."""
    run = engine.get_run(run_id)
    print(f"  {run_id} is {run.status}")
    for e in engine.history(run_id):
        line = f"    {e.position}  {e.describe()} [{e.status}]"
        if e.kind == "wait" and e.finished_at is not None:
            got = f"{type(e.error).__name__}: {e.error}" if e.error else repr(e.value)
            line += f" {stamp(e.started_at)} -> {stamp(e.finished_at)}: {got}"
        print(line)


def main() -> None:
    """Two documents: one answered in time, one escalated across a restart."""
    clock = VirtualClock(START)
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "approvals.db")

        print(f"{stamp(clock.datetime)}, first process: two documents need approval")
        engine = ce.Engine(db, clock=clock)
        engine.start(approval, "Q3 budget", "ana", "cleo", id="doc-1")
        engine.start(approval, "office move", "ben", "cleo", id="doc-2")
        engine.run_until_idle(until=START)  # both ask, then wait
        print(f"  waiting: {[run.id for run in engine.runs(status='waiting')]}")

        clock.advance(datetime.timedelta(hours=3))
        print(f"\n{stamp(clock.datetime)}: ana answers")
        engine.signal("doc-1", "decision", {"approved": True, "by": "ana"})
        engine.run_until_idle(until=clock.datetime)
        print(f"  doc-1: {engine.get_run('doc-1').result()}")
        engine.close()

        print("\nThe process stops. Ben says nothing. A new process drives the runs:")
        engine = ce.Engine(db, clock=clock)
        # The clock jumps to doc-2's deadline: the wait times out and cleo is asked.
        engine.run_until_idle(until=START + datetime.timedelta(days=3))
        print(f"  {stamp(clock.datetime)}: doc-2 is {engine.get_run('doc-2').status}")

        clock.advance(datetime.timedelta(hours=5))
        print(f"\n{stamp(clock.datetime)}: cleo answers in the web app, another process")
        with ce.Engine(db, clock=clock) as web:  # it only records the signal
            web.signal("doc-2", "decision", {"approved": False, "by": "cleo"})
        print(f"  doc-2 is {engine.get_run('doc-2').status}; its answer is in the mailbox")
        engine.run_until_idle()
        print(f"  doc-2: {engine.get_run('doc-2').result()}")

        print("\nBen finally answers:")
        try:
            engine.signal("doc-2", "decision", {"approved": True, "by": "ben"})
        except ce.ContengineError as exc:
            print(f"  refused: {exc}")

        print("\nThe logs:")
        show(engine, "doc-1")
        show(engine, "doc-2")
        engine.close()


if __name__ == "__main__":
    main()
