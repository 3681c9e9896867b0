"""Each example runs as a user would run it, and shows what its docstring promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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
        ("charge", "completed", "1"),
        ("ship", "failed", "3"),
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
