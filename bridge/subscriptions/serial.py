"""One change of a webhook at a time in this process: a lock per webhook id."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["KeyedLocks"]


class KeyedLocks:
    """A lock per key, made when first wanted and dropped when no one holds or awaits it (so
    made-up ids leave nothing behind). The API's changes of a webhook and the bridge's disable
    of it take the same one (:mod:`bridge.worker.disables`)."""

    def __init__(self) -> None:
        #: Each key's lock, with the number of callers holding or awaiting it.
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

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
