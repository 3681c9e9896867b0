"""ce.send: a workflow signals another run, durably and exactly once (also across a
SIGKILL right after the send), on both stores; unknown and finished targets raise at the
yield and are recorded; retry will not send twice; bad input is refused clearly."""

from __future__ import annotations

import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from helpers import kill_then_finish
from stores import current

import contengine as ce
from contengine.testing import VirtualClock

pytestmark = pytest.mark.both_stores

WAIT = 120.0  # a bound against hanging, never reached when things work
LEDGER: list[str] = []


@ce.step(name="send_test.note")
def note(what: str) -> str:
    """Records that it ran."""
    LEDGER.append(what)
    return what


@ce.workflow(name="send_test.receiver")
def receiver(n: int) -> Generator[Any, Any, list[Any]]:
    """Takes n 'go' signals."""
    got = []
    for _ in range(n):
        got.append((yield ce.wait("go")))
    return got


@ce.workflow(name="send_test.sender")
def sender(target: str, payload: Any) -> Generator[Any, Any, str]:
    """Sends once, then tells what a send to an unknown run raised."""
    yield ce.send(target, "go", payload)
    try:
        yield ce.send("send-test-nobody", "go")
    except ce.RunNotFound as exc:
        return f"unknown: {exc}"
    return "sent to nobody?"


@ce.workflow(name="send_test.pair")
def pair(x: int) -> Generator[Any, Any, list[Any]]:
    """Starts a child that waits, signals it, and takes its result: self-contained, so
    ce.testing.check can crash it at every boundary."""
    child = yield ce.start_child(receiver, 1)
    yield note(f"before send {x}")
    yield ce.send(child.run_id, "go", x * 10)
    yield note(f"after send {x}")
    return list((yield child))


def test_a_send_is_delivered_and_an_unknown_target_raises_at_the_yield(tmp_path: Path) -> None:
    with ce.Engine(tmp_path / "s.db", clock=VirtualClock()) as engine:
        waiting = engine.start(receiver, 1, id="rx")
        engine.run_until_idle()
        said = engine.run(sender, "rx", {"ok": True}, id="tx")
        assert said.startswith("unknown: ") and "send-test-nobody" in said
        engine.run_until_idle()
        assert waiting.result(timeout=0) == [{"ok": True}]
        kinds = [(e.kind, e.name, e.status) for e in engine.history("tx")]
        assert kinds == [("send", "go", "completed"), ("send", "go", "failed")]
        # A finished target: ContengineError at the yield, recorded.
        with pytest.raises(ce.ContengineError, match=r"run 'rx' is completed: it will never"):
            engine.run(sender, "rx", 1, id="tx-late")
        assert engine.history("tx-late")[0].status == "failed"


def test_a_replay_takes_the_recorded_branch_and_sends_nothing_again(tmp_path: Path) -> None:
    """The failed send is recorded: a run rebuilt once the target exists still takes the
    except branch; the delivered send is not delivered again."""
    path, clock = tmp_path / "r.db", VirtualClock()

    @ce.workflow(name="send_test.then_waits")
    def then_waits() -> Generator[Any, Any, Any]:
        try:
            yield ce.send("send-test-later", "go", 1)
            branch = "sent"
        except ce.RunNotFound:
            branch = "not found"
        yield ce.send("send-test-rx2", "go", branch)
        yield ce.wait("done")
        return branch

    with ce.Engine(path, clock=clock) as engine:
        engine.start(receiver, 2, id="send-test-rx2")
        engine.start(then_waits, id="tw")
        engine.run_until_idle()
    with ce.Engine(path, clock=clock) as engine:  # rebuilt from the log
        engine.start(receiver, 1, id="send-test-later")
        engine.signal("tw", "done")
        engine.run_until_idle()
        assert engine.get_run("tw").result(timeout=0) == "not found"
        assert [m.name for m in engine.store.mailbox("send-test-later")] == []
        # One message, taken by the receiver's first wait; none left over.
        assert engine.get_run("send-test-rx2").status == "waiting"
        assert engine.store.mailbox("send-test-rx2") == []


def test_check_crashes_a_send_at_every_boundary() -> None:
    """ce.testing.check crashes the run before, after and between each commit: the child
    gets the payload once and the run ends the same every time."""
    LEDGER.clear()
    report = ce.testing.check(pair, 4)
    assert report.result == [40]
    assert report.missed == 0 and report.boundaries >= 6
    assert any(": send go('check/0', 40)" in line for line in report.log), report.log


def test_retry_does_not_discard_a_delivered_send(tmp_path: Path) -> None:
    @ce.step(name="send_test.breaks", retries=0)
    def breaks() -> None:
        raise RuntimeError("broken after the send")

    @ce.workflow(name="send_test.send_then_break")
    def send_then_break() -> Generator[Any, Any, None]:
        yield ce.send("send-test-rx3", "go", 1)
        yield breaks()

    with ce.Engine(tmp_path / "t.db", clock=VirtualClock()) as engine:
        engine.start(receiver, 2, id="send-test-rx3")
        run = engine.start(send_then_break, id="stb")
        engine.run_until_idle()
        assert run.status == "failed"
        with pytest.raises(ce.ContengineError, match=r"a send of signal 'go' that was deliv"):
            engine.retry("stb", at=0)
        assert run.status == "failed"
        engine.retry("stb")  # at the failed step: the send is kept
        engine.run_until_idle()
        assert run.status == "failed"
        assert len(engine.history("send-test-rx3")) == 2  # one taken, one waiting


def test_bad_input_is_refused_at_the_call_or_the_yield(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="a run id must be a non-empty string"):
        ce.send("", "go")
    with pytest.raises(ValueError, match="a signal name must be a non-empty string"):
        ce.send("x", "")
    with pytest.raises(ValueError, match="control character"):
        ce.send("a\nb", "go")

    @ce.workflow(name="send_test.unserializable")
    def unserializable() -> Generator[Any, Any, str]:
        try:
            yield ce.send("send-test-rx4", "go", (_ for _ in ()))
        except ce.SerializationError as exc:
            return f"refused: {exc}"
        return "sent?"

    with ce.Engine(tmp_path / "b.db") as engine:
        engine.start(receiver, 1, id="send-test-rx4")
        assert engine.run(unserializable).startswith("refused: ")
        assert engine.store.mailbox("send-test-rx4") == []


SENDER = """
import os, sys, time
import contengine as ce

@ce.step(name="send_crash.hang")
def hang():
    if os.environ.get("HANG") == "1":
        print("HANG", flush=True)
        time.sleep(600)
    return "ok"

@ce.workflow(name="send_crash.rx")
def rx():
    return (yield ce.wait("go"))

@ce.workflow(name="send_crash.tx")
def tx():
    yield ce.send("rx", "go", "once")
    return (yield hang())

if __name__ == "__main__":
    engine = ce.Engine(sys.argv[1], lease=1.0)  # a dead holder is found soon on any store
    if os.environ.get("HANG") == "1":
        engine.start(rx, id="rx")
        engine.start(tx, id="tx")
    print("DONE", engine.get_run("tx").result(), engine.get_run("rx").result(), flush=True)
"""


def test_a_sigkill_after_the_send_does_not_send_it_again(tmp_path: Path) -> None:
    """The process is killed in the step after the send (its entry and message were
    committed before the step started); another process finishes both runs: the
    target's mailbox got the message once."""
    script = tmp_path / "send_crash.py"
    script.write_text(SENDER)
    target = current().target(tmp_path / "crash.db")
    assert kill_then_finish([sys.executable, str(script), target]) == "DONE ok once"
    with ce.Engine(target) as engine:
        assert [e.kind for e in engine.history("tx")] == ["send", "step"]
        # The receiver took one message with its one wait; a second would still be here.
        assert [(e.kind, e.status) for e in engine.history("rx")] == [("wait", "completed")]
        assert engine.store.mailbox("rx") == []
