"""Serialization of values, results and exceptions: pickle where it can, dill for the rest."""

from __future__ import annotations

import hashlib
import hmac
import pickle
import traceback
from collections.abc import Callable
from typing import Any

import dill

from ..errors import CorruptPayload, SerializationError, StepFailed
from .moved import read_moved

# What a value is, for error messages: a string, or a function that makes one
# (so the hot path never formats a message it will not need).
What = str | Callable[[], str]


def _say(what: What) -> str:
    return what if isinstance(what, str) else what()


# One tag byte says how a payload was written. The standard pickler (C speed)
# handles plain data; dill handles the rest of Python (lambdas, closures, local
# classes). Both read back with the same call, so the choice never leaks out.
_PICKLE = b"P"
_DILL = b"D"
_SIGNED = b"S"
_SIG_LEN = 32
_PICKLE_TAG, _DILL_TAG, _SIGNED_TAG = _PICKLE[0], _DILL[0], _SIGNED[0]
# Payloads up to this long are sliced (a copy, cheaper than a view at this size);
# longer ones are read through a view of the stored bytes.
_COPY_BELOW = 512
# Plain values whose pickle always reads back equal: no round trip needed.
_SAFE = (type(None), bool, int, float, str, bytes)


def short(value: Any) -> str:
    """repr(value) in at most 80 characters, for error messages."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= 80 else text[:77] + "..."


class Serde:
    """Turns values into bytes and back; optionally signs payloads with an HMAC key."""

    def __init__(
        self, secret: bytes | None = None, max_bytes: Callable[[], int | None] | None = None
    ) -> None:
        self._secret = secret
        # The largest payload the store can keep (asked on every write: it is a read of
        # the connection's limit, and a test may lower the limit after opening).
        self._max_bytes = max_bytes

    @property
    def signs(self) -> bool:
        """Whether payloads are signed (and must be, to be read)."""
        return self._secret is not None

    def dumps(self, value: Any, what: What) -> bytes:
        """Serialize value; SerializationError names `what` it was and why it failed."""
        try:
            data = _PICKLE + pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            try:
                data = _DILL + dill.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                raise SerializationError(
                    f"cannot serialize {_say(what)}: {type(value).__name__} {short(value)} "
                    f"({type(exc).__name__}: {exc}). Values that cross a yield, and a "
                    f"run's arguments and result, must be picklable by dill; pass an id "
                    f"or plain data instead of live objects (connections, files, locks)."
                ) from exc
        if self._secret is not None:
            sig = hmac.new(self._secret, data, hashlib.sha256).digest()
            data = _SIGNED + sig + data
        if self._max_bytes is not None:
            limit = self._max_bytes()
            if limit is not None and len(data) > limit:
                # Checked here, before anything is written: the database would refuse
                # the row, and only after the step ran (a failed write is a crash to
                # the next driver, which would run the step again).
                raise SerializationError(
                    f"{_say(what)} is too large to store: {type(value).__name__} "
                    f"{short(value)} serializes to {len(data):,} bytes, and the database "
                    f"keeps at most {limit:,} bytes per value. Keep large data outside the "
                    f"run (a file, object storage) and pass its name or key instead."
                )
        return data

    def clip(self, text: str) -> str:
        """text, shortened (its head and tail kept) if it would not fit next to a value."""
        limit = self._max_bytes() if self._max_bytes is not None else None
        # A row holds up to two values and a text: the text gets a third of a value's
        # room, counting 4 bytes per character (UTF-8 at worst).
        room = None if limit is None else max(limit // 12, 200)
        if room is None or len(text) <= room:
            return text
        half = (room - 100) // 2
        cut = len(text) - 2 * half
        return f"{text[:half]}\n[... {cut:,} characters cut: too long to store ...]\n{text[-half:]}"

    def dumps_checked(self, value: Any, what: What) -> tuple[bytes, Any]:
        """Serialize and read back: returns the bytes and the copy a replay would see."""
        if type(value) in _SAFE:
            # A plain value (most step results) reads back equal: no round trip. Unsigned,
            # it is pickled here, without dumps()'s frame; the same size check follows.
            if self._secret is None:
                try:
                    data = _PICKLE + pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
                except Exception:  # dumps() below tries dill and says why it failed
                    data = b""
                max_bytes = self._max_bytes
                limit = None if max_bytes is None else max_bytes()
                if data and (limit is None or len(data) <= limit):
                    return data, value
            return self.dumps(value, what), value  # signed, too large or refused: dumps says
        data = self.dumps(value, what)
        try:
            copy = self.loads(data, what)
        except CorruptPayload as exc:
            raise SerializationError(
                f"{_say(what)} serializes but cannot be read back "
                f"({exc.__cause__ or exc}); a replay could never see it. Make "
                f"{type(value).__name__} picklable both ways (see __reduce__)."
            ) from exc
        return data, copy

    def loads(self, data: bytes, what: What) -> Any:
        """Read a payload back; CorruptPayload if it is damaged or its signature fails.

        The payload is read in place: past its tag (and signature) through a view of
        the bytes, not a copy of them (a short one is copied: that is cheaper than a
        view, and costs no memory to speak of)."""
        tag = data[0] if data else -1
        start = 1
        if tag == _SIGNED_TAG:
            start = 2 + _SIG_LEN
            tag = data[start - 1] if len(data) >= start else -1
            if self._secret is None:
                raise CorruptPayload(f"{_say(what)} is signed; open the engine with its secret")
            view = memoryview(data)
            expected = hmac.new(self._secret, view[1 + _SIG_LEN :], hashlib.sha256).digest()
            if not hmac.compare_digest(view[1 : 1 + _SIG_LEN], expected):
                raise CorruptPayload(
                    f"{_say(what)} failed its signature check: the database was changed outside "
                    f"contengine or the secret is wrong; nothing was loaded"
                )
        elif self._secret is not None:
            raise CorruptPayload(
                f"{_say(what)} is not signed but this engine requires signatures; "
                f"nothing was loaded"
            )
        body = data[start:] if len(data) <= _COPY_BELOW else memoryview(data)[start:]
        try:
            try:
                if tag == _PICKLE_TAG:
                    return pickle.loads(body)
                if tag == _DILL_TAG:
                    return dill.loads(bytes(body))
            except (ImportError, AttributeError):
                # Written before a class it names moved to another module: read it
                # again, finding each name where it lives now (core/moved.py).
                return read_moved(bytes(body), with_dill=tag == _DILL_TAG)
        except Exception as exc:
            raise CorruptPayload(
                f"{_say(what)} cannot be read back ({type(exc).__name__}: {exc}); the stored "
                f"bytes are left as they are"
            ) from exc
        shown = bytes([tag]) if tag >= 0 else b""
        raise CorruptPayload(
            f"{_say(what)} has an unknown format tag {shown!r}; nothing was loaded"
        )

    def dumps_error(self, exc: BaseException, what: What, stand_in: type[StepFailed]) -> bytes:
        """Serialize an exception, or a stand_in carrying its type, message and traceback."""
        try:
            data, copy = self.dumps_checked(exc, what)
            if type(copy) is type(exc):
                return data
        except SerializationError:
            pass
        text = self.clip("".join(traceback.format_exception(exc)))
        substitute = stand_in(type(exc).__qualname__, self.clip(str(exc)), text)
        return self.dumps(substitute, what)
