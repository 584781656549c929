"""One change of a webhook at a time in this process: a lock per webhook id, the version this
process last wrote of each, to tell a table that has not applied that write yet, and the fence
each write passes (:meth:`KeyedLocks.writing`): made only while the process may write that
webhook (in a worker with the delivery log, while it owns it), and counted while it is under
way, so that a worker giving its partitions up can wait for the writes it let through
(:meth:`KeyedLocks.drained`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from bridge.contract.events import parse_time
from bridge.memo import put_newest
from bridge.subscriptions.freshness import Placed
from bridge.subscriptions.webhook import Webhook

__all__ = ["MAX_WRITES_KEPT", "WRITE_SEEN_TIMEOUT", "KeyedLocks", "NotWritable", "to_the_end"]

_T = TypeVar("_T")

log = logging.getLogger(__name__)

#: The last writes kept (the oldest forgotten first): a table applies a write within a fetch.
MAX_WRITES_KEPT = 10_000
#: How long :meth:`KeyedLocks.read_as_written` waits for the table to show a write whose place
#: on the topic it does not know (or a process without ``applied``): at most this long after
#: the write was acknowledged (a table applies it within a fetch; one that still does not show
#: it then shows what another writer made of the webhook since, a delete included, which this
#: process's write can never be shown over). A write whose place is known is waited for until
#: the table applied it, however long that takes.
WRITE_SEEN_TIMEOUT = 5.0


class NotWritable(Exception):
    """This process may not write the webhook now (:meth:`KeyedLocks.writing`): nothing was
    written, so the change may be made where it may, once that is known."""


class KeyedLocks:
    """A lock per key, made when first wanted and dropped when no one holds or awaits it (so
    made-up ids leave nothing behind). The API's changes of a webhook and the bridge's disable
    of it take the same one (:mod:`bridge.worker.disables`).

    ``may_write(key)``: whether this process may write ``key`` now, asked as each write begins
    (:meth:`writing`); by default always. ``applied(placed)``: whether the table
    :meth:`read_as_written` reads has applied the record the broker acknowledged at ``placed``
    (:meth:`bridge.subscriptions.freshness.TableFreshness.has_applied`); without it, or for a
    write whose place is not known, a write is waited for until ``seen_within`` after it."""

    def __init__(
        self,
        *,
        may_write: Callable[[str], bool] = lambda key: True,
        applied: Callable[[Placed], bool] | None = None,
        seen_within: float = WRITE_SEEN_TIMEOUT,
    ) -> None:
        self._may_write = may_write
        self._applied = applied
        self._seen_within = seen_within
        #: Writes let through by :meth:`writing` and not yet ended.
        self._writing = 0
        #: Set while no write is under way (:meth:`drained` waits for it).
        self._idle = asyncio.Event()
        self._idle.set()
        #: Each key's lock, with the number of callers holding or awaiting it.
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        #: The version (``updated_at``; ``None`` for a delete) this process last wrote, per
        #: key, when (as written), where the broker acknowledged it (when known), and until
        #: when (event loop time) it is waited for when that is not known.
        self._written: dict[str, tuple[str | None, str, Placed | None, float]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    @asynccontextmanager
    async def writing(self, key: str, *, fenced: bool = True) -> AsyncIterator[None]:
        """Around a write for ``key`` (a change, holding the key's lock; or a recovery's first
        record, :class:`~bridge.api.recoveries.Recoveries`), the last step before it: raises
        :class:`NotWritable` unless ``may_write(key)`` now, and counts the write until it ends
        (acknowledged or failed), for :meth:`drained`. So a worker that owned the webhook when
        the change was taken, and gave it up while the change waited for the lock or for its
        table, writes nothing. ``fenced=False``: a key no other process can be writing (an id
        just generated here), never refused."""
        if fenced and not self._may_write(key):
            raise NotWritable(f"this worker may not change {key} now (its owner changed)")
        self._writing += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._writing -= 1
            if not self._writing:
                self._idle.set()

    async def drained(self, timeout: float) -> bool:
        """Whether every write :meth:`writing` let through has ended within ``timeout``
        seconds (at once when none is under way). ``may_write`` having turned false first,
        none begins meanwhile."""
        if self._idle.is_set():
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def wrote(self, key: str, webhook: Webhook, placed: Placed | None = None) -> None:
        """This process wrote ``webhook`` as ``key`` (acknowledged at ``placed``, when the
        writer knows it), holding the key's lock."""
        self._remember(key, webhook.updated_at, "", placed)

    def deleted(self, key: str, at: str, placed: Placed | None = None) -> None:
        """This process deleted ``key`` at ``at`` (its clock, as ``updated_at`` is written),
        acknowledged (at ``placed``, when known), holding the key's lock."""
        self._remember(key, None, at, placed)

    def _remember(self, key: str, version: str | None, at: str, placed: Placed | None) -> None:
        if self._applied is None:
            placed = None
        until = asyncio.get_running_loop().time() + self._seen_within
        put_newest(self._written, key, (version, at, placed, until), MAX_WRITES_KEPT)

    async def read_as_written(
        self,
        key: str,
        read: Callable[[], Awaitable[Webhook | None]],
        *,
        timeout: float = WRITE_SEEN_TIMEOUT,
    ) -> tuple[bool, Webhook | None]:
        """What the table ``read`` reads holds as ``key``, and whether it shows the last write
        this process made of ``key`` (that version or a later one: every writer sets
        ``updated_at`` later than the record's own), reading it again until it does, or until
        ``timeout`` passes (``False``). A table shown current by the broker's end offsets has
        applied every acknowledged write; the embedded broker's end offsets can trail records
        two producers wrote at once, and this keeps a change from being made over a version
        older than this process's own.

        A write is waited for until the table applied the record at its place (``applied``):
        what it shows then instead is another writer's later change (a delete, or a webhook
        made again by a clock behind this one), which the write can never be shown over (until
        2026-12-06 each request of that id waited ``timeout`` and was answered ``503``, for
        good). A write whose place is not known is waited for until ``seen_within`` after it
        was made, assuming the table applied it by then; until 2026-12-07 every write was, and
        a table trailing further (a worker starting under load) let a change be made over the
        version before this process's own (a rename answered ``200`` could turn a webhook its
        owner had just disabled on again)."""
        found = await read()
        entry = self._written.get(key)
        if entry is None:
            return True, found
        version, at, placed, until = entry
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not _shows(found, version, at):
            now = loop.time()
            if placed is not None and self._applied is not None:
                if self._applied(placed):
                    # Applied: read once more (this read may have begun before), and what the
                    # table shows now is the write or what replaced it.
                    found = await read()
                    break
            elif now >= until:
                break  # applied long since: what the table shows replaced it
            if now >= deadline:
                return False, found
            pause = 0.01 if placed is not None else min(0.01, max(0.0, until - now))
            await asyncio.sleep(pause)
            found = await read()
        if self._written.get(key) == entry:
            del self._written[key]
        return True, found


async def to_the_end(write: Awaitable[_T], then: Callable[[_T], object]) -> _T:
    """``write`` (a record sent for a key whose lock the caller holds) awaited to its end, then
    ``then`` called with what it returned, even if the caller is cancelled meanwhile (the API's
    request timeout, a client gone): a record handed to the producer lands whatever becomes of
    its sender's wait, so the lock stays held and the write is recorded (:meth:`KeyedLocks.wrote`)
    before the cancellation goes on, and the next change of the key reads it. Until 2026-12-07
    the lock was let go at the cancel: a disable made meanwhile read the version before a rename
    whose record then landed after the disable's, turning the webhook on again. A write that
    fails after the cancel is logged and dropped with it (nothing was recorded; the
    cancellation is raised). The wait is bounded by the producer's own (its delivery timeout,
    40 s)."""
    task = asyncio.ensure_future(write)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait({task})  # (a cancelled wait leaves the task running)
        except asyncio.CancelledError:
            cancelled = True
    error = None if task.cancelled() else task.exception()
    if task.cancelled() or error is not None:
        if cancelled:
            if error is not None:  # no one else sees it: the request's answer was its cancel
                log.warning(
                    "a write failed after its request was cancelled: %s", type(error).__name__
                )
            raise asyncio.CancelledError() from error
        return task.result()  # raises what ended it
    result = task.result()
    then(result)
    if cancelled:
        raise asyncio.CancelledError()
    return result


def _shows(found: Webhook | None, version: str | None, at: str) -> bool:
    """Whether ``found`` is the write (``version``, ``None`` for a delete, made ``at``) or later."""
    try:
        if version is None:  # deleted: gone, or made again since
            return found is None or (
                found.created_at is not None and parse_time(found.created_at) >= parse_time(at)
            )
        if found is None or found.updated_at is None:
            return False
        return parse_time(found.updated_at) >= parse_time(version)
    except ValueError:  # a time the bridge did not write: not this process's to wait for
        return True
