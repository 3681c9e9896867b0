"""Threads that drive runs: many runs per thread, one thread per step in progress.

A drive that has logged its next step does not wait for the disk sync in its
thread: it queues the commit (Store.commit_later), raises Parked with the
commit's ticket and what to do next, and its thread takes the next ready drive.
When a thread runs out of ready drives it writes the queued commits as one
batch (Store.flush), and the parked drives come back to the ready queue. So a
busy pool alternates: drive every ready run up to its next commit, write them
all with one disk sync, go on. No thread sleeps or wakes per step, and the
interpreter lock is not handed back and forth: with a thread blocked per run
(or a separate writer thread) those hand-offs cost more CPU than the steps.

Few threads are kept awake (ACTIVE): driving is CPU work under one interpreter
lock. Steps may block for long (network calls): a thread whose task has run for
more than STARVE seconds counts as blocked, and another is woken in its place,
up to the pool's size; the pool's size is how many steps can be in progress at
once. A monitor thread makes sure queued commits are written even while every
thread is inside a step.
notes/design.md, "Parked drives".
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..store.base import Ticket

# Threads kept running ready drives at once (more only stand in for blocked ones):
# driving is CPU work under one interpreter lock, and each extra runnable thread
# adds lock hand-offs, not throughput.
ACTIVE = 1
# A task running longer than this counts as blocked (in a slow step); a ready
# drive waits at most about this long for a thread while others are free.
STARVE = 0.002


class Parked(BaseException):
    """A drive waits for its commit (ticket) to be durable; then() goes on from there.

    A BaseException, so that no `except Exception` on the way treats it as a
    failure; layers with work to do at a drive's end (letting a lease go, closing
    a generator) skip it for Parked. then() includes the runner's and the drive's
    handling; the pool goes on through the task's `again` (the engine's and the
    worker's handling), in any of its threads. Raised once per step: cheap.
    """

    def __init__(self, ticket: Ticket, then: Callable[[], Any]) -> None:
        self.ticket = ticket
        self.then = then


class _Task:
    __slots__ = ("fn", "again", "future", "queued_at")

    def __init__(
        self, fn: Callable[[], Any], again: Callable[[Callable[[], Any]], Any] | None
    ) -> None:
        self.fn = fn
        self.again = again
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.queued_at = 0.0


class _Thread:
    __slots__ = ("wake", "task_since", "thread")

    def __init__(self) -> None:
        self.wake = threading.Lock()
        self.wake.acquire()  # released once to wake it
        self.task_since = 0.0  # when its current task (segment) began; 0.0: none
        self.thread: threading.Thread | None = None


class DrivePool:
    """A pool of up to `threads` threads running drives that may park (Parked)."""

    def __init__(
        self,
        threads: int,
        flush: Callable[[], None] = lambda: None,
        name: str = "contengine-drive",
        active: int = ACTIVE,
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads!r}")
        self.threads = threads
        self.active = max(1, active)
        # Writes the commits parked drives wait for (Store.flush): called by a thread
        # that runs out of ready drives, and by the monitor now and then.
        self._flush = flush
        self._name = name
        self._lock = threading.Lock()
        self._ready: collections.deque[_Task] = collections.deque()
        self._idle: list[_Thread] = []
        self._all: list[_Thread] = []
        self._awake = 0  # threads running tasks, or woken to
        self._blocked = 0  # of those, how many ran one task longer than STARVE (last look)
        self._outstanding = 0  # tasks submitted and not finished (parked ones included)
        self._busy = threading.Condition(self._lock)  # the monitor waits for outstanding work
        self._shutdown = False
        self._monitor: threading.Thread | None = None

    # -- use ---------------------------------------------------------------

    def submit(
        self, fn: Callable[[], Any], again: Callable[[Callable[[], Any]], Any] | None = None
    ) -> concurrent.futures.Future[Any]:
        """Run fn() in a thread of the pool; the future holds its end (after any parks).
        A parked fn goes on as again(then) (then() alone without `again`)."""
        task = _Task(fn, again)
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit to a pool that was shut down")
            self._outstanding += 1
            if self._monitor is None:
                self._monitor = threading.Thread(
                    target=self._watch, name=f"{self._name}-monitor", daemon=True
                )
                self._monitor.start()
            elif self._outstanding == 1:
                self._busy.notify()
        self._push(task)
        return task.future

    def shutdown(self, wait: bool = True) -> None:
        """Take no more tasks; with wait, return once every task has ended (parked ones
        go on to their end first) and the threads are gone."""
        with self._lock:
            self._shutdown = True
            self._busy.notify()
            idle = self._release_idle_locked()
            threads = list(self._all)
            monitor = self._monitor
        for t in idle:
            t.wake.release()  # each sees the shutdown and ends once nothing is left
        if wait:
            while threads:
                for t in threads:
                    if t.thread is not None and t.thread is not threading.current_thread():
                        t.thread.join()
                with self._lock:  # threads started meanwhile, for tasks left
                    threads = [t for t in self._all if t not in threads]
            if monitor is not None:
                monitor.join()

    # -- the threads --------------------------------------------------------

    def _push(self, task: _Task) -> None:
        """Queue a ready task; wake a thread if too few are running unblocked."""
        with self._lock:
            task.queued_at = time.monotonic()
            self._ready.append(task)
            woken = self._wake_locked() if self._awake - self._blocked < self.active else None
        if woken is not None:
            woken.wake.release()

    def _wake_locked(self) -> _Thread | None:
        """An idle thread to wake (or a new one, started), counted awake; None if all
        `threads` are awake. Called with the lock held; the caller releases its wake."""
        if self._idle:
            self._awake += 1
            return self._idle.pop()
        # Shutting down too while tasks are left: a parked task must not wait for a
        # thread that is inside a step (nor forever, when submit() raced shutdown()).
        if len(self._all) < self.threads and (not self._shutdown or self._outstanding > 0):
            t = _Thread()
            t.thread = threading.Thread(
                target=self._serve, args=(t,), name=f"{self._name}-{len(self._all)}", daemon=True
            )
            try:
                t.thread.start()  # it waits for its wake, like a woken idle thread
            except RuntimeError:  # no more threads to be had: the ones there will do
                logging.getLogger("contengine").warning("the drive pool could not start a thread")
                return None
            self._all.append(t)
            self._awake += 1
            return t
        return None

    def _release_idle_locked(self) -> list[_Thread]:
        """Every idle thread, counted awake, for the caller to wake (shutting down)."""
        idle, self._idle = self._idle, []
        self._awake += len(idle)
        return idle

    def _serve(self, me: _Thread) -> None:
        while True:
            me.wake.acquire()
            flushed = False
            while True:
                if not flushed and not self._ready:
                    # Out of work: write the batch the parked drives wait for (their
                    # continuations come back to the ready queue), then look again.
                    flushed = True
                    me.task_since = 0.0  # writing is not being stuck in a step
                    self._write()
                    continue
                flushed = False
                with self._lock:
                    if not self._ready:
                        self._awake -= 1
                        me.task_since = 0.0
                        if self._shutdown and self._outstanding == 0:
                            self._all.remove(me)
                            self._busy.notify()
                            return
                        self._idle.append(me)
                        break
                    task = self._ready.popleft()
                    me.task_since = time.monotonic()
                self._run(me, task)

    def _write(self) -> None:
        try:
            self._flush()
        except Exception:  # the slots were told; the pool must go on
            logging.getLogger("contengine").exception("writing parked drives' commits failed")

    def _run(self, me: _Thread, task: _Task) -> None:
        fn = task.fn
        while True:
            try:
                result = fn()
            except Parked as parked:
                again, then = task.again, parked.then
                fn = then if again is None else functools.partial(again, then)
                if parked.ticket.done:
                    me.task_since = time.monotonic()
                    continue  # already durable (this thread wrote it): go on here
                task.fn = fn
                parked.ticket.when_done(functools.partial(self._push, task))
                return
            except BaseException as exc:  # noqa: BLE001 - handed over with the future
                self._end(task, exc, None)
                return
            self._end(task, None, result)
            return

    def _end(self, task: _Task, error: BaseException | None, result: Any) -> None:
        if error is not None:
            task.future.set_exception(error)
        else:
            task.future.set_result(result)
        with self._lock:
            self._outstanding -= 1
            if self._shutdown and self._outstanding == 0:
                idle = self._release_idle_locked()
                self._busy.notify()
            else:
                idle = []
        for t in idle:
            t.wake.release()  # shutting down: let them end

    def _watch(self) -> None:
        """The monitor: while tasks are outstanding, every STARVE seconds count the
        threads blocked in long tasks, and wake threads for ready drives kept waiting."""
        while True:
            wake: list[_Thread] = []
            with self._lock:
                if self._shutdown and self._outstanding == 0:
                    return
                if self._outstanding == 0:
                    self._blocked = 0  # no task runs: none is blocked
                    self._busy.wait()
                    continue
                now = time.monotonic()
                since = now - STARVE
                self._blocked = sum(1 for t in self._all if 0.0 < t.task_since < since)
                waiting = 0
                for task in self._ready:
                    if task.queued_at >= since:
                        break
                    waiting += 1
                while waiting > 0:
                    t = self._wake_locked()
                    if t is None:
                        break
                    wake.append(t)
                    waiting -= 1
            for t in wake:
                t.wake.release()
            # Every thread may be inside a long step: write what parked drives wait for.
            self._write()
            time.sleep(STARVE)
