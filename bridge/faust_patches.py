"""Adjustments to faust-streaming that its settings do not expose, applied once by bridge.app.

Faust creates its consumer with ``fetch_max_wait_ms=1500`` hard-coded. Real Kafka answers a
waiting fetch as soon as records arrive, but the embedded broker (Tansu) holds it for the whole
wait, which put up to 1.5 s between an event and its delivery. The bridge sets the wait from
``kafka_fetch_max_wait`` instead (idle fetches then cost one small request per wait per broker).
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

__all__ = ["set_fetch_max_wait"]

_fetch_max_wait_ms = 1500
_original = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer


def _create_worker_consumer(self: Any, transport: Any) -> Any:
    consumer = _original(self, transport)
    consumer._fetch_max_wait_ms = _fetch_max_wait_ms  # read when the consumer starts
    return consumer


def set_fetch_max_wait(seconds: float) -> None:
    """Use ``seconds`` as the longest time a fetch waits for records, for consumers created
    from now on."""
    global _fetch_max_wait_ms
    _fetch_max_wait_ms = max(1, int(seconds * 1000))
    consumer_thread: Any = faust_aiokafka.AIOKafkaConsumerThread
    consumer_thread._create_worker_consumer = _create_worker_consumer
