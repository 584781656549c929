"""Jobs as the senders receive them: a :class:`~bridge.delivery.job.Job` and its body."""

from __future__ import annotations

from typing import NamedTuple

from bridge.contract.events import Event
from bridge.contract.payload import EncodedEvent, build_body
from bridge.delivery.job import Job, SourceRef
from bridge.subscriptions.webhook import Webhook

#: Where test jobs come from (no record was read).
SOURCE = SourceRef("events", 0, 0)


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
