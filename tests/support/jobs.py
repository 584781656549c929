"""Jobs as the senders receive them: a :class:`~bridge.delivery.job.Job` and its body."""

from __future__ import annotations

from typing import Any, NamedTuple

from bridge.contract.events import Event
from bridge.contract.payload import EncodedEvent, build_body
from bridge.delivery.job import Job, SourceRef
from bridge.subscriptions.webhook import Webhook

#: Where test jobs come from (no record was read).
SOURCE = SourceRef("events", 0, 0)

#: The documentation's example event (with a non-ASCII title).
SPEC_EVENT = Event(
    id="evt_1",
    type="post.published",
    data={"id": "post_123", "title": "Héllo ✓"},
    timestamp="2024-01-15T10:30:00Z",
    site_id="site_789",
    user_id="user_456",
)


def spec_webhook(url: str, secret: str, **changes: Any) -> Webhook:
    """The documentation's example webhook (every event of site_789), at ``url``."""
    fields: dict[str, Any] = {
        "id": "webhook_abc",
        "name": "My Webhook",
        "url": url,
        "secret": secret,
        "events": frozenset({"*"}),
        "site_id": "site_789",
        "user_id": "user_456",
    }
    fields.update(changes)
    return Webhook(**fields)


class Outgoing(NamedTuple):
    """What a sender is called with (``sender.send(*outgoing)``), readable as one delivery."""

    job: Job
    body: bytes

    @property
    def delivery_id(self) -> str:
        return self.job.delivery_id

    @property
    def webhook(self) -> Webhook:
        return self.job.webhook


def outgoing(event: Event, webhook: Webhook, *, attempt: int = 1) -> Outgoing:
    """The first attempt of ``event`` for ``webhook``, with the body the deliverer builds."""
    encoded = EncodedEvent.of(event)
    return Outgoing(Job(encoded, webhook, attempt, SOURCE), build_body(encoded, webhook))
