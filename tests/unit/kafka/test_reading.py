"""bridge.kafka.reading.stamped_by: where a partition's records written after a moment begin."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from bridge.kafka.reading import stamped_by


@dataclass
class Stamped:
    timestamp: int | None


@given(st.lists(st.one_of(st.none(), st.integers(0, 20))), st.integers(0, 20))
def test_the_prefix_up_to_the_first_later_record(stamps: list[int | None], limit: int) -> None:
    messages = [Stamped(t) for t in stamps]
    n = stamped_by(messages, limit)  # type: ignore[arg-type]
    assert all(m.timestamp is None or m.timestamp <= limit for m in messages[:n])
    # The first one left out is later; what follows it is left out whatever its stamp.
    assert n == len(messages) or (messages[n].timestamp or 0) > limit
