"""Prometheus metrics of the bridge, registered on a registry that is passed in."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import time
import zlib
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)
from prometheus_client import values as prometheus_values
from prometheus_client.values import MutexValue

from bridge.contract.schemas import EVENT_TYPES
from bridge.errors import ConfigError
from bridge.subscriptions.webhook import RECORD_PROBLEMS

__all__ = [
    "CONNECTION_DROPS",
    "ConnectionMetrics",
    "Metrics",
    "RecentEndpoints",
    "ENDPOINT_BUCKETS",
    "endpoint_bucket",
    "HotCounter",
    "HotHistogram",
    "LATENCY_BUCKETS",
    "REQUEST_BUCKETS",
    "request_buckets",
    "OUTPUT_BUCKETS",
    "STAGE_BUCKETS",
    "INVALID_RECORD_REASONS",
    "INVALID_STATUS_REASONS",
    "OUTPUTS",
    "PRECREATED_DEAD_LETTER_REASONS",
    "ATTEMPT_STATUS_CLASSES",
    "SKIP_REASONS",
    "RELIED_ON",
    "PrometheusClientMismatch",
    "check_prometheus_client",
]

_T = TypeVar("_T")

#: Seconds; end-to-end latency spans milliseconds (healthy) to hours (after retries). Between
#: 10 and 100 ms the bounds are at most 25 ms apart, so that a p99 near a 50 ms objective is
#: read from neighbouring buckets, not interpolated across 50-100 ms.
LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    1800.0,
    3600.0,
    21600.0,
    86400.0,
)
#: Seconds; the stages before a delivery take milliseconds when healthy (a 50 ms target needs
#: buckets on both sides of it) and hours for a replayed backlog.
STAGE_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.015,
    0.02,
    0.03,
    0.04,
    0.05,
    0.06,
    0.075,
    0.09,
    0.1,
    0.25,
    0.5,
    1.0,
    5.0,
    30.0,
    300.0,
    3600.0,
    86400.0,
)
#: Label values of ``webhook_bridge_invalid_subscription_records_total``: the reasons of
#: :func:`bridge.subscriptions.webhook.parse_webhook`, and ``other`` (an unexpected error).
INVALID_RECORD_REASONS = (*RECORD_PROBLEMS, "other")
#: Label values of ``webhook_bridge_invalid_status_records_total``.
INVALID_STATUS_REASONS = (
    "null_key",
    "key_not_utf8",
    "malformed_json",
    "invalid_text",
    "schema_invalid",
    "other",
)
#: Label values of ``webhook_bridge_attempts_skipped_total``: attempts settled without a
#: request (:mod:`bridge.delivery.deliverer`).
SKIP_REASONS = (
    "circuit_open",
    "endpoint_busy",
    "owner_busy",
    "rate_limited",
    "destination_forbidden",
    "invalid_url",
    "interrupted",
    # A job's webhook deleted, turned off or no longer receiving its event while it waited
    # for its places (not sent: its attempt is recorded skipped, nothing next).
    "webhook_deleted",
    "webhook_inactive",
    "not_receiving",
)
#: The ``output`` label values of ``webhook_bridge_output_writes_total``: this worker's topics.
OUTPUTS = ("attempt", "retry", "dead_letter", "status", "disable")
#: Dead-letter reasons whose series exist from the start (alerts take an increase of them: a
#: series first seen at 1 shows no increase, so a worker's first internal error went unseen
#: until 2026-12-06).
PRECREATED_DEAD_LETTER_REASONS = ("internal_error", "attempts_exhausted")
#: The ``status_class`` label values of ``webhook_bridge_delivery_attempts_total``
#: (:func:`bridge.http.base.status_class`) a failed attempt can have; a successful one is
#: ``2xx``.
ATTEMPT_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "other", "none")
#: Seconds; an HTTP request is cut off at the 30 s timeout (a longer ``http_timeout`` adds
#: itself as the last bound: :func:`request_buckets`).
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0)
#: Seconds; a broker acknowledges a write in milliseconds, and the producer gives up after its
#: request timeout (aiokafka's default: 40 s): the request buckets with 1 ms, 2.5 ms and 60 s.
OUTPUT_BUCKETS = (0.001, 0.0025, *REQUEST_BUCKETS, 60.0)


def request_buckets(http_timeout: float) -> tuple[float, ...]:
    """The request duration's bounds for requests cut off after ``http_timeout`` seconds:
    :data:`REQUEST_BUCKETS`, and the timeout itself when it is longer than 30 s, so that
    answers between 30 s and it are not counted with the requests cut off (``+Inf``)."""
    if http_timeout > REQUEST_BUCKETS[-1]:
        return (*REQUEST_BUCKETS, http_timeout)
    return REQUEST_BUCKETS


#: Buckets :class:`RecentEndpoints` spreads endpoints over (a label of bounded cardinality).
ENDPOINT_BUCKETS = 16


def endpoint_bucket(endpoint: str) -> int:
    """The bucket of ``endpoint``: the same in every worker (CRC-32, not Python's salted
    ``hash``), so that an endpoint failing at several workers is one bucket failing."""
    return zlib.crc32(endpoint.encode("utf-8")) % ENDPOINT_BUCKETS


class RecentEndpoints:
    """The endpoints a worker sent a request to in the last :attr:`window` seconds, by whether
    the latest one's answer was a success, counted in :data:`ENDPOINT_BUCKETS` buckets: how
    many endpoints fail, which no counter of attempts tells (one endpoint failing on a quiet
    installation looks like every endpoint failing), and across workers, by the buckets
    failing at any of them (one endpoint is one bucket wherever it fails; two endpoints share
    one a sixteenth of the time). At most :attr:`limit` endpoints are kept (the least
    recently sent to go first)."""

    def __init__(
        self,
        window: float = 600.0,
        *,
        limit: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.limit = limit
        self._clock = clock
        #: endpoint -> (when its latest request was answered, whether it succeeded); oldest
        #: first.
        self._latest: OrderedDict[str, tuple[float, bool]] = OrderedDict()
        self._counts = [[0, 0] for _ in range(ENDPOINT_BUCKETS)]  # [succeeding, failing]

    def observe(self, endpoint: str, success: bool) -> None:
        before = self._latest.pop(endpoint, None)
        bucket = self._counts[endpoint_bucket(endpoint)]
        if before is not None:
            bucket[not before[1]] -= 1
        self._latest[endpoint] = (self._clock(), success)
        bucket[not success] += 1
        while len(self._latest) > self.limit:
            self._drop_oldest()
        self._expire()

    def _drop_oldest(self) -> None:
        endpoint, (_, success) = self._latest.popitem(last=False)
        self._counts[endpoint_bucket(endpoint)][not success] -= 1

    def _expire(self) -> None:
        horizon = self._clock() - self.window
        while self._latest and next(iter(self._latest.values()))[0] < horizon:
            self._drop_oldest()

    def count(self, success: bool, bucket: int | None = None) -> int:
        """Endpoints whose latest answer was ``success`` (in ``bucket``, or in all)."""
        self._expire()
        buckets = self._counts if bucket is None else [self._counts[bucket]]
        return sum(counts[not success] for counts in buckets)

    def failing(self) -> int:
        return self.count(False)

    def succeeding(self) -> int:
        return self.count(True)


class Metrics:
    """Every metric the bridge exports. Labels are bounded: no webhook id, URL or delivery id.
    ``http_timeout``: the delivery requests' timeout (seconds), the request duration's last
    bound when longer than 30 s."""

    def __init__(
        self, registry: CollectorRegistry, version: str = "", *, http_timeout: float = 30.0
    ) -> None:
        check_prometheus_client()
        self.registry = registry
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        # Memory, CPU and file descriptors of this process (process_* metrics).
        ProcessCollector(registry=registry)
        self.build_info = Gauge(
            "webhook_bridge_build_info",
            "Always 1; the version label says which release this worker runs.",
            ["version"],
            registry=registry,
        )
        self.build_info.labels(version or "unknown").set(1)
        self.skipped = Counter(
            "webhook_bridge_attempts_skipped_total",
            "Attempts settled without an HTTP request, by reason (circuit_open, endpoint_busy, "
            "owner_busy, rate_limited, destination_forbidden, invalid_url, interrupted).",
            ["reason"],
            registry=registry,
        )
        self.pending = Gauge(
            "webhook_bridge_pending_jobs",
            "Delivery jobs started and not yet settled (waiting for an endpoint, a rate limit, "
            "a response or the broker's acknowledgement of their records).",
            registry=registry,
        )
        self.oldest_unsettled = Gauge(
            "webhook_bridge_oldest_unsettled_event_seconds",
            "Seconds the oldest source-topic record this worker has taken and not yet settled "
            "has waited (its partition's committed offset cannot pass it); 0 when none.",
            registry=registry,
        )
        self.events = Counter(
            "webhook_bridge_events_total",
            "Platform events consumed, by event type (unknown types as 'invalid'); a record "
            "read again after a rebalance or restart (at least once) is counted again: "
            "webhook_bridge_deliveries_total counts the deliveries settled.",
            ["event_type"],
            registry=registry,
        )
        self.deliveries = Counter(
            "webhook_bridge_deliveries_total",
            "Deliveries that reached a final outcome, by event type and outcome "
            "(delivered, dead_lettered).",
            ["event_type", "outcome"],
            registry=registry,
        )
        self.attempts = Counter(
            "webhook_bridge_delivery_attempts_total",
            "HTTP delivery attempts, by outcome (success, failure) and status class "
            "(2xx..5xx, none when no response arrived).",
            ["outcome", "status_class"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "webhook_bridge_dead_letters_total",
            "Records and deliveries sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "webhook_bridge_http_request_duration_seconds",
            "Duration of delivery HTTP requests, by outcome.",
            ["outcome"],
            buckets=request_buckets(http_timeout),
            registry=registry,
        )
        self.end_to_end = Histogram(
            "webhook_bridge_end_to_end_latency_seconds",
            "Time from the event's timestamp to the receiver's 200.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.stage_latency = Histogram(
            "webhook_bridge_event_stage_latency_seconds",
            "Time from the event's timestamp to a stage of its first attempt in this worker: "
            "received (its record reached the pipeline), matched (the subscription table was "
            "current and the event matched); observed again for a record read again after a "
            "rebalance or restart.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "webhook_bridge_in_flight_requests",
            "Delivery HTTP requests in flight.",
            registry=registry,
        )
        self.slow_in_flight = Gauge(
            "webhook_bridge_slow_in_flight_requests",
            "Delivery HTTP requests in flight to endpoints, or of sites, that answer slowly (at "
            "most slow_endpoint_share of max_in_flight; docs/operations.md, Isolation).",
            registry=registry,
        )
        self.subscriptions = Gauge(
            "webhook_bridge_subscriptions",
            "Webhooks in the subscription table, by state (active, inactive).",
            ["state"],
            registry=registry,
        )
        self.invalid_subscriptions = Counter(
            "webhook_bridge_invalid_subscription_records_total",
            "Subscription records skipped as invalid, by reason (null_key, key_not_utf8, "
            "key_mismatch, malformed_json, invalid_text, schema_invalid, secret_undecryptable, "
            "secret_malformed, other); a webhook whose newest record is invalid is absent.",
            ["reason"],
            registry=registry,
        )
        self.raised_rate_limits = Counter(
            "webhook_bridge_subscription_rate_limits_raised_total",
            "Subscription records read with a rate_limit below 0.01 (an older writer's, another "
            "producer's), read as 0.01: one count and one warning per record read.",
            registry=registry,
        )
        self.invalid_statuses = Counter(
            "webhook_bridge_invalid_status_records_total",
            "Endpoint status records skipped as invalid, by reason (null_key, key_not_utf8, "
            "malformed_json, invalid_text, schema_invalid, other); the webhook's status is then "
            "healthy.",
            ["reason"],
            registry=registry,
        )
        # Every reason from the start, so that a rate over them is 0 rather than absent, and
        # an increase counts the first one (a series first seen at 1 shows none).
        for reason in INVALID_RECORD_REASONS:
            self.invalid_subscriptions.labels(reason)
        for reason in INVALID_STATUS_REASONS:
            self.invalid_statuses.labels(reason)
        for reason in SKIP_REASONS:
            self.skipped.labels(reason)
        for reason in PRECREATED_DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason)
        # So are the series WebhookBridgeNoDeliveries takes an increase of: a worker's first
        # delivery of an event type (its series first seen at 1) counted as none, and the
        # alert paged while deliveries succeeded (a quiet worker after a restart, until
        # 2026-12-07).
        for event_type in EVENT_TYPES:
            self.events.labels(event_type)
            for outcome in ("delivered", "dead_lettered"):
                self.deliveries.labels(event_type, outcome)
        self.events.labels("invalid")
        self.attempts.labels("success", "2xx")
        for status in ATTEMPT_STATUS_CLASSES:
            self.attempts.labels("failure", status)
        self.retries = Counter(
            "webhook_bridge_retries_scheduled_total",
            "Deliveries put in a retry tier, by tier (1 = first retry).",
            ["tier"],
            registry=registry,
        )
        self.retry_wait = Histogram(
            "webhook_bridge_retry_wait_seconds",
            "Time a delivery spent waiting in a retry tier, from enqueue to its attempt.",
            ["tier"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.circuits_open = Gauge(
            "webhook_bridge_circuits_open",
            "Endpoints whose circuit breaker is open or half-open in this worker.",
            registry=registry,
        )
        self.recent_endpoints = RecentEndpoints()
        endpoints = Gauge(
            "webhook_bridge_endpoints_recent",
            "Endpoints this worker sent a request to in the last 10 minutes, by the outcome of "
            "the latest one (succeeding, failing) and bucket (0-15, the same for an endpoint "
            "in every worker).",
            ["outcome", "bucket"],
            registry=registry,
        )
        for bucket in range(ENDPOINT_BUCKETS):
            for outcome, success in (("succeeding", True), ("failing", False)):
                endpoints.labels(outcome, str(bucket)).set_function(
                    functools.partial(self.recent_endpoints.count, success, bucket)
                )
        self.disabled = Counter(
            "webhook_bridge_webhooks_disabled_total",
            "Webhooks the bridge turned off (their record written inactive) in this worker, by "
            "reason (gone: HTTP 410; failing: failed for longer than disable_after).",
            ["reason"],
            registry=registry,
        )
        self.disable_writes = Counter(
            "webhook_bridge_disable_writes_total",
            "Disables (disabled status records) judged by the owner of their webhook: written, "
            "or not because the webhook was deleted (the status deleted), is inactive already, "
            "is another webhook of the same id, or changed since the deciding delivery (its "
            "health starts afresh).",
            ["result"],
            registry=registry,
        )
        self.event_loop_pauses = Counter(
            "webhook_bridge_event_loop_pauses_total",
            "Gaps in the worker's event loop longer than a group member may be silent (the "
            "session timeout less one heartbeat interval): the process was paused or its loop "
            "held; each refuses webhook changes for a session timeout.",
            registry=registry,
        )
        self.event_loop_lag = Histogram(
            "webhook_bridge_event_loop_lag_seconds",
            "How much later than asked the worker's event loop woke a task sleeping a quarter "
            "of a second (observed four times a second): the time deliveries, API requests "
            "and heartbeats waited for the loop, its CPU taken by other work.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=registry,
        )
        self.delivery_log_failures = Counter(
            "webhook_bridge_delivery_log_failures_total",
            "Workers with delivery_log only: writes of a held attempts partition's log (its "
            "attempts or its checkpoint) that failed, openings of a newly assigned partition's "
            "store that failed, and openings of its store again after a failed write that "
            "failed, by operation (write, open, reopen); the partition is not answered from "
            "until its store is opened and it is read to its end.",
            ["operation"],
            registry=registry,
        )
        for operation in ("write", "open", "reopen"):  # exported at 0: an increase() sees the first
            self.delivery_log_failures.labels(operation)
        self.retries_cancelled = Counter(
            "webhook_bridge_retries_cancelled_total",
            "Pending retries dropped because their webhook was deleted or deactivated meanwhile, "
            "or no longer gets their event (moved to another site or account, its filter "
            "narrowed).",
            registry=registry,
        )
        self.jobs_joined = Counter(
            "webhook_bridge_jobs_joined_total",
            "Jobs of a record read again (a rebalance gave its partition back before its "
            "commit), or of a copy of a record (an event or a retry record a write retried "
            "after its answer was lost wrote twice), settled by the first read's job rather "
            "than attempted again, by the state "
            "that job was in: running or settled.",
            ["state"],
            registry=registry,
        )
        for state in ("running", "settled"):  # exported at 0: an increase() sees the first
            self.jobs_joined.labels(state)
        self.retries_waiting = Gauge(
            "webhook_bridge_retries_waiting",
            "Retry records read from a retry tier and held by this worker until they fall due "
            "(or the pipeline has room), by tier.",
            ["tier"],
            registry=registry,
        )
        self.retries_waiting_bytes = Gauge(
            "webhook_bridge_retries_waiting_bytes",
            "The bytes of those records' values, by tier.",
            ["tier"],
            registry=registry,
        )
        self.retry_partitions_full = Gauge(
            "webhook_bridge_retry_partitions_full",
            "Retry-tier partitions this worker has stopped fetching because too many of their "
            "records, or too many bytes, are waiting (docs/metrics.md).",
            registry=registry,
        )
        self.lag = Gauge(
            "webhook_bridge_consumer_lag",
            "Records behind the end of each source and retry topic partition this worker owns "
            "(from committed offsets, or a partition's first record; approximate on the "
            "embedded broker).",
            ["topic", "partition"],
            registry=registry,
        )
        self.ssrf_refusals = Counter(
            "webhook_bridge_ssrf_refusals_total",
            "Deliveries refused before connecting because this deployment's policy does not "
            "allow the destination, by reason (loopback, private, link_local, ...; plain_http).",
            ["reason"],
            registry=registry,
        )
        self.output_writes = Counter(
            "webhook_bridge_output_writes_total",
            "Records this worker wrote to its own topics, by output (attempt, retry, "
            "dead_letter, status, disable) and outcome (acknowledged: the broker has it; "
            "failed: the producer gave up).",
            ["output", "outcome"],
            registry=registry,
        )
        for output in OUTPUTS:
            for outcome in ("acknowledged", "failed"):
                self.output_writes.labels(output, outcome)
        self.output_write_duration = Histogram(
            "webhook_bridge_output_write_duration_seconds",
            "From handing a write to the Kafka producer to the broker's acknowledgement or the "
            "producer's failure, by output; attempt records are written and timed per batch.",
            ["output"],
            buckets=OUTPUT_BUCKETS,
            registry=registry,
        )
        self.sync_timeouts = Counter(
            "webhook_bridge_subscription_sync_timeouts_total",
            "Times an event was matched before the subscription table was known to be current.",
            registry=registry,
        )

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)`` (``metric`` itself without labels), remembered, for the
        hot path: it observes the same few label sets millions of times, and ``labels()``
        validates and locks on every call. A counter or histogram comes back as a
        :class:`HotCounter` or :class:`HotHistogram` over the same values."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = _hot(metric.labels(*labels) if labels else metric)
        return found

    def output_written(
        self, output: str, seconds: float, acknowledged: bool, records: int = 1
    ) -> None:
        """Count and time a write of ``records`` records to ``output`` (one of this worker's own
        topics: ``webhook_bridge_output_writes_total``)."""
        outcome = "acknowledged" if acknowledged else "failed"
        self.child(self.output_writes, output, outcome).inc(records)
        self.child(self.output_write_duration, output).observe(seconds)

    async def observed_write(self, output: str, write: Awaitable[_T]) -> _T:
        """Await ``write`` (what it gives), counting and timing it as a write to ``output``."""
        started = time.monotonic()
        try:
            result = await write
        except asyncio.CancelledError:
            raise
        except Exception:
            self.output_written(output, time.monotonic() - started, False)
            raise
        self.output_written(output, time.monotonic() - started, True)
        return result


#: Why a worker's web server (``bridge.worker.web``) closed a connection itself: ``refused``,
#: opened while the server held its most connections, each answering a request (``503``);
#: ``shed``, the connection waiting longest (idle, its headers arriving, or its answer being
#: written), closed to make room for a new one; ``headers_timeout``, a request's headers not
#: whole in time; ``headers_too_large``, a request's headers past their bound (``431``).
CONNECTION_DROPS = ("refused", "shed", "headers_timeout", "headers_too_large")


class ConnectionMetrics:
    """The connections a worker's web server (``/healthz``, ``/readyz``, ``/metrics`` and
    ``/v1``) holds, and those it closed itself and why (:data:`CONNECTION_DROPS`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.open = Gauge(
            "webhook_bridge_http_connections",
            "Connections the worker's web server (probes, metrics, /v1) holds open.",
            registry=registry,
        )
        self.dropped = Counter(
            "webhook_bridge_http_connections_dropped_total",
            "Connections the worker's web server closed itself, by reason: refused (at its "
            "bound, every connection answering a request: 503), shed (the one waiting "
            "longest, closed to make room for a new one), headers_timeout (a request's headers "
            "not whole in time), headers_too_large (431).",
            ["reason"],
            registry=registry,
        )
        for reason in CONNECTION_DROPS:
            self.dropped.labels(reason)


class HotCounter:
    """``inc()`` of one counter child, for the worker's event loop thread only.

    It adds to the child's ``MutexValue._value`` without taking its lock, and skips
    ``Counter.inc``'s observability check (a ``labels()`` child always passes it) and exemplars
    (the bridge sets none). This is safe because every update of the bridge's counters and
    histograms runs on the event loop's thread: no two writers race, and a scrape, which reads
    under the lock from another thread, reads the same float ``Counter.inc`` would have left.
    It is a private contract with prometheus-client, kept because the hot path makes several
    updates per delivery and the public calls cost several times more (see BENCHMARKS.md,
    *Metric updates*). It is guarded: pyproject.toml bounds the release, and
    :func:`check_prometheus_client` refuses to build :class:`Metrics` when one of the
    internals in :data:`RELIED_ON` is not the code this was written against."""

    __slots__ = ("_value",)

    def __init__(self, value: Any) -> None:
        self._value = value

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self._value._value += amount


class HotHistogram:
    """``observe()`` of one histogram child, for the worker's event loop thread only, under the
    contract of :class:`HotCounter`: it adds the amount to ``_sum`` and 1 to the first of the
    per-bucket (not cumulative) ``_buckets`` whose bound in ``_upper_bounds`` (ascending, the
    last +Inf) holds it, as ``Histogram.observe`` does; NaN goes through ``observe`` itself."""

    __slots__ = ("_sum", "_buckets", "_bounds", "_child")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._sum = child._sum
        self._buckets = child._buckets
        self._bounds = tuple(child._upper_bounds)  # ascending, the last is +Inf

    def observe(self, amount: float) -> None:
        if amount != amount:  # NaN: no bucket holds it; as prometheus-client does it
            self._child.observe(amount)
            return
        self._sum._value += amount
        self._buckets[bisect_left(self._bounds, amount)]._value += 1


#: The prometheus-client internals :class:`HotCounter` and :class:`HotHistogram` rely on, each
#: with the first 16 hex digits of the SHA-256 of its source as prometheus-client 0.26 ships
#: it: the value class and its lock, where a counter keeps its value, where a histogram keeps
#: its sum, bounds and per-bucket counts, how ``inc`` and ``observe`` change them, and how a
#: scrape reads them back.
RELIED_ON: dict[str, str] = {
    "values.MutexValue": "70ff194268e82391",
    "Counter._metric_init": "17b9d10bf21b912c",
    "Counter.inc": "a974907585d081bb",
    "Counter._child_samples": "edfab8ca9c0a5ad5",
    "Histogram._prepare_buckets": "e857c68ce98710d9",
    "Histogram._metric_init": "61aeac1b768d4786",
    "Histogram.observe": "38beca3be1d1595b",
    "Histogram._child_samples": "a20de7fdbe76e25b",
}


class PrometheusClientMismatch(ConfigError):
    """The installed prometheus-client's internals are not those the bridge's hot-path metric
    handles were written against: the worker refuses to start."""


def check_prometheus_client() -> None:
    """Raise :class:`PrometheusClientMismatch`, naming the internal, when one of
    :data:`RELIED_ON` is missing or its source differs from the one recorded there."""
    owners = {"values": prometheus_values, "Counter": Counter, "Histogram": Histogram}
    for name, expected in RELIED_ON.items():
        owner, attribute = name.split(".")
        found = getattr(owners[owner], attribute, None)
        digest = "missing" if found is None else _source_digest(found)
        if digest != expected:
            raise PrometheusClientMismatch(
                f"prometheus-client: {name} is not the code bridge.metrics' HotCounter and "
                f"HotHistogram were written against (fingerprint {digest}, expected "
                f"{expected}); check them against this release, then update RELIED_ON and "
                "the version bound in pyproject.toml"
            )


@functools.cache
def _source_digest(code: Any) -> str:
    """The first 16 hex digits of the SHA-256 of ``code``'s source (once per object)."""
    return hashlib.sha256(inspect.getsource(code).encode("utf-8")).hexdigest()[:16]


def _hot(child: Any) -> Any:
    """A hot-path handle on ``child``, or ``child`` itself when its values are not the plain
    in-process kind (multiprocess mode) or it is neither a counter nor a histogram."""
    if isinstance(child, Counter) and type(getattr(child, "_value", None)) is MutexValue:
        return HotCounter(child._value)
    if (
        isinstance(child, Histogram)
        and type(getattr(child, "_sum", None)) is MutexValue
        and all(type(b) is MutexValue for b in child._buckets)
    ):
        return HotHistogram(child)
    return child
