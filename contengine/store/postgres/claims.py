"""Leases for the PostgreSQL store: worker rows, claiming due runs, queue slots.

A run is leased to one worker (owner) with a lease number that grows by one at every
claim; each progress write locks the run's row and checks the pair (writes.py).

Liveness: a worker row is alive until MAX_CLOCK_SKEW after its expiry (renewed by its
heartbeat), judged at the `wall` time the caller passes in, from its own clock. Unlike
SQLite, no process id is looked at: the workers of a server are on many hosts, and a
host name says nothing certain there, so a crashed worker's runs are taken over once
its lease runs out. The margin is what lets hosts' clocks differ: each engine checks
its clock against the server's (PostgresStore.server_time) and stops claiming and
running steps when it is off by more than half the margin (engine/leases.py), so a
host whose clock runs ahead cannot take over a lease that is still being renewed.

Claims lock the rows they take with FOR UPDATE SKIP LOCKED: concurrent claimers take
different runs and never wait for each other's rows. Queue limits count the runs of
every worker, so the claims (and step slots) of a limited queue are serialized across
sessions by a transaction-level advisory lock on the queue's name.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import psycopg

from ..liveness import MAX_CLOCK_SKEW
from ..queues import room_left
from ..rows import QueueConfig, WorkerRow
from .sql import DUE, RUN_COLS, UNFINISHED_SQL
from .writes import lease_lost

_WORKER_COLS = "id, host, pid, pid_start, started_at, expires_at, worker_loop"
_QUEUE_COLS = "name, concurrency, worker_concurrency, rate_limit, rate_period"
Conn = psycopg.Connection[Any]


def ensure_worker(conn: Conn, w: WorkerRow) -> None:
    """Put the worker on record if it is not."""
    conn.execute(
        f"INSERT INTO workers ({_WORKER_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (id) DO NOTHING",
        (w.id, w.host, w.pid, w.pid_start, w.started_at, w.expires_at, w.worker_loop),
    )


def record_worker(conn: Conn, w: WorkerRow) -> bool:
    """Insert or renew the worker's row; False if the row had gone (judged dead)."""
    cur = conn.execute(
        "UPDATE workers SET expires_at = %s, worker_loop = %s WHERE id = %s",
        (w.expires_at, w.worker_loop, w.id),
    )
    if cur.rowcount == 1:
        return True
    ensure_worker(conn, w)
    return False


def read_workers(conn: Conn) -> list[WorkerRow]:
    """Every worker row."""
    return [WorkerRow(*r) for r in conn.execute(f"SELECT {_WORKER_COLS} FROM workers ORDER BY id")]


def live_workers(conn: Conn, me: str, wall: float) -> list[str]:
    """Ids of live workers (me included); dead ones' rows are deleted on the way.

    A row another session holds locked is left for later (SKIP LOCKED), and judged by
    its committed expiry: a worker frozen inside its heartbeat's (or a claim's)
    transaction would otherwise stop every other worker's claims until it thaws."""
    conn.execute(
        "DELETE FROM workers WHERE id IN (SELECT id FROM workers WHERE id <> %s "
        "AND expires_at <= %s FOR UPDATE SKIP LOCKED)",
        (me, wall - MAX_CLOCK_SKEW),
    )
    rows = conn.execute(
        "SELECT id FROM workers WHERE id = %s OR expires_at > %s", (me, wall - MAX_CLOCK_SKEW)
    )
    return [str(r[0]) for r in rows]


def owners_alive(conn: Conn, owners: set[str], wall: float) -> set[str]:
    """Which of these owners of runs just locked are alive, read afresh.

    The live list a claim read first may miss a worker whose first claim committed
    since (its row and its runs appear together); a locked row shows its latest owner,
    and this later statement sees every worker row committed before that owner's claim
    was, so a run is never taken from a worker that holds it alive."""
    if not owners:
        return set()
    rows = conn.execute(
        "SELECT id FROM workers WHERE id = ANY(%s) AND expires_at > %s",
        (sorted(owners), wall - MAX_CLOCK_SKEW),
    ).fetchall()
    return {str(r[0]) for r in rows}


def queue_configs(conn: Conn) -> dict[str, QueueConfig]:
    """Every queue's limits, by name."""
    rows = conn.execute(f"SELECT {_QUEUE_COLS} FROM queues ORDER BY name").fetchall()
    return {r[0]: QueueConfig(*r) for r in rows}


def lock_queues(conn: Conn, names: Sequence[str]) -> None:
    """Serialize with every other session's claims and slots of these queues (sorted:
    sessions take the locks in one order, and so never deadlock on them)."""
    for name in sorted(names):
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"contengine.queue:{name}",))


def queue_room(
    conn: Conn, live: list[str], me: str, now: float, configs: dict[str, QueueConfig]
) -> tuple[dict[str, int], dict[str, int]]:
    """How many more runs each limited queue may have claimed now, and how many of
    them may be first starts (the rate limit counts starts, not resumptions)."""
    held: dict[str, int] = {}
    mine: dict[str, int] = {}
    for queue, owner, count in conn.execute(
        "SELECT queue, owner, count(*) FROM runs WHERE owner = ANY(%s) "
        # A cancelled run no longer counts: the queue's next run starts at once.
        f"AND queue IS NOT NULL AND status IN ({UNFINISHED_SQL}) AND cancel_requested = 0 "
        "GROUP BY queue, owner",
        (live,),
    ):
        held[queue] = held.get(queue, 0) + count
        if owner == me:
            mine[queue] = count
    room = room_left(configs, held, mine)
    starts: dict[str, int] = {}
    for name, q in configs.items():
        if q.rate_limit is not None and q.rate_period is not None:
            row = conn.execute(
                "SELECT count(*) FROM runs WHERE queue = %s AND claimed_at > %s",
                (name, now - q.rate_period),
            ).fetchone()
            starts[name] = q.rate_limit - (row[0] if row else 0)
    return room, starts


# Whether a claim of due runs would find nothing to take and nothing to write: the
# worker is on record, and no due run (not in skip) is free of a live owner. Read on
# its own, without locks: claim() looks again (and takes) only when this is false. The
# queues' limits are not looked at here; a due run they hold back leaves this false
# (the claim then finds nothing, as before). A worker whose lease ran out is judged as
# live_workers() judges it, the claimer itself always alive to itself.
NOTHING_TO_CLAIM = (
    "SELECT EXISTS (SELECT 1 FROM workers WHERE id = %s) AND NOT EXISTS (SELECT 1 FROM runs r "
    f"WHERE {DUE} <= %s "
    "AND r.id <> ALL(%s) AND (r.owner IS NULL OR NOT EXISTS (SELECT 1 FROM workers w "
    "WHERE w.id = r.owner AND (w.id = %s OR w.expires_at > %s))))"
)


def nothing_params(
    worker: WorkerRow, now: float, wall: float, skip: Collection[str]
) -> tuple[object, ...]:
    """NOTHING_TO_CLAIM's parameters."""
    return (worker.id, now, list(skip), worker.id, wall - MAX_CLOCK_SKEW)


def claim(
    conn: Conn,
    worker: WorkerRow,
    now: float,
    wall: float,
    limit: int,
    run_id: str | None,
    release: Sequence[tuple[str, int]],
    skip: Collection[str] = (),
) -> list[tuple[int, tuple[Any, ...]]]:
    """Lease runs to worker inside the caller's transaction: (lease, RUN_COLS row) pairs,
    in the order claimed."""
    me = worker.id
    if release:
        with conn.cursor() as cur:
            cur.executemany(
                "UPDATE runs SET owner = NULL WHERE id = %s AND owner = %s AND lease = %s",
                [(r, me, n) for r, n in release],
            )
    ensure_worker(conn, worker)
    if limit <= 0:
        return []
    configs = queue_configs(conn)
    lock_queues(conn, list(configs))
    live = live_workers(conn, me, wall)
    room, starts = queue_room(conn, live, me, now, configs)
    where = [f"status IN ({UNFINISHED_SQL})", "(owner IS NULL OR owner <> ALL(%(live)s))"]
    params: dict[str, object] = {"live": live, "limit": limit * 2 + 8}
    if run_id is not None:
        where.append("id = %(run_id)s")
        params["run_id"] = run_id
    else:
        # One range of the runs_due index: the runs due by now (those without a due
        # time among them). The status test stays, so that the planner may walk
        # runs_to_claim (whose predicate it is) when many runs are due.
        where.append(f"{DUE} <= %(now)s")
        params["now"] = now
    if skip:
        where.append("id <> ALL(%(skip)s)")
        params["skip"] = list(skip)
    full = [q for q, n in room.items() if n <= 0]
    if full:
        where.append("(queue IS NULL OR queue <> ALL(%(full)s))")
        params["full"] = full
    # A queue whose starts are used up may still resume its runs, but its unstarted runs
    # are left out here: otherwise they could fill the window and starve the rest.
    spent = [q for q, n in starts.items() if n <= 0]
    if spent:
        where.append("(queue IS NULL OR claimed_at IS NOT NULL OR queue <> ALL(%(spent)s))")
        params["spent"] = spent
    # A few more than asked for: some may be skipped for their queue's limits. Rows
    # another session is writing or claiming are skipped, not waited for.
    rows = conn.execute(
        f"SELECT num, queue, claimed_at, owner FROM runs WHERE {' AND '.join(where)} "
        "ORDER BY priority DESC, num LIMIT %(limit)s FOR UPDATE SKIP LOCKED",
        params,
    ).fetchall()
    alive_now = owners_alive(conn, {r[3] for r in rows if r[3] is not None}, wall)
    picked: list[int] = []
    for num, queue, claimed_at, owner in rows:
        if owner in alive_now:
            continue
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
        picked.append(int(num))
        if len(picked) >= limit:
            break
    if not picked:
        return []
    claimed = conn.execute(
        "UPDATE runs SET owner = %s, lease = lease + 1, claimed_at = coalesce(claimed_at, %s) "
        f"WHERE num = ANY(%s) RETURNING num, lease, {RUN_COLS}",
        (me, now, picked),
    ).fetchall()
    by_num = {int(r[0]): (int(r[1]), tuple(r[2:])) for r in claimed}
    return [by_num[num] for num in picked]


def check_lease(conn: Conn, run_id: str, owner: str, number: int) -> None:
    """LeaseLost unless the run is leased to owner with this lease number; the row stays
    locked to the end of the transaction (no claim can slip in before it commits)."""
    held = conn.execute(
        "SELECT owner, lease FROM runs WHERE id = %s FOR UPDATE", (run_id,)
    ).fetchone()
    if held is None or (held[0], held[1]) != (owner, number):
        raise lease_lost(run_id, (owner, number), None if held is None else (held[0], held[1]))


def take_slot(
    conn: Conn,
    queue: str,
    worker: WorkerRow,
    now: float,
    wall: float,
    lease: tuple[str, str, int] | None = None,
) -> int | None:
    """A slot of the queue for one step execution: its id (0 for a queue without
    limits), or None if the queue is full now; LeaseLost if the run (lease) is no
    longer leased so."""
    config = queue_configs(conn).get(queue)
    if config is None:
        return 0
    if lease is not None:
        check_lease(conn, *lease)
    lock_queues(conn, [queue])
    me = worker.id
    ensure_worker(conn, worker)
    live = live_workers(conn, me, wall)
    held = mine = 0
    for holder, count in conn.execute(
        "SELECT holder, count(*) FROM step_slots WHERE queue = %s AND NOT released "
        "AND holder = ANY(%s) GROUP BY holder",
        (queue, live),
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
            "DELETE FROM step_slots WHERE queue = %s AND released AND acquired_at <= %s",
            (queue, since),
        )
        row = conn.execute(
            "SELECT count(*) FROM step_slots WHERE queue = %s AND acquired_at > %s",
            (queue, since),
        ).fetchone()
        if row is not None and row[0] >= config.rate_limit:
            return None
    row = conn.execute(
        "INSERT INTO step_slots (queue, holder, acquired_at) VALUES (%s, %s, %s) RETURNING id",
        (queue, me, now),
    ).fetchone()
    return None if row is None else int(row[0])


def give_slot(conn: Conn, slot: int) -> None:
    """Let a slot go: kept (released) while a rate limit may still count it."""
    conn.execute(
        "UPDATE step_slots SET released = true WHERE id = %s AND queue IN "
        "(SELECT name FROM queues WHERE rate_limit IS NOT NULL)",
        (slot,),
    )
    conn.execute("DELETE FROM step_slots WHERE id = %s AND NOT released", (slot,))
