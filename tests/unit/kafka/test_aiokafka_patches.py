"""bridge.kafka.aiokafka_patches: a record whose header key is not UTF-8 is read, through
aiokafka's own fetcher records (its compiled reader), as Kafka's Java client reads it; the
patch is checked against aiokafka's release and originals, and every consumer gets it."""

from __future__ import annotations

import ast
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.consumer import fetcher
from aiokafka.consumer.fetcher import READ_UNCOMMITTED, PartitionRecords
from aiokafka.errors import CorruptRecordException
from hypothesis import given
from hypothesis import strategies as st

import bridge
from bridge import patching
from bridge.config import Settings
from bridge.kafka import aiokafka_patches, clients
from bridge.patching import PatchMismatch, fingerprint
from bridge.worker import faust_patches
from tests.support.patches import as_shipped
from tests.support.records import RawHeaderKey, batch_builder

TP = TopicPartition("postion.webhooks", 3)

#: A header key no UTF-8 decoder takes, and how the Java client reads it.
BAD_KEY, READ_AS = b"\xff\xfetrace", "\ufffd\ufffdtrace"

Headers = Sequence[tuple[str, bytes]]


@pytest.fixture
def patched() -> Iterator[None]:
    """aiokafka as shipped during the test (the test installs the patches); afterwards as it
    was before."""
    with as_shipped(aiokafka_patches.PATCHES, aiokafka_patches.ORIGINALS):
        yield


def batch(base: int, headers: Sequence[Headers], compression: int = 0) -> bytes:
    """A record batch as the broker returns it: one record per entry, at offsets from
    ``base``, each with those headers."""
    builder = batch_builder(compression)
    for delta, record_headers in enumerate(headers):
        value = b"v%d" % (base + delta)
        builder.append(delta, timestamp=None, key=b"k", value=value, headers=list(record_headers))
    data = bytearray(builder.build())
    data[:8] = base.to_bytes(8, "big")  # the base offset, which the broker sets
    return bytes(data)


def read(data: bytes, fetch_offset: int = 0, **kwargs: Any) -> PartitionRecords:
    """aiokafka's fetcher records of ``data`` as its fetcher makes them (``MemoryRecords``
    from the fetched bytes, as patched), fetched from ``fetch_offset``."""
    options: dict[str, Any] = {"key_deserializer": None, "value_deserializer": None, **kwargs}
    return PartitionRecords(
        TP,
        fetcher.MemoryRecords(data),
        None,
        fetch_offset,
        options["key_deserializer"],
        options["value_deserializer"],
        True,  # check_crcs, aiokafka's default
        READ_UNCOMMITTED,
    )


#: Whether aiokafka runs without its compiled extensions here (its pure-Python readers).
PURE = bool(os.environ.get("AIOKAFKA_NO_EXTENSIONS"))


def test_the_reader_in_use_is_aiokafka_s_own_which_refuses_such_a_key() -> None:
    """What the patch is for: aiokafka's own fetcher records raise out of the batch (the
    compiled reader ``UnicodeDecodeError``, the pure-Python one ``CorruptRecordException``
    from it)."""
    shipped = aiokafka_patches.ORIGINALS["lenient_header_keys.kept"]
    compiled = shipped.__module__.startswith("aiokafka.record._crecords")
    assert compiled is not PURE
    data = batch(0, [[], [(RawHeaderKey(BAD_KEY), b"v")], []])
    records = PartitionRecords(TP, shipped(data), None, 0, None, None, True, READ_UNCOMMITTED)
    unpack = aiokafka_patches.ORIGINALS["lenient_header_keys"]
    records._records_iterator = unpack(records)
    assert next(records).offset == 0
    with pytest.raises((UnicodeDecodeError, CorruptRecordException)) as raised:
        next(records)
    if not compiled:
        assert isinstance(raised.value.__cause__, UnicodeDecodeError)


@pytest.mark.skipif(PURE, reason="runs this module with aiokafka's pure-Python readers itself")
def test_the_patches_hold_with_aiokafka_s_pure_python_readers() -> None:
    """aiokafka without its compiled extensions (``AIOKAFKA_NO_EXTENSIONS``, or an install
    that could not build them) reads with pure-Python classes: until 2026-12-07 the bridge
    refused to start there (the fetcher's reader has another fingerprint), and that reader
    wraps the header key's error in ``CorruptRecordException``, which the patch now reads
    too. This module's tests, run in a process where aiokafka is so."""
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        env={**os.environ, "AIOKAFKA_NO_EXTENSIONS": "1"},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-2000:]


def test_a_header_key_that_is_not_utf8_is_read_with_replacement_characters(
    patched: None, caplog: pytest.LogCaptureFixture
) -> None:
    aiokafka_patches.install()
    data = batch(0, [[], [(RawHeaderKey(BAD_KEY), b"secret header value")], [("ok", b"1")]])
    with caplog.at_level(logging.WARNING, logger=aiokafka_patches.__name__):
        records = read(data)
        out = list(records)
    assert [(r.offset, r.value, r.headers) for r in out] == [
        (0, b"v0", ()),
        (1, b"v1", ((READ_AS, b"secret header value"),)),
        (2, b"v2", (("ok", b"1"),)),
    ]
    assert records.next_fetch_offset == 3
    (logged,) = caplog.records
    assert (logged.topic, logged.partition, logged.offset) == (TP.topic, 3, 1)  # type: ignore[attr-defined]
    assert "offset 1" in logged.getMessage()
    assert "secret" not in logged.getMessage() and "trace" not in logged.getMessage()


@given(
    batches=st.lists(
        st.tuples(
            st.lists(
                st.lists(st.tuples(st.binary(max_size=6), st.binary(max_size=3)), max_size=3),
                min_size=1,
                max_size=4,
            ),
            st.sampled_from([0, 1]),  # not compressed, gzip
        ),
        min_size=1,
        max_size=4,
    ),
    data=st.data(),
)
def test_every_record_from_the_fetch_offset_comes_out_once_in_order(
    batches: list[tuple[list[list[tuple[bytes, bytes]]], int]], data: st.DataObject
) -> None:
    """Whatever bytes the header keys are, in whichever batches, compressed or not, fetched
    from any offset of the first: each record at or past it comes out once, in order, its keys
    read as ``decode("utf-8", "replace")``, and the next fetch starts after the last batch."""
    saved = {p.name: getattr(p.owner, p.attribute) for p in aiokafka_patches.PATCHES}
    aiokafka_patches.install()
    try:
        fetched_bytes, expected, base = b"", [], 0
        for records, compression in batches:
            headers = [[(RawHeaderKey(k), v) for k, v in h] for h in records]
            fetched_bytes += batch(base, headers, compression)
            for delta, h in enumerate(records):
                read_as = tuple((k.decode("utf-8", "replace"), v) for k, v in h)
                expected.append((base + delta, read_as))
            base += len(records)
        # A fetch returns the batch holding its offset first (aiokafka itself hands on the
        # records of a batch wholly before it, if given one).
        first = len(batches[0][0])
        start = data.draw(st.integers(min_value=0, max_value=first - 1), label="fetch offset")
        fetched = read(fetched_bytes, fetch_offset=start)
        assert [(r.offset, r.headers) for r in fetched] == expected[start:]
        assert fetched.next_fetch_offset == base
    finally:
        for patch in aiokafka_patches.PATCHES:
            setattr(patch.owner, patch.attribute, saved[patch.name])


def test_a_deserializer_s_unicode_error_is_raised_as_before(patched: None) -> None:
    """Not a header key's: read again leniently, it fails at the same offset, and is raised."""
    aiokafka_patches.install()

    def strict(value: bytes) -> str:
        if value == b"v1":
            raise UnicodeDecodeError("utf-8", value, 0, 1, "the deserializer's")
        return value.decode()

    records = read(batch(0, [[], [(RawHeaderKey(BAD_KEY), b"")], []]), value_deserializer=strict)
    assert next(records).value == "v0"
    with pytest.raises(UnicodeDecodeError, match="the deserializer's"):
        next(records)


# -- installing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("patch", aiokafka_patches.PATCHES, ids=lambda p: p.name)
def test_each_fingerprint_is_the_shipped_original_s(patch: Any) -> None:
    expected = (patch.fingerprint,) if isinstance(patch.fingerprint, str) else patch.fingerprint
    assert fingerprint(aiokafka_patches.ORIGINALS[patch.name]) in expected


def test_install_puts_every_replacement_in_place_once(patched: None) -> None:
    aiokafka_patches.install()
    aiokafka_patches.install()
    for patch in aiokafka_patches.PATCHES:
        expected = patch.replacement or aiokafka_patches.ORIGINALS[patch.name]
        assert getattr(patch.owner, patch.attribute) is expected, patch.name


@pytest.mark.parametrize("name", [p.name for p in aiokafka_patches.PATCHES])
def test_a_changed_original_refuses_to_start_naming_the_patch(
    name: str, patched: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch = next(p for p in aiokafka_patches.PATCHES if p.name == name)

    class Changed:
        """Not the code the patch was written against."""

    monkeypatch.setattr(patch.owner, patch.attribute, Changed)
    with pytest.raises(PatchMismatch, match=f"aiokafka patch {re.escape(name)}:"):
        aiokafka_patches.install()
    for other in aiokafka_patches.PATCHES:
        if other.name != name:
            assert getattr(other.owner, other.attribute) is aiokafka_patches.ORIGINALS[other.name]


@pytest.mark.parametrize("name", [p.name for p in aiokafka_patches.PATCHES])
def test_a_missing_original_refuses_to_start_naming_the_patch_and_what_is_missing(
    name: str, patched: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch = next(p for p in aiokafka_patches.PATCHES if p.name == name)
    monkeypatch.delattr(patch.owner, patch.attribute)
    with pytest.raises(
        PatchMismatch, match=f"aiokafka patch {re.escape(name)}: .* has no {patch.attribute},"
    ):
        aiokafka_patches.install()
    for other in aiokafka_patches.PATCHES:  # nothing was patched
        if other.name != name:
            assert getattr(other.owner, other.attribute) is aiokafka_patches.ORIGINALS[other.name]


def test_another_aiokafka_release_refuses_to_start(
    patched: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aiokafka_patches, "AIOKAFKA_VERSION", "0.13.0")
    with pytest.raises(PatchMismatch, match="aiokafka 0.14.0 is installed"):
        aiokafka_patches.install()
    with pytest.raises(PatchMismatch, match="aiokafka 0.14.0 is installed"):
        faust_patches.install()  # the worker's installer, whose connection patches are aiokafka's
    assert PartitionRecords._unpack_records is aiokafka_patches.ORIGINALS["lenient_header_keys"]


def test_the_bridge_s_consumers_are_made_patched(
    patched: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[dict[str, Any]] = []
    monkeypatch.setattr(clients, "AIOKafkaConsumer", lambda **kwargs: made.append(kwargs))
    settings = Settings.load(env={}, overrides={"kafka_bootstrap_servers": "h:1"})
    clients.new_consumer(settings, group_id=None)
    assert made == [{**clients.client_kwargs(settings), "group_id": None}]
    assert PartitionRecords._unpack_records is aiokafka_patches._unpack_records


def test_the_worker_s_consumers_are_made_patched(patched: None) -> None:
    """Faust makes the worker's: the worker's installer (``Bridge`` calls it) installs these."""
    faust_patches.install()
    assert PartitionRecords._unpack_records is aiokafka_patches._unpack_records
    assert fetcher.MemoryRecords is aiokafka_patches._KeptRecords


def test_no_module_makes_an_aiokafka_consumer_but_new_consumer() -> None:
    package = Path(bridge.__file__).parent
    makers = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name | ast.Attribute)
                and (getattr(node.func, "id", None) or getattr(node.func, "attr", None))
                == "AIOKafkaConsumer"
            ):
                makers.append(str(path.relative_to(package)))
    assert makers == ["kafka/clients.py"]


def test_a_second_install_checks_nothing_again(
    patched: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every consumer the bridge makes installs the patches: once installed, nothing is
    fingerprinted again (~9 ms of the event loop a consumer, a class's module parsed)."""
    aiokafka_patches.install()
    checked: list[object] = []
    monkeypatch.setattr(patching, "fingerprint", lambda original: checked.append(original))
    monkeypatch.setattr(aiokafka_patches, "require_release", lambda *a: checked.append(a))
    aiokafka_patches.install()
    assert checked == []
