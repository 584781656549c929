"""The delivery log of one attempts partition in its own RocksDB database, with a checkpoint.

One database per partition (as faust-streaming's RocksDB store keeps one per table
partition), so a revoked partition is closed and deleted whole. It holds (see
:mod:`bridge.attempts.keys`):

* ``webhook id, position -> the attempt record's bytes as read`` (fields this version does not
  know are kept and shown by a version that does);
* ``delivery index: delivery id, attempt key -> b""``, for the deliveries route;
* the checkpoint, the next offset of the partition to read and the timestamp of the record
  before it (so a reader can tell the topic it was read from is still the one it finds),
  written in the same ``WriteBatch`` as the attempts it covers: after a crash the database
  holds exactly the attempts of the records before its checkpoint (each kept or dropped by
  the same rules as :class:`~bridge.attempts.log.WebhookLog`);
* each webhook's last success and failure counted (their records), written with the attempt
  that made them so, and deleted when the webhook is forgotten.

Memory holds, per webhook, its count of kept attempts, the key of its oldest one and its
:class:`~bridge.attempts.stats.WebhookStats`; the stats are rebuilt at open from the kept
attempts (so after a restart they count kept attempts only: at most ``max_attempts`` per
webhook), and its last success and failure read back (until 2026-12-06 lost with the attempts
its log no longer kept). Everything else is read from disk when asked.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import rocksdict

from bridge.attempts.book import SWEEP_CHUNK
from bridge.attempts.keys import (
    CHECKPOINT,
    DELIVERY_INDEX,
    LAST_OUTCOME,
    attempt_key,
    delivery_prefix,
    encode_position,
    encode_text,
    is_attempt_key,
    time_of,
    webhook_part,
)
from bridge.attempts.log import LogQuery, Page, decode_cursor, fill_page
from bridge.attempts.record import Attempt
from bridge.attempts.stats import WebhookStats
from bridge.errors import InvalidRecord
from bridge.memo import put_newest

__all__ = ["Checkpoint", "DiskWebhookLog", "PartitionLog", "RocksOptions"]

log = logging.getLogger(__name__)


class Checkpoint(NamedTuple):
    """Where reading a partition stopped."""

    #: The next offset to read.
    offset: int
    #: The timestamp (ms) of the record at ``offset - 1``, as the broker gave it.
    timestamp: int

    def encode(self) -> bytes:
        return b"%d %d" % self

    @classmethod
    def decode(cls, raw: bytes) -> Checkpoint:
        offset, timestamp = raw.split()
        return cls(int(offset), int(timestamp))


@dataclass(frozen=True)
class RocksOptions:
    """The RocksDB options of every partition's database.

    faust-streaming's store (``faust/stores/rocksdb.py``) sets the same knobs: write buffer
    size and count, target file size, a bloom filter, an LRU block cache and a binary-search
    index. Its defaults (64 MiB x 3 write buffers and a 2 GiB cache per database) suit a table
    that is the worker's main state; here one worker holds several partitions beside its
    other work, so buffers are small, the cache is shared by all partitions, and the bloom
    filter has 10 bits per key (about 1% false positives) because every record read asks
    whether its key is already kept, and the answer is almost always no."""

    write_buffer_size: int = 4 * 1024 * 1024
    max_write_buffer_number: int = 2
    target_file_size_base: int = 16 * 1024 * 1024
    bloom_bits_per_key: int = 10
    block_cache_size: int = 16 * 1024 * 1024
    max_open_files: int = 256

    def options(self, cache: rocksdict.Cache) -> rocksdict.Options:
        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_max_open_files(self.max_open_files)
        opts.set_write_buffer_size(self.write_buffer_size)
        opts.set_max_write_buffer_number(self.max_write_buffer_number)
        opts.set_target_file_size_base(self.target_file_size_base)
        # Attempt records are JSON: LZ4 roughly halves them at little CPU.
        opts.set_compression_type(rocksdict.DBCompressionType.lz4())
        table = rocksdict.BlockBasedOptions()
        table.set_bloom_filter(self.bloom_bits_per_key, True)
        table.set_block_cache(cache)
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        opts.set_block_based_table_factory(table)
        return opts


@dataclass
class _Held:
    """What memory keeps of one webhook."""

    count: int = 0
    #: The key of the oldest kept attempt (``b""`` while none is kept).
    oldest: bytes = b""
    stats: WebhookStats = field(default_factory=WebhookStats)


class PartitionLog:
    """Every webhook's log of one attempts partition (module docstring).

    The rules are :class:`~bridge.attempts.log.WebhookLog`'s: at most ``max_attempts`` per
    webhook, none older than ``max_age`` seconds, an attempt read twice kept and counted once.
    """

    #: Attempts counted without being kept (older than every kept one in a full log) that it
    #: remembers, in all its webhooks, to count each once.
    COUNTED_REMEMBERED = 4096

    def __init__(
        self,
        path: Path,
        *,
        max_attempts: int,
        max_age: float,
        now: float,
        options: RocksOptions | None = None,
        cache: rocksdict.Cache | None = None,
    ) -> None:
        if max_attempts < 1 or max_age <= 0:
            raise ValueError("a delivery log keeps at least one attempt for some time")
        self.path = path
        self.max_attempts = max_attempts
        self.max_age = max_age
        options = options or RocksOptions()
        path.mkdir(parents=True, exist_ok=True)
        self._db = rocksdict.Rdict(
            str(path),
            options=options.options(cache or rocksdict.Cache(options.block_cache_size)),
        )
        #: Writes go through here (a seam for tests that make a write fail).
        self.write: Callable[[rocksdict.WriteBatch], None] = self._db.write
        self._held: dict[bytes, _Held] = {}
        #: The checkpoint to write with the next write.
        self._pending: Checkpoint | None = None
        self._counted: dict[bytes, None] = {}
        try:
            raw = self._db.get(CHECKPOINT)
            #: Where reading stopped, as written (``None``: nothing was ever written).
            self.checkpoint: Checkpoint | None = None if raw is None else Checkpoint.decode(raw)
            self._load(now)
        except BaseException:
            # Damaged files (a checksum that does not match, a value not written here): the
            # database is closed before the error goes up, so that the store can remove and
            # open it afresh (until 2026-12-06 its lock, still held, made that fail too).
            self._db.close()
            raise

    def _load(self, now: float) -> None:
        """Count every kept attempt and rebuild the stats; expired attempts are deleted."""
        iterator = self._db.iter()
        try:
            iterator.seek_to_first()
            while iterator.valid():
                key = bytes(iterator.key())
                if is_attempt_key(key):
                    prefix = webhook_part(key)
                    held = self._held.get(prefix)
                    if held is None:
                        held = self._held[prefix] = _Held(oldest=key)
                    held.count += 1
                    try:
                        held.stats.add(Attempt.parse(bytes(iterator.value())), now)
                    except InvalidRecord:
                        pass  # only valid records are kept; a damaged one is not counted
                iterator.next()
            # The last outcomes after the attempts (their keys sort first: 00 00), once the
            # kept attempts said which webhook, created when, is counted.
            iterator.seek(LAST_OUTCOME)
            while iterator.valid():
                key = bytes(iterator.key())
                if not key.startswith(LAST_OUTCOME):
                    break
                prefix = key[len(LAST_OUTCOME) : -1]
                held = self._held.get(prefix)
                if held is None:
                    held = self._held[prefix] = _Held()
                try:
                    held.stats.remember(Attempt.parse(bytes(iterator.value())))
                except InvalidRecord:
                    pass
                iterator.next()
        finally:
            # Gone before the database is closed, whatever happened: a traceback that kept it
            # (a log handler's) kept the database, and its lock, open.
            del iterator
        self.sweep(now)

    # -- writing ---------------------------------------------------------------------------------
    def add(
        self, attempt: Attempt, value: bytes, offset: int, now: float, timestamp: int = -1
    ) -> bool:
        """Keep ``attempt`` (``value`` as read, at ``offset`` with ``timestamp``), and the
        checkpoint past it, in one write; ``False`` when it was already kept or too old (the
        checkpoint is then written with the next write or :meth:`flush`). A failed write
        raises and changes nothing, in memory or on disk."""
        read = Checkpoint(offset + 1, timestamp)
        verdict = self._keeps(attempt, now)
        if verdict != "keep":
            self._pending = read
            if verdict == "older_than_kept":
                # Counted, not kept: see WebhookLog.add (a timeout recorded after a full log
                # of newer attempts was in no stat until 2026-12-06).
                prefix = encode_text(attempt.webhook_id)
                held = self._held.get(prefix)
                if held is not None:
                    batch = rocksdict.WriteBatch(raw_mode=True)
                    if self._last_outcome(batch, prefix, held, attempt, value):
                        self.write(batch)
                    held.stats.add(attempt, now)
                    # Remembered (a bounded number), so that a copy of it, or its record read
                    # again after a failed write sent the reader back to the checkpoint, is not
                    # counted again.
                    put_newest(self._counted, attempt_key(attempt), None, self.COUNTED_REMEMBERED)
            return False
        key = attempt_key(attempt)
        prefix = encode_text(attempt.webhook_id)
        held = self._held.get(prefix)
        batch = rocksdict.WriteBatch(raw_mode=True)
        batch.put(key, value)
        batch.put(DELIVERY_INDEX + encode_text(attempt.delivery_id) + key, b"")
        current = held or _Held()
        count, oldest = self._trim(batch, prefix, current, key, now)
        batch.put(CHECKPOINT, read.encode())
        self._last_outcome(batch, prefix, current, attempt, value)
        self.write(batch)
        self.checkpoint = self._pending = read
        current.count, current.oldest = count, oldest
        if held is None:
            self._held[prefix] = current
        current.stats.add(attempt, now)
        return True

    @staticmethod
    def _last_outcome(
        batch: rocksdict.WriteBatch, prefix: bytes, held: _Held, attempt: Attempt, value: bytes
    ) -> bool:
        """Put (in ``batch``) ``attempt``'s record as the webhook's last success or failure
        when the stats, counting it next, take it as such; whether it did."""
        if not held.stats.takes_as_last(attempt):
            return False
        batch.put(LAST_OUTCOME + prefix + (b"s" if attempt.outcome == "success" else b"f"), value)
        return True

    def _keeps(self, attempt: Attempt, now: float) -> str:
        """``keep`` when ``attempt`` is new, recent enough, and not older than everything in a
        full log; else why not: ``too_old``, ``duplicate``, ``older_than_kept``."""
        if attempt.at_seconds < now - self.max_age:
            return "too_old"
        try:
            key = attempt_key(attempt)
        except ValueError:
            return "too_old"  # an attempt number no key can hold
        held = self._held.get(encode_text(attempt.webhook_id))
        if held is None or not held.count:
            return "keep"
        if self._db.key_may_exist(key) and self._db.get(key) is not None:
            return "duplicate"  # the same record read twice
        if held.count < self.max_attempts or key > held.oldest:
            return "keep"
        if key in self._counted:
            return "duplicate"  # counted (not kept) already: a copy, or read again
        return "older_than_kept"

    def flush(self) -> None:
        """Write the checkpoint of records read since the last write, if any."""
        if self._pending is None or self._pending == self.checkpoint:
            return
        batch = rocksdict.WriteBatch(raw_mode=True)
        batch.put(CHECKPOINT, self._pending.encode())
        self.write(batch)
        self.checkpoint = self._pending

    def skip(self, offset: int, timestamp: int = -1) -> None:
        """A record that is not an attempt was read at ``offset``."""
        self._pending = Checkpoint(offset + 1, timestamp)

    def _ascending(self, prefix: bytes, held: _Held, new: bytes | None) -> Iterator[bytes]:
        """The webhook's kept keys oldest first, with ``new`` (not yet written) among them."""
        iterator = self._db.iter()
        iterator.seek(held.oldest)
        # Counted, not walked to the next webhook: that would step over its deleted keys.
        for _ in range(held.count):
            if not iterator.valid():
                break
            key = bytes(iterator.key())
            if new is not None and new < key:
                yield new
                new = None
            yield key
            iterator.next()
        if new is not None:
            yield new

    def _trim(
        self, batch: rocksdict.WriteBatch, prefix: bytes, held: _Held, new: bytes | None, now: float
    ) -> tuple[int, bytes]:
        """Delete (in ``batch``) the oldest attempts past the count and the age limits, with
        ``new`` counted in; the count and oldest key after the batch."""
        count = held.count + (new is not None)
        cutoff = now - self.max_age
        for key in self._ascending(prefix, held, new):
            if count <= self.max_attempts and time_of(key, len(prefix)) >= cutoff:
                return count, key
            count -= 1
            if key != new:
                self._delete(batch, prefix, key)
        return 0, b""

    def _delete(self, batch: rocksdict.WriteBatch, prefix: bytes, key: bytes) -> None:
        batch.delete(key)
        # The delivery id is the text after the time in the key.
        start = len(prefix) + 8
        end = len(webhook_part(key[start:])) + start
        batch.delete(DELIVERY_INDEX + key[start:end] + key)

    def expire(self, prefix: bytes, now: float) -> None:
        """Delete the webhook's attempts older than the age limit."""
        held = self._held.get(prefix)
        if held is None or not held.count:
            return
        if time_of(held.oldest, len(prefix)) >= now - self.max_age:
            return
        batch = rocksdict.WriteBatch(raw_mode=True)
        count, oldest = self._trim(batch, prefix, held, None, now)
        self.write(batch)
        held.count, held.oldest = count, oldest

    def sweep(self, now: float) -> None:
        """Expire every webhook's old attempts and stats buckets; forget webhooks left with
        neither."""
        for _ in self.sweep_steps(now):
            pass

    def sweep_steps(self, now: float, chunk: int = SWEEP_CHUNK) -> Iterator[None]:
        """:meth:`sweep`, ``chunk`` webhooks a step: the webhooks held when it started, as
        they are at their turn (attempts added between steps are fine)."""
        prefixes = list(self._held)
        for start in range(0, len(prefixes), chunk):
            for prefix in prefixes[start : start + chunk]:
                held = self._held.get(prefix)
                if held is None:
                    continue
                self.expire(prefix, now)
                held.stats.expire(now)
                if not held.count and not held.stats.buckets:
                    del self._held[prefix]
                    batch = rocksdict.WriteBatch(raw_mode=True)
                    batch.delete(LAST_OUTCOME + prefix + b"s")
                    batch.delete(LAST_OUTCOME + prefix + b"f")
                    self.write(batch)
            yield

    # -- reading ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Webhooks held."""
        return len(self._held)

    @property
    def attempts(self) -> int:
        """Attempts kept."""
        return sum(h.count for h in self._held.values())

    def stats(self, webhook_id: str) -> WebhookStats | None:
        held = self._held.get(encode_text(webhook_id))
        return None if held is None else held.stats

    def log(self, webhook_id: str) -> DiskWebhookLog:
        return DiskWebhookLog(self, webhook_id)

    def count(self, prefix: bytes) -> int:
        held = self._held.get(prefix)
        return 0 if held is None else held.count

    def newest_first(self, prefix: bytes, before: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        """The webhook's ``(key, value)`` pairs below ``before`` (or all), newest first; never
        below its oldest kept key (deleted keys below it are not walked)."""
        held = self._held.get(prefix)
        if held is None or not held.count:
            return
        iterator = self._db.iter()
        if before is None:
            iterator.seek_for_prev(_end(prefix))
        else:
            iterator.seek_for_prev(before)
        while iterator.valid():
            key = bytes(iterator.key())
            if key == before or not key.startswith(prefix):
                if key < held.oldest:
                    return
                iterator.prev()
                continue
            if key < held.oldest:
                return
            yield key, bytes(iterator.value())
            if key == held.oldest:
                return  # below it are deleted keys, which the iterator would walk over
            iterator.prev()

    def oldest_first(self, prefix: bytes) -> Iterator[bytes]:
        """The webhook's kept values, oldest first."""
        held = self._held.get(prefix)
        if held is None:
            return
        iterator = self._db.iter()
        iterator.seek(held.oldest)
        for _ in range(held.count):
            if not iterator.valid():
                return
            yield bytes(iterator.value())
            iterator.next()

    def delivery(self, delivery_id: str, webhook_id: str | None = None) -> list[Attempt]:
        """The kept attempts of one delivery (of one webhook, when given), by position."""
        start = delivery_prefix(delivery_id)
        if webhook_id is not None:
            start += encode_text(webhook_id)
        found: list[Attempt] = []
        iterator = self._db.iter()
        iterator.seek(start)
        while iterator.valid():
            index_key = bytes(iterator.key())
            if not index_key.startswith(start):
                break
            iterator.next()
            key = index_key[len(delivery_prefix(delivery_id)) :]
            raw = self._db.get(key)
            kept = None if raw is None else _readable(bytes(raw))
            if kept is not None:
                found.append(kept)
        return found

    # -- the database ----------------------------------------------------------------------------
    def close(self) -> None:
        """Close the database. One that failed a write fails to flush its memtable at close
        too, and is closed all the same (RocksDB's lock released): its writes that succeeded
        are in its write-ahead log, read back at the next open."""
        try:
            self._db.close()
        except Exception as exc:
            log.warning("delivery log: %s closed without a flush: %s", self.path, exc)

    def destroy(self) -> None:
        """Close and delete the database, deleted even when the close fails (until 2026-12-07
        such a partition, revoked while it waited to be opened again, stopped the reader, its
        files kept)."""
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)

    def disk_bytes(self) -> int:
        """The size of the database's files."""
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def property(self, name: str) -> Any:
        return self._db.property_int_value(name)


def _end(prefix: bytes) -> bytes:
    """The first key after every key that starts with the text ``prefix`` (its end marker
    ``00 01`` plus one)."""
    return prefix[:-1] + b"\x02"


class DiskWebhookLog:
    """One webhook's log in a :class:`PartitionLog`, queried as
    :class:`~bridge.attempts.log.WebhookLog` is (same results, same cursors)."""

    def __init__(self, partition: PartitionLog, webhook_id: str) -> None:
        self._partition = partition
        self._webhook_id = webhook_id
        self._prefix = encode_text(webhook_id)

    def __len__(self) -> int:
        return self._partition.count(self._prefix)

    @property
    def max_age(self) -> float:
        return self._partition.max_age

    def page(
        self, query: LogQuery, *, now: float, limit: int = 50, cursor: str | None = None
    ) -> Page:
        """As :meth:`WebhookLog.page <bridge.attempts.log.WebhookLog.page>`; reads at most the
        webhook's kept attempts (``max_attempts``), fewer when ``since`` or the page ends it."""
        if not 1 <= limit <= 1000:
            raise ValueError("limit must be between 1 and 1000")
        before = None
        if cursor is not None:
            # decode_cursor refuses the positions a key cannot hold
            before = self._prefix + encode_position(*decode_cursor(cursor))
        try:
            self._partition.expire(self._prefix, now)
        except Exception:  # the page filters by age anyway; the sweep deletes them later
            log.exception("delivery log: expired attempts not deleted")
        cutoff = now - self._partition.max_age
        if query.since is not None:
            cutoff = max(cutoff, query.since)

        def kept() -> Iterator[Attempt]:
            for key, value in self._partition.newest_first(self._prefix, before):
                if time_of(key, len(self._prefix)) < cutoff:
                    return  # read by its key's time, before the value is parsed
                attempt = _readable(value)
                if attempt is not None:
                    yield attempt

        return fill_page(kept(), query, limit)

    def attempts(self) -> list[Attempt]:
        """Every kept attempt, oldest first."""
        readable = (_readable(v) for v in self._partition.oldest_first(self._prefix))
        return [attempt for attempt in readable if attempt is not None]

    def delivery(self, delivery_id: str) -> list[Attempt]:
        """Every kept attempt of one delivery, in the order they were made."""
        return self._partition.delivery(delivery_id, self._webhook_id)


def _readable(value: bytes) -> Attempt | None:
    """The attempt a stored value holds, ``None`` for one this release does not read (kept by
    an earlier release whose checks were looser: an integer past JavaScript's safe range, a
    time in year 9999): left out of every answer, as the memory store never keeps one, where
    until 2026-12-06 it made every page of its webhook a 500."""
    try:
        return Attempt.parse(value)
    except InvalidRecord:
        return None
