"""Queue limits shared by every store: the room a queue has left, from counts of held runs."""

from __future__ import annotations

from .rows import QueueConfig


def room_left(
    configs: dict[str, QueueConfig], held: dict[str, int], mine: dict[str, int]
) -> dict[str, int]:
    """How many more runs each limited queue may have claimed now: its concurrency less
    the runs held by every live worker (held), and its worker concurrency less this
    worker's own (mine), whichever is less. Queues without either limit are left out."""
    room: dict[str, int] = {}
    for name, q in configs.items():
        if q.concurrency is not None:
            room[name] = q.concurrency - held.get(name, 0)
        if q.worker_concurrency is not None:
            left = q.worker_concurrency - mine.get(name, 0)
            room[name] = min(room.get(name, left), left)
    return room
