"""Creating the declared topics and reporting drift from their declarations (``topics apply``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError, for_code

from bridge.config import Settings
from bridge.errors import ConfigError, TopicDrift
from bridge.kafka.clients import client_kwargs
from bridge.kafka.topics import Drift, TopicSpec, declared_topics, find_drift

__all__ = ["TopicReport", "apply_topics", "min_insync_replicas"]


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
        replicas = settings.topic_replication_factor
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(
                        name=s.name,
                        num_partitions=s.partitions,
                        replication_factor=replicas,
                        topic_configs={
                            "min.insync.replicas": str(min_insync_replicas(replicas)),
                            **s.configs,
                        },
                    )
                    for s in _unique(missing)
                ]
            )
            raced = _refused(response.topic_errors)
            existing |= raced
            report.created.extend(s.name for s in _unique(missing) if s.name not in raced)
        present = _unique(s for s in specs if s.name in existing)
        if present:
            report.existing.extend(s.name for s in present)
            report.drift.extend(await _drift(admin, present))
    finally:
        await admin.close()
    if report.drift and fail_on_drift:
        raise TopicDrift("; ".join(str(d) for d in report.drift))
    return report


def min_insync_replicas(replication_factor: int) -> int:
    """The replicas a write must reach (``acks=all``) on a topic ``topics apply`` creates: 2 of
    3 or more, so that an acknowledged record survives the loss of its leader (a broker's
    default, 1, acknowledges on the leader alone once the others fell behind); 1 of fewer,
    so that a broker restarting never stops the writes (and a cluster whose default is 2
    still takes them on a topic of 1 replica)."""
    return 2 if replication_factor >= 3 else 1


def _refused(topic_errors: Iterable[Sequence[object]]) -> set[str]:
    """The topics another client created first (checked for drift as existing ones); raises
    :class:`ConfigError` naming every topic the broker refused to create, and why (a
    replication factor above the brokers, a config or a topic policy the cluster refuses:
    the broker answers each topic apart, and a refusal is no exception on its own)."""
    raced: set[str] = set()
    refused: list[str] = []
    for entry in topic_errors:
        name, code = str(entry[0]), int(entry[1])  # type: ignore[call-overload]
        message = entry[2] if len(entry) > 2 else None
        if code == TopicAlreadyExistsError.errno:
            raced.add(name)
        elif code != 0:
            error = for_code(code)
            refused.append(
                f"{name}: {error.__name__} ({code})" + (f": {message}" if message else "")
            )
    if refused:
        raise ConfigError("the broker refused to create topics: " + "; ".join(refused))
    return raced


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
