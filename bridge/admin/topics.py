"""Creating the declared topics and reporting drift from their declarations (``topics apply``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from bridge.config import Settings
from bridge.errors import TopicDrift
from bridge.kafka.clients import client_kwargs
from bridge.kafka.topics import Drift, TopicSpec, declared_topics, find_drift

__all__ = ["TopicReport", "apply_topics"]


@dataclass
class TopicReport:
    """What ``topics apply`` did."""

    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    drift: list[Drift] = field(default_factory=list)


async def apply_topics(settings: Settings, *, fail_on_drift: bool = True) -> TopicReport:
    """Create missing declared topics; report existing ones that drifted from the declaration.

    Idempotent. Raises :class:`TopicDrift` (after creating what was missing) when a topic has the
    wrong partition count or cleanup policy and ``fail_on_drift`` is set.
    """
    specs = declared_topics(settings)
    report = TopicReport()
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    try:
        await admin.start()  # a start that fails is closed too: its connections with it
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            await admin.create_topics(
                [
                    NewTopic(
                        name=s.name,
                        num_partitions=s.partitions,
                        replication_factor=settings.topic_replication_factor,
                        topic_configs=dict(s.configs),
                    )
                    for s in _unique(missing)
                ]
            )
            report.created.extend(s.name for s in _unique(missing))
        present = _unique(s for s in specs if s.name in existing)
        if present:
            report.existing.extend(s.name for s in present)
            report.drift.extend(await _drift(admin, present))
    finally:
        await admin.close()
    if report.drift and fail_on_drift:
        raise TopicDrift("; ".join(str(d) for d in report.drift))
    return report


def _unique(specs: Iterable[TopicSpec]) -> list[TopicSpec]:
    seen: dict[str, TopicSpec] = {}
    for spec in specs:
        seen.setdefault(spec.name, spec)
    return list(seen.values())


async def _drift(admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec]) -> list[Drift]:
    described = await admin.describe_topics([s.name for s in specs])
    partitions = {d["topic"]: len(d["partitions"]) for d in described}
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, s.name) for s in specs]
    )
    configs: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.resources:
            name, entries = resource[3], resource[4]
            configs[name] = {entry[0]: entry[1] for entry in entries}
    drift: list[Drift] = []
    for spec in specs:
        drift.extend(find_drift(spec, partitions.get(spec.name, 0), configs.get(spec.name, {})))
    return drift
