"""Topic declarations from ``topics/topics.json``, and creating topics and reporting drift."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.config import Settings
from bridge.contract.resources import load_json

__all__ = ["TopicSpec", "Drift", "declared_topics", "find_drift"]


@dataclass(frozen=True)
class TopicSpec:
    """One declared topic."""

    #: Logical name in ``topics/topics.json`` (``events``, ``subscriptions``, ...).
    logical: str
    #: Actual topic name (after settings renamed it).
    name: str
    #: Number of partitions the topic must have.
    partitions: int
    #: Topic configs to set at creation; ``cleanup.policy`` is also checked for drift.
    configs: Mapping[str, str] = field(default_factory=dict)

    @property
    def cleanup_policy(self) -> str:
        return self.configs.get("cleanup.policy", "delete")


@dataclass(frozen=True)
class Drift:
    """An existing topic that differs from its declaration."""

    topic: str
    what: str
    declared: str
    actual: str

    def __str__(self) -> str:
        return f"{self.topic}: {self.what} is {self.actual}, declared {self.declared}"


def declared_topics(settings: Settings) -> list[TopicSpec]:
    """Every topic the bridge needs, named as the settings say."""
    doc = load_json("topics.json")
    specs: list[TopicSpec] = []
    for logical, decl in doc["topics"].items():
        name = getattr(settings, decl["setting"])
        names = name if isinstance(name, tuple) else (name,)
        specs.extend(_spec(logical, each, decl) for each in names)
    events = doc["topics"]["events"]
    for extra in settings.extra_source_topics:
        specs.append(_spec("events", extra, events))
    for logical, decl in doc["internal"].items():
        specs.append(_spec(logical, decl["name"].format(group_id=settings.group_id), decl))
    return specs


def _spec(logical: str, name: str, decl: Mapping[str, Any]) -> TopicSpec:
    return TopicSpec(
        logical=logical,
        name=name,
        partitions=int(decl["partitions"]),
        configs={str(k): str(v) for k, v in decl.get("configs", {}).items()},
    )


def find_drift(
    spec: TopicSpec, actual_partitions: int, actual_configs: Mapping[str, str]
) -> list[Drift]:
    """Compare an existing topic with its declaration (pure)."""
    drift: list[Drift] = []
    if actual_partitions != spec.partitions:
        drift.append(
            Drift(spec.name, "partition count", str(spec.partitions), str(actual_partitions))
        )
    actual_policy = actual_configs.get("cleanup.policy", "delete")
    if set(actual_policy.split(",")) != set(spec.cleanup_policy.split(",")):
        drift.append(Drift(spec.name, "cleanup.policy", spec.cleanup_policy, actual_policy))
    return drift
