"""Serde.dumps_checked on plain values (the common step result): the same bytes, checks
and errors as dumps(), signed or not."""

from __future__ import annotations

import pickle

import pytest

from contengine.core.serde import Serde
from contengine.errors import SerializationError

PLAIN = [None, True, 7, 2**200, 1.5, "text", "\udc80 lone surrogate", b"bytes", ""]


@pytest.mark.parametrize("value", PLAIN)
def test_a_plain_value_is_written_as_dumps_writes_it_and_read_back_equal(value: object) -> None:
    serde = Serde(max_bytes=lambda: 1_000)
    data, copy = serde.dumps_checked(value, "a result")
    assert data == serde.dumps(value, "a result")
    assert copy is value
    assert serde.loads(data, "a result") == value


@pytest.mark.parametrize("value", PLAIN)
def test_a_plain_value_is_signed_when_the_serde_has_a_secret(value: object) -> None:
    serde = Serde(b"k" * 32)
    data, _ = serde.dumps_checked(value, "a result")
    assert data[:1] == b"S"
    assert serde.loads(data, "a result") == value
    with pytest.raises(Exception, match="signed"):
        Serde().loads(data, "a result")


def test_a_plain_value_over_the_limit_is_refused_with_what_it_was() -> None:
    serde = Serde(max_bytes=lambda: 50)
    size = len(pickle.dumps("x" * 60, protocol=pickle.HIGHEST_PROTOCOL)) + 1
    with pytest.raises(SerializationError, match=f"the result of s is too large.*{size:,} bytes"):
        serde.dumps_checked("x" * 60, lambda: "the result of s")
    assert serde.dumps_checked("x" * 10, "a result")[1] == "x" * 10


def test_the_limit_is_asked_on_every_write() -> None:
    limits = [100, 5]
    serde = Serde(max_bytes=lambda: limits[0])
    serde.dumps_checked(12345, "a result")
    limits[0] = 5
    with pytest.raises(SerializationError, match="too large"):
        serde.dumps_checked(12345, "a result")
