"""bridge.kafka.topics: declared topics named by the settings, and drift between declared and
actual."""

from __future__ import annotations

import pytest

from bridge.config import Settings
from bridge.contract.resources import load_json
from bridge.kafka.topics import Drift, TopicSpec, declared_topics, find_drift


def by_name(settings: Settings) -> dict[str, TopicSpec]:
    specs = declared_topics(settings)
    names = [s.name for s in specs]
    assert len(set(names)) == len(names), names
    return {s.name: s for s in specs}


RETRY_TIERS = 7  # one retry topic per entry of the default retry schedule


def test_default_names_and_shapes() -> None:
    specs = declared_topics(Settings())
    assert [(s.logical, s.name, s.partitions, s.cleanup_policy) for s in specs] == [
        ("events", "postion.events", 6, "delete"),
        ("subscriptions", "postion.webhooks", 3, "compact"),
        ("deadletters", "postion.webhooks.deadletter", 3, "delete"),
        *[
            ("retries", f"postion.webhooks.retry.{tier}", 6, "delete")
            for tier in range(1, RETRY_TIERS + 1)
        ],
        ("attempts", "postion.webhooks.attempts", 6, "delete"),
        ("status", "postion.webhooks.status", 3, "compact"),
        ("recoveries", "postion.webhooks.recoveries", 3, "compact"),
        ("assignor_leader", "webhook-bridge-__assignor-__leader", 1, "delete"),
    ]


def test_configs_are_strings_from_topics_json() -> None:
    specs = by_name(Settings())
    assert dict(specs["postion.events"].configs) == {
        "cleanup.policy": "delete",
        "retention.ms": "604800000",
    }
    assert dict(specs["postion.webhooks"].configs) == {"cleanup.policy": "compact"}
    assert specs["postion.webhooks.deadletter"].configs["retention.ms"] == "2592000000"
    for spec in specs.values():
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in spec.configs.items())


def test_declarations_match_the_data_file() -> None:
    doc = load_json("topics.json")
    settings = Settings()
    specs = declared_topics(settings)
    for logical, decl in doc["topics"].items():
        named = getattr(settings, decl["setting"])
        names = named if isinstance(named, tuple) else (named,)
        ours = [s for s in specs if s.logical == logical]
        assert [s.name for s in ours] == list(names), logical
        assert {s.partitions for s in ours} == {decl["partitions"]}, logical
        if "{tier}" in decl["name"]:
            assert list(names) == [decl["name"].format(tier=n) for n in range(1, len(names) + 1)]
        else:
            assert names == (decl["name"],)


def test_names_follow_the_settings() -> None:
    settings = Settings(
        events_topic="t1.events",
        subscriptions_topic="t1.webhooks",
        deadletter_topic="t1.dlq",
        retry_topic_prefix="t1.retry",
        retry_schedule=(1.0, 60.0),
        attempts_topic="t1.attempts",
        status_topic="t1.status",
        recoveries_topic="t1.recoveries",
        group_id="t1-group",
    )
    specs = by_name(settings)
    assert set(specs) == {
        "t1.events",
        "t1.webhooks",
        "t1.dlq",
        "t1.retry.1",
        "t1.retry.2",
        "t1.attempts",
        "t1.status",
        "t1.recoveries",
        "t1-group-__assignor-__leader",
    }
    assert specs["t1.events"].logical == "events"
    assert specs["t1.webhooks"].logical == "subscriptions"
    assert specs["t1.webhooks"].cleanup_policy == "compact"
    assert specs["t1.dlq"].logical == "deadletters"
    assert specs["t1.retry.2"].logical == "retries"
    assert specs["t1.status"].cleanup_policy == "compact"
    assert specs["t1-group-__assignor-__leader"].partitions == 1


def test_extra_source_topics_use_the_events_declaration() -> None:
    settings = Settings(extra_source_topics=("legacy.events", "import.events"))
    specs = by_name(settings)
    events = specs["postion.events"]
    for name in ("legacy.events", "import.events"):
        extra = specs[name]
        assert extra.logical == "events"
        assert extra.partitions == events.partitions == 6
        assert dict(extra.configs) == dict(events.configs)
    assert len(declared_topics(settings)) == len(declared_topics(Settings())) + 2


def test_assignor_topic_is_named_from_the_group_id() -> None:
    names = [s.name for s in declared_topics(Settings(group_id="bridge-blue"))]
    assert "bridge-blue-__assignor-__leader" in names
    assert "webhook-bridge-__assignor-__leader" not in names


def test_cleanup_policy_defaults_to_delete() -> None:
    assert TopicSpec("x", "x", 1).cleanup_policy == "delete"
    assert TopicSpec("x", "x", 1, {"cleanup.policy": "compact"}).cleanup_policy == "compact"


# ----------------------------------------------------------------------------- drift

EVENTS = TopicSpec("events", "ev", 6, {"cleanup.policy": "delete", "retention.ms": "1"})
SUBS = TopicSpec("subscriptions", "subs", 3, {"cleanup.policy": "compact"})


def test_no_drift() -> None:
    assert find_drift(EVENTS, 6, {"cleanup.policy": "delete"}) == []
    assert find_drift(SUBS, 3, {"cleanup.policy": "compact", "segment.ms": "100"}) == []


def test_other_configs_are_not_drift() -> None:
    assert find_drift(EVENTS, 6, {"cleanup.policy": "delete", "retention.ms": "999"}) == []


def test_missing_cleanup_policy_means_delete() -> None:
    assert find_drift(EVENTS, 6, {}) == []
    assert find_drift(SUBS, 3, {}) == [Drift("subs", "cleanup.policy", "compact", "delete")]


@pytest.mark.parametrize("actual", [1, 3, 12])
def test_partition_count_drift(actual: int) -> None:
    assert find_drift(EVENTS, actual, {"cleanup.policy": "delete"}) == [
        Drift("ev", "partition count", "6", str(actual))
    ]


def test_cleanup_policy_drift() -> None:
    drift = find_drift(SUBS, 3, {"cleanup.policy": "delete"})
    assert drift == [Drift("subs", "cleanup.policy", "compact", "delete")]
    assert str(drift[0]) == "subs: cleanup.policy is delete, declared compact"


def test_combined_policy_order_does_not_matter() -> None:
    both = TopicSpec("x", "x", 1, {"cleanup.policy": "compact,delete"})
    assert find_drift(both, 1, {"cleanup.policy": "delete,compact"}) == []
    assert find_drift(both, 1, {"cleanup.policy": "compact"}) == [
        Drift("x", "cleanup.policy", "compact,delete", "compact")
    ]


def test_partitions_and_policy_drift_together() -> None:
    drift = find_drift(SUBS, 1, {"cleanup.policy": "delete"})
    assert [d.what for d in drift] == ["partition count", "cleanup.policy"]
    assert str(drift[0]) == "subs: partition count is 1, declared 3"
