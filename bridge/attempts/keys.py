"""RocksDB keys of the delivery log, encoded so that byte order is the log's order.

An attempt's key is ``webhook id, position`` where the position is (started at, delivery id,
attempt number), the order :class:`~bridge.attempts.log.WebhookLog` keeps. Each part is
encoded so that comparing keys byte by byte compares the parts in turn:

* text (UTF-8, lone surrogates passed through so any JSON string encodes) with each NUL byte
  escaped as ``00 FF`` and ended by ``00 01``: prefix-free, and a shorter text sorts first;
* the time as the 8 bytes of its IEEE 754 double with the sign bit flipped (negative: every
  bit flipped);
* the attempt number as its byte length, then its big-endian bytes.

Keys that start with ``00 00`` are the partition's own (no escaped text starts so): the
checkpoint, the index of attempts by delivery id, and each webhook's last success and failure.
"""

from __future__ import annotations

import struct

from bridge.attempts.record import Attempt

__all__ = [
    "CHECKPOINT",
    "DELIVERY_INDEX",
    "LAST_OUTCOME",
    "MAX_ATTEMPT_NUMBER",
    "attempt_key",
    "decode_time",
    "delivery_prefix",
    "encode_position",
    "encode_text",
    "is_attempt_key",
    "time_of",
    "webhook_part",
]

#: The next offset of the partition to read, as decimal ASCII.
CHECKPOINT = b"\x00\x00checkpoint"
#: ``DELIVERY_INDEX + text(delivery id) + attempt key`` -> ``b""`` for each kept attempt.
DELIVERY_INDEX = b"\x00\x00d"
#: ``LAST_OUTCOME + text(webhook id) + b"s"`` (or ``b"f"``) -> the record of the webhook's
#: newest successful (failed) attempt counted, which its log may no longer keep.
LAST_OUTCOME = b"\x00\x00l"
#: The largest attempt number a key holds (its byte length is one byte).
MAX_ATTEMPT_NUMBER = (1 << (8 * 255)) - 1

_SIGN = 1 << 63
_ALL = (1 << 64) - 1


def encode_text(text: str) -> bytes:
    """``text`` as a prefix-free, order-preserving key part."""
    return text.encode("utf-8", "surrogatepass").replace(b"\x00", b"\x00\xff") + b"\x00\x01"


def _encode_time(at: float) -> bytes:
    # + 0.0 makes -0.0 the same key as 0.0, as they compare equal.
    (bits,) = struct.unpack(">Q", struct.pack(">d", at + 0.0))
    return struct.pack(">Q", bits ^ _ALL if bits & _SIGN else bits | _SIGN)


def decode_time(data: bytes) -> float:
    """The time of 8 bytes from :func:`encode_position`."""
    (bits,) = struct.unpack(">Q", data)
    (at,) = struct.unpack(">d", struct.pack(">Q", bits ^ _SIGN if bits & _SIGN else bits ^ _ALL))
    return float(at)


def _encode_count(number: int) -> bytes:
    if number < 0:
        raise ValueError("an attempt number is not negative")
    if number > MAX_ATTEMPT_NUMBER:
        raise ValueError("attempt number too large for a key")
    size = (number.bit_length() + 7) // 8
    return bytes([size]) + number.to_bytes(size, "big")


def encode_position(at: float, delivery_id: str, attempt: int) -> bytes:
    """A position in a webhook's log as key bytes (``ValueError`` for an attempt number that
    does not fit)."""
    return _encode_time(at) + encode_text(delivery_id) + _encode_count(attempt)


def attempt_key(attempt: Attempt) -> bytes:
    """Where ``attempt`` is kept."""
    return encode_text(attempt.webhook_id) + encode_position(
        attempt.at_seconds, attempt.delivery_id, attempt.attempt
    )


def time_of(key: bytes, prefix_length: int) -> float:
    """The started-at time of an attempt key whose webhook part is ``prefix_length`` bytes."""
    return decode_time(key[prefix_length : prefix_length + 8])


def delivery_prefix(delivery_id: str) -> bytes:
    """The index keys of one delivery's attempts."""
    return DELIVERY_INDEX + encode_text(delivery_id)


def is_attempt_key(key: bytes) -> bool:
    return not key.startswith(b"\x00\x00")


def webhook_part(key: bytes) -> bytes:
    """The webhook part (with its end marker) of an attempt key."""
    index = 0
    while True:
        index = key.index(b"\x00", index)
        if key[index + 1] == 0x01:
            return key[: index + 2]
        index += 2
