"""bridge.attempts.keys: byte order of keys is the log's order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bridge.attempts.keys import decode_time, encode_position, encode_text, time_of

positions = st.tuples(
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
    st.integers(0, 2**80),
)


@given(positions, positions)
def test_keys_sort_as_positions_do(a: tuple[float, str, int], b: tuple[float, str, int]) -> None:
    ka, kb = encode_position(*a), encode_position(*b)
    assert (ka < kb) == (a < b)
    assert (ka == kb) == (a == b)


@given(st.text(), st.text(), positions)
def test_a_webhook_s_keys_are_apart_from_every_other_webhook_s(
    one: str, other: str, position: tuple[float, str, int]
) -> None:
    key = encode_text(other) + encode_position(*position)
    assert key.startswith(encode_text(one)) == (one == other)
    assert not key.startswith(b"\x00\x00")


@given(st.floats(allow_nan=False), st.text())
def test_the_time_reads_back_from_a_key(at: float, webhook_id: str) -> None:
    prefix = encode_text(webhook_id)
    assert decode_time(encode_position(at, "d", 1)[:8]) == at
    assert time_of(prefix + encode_position(at, "d", 1), len(prefix)) == at
