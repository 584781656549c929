"""One change of a webhook at a time in this process: a lock per webhook id, the version this
process last wrote of each, to tell a table that has not applied that write yet, and the fence
each write passes (:meth:`KeyedLocks.writing`): made only while the process may write that
webhook (in a worker with the delivery log, while it owns it), and counted while it is under
way, so that a worker giving its partitions up can wait for the writes it let through
(:meth:`KeyedLocks.drained`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from bridge.contract.events import parse_time
from bridge.memo import put_newest
from bridge.subscriptions.webhook import Webhook

__all__ = ["MAX_WRITES_KEPT", "WRITE_SEEN_TIMEOUT", "KeyedLocks", "NotWritable"]

#: The last writes kept (the oldest forgotten first): a table applies a write within a fetch.
MAX_WRITES_KEPT = 10_000
#: How long :meth:`KeyedLocks.read_as_written` waits for the table to show the last write: at
#: most this long after the write was acknowledged (a table applies it within a fetch; one that
#: still does not show it then shows what another writer made of the webhook since, a delete
#: included, which this process's write can never be shown over).
WRITE_SEEN_TIMEOUT = 5.0


class NotWritable(Exception):
    """This process may not write the webhook now (:meth:`KeyedLocks.writing`): nothing was
    written, so the change may be made where it may, once that is known."""


class KeyedLocks:
    """A lock per key, made when first wanted and dropped when no one holds or awaits it (so
    made-up ids leave nothing behind). The API's changes of a webhook and the bridge's disable
    of it take the same one (:mod:`bridge.worker.disables`).

    ``may_write(key)``: whether this process may write ``key`` now, asked as each write begins
    (:meth:`writing`); by default always."""

    def __init__(
        self,
        *,
        may_write: Callable[[str], bool] = lambda key: True,
        seen_within: float = WRITE_SEEN_TIMEOUT,
    ) -> None:
        self._may_write = may_write
        self._seen_within = seen_within
        #: Writes let through by :meth:`writing` and not yet ended.
        self._writing = 0
        #: Set while no write is under way (:meth:`drained` waits for it).
        self._idle = asyncio.Event()
        self._idle.set()
        #: Each key's lock, with the number of callers holding or awaiting it.
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        #: The version (``updated_at``; ``None`` for a delete) this process last wrote, per
        #: key, when (as written), and until when (event loop time) it is waited for.
        self._written: dict[str, tuple[str | None, str, float]] = {}

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

    def wrote(self, key: str, webhook: Webhook) -> None:
        """This process wrote ``webhook`` as ``key`` (acknowledged), holding the key's lock."""
        self._remember(key, webhook.updated_at, "")

    def deleted(self, key: str, at: str) -> None:
        """This process deleted ``key`` at ``at`` (its clock, as ``updated_at`` is written),
        acknowledged, holding the key's lock."""
        self._remember(key, None, at)

    def _remember(self, key: str, version: str | None, at: str) -> None:
        until = asyncio.get_running_loop().time() + self._seen_within
        put_newest(self._written, key, (version, at, until), MAX_WRITES_KEPT)

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
        older than this process's own. A write is waited for until ``seen_within`` (the
        constructor's) after it was made: by then the table has applied it, and what it shows
        instead is another writer's later change (a delete, or a webhook made again by a
        clock behind this one), which the write can never be shown over (until 2026-12-06 each
        request of that id waited ``timeout`` and was answered ``503``, for good)."""
        found = await read()
        entry = self._written.get(key)
        if entry is None:
            return True, found
        version, at, until = entry
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not _shows(found, version, at):
            now = loop.time()
            if now >= until:
                break  # applied long since: what the table shows replaced it
            if now >= deadline:
                return False, found
            await asyncio.sleep(min(0.01, max(0.0, until - now)))
            found = await read()
        if self._written.get(key) == entry:
            del self._written[key]
        return True, found


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
