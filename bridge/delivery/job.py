"""One delivery job: an event for one webhook, from its source record to its outcome."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bridge.contract.events import Event
from bridge.contract.payload import EncodedEvent, delivery_id
from bridge.subscriptions.webhook import Webhook

__all__ = ["Ack", "MAX_SOURCE_KEY_BYTES", "SourceRef", "Job"]

#: Settles a source record: called once, when everything started for the record is settled
#: durably (delivered, scheduled for a retry, or dead-lettered). Synchronous, so that the
#: acknowledgement of a job's attempt record can settle the job (and its record) from a
#: callback (see :meth:`bridge.delivery.deliverer.Deliverer.run`).
Ack = Callable[[], None]


#: Bytes of a source record's key a dead letter names it by; a longer one by its size and SHA-256.
MAX_SOURCE_KEY_BYTES = 1024


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
        """The place as dead letters name it: a key of more than :data:`MAX_SOURCE_KEY_BYTES`
        by its size and SHA-256 (``key_omitted``), so that a record with a huge key still
        makes a dead letter that fits in a produce request."""
        out: dict[str, Any] = {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "key": None,
        }
        if self.key is not None and len(self.key) > MAX_SOURCE_KEY_BYTES:
            out["key_omitted"] = {"size": len(self.key), "sha256": self.key_digest()}
        elif self.key is not None:
            out["key"] = self.key.decode("utf-8", "replace")
        return out

    def key_digest(self) -> str:
        return hashlib.sha256(self.key or b"").hexdigest()

    @property
    def bounded_key(self) -> bytes | None:
        """The key to write a record about this one under: the key itself, or for one of more
        than :data:`MAX_SOURCE_KEY_BYTES`, its SHA-256 (hex), so that one record's key is
        always the same, and never larger than that."""
        if self.key is None or len(self.key) <= MAX_SOURCE_KEY_BYTES:
            return self.key
        return self.key_digest().encode("ascii")


@dataclass(frozen=True, repr=False)
class Job:
    """One attempt to deliver an event to a webhook: made by matching (or read from a retry tier),
    sent by a sender, settled by the deliverer."""

    encoded: EncodedEvent
    webhook: Webhook = field(repr=False)
    #: Number of this attempt (1 for the first).
    attempt: int
    source: SourceRef
    #: Earlier attempts (``AttemptResult.as_record()``), oldest first.
    history: Sequence[Mapping[str, Any]] = ()
    #: A delivery an operator sent again (a redelivery, a recovery, a dead letter replayed: a
    #: retry record's ``replayed``), and its retries: its attempts are recorded ``trigger``
    #: ``manual``.
    replayed: bool = False
    #: The recovery or redelivery that sent it (its retry record's), recorded with its attempts.
    recovery_id: str | None = None
    #: How many of ``history`` were made before an operator last sent the delivery again (a
    #: dead letter replayed; its retry record's ``replayed_after``): its deferrals are counted
    #: after them.
    replayed_after: int = 0
    #: The replay of a dead letter that sent it (its retry record's ``replay_id``).
    replay_id: str | None = None

    @property
    def event(self) -> Event:
        return self.encoded.event

    #: UUIDv5 of the event and webhook ids (set in ``__post_init__``).
    delivery_id: str = field(init=False, repr=False, compare=False)
    #: When the job was made, with ``webhook`` as the table held it then (wall clock, seconds):
    #: a delivery of a webhook turned off since was made before (endpoint health).
    made_at: float = field(default_factory=time.time, repr=False, compare=False)

    def __repr__(self) -> str:
        # No secret, URL, body or event data: jobs are logged.
        return (
            f"Job(delivery_id={self.delivery_id!r}, webhook_id={self.webhook.id!r}, "
            f"event_id={self.event.id!r}, event_type={self.event.type!r}, "
            f"attempt={self.attempt}, source={self.source!r})"
        )

    def __post_init__(self) -> None:
        # Not a cached_property: on Python 3.11 its lock cost more than the hash.
        object.__setattr__(self, "delivery_id", delivery_id(self.event.id, self.webhook.id))
