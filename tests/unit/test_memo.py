"""bridge.memo: answers remembered within a budget of characters and of entries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import memo
from bridge.delivery.breaker import endpoint_of
from bridge.http import http1_sender
from bridge.http.http1_sender import Http1Sender
from bridge.http.ssrf import AddressPolicy
from bridge.memo import Remembered, Sweeps, put_newest
from bridge.subscriptions import urls

ENTRY = memo._ENTRY_CHARS


@given(
    keys=st.lists(st.text(alphabet="abcdef", max_size=40), max_size=200),
    max_chars=st.integers(1, 600),
    max_entries=st.integers(1, 20),
)
def test_the_budget_holds_and_every_answer_is_the_functions(
    keys: list[str], max_chars: int, max_entries: int
) -> None:
    calls: list[str] = []

    def function(key: str) -> str:
        calls.append(key)
        return key.upper()

    remembered = Remembered(function, max_chars=max_chars, max_entries=max_entries)
    for key in keys:
        assert remembered(key) == key.upper()
        kept = remembered._answers
        assert len(kept) == len(remembered) <= max_entries
        assert remembered.chars == sum(len(k) + ENTRY for k in kept) <= max_chars
        if len(key) + ENTRY <= max_chars:
            assert key in kept  # the newest is always kept when it fits at all
    # Each key is computed again only after it was forgotten.
    assert len(calls) <= len(keys)


def test_the_oldest_is_forgotten_first_and_an_exception_is_not_remembered() -> None:
    remembered = Remembered(lambda key: int(key), max_chars=3 * (1 + ENTRY), max_entries=10)
    for key in "1234":
        remembered(key)
    assert list(remembered._answers) == ["2", "3", "4"]
    with pytest.raises(ValueError):
        remembered("x")
    assert list(remembered._answers) == ["2", "3", "4"]
    remembered.clear()
    assert len(remembered) == 0 and remembered.chars == 0


def test_the_delivery_paths_url_caches_are_bounded_in_characters() -> None:
    """Each URL an attempt reads is parsed once and remembered: its endpoint, the SSRF
    verdict, its request target. 50,000 URLs of 2,048 characters held about 460 MB across
    those caches (bounded by entries only) until 2026-12-06; each now keeps at most
    memo.MAX_CHARS characters of URLs (about 36 MB in all at that length, measured)."""
    sender = Http1Sender(
        timeout=5,
        max_connections=1,
        max_connections_per_endpoint=1,
        policy=AddressPolicy(),
        allow_http=False,
    )
    caches = [endpoint_of, urls._parse, http1_sender._target_of, sender._checked]
    assert all(isinstance(cache, Remembered) for cache in caches)
    longest = memo.MAX_CHARS // (urls.MAX_URL_LENGTH + ENTRY)
    for n in range(longest + 50):
        head = f"https://h{n}.example/"
        url = head + "p" * (urls.MAX_URL_LENGTH - len(head))
        endpoint_of(url)
        sender._check(url)
        http1_sender._target_of(url)
    for cache in caches:
        assert cache.chars <= memo.MAX_CHARS and len(cache) <= longest, cache


def test_sweeps_remove_the_stale_entries_only_when_due() -> None:
    sweeps = Sweeps(floor=4)
    mapping = {n: n % 2 for n in range(3)}
    assert sweeps.make_room(mapping, lambda _, odd: odd == 1) == [] and len(mapping) == 3
    mapping[3] = 1
    assert sweeps.make_room(mapping, lambda _, odd: odd == 1) == [1, 3]
    assert mapping == {0: 0, 2: 0}
    # Next due at twice what was left, or the floor: 4 entries here.
    mapping.update({4: 1, 5: 1})
    assert sweeps.make_room(mapping, lambda _, odd: odd == 1) == [4, 5]


def test_put_newest_keeps_the_last_keys_put() -> None:
    entries: dict[str, int] = {}
    for n, key in enumerate(["a", "b", "c", "a", "d"]):
        put_newest(entries, key, n, 3)
    # "a" put again is newest; "b", the oldest, went when "d" came.
    assert list(entries.items()) == [("c", 2), ("a", 3), ("d", 4)]
