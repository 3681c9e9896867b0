"""Hello, durable execution: three chained steps, each logged and never run twice.

What this teaches
-----------------
* A workflow is a generator. Each ``yield`` hands a step to the engine, which runs
  it, writes its outcome to the execution log (an SQLite file) and only then sends
  the outcome back into the workflow.
* The log is the run's memory. Starting the run again with the same id -- here
  from a brand-new Engine on the same file, as a restarted process would -- runs
  nothing: the engine finds the run complete and returns the logged result.

Run it::

    python examples/hello.py

What to watch for in the output
-------------------------------
* The ``running step ...`` lines appear only during the first run, once per step.
* The printed log has one entry per yield, at positions 0, 1, 2, each "completed"
  after 1 attempt, with the value that was sent back into the workflow.
* The second run prints the same result and no ``running step`` lines at all.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Generator
from typing import Any

import contengine as ce

USERS = {"u-1": "Ada"}


@ce.step
def fetch_name(user_id: str) -> str:
    """Look the user up (a stand-in for a database query or an HTTP call)."""
    print(f"  running step fetch_name({user_id!r})")
    return USERS[user_id]


@ce.step
def greet(name: str) -> str:
    """Build the greeting."""
    print(f"  running step greet({name!r})")
    return f"Hello, {name}"


@ce.step
def shout(text: str) -> str:
    """Make it loud."""
    print(f"  running step shout({text!r})")
    return text.upper() + "!"


@ce.workflow(name="hello")
def hello(user_id: str) -> Generator[Any, Any, str]:
    """Chain three steps; each one's result feeds the next."""
    # Calling a step only builds a request; the engine runs it when it is yielded.
    name = yield fetch_name(user_id)
    greeting = yield greet(name)
    loud: str = yield shout(greeting)
    return loud


def print_log(engine: ce.Engine, run_id: str) -> None:
    """Print the run's log: what the engine wrote for each yield."""
    for entry in engine.history(run_id):
        print(
            f"  {entry.position}  {entry.kind} {entry.name}({entry.text}) -> {entry.value!r}"
            f"  [{entry.status}, attempts={entry.attempts}]"
        )


def main() -> None:
    """Run the workflow, print its log, then ask for the same run again."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "hello.db")

        print("First run (every step executes):")
        with ce.Engine(path) as engine:
            result = engine.run(hello, "u-1", id="hello-u-1")
            print(f"result: {result!r}")
            print("log:")
            print_log(engine, "hello-u-1")

        print()
        print("Second run, same id, new Engine on the same file (nothing executes):")
        with ce.Engine(path) as engine:
            again = engine.run(hello, "u-1", id="hello-u-1")
            print(f"result: {again!r}")

        assert again == result


if __name__ == "__main__":
    main()
