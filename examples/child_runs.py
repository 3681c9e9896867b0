"""Child runs: an order prices its items in a child run and ships them in another.

What this teaches
-----------------
* Calling a workflow inside a workflow, ``total = yield price_all(items)``, starts
  a *child run*: a run of its own, with its own log, whose id is the parent's id
  and the position of the call (``order-1/0``). The parent waits; the child's
  result comes back at the ``yield``.
* An exception that ends the child comes back at the parent's ``yield`` with its
  own type, so an ordinary ``except UnknownItem:`` handles it.
* ``handle = yield ce.start_child(ship, ...)`` starts a child without waiting:
  the parent carries on at once (here: it sends the confirmation email) and
  ``parcel = yield handle`` waits for the child's result later.
* A child is a run like any other: it can wait for a signal sent to its own id,
  and it survives a restart. A new process finishes the child and then the
  parent by replaying their logs; no step that finished runs again.

Run it::

    python examples/child_runs.py

What to watch for in the output
-------------------------------
* Order 1: the items are priced in ``order-1/0``, the card is charged, and the
  email goes out *before* the courier is booked in ``order-1/2``: start_child
  did not wait. The first process stops with the parent waiting at its ``join``
  and the shipping child waiting for the courier's confirmation.
* The next process sends the confirmation to ``order-1/2``. It runs exactly one
  step (recording the delivery); the parent then completes without pricing or
  charging again.
* Order 2 has an item that is not for sale: its pricing child fails with
  ``UnknownItem`` and the parent catches it by type and rejects the order.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Generator
from typing import Any

import contengine as ce

CATALOG = {"lamp": 4500, "rug": 12000, "vase": 2500}  # prices in cents
EXECUTED: list[str] = []  # every step this process ran


class UnknownItem(Exception):
    """An item that is not in the catalog."""


def say(text: str) -> None:
    """Print a line tagged with the run the current step belongs to."""
    print(f"  [{ce.current_step().run_id}] {text}")


@ce.step
def price(item: str) -> int:
    """Look up the price of one item (UnknownItem if it is not for sale)."""
    EXECUTED.append("price")
    if item not in CATALOG:
        say(f"pricing {item}: not in the catalog")
        raise UnknownItem(item)
    say(f"pricing {item}: {CATALOG[item] / 100:.2f}")
    return CATALOG[item]


@ce.step
def take_payment(order_id: str, cents: int) -> str:
    """Charge the customer's card."""
    EXECUTED.append("charge")
    say(f"charging {cents / 100:.2f}")
    return f"receipt-{order_id}"


@ce.step
def send_email(order_id: str, text: str) -> None:
    """Tell the customer."""
    EXECUTED.append("send_email")
    say(f"email to the customer of {order_id}: {text}")


@ce.step
def book_courier(order_id: str, address: str) -> str:
    """Book a courier; returns the parcel's tracking number."""
    EXECUTED.append("book_courier")
    say(f"booking a courier to {address}")
    return f"parcel-{order_id}"


@ce.step
def record_delivery(parcel: str, signed_by: str) -> None:
    """Note the delivery in the books."""
    EXECUTED.append("record_delivery")
    say(f"{parcel} delivered, signed by {signed_by}")


@ce.workflow(name="orders.price_all")
def price_all(items: list[str]) -> Generator[Any, Any, int]:
    """A child run: price every item and return the total in cents."""
    total = 0
    for item in items:
        total += yield price(item)
    return total


@ce.workflow(name="orders.ship")
def ship(order_id: str, address: str) -> Generator[Any, Any, str]:
    """A child run: book a courier, then wait for the courier to confirm the delivery."""
    parcel: str = yield book_courier(order_id, address)
    proof = yield ce.wait("delivered")
    yield record_delivery(parcel, proof["signed_by"])
    return parcel


@ce.workflow(name="orders.checkout")
def checkout(order_id: str, items: list[str], address: str) -> Generator[Any, Any, Any]:
    """Price the items (waiting for the child), charge, ship (not waiting), email, join."""
    try:
        total = yield price_all(items)
    except UnknownItem as exc:  # the child's own exception type
        return f"rejected: {exc} is not for sale"
    receipt = yield take_payment(order_id, total)
    shipping = yield ce.start_child(ship, order_id, address)
    yield send_email(order_id, f"paid {total / 100:.2f}, shipping under way")
    parcel = yield shipping
    return {"total": total, "receipt": receipt, "parcel": parcel}


def show_runs(engine: ce.Engine) -> None:
    """Print every run in the database: parents and their children."""
    print("  runs in the database:")
    for run in engine.runs():
        print(f"    {run.id:<11} {run.workflow:<17} {run.status}")


def show_log(engine: ce.Engine, run_id: str) -> None:
    """Print a run's log, one entry per line."""
    print(f"  log of {run_id}:")
    for entry in engine.history(run_id):
        what = entry.describe()
        if len(what) > 64:
            what = what[:60] + "...)"
        print(f"    {entry.position}  {what} [{entry.status}]")


def main() -> None:
    """Two orders; the first one is finished by a second process."""
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "orders.db")

        print("Order 1: a lamp and a rug to Lisbon (first process)")
        with ce.Engine(db) as engine:
            engine.start(checkout, "order-1", ["lamp", "rug"], "Lisbon", id="order-1")
            engine.run_until_idle()
            show_runs(engine)
            show_log(engine, "order-1")
            handle = engine.history("order-1")[2].value
            print(f"  the start_child entry holds the handle {handle!r}")

        print("\nA new process: the courier confirms the delivery to the child run")
        EXECUTED.clear()
        with ce.Engine(db) as engine:
            engine.signal(handle.run_id, "delivered", {"signed_by": "Rui"})
            engine.run_until_idle()
            print(f"  order-1 is {engine.get_run('order-1').status}:")
            print(f"    {engine.get_run('order-1').result()}")
            print(f"  steps this process ran: {EXECUTED}")

        print("\nOrder 2: a lamp and a unicorn")
        with ce.Engine(db) as engine:
            result = engine.run(checkout, "order-2", ["lamp", "unicorn"], "Porto", id="order-2")
            print(f"  order-2 is {engine.get_run('order-2').status}: {result!r}")
            child = engine.get_run("order-2/0")
            error = engine.history("order-2")[0].error
            print(f"  its pricing child order-2/0 is {child.status}")
            print(f"  the parent's entry for it: {type(error).__name__}({error})")


if __name__ == "__main__":
    main()
