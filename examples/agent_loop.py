"""An AI agent loop: every model call and every tool call is a step, so a crash costs one call.

What this teaches
-----------------
* An agent is a loop: ask the model, and while it asks for a tool, run the tool and
  hand the result back. Written as a workflow, each model call and each tool call is
  a ``@ce.step``; its answer is committed to the log before the next call starts.
* After a crash the loop is rebuilt from the log: the conversation is put together
  again from the logged answers, without calling the model or any tool again. Only
  the call that was in flight when the process died runs a second time.
* The loop itself must be deterministic (guarantee 3). The model is not, so it lives
  in a step: its reply is recorded once and replayed, never asked for again. Here a
  fake model follows a fixed script so the output is the same on every run.
* The call that is repeated sees the same ``ce.current_step().idempotency_key``; a
  tool with outside effects (a booking, a payment) passes it on so the repeat is
  harmless.

Run it::

    python examples/agent_loop.py

What to watch for in the output
-------------------------------
* A child process starts the conversation and dies (``os._exit(1)``, as abrupt as a
  power cut) in the middle of the ``check_weather`` tool call.
* The parent process resumes the run from the same file with a new Engine. It
  calls the model and the tools only for what is not yet in the log.
* The ledger (every call that really happened, and in which process) shows each
  call once, except ``check_weather``: started by the child, run again by the parent.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Generator
from typing import Any

import contengine as ce

Message = dict[str, Any]
MAX_TURNS = 10
HERE = os.path.dirname(os.path.abspath(__file__))
# Where calls are recorded (a file shared by both processes), and the tool to die in.
LEDGER: dict[str, str] = {}

# The fake model's script: the tools it asks for, in order, before it answers.
SCRIPT = [
    ("search_flights", {"to": "Lisbon"}),
    ("check_weather", {"city": "Lisbon"}),
    ("book_flight", {"flight": "TP1351"}),
]


def record(kind: str, name: str) -> None:
    """Append one real call to the ledger: process, idempotency key, kind and name."""
    if "path" not in LEDGER:
        return
    key = ce.current_step().idempotency_key
    with open(LEDGER["path"], "a") as ledger:
        ledger.write(f"{LEDGER['process']} {key} {kind} {name}\n")


def fake_model(conversation: list[Message]) -> Message:
    """A deterministic stand-in for an LLM: asks for the next scripted tool, then answers."""
    done = sum(message["role"] == "tool" for message in conversation)
    if done < len(SCRIPT):
        tool, args = SCRIPT[done]
        return {"role": "assistant", "tool": tool, "args": args}
    facts = "; ".join(m["content"] for m in conversation if m["role"] == "tool")
    return {"role": "assistant", "content": f"Booked. {facts}."}


TOOLS = {
    "search_flights": lambda to: f"flight TP1351 to {to} at 09:40",
    "check_weather": lambda city: f"{city}: sunny, 24 C",
    "book_flight": lambda flight: f"seat 14C on {flight}",
}


@ce.step
def call_model(conversation: list[Message]) -> Message:
    """One model call (slow and paid for, in real life): the reply to the conversation."""
    record("model", f"turn {sum(m['role'] == 'assistant' for m in conversation) + 1}")
    reply = fake_model(conversation)
    print(f"  [{LEDGER.get('process', '-')}] model -> {reply.get('tool') or 'answer'}", flush=True)
    return reply


@ce.step
def run_tool(name: str, args: dict[str, Any]) -> str:
    """One tool call; in the doomed process, the process dies in the middle of one."""
    record("tool", name)
    print(f"  [{LEDGER.get('process', '-')}] tool {name}({args})", flush=True)
    if name == LEDGER.get("die_in"):
        print(f"  [{LEDGER['process']}] the process dies inside {name}", flush=True)
        os._exit(1)  # no cleanup, no exception handler: the step stays "running" in the log
    return str(TOOLS[name](**args))


@ce.workflow(name="agent_loop.agent")
def agent(question: str) -> Generator[Any, Any, str]:
    """Ask the model; run each tool it asks for and hand back the result; return its answer."""
    conversation: list[Message] = [{"role": "user", "content": question}]
    for _ in range(MAX_TURNS):
        # On replay this yield returns the logged reply: the model is not asked again.
        reply: Message = yield call_model(conversation)
        conversation.append(reply)
        if "tool" not in reply:
            return str(reply["content"])
        result = yield run_tool(reply["tool"], reply["args"])
        conversation.append({"role": "tool", "name": reply["tool"], "content": result})
    return "gave up: too many turns"


QUESTION = "Book me a flight to Lisbon if the weather is good."

# Run by the child: import this module and start the conversation, dying in a tool.
CHILD = (
    "import sys, agent_loop\n"
    "agent_loop.LEDGER.update(path=sys.argv[2], process='child', die_in='check_weather')\n"
    "import contengine as ce\n"
    "with ce.Engine(sys.argv[1]) as engine:\n"
    "    engine.run(agent_loop.agent, agent_loop.QUESTION, id='trip-1')\n"
    "print('  (not reached: the process died)')\n"
)


def show_ledger(path: str) -> None:
    """Print every call that really ran, and which ones ran more than once."""
    with open(path) as f:
        lines = [line.split() for line in f]
    print("  process  key       kind   name")
    for process, key, kind, *name in lines:
        print(f"  {process:7}  {key:8}  {kind:5}  {' '.join(name)}")
    counts = Counter((key, kind, " ".join(name)) for _, key, kind, *name in lines)
    models = sum(kind == "model" for _, kind, _ in counts)
    tools = sum(kind == "tool" for _, kind, _ in counts)
    print(f"  distinct calls: {models} model, {tools} tool; lines: {len(lines)}")
    repeated = [f"{key} {kind} {name}" for (key, kind, name), n in counts.items() if n > 1]
    print(f"  repeated: {repeated}")


def main() -> None:
    """Start the agent in a child that dies mid-conversation, then resume it here."""
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "agent.db")
        ledger = os.path.join(tmp, "ledger.txt")

        print("A child process starts the conversation:")
        child = subprocess.run(
            [sys.executable, "-c", CHILD, db, ledger],
            cwd=HERE,  # so that `import agent_loop` finds this file
            capture_output=True,
            text=True,
            timeout=60,
        )
        print(child.stdout.rstrip())
        print(f"  (the child exited with code {child.returncode})")

        print("\nThis process resumes the run from the file:")
        LEDGER.update(path=ledger, process="parent")
        with ce.Engine(db) as engine:
            answer = engine.run(agent, QUESTION, id="trip-1")
            print(f"  answer: {answer}")
            print("  the log:")
            for entry in engine.history("trip-1"):
                what = entry.describe()
                what = what if len(what) <= 60 else what[:56] + "...)"
                print(f"    {entry.position}  {what} [{entry.status}, crashes={entry.crashes}]")

        print("\nThe ledger of calls that really happened:")
        show_ledger(ledger)


if __name__ == "__main__":
    main()
