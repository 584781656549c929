"""bridge.api.metrics: every answer counted by route template, method and status class, timed."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from bridge.api.app import create_app
from bridge.api.auth import TokenSet
from bridge.api.metrics import ApiMetrics
from bridge.api.service import WebhookService
from tests.unit.api.conftest import (
    MemoryRepository as Repository,
)
from tests.unit.api.conftest import (
    Published,
    auth,
    control_service,
)


async def test_requests_are_counted_by_template_never_by_id(tokens: TokenSet) -> None:
    registry = CollectorRegistry()
    repository = Repository()
    service = WebhookService(repository, publisher=Published())
    app = create_app(service, control_service(repository), tokens, metrics=ApiMetrics(registry))
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
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
            {"route": route, "method": method, "status_class": status_class},
        )

    assert count("/v1/webhooks/{webhook_id}", "GET", "4xx") == 2
    assert count("unmatched", "other", "4xx") == 2
    assert count("/v1/openapi.json", "GET", "2xx") == 1
    exported = "\n".join(f"{s.name}{s.labels}" for m in registry.collect() for s in m.samples)
    assert "wh_secret_id" not in exported and "no/such" not in exported
    observed = registry.get_sample_value(
        "webhook_bridge_api_request_duration_seconds_count", {"route": "/v1/webhooks/{webhook_id}"}
    )
    assert observed == 2
