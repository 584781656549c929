"""bridge.api.metrics: every answer counted by route template, method, status class and hop,
timed."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from bridge.api.app import create_app
from bridge.api.auth import TokenSet
from bridge.api.metrics import RELAYED_BY, ApiMetrics
from bridge.api.service import WebhookService
from tests.unit.api.conftest import (
    MemoryRepository as Repository,
)
from tests.unit.api.conftest import (
    Published,
    auth,
    control_service,
)


async def counted_client(tokens: TokenSet, registry: CollectorRegistry) -> TestClient[Any, Any]:
    """A started client of the API over an empty repository, counting in ``registry``."""
    repository = Repository()
    service = WebhookService(repository, publisher=Published())
    app = create_app(service, control_service(repository), tokens, metrics=ApiMetrics(registry))
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_requests_are_counted_by_template_never_by_id(tokens: TokenSet) -> None:
    registry = CollectorRegistry()
    client = await counted_client(tokens, registry)
    try:
        assert (await client.get("/v1/webhooks/wh_secret_id", headers=auth())).status == 404
        assert (await client.get("/v1/webhooks/wh_other")).status == 401
        assert (await client.get("/v1/no/such/path")).status == 404
        assert (await client.delete("/v1/openapi.json")).status == 405
        assert (await client.get("/v1/openapi.json")).status == 200
    finally:
        await client.close()

    def count(route: str, method: str, status_class: str) -> float | None:
        return registry.get_sample_value(
            "webhook_bridge_api_requests_total",
            {"route": route, "method": method, "status_class": status_class, "hop": "client"},
        )

    assert count("/v1/webhooks/{webhook_id}", "GET", "4xx") == 2
    assert count("unmatched", "other", "4xx") == 2
    assert count("/v1/openapi.json", "GET", "2xx") == 1
    exported = "\n".join(f"{s.name}{s.labels}" for m in registry.collect() for s in m.samples)
    assert "wh_secret_id" not in exported and "no/such" not in exported
    observed = registry.get_sample_value(
        "webhook_bridge_api_request_duration_seconds_count",
        {"route": "/v1/webhooks/{webhook_id}", "hop": "client"},
    )
    assert observed == 2


async def test_the_probes_and_the_scrape_served_beside_the_api_are_not_api_requests() -> None:
    """A worker not ready answers ``/readyz`` 503: counted as the API's 5xx, it fired
    WebhookBridgeApiErrors for a pod that was only rebalancing (until 2026-12-06)."""
    from bridge.api.app import ApiConfig
    from bridge.worker.web import WebServer

    registry = CollectorRegistry()
    metrics = ApiMetrics(registry)
    repository = Repository()

    async def application() -> Any:  # as bridge.worker.api.api_application builds it
        service = WebhookService(repository, publisher=Published())
        return create_app(
            service,
            control_service(repository),
            TokenSet.from_mapping({"tokens": []}),
            config=ApiConfig(),
            metrics=metrics,
        )

    server = WebServer(
        host="127.0.0.1",
        port=0,
        registry=registry,
        ready=lambda: (False, "rebalancing"),
        application=application,
    )
    app = await server._routes()
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        assert (await client.get("/readyz")).status == 503
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/metrics")).status == 200
        assert (await client.get("/v1/webhooks")).status == 401
    routes = {
        sample.labels["route"]
        for family in registry.collect()
        if family.name == "webhook_bridge_api_requests"
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    assert routes == {"/v1/webhooks"}


async def test_requests_between_workers_are_counted_apart_from_the_clients(
    tokens: TokenSet,
) -> None:
    """A request on the workers' internal routes, or carrying the relay header, is a worker's on
    a client's behalf (the worker the client asked counts the client's answer): ``hop="peer"``.
    The header is not trusted, so a client sending it is counted there too, not lost."""
    registry = CollectorRegistry()
    client = await counted_client(tokens, registry)
    relayed = {**auth(), RELAYED_BY: "http://127.0.0.1:1"}
    try:
        assert (await client.get("/v1/webhooks", headers=auth())).status == 200
        assert (await client.get("/v1/webhooks", headers=relayed)).status == 200
        assert (await client.get("/v1/webhooks/wh_x", headers=relayed)).status == 404
        assert (await client.get("/internal/v1/nothing/here", headers=auth())).status == 404
    finally:
        await client.close()

    def count(route: str, method: str, status_class: str, hop: str) -> float:
        labels = {"route": route, "method": method, "status_class": status_class, "hop": hop}
        return registry.get_sample_value("webhook_bridge_api_requests_total", labels) or 0.0

    assert count("/v1/webhooks", "GET", "2xx", "client") == 1
    assert count("/v1/webhooks", "GET", "2xx", "peer") == 1
    assert count("/v1/webhooks/{webhook_id}", "GET", "4xx", "peer") == 1
    assert count("unmatched", "other", "4xx", "peer") == 1
    assert count("unmatched", "other", "4xx", "client") == 0
    timed = {
        (s.labels["route"], s.labels["hop"]): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == "webhook_bridge_api_request_duration_seconds_count"
    }
    assert timed == {
        ("/v1/webhooks", "client"): 1,
        ("/v1/webhooks", "peer"): 1,
        ("/v1/webhooks/{webhook_id}", "peer"): 1,
        ("unmatched", "peer"): 1,
    }
