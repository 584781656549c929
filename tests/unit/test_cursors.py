"""bridge.cursors: the one codec of the API's page cursors."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.cursors import decode_cursor, encode_cursor

SHAPES: list[tuple[Any, ...]] = [((int, float), str, int), (str, str, int, int), (float, str)]


def value_of(kind: Any) -> st.SearchStrategy[Any]:
    if kind == (int, float):
        return st.one_of(
            st.integers(-(2**60), 2**60), st.floats(allow_nan=False, allow_infinity=False)
        )
    if kind is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind is int:
        return st.integers()
    return st.text()


@given(
    st.sampled_from(SHAPES).flatmap(
        lambda shape: st.tuples(st.just(shape), st.tuples(*map(value_of, shape)))
    )
)
def test_a_cursor_gives_back_its_values(case: tuple[tuple[Any, ...], tuple[Any, ...]]) -> None:
    shape, values = case
    decoded = decode_cursor(encode_cursor(list(values)), shape)
    assert decoded == [
        float(v) if k == (int, float) else v for k, v in zip(shape, values, strict=True)
    ]


@given(
    st.sampled_from(SHAPES),
    st.one_of(st.text(), st.binary().map(lambda b: base64.urlsafe_b64encode(b).decode())),
)
def test_anything_else_is_a_value_error(shape: tuple[Any, ...], cursor: str) -> None:
    try:
        decode_cursor(cursor, shape)
    except ValueError:
        pass


@pytest.mark.parametrize(
    "values",
    [
        ["NaN", "d", 1],
        [True, "d", 1],
        [1.0, "d", True],
        [1.0, "d"],
        [1.0, "d", 1, 2],
        [1.0, 2, 1],
        {"at": 1.0},
    ],
)
def test_the_wrong_values_are_refused(values: Any) -> None:
    with pytest.raises(ValueError):
        decode_cursor(encode_cursor(values), ((int, float), str, int))


@pytest.mark.parametrize("text", ['[NaN,"d",1]', '[Infinity,"d",1]', "[1" + "0" * 400 + ',"d",1]'])
def test_numbers_that_are_no_time_are_refused(text: str) -> None:
    cursor = base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")
    with pytest.raises(ValueError):
        decode_cursor(cursor, ((int, float), str, int))
    with pytest.raises(ValueError):
        decode_cursor(cursor, (float, str, int))
