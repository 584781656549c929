"""The Faust application: topics, the subscription table, the retry tiers and the worker.

This is the only module that builds a ``faust.App``. Event records reach
:class:`bridge.delivery.pipeline.Pipeline` through a
:class:`bridge.worker.direct_topic.DirectTopic`, retry records through another, whose
:class:`bridge.worker.retry_intake.RetryIntake` keeps a queue per partition; the table's
changelog callback keeps the
:class:`bridge.subscriptions.index.SubscriptionIndex` that the pipeline matches against.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import faust
import yarl
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.sensors.prometheus import FaustMetrics
from faust.tables.globaltable import GlobalTable
from faust.types import TP
from mode import Service
from prometheus_client import CollectorRegistry

from bridge import __version__
from bridge.attempts.book import Activity
from bridge.attempts.record import Attempt
from bridge.attempts.stores import DeliveryLogStore, MemoryStore, RocksStore
from bridge.attempts.wire import activity_from_dict, attempts_from_list
from bridge.config import Settings
from bridge.contract import jsoncanon
from bridge.contract.schemas import is_valid
from bridge.delivery.deliverer import Deliverer
from bridge.delivery.endpoint_health import EndpointHealth
from bridge.delivery.pipeline import Pipeline
from bridge.delivery.recent_answers import RecentAnswers
from bridge.delivery.retry_policy import RetryPolicy
from bridge.errors import InvalidRecord, InvalidSubscription
from bridge.http.base import DeliverySender
from bridge.http.http1_sender import Http1Sender
from bridge.http.httpx_sender import HttpxSender, new_client
from bridge.http.ssrf import AddressPolicy
from bridge.kafka.clients import (
    address_policy,
    faust_broker_kwargs,
    keyring,
    new_consumer,
    started,
    stopped,
    warn_if_unguarded,
)
from bridge.kafka.outputs import KafkaOutputs
from bridge.kafka.topics import declared_topics
from bridge.metrics import INVALID_RECORD_REASONS, INVALID_STATUS_REASONS, Metrics
from bridge.paths import path_segment
from bridge.subscriptions.freshness import TableFreshness
from bridge.subscriptions.index import SubscriptionIndex
from bridge.subscriptions.serial import KeyedLocks
from bridge.subscriptions.store import WebhookStore
from bridge.subscriptions.webhook import MIN_RATE_LIMIT, parse_webhook, webhook_key
from bridge.worker.delivery_log import (
    AssignmentTable,
    CountingAssignor,
    DeliveryLogReader,
    Owner,
    OwnerUnavailable,
    attempts_partition,
)
from bridge.worker.direct_topic import DirectTopic
from bridge.worker.disables import VERDICTS, DisableWriter
from bridge.worker.faust_monitor import FaustPrometheusMonitor
from bridge.worker.faust_patches import install as install_faust_patches
from bridge.worker.faust_patches import set_fetch_max_wait
from bridge.worker.logs import logging_config
from bridge.worker.pauses import LoopPauses, PauseTicker
from bridge.worker.recent_answers import read_recent_answers
from bridge.worker.recovery_view import RecoveryView
from bridge.worker.retry_intake import RetryIntake
from bridge.worker.settling import HOLD_HEADER, Changes, hold_left, settle_async
from bridge.worker.web import WebServer

__all__ = ["MAX_RELAYED_RETRY_AFTER", "Bridge", "delivery_log_store", "records_behind"]

log = logging.getLogger(__name__)


class _SubscriptionTable(GlobalTable):
    """A global table whose changelog is the subscriptions topic itself."""

    def _changelog_topic_name(self) -> str:
        # Faust derives this name from the table's name even when a changelog topic is given;
        # its assignor then looks up a topic that does not exist and the group join hangs.
        return str(self.changelog_topic.get_topic_name())

    def _to_value(self, v: Any) -> Any:
        # The bridge keeps its own parsed view of every record (the subscription index, the
        # statuses) through ``on_changelog_event`` and never reads the table's values: store a
        # marker rather than a second copy of every record (tens of MB at 100,000 webhooks).
        # ``None`` stays ``None``: that is how the store recognises a deletion.
        return None if v is None else True


def delivery_log_store(settings: Settings) -> DeliveryLogStore:
    """The store of setting ``delivery_log_store``; RocksDB's under
    ``<data dir>/delivery-log/<attempts topic>``."""
    max_attempts = settings.delivery_log_max_attempts
    max_age = settings.delivery_log_max_age
    if settings.delivery_log_store == "rocksdb":
        directory = settings.resolved_data_dir / "delivery-log" / settings.attempts_topic
        return RocksStore(directory, max_attempts=max_attempts, max_age=max_age)
    return MemoryStore(max_attempts=max_attempts, max_age=max_age)


def records_behind(end: int, start: int, committed: int | None) -> int:
    """The records of a partition that a restart would still read: from the committed offset,
    or from the partition's first record when the group never committed one (``None``) or
    committed one that retention has since deleted, to its end. Never below 0 (the embedded
    broker's ends can fall short of the committed offset); until 2026-12-06 a partition the
    group never committed counted from 0, records deleted by retention included."""
    resume = start if committed is None else max(committed, start)
    return max(0, end - resume)


#: The longest ``Retry-After`` (seconds) passed on from another worker's ``429``.
MAX_RELAYED_RETRY_AFTER = 60


def _retry_after(value: str | None) -> int:
    """A peer's ``Retry-After`` in whole seconds, 1 to :data:`MAX_RELAYED_RETRY_AFTER` (1 for
    anything that is not a number of seconds)."""
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 6:
        return 1
    return min(max(int(value), 1), MAX_RELAYED_RETRY_AFTER)


class Bridge:
    """Everything one worker process runs, wired together."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        warn_if_unguarded(settings)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry, __version__, http_timeout=settings.http_timeout)
        self.index = SubscriptionIndex()
        # Read when scraped, not set at each of (at start) 100,000 records.
        index = self.index
        self.metrics.subscriptions.labels("active").set_function(lambda: index.active_count)
        self.metrics.subscriptions.labels("inactive").set_function(
            lambda: len(index) - index.active_count
        )
        for tier in range(1, len(settings.retry_topics) + 1):
            label = str(tier)
            self.metrics.retries_waiting.labels(label).set_function(
                functools.partial(self._retries_waiting, tier, 0)
            )
            self.metrics.retries_waiting_bytes.labels(label).set_function(
                functools.partial(self._retries_waiting, tier, 1)
            )
        self.metrics.retry_partitions_full.set_function(
            lambda: self._retries.full if self._retries else 0
        )
        self.keyring = keyring(settings)
        #: The newest status record of each webhook (from the compacted status topic).
        self.statuses: dict[str, dict[str, Any]] = {}
        self.health = EndpointHealth(settings.disable_after, self.statuses.get)
        self.freshness = TableFreshness(
            self._subscription_end_offsets,
            timeout=settings.subscription_sync_timeout,
            source_ends=self._source_ends,
        )
        self._partitions = {spec.name: spec.partitions for spec in declared_topics(settings)}
        self._pipeline: Pipeline | None = None
        #: Endpoints' recent answers, read as a delivering worker starts (:meth:`pipeline`).
        self._answers_read: asyncio.Future[RecentAnswers] | None = None
        self._retries: RetryIntake | None = None
        self._store: WebhookStore | None = None
        self._outputs: KafkaOutputs | None = None
        self._sender: DeliverySender | None = None
        self._offsets_consumer: AIOKafkaConsumer | None = None
        self._start_lock = asyncio.Lock()
        self._offsets_lock = asyncio.Lock()
        #: :meth:`close` began: no offsets consumer is made from then on.
        self._closing = False
        self._lag_labels: set[tuple[str, str]] = set()
        self._runtime: _Runtime | None = None
        #: The delivery log of this worker's attempts partitions (setting ``delivery_log``).
        self.delivery_log: DeliveryLogReader | None = None
        #: Wakes the requests held for an owner (an assignment received, a partition read).
        self.changes = Changes()
        #: One change of a webhook at a time: the API's, and the bridge's disables; each
        #: written only while this worker may (:meth:`_may_change`).
        self.change_locks = KeyedLocks(
            may_write=self._may_change, applied=self.freshness.has_applied
        )
        #: The event loop's pauses long enough for the group to have dropped this worker
        #: unawares: no change is written for a session timeout after one.
        self.pauses = LoopPauses(
            limit=settings.kafka_session_timeout - settings.kafka_heartbeat_interval,
            hold=settings.kafka_session_timeout,
            on_lapse=self._writes_may_go_on,
            on_pause=self.metrics.event_loop_pauses.inc,
        )
        #: Whether an owner of a webhook was ever known (see :meth:`_has_owners`).
        self._owners_seen = False
        #: Faust's count of rebalances begun when the assignment of the attempts partitions
        #: this worker applied last was received (:meth:`assignment_settled`; ``-1``: none).
        self._assignment_count = -1
        #: The disables of the webhooks this worker owns (with ``delivery_log``: owners exist).
        self.disables: DisableWriter | None = None
        if settings.delivery_log:
            self.disables = DisableWriter(
                settings,
                index_get=self.index.get,
                statuses=self.statuses,
                freshness=self.freshness,
                locks=self.change_locks,
                owns=self._owns_log_of,
                metrics=self.metrics,
            )
            for verdict in VERDICTS:
                self.metrics.disable_writes.labels(verdict)
            log_failures = self.metrics.delivery_log_failures
            self.delivery_log = DeliveryLogReader(
                topic=settings.attempts_topic,
                consumer_factory=lambda: new_consumer(
                    settings,
                    group_id=None,
                    enable_auto_commit=False,
                    auto_offset_reset="none",
                ),
                store=delivery_log_store(settings),
                max_age=settings.delivery_log_max_age,
                on_change=self.changes.notify,
                partitions=self._partitions[settings.attempts_topic],
                on_store_failure=lambda operation: log_failures.labels(operation).inc(),
            )
        #: Every recovery's newest record (the recoveries table). Every role declares the table,
        #: though only workers serving the API read the view: Faust's assignor gives each
        #: member the partitions of the *leader's* global tables, and a member handed a topic it
        #: does not subscribe to stops consuming (aiokafka: "assignment for unsubscribed
        #: topic"), so a deliver worker in a group led by an API worker made no deliveries.
        self.recoveries = RecoveryView(
            TableFreshness(
                lambda: self._end_offsets(settings.recoveries_topic),
                timeout=settings.subscription_sync_timeout,
            )
        )
        self._http: aiohttp.ClientSession | None = None
        self._http_fresh: aiohttp.ClientSession | None = None
        self.app = self._build_app()

    # -- Faust wiring -----------------------------------------------------------------------
    def _build_app(self) -> faust.App:
        s = self.settings
        s.resolved_data_dir.mkdir(parents=True, exist_ok=True)
        set_fetch_max_wait(s.kafka_fetch_max_wait)
        install_faust_patches()
        app = faust.App(
            s.group_id,
            # Faust reads ~80 variables of the process environment (BROKER_URL,
            # STREAM_BUFFER_MAXSIZE, WEB_PORT ...) and lets them win over what is passed here:
            # the bridge's settings are the only source, so Faust sees an empty environment.
            env={},
            **faust_broker_kwargs(s),
            store="memory://",
            datadir=str(s.resolved_data_dir),
            web_enabled=False,
            # Sent to every member with the assignment: where an attempts partition's owner
            # answers (the bridge's own web server; Faust's is off).
            canonical_url=s.canonical_url,
            # The attempts table claims every partition read (bridge/worker/delivery_log.py);
            # the check only guards persisted stores, and every store here is in memory.
            recovery_consistency_check=not s.delivery_log,
            topic_allow_declare=False,
            topic_disable_leader=False,
            table_standby_replicas=0,
            consumer_auto_offset_reset="earliest",
            broker_rebalance_timeout=s.kafka_rebalance_timeout,
            broker_session_timeout=s.kafka_session_timeout,
            broker_heartbeat_interval=s.kafka_heartbeat_interval,
            broker_commit_interval=1.0,
            producer_acks=-1,
            # A rebalance must not wait for 30-second deliveries; unacknowledged records are
            # simply processed again (same delivery ids) by the partition's next owner.
            stream_wait_empty=False,
            GlobalTable=_SubscriptionTable,
            PartitionAssignor=CountingAssignor,
        )
        raw: dict[str, Any] = {
            "key_type": bytes,
            "value_type": bytes,
            "key_serializer": "raw",
            "value_serializer": "raw",
        }
        self.subscriptions_topic, self.table = self._global_table(
            app, "subscriptions", s.subscriptions_topic, self.on_subscription_event, raw
        )
        self.status_topic, self.status_table = self._global_table(
            app, "endpoint-status", s.status_topic, self.on_status_event, raw
        )
        self.recoveries_topic, self.recoveries_table = self._global_table(
            app, "recoveries", s.recoveries_topic, self.on_recovery_event, raw
        )
        if self.delivery_log is not None:
            self.attempts_table = self._attempts_table(app, raw)
        # Events go from Faust's conductor straight to the pipeline (bridge/worker/direct_topic.py);
        # so do the retry tiers' records, through one queue and task per partition (bridge/
        # worker/retry_intake.py), where they wait until due: through an agent's stream, each
        # cost the consumer a turn of the event loop, which a slow endpoint's deferrals made the
        # events wait for. A worker without the deliver role subscribes to neither: Faust's
        # assignor gives a topic's partitions only to members subscribed to it, so an api worker
        # gets attempts partitions only.
        self.source_topic = DirectTopic(app, list(s.source_topics), self.pipeline)
        self.retry_topic = DirectTopic(app, list(s.retry_topics), self._retry_intake)
        if s.delivers:
            self.source_topic.subscribe()
            self.retry_topic.subscribe()

        # Weak: Faust's app signals keep their receivers in one mapping shared by every app of
        # the process (the class's signal), so a strong receiver would keep this bridge, its app
        # and its registry alive for as long as the process runs.
        app.on_before_shutdown.connect(self._drain, weak=True)
        app.on_partitions_revoked.connect(self._changes_revoked, weak=True)
        # Faust's own sensors (events, commits, rebalances...) on the same registry.
        app.monitor = FaustPrometheusMonitor(metrics=FaustMetrics.create(self.registry, "faust"))
        app.timer(interval=5.0, name="consumer-lag")(self._update_lag)
        return app

    def _writes_may_go_on(self) -> None:
        """What may be written changed (an assignment arrived, or a pause's hold lapsed with
        no rebalance): the requests held for an owner look again, and the disables of the
        webhooks this worker owns are written (those a former owner, or this worker while
        fenced, did not)."""
        self.changes.notify()
        if self.disables is not None:
            self.disables.offer_owned(self._owns_log_of)

    async def _update_lag(self) -> None:
        """Records behind the end of each source and retry partition this worker owns, from
        the committed offsets (what a restart would resume from)."""
        if self._closing:
            return
        consumer = self.app.consumer
        watched = {*self.settings.source_topics, *self.settings.retry_topics}
        tps = [tp for tp in consumer.assignment() if tp.topic in watched]
        offsets = await self._offsets()
        asked = [TopicPartition(tp.topic, tp.partition) for tp in tps]
        ends = await offsets.end_offsets(asked)
        starts = await offsets.beginning_offsets(asked)
        committed = consumer._committed_offset  # type: ignore[attr-defined]  # no public accessor
        seen = set()
        for tp, asked_tp in zip(tps, asked, strict=True):
            end = ends.get(asked_tp)
            if end is None:
                continue
            labels = (tp.topic, str(tp.partition))
            behind = records_behind(end, starts.get(asked_tp, 0), committed.get(tp))
            self.metrics.lag.labels(*labels).set(behind)
            seen.add(labels)
        for labels in self._lag_labels - seen:
            self.metrics.lag.remove(*labels)
        self._lag_labels = seen

    def _global_table(
        self, app: faust.App, name: str, topic_name: str, on_record: Any, raw: dict[str, Any]
    ) -> tuple[Any, Any]:
        """A global table fed by a compacted topic that others write (its changelog)."""
        partitions = self._partitions[topic_name]
        # Without acknowledgements, as Faust makes its own tables' changelogs: the group commits
        # none of these records and nothing acknowledges one, so the consumer's hand-off would
        # hold every offset read for the commit guard (commit_settled_only) until the next
        # rebalance, about 40 bytes a record (until 2026-12-07).
        topic = app.topic(topic_name, partitions=partitions, compacting=True, acks=False, **raw)
        table = app.GlobalTable(
            name,
            key_type=bytes,
            value_type=bytes,
            changelog_topic=topic,
            partitions=partitions,
            on_changelog_event=on_record,
            # Without this, a global table reads its changelog only while recovering; these
            # topics are written by others, so every worker must keep tailing them.
            synchronize_all_active_partitions=True,
            recovery_buffer_size=10_000,
        )
        return topic, table

    def _attempts_table(self, app: faust.App, raw: dict[str, Any]) -> AssignmentTable:
        """The attempts topic as a table that only takes part in the assignment."""
        assert self.delivery_log is not None
        s = self.settings
        partitions = self._partitions[s.attempts_topic]
        # Without acknowledgements, as the global tables' topics (_global_table).
        topic = app.topic(s.attempts_topic, partitions=partitions, acks=False, **raw)
        table = AssignmentTable(
            app,
            name="attempts",
            key_type=bytes,
            value_type=bytes,
            changelog_topic=topic,
            partitions=partitions,
            beacon=app.tables.beacon,
        )
        table.on_assigned = self._attempts_assigned
        app.tables.add(table)
        return table

    def _has_owners(self, webhook_id: str) -> bool:
        """Whether webhooks have owners (workers with ``delivery_log``), which then write the
        bridge's disables: this worker is one, or an owner of ``webhook_id`` is known now or
        one was since the start (while a rebalance moves its partition none is known, and the
        disable is left to the next owner, which looks at every disable at its assignment)."""
        if self.delivery_log is not None or self._owners_seen:
            return True
        self._owners_seen = self.owner(webhook_id).url is not None
        return self._owners_seen

    def _owns_log_of(self, webhook_id: str) -> bool:
        """Whether this worker was assigned ``webhook_id``'s attempts partition at the last
        rebalance (known as the assignment is made, where the group's metadata that
        :meth:`owner` reads may lag it)."""
        if self.delivery_log is None or not self.assignment_settled():
            return False
        count = self._partitions[self.settings.attempts_topic]
        return attempts_partition(webhook_id, count) in self.delivery_log.wanted

    def _may_change(self, webhook_id: str) -> bool:
        """Whether this worker may write ``webhook_id`` now (asked as each change or disable
        is written, :meth:`KeyedLocks.writing`): always without ``delivery_log`` (no owners);
        else while it owns the webhook, no rebalance has begun since its assignment, and no
        pause of the process may have dropped it from the group unawares
        (:mod:`bridge.worker.pauses`)."""
        if self.delivery_log is None:
            return True
        if not self.pauses.may_write():
            return False
        return self.owner(webhook_id, settled=True).local or self._owns_log_of(webhook_id)

    async def _changes_revoked(self, sender: Any, /, *args: Any, signal: Any, **kw: Any) -> None:
        """As the consumer gives its partitions up (Faust awaits this before the group is
        joined again, so before any worker receives the next assignment): wait for the changes
        of webhooks already being written. None begins meanwhile (:meth:`_may_change` is false
        from the start of the rebalance), so the next owner, reading its table current as of
        its first change, sees every change this worker made. Bounded by half the rebalance
        timeout, past which the group would go on without this worker."""
        if self.delivery_log is None:
            return
        bound = self.settings.kafka_rebalance_timeout / 2
        if not await self.change_locks.drained(bound):
            log.warning(
                "rebalance: webhook changes still being written after %.1f s; the next owner "
                "may read a webhook before them",
                bound,
            )

    def _attempts_assigned(self, partitions: set[int]) -> None:
        """After a rebalance: read the attempts partitions this worker now owns, and write the
        disables of their webhooks that a former owner may not have written."""
        assert self.delivery_log is not None
        assignor: Any = self.app.assignor  # a CountingAssignor (_build_app)
        self._assignment_count = assignor.received_at
        self.delivery_log.assign(partitions)
        # The assignor took the owners of every partition from the same assignment (in Faust's
        # consumer thread, just before this is called on the event loop): look at them again.
        self._writes_may_go_on()

    # -- the delivery log: owners and routing -----------------------------------------------------
    def owner(self, webhook_id: str, *, settled: bool = False) -> Owner:
        """Which worker holds ``webhook_id``'s log, from the assignment every member gets.

        ``settled``: for what one worker at a time may do (a change of the webhook, a recovery,
        taking one over): none unless :meth:`assignment_settled` (no rebalance has begun since
        the assignment this worker applied last was received), as a newer assignment may have
        given the partition to another worker already."""
        topic = self.settings.attempts_topic
        partition = attempts_partition(webhook_id, self._partitions[topic])
        url = self._owners().get(partition)
        if settled and not self.assignment_settled():
            url = None
        return Owner(webhook_id, partition, url, url == self.settings.canonical_url)

    def assignment_settled(self) -> bool:
        """This worker has applied an assignment and no rebalance has begun since it was
        received. Faust counts rebalances as they begin, when the consumer gives up its
        partitions (in its thread, before it joins the group again; :class:`CountingAssignor`
        notes the count as each assignment arrives); the group's consumers give up all of
        theirs (Kafka's eager protocol, the one aiokafka speaks) before any of them receives the
        next assignment. So two workers never both see one partition as theirs with this true; a
        worker that has left the group without knowing it (paused past its session timeout) is
        not covered here: :mod:`bridge.worker.pauses` fences its writes."""
        return self._assignment_count == self.app.rebalancing_count

    def _owners(self) -> dict[int, str]:
        """The owner's URL of each attempts partition that has one now.

        The group's leader files the attempts topic under its tables' changelogs when it has
        the attempts table, else (a ``deliver`` worker) under the other topics: both are
        looked at."""
        topic = self.settings.attempts_topic
        # Faust's PartitionAssignor; its declared interface lacks external_topics_metadata.
        assignor: Any = self.app.assignor
        try:
            distributions = (assignor.table_metadata(topic), assignor.external_topics_metadata())
        except Exception:  # no assignment yet
            return {}
        return {
            partition: str(host).rstrip("/")
            for hosts in distributions
            for host, topics in hosts.items()
            for partition in topics.get(topic, ())
        }

    def local_activity(self, webhook_id: str) -> Activity:
        """``webhook_id``'s log and stats from this worker's book; :class:`OwnerUnavailable`
        when this worker does not hold it or is still reading its partition (never routed
        on: this answers routed requests)."""
        reader = self.delivery_log
        if reader is None:
            raise OwnerUnavailable("this worker holds no delivery log", settles=False)
        owner = self.owner(webhook_id)
        if not owner.local or owner.partition not in reader.assigned:
            raise OwnerUnavailable("this worker does not hold the webhook's partition now")
        if not reader.complete(owner.partition):
            raise OwnerUnavailable("this worker is still reading the webhook's partition")
        return reader.store.get(webhook_id) or reader.store.empty()

    def local_delivery(self, delivery_id: str) -> list[Attempt]:
        """The attempts of one delivery in this worker's book (its webhook's log);
        :class:`OwnerUnavailable` while it reads partitions it was given (the delivery's may
        be one of them)."""
        reader = self.delivery_log
        if reader is None:
            return []
        if not reader.caught_up:
            raise OwnerUnavailable("this worker is still reading its attempts partitions")
        # Attempts past the log's age are forgotten by the next sweep; until then, not shown
        # (until 2026-12-06 they were, as the webhook's pages never show them; and the two
        # stores then answered differently, the RocksDB one sweeping at its opening).
        oldest = time.time() - self.settings.delivery_log_max_age
        kept = [a for a in reader.store.delivery(delivery_id) if a.at_seconds >= oldest]
        return sorted(kept, key=lambda a: (a.at_seconds, a.attempt))

    async def activity_for(
        self,
        webhook_id: str,
        *,
        headers: Mapping[str, str] | None = None,
        until: float | None = None,
    ) -> Activity:
        """``webhook_id``'s log and stats: from this worker's book when it owns the webhook,
        else from its owner (one hop; the owner answers from its book only). Held until
        ``until`` (event loop time; ``None``: not held) while no owner is known (a rebalance),
        while this worker owns the webhook but still reads its partition, or after the owner
        did not answer or could not yet (asked again, or the new owner asked, once the
        assignment changed: a read may be asked twice); then :class:`OwnerUnavailable`.
        ``headers`` go with a routed request (the caller's ``Authorization``)."""
        path = f"/internal/v1/activity/{path_segment(webhook_id)}"

        async def attempt() -> Activity:
            found = self._activity_or_owner(webhook_id)
            if isinstance(found, Activity):
                return found
            data = await self._ask(found, path, headers, until)
            try:
                return activity_from_dict(
                    data,
                    max_attempts=self.settings.delivery_log_max_attempts,
                    max_age=self.settings.delivery_log_max_age,
                    now=time.time(),
                )
            except ValueError as exc:
                raise OwnerUnavailable(
                    f"the owner's answer was not a delivery log ({exc})", settles=False
                ) from None

        return await settle_async(attempt, self.changes, until)

    def _activity_or_owner(self, webhook_id: str) -> Activity | str:
        """``webhook_id``'s log and stats from this worker's book, or its owner's URL."""
        owner = self.owner(webhook_id)
        if owner.url is None:
            raise OwnerUnavailable("the webhook's delivery log has no owner now (rebalancing)")
        if owner.local:
            return self.local_activity(webhook_id)
        return owner.url

    async def delivery_for(
        self,
        delivery_id: str,
        *,
        headers: Mapping[str, str] | None = None,
        until: float | None = None,
    ) -> list[Attempt]:
        """Every kept attempt of one delivery: a delivery id does not name its webhook, so
        every owner is asked (each from its own book) and this worker's book read. Held until
        ``until`` as :meth:`activity_for` is, while an attempts partition has no owner, a book
        is still being read or an owner did not answer."""
        path = f"/internal/v1/deliveries/{path_segment(delivery_id)}"

        async def attempt() -> list[Attempt]:
            owners = self._every_owner()
            others = sorted(set(owners.values()) - {self.settings.canonical_url})
            answers = await asyncio.gather(
                *(self._ask(url, path, headers, until) for url in others)
            )
            found = self.local_delivery(delivery_id)
            for data in answers:
                try:
                    found.extend(attempts_from_list(data.get("attempts")))
                except ValueError as exc:
                    raise OwnerUnavailable(
                        f"an owner's answer was not attempts ({exc})", settles=False
                    ) from None
            return sorted(found, key=lambda a: (a.at_seconds, a.attempt))

        return await settle_async(attempt, self.changes, until)

    def _every_owner(self) -> dict[int, str]:
        """The owner of every attempts partition (:meth:`_owners`), or :class:`OwnerUnavailable`
        while some have none."""
        owners = self._owners()
        if len(owners) < self._partitions[self.settings.attempts_topic]:
            raise OwnerUnavailable("some attempts partitions have no owner now (rebalancing)")
        return owners

    def peers(self, *, fresh: bool = False) -> aiohttp.ClientSession:
        """The HTTP session this worker calls other workers with, closed with the worker:
        routed reads reuse connections; with ``fresh`` (relayed changes) each request has a
        connection of its own. A change is never sent twice once sent (unless its
        ``Idempotency-Key`` makes that harmless: :mod:`bridge.worker.api`), and on a kept
        connection that the other worker closed as it stopped, a change that never reached it
        fails like one it dropped midway; on a new connection a stopped worker refuses the
        connect, so nothing was sent and the change can go to the next owner. aiohttp sends a
        ``DELETE`` (an "idempotent" method) again by itself when the connection closes before
        the answer: not with ``fresh`` (a deleted webhook's second delete would answer 404)."""
        timeout = aiohttp.ClientTimeout(total=self.settings.http_timeout)
        if fresh:
            if self._http_fresh is None:
                session = aiohttp.ClientSession(
                    timeout=timeout, connector=aiohttp.TCPConnector(force_close=True)
                )
                # No public switch (aiohttp 3.14); fail loudly if the attribute goes away.
                if not isinstance(getattr(session, "_retry_connection", None), bool):
                    raise RuntimeError("aiohttp.ClientSession has no _retry_connection to turn off")
                session._retry_connection = False
                self._http_fresh = session
            return self._http_fresh
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=timeout)
        return self._http

    async def _ask(
        self, url: str, path: str, headers: Mapping[str, str] | None, until: float | None
    ) -> Any:
        """GET ``url + path`` (``path`` encoded, its ids by :func:`~bridge.paths.path_segment`)
        from another worker, which holds the request no longer than this one's hold has left
        (``until``): its JSON object, or :class:`OwnerUnavailable` (one that may settle when
        the owner did not answer, or answered ``503``)."""
        sent = dict(headers or {})
        sent[HOLD_HEADER] = hold_left(until, asyncio.get_running_loop().time())
        try:
            # Sent as encoded: parsed again, yarl decodes `%2E%2E` and resolves the `..` away.
            # Until 2026-12-07 the segment `..` was sent so, the owners were asked for
            # `/internal/v1/`, answered 404, and a lookup of delivery `..` was 503 for ever.
            target = yarl.URL(url + path, encoded=True)
            async with self.peers().get(target, headers=sent) as response:
                if response.status == 429:
                    # The caller's token is over its rate at the owner (its own buckets for
                    # these reads): the caller's to wait for, not a rebalance to hold for.
                    raise OwnerUnavailable(
                        "over this token's rate of delivery log reads at the webhook's owner",
                        _retry_after(response.headers.get("Retry-After")),
                        settles=False,
                        problem="too_many_requests",
                    )
                if response.status != 200:
                    raise OwnerUnavailable(
                        f"the owner answered {response.status}", settles=response.status == 503
                    )
                data = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OwnerUnavailable(f"the owner did not answer ({type(exc).__name__})") from None
        except ValueError as exc:
            raise OwnerUnavailable(
                f"the owner's answer was not JSON ({type(exc).__name__})", settles=False
            ) from None
        if not isinstance(data, dict):
            raise OwnerUnavailable("the owner's answer was not a JSON object", settles=False)
        return data

    def _retries_waiting(self, tier: int, which: int) -> int:
        """The records (``which`` 0) or bytes (1) of ``tier`` waiting in the intake."""
        return 0 if self._retries is None else self._retries.waiting(tier)[which]

    async def _retry_intake(self) -> RetryIntake:
        """The retry tiers' intake, made with the pipeline by the first retry record."""
        if self._retries is None:
            pipeline = await self.pipeline()
            # Faust's flow control of a partition's fetching, without which a tier's queues
            # would grow with no bound: installing the patches checked both methods before the
            # worker started (retry_intake.buffer_full, paused_partitions_stay_paused).
            consumer = self.app.consumer
            tiers = {name: tier for tier, name in enumerate(self.settings.retry_topics, start=1)}
            self._retries = RetryIntake(
                pipeline.handle_retry,
                tiers,
                on_full=lambda topic, partition: consumer.on_buffer_full(TP(topic, partition)),
                on_drop=lambda topic, partition: consumer.on_buffer_drop(TP(topic, partition)),
            )
            # Cleared with the queues Faust's flow control manages: at once when a rebalance
            # starts (mode keeps them in a weak set: the bridge holds the intake).
            self.app.flow_control.manage_queue(self._retries)  # type: ignore[arg-type]
        return self._retries

    async def _drain(self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        if self._retries is not None:
            # No retry is started once the drain begins; those waiting to fall due stay
            # unacknowledged, for the next owner.
            await self._retries.close()
        if self._pipeline is None:
            return
        handed = await self._pipeline.drain(self.settings.drain_timeout)
        if handed:
            log.warning("shutdown: %d unfinished deliveries handed to the retry path", handed)

    # -- the subscription and status tables --------------------------------------------------------
    async def on_subscription_event(self, event: Any) -> None:
        """Keep the index in step with every record the table applies (recovery and live).

        Never raises, and always reports the record as applied: a record left unreported would
        keep the freshness barrier from ever finding the table current, and every event would
        then wait ``subscription_sync_timeout`` before it is matched.
        """
        message = event.message
        webhook_id = webhook_key(message.key)
        try:
            webhook = parse_webhook(
                message.key, message.value, self.keyring, on_raised_rate=self._raised_rate
            )
        except InvalidSubscription as exc:
            # The newest record is the truth: a webhook whose record is broken gets nothing
            # rather than deliveries to a URL or with a secret that are no longer wanted.
            self._skipped_record("subscription", message, exc.reason, exc.detail)
            webhook = None
        except Exception as exc:  # a bug: counted and logged, the table goes on
            self._skipped_record("subscription", message, "other", type(exc).__name__)
            webhook = None
        try:
            if webhook is None:
                if webhook_id is not None:
                    self.index.remove(webhook_id)
                    if message.value is None:
                        # Deleted: this worker's health decisions of it go. (Its status is
                        # deleted by its delete, or by its owner: the status and subscription
                        # topics are read in no order, and the status may be its successor's.)
                        self.health.forget(webhook_id)
                        if self.disables is not None:
                            # Its owner deletes a status left (a producer's delete).
                            self.disables.offer([webhook_id])
            else:
                self.index.put(webhook)
                if webhook.active:
                    self.health.on_webhook_enabled(webhook.id, webhook.updated_at)
        finally:
            self.freshness.applied(message.partition, message.offset)

    def _raised_rate(self, webhook_id: str, written: float) -> None:
        """Count and log a subscription record whose ``rate_limit`` is below the lowest a
        writer takes: read as that (:data:`~bridge.subscriptions.webhook.MIN_RATE_LIMIT`),
        once per record read, rather than each of its deliveries deferred for ever."""
        self.metrics.raised_rate_limits.inc()
        log.warning(
            "subscription record with rate_limit %s, below the lowest: read as %s (the next "
            "change of the webhook writes that)",
            written,
            MIN_RATE_LIMIT,
            extra={"webhook_id": webhook_id},
        )

    async def on_status_event(self, event: Any) -> None:
        """Keep the endpoint statuses in step with the status table; a record that is not a
        valid status (``topics/schemas/status.json``) counts as none."""
        message = event.message
        webhook_id = webhook_key(message.key)
        if webhook_id is None:
            reason = "null_key" if message.key is None else "key_not_utf8"
            self._skipped_record("status", message, reason, "the record names no webhook")
            return
        record: Any = None
        if message.value is not None:
            try:
                record = jsoncanon.loads(message.value)
            except InvalidRecord as exc:
                self._skipped_record("status", message, exc.reason, exc.detail)
            else:
                if not is_valid("schemas/status.json", record):
                    self._skipped_record("status", message, "schema_invalid", "not a status")
                    record = None
        if record is None:
            self.statuses.pop(webhook_id, None)
        else:
            self.statuses[webhook_id] = record
        if self.disables is not None:
            self.disables.offer([webhook_id])

    async def on_recovery_event(self, event: Any) -> None:
        """Keep the recovery view in step with the recoveries table."""
        message = event.message
        self.recoveries.apply(message.partition, message.offset, message.key, message.value)

    def _skipped_record(self, table: str, message: Any, reason: str, detail: str) -> None:
        """Count and log a table record that was skipped: where it is and why, never its key's
        bytes or its value (a subscription record holds secrets)."""
        known: tuple[str, ...]
        if table == "subscription":
            counter, known = self.metrics.invalid_subscriptions, INVALID_RECORD_REASONS
        else:
            counter, known = self.metrics.invalid_statuses, INVALID_STATUS_REASONS
        counter.labels(reason if reason in known else "other").inc()
        log.warning(
            "invalid %s record skipped",
            table,
            extra={
                "topic": message.topic,
                "partition": message.partition,
                "offset": message.offset,
                "reason": reason,
                "detail": detail,
            },
        )

    async def _offsets(self) -> AIOKafkaConsumer:
        """A group-less consumer used only to ask for end offsets; none once :meth:`close`
        began (``RuntimeError``: the freshness waits that ask try again, within their timeout),
        and one whose start :meth:`close` overtook is stopped here, which it could not be."""
        async with self._offsets_lock:
            if self._offsets_consumer is None and not self._closing:
                consumer = new_consumer(self.settings, group_id=None)
                await started(consumer)
                if self._closing:  # close() saw none to stop
                    await stopped(consumer)
                else:
                    self._offsets_consumer = consumer
            if self._offsets_consumer is None:
                raise RuntimeError("the worker is stopping: no end offsets are asked")
            return self._offsets_consumer

    def _source_ends(self) -> dict[tuple[str, int], int]:
        """The high-water marks of this worker's source partitions as its consumer last fetched
        them (no request: aiokafka keeps them from each fetch response, in Faust's consumer
        thread). Empty when they cannot be read, for instance during a rebalance: rounds then
        cover records by arrival time only."""
        sources = self.settings.source_topics
        consumer = self.app.consumer
        ends: dict[tuple[str, int], int] = {}
        try:
            for tp in consumer.assignment():
                if tp.topic in sources:
                    end = consumer.highwater(tp)
                    if end is not None:
                        ends[(tp.topic, tp.partition)] = end
        except Exception:
            # aiokafka asserts the partition is assigned, the assignment can change under the
            # loop (the consumer thread) while this reads it, and the consumer may be stopping:
            # the marks only let a round cover more, so without them it covers by time alone.
            return {}
        return ends

    async def _subscription_end_offsets(self) -> Mapping[int, int]:
        return await self._end_offsets(self.settings.subscriptions_topic)

    async def _end_offsets(self, topic: str) -> Mapping[int, int]:
        consumer = await self._offsets()
        tps = [TopicPartition(topic, p) for p in range(self._partitions[topic])]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: offset for tp, offset in ends.items()}

    # -- runtime pieces created inside the running loop -------------------------------------------
    async def pipeline(self) -> Pipeline:
        async with self._start_lock:
            if self._pipeline is None:
                s = self.settings
                self._store = await WebhookStore(s).__aenter__()
                policy = address_policy(s)
                self._sender = self._new_sender(policy)
                outputs = KafkaOutputs(
                    s,
                    self._store,
                    self.index.get,
                    self.metrics,
                    owned=self._has_owners,
                )
                await outputs.start()
                self._outputs = outputs
                deliverer = Deliverer(
                    sender=self._sender,
                    outputs=outputs,
                    metrics=self.metrics,
                    policy=RetryPolicy(
                        s.retry_schedule, jitter=s.retry_jitter, retry_after_cap=s.retry_after_cap
                    ),
                    health=self.health,
                    max_in_flight=s.max_in_flight,
                    endpoint_max_in_flight=s.endpoint_max_in_flight,
                    endpoint_max_queued=s.endpoint_max_queued,
                    owner_max_in_flight=s.owner_max_in_flight,
                    slow_endpoint_share=s.slow_endpoint_share,
                    breaker_threshold=s.breaker_threshold,
                    breaker_cooldown=s.breaker_cooldown,
                    max_body_bytes=s.max_body_bytes,
                    webhooks=self.index.get,
                )
                if self._remembers_answers:
                    # Before the first delivery: a backlog's first requests are to endpoints
                    # the workers before this one heard from; resolved against the
                    # subscriptions table, recovered by now (an event or retry in hand).
                    answers = await self._recent_answers()
                    await deliverer.remember(answers, self.index.get)
                    answers.clear()
                self._pipeline = Pipeline(
                    index=self.index,
                    deliverer=deliverer,
                    outputs=outputs,
                    metrics=self.metrics,
                    freshness=self.freshness,
                )
            return self._pipeline

    @property
    def _remembers_answers(self) -> bool:
        """Whether a delivering worker starts from its predecessors' answers: only with a share
        of places held back for endpoints not yet heard from (``slow_endpoint_share`` under 1;
        at 1 there is none, and no trial)."""
        return self.settings.delivers and self.settings.slow_endpoint_share < 1

    def _recent_answers(self) -> asyncio.Future[RecentAnswers]:
        """The read of endpoints' recent answers (:mod:`bridge.worker.recent_answers`), begun
        as the worker starts (beside its group join and table recovery), or now."""
        if self._answers_read is None:
            self._answers_read = asyncio.ensure_future(read_recent_answers(self.settings))
        return self._answers_read

    def _new_sender(self, policy: AddressPolicy) -> DeliverySender:
        s = self.settings
        if s.http_client == "httpx":
            client = new_client(
                s.http_timeout, s.max_in_flight, policy=policy, ca_bundle=s.ca_bundle
            )
            return HttpxSender(
                client,
                timeout=s.http_timeout,
                any_2xx=s.success_any_2xx,
                allow_http=s.plain_http_allowed,
                policy=policy,
                response_prefix=s.attempt_response_prefix_bytes,
            )
        return Http1Sender(
            timeout=s.http_timeout,
            max_connections=s.max_in_flight,
            max_connections_per_endpoint=s.endpoint_max_in_flight,
            policy=policy,
            allow_http=s.plain_http_allowed,
            any_2xx=s.success_any_2xx,
            ca_bundle=s.ca_bundle,
            response_prefix=s.attempt_response_prefix_bytes,
        )

    async def close(self) -> None:
        self._closing = True
        if self.disables is not None:
            await self.disables.aclose()
        if self._sender is not None:
            await self._sender.aclose()
            self._sender = None
        if self._outputs is not None:
            await self._outputs.stop()
            self._outputs = None
        if self._store is not None:
            await self._store.__aexit__(None, None, None)
            self._store = None
        if self._offsets_consumer is not None:
            consumer, self._offsets_consumer = self._offsets_consumer, None
            await stopped(consumer)
        for session in (self._http, self._http_fresh):
            if session is not None:
                await session.close()
        self._http = self._http_fresh = None

    def alive(self) -> tuple[bool, str]:
        """Alive until the Faust app crashed (Kafka gone past its timeouts, a bug): it then
        takes a minute to stop, and ``/healthz`` answered ``ok`` through it (until
        2026-12-07), so an orchestrator waited rather than restart it."""
        if self.app.crashed:
            return False, f"crashed: {type(self.app.crash_reason).__name__}"
        return True, ""

    def ready(self) -> tuple[bool, str]:
        """Ready once the tables are recovered and partitions are assigned; not once it
        crashed or is stopping (a drain: until 2026-12-07 ``ready`` through both)."""
        alive, why = self.alive()
        if not alive:
            return False, why
        if self.app.should_stop:
            return False, "stopping"
        if not self.app.tables.recovery.completed.is_set():  # type: ignore[attr-defined]
            return False, "recovering the subscription table"
        if self.app.rebalancing:
            return False, "rebalancing"
        if self.delivery_log is not None and not self.delivery_log.caught_up:
            return False, "reading the delivery log"
        return True, f"{len(self.index)} webhooks loaded"

    # -- the worker ------------------------------------------------------------------------------
    def _services(self) -> list[Service]:
        """What runs beside the Faust app: the health and metrics server (serving ``/v1`` for the
        roles with the API), the closer of the HTTP client and Kafka clients the bridge opens
        itself, the event loop's ticks (:mod:`bridge.worker.pauses`), and the delivery log's
        reader."""
        api: Callable[[], Awaitable[Any]] | None = None
        if self.settings.serves_api:
            # Only workers serving /v1 load bridge.api (and through it the admin tools).
            from bridge.worker.api import api_application

            api = functools.partial(api_application, self)
        web = WebServer(
            host=self.settings.web_host,
            port=self.settings.web_port,
            registry=self.registry,
            ready=self.ready,
            application=api,
            alive=self.alive,
        )
        ticker = PauseTicker(self.pauses, on_lag=self.metrics.event_loop_lag.observe)
        services: list[Service] = [web, _Closer(self), ticker]
        if self._remembers_answers:
            services.append(_AnswersReader(self))
        if self.delivery_log is not None:
            services.append(self.delivery_log)
        return services

    def worker(self, loop: asyncio.AbstractEventLoop) -> faust.Worker:
        """The process's worker (``webhook-bridge run``): it owns ``loop``, handles SIGTERM and
        SIGINT, configures logging and ends the process when it stops."""
        worker = faust.Worker(
            self.app,
            *self._services(),
            loop=loop,
            loglevel=self.settings.log_level.lower(),
            logging_config=logging_config(self.settings.log_level, self.settings.log_format),
            redirect_stdouts=False,
        )
        # Faust's terminal spinner sets the root logger to DEBUG (every library debug call then
        # builds a record) and writes escape codes into the logs.
        worker.spinner = None
        return worker

    async def start(self) -> None:
        """Run the same services as :meth:`worker`, inside the running event loop, and return
        once the tables are recovered (stop the bridge to abandon a start that hangs).

        For a host that owns its process (an embedding program, the integration tests): no
        signal handlers, no logging configuration, no change to the event loop policy, the
        working directory or the process title. Faust's consumer still runs in a thread of its
        own with its own loop; :meth:`stop` ends both. A bridge starts once.
        """
        if self._runtime is not None:
            raise RuntimeError("this bridge was already started")
        self._runtime = _Runtime(self.app, self._services())
        await self._runtime.start()

    async def stop(self) -> None:
        """Stop what :meth:`start` started: the consumer leaves its group, in-flight deliveries
        get ``drain_timeout`` to finish (then go to the retry path), the clients close and
        Faust's consumer thread ends."""
        if self._runtime is not None:
            await self._runtime.stop()


class _Runtime(Service):
    """The Faust app and the services beside it, as :class:`faust.Worker` composes them (the
    app last, so that it stops first), without what the worker does for a process."""

    def __init__(self, app: faust.App, services: list[Service]) -> None:
        super().__init__()
        self._app = app
        self._services = services

    def on_init_dependencies(self) -> list[Any]:
        self._app.beacon.reattach(self.beacon)
        return [*self._services, self._app]


class _AnswersReader(Service):
    """Begins the read of endpoints' recent answers as the worker starts (the first delivery
    waits for it: :meth:`Bridge.pipeline`), and stops it with the worker."""

    def __init__(self, bridge: Bridge) -> None:
        super().__init__()
        self._bridge = bridge

    async def on_start(self) -> None:
        self._bridge._recent_answers()

    async def on_stop(self) -> None:
        read = self._bridge._answers_read
        if read is not None and not read.done():
            read.cancel()
            await asyncio.gather(read, return_exceptions=True)


class _Closer(Service):
    """Closes the HTTP client and the offsets consumer when the worker stops."""

    def __init__(self, bridge: Bridge) -> None:
        super().__init__()
        self._bridge = bridge

    async def on_stop(self) -> None:
        await self._bridge.close()
