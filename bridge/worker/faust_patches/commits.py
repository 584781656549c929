"""Patch to the offsets Faust's consumer commits: never past a record not yet acknowledged.

Faust commits, for each partition, the end of the first run of consecutive acknowledged offsets,
and it takes that run to start right after the committed offset even when it starts one past it:
with offset 14 unacknowledged (a job still running, or one that crashed) and 15 to 38
acknowledged, it committed 39, and record 14 was never read again. Its gap bookkeeping also
counts as done an offset read after a hole in the offsets before that record is acknowledged.
The bridge commits a partition only up to the first offset it was handed and has not seen
acknowledged (``commit_settled_only``; :class:`TakenOffsets` is fed by the consumer's callback
with the records of the topics whose records are acknowledged, never the tables' changelogs):
a committed offset never passes an unsettled record.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from typing import Any

from faust.transport import consumer as faust_consumer

__all__ = ["TakenOffsets", "taken_offsets"]


class _Taken:
    """One partition's offsets handed to the bridge since the consumer last sought it."""

    __slots__ = ("offsets", "settled_end", "last")

    def __init__(self) -> None:
        #: Offsets handed over and not yet seen acknowledged, in the order they were read.
        self.offsets: deque[int] = deque()
        #: One past the last offset seen acknowledged at the head (``None``: none yet).
        self.settled_end: int | None = None
        #: The last offset handed over.
        self.last = -1


class TakenOffsets:
    """The offsets of each partition that the consumer handed to the bridge, so that a commit
    never passes one that is not acknowledged (``commit_settled_only``).

    A partition's records are handed over in offset order; when an offset is not above the last
    one handed over, the consumer has sought back (a rebalance, a seek to the committed offset)
    and the partition starts anew, as it does when the consumer seeks (``reset``).
    """

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: dict[Any, _Taken] = {}

    def take(self, tp: Any, offset: int) -> None:
        """Record that the record at ``offset`` of ``tp`` was handed over."""
        part = self._parts.get(tp)
        if part is None or offset <= part.last:
            part = self._parts[tp] = _Taken()
        part.offsets.append(offset)
        part.last = offset

    def reset(self) -> None:
        """Forget every partition (the consumer sought each to its committed offset)."""
        self._parts.clear()

    def commit_point(self, tp: Any, acknowledged: set[int]) -> int | None:
        """The offset up to which ``tp`` may be committed: the first offset handed over and
        not in ``acknowledged``, or one past the last handed over when all are; ``None`` when
        nothing was handed over since the last seek."""
        part = self._parts.get(tp)
        if part is None:
            return None
        offsets = part.offsets
        while offsets and offsets[0] in acknowledged:
            part.settled_end = offsets.popleft() + 1
        if offsets:
            return offsets[0]
        return part.settled_end


def taken_offsets(app: Any) -> TakenOffsets:
    """The app's :class:`TakenOffsets` (created on first use)."""
    taken: TakenOffsets | None = getattr(app, "_bridge_taken_offsets", None)
    if taken is None:
        taken = TakenOffsets()
        app._bridge_taken_offsets = taken
    return taken


#: ``None`` when Faust has none: install() then refuses to start, naming the patch.
_original_perform_seek: Any = getattr(faust_consumer.Consumer, "perform_seek", None)


def _new_offset(self: Any, tp: Any) -> int | None:
    # Replaces faust.transport.consumer.Consumer._new_offset (faust-streaming 0.15): the
    # offset to commit is where the first unacknowledged record handed over is, never past it.
    acked = self._acked[tp]
    if not acked:
        return None
    index = self._acked_index[tp]
    point = taken_offsets(self.app).commit_point(tp, index)
    if point is None:
        return None
    acked.sort()
    cut = bisect_left(acked, point)
    if cut:
        index.difference_update(acked[:cut])
        del acked[:cut]
    gap = self._gap.get(tp)
    if gap:
        gap.chop(0, point)
    return point


async def _perform_seek(self: Any) -> None:
    await _original_perform_seek(self)
    taken_offsets(self.app).reset()
