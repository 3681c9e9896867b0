"""Outcome: what a request ended with, as fed back to the workflow at its yield."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)  # not frozen: frozen instances cost several times more to make
class Outcome:
    """What a request ended with: a value, or an exception to raise at the yield."""

    ok: bool
    value: Any

    @staticmethod
    def returned(value: Any) -> Outcome:
        """The request produced value."""
        return Outcome(True, value)

    @staticmethod
    def raised(error: BaseException) -> Outcome:
        """The request failed with error."""
        return Outcome(False, error)
