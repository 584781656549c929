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

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bridge.admin.dead_letters import DeadLetterFilter, list_dead_letters, replay_dead_letters
    from bridge.admin.publish import publish_event, publish_events, send_test_event
    from bridge.admin.topics import apply_topics
    from bridge.config import Settings
    from bridge.contract.events import Event, build_event
    from bridge.contract.payload import delivery_id
    from bridge.contract.signing import sign, verify
    from bridge.errors import (
        BridgeError,
        ConfigError,
        InvalidEvent,
        InvalidRecord,
        InvalidSubscription,
        InvalidUrl,
        MissingTopic,
        TopicDrift,
        UnencodableValue,
    )
    from bridge.subscriptions.store import WebhookStore
    from bridge.subscriptions.webhook import Webhook

#: Where each public name lives; imported on first use, so that the worker (which imports
#: ``bridge.worker``) never loads the admin tools.
_HOMES = {
    "Settings": "bridge.config",
    "BridgeError": "bridge.errors",
    "ConfigError": "bridge.errors",
    "InvalidEvent": "bridge.errors",
    "InvalidRecord": "bridge.errors",
    "InvalidSubscription": "bridge.errors",
    "InvalidUrl": "bridge.errors",
    "TopicDrift": "bridge.errors",
    "MissingTopic": "bridge.errors",
    "UnencodableValue": "bridge.errors",
    "Event": "bridge.contract.events",
    "build_event": "bridge.contract.events",
    "WebhookStore": "bridge.subscriptions.store",
    "DeadLetterFilter": "bridge.admin.dead_letters",
    "list_dead_letters": "bridge.admin.dead_letters",
    "replay_dead_letters": "bridge.admin.dead_letters",
    "send_test_event": "bridge.admin.publish",
    "apply_topics": "bridge.admin.topics",
    "publish_event": "bridge.admin.publish",
    "publish_events": "bridge.admin.publish",
    "delivery_id": "bridge.contract.payload",
    "sign": "bridge.contract.signing",
    "verify": "bridge.contract.signing",
    "Webhook": "bridge.subscriptions.webhook",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'bridge' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


__all__ = [
    "__version__",
    "Settings",
    "BridgeError",
    "ConfigError",
    "InvalidEvent",
    "InvalidRecord",
    "InvalidSubscription",
    "InvalidUrl",
    "TopicDrift",
    "MissingTopic",
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
