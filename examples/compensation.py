"""A saga: when a later step fails for good, undo the earlier ones with compensating steps.

What this teaches
-----------------
* When a step's retries run out, the step's own exception -- of its own type -- is
  raised inside the workflow at the ``yield``. So an ordinary ``try/except
  ShippingUnavailable`` decides what happens next.
* Compensations are ordinary steps (release the stock, refund the card), run in
  reverse order. They are logged like any other step: if the process dies while
  undoing, a restart replays the failure from the log, takes the same ``except``
  branch and carries on with the compensation that was in flight (which may
  then run a second time, so compensations should be safe to repeat too).
* Calling a step only builds a request; nothing runs until it is yielded. That is
  what lets the workflow prepare each undo as soon as the matching do has happened.

Run it::

    python examples/compensation.py

What to watch for in the output
-------------------------------
* order-1 (to Lisbon) ships; its log has three completed steps and no compensation.
* order-2 (to Atlantis) cannot ship: ``ship_parcel`` fails after 3 attempts, the workflow
  catches ``ShippingUnavailable`` and runs ``refund`` then ``release_stock``.
* At the end, the stock and the customer's balance are back where they started for
  order-2: nothing is left half done.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import contengine as ce

stock = {"lamp": 5}
balances = {"ada": 10_000}  # cents
holds: dict[str, tuple[str, int]] = {}  # hold id -> (item, quantity)
payments: dict[str, tuple[str, int]] = {}  # payment id -> (customer, cents)


class OutOfStock(Exception):
    """Not enough of the item to reserve."""


class ShippingUnavailable(Exception):
    """No carrier delivers to this address."""


@ce.step
def reserve_stock(item: str, quantity: int) -> str:
    """Take items off the shelf; returns a hold id."""
    if stock[item] < quantity:
        raise OutOfStock(item)
    stock[item] -= quantity
    hold_id = f"hold-{len(holds) + 1}"
    holds[hold_id] = (item, quantity)
    return hold_id


@ce.step
def release_stock(hold_id: str) -> None:
    """Compensation for reserve_stock: put the items back."""
    item, quantity = holds.pop(hold_id)
    stock[item] += quantity


@ce.step
def charge_customer(customer: str, cents: int) -> str:
    """Take the money; returns a payment id."""
    balances[customer] -= cents
    payment_id = f"pay-{len(payments) + 1}"
    payments[payment_id] = (customer, cents)
    return payment_id


@ce.step
def refund(payment_id: str) -> None:
    """Compensation for charge_customer: give the money back."""
    customer, cents = payments.pop(payment_id)
    balances[customer] += cents


@ce.step(retries=2, backoff=0.01)
def ship_parcel(item: str, city: str) -> str:
    """Book a carrier; some cities cannot be reached, however often we ask."""
    if city == "Atlantis":
        raise ShippingUnavailable(f"no carrier delivers to {city}")
    return f"parcel of {item} to {city}"


@ce.workflow(name="place_order")
def place_order(customer: str, item: str, cents: int, city: str) -> Generator[Any, Any, str]:
    """Reserve, charge, ship; if shipping is impossible, undo in reverse order."""
    undo: list[ce.StepCall[Any]] = []
    try:
        hold_id = yield reserve_stock(item, 1)
        undo.append(release_stock(hold_id))  # a request, not run yet
        payment_id = yield charge_customer(customer, cents)
        undo.append(refund(payment_id))
        parcel = yield ship_parcel(item, city)
    except ShippingUnavailable as exc:
        # ship_parcel's retries ran out: its own exception arrives here, type and all.
        # A loop, not `yield from`: each yield gets the step's result sent back,
        # and a list iterator cannot take it.
        for compensation in reversed(undo):  # noqa: UP028
            yield compensation
        return f"cancelled ({type(exc).__name__}: {exc})"
    return f"shipped: {parcel}"


def print_log(engine: ce.Engine, run_id: str) -> None:
    """One line per logged step: position, call, status, attempts."""
    for e in engine.history(run_id):
        outcome = f"raised {type(e.error).__name__}" if e.error else f"-> {e.value!r}"
        print(f"  {e.position}  {e.name}({e.text}) {outcome}  [{e.status}, attempts={e.attempts}]")


def main() -> None:
    """Place one order that ships and one that must be undone."""
    engine = ce.Engine(":memory:")
    for run_id, city in (("order-1", "Lisbon"), ("order-2", "Atlantis")):
        before = (stock["lamp"], balances["ada"])
        result = engine.run(place_order, "ada", "lamp", 2500, city, id=run_id)
        print(f"{run_id} to {city}: {result}")
        print_log(engine, run_id)
        print(f"  stock {before[0]} -> {stock['lamp']}, balance {before[1]} -> {balances['ada']}")
        print()

    assert stock["lamp"] == 4 and balances["ada"] == 7_500  # only order-1 went through
    assert holds == {"hold-1": ("lamp", 1)} and payments == {"pay-1": ("ada", 2500)}


if __name__ == "__main__":
    main()
