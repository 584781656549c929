"""The API's Prometheus metrics: requests by route template, method and status class, latency,
how long requests were held through rebalances, and the requests still unwinding after their
timeout."""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bridge.api.problems import MAX_UNWINDING, PROBE_PATHS, Problem, route_template

__all__ = ["NOT_COUNTED", "ApiMetrics", "answered", "metrics_middleware"]

#: Seconds; an API answer is a table lookup or one partition read, well under the 10 s timeout.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Seconds a request is held through a rebalance: up to its hold (5 s).
_HELD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0)
#: Paths served beside the API on its port that are not API requests: the probes and the
#: scrape (:data:`~bridge.api.problems.PROBE_PATHS`). A worker not ready answers ``/readyz``
#: 503, which counted as the API's 5xx (and fired ``WebhookBridgeApiErrors``) until 2026-12-06.
NOT_COUNTED = PROBE_PATHS


class ApiMetrics:
    """Counts and times every request. Labels are bounded: the route's template
    (``/v1/webhooks/{webhook_id}``, never an id), ``unmatched`` for paths no route has, the
    method of a known route, and the status class."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "webhook_bridge_api_requests",
            "API requests answered, by route template, method and status class.",
            ("route", "method", "status_class"),
            registry=registry,
        )
        self.duration = Histogram(
            "webhook_bridge_api_request_duration_seconds",
            "Seconds from an API request's arrival to its answer, by route template.",
            ("route",),
            buckets=_BUCKETS,
            registry=registry,
        )

        self.held = Histogram(
            "webhook_bridge_api_held_seconds",
            "Seconds an API request waited for a webhook's owner while the workers' assignment "
            "settled, by how it ended: settled (answered as usual) or unavailable (503 at the "
            "end of its hold).",
            ("outcome",),
            buckets=_HELD_BUCKETS,
            registry=registry,
        )
        for outcome in ("settled", "unavailable"):
            self.held.labels(outcome)  # exported from the start, at 0: rates of no hold are 0
        self.unwinding = Gauge(
            "webhook_bridge_api_unwinding_requests",
            "API requests answered 503 at their timeout whose handlers still run (cancelled, "
            "waiting on a Kafka client against a broker that does not answer). At "
            f"{MAX_UNWINDING} new requests are refused (503) until they are down to half.",
            registry=registry,
        )

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, f"{status // 100}xx").inc()
        self.duration.labels(route).observe(seconds)


def _route(request: web.Request) -> tuple[str, str]:
    template = route_template(request)
    if template is None:
        return "unmatched", "other"
    return template, request.method


def metrics_middleware(
    metrics: ApiMetrics, clock: Callable[[], float] = time.perf_counter
) -> Middleware:
    """The outermost middleware: what the client got, after problems were made of errors."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in NOT_COUNTED:
            return await handler(request)
        started = clock()

        def seen(status: int) -> None:
            route, method = _route(request)
            metrics.observe(route, method, status, clock() - started)

        return await answered(request, handler, seen)

    return middleware


async def answered(
    request: web.Request, handler: Handler, seen: Callable[[int], None]
) -> web.StreamResponse:
    """``handler``'s answer to ``request``, ``seen`` told its status however it ends: an
    answer's, an HTTP exception's or a :class:`~bridge.api.problems.Problem`'s (both made
    answers further out), ``500`` for anything else."""
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except (web.HTTPException, Problem) as exc:
        status = exc.status
        raise
    finally:
        seen(status)
