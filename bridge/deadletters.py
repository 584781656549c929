"""Dead letters: what the bridge could not process or deliver, with a machine-readable reason."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from .delivery import AttemptResult
from .events import Event, format_timestamp

__all__ = ["SourceRef", "DeadLetterSink", "dead_letter_record"]

#: Longest excerpt of an unparseable record kept in its dead letter (the full record stays in
#: its source topic at the offset given).
MAX_RAW_CHARS = 64 * 1024


@dataclass(frozen=True)
class SourceRef:
    """Where a record came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = None

    @classmethod
    def of(cls, message: Any) -> SourceRef:
        """Where a consumed record (a Faust message: ``topic``, ``partition``, ``offset``,
        ``key``) came from."""
        return cls(message.topic, message.partition, message.offset, message.key)

    def as_record(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "key": None if self.key is None else self.key.decode("utf-8", "replace"),
        }


class DeadLetterSink(Protocol):
    """Writes a dead letter durably; returns once the broker has acknowledged it."""

    async def send(self, key: bytes | None, record: dict[str, Any]) -> None: ...


def dead_letter_record(
    *,
    reason: str,
    detail: str,
    source: SourceRef,
    now: datetime,
    event: Event | None = None,
    raw: bytes | None = None,
    webhook_id: str | None = None,
    delivery_id: str | None = None,
    attempts: Sequence[AttemptResult] = (),
) -> dict[str, Any]:
    """The dead-letter record (``topics/schemas/deadletter.json``). Never includes a secret."""
    record: dict[str, Any] = {
        "reason": reason,
        "detail": detail,
        "source": source.as_record(),
        "event": event.envelope() if event is not None else None,
        "raw": None,
        "webhook_id": webhook_id,
        "delivery_id": delivery_id,
        "attempts": [a.as_record() for a in attempts],
        "dead_lettered_at": format_timestamp(now),
    }
    if event is None and raw is not None:
        record["raw"] = raw.decode("utf-8", "replace")[:MAX_RAW_CHARS]
    return record
