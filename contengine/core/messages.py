"""Requests that reach outside the run: `ce.send` signals another run.

A send is answered at once, like ce.publish: its log entry and the message it puts in
the target's mailbox are written in one transaction, so a crash leaves both or neither,
and a replay takes the logged answer instead of sending again (delivered once).
"""

from __future__ import annotations

from typing import Any, ClassVar

from .canonical import canonical_call, display_call, key_of
from .ids import checked_ref, refuse_nul
from .requests import Immediate


class SendRequest(Immediate):
    """Put a signal in another run's mailbox, durably and once."""

    __slots__ = ("target", "signal", "payload", "_canon")
    kind: ClassVar[str] = "send"

    def __init__(self, run_id: str, name: str, payload: Any) -> None:
        checked_ref(run_id)
        if not isinstance(name, str) or not name:
            raise ValueError(f"a signal name must be a non-empty string, not {name!r}")
        refuse_nul(name, "the signal name")
        self.target = run_id
        self.signal = name
        self.payload = payload
        self._canon: str | None | bool = False

    @property
    def name(self) -> str:
        return self.signal

    def _canonical(self) -> str | None:
        if self._canon is False:
            self._canon = canonical_call((self.target, self.payload), {})
        return self._canon  # type: ignore[return-value]

    @property
    def key(self) -> str | None:
        return key_of(self._canonical())

    @property
    def text(self) -> str:
        return display_call((self.target, self.payload), {}, self._canonical())


def send(run_id: str, name: str, payload: Any = None) -> SendRequest:
    """`yield ce.send(run_id, name, payload)`: signal another run, delivered exactly once."""
    return SendRequest(run_id, name, payload)
