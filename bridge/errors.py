"""The bridge's exception hierarchy.

    BridgeError                      base of everything the bridge raises on purpose
    ├── ConfigError                  a setting is missing or malformed (not retriable)
    │   ├── PatchMismatch            faust-streaming or aiokafka is not what the bridge patches
    │   └── PrometheusClientMismatch prometheus-client differs from what bridge.metrics relies on
    ├── InvalidRecord                a Kafka record cannot be processed; it is dead-lettered
    │   ├── InvalidEvent             a platform event is malformed, schema-invalid or unknown
    │   ├── InvalidSubscription      a subscription record is malformed
    │   │   └── InvalidUrl           a webhook URL no deployment could ever call
    │   └── UnencodableValue         a value cannot be encoded byte-stably for JavaScript receivers
    ├── DestinationForbidden         the SSRF policy refused a destination (bridge.http.ssrf)
    └── TopicDrift                   a topic exists with partitions or configs other than declared

Each error says whether retrying the same operation can succeed (``retriable``), and records that
are dead-lettered carry a machine-readable ``reason`` (a short snake_case string) next to the
human-readable message. Callers branch on those attributes, never on message text.
"""

from __future__ import annotations

__all__ = [
    "BridgeError",
    "ConfigError",
    "InvalidRecord",
    "InvalidEvent",
    "InvalidSubscription",
    "InvalidUrl",
    "UnencodableValue",
    "TopicDrift",
    "MissingTopic",
]


class BridgeError(Exception):
    """Base class of the bridge's own errors."""

    retriable: bool = False


class ConfigError(BridgeError):
    """A setting is missing, malformed or inconsistent."""


class InvalidRecord(BridgeError):
    """A record that can never be processed as it is; it goes to the dead-letter topic."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        #: Machine-readable cause, e.g. ``"schema_invalid"``; stable across releases.
        self.reason = reason
        #: Human-readable detail; never contains secrets.
        self.detail = message


class InvalidEvent(InvalidRecord):
    """A platform event is malformed, fails its JSON Schema, or has an unknown type."""


class InvalidSubscription(InvalidRecord):
    """A subscription record is malformed."""


class InvalidUrl(InvalidSubscription):
    """A webhook URL that cannot be used by any deployment (see :mod:`bridge.subscriptions.urls`).

    Not retriable: the same URL is refused again. ``reason`` is always ``"invalid_url"``;
    ``detail`` is one line that never quotes the URL (its path or query may carry a token).
    """

    def __init__(self, detail: str, *, problem: str = "malformed") -> None:
        super().__init__("invalid_url", detail)
        #: What is wrong, a short snake_case word: ``malformed``, ``too_long``, ``character``,
        #: ``scheme``, ``userinfo``, ``fragment``, ``no_host``, ``host``, ``port``.
        self.problem = problem


class UnencodableValue(InvalidRecord):
    """A value has no byte-stable JSON form that JavaScript receivers would reproduce."""


class TopicDrift(BridgeError):
    """An existing topic differs from its declaration in ``topics/``."""


class MissingTopic(BridgeError):
    """A topic a command reads or writes is not on the brokers: read, it would be taken for an
    empty one; written, a broker that creates topics on use would make one of its own shape
    (not the declared partitions and cleanup policy)."""

    def __init__(self, topic: str) -> None:
        super().__init__(
            f"topic {topic!r} does not exist: create the declared topics with "
            "`webhook-bridge topics apply`, or check the topic settings"
        )
        self.topic = topic
