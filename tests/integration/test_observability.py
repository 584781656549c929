"""The dashboard and alert rules against real tools: promtool, and a real Prometheus scraping a
real worker that delivers, retries and dead-letters; a dashboard counter through a rebalance."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from bridge.admin.publish import publish_events
from bridge.api.auth import hash_token
from bridge.api.metrics import ApiMetrics
from bridge.config import Settings
from bridge.contract.events import build_event
from bridge.metrics import ConnectionMetrics, Metrics
from bridge.subscriptions.store import WebhookStore
from bridge.worker.embedded import free_port
from tests.support.processes import ChildProcess
from tests.support.receivers import Receiver
from tests.support.waiting import poll

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHART_FILES = ROOT / "helm" / "webhook-bridge" / "files"
#: The only copies of the dashboard and the alert rules (Helm can read only chart files;
#: docker-compose mounts these too).
DASHBOARD = CHART_FILES / "grafana-dashboard.json"
ALERT_RULES = CHART_FILES / "alerts.yml"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
COMPOSE_PROMETHEUS = ROOT / "deploy" / "compose" / "prometheus.yml"
METRICS_DOC = ROOT / "docs" / "metrics.md"

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not on PATH (Debian package 'prometheus')"
)
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus not on PATH (Debian package 'prometheus')"
)

ALERTS = {
    "WebhookBridgeFailureRatioHigh",
    "WebhookBridgeDeadLettersGrowing",
    "WebhookBridgeConsumerLagGrowing",
    "WebhookBridgeEventUnsettled",
    "WebhookBridgeNoDeliveries",
    "WebhookBridgeLatencyP99High",
    "WebhookBridgeOutputWritesFailing",
    "WebhookBridgeInternalErrors",
    "WebhookBridgeApiErrors",
    "WebhookBridgeEventLoopPaused",
    "WebhookBridgeDown",
}
API_TOKEN = "wbt_dashboard-0123456789abcdef0123456789abcdef"
#: What Grafana would put for its built-in variables; windows of 1m hold enough 1 s scrapes.
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__range": "1m", "__interval": "1s"}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
#: Panels whose series must carry these label values after the test traffic: the panel
#: breaks down by the right label, and the traffic did what the test means it to.
EXPECTED_LABELS = {
    "Deliveries by outcome": ("outcome", {"delivered", "dead_lettered"}),
    "Failed attempts by status class": ("status_class", {"4xx", "5xx"}),
    "Retries scheduled by tier": ("tier", {"1", "2"}),
    "Dead letters by reason": (
        "reason",
        {"attempts_exhausted", "endpoint_gone", "destination_forbidden"},
    ),
    "Webhooks disabled": ("reason", {"gone"}),
    "Kafka writes by output and outcome": (
        "output",
        {"attempt", "retry", "dead_letter", "disable"},
    ),
    "API requests by route and status class": (
        "route",
        {"/v1/webhooks", "/v1/webhooks/{webhook_id}"},
    ),
    "API requests between workers": ("route", {"/internal/v1/delivery-log"}),
    "API requests held through rebalances": ("hop", {"client", "peer"}),
}


# -- the dashboard as data ---------------------------------------------------------------------
def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside (collapsed) rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def variable_values(dashboard: dict[str, Any]) -> dict[str, str]:
    """Each template variable's default, as Grafana would interpolate it into a query."""
    values = dict(GRAFANA_BUILTINS)
    for var in dashboard["templating"]["list"]:
        if var["type"] == "datasource":
            continue
        value = var["current"]["value"]
        if value in ("$__all", ["$__all"]):
            value = var["allValue"]
        elif isinstance(value, list):
            value = "(" + "|".join(value) + ")"
        values[var["name"]] = value
    return values


def interpolate(expr: str, values: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        assert name in values, f"undefined variable ${name} in {expr!r}"
        return values[name]

    return VARIABLE.sub(one, expr)


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL with variables interpolated) for every target."""
    values = variable_values(dashboard)
    return [
        (panel["title"], interpolate(target["expr"], values))
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def exported_metric_names() -> list[str]:
    """The name of every metric bridge/metrics.py and the API's (bridge/api/metrics.py)
    define, as Prometheus stores it."""
    registry = CollectorRegistry()
    Metrics(registry)
    ConnectionMetrics(registry)
    ApiMetrics(registry)
    return [
        family.name + "_total" if family.type == "counter" else family.name
        for family in registry.collect()
        if not family.name.startswith("process_")  # the standard process collector's
    ]


# -- Prometheus in a child process -------------------------------------------------------------
class PrometheusProcess(ChildProcess):
    """``prometheus`` on 127.0.0.1 with its config, data and log under one directory."""

    def __init__(self, directory: Path, *, job: str, target: str, rule_file: Path) -> None:
        super().__init__(directory / "prometheus.log")
        self.directory = directory
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(rule_file)],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}],
        }
        # JSON is YAML, and the test needs no YAML library.
        (directory / "prometheus.yml").write_text(json.dumps(config, indent=2))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PrometheusProcess:
        assert PROMETHEUS is not None
        self.spawn(
            [
                PROMETHEUS,
                f"--config.file={self.directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
            ]
        )
        return self

    async def wait_ready(self, timeout: float = 30.0) -> None:
        await self.wait_http(self.url + "/-/ready", timeout=timeout, what="prometheus")


async def api(client: httpx.AsyncClient, path: str, **params: str) -> dict[str, Any]:
    """One Prometheus API call; the whole answer (``status``, ``data`` or ``error``)."""
    response = await client.get(path, params=params, timeout=10.0)
    return response.json()  # type: ignore[no-any-return]


def deployed_job_name() -> str:
    """The scrape job of docker-compose's Prometheus, which the alerts and dashboard use."""
    text = COMPOSE_PROMETHEUS.read_text()
    (job,) = re.findall(r"^\s*-\s*job_name:\s*(\S+)\s*$", text, re.MULTILINE)
    return job


@pytest.fixture
def prometheus(settings: Settings, tmp_path: Path) -> Iterator[PrometheusProcess]:
    """A Prometheus scraping this test's worker every second; stopped at teardown."""
    running = PrometheusProcess(
        tmp_path / "prometheus",
        job=deployed_job_name(),
        target=f"127.0.0.1:{settings.web_port}",
        rule_file=ALERT_RULES,
    )
    running.start()
    yield running
    running.stop()


# -- tests ---------------------------------------------------------------------------------------
def test_dashboard_is_well_formed_and_covers_every_metric() -> None:
    dashboard = load_dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"

    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dashboard):
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]

    queries = " ".join(expr for _, expr in dashboard_queries(dashboard))
    docs = METRICS_DOC.read_text()
    for name in exported_metric_names():
        assert name in queries, f"{name} is on no dashboard panel"
        assert f"`{name}`" in docs, f"{name} is not documented in docs/metrics.md"
    for title in EXPECTED_LABELS:
        assert any(panel["title"] == title for panel in panels(dashboard)), title


@needs_promtool
def test_promtool_checks_and_unit_tests_the_rules(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    # docker-compose's config names the rules by their path inside the container.
    config = tmp_path / "prometheus.yml"
    config.write_text(
        COMPOSE_PROMETHEUS.read_text().replace("/etc/prometheus/alerts.yml", str(ALERT_RULES))
    )
    for command in (
        ["check", "rules", str(ALERT_RULES)],
        ["test", "rules", "alerts_test.yml"],
        ["check", "config", str(config)],
    ):
        done = subprocess.run(
            [PROMTOOL, *command],
            cwd=PROMETHEUS_DIR,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"promtool {' '.join(command)}:\n{done.stdout}{done.stderr}"


async def create_webhook(store: WebhookStore, receiver: Receiver, name: str, status: int) -> None:
    path = f"/wh/{name}"
    receiver.statuses[path] = status
    await store.create(
        url=receiver.url(path),
        secret=f"secret-{name}",
        webhook_id=name,
        name=name,
        events=["*"],
        site_id="s1",
        user_id="u1",
    )


@needs_prometheus
async def test_prometheus_evaluates_every_dashboard_and_alert_expression(
    settings: Settings,
    receiver: Receiver,
    in_process_workers,
    prometheus: PrometheusProcess,
    tmp_path: Path,
) -> None:
    # Traffic that exercises every outcome: deliveries, retries through both (short) tiers,
    # dead letters after exhausted attempts, a 410 that disables its webhook, and a URL the
    # SSRF guard refuses.
    async with WebhookStore(settings) as store:
        await create_webhook(store, receiver, "fine", 200)
        await create_webhook(store, receiver, "also_fine", 200)
        await create_webhook(store, receiver, "failing", 500)
        await create_webhook(store, receiver, "gone", 410)
        # ::1 is outside the test's allow-list (127.0.0.0/8): refused before connecting, and
        # were the guard off, a connection to loopback port 9 would be refused harmlessly.
        await store.create(
            url="http://[::1]:9/refused",
            webhook_id="forbidden",
            events=["*"],
            site_id="s1",
            user_id="u1",
        )
    # The worker serves /v1 too (role all, a token file), for the API's panels.
    tokens = tmp_path / "tokens.json"
    entry = {"name": "dash", "sha256": hash_token(API_TOKEN), "scopes": ["read"]}
    tokens.write_text(json.dumps({"tokens": [entry]}))
    worker = in_process_workers(settings.replace(delivery_log=True, api_tokens=str(tokens)))
    await worker.wait_ready()
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{settings.web_port}",
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    ) as api_client:
        assert (await api_client.get("/v1/webhooks")).status_code == 200
        assert (await api_client.get("/v1/webhooks/nope")).status_code == 404
        # What another worker reads this one's log through (hop="peer"): a panel of its own.
        assert (await api_client.get("/internal/v1/delivery-log")).status_code == 200
    data = {
        "post.created": {"id": "p1", "title": "Hello"},
        "post.published": {"id": "p1", "title": "Hello"},
        "post.deleted": {"id": "p1"},
    }
    events = [
        build_event(event_type, payload, site_id="s1", user_id="u1")
        for _ in range(10)
        for event_type, payload in data.items()
    ]
    await publish_events(settings, events)
    try:
        await worker.wait_metric(
            'webhook_bridge_dead_letters_total{reason="attempts_exhausted"}',
            lambda v: v > 0,
            timeout=60.0,
        )
    except AssertionError as exc:
        values = await worker.metrics()
        counts = {k: v for k, v in values.items() if "_total{" in k and "faust" not in k}
        raise AssertionError(f"{exc}\n{counts}\n{worker.tail()}") from None
    # Events reach the pipeline past Faust's stream (bridge/worker/direct_topic.py); Faust's sensor
    # still counts them in, by topic (a dashboard panel).
    values = await worker.metrics()
    received = values.get(
        f'faust_messages_received_per_topic_total{{topic="{settings.events_topic}"}}'
    )
    assert received is not None and received >= len(events), received

    dashboard = load_dashboard()
    async with httpx.AsyncClient(base_url=prometheus.url) as client:
        await prometheus.wait_ready()
        await wait_target_up(client, timeout=30.0)
        await check_dashboard_queries(client, dashboard, timeout=30.0)
        await check_alert_rules(client, timeout=30.0)


async def test_faust_s_records_by_topic_do_not_go_down_at_a_rebalance(
    settings: Settings, in_process_workers
) -> None:
    """faust_messages_received_per_topic_total (the panel "Messages received by topic") is a
    counter: a second worker joining makes the first rebalance, and it goes on from what it
    counted. Until 2026-12-07 Faust's sensor removed the per-topic counters at a rebalance's
    start and end, and the first worker's count of the events fell to what it read since."""
    first = in_process_workers(settings)
    await first.wait_ready()
    events = [
        build_event("post.created", {"id": f"p{n}", "title": "t"}, site_id=f"s{n}", user_id="u1")
        for n in range(40)
    ]
    await publish_events(settings, events)
    received = f'faust_messages_received_per_topic_total{{topic="{settings.events_topic}"}}'
    await first.wait_metric(received, lambda v: v >= len(events), timeout=60.0)
    # Observed as each rebalance ends (recovery included): the first one's, so far.
    ended = "faust_rebalance_done_latency_count"
    rebalances = (await first.metrics()).get(ended, 0.0)
    assert rebalances >= 1
    second = in_process_workers(settings.replace(web_port=free_port()))
    await second.wait_ready()
    values = await first.wait_metric(ended, lambda v: v > rebalances, timeout=60.0)
    assert values.get(received, 0.0) >= len(events), values.get(received)


async def wait_target_up(client: httpx.AsyncClient, timeout: float) -> None:
    async def targets() -> list[dict[str, Any]]:
        return (await api(client, "/api/v1/targets"))["data"]["activeTargets"]

    found = await poll(
        targets,
        until=lambda found: found and all(t["health"] == "up" for t in found),
        timeout=timeout,
        interval=0.2,
    )
    assert found and all(t["health"] == "up" for t in found), f"scrape target not up: {found}"


async def check_dashboard_queries(
    client: httpx.AsyncClient, dashboard: dict[str, Any], timeout: float
) -> None:
    """Every panel query parses; each returns series (rates need two scrapes: poll)."""
    queries = dashboard_queries(dashboard)

    async def problems() -> list[str]:
        missing: list[str] = []
        series: dict[str, list[dict[str, Any]]] = {}
        for title, expr in queries:
            answer = await api(client, "/api/v1/query", query=expr)
            assert answer["status"] == "success", f"{title}: {expr}\n{answer}"
            result = answer["data"]["result"]
            series.setdefault(title, []).extend(result)
            if not result:
                missing.append(f"{title}: {expr}")
        wrong = [
            f"{title}: {label} has {sorted(got)}, needs {sorted(needed)}"
            for title, (label, needed) in EXPECTED_LABELS.items()
            if not needed <= (got := {s["metric"].get(label) for s in series[title]})
        ]
        return missing + wrong

    left = await poll(problems, until=lambda left: not left, timeout=timeout, interval=0.5)
    assert not left, "dashboard queries without the expected series:\n" + "\n".join(left)


async def check_alert_rules(client: httpx.AsyncClient, timeout: float) -> None:
    """Every alert is loaded, evaluated without error, parses as a query, and is complete."""
    docs = METRICS_DOC.read_text().lower()

    async def loaded() -> list[dict[str, Any]]:
        groups = (await api(client, "/api/v1/rules"))["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def evaluated(rules: list[dict[str, Any]]) -> bool:
        return bool(rules) and all(rule["health"] == "ok" for rule in rules)

    rules = await poll(loaded, until=evaluated, timeout=timeout, interval=0.2)
    assert evaluated(rules), f"rules not all evaluated without error: {rules}"
    assert {rule["name"] for rule in rules} == ALERTS
    for rule in rules:
        assert rule["type"] == "alerting", rule["name"]
        answer = await api(client, "/api/v1/query", query=rule["query"])
        assert answer["status"] == "success", f"{rule['name']}: {answer}"
        assert rule["duration"] > 0, f"{rule['name']} has no `for:`"
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["name"]
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["name"]
        anchor = annotations["runbook_url"].partition("#")[2]
        assert anchor == rule["name"].lower(), rule["name"]
        assert f"### {rule['name'].lower()}" in docs, f"no runbook section for {rule['name']}"
