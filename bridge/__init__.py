"""webhook-bridge: delivers platform events from Kafka as signed webhooks.

The public Python API for the platform's services:

- :func:`build_event`, :func:`publish_event`, :func:`publish_events`: produce valid events;
- :class:`WebhookStore`: create, update, delete, list, rotate secrets of webhook subscriptions;
  :func:`send_test_event` sends a ``test.event`` to one webhook;
- :func:`list_dead_letters`, :func:`replay_dead_letters`: inspect and re-enqueue dead letters;
- :func:`apply_topics`: create the declared topics and report drift;
- :func:`sign`, :func:`verify`: the ``X-Webhook-Signature`` scheme;
- :class:`Settings`: every setting, from the environment and overrides.
"""

from __future__ import annotations

__version__ = "0.1.0"

from bridge.admin.management import (
    DeadLetterFilter,
    WebhookStore,
    apply_topics,
    list_dead_letters,
    publish_event,
    publish_events,
    replay_dead_letters,
    send_test_event,
)
from bridge.config import Settings
from bridge.contract.events import Event, build_event
from bridge.contract.payload import delivery_id
from bridge.contract.signing import sign, verify
from bridge.errors import (
    BridgeError,
    ConfigError,
    DeliveryError,
    InvalidEvent,
    InvalidRecord,
    InvalidSubscription,
    InvalidUrl,
    TopicDrift,
    UnencodableValue,
)
from bridge.subscriptions.webhook import Webhook

__all__ = [
    "__version__",
    "Settings",
    "BridgeError",
    "ConfigError",
    "DeliveryError",
    "InvalidEvent",
    "InvalidRecord",
    "InvalidSubscription",
    "InvalidUrl",
    "TopicDrift",
    "UnencodableValue",
    "Event",
    "build_event",
    "WebhookStore",
    "DeadLetterFilter",
    "list_dead_letters",
    "replay_dead_letters",
    "send_test_event",
    "apply_topics",
    "publish_event",
    "publish_events",
    "delivery_id",
    "sign",
    "verify",
    "Webhook",
]
