"""The canonical text of request arguments by the plain walk (frozen: do not edit).

Keys in logs already written were made by this walk (core/canonical.py as it was
before its shortcuts for common arguments). The engine's own canonical_call takes
shortcuts; tests/test_keys.py checks that its text, and so every key it writes, is
byte-identical to this one's.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import hashlib
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


def key_of(text: str | None) -> str | None:
    """The text itself if short, else its hash."""
    if text is None or len(text) <= MAX_KEY:
        return text
    return "#" + hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
