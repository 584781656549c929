"""What the delivery path remembers per key that others choose (URLs, endpoints, webhook
ids), bounded: functions of a string remembered within a budget of characters as well as of
entries (:func:`remembered`), sweeping a map of per-key state as it grows (:class:`Sweeps`), and
keeping a map's newest entries (:func:`put_newest`).

The delivery path parses each attempt's URL several times over (its endpoint, its SSRF
verdict, its request target), and remembers each answer per URL. ``functools.lru_cache``
bounds entries only: 50,000 URLs of 2,048 characters (a client changing a webhook's URL and
sending a test event, over and over) held about 460 MB across those caches until 2026-12-06.
:func:`remembered` bounds the characters of the URLs kept too, and forgets the oldest first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, MutableMapping
from typing import Generic, TypeVar

__all__ = ["MAX_CHARS", "MAX_ENTRIES", "Remembered", "remembered", "Sweeps", "put_newest"]

_R = TypeVar("_R")
_K = TypeVar("_K")
_V = TypeVar("_V")

#: Characters of the keys one function remembers at most, each entry counted with
#: ``_ENTRY_CHARS`` more (about 40 MB of parsed URLs in all at the longest URL a webhook may
#: have; 50,000 URLs of up to 96 characters).
MAX_CHARS = 8_000_000
#: Keys one function remembers at most.
MAX_ENTRIES = 50_000
#: What an entry costs beyond its key's characters (the dict's slot and the value's objects).
_ENTRY_CHARS = 64


class Remembered(Generic[_R]):
    """``function`` with its answers remembered, oldest forgotten first, within ``max_chars``
    characters of keys (each entry costs its key's length and a little more) and
    ``max_entries`` entries. An exception is not remembered. ``__wrapped__`` is ``function``."""

    __slots__ = ("__wrapped__", "_answers", "_chars", "_max_chars", "_max_entries")

    def __init__(
        self,
        function: Callable[[str], _R],
        *,
        max_chars: int = MAX_CHARS,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self.__wrapped__ = function
        # An OrderedDict: a dict's oldest key, found by iterating after many deletes from its
        # front, cost 7.85 µs a miss when full, about 25 times an lru_cache's (BENCHMARKS.md,
        # "Bounded per-URL and per-key state").
        self._answers: OrderedDict[str, _R] = OrderedDict()
        self._chars = 0
        self._max_chars = max_chars
        self._max_entries = max_entries

    def __call__(self, key: str) -> _R:
        try:
            return self._answers[key]
        except KeyError:
            pass
        answer = self.__wrapped__(key)
        cost = len(key) + _ENTRY_CHARS
        if cost > self._max_chars:
            return answer  # never kept: it would push out everything else
        answers = self._answers
        while answers and (
            self._chars + cost > self._max_chars or len(answers) >= self._max_entries
        ):
            oldest, _ = answers.popitem(last=False)
            self._chars -= len(oldest) + _ENTRY_CHARS
        answers[key] = answer
        self._chars += cost
        return answer

    def __len__(self) -> int:
        return len(self._answers)

    @property
    def chars(self) -> int:
        """What the remembered entries cost, in characters (at most ``max_chars``)."""
        return self._chars

    def clear(self) -> None:
        self._answers.clear()
        self._chars = 0


def remembered(function: Callable[[str], _R]) -> Remembered[_R]:
    """:class:`Remembered` with the default budget, as a decorator."""
    return Remembered(function)


class Sweeps:
    """Sweeps a map of per-key state of the entries it no longer needs (a closed circuit, a
    token bucket full again, a decision the table has moved on from) as keys are added: each
    time it has grown to ``floor`` entries and twice its size after the last sweep, so that
    sweeping costs a constant per key added, and the map stays within twice what it needs (or
    ``floor``)."""

    __slots__ = ("_floor", "_at")

    def __init__(self, floor: int = 10_000) -> None:
        self._floor = floor
        self._at = floor

    def make_room(
        self, mapping: MutableMapping[_K, _V], stale: Callable[[_K, _V], bool]
    ) -> list[_K]:
        """Before a key is added to ``mapping``: when a sweep is due, remove the entries
        ``stale`` says are no longer needed; the keys removed."""
        if len(mapping) < self._at:
            return []
        removed = [key for key, value in mapping.items() if stale(key, value)]
        for key in removed:
            del mapping[key]
        self._at = max(self._floor, 2 * len(mapping))
        return removed


def put_newest(entries: dict[_K, _V], key: _K, value: _V, limit: int) -> None:
    """Put ``key`` in ``entries`` as its newest entry (moved last if it was there), and forget
    the oldest once there are more than ``limit``: what a map of the last ``limit`` keys seen
    keeps."""
    entries.pop(key, None)
    entries[key] = value
    if len(entries) > limit:
        del entries[next(iter(entries))]
