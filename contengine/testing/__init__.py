"""Tools for testing workflows: a virtual clock that jumps straight to the next timer."""

from .clock import VirtualClock

__all__ = ["VirtualClock"]
