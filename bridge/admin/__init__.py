"""Management tools: topics, publishing events, dead-letter list and replay (the CLI's Python API).

Webhook records are managed by :class:`bridge.subscriptions.store.WebhookStore`, which the worker
uses too; this package is for operators and the platform's services, never imported by the worker.
"""

from __future__ import annotations

from bridge.admin.dead_letters import (
    DeadLetterFilter,
    ReplayReport,
    list_dead_letters,
    replay_dead_letters,
)
from bridge.admin.publish import publish_event, publish_events, send_test_event
from bridge.admin.topics import TopicReport, apply_topics

__all__ = [
    "DeadLetterFilter",
    "ReplayReport",
    "list_dead_letters",
    "replay_dead_letters",
    "publish_event",
    "publish_events",
    "send_test_event",
    "TopicReport",
    "apply_topics",
]
