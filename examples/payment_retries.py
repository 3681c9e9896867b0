"""Retries with exponential backoff, made safe by an idempotency key.

What this teaches
-----------------
* A step with ``retries`` and a ``ce.Backoff`` is tried again after a failure,
  waiting longer each time (here 0.05 s, then 0.1 s, to keep the example fast).
* Retrying is only safe if a repeat cannot do the work twice. The fake payment
  gateway below times out *after* charging the card on the first attempt -- the
  worst kind of failure, since the caller cannot tell whether the charge happened.
  The step passes ``ce.current_step().idempotency_key`` (run id + position, the
  same on every attempt and after a crash), so the gateway recognises the repeat
  and returns the first charge instead of making a second one.

Run it::

    python examples/payment_retries.py

What to watch for in the output
-------------------------------
* The gateway's own request log: three attempts with the same key, spaced by the
  backoff; attempt 1 charged and then timed out, attempt 3 returned that charge.
* ``charges made: 1`` -- the customer paid once, although the step ran three times.
* The engine's log entry for the step: ``attempts=3`` and the last error it saw.
* At the end, the same two calls without the key: the customer is charged twice.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import contengine as ce


class GatewayError(Exception):
    """A transient failure talking to the payment gateway: worth retrying."""


class GatewayTimeout(GatewayError):
    """The gateway did not answer in time (it may or may not have charged)."""


class GatewayUnavailable(GatewayError):
    """The gateway refused the request before doing anything."""


@dataclass
class FakeGateway:
    """An in-memory payment API that misbehaves like a real one, on a script."""

    # What happens on each call, in order; afterwards every call succeeds.
    script: list[str] = field(default_factory=list)
    charges: dict[str, tuple[str, int]] = field(default_factory=dict)  # charge id -> (who, cents)
    by_key: dict[str, str] = field(default_factory=dict)  # idempotency key -> charge id
    requests: list[str] = field(default_factory=list)  # the gateway's own request log
    started: float = field(default_factory=time.monotonic)

    def charge(self, customer: str, cents: int, idempotency_key: str | None = None) -> str:
        """Charge the customer; a known idempotency key returns the earlier charge."""
        behaviour = self.script.pop(0) if self.script else "ok"
        t = time.monotonic() - self.started
        self.requests.append(f"t={t:5.3f}s key={idempotency_key} -> {behaviour}")
        if behaviour == "unavailable":
            raise GatewayUnavailable("503 Service Unavailable")
        if idempotency_key is not None and idempotency_key in self.by_key:
            return self.by_key[idempotency_key]  # a repeat: no new charge
        charge_id = f"ch_{len(self.charges) + 1}"
        self.charges[charge_id] = (customer, cents)
        if idempotency_key is not None:
            self.by_key[idempotency_key] = charge_id
        if behaviour == "timeout-after-charging":
            raise GatewayTimeout("no answer within 10 s (the card was charged anyway)")
        return charge_id


gateway = FakeGateway(script=["timeout-after-charging", "unavailable"])


# The durable-execution idea lives in these two lines. The engine logs this step
# as in flight before it runs and records its outcome only when it returns, so
# any attempt may be a repeat of one that did its work and then failed (or whose
# process died). The idempotency key is the same for every attempt of this step
# in this run -- also after a crash -- so the gateway can make repeats harmless.
@ce.step(retries=4, backoff=ce.Backoff(initial=0.05, factor=2.0, cap=1.0), retry_on=GatewayError)
def charge_card(customer: str, cents: int) -> str:
    """Charge the card through the gateway, safely repeatable."""
    key = ce.current_step().idempotency_key
    return gateway.charge(customer, cents, idempotency_key=key)


@ce.step
def email_receipt(customer: str, charge_id: str) -> str:
    """Send the receipt (here: just build its text)."""
    return f"receipt for {charge_id} sent to {customer}"


@ce.workflow(name="checkout")
def checkout(customer: str, cents: int) -> Generator[Any, Any, str]:
    """Charge the customer, then email a receipt."""
    # To the workflow, the retries are invisible: the yield returns once, with the
    # charge id of the attempt that succeeded.
    charge_id = yield charge_card(customer, cents)
    receipt: str = yield email_receipt(customer, charge_id)
    return receipt


def main() -> None:
    """Check out once, show who was charged how often, and what the log says."""
    engine = ce.Engine(":memory:")
    receipt = engine.run(checkout, "ada@example.com", 4200, id="order-1001")
    print(f"result: {receipt}")

    print("\nthe gateway's request log:")
    for line in gateway.requests:
        print(f"  {line}")
    print(f"\ncharges made: {len(gateway.charges)}")
    for charge_id, (who, cents) in gateway.charges.items():
        print(f"  {charge_id}: {who} paid {cents / 100:.2f}")

    print("\nthe engine's log:")
    for entry in engine.history("order-1001"):
        print(f"  {entry.position}  {entry.name}: {entry.status}, attempts={entry.attempts}")
        if entry.error_text:  # the last failed attempt's traceback; show its last line
            print(f"       last error: {entry.error_text.strip().splitlines()[-1]}")

    print("\nwithout the key, the same two calls charge twice:")
    careless = FakeGateway(script=["timeout-after-charging"])
    for _ in range(2):
        with contextlib.suppress(GatewayError):
            careless.charge("ada@example.com", 4200)
    print(f"  charges made: {len(careless.charges)}")

    assert len(gateway.charges) == 1
    assert engine.history("order-1001")[0].attempts == 3


if __name__ == "__main__":
    main()
