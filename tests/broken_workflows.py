"""A corpus of deliberately broken workflows, each with one defect that breaks replay.

Every entry of DEFECTS says what is wrong (`cause`), how to run it (`workflow`, `args`)
and what should catch it:

* `lint_rule`: the rule `ce.testing.lint` names for the defective code (the redeployed
  version for a code change), or None where the source alone cannot show the defect.
* `redeployed`: for a code change between two versions, the new code (v2). The recorded
  version (v1, `workflow`) is registered with @ce.workflow(name=...); v2 has the same name
  but is left out of the registry, which refuses a second function under one name. Record
  runs with v1, then replay them with `ce.Engine(path, workflows=[v2])` (or hand v2 to the
  replay checker): every such run must be reported as diverging.

The first eight are broken on their own: running them again, in another process or at
another time, takes another path. The last four are code changes a deploy makes under
runs already in flight.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import contengine as ce

Flow = Generator[Any, Any, Any]

FEATURE_ENV = "CONTENGINE_BROKEN_FEATURE"
CONFIG_FILE = os.path.join(tempfile.gettempdir(), "contengine-broken-config.txt")
DEADLINE = 1_900_000_000.0  # a fixed moment (2030), from which a timeout is computed


@ce.step
def record(label: str) -> str:
    """Return the label: a step that does nothing but show up in the log."""
    return label


@ce.step(name="broken.charge")
def charge(order_id: str, cents: int) -> str:
    """Pretend to charge a card."""
    return f"receipt-{order_id}-{cents}"


@ce.step
def reserve(order_id: str) -> str:
    """Pretend to reserve stock."""
    return f"hold-{order_id}"


@ce.step(name="broken.fraud_check")
def fraud_check(order_id: str) -> bool:
    """Pretend to ask a fraud service."""
    return True


# -- broken on their own -----------------------------------------------------------------------


@ce.workflow(name="broken.wall_clock")
def wall_clock() -> Flow:
    """Branches on the wall clock: a replay in the afternoon takes the other branch."""
    if time.time() % 86400 < 43200:
        return (yield record("morning"))
    return (yield record("evening"))


@ce.workflow(name="broken.coin_flip")
def coin_flip() -> Flow:
    """Branches on random.random(): a replay flips again."""
    if random.random() < 0.5:
        return (yield record("heads"))
    return (yield record("tails"))


@ce.workflow(name="broken.set_order")
def set_order() -> Flow:
    """Runs a step per tag in set order, which changes with PYTHONHASHSEED."""
    done = []
    for tag in {"red", "green", "blue", "amber", "violet"}:
        done.append((yield record(tag)))
    return done


@ce.workflow(name="broken.env_flag")
def env_flag() -> Flow:
    """Branches on an environment variable, which another process may not have."""
    if os.environ.get(FEATURE_ENV) == "on":
        return (yield record("new path"))
    return (yield record("old path"))


RUNS = 0


@ce.workflow(name="broken.global_counter")
def global_counter() -> Flow:
    """Counts its executions in a module global, which survives between runs and replays."""
    global RUNS
    RUNS += 1
    if RUNS == 1:
        return (yield record("first time"))
    return (yield record("seen before"))


@ce.workflow(name="broken.hash_shard")
def hash_shard(customer: str) -> Flow:
    """Picks a shard by hash() of a string, which changes with PYTHONHASHSEED."""
    shard = hash(customer) % 8
    return (yield record(f"shard-{shard}"))


@ce.workflow(name="broken.file_contents")
def file_contents(path: str) -> Flow:
    """Branches on a file's contents, read again (and maybe changed) on replay."""
    try:
        with open(path, encoding="utf-8") as f:
            mode = f.read().strip()
    except FileNotFoundError:
        mode = "absent"
    return (yield record(f"mode {mode}"))


@ce.workflow(name="broken.mutable_default")
def mutable_default(item: str, seen: list[str] = []) -> Flow:  # noqa: B006 - the defect
    """Keeps items in a default list that every run and every replay shares."""
    seen.append(item)
    for label in seen:
        yield record(label)
    return len(seen)


# -- code changed between versions -------------------------------------------------------------


def redeployed(
    v1: ce.Workflow[..., Any],
) -> Callable[[Callable[..., Flow]], ce.Workflow[..., Any]]:
    """New code for v1's name, kept out of the registry (pass it to Engine(workflows=[...]))."""

    def decorate(fn: Callable[..., Flow]) -> ce.Workflow[..., Any]:
        return ce.Workflow(fn, v1.name)

    return decorate


@ce.workflow(name="broken.step_order")
def step_order_v1(order_id: str) -> Flow:
    """Reserves, then charges."""
    hold = yield reserve(order_id)
    receipt = yield charge(order_id, 500)
    return [hold, receipt]


@redeployed(step_order_v1)
def step_order_v2(order_id: str) -> Flow:
    """Charges, then reserves: the steps swapped places."""
    receipt = yield charge(order_id, 500)
    hold = yield reserve(order_id)
    return [hold, receipt]


@ce.workflow(name="broken.step_args")
def step_args_v1(order_id: str, cents: int) -> Flow:
    """Charges the price."""
    return (yield charge(order_id, cents))


@redeployed(step_args_v1)
def step_args_v2(order_id: str, cents: int) -> Flow:
    """Charges the price with tax: the step's arguments changed."""
    return (yield charge(order_id, cents + cents // 5))


@ce.workflow(name="broken.step_added")
def step_added_v1(order_id: str) -> Flow:
    """Reserves, then charges."""
    hold = yield reserve(order_id)
    receipt = yield charge(order_id, 500)
    return [hold, receipt]


@redeployed(step_added_v1)
def step_added_v2(order_id: str) -> Flow:
    """Reserves, checks for fraud, then charges: a step was added in the middle."""
    hold = yield reserve(order_id)
    yield fraud_check(order_id)
    receipt = yield charge(order_id, 500)
    return [hold, receipt]


@ce.workflow(name="broken.real_time_timeout")
def real_time_timeout_v1(order_id: str) -> Flow:
    """Waits an hour for approval."""
    try:
        return (yield ce.wait("approved", timeout=3600))
    except ce.Timeout:
        return (yield record(f"{order_id} expired"))


@redeployed(real_time_timeout_v1)
def real_time_timeout_v2(order_id: str) -> Flow:
    """Waits until DEADLINE, its timeout computed from the wall clock: another on replay."""
    try:
        return (yield ce.wait("approved", timeout=max(DEADLINE - time.time(), 0)))
    except ce.Timeout:
        return (yield record(f"{order_id} expired"))


# -- the index ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Defect:
    """One broken workflow (or a pair of versions) and what should catch it."""

    name: str
    cause: str
    workflow: ce.Workflow[..., Any]
    args: tuple[Any, ...] = ()
    lint_rule: str | None = None
    redeployed: ce.Workflow[..., Any] | None = None

    @property
    def code(self) -> ce.Workflow[..., Any]:
        """The defective code: the redeployed version of a pair, else the workflow."""
        return self.redeployed or self.workflow


DEFECTS: list[Defect] = [
    Defect("wall_clock", "branch on the wall clock (time.time())", wall_clock, (), "time"),
    Defect("coin_flip", "branch on random.random()", coin_flip, (), "random"),
    Defect("set_order", "steps in set iteration order", set_order, (), "set-order"),
    Defect("env_flag", "branch on an environment variable", env_flag, (), "environ"),
    Defect("global_counter", "branch on a global counter", global_counter, (), "global-state"),
    Defect("hash_shard", "step argument from hash() of a str", hash_shard, ("ada",), "hash"),
    Defect("file_contents", "branch on a file's contents", file_contents, (CONFIG_FILE,), "io"),
    Defect(
        "mutable_default",
        "a mutable default argument shared by runs",
        mutable_default,
        ("x",),
        "mutable-default",
    ),
    Defect(
        "step_order",
        "two steps swapped between versions",
        step_order_v1,
        ("o-1",),
        redeployed=step_order_v2,
    ),
    Defect(
        "step_args",
        "a step's arguments changed between versions",
        step_args_v1,
        ("o-1", 500),
        redeployed=step_args_v2,
    ),
    Defect(
        "step_added",
        "a step added in the middle between versions",
        step_added_v1,
        ("o-1",),
        redeployed=step_added_v2,
    ),
    Defect(
        "real_time_timeout",
        "a wait's timeout computed from the wall clock",
        real_time_timeout_v1,
        ("o-1",),
        "time",
        redeployed=real_time_timeout_v2,
    ),
]

LINT_FLAGGED = [d for d in DEFECTS if d.lint_rule is not None]
PAIRS = [d for d in DEFECTS if d.redeployed is not None]
