"""Where the delivery log of the attempts partitions a worker holds is kept: memory or RocksDB.

Both keep the same log by the same rules and answer the same queries; they differ in what a
restart costs. :class:`MemoryStore` (the default) holds everything in
:class:`~bridge.attempts.book.ActivityBook` s and has no checkpoint: a restart reads the
attempts topic again from ``now - delivery_log_max_age``. :class:`RocksStore` keeps each
partition's log in a :class:`~bridge.attempts.rocks.PartitionLog` on disk with the next offset
to read, so a restart reads only what it missed, and memory holds the stats only. A
:class:`RocksStore` holds its directory for its life (an exclusive ``flock`` on :data:`LOCK_FILE`
in it): a second process given the same directory refuses to start.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import rocksdict

from bridge.attempts.book import RELEASE_CHUNK, Activity, ActivityBook, empty_activity
from bridge.attempts.record import Attempt
from bridge.attempts.rocks import Checkpoint, PartitionLog, RocksOptions
from bridge.errors import ConfigError

__all__ = ["LOCK_FILE", "STORES", "Checkpoint", "DeliveryLogStore", "MemoryStore", "RocksStore"]

log = logging.getLogger(__name__)

#: The values of the ``delivery_log_store`` setting.
STORES = ("memory", "rocksdb")

#: The file in a :class:`RocksStore`'s directory that the store holds locked for its life.
LOCK_FILE = ".lock"

#: How RocksDB's errors that say a database's files are not what it wrote begin (rocksdict
#: raises RocksDB's status as the text of a plain ``Exception``). Its other errors (``IO
#: error``: a lock another process holds, a full disk, a directory not writable) say nothing
#: of the files, which are left as they are.
_DAMAGE = ("Corruption:", "Invalid argument:")


class DeliveryLogStore(Protocol):
    """The log of the held partitions, fed record by record by the reader."""

    def preload(self, partition: int, now: float) -> None:
        """The slow part of :meth:`open` (reading what the store kept of ``partition``), safe to
        run in a worker thread while the event loop goes on: it changes nothing the other
        methods read. :meth:`open` then takes what it loaded."""
        ...

    def open(self, partition: int, now: float) -> Checkpoint | None:
        """Hold ``partition``; where reading it stopped, when the store kept that."""
        ...

    def add(
        self,
        partition: int,
        offset: int,
        attempt: Attempt,
        value: bytes,
        now: float,
        timestamp: int = -1,
    ) -> bool:
        """Keep ``attempt`` (``value`` as read, the record's ``timestamp``); ``False`` when
        already kept or too old."""
        ...

    def skip(self, partition: int, offset: int, timestamp: int = -1) -> None:
        """A record that is not an attempt was read at ``offset``."""
        ...

    def flush(self, partition: int) -> None:
        """Write what was read of ``partition`` so far (the checkpoint)."""
        ...

    def drop(self, partition: int) -> None:
        """Forget ``partition``'s log (revoked, or to be read again)."""
        ...

    def close_partition(self, partition: int) -> None:
        """Close ``partition``'s log as kept (after a failed write): the next :meth:`preload`
        and :meth:`open` read it again from what the store kept."""
        ...

    def sweep_steps(self, now: float) -> Iterator[None]:
        """Expire old attempts and stats buckets of every webhook and forget the webhooks left
        with neither, a slice of webhooks a step, so that the caller can let other work run
        between steps (a whole sweep of 100,000 webhooks takes 0.2-1.3 s). Attempts added and
        partitions dropped between steps are fine."""
        ...

    def get(self, webhook_id: str) -> Activity | None: ...

    def empty(self) -> Activity: ...

    def delivery(self, delivery_id: str) -> list[Attempt]:
        """Every kept attempt of one delivery (any webhook)."""
        ...

    def summary(self) -> dict[str, Any]:
        """Webhooks and attempts held, and what the store is."""
        ...

    def close(self) -> None: ...


class _Sweepable(Protocol):
    def sweep_steps(self, now: float) -> Iterator[None]: ...


def _held_sweep_steps(held: Mapping[int, _Sweepable], now: float) -> Iterator[None]:
    """The steps of the sweeps of every held partition's log, in turn; a partition dropped
    (or opened again) between steps is left."""
    for partition, kept in list(held.items()):
        steps = kept.sweep_steps(now)
        while held.get(partition) is kept:
            try:
                next(steps)
            except StopIteration:
                break
            yield


class MemoryStore:
    """The log in memory: an :class:`ActivityBook` per held partition, so that a revoked
    partition goes at once (its whole book), its memory freed a slice at a time by the next
    sweep (freeing 170,000 attempts took 0.6 s in one call, measured 2026-12-04)."""

    def __init__(self, *, max_attempts: int, max_age: float) -> None:
        self._max_attempts = max_attempts
        self._max_age = max_age
        #: The book of each held partition.
        self.books: dict[int, ActivityBook] = {}
        #: Books of dropped partitions, freed by :meth:`sweep_steps`.
        self._dropped: list[ActivityBook] = []

    def _book(self, partition: int) -> ActivityBook:
        book = self.books.get(partition)
        if book is None:
            book = self.books[partition] = ActivityBook(
                max_attempts=self._max_attempts, max_age=self._max_age
            )
        return book

    def preload(self, partition: int, now: float) -> None:
        pass  # nothing kept across restarts: nothing to read

    def open(self, partition: int, now: float) -> Checkpoint | None:
        self._book(partition)
        return None

    def add(
        self,
        partition: int,
        offset: int,
        attempt: Attempt,
        value: bytes,
        now: float,
        timestamp: int = -1,
    ) -> bool:
        return self._book(partition).add(attempt, now)

    def skip(self, partition: int, offset: int, timestamp: int = -1) -> None:
        pass

    def flush(self, partition: int) -> None:
        pass

    def drop(self, partition: int) -> None:
        book = self.books.pop(partition, None)
        if book is not None and len(book):
            self._dropped.append(book)

    def close_partition(self, partition: int) -> None:
        pass  # nothing kept to read again: open() says to read the partition anew

    def _release_dropped(self) -> Iterator[None]:
        while self._dropped:
            if not self._dropped[-1].release(RELEASE_CHUNK):
                self._dropped.pop()
            yield

    def sweep_steps(self, now: float) -> Iterator[None]:
        yield from self._release_dropped()
        for _ in _held_sweep_steps(self.books, now):
            yield
            yield from self._release_dropped()  # a partition dropped meanwhile

    def get(self, webhook_id: str) -> Activity | None:
        for book in self.books.values():
            activity = book.get(webhook_id)
            if activity is not None:
                return activity
        return None

    def empty(self) -> Activity:
        return empty_activity(self._max_attempts, self._max_age)

    def delivery(self, delivery_id: str) -> list[Attempt]:
        found: list[Attempt] = []
        for book in self.books.values():
            found.extend(book.delivery(delivery_id))
        return found

    def activities(self) -> list[Activity]:
        """The log and stats of every webhook held."""
        return [activity for book in self.books.values() for activity in book.activities()]

    def summary(self) -> dict[str, Any]:
        return {
            "store": "memory",
            "webhooks": sum(len(book) for book in self.books.values()),
            "attempts": sum(len(a.log) for a in self.activities()),
        }

    def close(self) -> None:
        pass


def _damaged(error: Exception, path: Path) -> bool:
    """Whether ``error``, raised opening the partition's database at ``path``, says that its
    files are damaged (a checksum that does not match, a key or checkpoint of another form, a
    file of the database missing from its own directory), rather than that they cannot be used
    now (:data:`_DAMAGE`)."""
    if isinstance(error, OSError):
        return False
    if type(error) is Exception:  # rocksdict's: RocksDB's status as text
        text = str(error)
        # A MANIFEST gone from the directory: until 2026-12-07 taken for a disk that cannot be
        # used now, and the reader failed at every start until the directory was deleted.
        missing = text.startswith("IO error: No such file or directory") and str(path) in text
        return text.startswith(_DAMAGE) or missing
    return True  # read, but not of the form the store writes


def _hold_directory(directory: Path) -> int:
    """Lock ``directory`` for this process (an exclusive ``flock`` on its :data:`LOCK_FILE`,
    released when the returned descriptor is closed); :class:`ConfigError` when another process
    holds it."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(
            f"the delivery log's directory {directory} is in use by another worker: each "
            "worker needs its own data_dir"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


class RocksStore:
    """The log on disk: one :class:`PartitionLog` per held partition under ``directory``
    (``<data dir>/delivery-log/<attempts topic>/<partition>``), one block cache shared by all.

    ``directory`` is held from here to :meth:`close` (:data:`LOCK_FILE`): :class:`ConfigError`
    when another process holds it. Until 2026-12-07 two workers given one ``data_dir`` each took
    the other's locked databases for damaged files and deleted them."""

    def __init__(
        self,
        directory: Path,
        *,
        max_attempts: int,
        max_age: float,
        options: RocksOptions | None = None,
    ) -> None:
        self.directory = directory
        #: The descriptor of the locked :data:`LOCK_FILE` (``None`` once closed).
        self._lock: int | None = _hold_directory(directory)
        self._max_attempts = max_attempts
        self._max_age = max_age
        self._options = options or RocksOptions()
        self._cache = rocksdict.Cache(self._options.block_cache_size)
        self.partitions: dict[int, PartitionLog] = {}
        #: Partitions read by :meth:`preload`, not yet taken by :meth:`open`.
        self._loaded: dict[int, PartitionLog] = {}

    def _path(self, partition: int) -> Path:
        return self.directory / str(partition)

    def preload(self, partition: int, now: float) -> None:
        # Opening a partition reads every key it kept (1.5-2 s for 100,000 attempts, measured
        # 2026-12-04): in a thread, the worker's event loop goes on meanwhile. Only this
        # partition's files and its entry in ``_loaded`` are touched.
        if partition not in self.partitions and partition not in self._loaded:
            self._loaded[partition] = self._load(partition, now)

    def open(self, partition: int, now: float) -> Checkpoint | None:
        held = self.partitions.get(partition)
        if held is None:
            # (Not ``or``: a PartitionLog without webhooks is falsy.)
            held = self._loaded.pop(partition, None)
            if held is None:
                held = self._load(partition, now)
            self.partitions[partition] = held
        return held.checkpoint

    def _load(self, partition: int, now: float) -> PartitionLog:
        try:
            return self._open(partition, now)
        except Exception as exc:
            if not _damaged(exc, self._path(partition)):
                # Files that cannot be used now are not damaged: deleting them (until
                # 2026-12-07, after any error) deleted a database another process had open.
                raise
            # Damaged files: the log is read again from the topic, as with no files.
            log.exception("delivery log: partition %s unreadable; reading it again", partition)
            shutil.rmtree(self._path(partition), ignore_errors=True)
            return self._open(partition, now)

    def _open(self, partition: int, now: float) -> PartitionLog:
        return PartitionLog(
            self._path(partition),
            max_attempts=self._max_attempts,
            max_age=self._max_age,
            now=now,
            options=self._options,
            cache=self._cache,
        )

    def add(
        self,
        partition: int,
        offset: int,
        attempt: Attempt,
        value: bytes,
        now: float,
        timestamp: int = -1,
    ) -> bool:
        return self.partitions[partition].add(attempt, value, offset, now, timestamp)

    def skip(self, partition: int, offset: int, timestamp: int = -1) -> None:
        self.partitions[partition].skip(offset, timestamp)

    def flush(self, partition: int) -> None:
        held = self.partitions.get(partition)
        if held is not None:
            held.flush()

    def close_partition(self, partition: int) -> None:
        # RocksDB refuses every write after one failed (its background error), until the
        # database is opened again.
        for one in (self.partitions.pop(partition, None), self._loaded.pop(partition, None)):
            if one is not None:
                one.close()

    def drop(self, partition: int) -> None:
        held = [self.partitions.pop(partition, None), self._loaded.pop(partition, None)]
        for one in held:
            if one is not None:
                one.destroy()
        shutil.rmtree(self._path(partition), ignore_errors=True)

    def sweep_steps(self, now: float) -> Iterator[None]:
        return _held_sweep_steps(self.partitions, now)

    def _partition_of(self, webhook_id: str) -> PartitionLog | None:
        for held in self.partitions.values():
            if held.stats(webhook_id) is not None:
                return held
        return None

    def get(self, webhook_id: str) -> Activity | None:
        held = self._partition_of(webhook_id)
        if held is None:
            return None
        stats = held.stats(webhook_id)
        assert stats is not None
        return Activity(held.log(webhook_id), stats)

    def empty(self) -> Activity:
        return empty_activity(self._max_attempts, self._max_age)

    def delivery(self, delivery_id: str) -> list[Attempt]:
        found: list[Attempt] = []
        for held in self.partitions.values():
            found.extend(held.delivery(delivery_id))
        return found

    def summary(self) -> dict[str, Any]:
        return {
            "store": "rocksdb",
            "webhooks": sum(len(p) for p in self.partitions.values()),
            "attempts": sum(p.attempts for p in self.partitions.values()),
            "disk_bytes": sum(p.disk_bytes() for p in self.partitions.values()),
        }

    def close(self) -> None:
        for held in [*self.partitions.values(), *self._loaded.values()]:
            held.close()
        self.partitions.clear()
        self._loaded.clear()
        if self._lock is not None:
            os.close(self._lock)  # releases the directory
            self._lock = None
