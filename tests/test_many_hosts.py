"""Many hosts, simulated: workers on "different machines" sharing one PostgreSQL server.

Each worker is a child process in UTS and network namespaces of its own
(tests/hosts_child.py): it has its own host name, and no network but the server's
Unix socket. The server is this test's own (tests/private_postgres.py), so that it
can be restarted. While 500 runs (steps, durable sleeps, gathers, child runs,
signals) go through, workers are SIGKILLed at random and replaced, the server is
restarted once, and one worker is frozen (SIGSTOP) until its lease has lapsed and
its runs were taken over. The steps write a ledger outside the engine (fsynced
lines `run_id position pid attempt host started_at`): it shows what really ran.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import hosts_child as hc
import psycopg
import pytest
from private_postgres import PrivateServer, private_postgres, unavailable

import contengine as ce
from contengine.store.base import E_COMPLETED, E_RUNNING

__all__ = ["private_postgres"]  # a fixture

pytestmark = pytest.mark.skipif(
    not (hasattr(signal, "SIGKILL") and hasattr(signal, "SIGSTOP")), reason="needs POSIX signals"
)

TESTS = Path(__file__).resolve().parent
WAIT = 120.0  # seconds any one thing may take before the test gives up
RUNS = 500
FIRST = 200  # runs started before the workers; the rest in batches, one per event
THREADS = 4
WORKERS = 3
# Steps one worker may have in flight: each thread drives a run that is inside a
# step, or waits for a gather whose two steps run in the step pool.
IN_FLIGHT = 2 * THREADS
# Short, so that a frozen worker's runs are taken over soon; long enough that a busy
# machine does not make a live worker's lease lapse (its heartbeat renews it every
# quarter lease).
LEASE = 2.0
# What happens, in order, while the runs go through (the victims and the pauses are
# drawn from SEED).
EVENTS = ["kill", "kill", "restart", "kill", "freeze", "kill", "kill"]
SEED = int(os.environ.get("MANY_HOSTS_SEED", "20240917"))


def namespaces_work() -> None:
    """Skip (locally) or fail (CI) unless this process may make UTS and network namespaces."""
    try:
        done = subprocess.run(
            ["unshare", "--uts", "--net", "--", "true"], capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        unavailable(f"unshare does not run ({exc})")
        return
    if done.returncode != 0:
        unavailable(f"unshare --uts --net is refused: {done.stderr.decode(errors='replace')}")


class Reader:
    """Reads the server from the test, through a connection of its own that it makes
    again whenever the server dropped it (the restart)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: psycopg.Connection[Any] | None = None

    def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """The rows of one query (autocommit), trying again until the server answers."""
        deadline = time.monotonic() + WAIT
        while True:
            try:
                if self.conn is None or self.conn.closed or self.conn.broken:
                    self.conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
                    self.conn.execute("SET search_path TO contengine")
                return self.conn.execute(query, params).fetchall()  # type: ignore[arg-type]
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        """Close the connection."""
        if self.conn is not None:
            self.conn.close()


class Hosts:
    """Starts workers on hosts of their own, and makes sure none outlives the test."""

    def __init__(self, tmp: Path, server: PrivateServer, reader: Reader) -> None:
        self.tmp, self.server, self.reader = tmp, server, reader
        self.procs: list[subprocess.Popen[bytes]] = []
        self.host: dict[int, str] = {}  # pid -> host name
        self._files: list[IO[bytes]] = []

    def spawn(self) -> subprocess.Popen[bytes]:
        """A worker on a new host (host-1, host-2, ...)."""
        name = f"host-{len(self.procs) + 1}"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH")) if p)
        # The application name tells the test which server sessions are this worker's.
        url = f"{self.server.socket_url()}&application_name={name}"
        # Files, not pipes: a child that writes a lot to a pipe nobody reads would block.
        out = open(self.tmp / f"{name}.out", "wb")  # noqa: SIM115 - closed in close()
        err = open(self.tmp / f"{name}.err", "wb")  # noqa: SIM115 - closed in close()
        self._files += [out, err]
        proc = subprocess.Popen(
            ["unshare", "--uts", "--net", "--", sys.executable, "-c", hc.BOOT,
             name, url, str(THREADS), str(LEASE)],
            stdout=out, stderr=err, env=env,
        )  # fmt: skip
        self.procs.append(proc)
        self.host[proc.pid] = name
        return proc

    def output(self, proc: subprocess.Popen[bytes], stream: str = "err") -> str:
        """What the worker wrote to stdout ("out") or stderr ("err") so far."""
        path = self.tmp / f"{self.host[proc.pid]}.{stream}"
        return path.read_text(errors="replace") if path.exists() else ""

    def report(self) -> str:
        """Every worker's exit status and output, for failure messages."""
        return "\n".join(
            f"--- {self.host[p.pid]} pid {p.pid} (exit {p.poll()})\n"
            f"{self.output(p, 'out')}{self.output(p, 'err')[-4000:]}"
            for p in self.procs
        )

    def held(self, proc: subprocess.Popen[bytes]) -> list[tuple[str, str]]:
        """The runs the worker holds now, with its owner id: (run id, owner)."""
        prefix = f"{self.host[proc.pid]}:{proc.pid}:"
        rows = self.reader.rows("SELECT id, owner FROM runs WHERE starts_with(owner, %s)", prefix)
        return [(str(r[0]), str(r[1])) for r in rows]

    def working(self, proc: subprocess.Popen[bytes]) -> bool:
        """Whether the worker is in its work loop (on record in the workers table)."""
        rows = self.reader.rows("SELECT count(*) FROM workers WHERE host = %s", self.host[proc.pid])
        return bool(rows[0][0])

    def stop(self, proc: subprocess.Popen[bytes]) -> int:
        """SIGTERM the worker once it works, and wait for it to exit; its exit code."""
        wait_for(lambda: self.working(proc), f"{self.host[proc.pid]} to work", self)
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.host[proc.pid]} did not stop on SIGTERM\n{self.report()}")

    def close(self) -> None:
        """Kill whatever still runs (resuming stopped ones), reap it, close the files."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                    os.kill(proc.pid, signal.SIGCONT)
            proc.wait()
        for f in self._files:
            f.close()
        print(self.report())  # shown by pytest only when the test failed


def wait_for(check: Callable[[], bool], what: str, hosts: Hosts, timeout: float = WAIT) -> None:
    """Poll check() until it is true; fail with the workers' output after timeout."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}\n{hosts.report()}")
        time.sleep(0.02)


def process_state(pid: int) -> str:
    """The state letter of a process (R, S, T, Z, ...) from /proc."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def retrying(call: Callable[[], object]) -> None:
    """call(), again while the server is away (it may be restarting)."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            call()
            return
        except ce.DatabaseError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Signaller:
    """Sends each waiting run its signal from this process, in a thread of its own
    (a send may wait for a run's row that a frozen worker holds), once the run waits."""

    def __init__(self, engine: ce.Engine, reader: Reader) -> None:
        self.engine, self.reader = engine, reader
        self.sent: set[str] = set()
        self.while_waiting = 0  # sent to a run that was waiting then
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="signaller", daemon=True)

    def send(self, run_id: str) -> None:
        """Send the run its signal, trying again while the server is away."""
        retrying(lambda: self.engine.signal(run_id, hc.SIGNAL, hc.payload(int(run_id[1:]))))
        self.sent.add(run_id)

    def _loop(self) -> None:
        try:
            while not self.stop.wait(0.02):
                rows = self.reader.rows(
                    "SELECT run_id FROM log WHERE kind = 'wait' AND status = %s", E_RUNNING
                )
                for (run_id,) in rows:
                    if run_id not in self.sent:
                        self.send(run_id)
                        self.while_waiting += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


@pytest.fixture
def reader(private_postgres: PrivateServer) -> Iterator[Reader]:
    """A reader of the private server."""
    r = Reader(private_postgres.url())
    yield r
    r.close()


def test_workers_on_many_hosts_survive_kills_a_server_restart_and_a_frozen_worker(
    private_postgres: PrivateServer, reader: Reader, tmp_path: Path
) -> None:
    """Every run completes once with its result; every step whose completion was
    committed ran once with that attempt; every other execution was interrupted by a
    kill, the freeze or the restart, at most one per step in flight in the process it hit."""
    namespaces_work()
    print(f"seed {SEED} (set MANY_HOSTS_SEED to repeat the choices)")
    rng = random.Random(SEED)
    began = time.monotonic()
    server, ledger = private_postgres, str(tmp_path / "ledger")
    engine = ce.Engine(server.url(), lease=LEASE)
    hosts = Hosts(tmp_path, server, reader)
    signaller = Signaller(engine, reader)
    try:
        for n in range(FIRST):
            retrying(lambda n=n: engine.start(hc.mixed, ledger, n, id=f"m{n}"))
            if n % 8 == 0:  # half the signals arrive before their run waits
                signaller.send(f"m{n}")
        live = [hosts.spawn() for _ in range(WORKERS)]
        signaller.thread.start()
        killed: set[int] = set()
        frozen: int | None = None
        at_restart: set[int] = set()  # workers alive when the server went down
        restarted_at = 0.0
        later = list(range(FIRST, RUNS))
        size = -(-len(later) // len(EVENTS))
        for i, event in enumerate(EVENTS):
            for n in later[i * size : (i + 1) * size]:
                retrying(lambda n=n: engine.start(hc.mixed, ledger, n, id=f"m{n}"))
                if n % 8 == 0:
                    signaller.send(f"m{n}")
            time.sleep(rng.uniform(0.3, 0.6))
            if event == "restart":
                # Every worker connected first, so that the restart cuts them all off.
                for proc in live:
                    wait_for(
                        lambda p=proc: hosts.working(p), f"{hosts.host[proc.pid]} to work", hosts
                    )
                at_restart = {p.pid for p in live}
                server.restart(down_for=rng.uniform(0.2, 0.8))
                restarted_at = time.time()
            elif event == "kill":
                # One holding runs (most often all do), so that the kill interrupts steps.
                victim = rng.choice([p for p in live if hosts.held(p)] or live)
                live.remove(victim)
                victim.kill()
                assert victim.wait(WAIT) == -signal.SIGKILL, hosts.report()
                killed.add(victim.pid)
                live.append(hosts.spawn())
            else:
                frozen = freeze_until_taken_over(hosts, live, rng)
            print(f"{time.monotonic() - began:5.1f} s: {event} done, {completed(reader)} completed")
        assert frozen is not None and restarted_at
        wait_for(lambda: completed(reader) == RUNS, "every run to complete", hosts)
        print(f"{time.monotonic() - began:5.1f} s: every run completed")
        signaller.stop.set()
        signaller.thread.join(WAIT)
        assert signaller.error is None, signaller.error
        for proc in live:
            assert hosts.stop(proc) == 0, hosts.report()

        print(f"{time.monotonic() - began:5.1f} s: workers stopped")
        check_outcomes(engine, signaller)
        print(f"{time.monotonic() - began:5.1f} s: outcomes checked")
        causes = check_ledger(engine, ledger, hosts, killed, frozen, at_restart, restarted_at)
        print(
            f"{len(hosts.procs)} workers on as many hosts, {len(killed)} killed, 1 frozen, "
            f"1 server restart; extra executions: {dict(causes)}; signals: "
            f"{signaller.while_waiting} of {len(signaller.sent)} sent while the run waited"
        )
        # Every event interrupted something (else this test would show nothing)...
        assert causes["kill"] >= 1 and signaller.while_waiting >= 1
        said = "".join(hosts.output(p) for p in hosts.procs if p.pid in at_restart)
        assert "could not claim runs" in said or "write was refused" in said
        # ...and every worker ran its steps under its own host name.
        ran_on = {(int(line[2]), line[4]) for line in hc.read_lines(ledger)}
        assert all(hosts.host[pid] == name for pid, name in ran_on), ran_on
        assert len({name for _, name in ran_on}) > WORKERS
    finally:
        signaller.stop.set()
        hosts.close()
        engine.close()


def completed(reader: Reader) -> int:
    """How many of the test's top-level runs are completed."""
    rows = reader.rows("SELECT count(*) FROM runs WHERE status = 'completed' AND parent_id IS NULL")
    return int(rows[0][0])


def freeze_until_taken_over(
    hosts: Hosts, live: list[subprocess.Popen[bytes]], rng: random.Random
) -> int:
    """SIGSTOP a worker that holds runs, at a moment none of its sessions is inside a
    transaction (one frozen there keeps the rows it locked until it thaws or the
    server ends its session: tests/test_postgres_faults.py), wait until its lease
    lapsed and every run it held went to other workers, then SIGCONT it."""
    victim = rng.choice(live)
    for _ in range(200):
        wait_for(lambda: bool(hosts.held(victim)), "the worker to hold runs", hosts)
        os.kill(victim.pid, signal.SIGSTOP)
        wait_for(lambda: process_state(victim.pid) == "T", "the worker to stop", hosts)
        held = hosts.held(victim)
        if held and not in_transaction(hosts, victim):
            break
        os.kill(victim.pid, signal.SIGCONT)
        time.sleep(0.01)
    else:
        pytest.fail(f"never froze the worker outside a transaction\n{hosts.report()}")
    owner = held[0][1]
    # Frozen, not dead: its runs stay leased to it until its lease runs out; then the
    # other workers take them (they know nothing of its process, on another host).
    wait_for(
        lambda: not hosts.reader.rows("SELECT 1 FROM runs WHERE owner = %s", owner),
        "the frozen worker's runs to be taken over",
        hosts,
    )
    # (Its row may be gone: a claim deletes the rows of workers seen dead.)
    row = hosts.reader.rows("SELECT expires_at FROM workers WHERE id = %s", owner)
    assert not row or row[0][0] <= time.time(), row
    assert process_state(victim.pid) == "T"
    os.kill(victim.pid, signal.SIGCONT)
    return victim.pid


def in_transaction(hosts: Hosts, proc: subprocess.Popen[bytes]) -> bool:
    """Whether a session of the worker is in a transaction or a statement now (a
    statement under way when the process froze ends soon: wait for it to be idle)."""
    query = "SELECT state FROM pg_stat_activity WHERE application_name = %s"
    for _ in range(50):
        states = {str(r[0]) for r in hosts.reader.rows(query, hosts.host[proc.pid])}
        if "active" not in states:
            return bool(states - {"idle"})
        time.sleep(0.01)
    return True


def check_outcomes(engine: ce.Engine, signaller: Signaller) -> None:
    """Every run (and child run) completed with its result; logs as expected; every
    signal taken once."""
    for n in range(RUNS):
        run = engine.get_run(f"m{n}")
        assert (run.status, run.result()) == ("completed", hc.expected(n)), run.id
        log = [(e.kind, e.name, e.status) for e in engine.history(run.id)]
        want = [("step", "mh.add")] + [("sleep", "")] * hc.naps(n)
        if hc.gathers(n):
            want += [("gather", ""), ("step", "mh.mul"), ("step", "mh.add")]
        else:
            want += [("step", "mh.mul")]
        want += [("child", "mh.leaf")] * hc.has_child(n) + [("wait", hc.SIGNAL)] * hc.waits(n)
        want += [("step", "mh.show")]
        assert log == [(kind, name, E_COMPLETED) for kind, name in want], (run.id, log)
        assert engine.store.mailbox(run.id) == [], run.id
    assert signaller.sent == {f"m{n}" for n in range(RUNS) if hc.waits(n)}
    children = [r for r in engine.runs() if r.workflow == "mh.leaf"]
    assert len(children) == sum(map(hc.has_child, range(RUNS)))
    for child in children:
        n = int(child.id[1:].split("/")[0])
        assert engine.store.get_run(child.id).parent_id == f"m{n}" and hc.has_child(n)
        assert (child.status, child.result()) == ("completed", 5 * n), child.id


def check_ledger(
    engine: ce.Engine,
    ledger: str,
    hosts: Hosts,
    killed: set[int],
    frozen: int,
    at_restart: set[int],
    restarted_at: float,
) -> Counter[str]:
    """Every committed step execution is in the ledger once; every other one was cut
    short by a kill, the freeze or the restart (at most IN_FLIGHT per process and event),
    or by its run being taken over, as its worker said. Returns how many executions did
    not count, by cause."""
    executions: dict[tuple[str, int], list[tuple[int, int, float]]] = defaultdict(list)
    for run_id, position, pid, attempt, _host, started in hc.read_lines(ledger):
        executions[(run_id, int(position))].append((int(pid), int(attempt), float(started)))
    said = {p.pid: hosts.output(p) for p in hosts.procs}
    causes: Counter[str] = Counter()
    extra: dict[int, int] = defaultdict(int)  # pid -> executions cut short by an event
    for run in engine.runs():
        for e in engine.history(run.id):
            if e.kind != "step":
                continue
            done = executions.pop((run.id, e.position), [])
            attempts = [a for _, a, _ in done]
            where = f"{run.id} position {e.position}: ledger {done}, log attempts {e.attempts}"
            # The execution whose outcome was committed ran once, and was the last one;
            # no attempt ran twice (two drivers of one attempt would be a double run).
            assert attempts.count(e.attempts) == 1, where
            assert sorted(attempts) == sorted(set(attempts)), where
            assert max(attempts) == e.attempts, where
            # Only an interruption makes the engine try again (no step fails here).
            assert e.crashes == e.attempts - 1, where
            for pid, attempt, started in done:
                if attempt == e.attempts:
                    continue
                if pid in killed:
                    cause = "kill"
                elif pid == frozen:
                    cause = "freeze"
                elif pid in at_restart and started < restarted_at:
                    cause = "restart"  # in flight when the server went away
                elif f"run {run.id!r} was taken over by another worker" in said[pid]:
                    # Its worker's lease lapsed (a very busy machine): another took the
                    # run over, and the worker said so.
                    causes["lease lapsed"] += 1
                    continue
                else:
                    pytest.fail(f"an execution no event explains: {where}")
                causes[cause] += 1
                extra[pid] += 1
    assert not executions, f"the ledger shows executions no log knows: {executions}"
    for pid, count in extra.items():
        events = (pid in killed) + (pid == frozen) + (pid in at_restart)
        assert count <= IN_FLIGHT * events, (pid, count, events)
    return causes
