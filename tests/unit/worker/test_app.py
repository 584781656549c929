"""bridge.worker.app: the subscription and status tables' changelog callbacks.

A record the callbacks cannot use is skipped, counted and logged (never its value), and never
keeps the freshness barrier from finding the table current. The Bridge is built for real (no
broker is contacted until it runs); the callbacks get records as Faust hands them over. Faust's
settings are the bridge's whatever the process environment holds.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from bridge.delivery.job import SourceRef
from bridge.metrics import INVALID_RECORD_REASONS, INVALID_STATUS_REASONS
from bridge.worker import app as app_module
from bridge.worker.app import Bridge
from bridge.worker.logs import JsonFormatter
from tests.support.builders import SECRET, encode
from tests.support.builders import webhook_record as record
from tests.support.fakes import consumers_of
from tests.support.workers import offline_bridge

TOPIC = "postion.webhooks"


@pytest.fixture
def bridge(tmp_path: Path) -> Iterator[Bridge]:
    yield offline_bridge(tmp_path / "data")


class Feed:
    """Hands records to a callback as Faust does, one offset after another per partition."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.offsets: dict[tuple[str, int], int] = {}

    def _event(self, topic: str, key: bytes | None, value: bytes | None, partition: int) -> Any:
        offset = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = offset + 1
        message = SimpleNamespace(
            topic=topic, partition=partition, offset=offset, key=key, value=value
        )
        return SimpleNamespace(message=message)

    def subscription(self, key: bytes | None, value: bytes | None, partition: int = 0) -> None:
        event = self._event(TOPIC, key, value, partition)
        asyncio.run(self.bridge.on_subscription_event(event))

    def status(self, key: bytes | None, value: bytes | None) -> None:
        asyncio.run(self.bridge.on_status_event(self._event(TOPIC + ".status", key, value, 0)))


def invalid(bridge: Bridge, reason: str, table: str = "subscription") -> float:
    name = f"webhook_bridge_invalid_{table}_records_total"
    value = bridge.registry.get_sample_value(name, {"reason": reason})
    assert value is not None
    return value


# ------------------------------------------------------------------------ subscriptions

#: An array nested 300 levels.
NESTED_300 = json.loads("[" * 300 + "]" * 300)

BAD_RECORDS: list[tuple[str, bytes | None, bytes | None, str]] = [
    # what, key, value, reason
    ("null key, unencodable id", None, encode(record(id="\ud800")), "null_key"),
    ("null key, valid record", None, encode(record()), "null_key"),
    ("null key, tombstone", None, None, "null_key"),
    ("key not UTF-8", b"\xffhook", encode(record()), "key_not_utf8"),
    ("key not UTF-8, tombstone", b"\xff", None, "key_not_utf8"),
    ("id unencodable", b"hook", encode(record(id="hook\ud800")), "invalid_text"),
    ("surrogate in an unknown field", b"hook", encode(record(x={"\udc00": 1})), "invalid_text"),
    ("value not JSON", b"hook", b"{not json", "malformed_json"),
    ("value not UTF-8", b"hook", b'{"id":"\xff"}', "malformed_json"),
    ("value not an object", b"hook", b"[1]", "schema_invalid"),
    ("wrong types", b"hook", encode(record(events="*", active="yes")), "schema_invalid"),
    ("id is not the key", b"other", encode(record()), "key_mismatch"),
    ("undecryptable", b"hook", encode(record(secret="enc:v1:k9:AAAA")), "secret_undecryptable"),
    ("bad whsec", b"hook", encode(record(standard_webhooks=True, secret="whsec_!")),
     "secret_malformed"),
    # Not writable again (a disable, a rotation): matched, and those writes failed, until
    # 2026-12-07.
    ("field nested 300 levels", b"hook", encode(record(labels=NESTED_300)), "schema_invalid"),
    # Answered by the API as a JavaScript number: no read of the webhook could be.
    ("rate_limit beyond 2^53", b"hook", encode(record(rate_limit=2**53 + 1)), "schema_invalid"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("key", "value", "reason"), [r[1:] for r in BAD_RECORDS], ids=[r[0] for r in BAD_RECORDS]
)
def test_a_bad_subscription_record_is_skipped_counted_and_applied(
    bridge: Bridge, caplog: pytest.LogCaptureFixture, key: bytes | None, value: bytes | None,
    reason: str,
) -> None:  # fmt: skip
    feed = Feed(bridge)
    feed.subscription(b"keep", encode(record(id="keep")))
    with caplog.at_level(logging.WARNING, logger=app_module.__name__):
        feed.subscription(key, value)  # offset 1: the partition's last record
    assert invalid(bridge, reason) == 1
    assert sum(invalid(bridge, r) for r in INVALID_RECORD_REASONS) == 1
    # Applied: the freshness barrier finds the table current up to the partition's end, so
    # events do not wait subscription_sync_timeout for a record that was skipped.
    assert bridge.freshness.caught_up_to({0: 2})
    assert bridge.index.get("keep") is not None
    (logged,) = [
        r for r in caplog.records if r.getMessage() == "invalid subscription record skipped"
    ]
    assert (logged.partition, logged.offset, logged.reason) == (0, 1, reason)  # type: ignore[attr-defined]
    assert SECRET not in JsonFormatter().format(logged)


def test_a_record_with_a_64_bit_id_of_its_producer_s_is_matched(bridge: Bridge) -> None:
    """An integer beyond 2^53 in a field of the producer's own (a Java or Go id): refused as
    schema_invalid on 2026-12-07, which took its webhook out of matching; the bridge writes the
    record back as read."""
    feed = Feed(bridge)
    feed.subscription(b"hook", encode(record(crm_id=1234567890123456789)))
    assert sum(invalid(bridge, r) for r in INVALID_RECORD_REASONS) == 0
    webhook = bridge.index.get("hook")
    assert webhook is not None and webhook.extra["crm_id"] == 1234567890123456789
    assert b'"crm_id":1234567890123456789' in webhook.to_bytes()


def test_a_record_below_the_lowest_rate_limit_is_matched_at_it_counted_and_logged_once(
    bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    """An older writer's record, or another producer's: until 2026-12-07 its webhook got its
    first delivery and every later one was deferred until dead-lettered (at 1e-320 its wait
    was infinite), nothing said. Matched at 0.01 a second, counted and logged once per record
    read (not per delivery); one at or above it is neither."""
    feed = Feed(bridge)
    name = "webhook_bridge_subscription_rate_limits_raised_total"
    assert bridge.registry.get_sample_value(name) == 0
    with caplog.at_level(logging.WARNING, logger=app_module.__name__):
        feed.subscription(b"hook", encode(record(rate_limit=1e-320)))
        feed.subscription(b"fine", encode(record(id="fine", rate_limit=0.01)))
    webhook = bridge.index.get("hook")
    assert webhook is not None and webhook.rate_limit == 0.01
    assert bridge.registry.get_sample_value(name) == 1
    assert sum(invalid(bridge, r) for r in INVALID_RECORD_REASONS) == 0
    (logged,) = [r for r in caplog.records if "rate_limit" in r.getMessage()]
    assert logged.getMessage() == (
        "subscription record with rate_limit 1e-320, below the lowest: read as 0.01 (the next "
        "change of the webhook writes that)"
    )
    assert logged.webhook_id == "hook"  # type: ignore[attr-defined]
    assert SECRET not in JsonFormatter().format(logged)
    # Each record read once: a later one of the webhook below it counts again.
    feed.subscription(b"hook", encode(record(rate_limit=0.001)))
    assert bridge.registry.get_sample_value(name) == 2


def test_a_broken_newest_record_makes_its_webhook_absent(bridge: Bridge) -> None:
    feed = Feed(bridge)
    feed.subscription(b"hook", encode(record()))
    assert bridge.index.get("hook") is not None
    feed.subscription(b"hook", encode(record(active="yes")))
    assert bridge.index.get("hook") is None


@pytest.mark.parametrize("key", [None, b"\xffhook"])
def test_a_record_that_names_no_webhook_removes_none(bridge: Bridge, key: bytes | None) -> None:
    feed = Feed(bridge)
    feed.subscription(b"hook", encode(record()))
    feed.subscription(key, None)
    feed.subscription(key, encode(record(active="yes")))
    assert bridge.index.get("hook") is not None


def test_an_unexpected_error_is_counted_as_other_and_the_record_applied(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(app_module, "parse_webhook", broken)
    Feed(bridge).subscription(b"hook", encode(record()))
    assert invalid(bridge, "other") == 1
    assert bridge.freshness.caught_up_to({0: 1})


def test_every_reason_is_exported_from_the_start(bridge: Bridge) -> None:
    for reason in INVALID_RECORD_REASONS:
        assert invalid(bridge, reason) == 0
    for reason in INVALID_STATUS_REASONS:
        assert invalid(bridge, reason, "status") == 0


def test_the_retry_intake_is_exported_by_tier_from_the_start(bridge: Bridge) -> None:
    """Before the first retry record, every tier at 0; then what the intake holds."""
    from bridge.worker.retry_intake import RetryIntake

    def sample(name: str, tier: str | None = None) -> float | None:
        return bridge.registry.get_sample_value(name, {"tier": tier} if tier else {})

    tiers = [str(t) for t in range(1, len(bridge.settings.retry_topics) + 1)]
    assert len(tiers) == 7
    for tier in tiers:
        assert sample("webhook_bridge_retries_waiting", tier) == 0
        assert sample("webhook_bridge_retries_waiting_bytes", tier) == 0
    assert sample("webhook_bridge_retry_partitions_full") == 0

    async def hold(*_: Any) -> None:
        await asyncio.Event().wait()

    async def queue_some() -> None:
        topics = {name: t for t, name in enumerate(bridge.settings.retry_topics, start=1)}
        intake = RetryIntake(
            hold, topics, on_full=lambda *_: None, on_drop=lambda *_: None, high_mark=2, low_mark=1
        )
        bridge._retries = intake
        third = bridge.settings.retry_topics[2]
        for offset in range(3):
            intake.offer(b"x" * 10, SourceRef(third, 0, offset), lambda: None)
        await asyncio.sleep(0)  # the partition's task takes the first
        assert sample("webhook_bridge_retries_waiting", "3") == 2
        assert sample("webhook_bridge_retries_waiting_bytes", "3") == 20
        assert sample("webhook_bridge_retries_waiting", "1") == 0
        assert sample("webhook_bridge_retry_partitions_full") == 1
        await intake.close()

    asyncio.run(queue_some())


# ------------------------------------------------------------------------------ status

STATUS = {"webhook_id": "hook", "state": "failing", "failing_since": 1.5, "updated_at": "x"}


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (None, encode(STATUS), "null_key"),
        (b"\xff", encode(STATUS), "key_not_utf8"),
        (b"hook", b"{", "malformed_json"),
        (b"hook", encode({**STATUS, "reason": "\ud800"}), "invalid_text"),
        (b"hook", encode({**STATUS, "failing_since": "yesterday"}), "schema_invalid"),
        (b"hook", b"[]", "schema_invalid"),
    ],
)
def test_a_bad_status_record_is_skipped_and_counted(
    bridge: Bridge, key: bytes | None, value: bytes, reason: str
) -> None:
    feed = Feed(bridge)
    feed.status(b"hook", encode(STATUS))
    assert bridge.statuses["hook"] == STATUS
    feed.status(key, value)
    assert invalid(bridge, reason, "status") == 1
    if key == b"hook":  # the newest record of the webhook is no status: none
        assert "hook" not in bridge.statuses
    else:
        assert bridge.statuses["hook"] == STATUS
    # The health decisions read what is left without failing.
    bridge.health.on_failure("hook", 2.0)


def test_a_status_tombstone_removes_the_status(bridge: Bridge) -> None:
    feed = Feed(bridge)
    feed.status(b"hook", encode(STATUS))
    feed.status(b"hook", None)
    assert "hook" not in bridge.statuses
    assert sum(invalid(bridge, r, "status") for r in INVALID_STATUS_REASONS) == 0


def test_a_deleted_webhooks_health_decisions_are_forgotten_and_its_status_left_to_its_owner(
    bridge: Bridge,
) -> None:
    """This worker's decisions of a deleted webhook go with it (until 2026-12-06 kept for
    ever). Its status stays until its tombstone (written by the delete, or by the webhook's
    owner, bridge.worker.disables): the status and subscription topics are read in no order,
    and a status dropped at the delete may be the next webhook of that id's."""
    feed = Feed(bridge)
    for webhook_id in (b"hook", b"kept"):
        feed.subscription(webhook_id, encode(record(id=webhook_id.decode())))
        feed.status(webhook_id, encode({**STATUS, "webhook_id": webhook_id.decode()}))
    for webhook_id in ("hook", "kept"):  # this worker's decisions, not in the table yet
        bridge.health.on_success(webhook_id)
    assert bridge.health._local.keys() == {"hook", "kept"}
    feed.subscription(b"hook", None)
    assert bridge.health._local.keys() == {"kept"}
    assert bridge.statuses.keys() == {"hook", "kept"}
    feed.status(b"hook", None)
    assert bridge.statuses.keys() == {"kept"}


# --------------------------------------------------------------------------- redaction

CANARY = "cAn4ry-5ecret-"
SECRETS = st.recursive(
    st.one_of(
        st.text(max_size=8).map(lambda t: CANARY + t),
        st.sampled_from(
            [CANARY, f"enc:v1:{CANARY}:AAAA", f"enc:v1:k1:{CANARY}", f"whsec_{CANARY}!"]
        ),
    ),
    lambda inner: (
        st.lists(inner, min_size=1, max_size=3)
        | st.dictionaries(st.sampled_from(["v", "value", "enc", "kid", "token"]), inner, min_size=1)
    ),
    max_leaves=4,
)
SECRET_FIELDS = ["secret", "previous_secret", "secret_encrypted", "auth", "signing_key", "x"]
BREAKERS: list[dict[str, Any]] = [
    {},
    {"active": "yes"},
    {"events": []},
    {"url": None},
    {"id": ""},
    {"name": ["n"]},
    {"standard_webhooks": True},
    {"previous_secret_expires_at": 5},
]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    secrets=st.dictionaries(st.sampled_from(SECRET_FIELDS), SECRETS, min_size=1, max_size=3),
    breaker=st.sampled_from(BREAKERS),
    key=st.sampled_from([b"hook", b"other", None]),
)
def test_secrets_of_any_shape_never_reach_errors_logs_or_metrics(
    bridge: Bridge,
    caplog: pytest.LogCaptureFixture,
    secrets: dict[str, Any],
    breaker: dict[str, Any],
    key: bytes | None,
) -> None:
    caplog.clear()
    value = encode(record(**secrets, **breaker))
    with caplog.at_level(logging.DEBUG):
        Feed(bridge).subscription(key, value)
    for logged in caplog.records:
        assert CANARY not in JsonFormatter().format(logged)
        assert CANARY not in logged.getMessage()
        assert not any(CANARY in str(v) for v in vars(logged).values() if v is not value)
    assert CANARY not in generate_latest(bridge.registry).decode()


def test_disables_are_left_to_owners_once_one_was_seen(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker without delivery_log writes a disable itself only while it has never seen an
    owner: once it has, a rebalance that leaves a webhook without a known owner for a moment
    does not make it write one (the next owner looks at every disable at its assignment)."""
    from bridge.worker.delivery_log import Owner

    known: dict[str, str | None] = {"url": None}
    monkeypatch.setattr(
        bridge, "owner", lambda webhook_id: Owner(webhook_id, 0, known["url"], False)
    )
    assert bridge.delivery_log is None
    assert not bridge._has_owners("wh_1")
    known["url"] = "http://127.0.0.1:6067"
    assert bridge._has_owners("wh_1")
    known["url"] = None  # a rebalance moves its partition
    assert bridge._has_owners("wh_1")


#: Variables of the process environment Faust reads for its settings, with values that differ
#: from the bridge's (a Kubernetes service link for a Service called "web" sets WEB_PORT so).
FAUST_ENVIRONMENT = {
    "PRODUCER_ACKS": "0",
    "STREAM_BUFFER_MAXSIZE": "1",
    "BROKER_SESSION_TIMEOUT": "999",
    "BROKER_URL": "kafka://10.9.9.9:9092",
    "TABLE_STANDBY_REPLICAS": "3",
    "APP_STORE": "rocksdb://",
    "TOPIC_ALLOW_DECLARE": "true",
    "STREAM_WAIT_EMPTY": "true",
    "CONSUMER_AUTO_OFFSET_RESET": "latest",
    "WEB_PORT": "tcp://10.0.0.1:80",
    "APP_ENV_PREFIX": "",
}


def test_faust_settings_come_from_the_bridge_s_settings_alone(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in FAUST_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    in_that_environment = Bridge(bridge.settings)
    names = [
        "producer_acks",
        "stream_buffer_maxsize",
        "broker_session_timeout",
        "broker",
        "table_standby_replicas",
        "store",
        "topic_allow_declare",
        "stream_wait_empty",
        "consumer_auto_offset_reset",
        "web_port",
    ]
    ours = {name: getattr(bridge.app.conf, name) for name in names}
    assert {name: getattr(in_that_environment.app.conf, name) for name in names} == ours
    assert ours["producer_acks"] == -1 and ours["stream_buffer_maxsize"] == 4096


class _SlowConsumer:
    """An offsets consumer whose start waits for ``go``; the ones made, and those stopped."""

    made: list[_SlowConsumer] = []
    go = asyncio.Event()

    def __init__(self, **kwargs: Any) -> None:
        self.stopped = False
        _SlowConsumer.made.append(self)

    async def start(self) -> None:
        await _SlowConsumer.go.wait()

    async def stop(self) -> None:
        self.stopped = True


async def test_an_offsets_consumer_whose_start_close_overtook_is_stopped(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() runs while the consumer that asks for end offsets starts: it sees none to stop,
    so the start stops it (else its connection outlives the worker), and no other is made."""
    monkeypatch.setattr(app_module, "new_consumer", consumers_of(_SlowConsumer))
    _SlowConsumer.made, _SlowConsumer.go = [], asyncio.Event()
    asking = asyncio.create_task(bridge._offsets())
    await asyncio.sleep(0)
    await bridge.close()
    _SlowConsumer.go.set()
    with pytest.raises(RuntimeError, match="stopping"):
        await asking
    assert [c.stopped for c in _SlowConsumer.made] == [True]
    with pytest.raises(RuntimeError, match="stopping"):
        await bridge._offsets()
    assert len(_SlowConsumer.made) == 1 and bridge._offsets_consumer is None


@given(
    start=st.integers(0, 10**6),
    length=st.integers(0, 10**6),
    committed=st.none() | st.integers(0, 3 * 10**6),
)
def test_records_behind_counts_what_a_restart_would_read(
    start: int, length: int, committed: int | None
) -> None:
    end = start + length
    behind = app_module.records_behind(end, start, committed)
    assert 0 <= behind <= length
    if committed is None or committed <= start:
        assert behind == length  # never committed, or retention deleted past the commit
    elif committed <= end:
        assert behind == end - committed
    else:
        assert behind == 0  # a reported end short of the commit (the embedded broker)


class _Offsets:
    def __init__(self, starts: dict[Any, int], ends: dict[Any, int]) -> None:
        self.starts, self.ends = starts, ends

    async def beginning_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: self.starts[tp] for tp in tps}

    async def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: self.ends[tp] for tp in tps}


async def test_the_lag_of_a_partition_never_committed_counts_from_its_first_record(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records deleted by retention are not behind: a partition whose first record is at 900
    and end at 1,000 is 100 behind whether the group never committed it or committed 10
    before retention deleted past it; a committed one counts from its commit."""
    from aiokafka import TopicPartition
    from faust.types import TP

    events = bridge.settings.events_topic
    retry = bridge.settings.retry_topics[0]
    never, stale, current = TP(events, 0), TP(events, 1), TP(retry, 0)
    asked = {tp: TopicPartition(tp.topic, tp.partition) for tp in (never, stale, current)}
    consumer = SimpleNamespace(
        assignment=lambda: {never, stale, current},
        _committed_offset={stale: 10, current: 950},
    )
    monkeypatch.setattr(type(bridge.app), "consumer", consumer, raising=False)
    starts = {asked[never]: 900, asked[stale]: 900, asked[current]: 900}
    ends = {asked[never]: 1000, asked[stale]: 1000, asked[current]: 1000}

    async def offsets() -> _Offsets:
        return _Offsets(starts, ends)

    monkeypatch.setattr(bridge, "_offsets", offsets)
    await bridge._update_lag()
    text = generate_latest(bridge.registry).decode()
    for tp, behind in ((never, 100), (stale, 100), (current, 50)):
        line = (
            f'webhook_bridge_consumer_lag{{partition="{tp.partition}",topic="{tp.topic}"}} '
            f"{float(behind)}"
        )
        assert line in text


async def test_a_crashed_or_stopping_worker_is_not_ready_and_a_crashed_one_not_alive(
    tmp_path: Path,
) -> None:
    """The Faust app crashed (Kafka gone past its timeouts): it takes a minute to stop, and
    until 2026-12-07 /healthz and /readyz answered ok through it, so an orchestrator kept
    sending it requests and waited rather than restart it; /readyz said ready through a
    drain too."""
    from aiokafka.errors import KafkaTimeoutError

    from tests.support.workers import offline_bridge

    bridge = offline_bridge(tmp_path)
    bridge.app.tables.recovery.completed.set()  # type: ignore[attr-defined]
    assert bridge.ready()[0] and bridge.alive() == (True, "")
    bridge.app._stopped.set()  # a drain (SIGTERM)
    assert bridge.ready() == (False, "stopping") and bridge.alive()[0]
    bridge.app._stopped.clear()
    bridge.app._crash_reason = KafkaTimeoutError()
    bridge.app._crashed.set()
    assert bridge.alive() == (False, "crashed: KafkaTimeoutError")
    assert bridge.ready() == (False, "crashed: KafkaTimeoutError")


async def test_only_records_the_group_commits_are_held_until_acknowledged(
    tmp_path: Path,
) -> None:
    """The consumer's hand-off reports each record of an acknowledged topic to the commit
    guard (TakenOffsets), which holds its offset until the record is acknowledged. Nothing
    acknowledges a table's changelog record (the subscriptions, status, recoveries and attempts
    topics): until 2026-12-07 they were acknowledged topics, and every one read was held until
    the next rebalance, about 40 bytes each. Held now: the events and retry records alone,
    and nothing once those are acknowledged and committed."""
    from faust.types.tuples import TP, ConsumerMessage

    from bridge.worker.direct_topic import _HandOff
    from bridge.worker.faust_patches import taken_offsets

    tokens = tmp_path / "tokens.json"
    tokens.write_text('{"tokens": []}')
    bridge = offline_bridge(tmp_path / "data", delivery_log=True, api_tokens=str(tokens))
    app, s = bridge.app, bridge.settings
    conductor: Any = app.topics
    try:
        for table in app.tables.values():  # as Faust's TableManager._update_channels does
            conductor.add(table.changelog_topic.clone_using_queue(app.tables.changelog_queue))
        await conductor._update_indices()
        app.flow_control.resume()
        hand_off = conductor.on_message
        assert isinstance(hand_off, _HandOff)
        passed_on: list[str] = []

        async def rest(message: Any) -> None:  # the conductor's own callback: the tables
            passed_on.append(message.topic)

        hand_off._rest = rest
        acks: list[Any] = []

        class Intake:
            def accepts(self) -> bool:
                return True

            def offer(self, raw: bytes | None, source: SourceRef, ack: Any) -> None:
                acks.append(ack)

            async def handle_event(self, raw: bytes | None, source: SourceRef, ack: Any) -> None:
                acks.append(ack)

        bridge.source_topic.intake = bridge.retry_topic.intake = Intake()

        def message(topic: str, partition: int, offset: int) -> ConsumerMessage:
            return ConsumerMessage(
                topic, partition, offset, 0.0, 0, [], b"k", b"{}", None,
                tp=TP(topic, partition), generation_id=app.consumer_generation_id,
            )  # fmt: skip

        changelogs = [
            s.subscriptions_topic,
            s.status_topic,
            s.recoveries_topic,
            s.attempts_topic,
        ]
        assert set(changelogs) == set(app.tables.changelog_topics)
        for offset in range(500):
            for topic in changelogs:
                await hand_off(message(topic, offset % 3, offset))
        committed = [TP(s.events_topic, 0), TP(s.retry_topics[0], 1)]
        for tp in committed:
            await hand_off(message(tp.topic, tp.partition, 7))
        assert len(passed_on) == 2000 and len(acks) == 2
        taken = taken_offsets(app)
        held = {tp: list(part.offsets) for tp, part in taken._parts.items() if part.offsets}
        assert held == {tp: [7] for tp in committed}
        consumer: Any = app.consumer
        for tp in committed:  # not acknowledged: no commit passes it
            assert consumer._new_offset(tp) is None
        for ack in acks:
            ack()
        for tp in committed:  # acknowledged: committed past it, and no longer held
            assert consumer._new_offset(tp) == 8
        assert sum(len(part.offsets) for part in taken._parts.values()) == 0
    finally:
        await bridge.close()
        app.consumer._thread.thread_loop.close()
