"""A step call's arguments bound to the step's signature, so one request has one key.

`charge("o-1", 500)` and `charge("o-1", cents=500)` ask for the same thing. Replay
compares requests by the canonical text of their arguments, so the text is made
from the arguments bound to the step's parameters: whatever was passed for a
parameter that can be given by position is written by position, the rest by name.
Defaults are not filled in: the key holds what the workflow passed, and a default
belongs to the step's code, which replay does not compare.

Logs written before arguments were bound hold them as they were written. Such a
call is one of a few spellings of the bound call (the first k positional arguments
by position, the rest by name), so `spellings()` lets replay accept a logged key
that matches any of them, even one stored as a hash.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def signature_of(fn: Callable[..., Any]) -> inspect.Signature | None:
    """fn's signature, or None when it has none that Python can read (some builtins)."""
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


class Binder:
    """Binds calls to one signature; made once per step, used for every call with keywords."""

    __slots__ = ("sig", "_positional", "_posonly", "_names", "_var_keyword")

    def __init__(self, sig: inspect.Signature | None) -> None:
        self.sig = sig
        params = list(sig.parameters.values()) if sig is not None else []
        leading = []
        for p in params:
            if p.kind not in _POSITIONAL:
                break
            leading.append(p)
        # The parameters a value may be given for by position, in order.
        self._positional = tuple(p.name for p in leading)
        self._posonly = frozenset(p.name for p in leading if p.kind is p.POSITIONAL_ONLY)
        varying = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        self._names = frozenset(p.name for p in params if p.kind not in varying)
        self._var_keyword = any(p.kind is p.VAR_KEYWORD for p in params)

    def bind(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The call's arguments as bound to the signature: by position wherever possible.

        The same as `sig.bind(...)`'s args and kwargs, at a fraction of its cost for the
        usual call; a call that does not fit is left as written (it fails when the step
        runs).
        """
        if not kwargs or self.sig is None:
            return args, kwargs  # nothing to move: positional arguments stay as they are
        positional = self._positional
        if len(args) > len(positional) or not self._posonly.isdisjoint(kwargs):
            return self._slow(args, kwargs)
        moved = list(args)
        rest = dict(kwargs)
        for name in positional[len(args) :]:
            if name not in rest:
                break
            moved.append(rest.pop(name))
        for name in rest:
            if name in positional or (name not in self._names and not self._var_keyword):
                return self._slow(args, kwargs)  # a gap before it, or a name it lacks
        return tuple(moved), rest

    def _slow(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        try:
            bound = self.sig.bind(*args, **kwargs)  # type: ignore[union-attr]
        except TypeError:
            return args, kwargs
        return bound.args, bound.kwargs

    def spellings(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
        """Every way of writing this call: the first k bound positional arguments by
        position and the rest by name, k from all of them down to the first that must
        be positional."""
        args, kwargs = self.bind(args, kwargs)
        yield args, kwargs
        positional = self._positional
        named: dict[str, Any] = {}
        for j in range(min(len(args), len(positional)) - 1, -1, -1):
            name = positional[j]
            if name in self._posonly or name in kwargs or j != len(args) - 1 - len(named):
                return  # positional-only, or a value of *args: by position only
            named = {name: args[j], **named}
            yield args[:j], {**named, **kwargs}
