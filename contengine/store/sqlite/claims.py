"""Leases for the SQLite store: worker rows, and claiming due runs.

A run is leased to one worker (owner) with a lease number that grows by one at
every claim; each write of the run's progress names the pair, so a driver whose
lease was taken over finds the number changed and writes nothing. A worker is
alive while its row is unexpired (renewed by its heartbeat); on the same host a
worker whose process is gone (or a zombie) is dead at once, so a crashed process's
runs are taken over without waiting for the lease to run out.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Sequence

from ..liveness import Expiry, alive
from ..queues import room_left
from ..rows import QueueConfig, WorkerRow
from .bulk import lease_lost
from .sql import DUE, DUE_RUNS

_UNFINISHED = "'pending', 'running', 'sleeping', 'waiting'"


def ensure_worker(conn: sqlite3.Connection, w: WorkerRow) -> None:
    """Put the worker on record if it is not (a write, and so a disk sync, only then)."""
    conn.execute(
        "INSERT OR IGNORE INTO workers (id, host, pid, pid_start, started_at, expires_at, "
        "worker_loop) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (w.id, w.host, w.pid, w.pid_start, w.started_at, w.expires_at, int(w.worker_loop)),
    )


def record_worker(conn: sqlite3.Connection, w: WorkerRow) -> bool:
    """Insert or renew the worker's row; False if the row had gone (judged dead)."""
    cur = conn.execute(
        "UPDATE workers SET expires_at = ?, worker_loop = ? WHERE id = ?",
        (w.expires_at, int(w.worker_loop), w.id),
    )
    if cur.rowcount == 1:
        return True
    ensure_worker(conn, w)
    return False


def live_workers(
    conn: sqlite3.Connection,
    me: str,
    wall: float,
    expiry: Expiry | None = None,
    delete: bool = True,
) -> list[str]:
    """Ids of live workers (me included); dead ones' rows are deleted on the way
    (unless not delete: a read that writes nothing)."""
    rows = read_workers(conn)
    live = [w.id for w in rows if w.id == me or alive(w, wall, expiry)]
    dead = [(w.id,) for w in rows if w.id not in live]
    if dead and delete:
        conn.executemany("DELETE FROM workers WHERE id = ?", dead)
    return live


_WORKER_COLS = "id, host, pid, pid_start, started_at, expires_at, worker_loop"


def read_workers(conn: sqlite3.Connection) -> list[WorkerRow]:
    """Every worker row."""
    return [
        WorkerRow(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]))
        for r in conn.execute(f"SELECT {_WORKER_COLS} FROM workers")
    ]


def queue_configs(conn: sqlite3.Connection) -> dict[str, QueueConfig]:
    """Every queue's limits, by name."""
    return {
        r[0]: QueueConfig(*r)
        for r in conn.execute(
            "SELECT name, concurrency, worker_concurrency, rate_limit, rate_period FROM queues"
        )
    }


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def queue_room(
    conn: sqlite3.Connection, live: list[str], me: str, now: float
) -> tuple[dict[str, int], dict[str, int]]:
    """How many more runs each limited queue may have claimed now, and how many of
    them may be first starts (the rate limit counts starts, not resumptions)."""
    configs = queue_configs(conn)
    if not configs:
        return {}, {}
    held: dict[str, int] = {}
    mine: dict[str, int] = {}
    for queue, owner, count in conn.execute(
        f"SELECT queue, owner, count(*) FROM runs WHERE owner IN ({_marks(len(live))}) "
        # A cancelled run no longer counts: the queue's next run starts at once, not
        # once the cancelled run's step ends (and its cleanup is not held back).
        f"AND queue IS NOT NULL AND status IN ({_UNFINISHED}) AND cancel_requested = 0 "
        "GROUP BY queue, owner",
        live,
    ):
        held[queue] = held.get(queue, 0) + count
        if owner == me:
            mine[queue] = count
    room = room_left(configs, held, mine)
    starts: dict[str, int] = {}
    for name, q in configs.items():
        if q.rate_limit is not None and q.rate_period is not None:
            (started,) = conn.execute(
                "SELECT count(*) FROM runs WHERE queue = ? AND claimed_at > ?",
                (name, now - q.rate_period),
            ).fetchone()
            starts[name] = q.rate_limit - started
    return room, starts


def claim(
    conn: sqlite3.Connection,
    worker: WorkerRow,
    now: float,
    wall: float,
    limit: int,
    run_id: str | None,
    release: Sequence[tuple[str, int]],
    skip: Collection[str] = (),
    expiry: Expiry | None = None,
) -> list[tuple[int, int]]:
    """Lease runs to worker inside the caller's write transaction; (num, lease) pairs."""
    me = worker.id
    if release:
        conn.executemany(
            "UPDATE runs SET owner = NULL WHERE id = ? AND owner = ? AND lease = ?",
            [(r, me, n) for r, n in release],
        )
    # On record (a write, and so a disk sync, only then: a claim that finds nothing to
    # take writes nothing); the heartbeat renews it every lease / 4, and so does a
    # step's lease check when the heartbeat was late (Leaseholder.may_start).
    ensure_worker(conn, worker)
    if limit <= 0:
        return []
    live = live_workers(conn, me, wall, expiry)
    picked = claimable(conn, me, live, now, limit, run_id, skip)
    conn.executemany(
        "UPDATE runs SET owner = ?, lease = ?, claimed_at = coalesce(claimed_at, ?) WHERE num = ?",
        [(me, lease, now, num) for num, lease in picked],
    )
    return picked


def nothing_to_claim(
    conn: sqlite3.Connection,
    worker: WorkerRow,
    now: float,
    wall: float,
    limit: int,
    skip: Collection[str] = (),
    expiry: Expiry | None = None,
) -> bool:
    """Whether a claim of due runs by worker would take nothing and write nothing, read
    without the write lock (nothing is written here): True only if the worker is on
    record and no due run is free to take within the queues' limits. A claim is a write
    transaction, which holds every other process's writes back; a worker polls with
    claims, so most find nothing, and those are left at this read."""
    rows = read_workers(conn)
    if not any(w.id == worker.id for w in rows):
        return False  # the claim would put the worker on record
    live = [w.id for w in rows if w.id == worker.id or alive(w, wall, expiry)]
    return not claimable(conn, worker.id, live, now, limit, None, skip)


def claimable(
    conn: sqlite3.Connection,
    me: str,
    live: list[str],
    now: float,
    limit: int,
    run_id: str | None,
    skip: Collection[str],
) -> list[tuple[int, int]]:
    """Up to limit runs me may take now, highest priority first, then oldest: run_id
    (if given) or the due ones, not held by a live worker, not in skip, within the
    queues' limits; (num, next lease number) pairs. Only reads."""
    if limit <= 0:
        return []
    room, starts = queue_room(conn, live, me, now)
    where = [f"status IN ({_UNFINISHED})", f"(owner IS NULL OR owner NOT IN ({_marks(len(live))}))"]
    params: list[object] = list(live)
    table = "runs"
    if run_id is not None:
        where.append("id = ?")
        params.append(run_id)
    else:
        table = DUE_RUNS
        # One range of the runs_due index: the runs due by now (those without a due
        # time among them), not every unfinished run.
        where.append(f"{DUE} <= ?")
        params.append(now)
    if skip:
        where.append(f"id NOT IN ({_marks(len(skip))})")
        params.extend(skip)
    full = [q for q, n in room.items() if n <= 0]
    if full:
        where.append(f"(queue IS NULL OR queue NOT IN ({_marks(len(full))}))")
        params.extend(full)
    # A queue whose starts are used up may still resume its runs, but its unstarted
    # runs are left out here: otherwise they could fill the window and starve the rest.
    spent = [q for q, n in starts.items() if n <= 0]
    if spent:
        where.append(
            f"(queue IS NULL OR claimed_at IS NOT NULL OR queue NOT IN ({_marks(len(spent))}))"
        )
        params.extend(spent)
    # A few more than asked for: some may be skipped for their queue's limits. The due
    # runs are sorted here (a sort of the due ones only: the index is in due order).
    params.append(limit * 2 + 8)
    rows = conn.execute(
        f"SELECT num, queue, lease, claimed_at FROM {table} WHERE {' AND '.join(where)} "
        f"ORDER BY priority DESC, num LIMIT ?",
        params,
    ).fetchall()
    picked: list[tuple[int, int]] = []
    for num, queue, lease, claimed_at in rows:
        if queue is not None:
            if room.get(queue, 1) <= 0:
                continue
            first = claimed_at is None
            if first and starts.get(queue, 1) <= 0:
                continue
            if queue in room:
                room[queue] -= 1
            if first and queue in starts:
                starts[queue] -= 1
        picked.append((int(num), int(lease) + 1))
        if len(picked) >= limit:
            break
    return picked


def check_lease(conn: sqlite3.Connection, run_id: str, owner: str, number: int) -> None:
    """LeaseLost unless the run is leased to owner with this lease number (a claim
    changes one or the other, so a match means no one took the run since)."""
    held = conn.execute("SELECT owner, lease FROM runs WHERE id = ?", (run_id,)).fetchone()
    if held is None or (held[0], held[1]) != (owner, number):
        raise lease_lost(run_id, (owner, number), None if held is None else (held[0], held[1]))


def take_slot(
    conn: sqlite3.Connection,
    queue: str,
    worker: WorkerRow,
    now: float,
    wall: float,
    lease: tuple[str, str, int] | None = None,
    expiry: Expiry | None = None,
) -> int | None:
    """A slot of the queue for one step execution: its id (0 for a queue without
    limits), or None if the queue is full now. With lease (run id, owner, lease
    number), LeaseLost if the run is no longer leased so: a driver that waited for
    the slot past its lease (its worker stopped, or it was frozen) must not start
    the step while another one drives the run."""
    config = queue_configs(conn).get(queue)
    if config is None:
        return 0
    if lease is not None:
        check_lease(conn, *lease)
    me = worker.id
    ensure_worker(conn, worker)
    live = live_workers(conn, me, wall, expiry)
    held = mine = 0
    for holder, count in conn.execute(
        f"SELECT holder, count(*) FROM step_slots WHERE queue = ? AND released = 0 "
        f"AND holder IN ({_marks(len(live))}) GROUP BY holder",
        [queue, *live],
    ):
        held += count
        if holder == me:
            mine = count
    if config.concurrency is not None and held >= config.concurrency:
        return None
    if config.worker_concurrency is not None and mine >= config.worker_concurrency:
        return None
    if config.rate_limit is not None and config.rate_period is not None:
        since = now - config.rate_period
        conn.execute(
            "DELETE FROM step_slots WHERE queue = ? AND released = 1 AND acquired_at <= ?",
            (queue, since),
        )
        (started,) = conn.execute(
            "SELECT count(*) FROM step_slots WHERE queue = ? AND acquired_at > ?", (queue, since)
        ).fetchone()
        if started >= config.rate_limit:
            return None
    cur = conn.execute(
        "INSERT INTO step_slots (queue, holder, acquired_at) VALUES (?, ?, ?)", (queue, me, now)
    )
    return int(cur.lastrowid or 0)


def give_slot(conn: sqlite3.Connection, slot: int) -> None:
    """Let a slot go: kept (released) while a rate limit may still count it."""
    conn.execute(
        "UPDATE step_slots SET released = 1 WHERE id = ? AND queue IN "
        "(SELECT name FROM queues WHERE rate_limit IS NOT NULL)",
        (slot,),
    )
    conn.execute("DELETE FROM step_slots WHERE id = ? AND released = 0", (slot,))
