"""Workflows the dashboard's tests run: in the test process, and imported by the
`contengine serve` and `contengine worker` processes they start (--import dashboard_flows)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import contengine as ce


class CardDeclined(Exception):
    """A payment error of the application's own (decoded only where this module imports)."""


@ce.step(name="dashflows.charge")
def charge(order: str) -> str:
    """Charges an order; an order named bad-... is declined."""
    if order.startswith("bad"):
        raise CardDeclined(f"card declined for {order}")
    return f"charged {order}"


@ce.workflow(name="dashflows.order")
def order(name: str) -> Generator[Any, Any, str]:
    """Charges, publishes its stage, and waits for an approval if its name says so."""
    charged = yield charge(name)
    yield ce.publish("stage", f"charged {name}")
    if name.startswith("wait"):
        approver = yield ce.wait("approve")
        return f"{charged}, approved by {approver}"
    return charged


@ce.workflow(name="dashflows.parent")
def parent(name: str) -> Generator[Any, Any, str]:
    """Runs an order as a child run."""
    return (yield order(f"wait-{name}"))
