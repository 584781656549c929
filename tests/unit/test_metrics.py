"""bridge.metrics: remembered label children count into the registry like ``labels()``."""

from __future__ import annotations

import importlib.metadata
import math
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.values import MutexValue

from bridge.metrics import (
    LATENCY_BUCKETS,
    REQUEST_BUCKETS,
    STAGE_BUCKETS,
    HotCounter,
    HotHistogram,
    Metrics,
    PrometheusClientMismatch,
    check_prometheus_client,
)
from tests.support.workers import offline_bridge


def test_child_is_remembered_and_counts_like_labels() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, "test")
    first = metrics.child(metrics.events, "post.created")
    assert metrics.child(metrics.events, "post.created") is first
    assert metrics.child(metrics.events, "test.event") is not first
    first.inc()
    metrics.child(metrics.events, "post.created").inc()
    metrics.events.labels("post.created").inc()
    value = registry.get_sample_value("webhook_bridge_events_total", {"event_type": "post.created"})
    assert value == 3.0


def test_same_labels_on_different_metrics_are_different_children() -> None:
    metrics = Metrics(CollectorRegistry())
    assert metrics.child(metrics.dead_letters, "x") is not metrics.child(metrics.skipped, "x")


def _exposition(registry: CollectorRegistry) -> list[str]:
    """The registry's text exposition of the bridge's metrics, without creation timestamps."""
    text = generate_latest(registry).decode()
    return [
        line
        for line in text.splitlines()
        if "webhook_bridge_" in line and "_created" not in line and "build_info" not in line
    ]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["events", "attempts", "request_duration", "end_to_end"]),
            st.one_of(
                st.sampled_from([0.0, 0.005, 0.01, 30.0, 86400.0, math.inf]),
                st.floats(min_value=0, max_value=1e6, allow_nan=False),
            ),
        ),
        max_size=40,
    )
)
def test_hot_handles_expose_what_prometheus_client_does(ops: list[tuple[str, float]]) -> None:
    """The same operations through Metrics.child and through prometheus-client's own children
    give the same exposition (bucket bounds included: an amount equal to a bound is in it)."""
    hot_registry, plain_registry = CollectorRegistry(), CollectorRegistry()
    hot, plain = Metrics(hot_registry, "t"), Metrics(plain_registry, "t")
    for name, amount in ops:
        if name == "events":
            hot.child(hot.events, "post.created").inc(amount)
            plain.events.labels("post.created").inc(amount)
        elif name == "attempts":
            hot.child(hot.attempts, "success", "2xx").inc()
            plain.attempts.labels("success", "2xx").inc()
        elif name == "request_duration":
            hot.child(hot.request_duration, "success").observe(amount)
            plain.request_duration.labels("success").observe(amount)
        else:
            hot.child(hot.end_to_end).observe(amount)
            plain.end_to_end.observe(amount)
    assert _exposition(hot_registry) == _exposition(plain_registry)


def test_hot_handles_are_used_for_counters_and_histograms_only() -> None:
    metrics = Metrics(CollectorRegistry())
    assert isinstance(metrics.child(metrics.events, "post.created"), HotCounter)
    assert isinstance(metrics.child(metrics.end_to_end), HotHistogram)
    assert isinstance(metrics.child(metrics.request_duration, "failure"), HotHistogram)
    lag = metrics.child(metrics.lag, "t", "0")
    assert not isinstance(lag, HotCounter | HotHistogram)
    lag.set(3)  # a gauge child, as labels() gives it


def test_a_hot_counter_refuses_negative_amounts_and_nan_goes_in_no_bucket() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    with pytest.raises(ValueError):
        metrics.child(metrics.events, "post.created").inc(-1)
    metrics.child(metrics.end_to_end).observe(math.nan)
    assert registry.get_sample_value("webhook_bridge_end_to_end_latency_seconds_count") == 0


def test_end_to_end_buckets_resolve_latency_near_a_50_ms_objective() -> None:
    for buckets in (LATENCY_BUCKETS, STAGE_BUCKETS):
        near = [b for b in buckets if 0.01 <= b <= 0.1]
        assert near[0] == 0.01 and near[-1] == 0.1
        assert max(b - a for a, b in zip(near, near[1:], strict=False)) <= 0.025 + 1e-12


# -- the prometheus-client internals the hot handles rely on ---------------------------------------


def test_the_internals_relied_on_are_the_code_they_were_written_against() -> None:
    check_prometheus_client()  # raises if any fingerprint in RELIED_ON differs


def test_a_changed_internal_stops_the_metrics_with_its_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def observe(self: Histogram, amount: float, exemplar: object = None) -> None:
        """Stands for a release whose observe keeps its buckets some other way."""

    monkeypatch.setattr(Histogram, "observe", observe)
    with pytest.raises(PrometheusClientMismatch, match=r"Histogram\.observe"):
        Metrics(CollectorRegistry())


def test_a_missing_internal_stops_the_metrics_with_its_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(Histogram, "_prepare_buckets")
    with pytest.raises(PrometheusClientMismatch, match=r"Histogram\._prepare_buckets.*missing"):
        check_prometheus_client()


def test_pyproject_bounds_prometheus_client_to_the_release_checked() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    wanted = [d for d in pyproject["project"]["dependencies"] if d.startswith("prometheus-client")]
    assert wanted == ["prometheus-client>=0.26,<0.27"]
    assert importlib.metadata.version("prometheus-client").startswith("0.26.")


def test_the_children_have_the_shape_the_hot_handles_write_to() -> None:
    metrics = Metrics(CollectorRegistry())
    counter = metrics.attempts.labels("success", "2xx")
    assert type(counter._value) is MutexValue
    assert type(counter._value._value) is float
    assert hasattr(counter._value, "_lock")
    histogram = metrics.request_duration.labels("success")
    assert type(histogram._sum) is MutexValue and type(histogram._sum._value) is float
    assert histogram._upper_bounds == [*REQUEST_BUCKETS, math.inf]
    assert len(histogram._buckets) == len(histogram._upper_bounds)
    assert all(type(b) is MutexValue for b in histogram._buckets)


def test_values_written_the_hot_way_are_what_the_registry_reads() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.child(metrics.attempts, "success", "2xx").inc(2.5)
    metrics.child(metrics.attempts, "success", "2xx").inc()
    attempts = {"outcome": "success", "status_class": "2xx"}
    assert registry.get_sample_value("webhook_bridge_delivery_attempts_total", attempts) == 3.5
    duration = metrics.child(metrics.request_duration, "failure")
    for amount in (0.005, 0.0051, 7.0, 45.0):  # on a bound, just past it, mid-range, past the last
        duration.observe(amount)
    name, failure = "webhook_bridge_http_request_duration_seconds", {"outcome": "failure"}

    def bucket(le: str) -> float | None:
        return registry.get_sample_value(f"{name}_bucket", {**failure, "le": le})

    assert [bucket(le) for le in ("0.005", "0.01", "5.0", "10.0", "30.0", "+Inf")] == [
        1.0,
        2.0,
        2.0,
        3.0,
        3.0,
        4.0,
    ]
    assert registry.get_sample_value(f"{name}_count", failure) == 4.0
    assert registry.get_sample_value(f"{name}_sum", failure) == 0.005 + 0.0051 + 7.0 + 45.0


def test_the_series_alerts_take_an_increase_of_exist_from_the_start() -> None:
    """An alert on ``increase()`` of a series first scraped at 1 sees no increase: a worker's
    first internal error or failed write went unalerted (until 2026-12-06 those series were
    made at their first count)."""
    from bridge.delivery.deliverer import _SKIPPED
    from bridge.metrics import OUTPUTS, PRECREATED_DEAD_LETTER_REASONS, SKIP_REASONS

    registry = CollectorRegistry()
    Metrics(registry, "test")
    sample = registry.get_sample_value
    for reason in PRECREATED_DEAD_LETTER_REASONS:
        assert sample("webhook_bridge_dead_letters_total", {"reason": reason}) == 0.0
    assert "internal_error" in PRECREATED_DEAD_LETTER_REASONS
    for output in OUTPUTS:
        for outcome in ("acknowledged", "failed"):
            labels = {"output": output, "outcome": outcome}
            assert sample("webhook_bridge_output_writes_total", labels) == 0.0
    for reason in SKIP_REASONS:
        assert sample("webhook_bridge_attempts_skipped_total", {"reason": reason}) == 0.0
    # Every reason the deliverer skips an attempt for, and the drain's, is among them.
    assert {*_SKIPPED, "interrupted"} == set(SKIP_REASONS)


def test_the_series_no_deliveries_takes_an_increase_of_exist_from_the_start() -> None:
    """WebhookBridgeNoDeliveries pages on attempts without an increase of delivered ones: a
    quiet worker's first delivery of an event type (its series first scraped at 1) counted as
    none, and it paged while deliveries succeeded (until 2026-12-07)."""
    from bridge.contract.schemas import EVENT_TYPES
    from bridge.http.base import status_class

    registry = CollectorRegistry()
    Metrics(registry, "test")
    sample = registry.get_sample_value
    for event_type in EVENT_TYPES:
        assert sample("webhook_bridge_events_total", {"event_type": event_type}) == 0.0
        for outcome in ("delivered", "dead_lettered"):
            labels = {"event_type": event_type, "outcome": outcome}
            assert sample("webhook_bridge_deliveries_total", labels) == 0.0, labels
    assert sample("webhook_bridge_events_total", {"event_type": "invalid"}) == 0.0
    attempts = "webhook_bridge_delivery_attempts_total"
    assert sample(attempts, {"outcome": "success", "status_class": "2xx"}) == 0.0
    for status in [None, *range(1000)]:
        labels = {"outcome": "failure", "status_class": status_class(status)}
        assert sample(attempts, labels) == 0.0, labels


def test_every_output_a_worker_writes_is_counted_from_the_start() -> None:
    import re

    from bridge.metrics import OUTPUTS

    root = Path(__file__).resolve().parents[2] / "bridge"
    named = set()
    for path in root.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        named |= set(re.findall(r'(?:_observed|observed_write|output_written)\(\s*"(\w+)"', text))
    assert named and named <= set(OUTPUTS)


@pytest.mark.parametrize("timeout", [5.0, 30.0, 60.0, 90.5])
def test_a_longer_request_timeout_is_the_request_durations_last_bound(
    timeout: float, tmp_path: Path
) -> None:
    """Answers between 30 s and a longer timeout are not counted with the requests cut off."""
    bridge = offline_bridge(tmp_path, http_timeout=timeout)
    child = bridge.metrics.request_duration.labels("success")
    longer = [timeout] if timeout > 30 else []
    assert child._upper_bounds == [*REQUEST_BUCKETS, *longer, math.inf]
    child.observe(timeout - 0.5)
    child.observe(timeout + 0.001)  # cut off: a timeout fires at its deadline, not before
    at_most = bridge.registry.get_sample_value
    assert at_most(
        "webhook_bridge_http_request_duration_seconds_bucket",
        {"outcome": "success", "le": str(max(timeout, 30.0))},
    ) == (1.0 if timeout >= 30 else 2.0)


def test_the_dashboard_s_variables_list_every_worker_from_its_start(tmp_path: Path) -> None:
    """The job, namespace and instance variables read a metric every worker exports from its
    start, whatever its role: an API-only pod consumes no events, so a variable read from
    ``webhook_bridge_events_total`` (until 2026-12-06) left it off the dashboard."""
    import json
    import re

    from bridge.api.metrics import ApiMetrics

    dashboard = Path(__file__).resolve().parents[2] / "helm/webhook-bridge/files"
    variables = json.loads((dashboard / "grafana-dashboard.json").read_text())["templating"]
    queries = [v["query"]["query"] for v in variables["list"] if v["type"] == "query"]
    assert len(queries) == 3
    bridge = offline_bridge(tmp_path / "data")  # the registry of a worker of any role
    ApiMetrics(bridge.registry)  # what role api and all add
    exported = generate_latest(bridge.registry).decode()
    for query in queries:
        found = re.fullmatch(r"label_values\((\w+)(\{[^}]*\})?, (\w+)\)", query)
        assert found is not None, query
        assert re.search(rf"^{found[1]}(\{{|\s)", exported, re.MULTILINE), query
        assert not found[1].startswith(("webhook_bridge_events", "webhook_bridge_api_"))


def test_recent_endpoints_count_each_endpoint_once_by_its_latest_answer() -> None:
    """How many endpoints fail, not how many attempts: one endpoint failing a hundred times is
    one; an endpoint is counted by its latest answer, and forgotten 10 minutes after it."""
    from bridge.metrics import RecentEndpoints

    now = [1000.0]
    recent = RecentEndpoints(600.0, limit=3, clock=lambda: now[0])
    for _ in range(100):
        recent.observe("https://dead.example:443", False)
    assert (recent.failing(), recent.succeeding()) == (1, 0)
    recent.observe("https://ok.example:443", True)
    now[0] += 300.0
    recent.observe("https://flaky.example:443", False)
    recent.observe("https://flaky.example:443", True)
    assert (recent.failing(), recent.succeeding()) == (1, 2)
    now[0] += 301.0  # dead and ok were last answered 601 s ago
    assert (recent.failing(), recent.succeeding()) == (0, 1)
    for n in range(5):  # past the limit: the least recently sent to go first
        recent.observe(f"https://e{n}.example:443", n % 2 == 0)
    assert (recent.failing(), recent.succeeding()) == (1, 2)


def test_recent_endpoints_are_exported_by_outcome_and_bucket() -> None:
    """By bucket: an endpoint is in the same one at every worker (a bucket failing anywhere
    is counted once across workers, as the alert counts them)."""
    from bridge.metrics import ENDPOINT_BUCKETS, endpoint_bucket

    registry = CollectorRegistry()
    metrics = Metrics(registry, "test")
    endpoints = [f"https://e{n}.example:443" for n in range(40)]
    for n, endpoint in enumerate(endpoints):
        metrics.recent_endpoints.observe(endpoint, n % 3 == 0)
    sample = registry.get_sample_value
    for outcome, success in (("failing", False), ("succeeding", True)):
        total = 0.0
        for bucket in range(ENDPOINT_BUCKETS):
            value = sample(
                "webhook_bridge_endpoints_recent", {"outcome": outcome, "bucket": str(bucket)}
            )
            assert value is not None
            expected = sum(
                1
                for n, e in enumerate(endpoints)
                if endpoint_bucket(e) == bucket and (n % 3 == 0) == success
            )
            assert value == expected, (outcome, bucket)
            total += value
        assert total == sum(1 for n in range(40) if (n % 3 == 0) == success)
    # A stable bucket (CRC-32), not Python's salted hash.
    assert endpoint_bucket("https://hooks.example:443") == 1644371145 % ENDPOINT_BUCKETS
