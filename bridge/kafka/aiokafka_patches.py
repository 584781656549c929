"""Patches to aiokafka for every consumer of the process: header keys read as Kafka's Java client.

A record header's key is a string in Kafka's protocol, and aiokafka decodes it strictly: a key
that is not UTF-8 (any producer can write one; the broker checks nothing) makes both of its
record readers (the compiled one, and the pure-Python one aiokafka uses without its
extensions, which wraps it in ``CorruptRecordException``) raise ``UnicodeDecodeError``
while the fetcher iterates the batch that holds it (``PartitionRecords._unpack_records``). The
error escaped ``getmany`` and ``getone``, and the next fetch returned the same batch: a Faust
worker crashed on it at every start (in the compacted subscriptions topic, which every worker
reads from its beginning, no worker could start at all), and the bridge's own readers (whole
topics, recoveries, the CLI) failed the same way. Apache Kafka's Java client decodes a header
key with ``new String(bytes, UTF_8)``, which puts U+FFFD for malformed bytes and never throws;
the bridge reads no header, and reads their keys that way too (``lenient_header_keys``):

- the fetcher's reader of a fetched message set keeps its bytes (:class:`_KeptRecords`);
- when iterating a batch raises ``UnicodeDecodeError``, aiokafka's own ``_unpack_records`` runs
  again over the rest of those bytes: the batch that failed read by aiokafka's pure-Python
  reader over a buffer whose slices decode with ``errors="replace"``, the batches after it by
  the fetcher's reader. aiokafka's loop skips the records it already handed on (offsets below
  its ``next_fetch_offset``), so each record comes out once, in order, and the offset of the
  next fetch is what it would have been;
- each record handed on with a key so read is logged once (topic, partition, offset; never a
  header).

Another ``UnicodeDecodeError`` (a consumer's deserializer's) is raised as before: the same error
again at the same offset is not taken for a header key's.

:func:`install` checks aiokafka's release and a fingerprint of each original
(:mod:`bridge.patching`); it runs where consumers are made: the Faust worker's
(:func:`bridge.worker.faust_patches.install`) and the bridge's own
(:func:`bridge.kafka.clients.new_consumer`).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterator
from typing import Any

from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record import default_records

from bridge.patching import Patch, apply, require_release

__all__ = ["AIOKAFKA_VERSION", "PATCHES", "ORIGINALS", "install"]

log = logging.getLogger(__name__)

#: The aiokafka release these patches (and :mod:`bridge.worker.faust_patches.connections`'s)
#: were written against and checked with.
AIOKAFKA_VERSION = "0.14.0"

#: aiokafka's, as found before the patch (wrapped, never copied); each internal is read with
#: ``getattr(..., None)`` (``object`` for a class to build on), so that one aiokafka lacks is a
#: :class:`~bridge.patching.PatchMismatch` naming the patch at :func:`install`, not an
#: ``AttributeError`` as this module is imported.
_original_unpack_records: Any = getattr(fetcher.PartitionRecords, "_unpack_records", None)
#: The fetcher's reader of a message set (compiled when aiokafka's extensions are built).
_Reader: Any = getattr(fetcher, "MemoryRecords", object)
#: aiokafka's pure-Python reader of a batch.
_PythonBatch: Any = getattr(default_records, "_DefaultRecordBatchPy", object)

#: Every batch format opens with its base offset (int64) and the length of what follows (int32).
_LENGTH = struct.Struct(">i")
_LENGTH_AT = 8
_LOG_OVERHEAD = 12


class _KeptRecords(_Reader):  # type: ignore[misc]
    """The fetcher's reader, holding the bytes it reads for a second reading."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.data = data


class _Replacing(bytearray):
    """A batch's records, whose slices decode as the Java client decodes a header key."""

    #: A slice failed to decode strictly since this was last cleared.
    replaced = False

    def __getitem__(self, index: Any) -> Any:
        item = super().__getitem__(index)
        return _Slice(item, self) if isinstance(index, slice) else item


class _Slice(bytearray):
    def __init__(self, data: bytearray, whole: _Replacing) -> None:
        super().__init__(data)
        self._whole = whole

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        try:
            return super().decode(encoding, errors)
        except UnicodeDecodeError:
            self._whole.replaced = True
            return super().decode(encoding, "replace")


class _LenientBatch(_PythonBatch):  # type: ignore[misc]
    """aiokafka's pure-Python reader of a batch, its header keys decoded with U+FFFD for
    malformed bytes; ``replaced(offset)`` is told of each record read so."""

    _buffer: bytearray

    def __init__(self, data: memoryview, replaced: Callable[[int], None]) -> None:
        super().__init__(data)
        self._replaced = replaced

    def __iter__(self) -> _LenientBatch:
        super().__iter__()  # decompresses into ``_buffer``
        self._buffer = _Replacing(self._buffer)
        return self

    def __next__(self) -> Any:
        buffer = self._buffer
        if isinstance(buffer, _Replacing):
            buffer.replaced = False
        record = super().__next__()
        if isinstance(buffer, _Replacing) and buffer.replaced:
            self._replaced(record.offset)
        return record


class _Rest:
    """A fetched message set from the first batch ending past ``resume`` (the one that failed):
    that batch read by :class:`_LenientBatch`, the ones after it by the fetcher's reader."""

    def __init__(self, data: bytes, resume: int, replaced: Callable[[int], None]) -> None:
        self._records = _Reader(data)
        self.failed: _LenientBatch | None = None
        start = 0
        while self._records.has_next():
            end = start + _LOG_OVERHEAD + _LENGTH.unpack_from(data, start + _LENGTH_AT)[0]
            if self._records.next_batch().next_offset > resume:
                self.failed = _LenientBatch(memoryview(data)[start:end], replaced)
                break
            start = end

    def has_next(self) -> bool:
        return self.failed is not None or bool(self._records.has_next())

    def next_batch(self) -> Any:
        batch, self.failed = self.failed, None
        return batch if batch is not None else self._records.next_batch()


def _unpack_records(self: Any) -> Iterator[Any]:
    records = _original_unpack_records(self)
    data = getattr(self._records, "data", None)
    tp = self._tp
    failed_at: int | None = None

    def replaced(offset: int) -> None:
        if offset >= self.next_fetch_offset:  # handed on (not one before the fetch offset)
            log.warning(
                "record at %s partition %d offset %d: a header key is not UTF-8; read with "
                "U+FFFD in place of its malformed bytes",
                tp.topic,
                tp.partition,
                offset,
                extra={"topic": tp.topic, "partition": tp.partition, "offset": offset},
            )

    while True:
        try:
            yield from records
            return
        except (UnicodeDecodeError, CorruptRecordException) as exc:
            # aiokafka's pure-Python reader (in use without its extensions) wraps the error.
            if isinstance(exc, CorruptRecordException) and not isinstance(
                exc.__cause__, UnicodeDecodeError
            ):
                raise
            resume = self.next_fetch_offset
            if data is None or resume == failed_at:
                raise  # not a header key's: read leniently, it failed again where it did
            rest = _Rest(data, resume, replaced)
            if rest.failed is None:
                raise
            failed_at, self._records = resume, rest
            records = _original_unpack_records(self)


PATCHES: tuple[Patch, ...] = (
    Patch(
        "lenient_header_keys",
        fetcher.PartitionRecords,
        "_unpack_records",
        _unpack_records,
        "b803e6d46480732c",
        "a header key that is not UTF-8 raises UnicodeDecodeError out of getmany and getone, "
        "at every fetch of its batch",
    ),
    Patch(
        "lenient_header_keys.kept",
        fetcher,
        "MemoryRecords",
        _KeptRecords,
        # The compiled reader, and the pure-Python one aiokafka uses without its extensions
        # (AIOKAFKA_NO_EXTENSIONS, or an install that did not build them): until 2026-12-07
        # the bridge refused to start there.
        ("9a2ab3ccf719adc7", "795a0314fbca30af"),
        "(the fetcher's reader of each fetched message set, which keeps no bytes to read again)",
    ),
    Patch(
        "lenient_header_keys.fetch",
        fetcher.Fetcher,
        "_proc_fetch_request",
        None,
        "59bf948fff47eed5",
        "(the fetch builds its reader from the module's MemoryRecords and hands it to "
        "PartitionRecords)",
    ),
    Patch(
        "lenient_header_keys.reader",
        default_records,
        "_DefaultRecordBatchPy",
        None,
        "f63fbb5a8a247d54",
        "(the pure-Python reader: decodes a header key from a slice of _buffer, which "
        "__iter__ decompresses)",
    ),
)

#: Each patched or relied-on attribute as aiokafka shipped it (as found when this module was
#: imported, before anything was installed); ``None`` for one it lacks.
ORIGINALS: dict[str, Any] = {p.name: getattr(p.owner, p.attribute, None) for p in PATCHES}


def install() -> None:
    """Apply :data:`PATCHES`, once, after checking aiokafka's release and each original.

    Idempotent. Raises :class:`~bridge.patching.PatchMismatch`, naming the patch, when aiokafka
    is another release (checked first) or an original is missing or not the code the patch was
    written against; nothing is patched then.
    """
    if all(getattr(p.owner, p.attribute, None) is p.replacement for p in PATCHES if p.replacement):
        # Installed, so checked: every consumer the bridge makes calls this, and checking
        # again fingerprinted two internals, one a class (inspect.getsource parses its module),
        # ~9 ms of the event loop a consumer (each page of dead letters the API role read,
        # until 2026-12-07).
        return
    require_release("aiokafka", AIOKAFKA_VERSION, "bridge.kafka.aiokafka_patches")
    apply(PATCHES, ORIGINALS, "aiokafka patch")
