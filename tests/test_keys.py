"""Request keys: the shortcuts for common arguments give the plain walk's text exactly.

Logs already written hold keys made by the plain walk (tests/canonical_reference.py),
so a shortcut that wrote one character differently would make every run in flight
diverge at replay. These properties compare the engine's canonical text, and the key
and text of a step call (bound, cached, hashed when long), with the walk's.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any

import canonical_reference as ref
import hypothesis.strategies as st
from hypothesis import given

import contengine as ce
from contengine.core.canonical import canonical_call, display_call


class Colour(enum.Enum):
    RED = 1
    BLUE = 2


@dataclasses.dataclass
class Point:
    x: int
    y: Any


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-9, max_value=9).map(lambda i: i * 10**4400 + 1),  # repr() refuses
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.text(max_size=300),
    st.binary(max_size=30),
)
hashable = st.one_of(scalars.filter(lambda v: not (isinstance(v, float) and math.isnan(v))))
values = st.recursive(
    st.one_of(scalars, st.sampled_from([Colour.RED, Colour.BLUE]), st.just(object())),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.lists(scalars, max_size=6).map(tuple),  # the small tuple of plain items
        st.dictionaries(st.text(max_size=5), inner, max_size=3),
        st.sets(hashable, max_size=4),
        st.frozensets(hashable, max_size=4),
        st.builds(Point, st.integers(), inner),
    ),
    max_leaves=8,
)
names = st.sampled_from(["a", "b", "c", "key", "zz", "x_1"])


@given(args=st.lists(values, max_size=4).map(tuple), kwargs=st.dictionaries(names, values))
def test_canonical_text_is_the_walks(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """canonical_call's shortcuts answer what the plain walk does, None included."""
    assert canonical_call(args, kwargs) == ref.canonical_call(args, kwargs)


@given(
    args=st.lists(st.one_of(scalars, values), max_size=3).map(tuple),
    kwargs=st.dictionaries(names, st.one_of(scalars, values), max_size=3),
)
def test_plain_arguments_text_is_the_walks(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """The same, drawn mostly from plain values (the shortcuts' own cases)."""
    assert canonical_call(args, kwargs) == ref.canonical_call(args, kwargs)


@ce.step(name="test.keys.one")
def one(x: Any) -> Any:
    return x


@ce.step(name="test.keys.three")
def three(a: Any, b: Any = None, *, c: Any = None, **rest: Any) -> Any:
    return a


@given(value=st.one_of(scalars, values))
def test_a_one_argument_step_calls_key_and_text_are_the_walks(value: Any) -> None:
    """The key written to the log and the text shown for one() are the walk's, and a
    replayed call matches the key the walk would have logged."""
    text = ref.canonical_call((value,), {})
    key = ref.key_of(text)
    call = one(value)
    assert call.key == key
    assert call.text == display_call((value,), {}, text)
    assert one(value).same_key(key)  # compared before the key is made
    assert call.same_key(key)  # and after


@given(
    a=st.one_of(scalars, values),
    b=st.one_of(scalars, values),
    c=st.one_of(scalars, values),
    spelling=st.integers(min_value=0, max_value=3),
)
def test_a_keyword_step_calls_key_is_the_walks_of_the_bound_call(
    a: Any, b: Any, c: Any, spelling: int
) -> None:
    """However the call is spelled, its key is the walk's text of the bound call."""
    bound_key = ref.key_of(ref.canonical_call((a, b), {"c": c}))
    call = [
        three(a, b, c=c),
        three(a, b=b, c=c),
        three(a=a, b=b, c=c),
        three(a, c=c, b=b),
    ][spelling]
    assert call.key == bound_key
    assert call.same_key(bound_key)
    written = ref.key_of(ref.canonical_call(call.args, call.kwargs))
    assert call.same_key(written)  # a log keyed as the call was spelled still replays


@given(value=st.one_of(scalars, values), other=st.one_of(scalars, values))
def test_a_changed_argument_is_still_seen(value: Any, other: Any) -> None:
    """Two values with different canonical texts never share a key."""
    old, new = ref.canonical_call((value,), {}), ref.canonical_call((other,), {})
    if old is None or new is None or old == new:
        return
    assert not one(other).same_key(ref.key_of(old))
