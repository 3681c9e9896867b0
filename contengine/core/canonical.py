"""Canonical text of request arguments: stable across processes, readable in a diff.

Replay compares a request's arguments with the logged ones only where that
comparison means something. JSON-like data (None, bool, int, float, str, bytes,
lists, tuples, dicts, sets) and a few value types (enums, dataclasses, dates,
decimals, UUIDs) have one canonical text no matter how they were built: dict keys
and set members are sorted, so insertion order and PYTHONHASHSEED do not matter.
Anything else (an arbitrary object, a function, a file) has no stable text, and its
request is compared by kind and name only.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import hashlib
import reprlib
import uuid
from collections.abc import Mapping
from typing import Any

# Keys longer than this are stored as a hash; the readable text is kept apart.
MAX_KEY = 200
MAX_TEXT = 300


# Types whose repr() is already their canonical text.
SCALARS = frozenset({int, str, bytes, float, bool, type(None)})


class _NotCanonical(Exception):
    pass


def _enc(value: Any, out: list[str]) -> None:
    t = type(value)
    if t is str or t is int or t is bytes or t is float or t is bool or value is None:
        out.append(repr(value))
    elif t is list or t is tuple:
        for item in value:
            if type(item) not in SCALARS:
                break
        else:  # only plain items (the usual small tuple): the walk's text, without the walk
            text = ", ".join(map(repr, value))
            if t is list:
                out.append(f"[{text}]")
            else:
                out.append(f"({text},)" if len(value) == 1 else f"({text})")
            return
        out.append("[" if t is list else "(")
        for i, item in enumerate(value):
            if i:
                out.append(", ")
            _enc(item, out)
        out.append("]" if t is list else ",)" if len(value) == 1 else ")")
    elif t is dict:
        parts = []
        for k, v in value.items():
            kp: list[str] = []
            _enc(k, kp)
            vp: list[str] = []
            _enc(v, vp)
            parts.append(("".join(kp), "".join(vp)))
        parts.sort()
        out.append("{" + ", ".join(f"{k}: {v}" for k, v in parts) + "}")
    elif t is set or t is frozenset:
        members = []
        for m in value:
            mp: list[str] = []
            _enc(m, mp)
            members.append("".join(mp))
        members.sort()
        out.append(("{" if t is set else "frozenset({") + ", ".join(members))
        out.append("}" if t is set else "})")
        if not members:
            out[-2:] = ["set()" if t is set else "frozenset()"]
    elif isinstance(value, enum.Enum):
        out.append(f"{t.__qualname__}.{value.name}")
    elif isinstance(value, datetime.datetime | datetime.date | datetime.time):
        out.append(f"{t.__name__}({value.isoformat()!r})")
    elif isinstance(value, datetime.timedelta):
        out.append(f"timedelta({value.total_seconds()!r})")
    elif t is decimal.Decimal or t is uuid.UUID:
        out.append(f"{t.__name__}({str(value)!r})")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        out.append(t.__qualname__ + "(")
        for i, f in enumerate(dataclasses.fields(value)):
            if i:
                out.append(", ")
            out.append(f.name + "=")
            _enc(getattr(value, f.name), out)
        out.append(")")
    else:
        raise _NotCanonical


def canonical_call(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str | None:
    """The canonical text of a call's arguments, or None when they have none."""
    out: list[str] = []
    try:
        if not kwargs:
            if len(args) == 1 and type(args[0]) in SCALARS:
                return repr(args[0])  # the most common case of all: one plain argument
            for a in args:
                if type(a) not in SCALARS:
                    break
            else:
                return ", ".join(map(repr, args))  # the common case, without the walk
        else:
            for a in args:
                if type(a) not in SCALARS:
                    break
            else:
                for v in kwargs.values():
                    if type(v) not in SCALARS:
                        break
                else:  # plain values by position and by name: the walk's text, without it
                    named = [f"{k}={kwargs[k]!r}" for k in sorted(kwargs)]
                    return ", ".join([*map(repr, args), *named])
        for i, a in enumerate(args):
            if i:
                out.append(", ")
            _enc(a, out)
        for i, k in enumerate(sorted(kwargs)):
            if i or args:
                out.append(", ")
            out.append(k + "=")
            _enc(kwargs[k], out)
    except Exception:  # _NotCanonical, RecursionError, or a repr() that refuses (huge ints)
        return None
    return "".join(out)


_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60
_short.maxlist = _short.maxtuple = _short.maxdict = _short.maxset = 8


def display_call(args: tuple[Any, ...], kwargs: Mapping[str, Any], text: str | None) -> str:
    """Readable, bounded text of a call's arguments for logs and diffs."""
    if text is not None and len(text) <= MAX_TEXT:
        return text
    parts = [_safe_repr(a) for a in args] + [f"{k}={_safe_repr(v)}" for k, v in kwargs.items()]
    joined = ", ".join(parts)
    return joined if len(joined) <= MAX_TEXT else joined[: MAX_TEXT - 3] + "..."


def _safe_repr(value: Any) -> str:
    try:
        return _short.repr(value)
    except Exception:  # a broken __repr__ must not stop a run
        return f"<{type(value).__name__}>"


def key_of(text: str | None) -> str | None:
    """The comparison key stored in the log: the text itself if short, else its hash."""
    if text is None or len(text) <= MAX_KEY:
        return text
    return "#" + hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
