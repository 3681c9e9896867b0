"""The drive pool: tasks that park on a commit go on in any thread once it is written,
blocked threads are stood in for, queued commits are written even when every thread
is busy, and shutting down waits for parked tasks."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from contengine.drive.pool import DrivePool, Parked
from contengine.store.base import Ticket


class Tickets:
    """A stand-in store: tickets handed out, all finished by flush()."""

    def __init__(self) -> None:
        self.pending: list[Ticket] = []
        self.flushes = 0
        self.lock = threading.Lock()

    def later(self) -> Ticket:
        ticket = Ticket()
        with self.lock:
            self.pending.append(ticket)
        return ticket

    def flush(self) -> None:
        with self.lock:
            self.flushes += 1
            pending, self.pending = self.pending, []
        for ticket in pending:
            ticket.finish()


def parks_then(tickets: Tickets, then: Callable[[], Any]) -> Callable[[], Any]:
    """A task that parks once on a new ticket and goes on with then()."""

    def task() -> Any:
        raise Parked(tickets.later(), then)

    return task


def test_a_parked_task_goes_on_after_its_commit_is_written() -> None:
    """The future holds the continuation's result; `again` wraps the continuation."""
    tickets = Tickets()
    pool = DrivePool(4, tickets.flush)
    layers: list[str] = []

    def again(then: Callable[[], Any]) -> Any:
        layers.append("again")
        return then()

    try:
        future = pool.submit(parks_then(tickets, lambda: "went on"), again)
        assert future.result(timeout=5) == "went on"
        assert layers == ["again"] and tickets.flushes >= 1
    finally:
        pool.shutdown()


def test_many_parks_in_a_row_and_errors_reach_the_future() -> None:
    """A task may park many times; an exception after a park ends its future."""
    tickets = Tickets()
    pool = DrivePool(2, tickets.flush)
    count = [0]

    def step() -> Any:
        count[0] += 1
        if count[0] == 50:
            raise ValueError("the fiftieth")
        raise Parked(tickets.later(), step)

    try:
        future = pool.submit(step)
        with pytest.raises(ValueError, match="fiftieth"):
            future.result(timeout=5)
        assert count[0] == 50
    finally:
        pool.shutdown()


def test_a_commit_already_written_goes_on_in_the_same_thread() -> None:
    """A ticket done by the time the task parks needs no hand-off."""
    pool = DrivePool(2)
    threads: list[int] = []

    def first() -> Any:
        threads.append(threading.get_ident())
        ticket = Ticket()
        ticket.finish()
        raise Parked(ticket, lambda: threads.append(threading.get_ident()) or "done")

    try:
        assert pool.submit(first).result(timeout=5) == "done"
        assert len(threads) == 2 and threads[0] == threads[1]
    finally:
        pool.shutdown()


def test_steps_that_block_run_side_by_side_up_to_the_pool_size() -> None:
    """With one thread kept active, blocked ones are stood in for: eight tasks that
    each wait for all eight to be inside it at once all get through."""
    pool = DrivePool(8, active=1)
    barrier = threading.Barrier(8, timeout=10)
    try:
        futures = [pool.submit(barrier.wait) for _ in range(8)]
        assert sorted(f.result(timeout=15) for f in futures) == list(range(8))
    finally:
        pool.shutdown()


def test_queued_commits_are_written_while_every_active_thread_is_in_a_step() -> None:
    """One task parks, the only active thread takes the next one, which waits for the
    first to go on: the monitor writes the commit and wakes a thread for it."""
    tickets = Tickets()
    pool = DrivePool(2, tickets.flush, active=1)
    went_on = threading.Event()
    try:
        first = pool.submit(parks_then(tickets, went_on.set))
        second = pool.submit(lambda: went_on.wait(10))
        assert second.result(timeout=15) is True
        first.result(timeout=5)
    finally:
        pool.shutdown()


def test_shutdown_waits_for_parked_tasks_and_refuses_new_ones() -> None:
    """Tasks still parked at shutdown finish first; nothing can be submitted after."""
    tickets = Tickets()
    pool = DrivePool(3, tickets.flush)
    ended: list[str] = []
    gate = threading.Event()

    def slow_then() -> None:
        gate.wait(10)
        ended.append("parked one")

    future = pool.submit(parks_then(tickets, slow_then))
    threading.Timer(0.2, gate.set).start()
    pool.shutdown(wait=True)
    assert ended == ["parked one"] and future.done()
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)


def test_a_busy_pool_goes_from_task_to_task_without_waking_threads() -> None:
    """Many parked tasks and one active thread: the pool writes in batches (far fewer
    flushes than parks) and keeps few threads busy."""
    tickets = Tickets()
    pool = DrivePool(64, tickets.flush, active=1)
    parks = [0]
    lock = threading.Lock()

    def task(n: int) -> Callable[[], Any]:
        def go() -> Any:
            with lock:
                parks[0] += 1
            if n == 0:
                return "done"
            raise Parked(tickets.later(), task(n - 1))

        return go

    try:
        futures = [pool.submit(task(20)) for _ in range(64)]
        assert all(f.result(timeout=30) == "done" for f in futures)
        assert parks[0] == 64 * 21
        # One batch per round of all runs, give or take the start: not one per park.
        assert tickets.flushes < parks[0] / 4
    finally:
        pool.shutdown()


def test_a_pool_shutting_down_still_starts_a_thread_for_a_parked_task() -> None:
    """Shutting down while the only thread is in a step that waits for a parked task:
    the parked task gets a thread of its own once its commit is written (no hang)."""
    ticket = Ticket()
    allow = threading.Event()
    went_on = threading.Event()

    def flush() -> None:
        if allow.is_set() and not ticket.done:
            ticket.finish()

    def parked() -> Any:
        raise Parked(ticket, lambda: went_on.set() or "parked one")

    pool = DrivePool(2, flush)
    first = pool.submit(parked)
    assert not first.done()
    waiter = pool.submit(lambda: went_on.wait(5) and "waiter")
    stopper = threading.Thread(target=pool.shutdown, daemon=True)
    stopper.start()
    allow.set()  # the commit is written now; the monitor or a thread flushes it
    assert first.result(timeout=5) == "parked one"
    assert waiter.result(timeout=5) == "waiter"
    stopper.join(5)
    assert not stopper.is_alive()


def test_blocked_threads_are_forgotten_once_the_pool_is_idle() -> None:
    """After a burst of slow tasks, a burst of quick ones wakes one thread, not one each."""
    pool = DrivePool(8)
    try:
        slow = [pool.submit(lambda: threading.Event().wait(0.02)) for _ in range(8)]
        for f in slow:
            f.result(timeout=5)
        deadline = threading.Event()
        while pool._outstanding and not deadline.wait(0.01):
            pass
        deadline.wait(0.02)  # the monitor's next look, with nothing outstanding
        woken = [0]
        real = pool._wake_locked

        def counting() -> Any:
            t = real()
            woken[0] += t is not None
            return t

        pool._wake_locked = counting  # type: ignore[method-assign]
        quick = [pool.submit(lambda: sum(range(1000))) for _ in range(8)]
        for f in quick:
            f.result(timeout=5)
        assert woken[0] <= 2  # one, or two if the monitor saw one task waiting
    finally:
        pool.shutdown()
