"""`contengine demo`: a workflow killed with SIGKILL in the middle of a step, then resumed.

A child process runs an order workflow (reserve_stock -> charge_card ->
ship_order -> send_receipt) on an SQLite file and is killed with SIGKILL while
charge_card is running: no except, finally or atexit gets to run. This process
then opens the same file and resumes the run. Every step execution appends a
line to a ledger kept outside the engine (fsynced), so the output shows what
durable execution promises: the step that completed before the kill ran exactly
once, the interrupted step ran again with the same idempotency key, and the run
finished with the right result. The demo checks this itself and exits non-zero
if a guarantee was broken.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, replace
from typing import Any

from ..core.workflow import current_step, step, workflow
from ..engine.engine import Engine

STEPS = ("reserve_stock", "charge_card", "ship_order", "send_receipt")
KILL_IN = "charge_card"
STEP_SECONDS = 0.1  # each step "works" this long
CHILD_TIMEOUT = 30.0  # give up on a child that never reaches KILL_IN
PAUSED = "PAUSED"  # the child's line saying it is inside KILL_IN
_CHILD_CODE = (
    "import sys\nfrom contengine.tools.demo import child_main\nsys.exit(child_main(sys.argv[1:]))\n"
)


@dataclass
class _Settings:
    """What the steps of this process need to know: where the ledger is, who they are."""

    ledger: str = ""
    who: str = "parent"
    pause_in: str | None = None


_settings = _Settings()


# -- the workflow -------------------------------------------------------------


def _work(name: str) -> str:
    """Record this execution in the ledger, then do the step's (pretend) work."""
    ctx = current_step()
    line = f"{name}\t{ctx.attempt}\t{_settings.who}\t{os.getpid()}\t{ctx.idempotency_key}\n"
    with open(_settings.ledger, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    print(f"      {_settings.who}: {name} runs (attempt {ctx.attempt})", flush=True)
    if name == _settings.pause_in:
        # Hold still inside the step, as a slow payment call would, so the parent
        # can kill the process exactly here rather than racing a short sleep.
        print(PAUSED, flush=True)
        time.sleep(CHILD_TIMEOUT)
    time.sleep(STEP_SECONDS)
    return ctx.idempotency_key


@step
def reserve_stock(order_id: str, sku: str, qty: int) -> str:
    """Hold the items in the warehouse; returns a reservation id."""
    _work("reserve_stock")
    return f"rsv-{order_id}-{sku}x{qty}"


@step
def charge_card(order_id: str, cents: int) -> str:
    """Charge the customer; a real payment API would get the idempotency key."""
    key = _work("charge_card")
    return f"ch-{key}-{cents}"


@step
def ship_order(order_id: str, reservation: str) -> str:
    """Hand the reserved items to the carrier; returns a tracking number."""
    _work("ship_order")
    return f"trk-{reservation.removeprefix('rsv-')}"


@step
def send_receipt(order_id: str, charge: str, tracking: str) -> str:
    """Mail the receipt."""
    _work("send_receipt")
    return f"receipt for {order_id}: {charge}, {tracking}"


@workflow(name="demo.order")
def order(order_id: str, sku: str, qty: int, cents: int) -> Generator[Any, Any, dict[str, str]]:
    """Reserve stock, charge the card, ship the order, send a receipt."""
    reservation = yield from reserve_stock(order_id, sku, qty)
    charge = yield from charge_card(order_id, cents)
    tracking = yield from ship_order(order_id, reservation)
    receipt = yield from send_receipt(order_id, charge, tracking)
    return {"charge": charge, "tracking": tracking, "receipt": receipt}


def expected_result(run_id: str, order_id: str, sku: str, qty: int, cents: int) -> dict[str, str]:
    """What order() returns when every step ran as it should."""
    charge = f"ch-{run_id}:1-{cents}"
    tracking = f"trk-{order_id}-{sku}x{qty}"
    return {
        "charge": charge,
        "tracking": tracking,
        "receipt": f"receipt for {order_id}: {charge}, {tracking}",
    }


# -- the child process ----------------------------------------------------------


def child_main(argv: list[str]) -> int:
    """In the child: start the run and drive it until it is killed inside KILL_IN."""
    db, ledger, run_id, order_id = argv
    _configure(_Settings(ledger, "child", KILL_IN))
    engine = Engine(db)
    engine.start(order, order_id, "sku-42", 2, 4999, id=run_id).result()
    return 0  # reached only if the parent never killed us


# -- the parent ---------------------------------------------------------------


@dataclass(frozen=True)
class LedgerLine:
    """One step execution as the step itself recorded it."""

    step: str
    attempt: int
    who: str
    pid: int
    key: str


def read_ledger(path: str) -> list[LedgerLine]:
    """Every step execution recorded in the ledger, in order."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    return [LedgerLine(s, int(a), w, int(p), k) for s, a, w, p, k in rows]


def main(db: str | None) -> int:
    """Run the demo; 0 if every guarantee held, 1 if not."""
    saved = replace(_settings)
    with tempfile.TemporaryDirectory(prefix="contengine-demo-") as tmp:
        _configure(_Settings(os.path.join(tmp, "ledger.txt"), "parent", None))
        try:
            return _demo(db or os.path.join(tmp, "demo.db"), keep=db is not None)
        finally:
            _configure(saved)


def _configure(settings: _Settings) -> None:
    _settings.ledger, _settings.who, _settings.pause_in = (
        settings.ledger,
        settings.who,
        settings.pause_in,
    )


def _demo(db: str, *, keep: bool) -> int:
    with Engine(db) as engine:
        number = 1001 + len(engine.runs())  # a reused --db gets a new order
        order_id, run_id = f"A{number}", f"order-{number}"
        print("contengine demo: durable execution survives a SIGKILL in the middle of a step.")
        print()
        print(f"Workflow {order.name}: {' -> '.join(STEPS)}")
        print(f"Database: {db}")
        print("          the execution log, one row per step, written by the engine")
        print(f"Ledger:   {_settings.ledger}")
        print("          one line per step execution, written by the steps themselves")
        print()
        pid = _run_child_and_kill(db, run_id, order_id)
        if pid is None:
            return 1
        _show_log_after_kill(engine, run_id)
        print(f"[3] This process (pid {os.getpid()}) opens the same file and resumes the run.")
        print("    The workflow is called again and replayed from the log: completed steps")
        print(f"    get their stored results without running; {KILL_IN} was in flight,")
        print("    so it runs again:")
        result = engine.get_run(run_id).result(timeout=CHILD_TIMEOUT)
        print()
        _print_history(engine, run_id)
        ledger = read_ledger(_settings.ledger)
        _print_ledger(ledger, pid)
        print("Result:")
        for name, value in result.items():
            print(f"  {name:<8} {value}")
        print()
        ok = _check(engine, run_id, ledger, pid, result, order_id)
    if keep:
        print(f"The database is kept: contengine show {run_id} --db {db}")
    return 0 if ok else 1


def _run_child_and_kill(db: str, run_id: str, order_id: str) -> int | None:
    """Start the child, wait until it is inside KILL_IN, SIGKILL it; its pid, or None."""
    cmd = [sys.executable, "-c", _CHILD_CODE, db, _settings.ledger, run_id, order_id]
    # The child imports this module by name, from wherever this process found it.
    home = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (home, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(CHILD_TIMEOUT, proc.kill)
    watchdog.start()
    try:
        print(f"[1] A child process (pid {proc.pid}) starts run {run_id} and drives it:")
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == PAUSED:
                break
            print(line, end="")
        else:
            proc.wait()
            err = proc.stderr.read() if proc.stderr else ""
            print(f"The child ended (exit status {proc.returncode}) before {KILL_IN}:\n{err}")
            return None
        proc.kill()  # SIGKILL on POSIX: the process ends at once, nothing of it runs on
        proc.wait()
    finally:
        watchdog.cancel()
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    print(
        f"[2] The child is inside {KILL_IN}: SIGKILL -> pid {proc.pid} "
        f"(exit status {proc.returncode})."
    )
    print("    No except, finally or atexit ran in it. The log on disk now says:")
    return proc.pid


def _show_log_after_kill(engine: Engine, run_id: str) -> None:
    for e in engine.history(run_id):
        why = "(its result is stored)" if e.done else "(but no process is running it)"
        print(f"      {e.position} {e.name:<14} {e.status:<10} {why}")


def _print_history(engine: Engine, run_id: str) -> None:
    print(f'Run log (engine.history("{run_id}")):')
    print(f"  {'pos':<4} {'step':<14} {'status':<10} {'attempts':>8} {'crashes':>8}")
    for e in engine.history(run_id):
        print(f"  {e.position:<4} {e.name:<14} {e.status:<10} {e.attempts:>8} {e.crashes:>8}")
    print()


def _print_ledger(ledger: list[LedgerLine], killed_pid: int) -> None:
    print("Execution ledger (what actually ran, and where):")
    for row in ledger:
        where = f"{row.who} pid {row.pid}"
        mark = "   <- killed here" if row.pid == killed_pid and row.step == KILL_IN else ""
        print(f"  {row.step:<14} attempt {row.attempt}  {where:<16} key {row.key}{mark}")
    print()


def _check(
    engine: Engine,
    run_id: str,
    ledger: list[LedgerLine],
    killed_pid: int,
    result: Any,
    order_id: str,
) -> bool:
    """Print each guarantee with ok/FAIL; True if all held."""
    checks: list[tuple[bool, str]] = []
    for name in STEPS:
        runs = [r for r in ledger if r.step == name]
        if name == KILL_IN:
            where = [(r.who, r.pid) for r in runs]
            twice = where == [("child", killed_pid), ("parent", os.getpid())]
            checks.append((twice, f"{name} ran twice: killed in the child, run again here"))
            same_key = len({r.key for r in runs}) == 1
            checks.append((same_key, f"both {name} executions had one idempotency key"))
        else:
            checks.append((len(runs) == 1, f"{name} ran exactly once"))
    counts = [(e.name, e.status, e.attempts, e.crashes) for e in engine.history(run_id)]
    want = [(s, "completed", 2 if s == KILL_IN else 1, int(s == KILL_IN)) for s in STEPS]
    checks.append((counts == want, f"the log shows {KILL_IN} with attempts=2, crashes=1"))
    expected = expected_result(run_id, order_id, "sku-42", 2, 4999)
    status = engine.get_run(run_id).status
    checks.append((status == "completed" and result == expected, "the run completed correctly"))
    print("Checks:")
    for ok, text in checks:
        print(f"  {'ok' if ok else 'FAIL':<4} {text}")
    print()
    if all(ok for ok, _ in checks):
        print("A completed step is never run again; an interrupted one runs again.")
        print(f"{KILL_IN} built its charge id from ce.current_step().idempotency_key,")
        print("the same on every attempt: a payment API given that key charges the")
        print("card once even though the step ran twice.")
        return True
    print("A guarantee was broken: see the FAIL lines above.")
    return False
