"""Where the API reads delivery logs, stats and endpoint status: the ActivitySource protocol.

Implementations:

* :class:`~bridge.api.kafka_sources.KafkaActivitySource`: reads the attempts topic (one
  webhook's partition for its log and stats, every partition for one delivery) and the status
  topic on each request, through :mod:`bridge.admin.activity`, as the CLI's ``webhooks
  attempts``, ``webhooks stats`` and ``deliveries show`` do. Right for a management process
  and tests; each request costs a read.
* next (docs/api.md, "Where the state lives"): the worker's tables fed from the attempts and
  status topics, answering from memory or RocksDB, routed to the owner of the webhook's key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bridge.attempts.book import Activity
from bridge.attempts.record import Attempt
from bridge.contract import jsoncanon
from bridge.errors import InvalidRecord

__all__ = ["EndpointStatus", "ActivitySource"]

#: 9999-01-01T00:00:00Z in seconds: times from then on are not read from records (a day later
#: and beyond cannot be written back).
_YEAR_9999 = 253370764800.0


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    """The last endpoint status record of a webhook (``topics/schemas/status.json``)."""

    #: ``healthy``, ``failing`` or ``disabled``.
    state: str
    #: Unix time of the first failure since the last success, when failing.
    failing_since: float | None
    #: For ``disabled``: ``gone`` (HTTP 410) or ``failing`` (longer than ``disable_after``).
    reason: str | None
    updated_at: str

    @classmethod
    def parse(cls, value: bytes | None) -> EndpointStatus | None:
        """The status in a record's value; ``None`` for a tombstone or an unusable record."""
        if value is None:
            return None
        try:
            record = jsoncanon.loads(value)
        except InvalidRecord:
            return None
        if not isinstance(record, dict) or record.get("state") not in (
            "healthy",
            "failing",
            "disabled",
        ):
            return None
        since = record.get("failing_since")
        reason = record.get("reason")
        updated = record.get("updated_at")
        return cls(
            state=str(record["state"]),
            # A time the API can write back (before year 9999): a status record written by
            # something else with 1e300 made every stats answer of the webhook a 500.
            failing_since=(
                float(since)
                if isinstance(since, int | float)
                and not isinstance(since, bool)
                and 0 <= since < _YEAR_9999
                else None
            ),
            reason=reason if isinstance(reason, str) else None,
            updated_at=updated if isinstance(updated, str) else "",
        )


class ActivitySource(Protocol):
    """Delivery logs, stats and endpoint status for the API (see the module docstring)."""

    #: Whether :meth:`delivery` answers from the delivery logs' index of deliveries (at once),
    #: not by reading the whole attempts topic: only then does a dead-letter listing or replay
    #: that names a delivery alone ask it for the delivery's webhook.
    indexes_deliveries: bool

    async def activity(self, webhook_id: str) -> Activity:
        """The webhook's log and stats as of now (empty for a webhook without attempts)."""
        ...

    async def delivery(self, delivery_id: str) -> list[Attempt]:
        """Every kept attempt of one delivery, in the order they were made (``[]``: none)."""
        ...

    async def status(self, webhook_id: str) -> EndpointStatus | None:
        """The webhook's last endpoint status record, ``None`` when it has none."""
        ...
