"""Patch to aiokafka's broker connections (which Faust's consumer and producer, and the bridge's
own clients, send every request through): a connection found closed as a request is written is
a broken connection, on uvloop too.

aiokafka writes a request with ``transport.write`` and takes an ``OSError`` for a broken
connection: it closes the connection and raises ``KafkaConnectionError``, which every caller
retries (the producer's sender, the fetcher, the coordinator). The standard library's loop
never raises there once the peer reset the connection; uvloop raises ``RuntimeError`` ("unable
to perform operation on <TCPTransport closed=True>; the handler is closed"), which no caller
expects. Measured with the link to the broker cut again and again
(tests/integration/test_broker_faults.py): a producer's sender task died on it, and every later
write of that producer failed at once ("Unexpected error during batch delivery") for as long as
the worker ran; a fetcher's task died likewise, and the worker stopped reading its partitions
(a table's recovery waited for ever) while it kept its place in the group. The bridge turns that
``RuntimeError`` into what the ``OSError`` becomes (``closed_transport_is_a_broken_connection``).
"""

from __future__ import annotations

from typing import Any

import aiokafka.errors as kafka_errors
from aiokafka.conn import AIOKafkaConnection, CloseReason

__all__: list[str] = []

#: aiokafka's methods, as found before the patch (each wrapped, never copied); ``None`` when
#: aiokafka has none: install() then refuses to start, naming the patch.
_original_send: Any = getattr(AIOKafkaConnection, "send", None)
_original_send_sasl_token: Any = getattr(AIOKafkaConnection, "_send_sasl_token", None)


def _broken(connection: Any, exc: RuntimeError) -> Exception:
    """``exc`` as aiokafka reports an ``OSError`` writing to ``connection``, when the transport
    was closed under the write (``exc`` itself, re-raised, otherwise)."""
    writer = connection._writer
    if writer is None or not writer.transport.is_closing():
        return exc
    connection.close(reason=CloseReason.CONNECTION_BROKEN)
    broken: Exception = kafka_errors.KafkaConnectionError(
        f"Connection at {connection._host}:{connection._port} broken: {exc}"
    )
    return broken


def _send(self: AIOKafkaConnection, request: Any, expect_response: bool = True) -> Any:
    try:
        return _original_send(self, request, expect_response)
    except RuntimeError as exc:
        raise _broken(self, exc) from exc


def _send_sasl_token(self: AIOKafkaConnection, payload: bytes, expect_response: bool = True) -> Any:
    try:
        return _original_send_sasl_token(self, payload, expect_response)
    except RuntimeError as exc:
        raise _broken(self, exc) from exc
