"""Fakes of the deliverer's collaborators: acknowledgements and the durable outputs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from bridge.subscriptions.webhook import Webhook


class Acks:
    """An acknowledgement callback (:data:`bridge.delivery.job.Ack`) that counts its calls."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


class AllTopicsBut:
    """Every topic name but some."""

    def __init__(self, missing: set[str]) -> None:
        self._missing = missing

    def __contains__(self, topic: object) -> bool:
        return topic not in self._missing


class RecordingProducer:
    """An ``AIOKafkaProducer`` stand-in, to patch in for the class (calling it gives itself):
    every write is kept as ``(topic, key, value)`` and acknowledged at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        #: Topics the brokers do not have (every other one exists).
        self.missing: set[str] = set()
        self.client = self  # (its metadata: every topic but the missing)

    def __call__(self, **_: Any) -> RecordingProducer:
        return self

    async def fetch_all_metadata(self) -> RecordingProducer:
        return self

    def topics(self) -> AllTopicsBut:
        return AllTopicsBut(self.missing)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    @property
    def values(self) -> list[bytes]:
        return [value for _, _, value in self.sent]

    async def send(self, topic: str, value: bytes, *, key: bytes) -> asyncio.Future[None]:
        self.sent.append((topic, key, value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class FakeOutputs:
    """:class:`bridge.delivery.deliverer.Outputs`, recorded in call order (records round-tripped
    through JSON, as the real ones are encoded)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.dead_letters: list[tuple[bytes | None, dict[str, Any]]] = []
        self.retries: list[tuple[int, bytes, bytes]] = []
        self.attempts: list[tuple[bytes, dict[str, Any]]] = []
        #: When set, attempt records stay unacknowledged until the test resolves their futures.
        self.hold_attempts = False
        self.attempt_writes: list[asyncio.Future[Any]] = []
        self.statuses: list[tuple[bytes, dict[str, Any]]] = []
        self.disabled: list[tuple[str, str]] = []
        self.disabled_reprs: list[str] = []
        #: What ``disable`` answers: turned off here (no owner), or left to an owner.
        self.disables_here = False
        #: When set, dead letters cannot be written (raised from ``dead_letter``).
        self.dead_letter_error: Exception | None = None
        #: When set, status records cannot be written (raised from ``status``).
        self.status_error: Exception | None = None

    async def dead_letter(self, key: bytes | None, record: dict[str, Any]) -> None:
        self.calls.append("dead_letter")
        if self.dead_letter_error is not None:
            raise self.dead_letter_error
        self.dead_letters.append((key, json.loads(json.dumps(record))))

    async def retry(self, tier: int, key: bytes, value: bytes) -> None:
        self.calls.append("retry")
        self.retries.append((tier, key, value))

    async def attempt(self, key: bytes, record: dict[str, Any]) -> asyncio.Future[Any]:
        self.calls.append("attempt")
        self.attempts.append((key, json.loads(json.dumps(record))))
        written: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self.hold_attempts:
            written.set_result(None)
        self.attempt_writes.append(written)
        return written

    async def status(self, key: bytes, record: dict[str, Any]) -> None:
        self.calls.append("status")
        if self.status_error is not None:
            raise self.status_error
        self.statuses.append((key, json.loads(json.dumps(record))))

    async def disable(self, webhook: Webhook, reason: str) -> bool:
        self.calls.append("disable")
        self.disabled.append((webhook.id, reason))
        self.disabled_reprs.append(repr(webhook))
        return self.disables_here

    def everything(self) -> str:
        """All that was written, as text (to look for secrets)."""
        parts = [json.dumps(r) for _, r in self.dead_letters + self.attempts + self.statuses]
        parts += [value.decode("utf-8") for _, _, value in self.retries]
        parts += [json.dumps(self.disabled), *self.disabled_reprs]
        return "\n".join(parts)


def positioned(
    stream_dead_letters: Callable[..., AsyncIterator[dict[str, Any]]],
) -> Callable[..., AsyncIterator[tuple[int, int, dict[str, Any]]]]:
    """A stand-in of ``stream_positioned_letters`` (what a replay reads) from one of
    ``stream_dead_letters``: its letters in partition 0, the n-th at offset n, read from
    ``start_offsets[0]`` when given."""

    async def stream(
        settings: Any, where: Any, *, start_offsets: Any = None, **kwargs: Any
    ) -> AsyncIterator[tuple[int, int, dict[str, Any]]]:
        first = (start_offsets or {}).get(0, 0)
        offset = 0
        async for record in stream_dead_letters(settings, where, **kwargs):
            if offset >= first:
                yield 0, offset, record
            offset += 1

    return stream


def consumers_of(make: Callable[..., Any]) -> Callable[..., Any]:
    """A stand-in for :func:`bridge.kafka.clients.new_consumer` (to patch in where a module
    calls it) that makes ``make(**kwargs)``, an ``AIOKafkaConsumer`` stand-in, whatever the
    settings."""

    def new_consumer(settings: Any, **kwargs: Any) -> Any:
        return make(**kwargs)

    return new_consumer
