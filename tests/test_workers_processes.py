"""Several worker processes on one file: SIGKILL, SIGSTOP, SIGTERM and queue limits.

Every worker is a child process (tests/worker_child.py) running engine.work() on a
database file in tmp_path; this process starts runs and looks at the file. The steps
write a ledger outside the engine (fsynced lines `run_id position pid attempt ...`),
which shows what really ran, in which process, and when.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import worker_child as wc
from stores import current

import contengine as ce
from contengine.store.liveness import HOST

pytestmark = [
    pytest.mark.both_stores,
    pytest.mark.skipif(
        not (hasattr(signal, "SIGKILL") and hasattr(signal, "SIGSTOP")),
        reason="needs POSIX signals",
    ),
]

TESTS = Path(__file__).resolve().parent
CHILD = "import worker_child; worker_child.main()"
WAIT = 120.0  # a bound against hanging, not a timing check: on PostgreSQL beside busy
# processes, 500 runs through kills (each waiting out a lease) took longer than 30 s

Row = tuple[str, int, int, int]  # run_id, position, pid, attempt


class Workers:
    """Starts worker processes, and makes sure none outlives the test."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self._files: list[IO[bytes]] = []
        self.dbs: dict[int, Path] = {}
        self._working: set[int] = set()  # pids seen in their work loop

    def spawn(
        self, db: Path, threads: int = 4, lease: float = 10.0, grace: float = 10.0
    ) -> subprocess.Popen[bytes]:
        """A child running engine.work(threads, grace) on db with the given lease."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH")) if p)
        n = len(self.procs)
        # Files, not pipes: a child that writes a lot to a pipe nobody reads would block.
        out = open(self.tmp / f"worker{n}.out", "wb")  # noqa: SIM115 - closed in close()
        err = open(self.tmp / f"worker{n}.err", "wb")  # noqa: SIM115 - closed in close()
        self._files += [out, err]
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                CHILD,
                current().target(db),
                str(threads),
                str(lease),
                str(grace),
            ],
            stdout=out,
            stderr=err,
            env=env,
        )
        self.procs.append(proc)
        self.dbs[proc.pid] = db
        return proc

    def working(self, proc: subprocess.Popen[bytes]) -> bool:
        """Whether the child is in its work loop: its first claim wrote its workers row
        (before that, SIGTERM would find Python's default handler and kill it)."""
        if proc.pid not in self._working:
            db = self.dbs[proc.pid]
            if query(db, "SELECT count(*) FROM workers WHERE pid = ?", proc.pid)[0][0]:
                self._working.add(proc.pid)
        return proc.pid in self._working

    def output(self, proc: subprocess.Popen[bytes], stream: str = "err") -> str:
        """What the child wrote to stdout ("out") or stderr ("err") so far."""
        path = self.tmp / f"worker{self.procs.index(proc)}.{stream}"
        return path.read_text(errors="replace") if path.exists() else ""

    def report(self) -> str:
        """Every child's exit status and output, for failure messages."""
        parts = []
        for proc in self.procs:
            parts.append(
                f"--- worker pid {proc.pid} (exit {proc.poll()})\n"
                f"{self.output(proc, 'out')}{self.output(proc, 'err')}"
            )
        return "\n".join(parts)

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = WAIT) -> int:
        """SIGTERM the child once it works, and wait for it to exit; its exit code."""
        wait_for(lambda: self.working(proc), f"worker {proc.pid} to start working", self)
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {proc.pid} did not stop on SIGTERM\n{self.report()}")

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
        # Shown by pytest only when the test failed.
        print(self.report())


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    """Worker processes killed at teardown, whatever happened."""
    kids = Workers(tmp_path)
    try:
        yield kids
    finally:
        kids.close()


def wait_for(check: Callable[[], bool], what: str, workers: Workers, timeout: float = WAIT) -> None:
    """Poll check() until it is true; fail with the children's output after timeout."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}\n{workers.report()}")
        time.sleep(0.02)


def query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of a read on the database, through a connection of its own."""
    with current().sql(db, timeout=WAIT) as conn:
        return [tuple(row) for row in conn.execute(sql, params).fetchall()]


def count_completed(db: Path) -> int:
    """How many runs of the file are completed."""
    return int(query(db, "SELECT count(*) FROM runs WHERE status = 'completed'")[0][0])


def ledger_rows(ledger: Path) -> list[Row]:
    """Every step execution logged so far as (run_id, position, pid, attempt)."""
    return [(r[0], int(r[1]), int(r[2]), int(r[3])) for r in wc.read_lines(str(ledger))]


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of (start, end) spans open at one instant."""
    # At equal times an end comes before a start: touching spans do not overlap.
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    inside = most = 0
    for _, delta in events:
        inside += delta
        most = max(most, inside)
    return most


def history_snapshot(engine: ce.Engine, run_id: str) -> list[tuple[Any, ...]]:
    """Every stored field of the run's row and log, to show that nothing changed."""
    row = engine.store.get_run(run_id)
    entries = [
        (e.position, e.status, e.attempts, e.crashes, e.started_at, e.finished_at, e._data)
        for e in engine.history(run_id)
    ]
    return [(row,), *entries]


# -- SIGKILL during the work -------------------------------------------------------

KILL_RUNS = 500
KILL_THREADS = 4
KILLS = 6
SEED = int(os.environ.get("WORKERS_TEST_SEED", "20240611"))


def test_workers_killed_at_random_lose_nothing_and_repeat_only_interrupted_steps(
    tmp_path: Path, workers: Workers
) -> None:
    """Three workers on one file, one SIGKILLed and replaced every 0.3-0.6 s: every run
    completes once with its result, and only steps in flight in a killed process ran again."""
    print(f"seed {SEED} (set WORKERS_TEST_SEED to repeat the choices)")
    rng = random.Random(SEED)
    db, ledger = tmp_path / "kill.db", tmp_path / "ledger"
    engine = ce.Engine(db)
    try:
        # Part of the runs before the workers start, the rest while they work and die,
        # so that every kill finds work in progress.
        first = 300
        for n in range(first):
            engine.start(wc.triple, str(ledger), n, id=f"k{n}")
        live = [workers.spawn(db, threads=KILL_THREADS) for _ in range(3)]
        killed: set[int] = set()
        held_by_victims: list[int] = []  # runs each victim held just before its kill
        later = range(first, KILL_RUNS)
        batches = [later[i * 50 : (i + 1) * 50] for i in range(KILLS)]
        assert sum(map(len, batches)) == len(later)
        for batch in batches:
            for n in batch:
                engine.start(wc.triple, str(ledger), n, id=f"k{n}")
            time.sleep(rng.uniform(0.3, 0.6))
            # A worker holding runs (most often all do), so that each kill interrupts steps.
            owners = [o for (o,) in query(db, "SELECT owner FROM runs WHERE owner IS NOT NULL")]
            held = {p: sum(o.startswith(f"{HOST}:{p.pid}:") for o in owners) for p in live}
            victim = rng.choice([p for p in live if held[p]] or live)
            held_by_victims.append(held[victim])
            live.remove(victim)
            os.kill(victim.pid, signal.SIGKILL)
            assert victim.wait(WAIT) == -signal.SIGKILL, workers.report()
            killed.add(victim.pid)
            live.append(workers.spawn(db, threads=KILL_THREADS))
        wait_for(lambda: count_completed(db) == KILL_RUNS, "every run to complete", workers)
        for proc in live:
            assert workers.stop(proc) == 0, workers.report()

        rows = ledger_rows(ledger)
        runs: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
        for run_id, position, pid, attempt in rows:
            runs[(run_id, position)].append((pid, attempt))
        interrupted = 0  # attempts the engine made again after a crash
        repeated = 0  # executions beyond the first one, by the ledger
        for n in range(KILL_RUNS):
            run = engine.get_run(f"k{n}")
            assert run.status == "completed"
            assert run.result() == wc.expected(n)
            entries = engine.history(run.id)
            assert [(e.position, e.name, e.status) for e in entries] == [
                (0, "wp.add", "completed"),
                (1, "wp.mul", "completed"),
                (2, "wp.show", "completed"),
            ], run.id
            for e in entries:
                done = runs.pop((run.id, e.position), [])
                attempts = [a for _, a in done]
                where = f"{run.id} position {e.position}: ledger {done}, log attempts {e.attempts}"
                # The execution whose outcome was committed is in the ledger, and no
                # attempt ran twice (two drivers of one attempt would be a double run).
                assert e.attempts in attempts, where
                assert sorted(attempts) == sorted(set(attempts)), where
                assert max(attempts) == e.attempts, where
                assert len(done) <= 1 + KILLS, where
                # Only a crash makes the engine try again (no step fails here), and
                # every execution that did not count ran in a process that was killed.
                assert e.crashes == e.attempts - 1, where
                assert all(pid in killed for pid, a in done if a != e.attempts), where
                interrupted += e.attempts - 1
                repeated += len(done) - 1
        assert not runs, f"the ledger shows executions the log does not know: {runs}"
        print(
            f"{len(rows)} executions, {repeated} repeated, {interrupted} attempts again; "
            f"victims held {held_by_victims} runs"
        )
        # A killed worker was inside at most one step per thread; and the kills did
        # land inside steps (else this test would show nothing).
        assert repeated <= interrupted <= KILLS * KILL_THREADS
        assert interrupted >= 1
    finally:
        engine.close()


# -- a frozen worker loses its lease ---------------------------------------------------


def write_locked(db: Path) -> bool:
    """Whether some connection holds the file's write lock now (on PostgreSQL: whether
    another session is in a transaction on the database's tables)."""
    if current().postgres:
        with current().sql(db) as conn:
            (held,) = conn.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                "WHERE c.relnamespace = current_schema()::regnamespace "
                "AND l.pid <> pg_backend_pid()"
            ).fetchone()
        return bool(held)
    with contextlib.closing(sqlite3.connect(db, timeout=0.2, isolation_level=None)) as conn:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return True
        conn.execute("ROLLBACK")
        return False


def process_state(pid: int) -> str:
    """The state letter of a process (R, S, T, Z, ...) from /proc."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def freeze(proc: subprocess.Popen[bytes], db: Path, workers: Workers) -> None:
    """SIGSTOP the child at a moment it does not hold the database's write lock (a
    frozen holder of the lock would stop every process, not just itself)."""
    for _ in range(50):
        os.kill(proc.pid, signal.SIGSTOP)
        wait_for(lambda: process_state(proc.pid) == "T", "the worker to stop", workers)
        if not write_locked(db):
            return
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.03)
    pytest.fail(f"worker {proc.pid} always held the write lock\n{workers.report()}")


def mark(
    marks: Path, word: str, proc: subprocess.Popen[bytes], attempt: int = 1
) -> list[str] | None:
    """The line `word pid attempt ...` the hold step wrote for this process, if any."""
    for line in wc.read_lines(str(marks)):
        if line[:3] == [word, str(proc.pid), str(attempt)]:
            return line
    return None


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_a_frozen_worker_loses_its_run_and_its_late_commit_is_refused(
    tmp_path: Path, workers: Workers
) -> None:
    """SIGSTOP a worker (lease 1 s) inside a step: another takes the run over once the
    lease expires and finishes it; resumed, the first worker's step ends and its
    commit is refused (LeaseLost, logged by the worker), leaving the second worker's
    outcome in place."""
    db, ledger, marks = tmp_path / "lease.db", tmp_path / "ledger", tmp_path / "marks"
    engine = ce.Engine(db)
    try:
        run = engine.start(wc.held, str(ledger), str(marks), id="held")
        first = workers.spawn(db, threads=1, lease=1.0)
        wait_for(lambda: mark(marks, "started", first) is not None,
                 "the first worker to start the step", workers)  # fmt: skip
        assert workers.working(first)
        freeze(first, db, workers)
        # Frozen, not dead: the process is there, so the run stays leased to it until
        # its lease runs out (the frozen heartbeat renews it no more).
        ((owner,),) = query(db, "SELECT owner FROM runs WHERE id = 'held'")
        assert owner.startswith(f"{HOST}:{first.pid}:")
        ((expires_at,),) = query(db, "SELECT expires_at FROM workers WHERE pid = ?", first.pid)

        second = workers.spawn(db, threads=1)
        wait_for(lambda: run.status == "completed", "the second worker to finish", workers)
        mine = f"held by {second.pid}"
        assert run.result() == mine
        taken = mark(marks, "started", second, attempt=2)
        assert taken is not None and float(taken[3]) >= expires_at, (taken, expires_at)
        before = history_snapshot(engine, "held")
        # The first worker is still frozen inside its first attempt.
        assert process_state(first.pid) == "T"
        assert mark(marks, "finished", first) is None

        os.kill(first.pid, signal.SIGCONT)
        wait_for(lambda: mark(marks, "finished", first) is not None,
                 "the first worker's step to end", workers)  # fmt: skip
        # A stopping worker lets its drives end first: the refused commit is behind us.
        assert workers.stop(first) == 0, workers.report()
        err = workers.output(first)
        assert "'held' was taken over by another worker" in err, err
        assert "is no longer leased to this driver" in err, err
        assert "taken over" not in workers.output(second)

        assert history_snapshot(engine, "held") == before
        assert run.status == "completed" and run.result() == mine
        ((entry,),) = [engine.history("held")]
        assert (entry.status, entry.attempts, entry.crashes, entry.value) == (
            "completed", 2, 1, mine,
        )  # fmt: skip
        assert ledger_rows(ledger) == [("held", 0, first.pid, 1), ("held", 0, second.pid, 2)]
        assert workers.stop(second) == 0, workers.report()
    finally:
        engine.close()


# -- queue limits across processes ---------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "processes", "n_runs"),
    [
        ({"concurrency": 2}, 3, 30),
        ({"worker_concurrency": 1}, 2, 20),
        ({"concurrency": 2, "worker_concurrency": 1}, 3, 30),
    ],
    ids=["concurrency-2", "worker-concurrency-1", "both"],
)
def test_queue_limits_hold_across_processes(
    tmp_path: Path, workers: Workers, limits: dict[str, int], processes: int, n_runs: int
) -> None:
    """No more runs of a queue inside a step at once than its limits allow, counted
    over all processes (concurrency) or per process (worker_concurrency)."""
    db, ledger = tmp_path / "queue.db", tmp_path / "ledger"
    engine = ce.Engine(db)
    try:
        engine.set_queue("q", **limits)
        runs = [
            engine.start(wc.queued, str(ledger), 0.05, id=f"q{i}", queue="q") for i in range(n_runs)
        ]
        # Runs outside the queue are not held back by it.
        free = [engine.start(wc.queued, str(ledger), 0.05, id=f"f{i}") for i in range(4)]
        procs = [workers.spawn(db, threads=4) for _ in range(processes)]
        wait_for(lambda: count_completed(db) == n_runs + 4, "every run to complete", workers)
        for proc in procs:
            assert workers.stop(proc) == 0, workers.report()
        assert [r.result() for r in runs + free] == [2] * (n_runs + 4)

        lines = wc.read_lines(str(ledger))
        queued = [r for r in lines if r[0].startswith("q")]
        assert sorted((r[0], r[1]) for r in queued) == sorted(
            (f"q{i}", p) for i in range(n_runs) for p in "01"
        )
        spans = [(float(r[4]), float(r[5])) for r in queued]
        by_pid: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for r in queued:
            by_pid[r[2]].append((float(r[4]), float(r[5])))
        print({pid: most_at_once(s) for pid, s in by_pid.items()}, most_at_once(spans))
        if "worker_concurrency" in limits:
            assert all(most_at_once(s) == 1 for s in by_pid.values())
            # Shared out: at least two processes ran the queue, at the same time.
            assert len(by_pid) >= 2
        # The limit holds, and was reached (so it was what held the runs back).
        assert most_at_once(spans) == limits.get("concurrency", processes)
    finally:
        engine.close()


ORDER: list[str] = []
INSIDE = threading.Event()
GATE = threading.Event()


@ce.step(name="wp.note")
def note(label: str) -> str:
    """Record the order steps ran in; the blocker waits for the gate."""
    ORDER.append(label)
    if label == "blocker":
        INSIDE.set()
        GATE.wait(WAIT)
    return label


@ce.workflow(name="wp.noted")
def noted(label: str) -> Generator[Any, Any, str]:
    """One noted step."""
    noted_label: str = yield note(label)
    return noted_label


def test_a_worker_takes_later_higher_priority_runs_before_waiting_ones(tmp_path: Path) -> None:
    """One worker thread, busy: runs started later with a higher priority go first,
    then the waiting ones in the order they were started."""
    ORDER.clear()
    INSIDE.clear()
    GATE.clear()
    engine = ce.Engine(tmp_path / "prio.db")
    try:
        with engine.worker(threads=1, grace=5):
            blocker = engine.start(noted, "blocker")
            assert INSIDE.wait(WAIT)
            runs = [engine.start(noted, f"low{i}") for i in range(3)]
            runs.append(engine.start(noted, "mid", priority=5))
            runs.append(engine.start(noted, "top", priority=9))
            runs.append(engine.start(noted, "mid2", priority=5))
            GATE.set()
            # With a worker in this engine, result() waits for it (it drives nothing
            # itself, which would change the order).
            assert [r.result(timeout=WAIT) for r in [blocker, *runs]] == [
                "blocker", "low0", "low1", "low2", "mid", "top", "mid2",
            ]  # fmt: skip
    finally:
        GATE.set()
        engine.close()
    assert ORDER == ["blocker", "top", "mid", "mid2", "low0", "low1", "low2"]


# -- SIGTERM --------------------------------------------------------------------------


def test_sigterm_lets_running_steps_finish_and_lets_go_of_every_run(
    tmp_path: Path, workers: Workers
) -> None:
    """SIGTERM while two steps run: the worker exits 0 once they finish, commits their
    outcomes, starts nothing more, leaves no lease or worker row; another finishes."""
    db, ledger, marks = tmp_path / "term.db", tmp_path / "ledger", tmp_path / "marks"
    engine = ce.Engine(db)
    try:
        runs = [engine.start(wc.slow_then_quick, str(ledger), str(marks), 1.0, id=f"t{i}")
                for i in range(3)]  # fmt: skip
        child = workers.spawn(db, threads=2, grace=10)
        wait_for(lambda: len(wc.read_lines(str(marks))) == 2, "two slow steps to start", workers)
        sent = time.monotonic()
        child.send_signal(signal.SIGTERM)
        try:
            code = child.wait(WAIT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker did not stop on SIGTERM\n{workers.report()}")
        took = time.monotonic() - sent
        assert code == 0, workers.report()
        assert took < 6.0, took
        assert f"STOPPED {child.pid}" in workers.output(child, "out")
        assert "grace period" not in workers.output(child)

        started = sorted(r[1] for r in wc.read_lines(str(marks)))
        assert len(started) == 2 and all(r[2] == str(child.pid) for r in wc.read_lines(str(marks)))
        # Both slow steps ran to their end and their outcomes are in the log; the next
        # step was not started, and the third run was not even claimed.
        assert sorted(ledger_rows(ledger)) == [(r, 0, child.pid, 1) for r in started]
        for run in runs:
            entries = engine.history(run.id)
            if run.id in started:
                assert [(e.name, e.status, e.attempts, e.value) for e in entries] == [
                    ("wp.slow", "completed", 1, child.pid)
                ]
            else:
                assert entries == [] and run.status == "pending"
        assert query(db, "SELECT id FROM workers") == []
        assert query(db, "SELECT owner FROM runs") == [(None,)] * 3

        second = workers.spawn(db, threads=2)
        wait_for(lambda: count_completed(db) == 3, "a new worker to finish the runs", workers)
        for run in runs:
            first = child.pid if run.id in started else second.pid
            assert run.result() == f"{first}>{second.pid}"
        # The slow steps that had finished did not run again.
        assert sorted(ledger_rows(ledger)) == sorted(
            [(r, 0, child.pid, 1) for r in started]
            + [(r.id, 1, second.pid, 1) for r in runs]
            + [(r.id, 0, second.pid, 1) for r in runs if r.id not in started]
        )
        assert workers.stop(second) == 0, workers.report()
        assert query(db, "SELECT id FROM workers") == []
    finally:
        engine.close()
