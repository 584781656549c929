"""The API's Prometheus metrics: requests by route template, method, status class and hop,
latency, how long requests were held through rebalances, and the requests still unwinding after
their timeout."""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bridge.api.problems import MAX_UNWINDING, PROBE_PATHS, Problem, route_template

__all__ = [
    "HOPS",
    "NOT_COUNTED",
    "PEER_ROUTES",
    "RELAYED_BY",
    "ApiMetrics",
    "answered",
    "hop_of",
    "metrics_middleware",
]

#: Seconds; an API answer is a table lookup or one partition read, well under the 10 s timeout.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Seconds a request is held through a rebalance: up to its hold (5 s).
_HELD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0)
#: Paths served beside the API on its port that are not API requests: the probes and the
#: scrape (:data:`~bridge.api.problems.PROBE_PATHS`). A worker not ready answers ``/readyz``
#: 503, which counted as the API's 5xx (and fired ``WebhookBridgeApiErrors``) until 2026-12-06.
NOT_COUNTED = PROBE_PATHS
#: The header of a change a worker relays to its webhook's owner: the relaying worker's URL
#: (:mod:`bridge.worker.api`, which sends it and never relays such a change again).
RELAYED_BY = "X-Bridge-Relayed-By"
#: The prefix of the routes workers read each other's delivery logs through (a routed read).
PEER_ROUTES = "/internal/"
#: The values of the ``hop`` label: ``client``, a request as a client sent it to the worker
#: that answered it; ``peer``, one a worker sent another on a client's behalf (a change relayed
#: to its webhook's owner, a log read routed to its owner), whose answer the first worker
#: answers its client with, and counts there too.
HOPS = ("client", "peer")


class ApiMetrics:
    """Counts and times every request. Labels are bounded: the route's template
    (``/v1/webhooks/{webhook_id}``, never an id), ``unmatched`` for paths no route has, the
    method of a known route, the status class, and the hop (:func:`hop_of`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "webhook_bridge_api_requests",
            "API requests answered, by route template, method, status class and hop: client "
            "(as a client sent it), peer (a change relayed to its webhook's owner or a log read "
            "routed to its owner, answered to the worker that counted it as client; or a "
            "request claiming to be one).",
            ("route", "method", "status_class", "hop"),
            registry=registry,
        )
        self.duration = Histogram(
            "webhook_bridge_api_request_duration_seconds",
            "Seconds from an API request's arrival to its answer, by route template and hop "
            "(client, peer: as for webhook_bridge_api_requests_total).",
            ("route", "hop"),
            buckets=_BUCKETS,
            registry=registry,
        )

        self.held = Histogram(
            "webhook_bridge_api_held_seconds",
            "Seconds an API request waited for a webhook's owner while the workers' assignment "
            "settled, by how it ended: settled (answered as usual) or unavailable (503 at the "
            "end of its hold), and hop (client, peer: as for webhook_bridge_api_requests_total).",
            ("outcome", "hop"),
            buckets=_HELD_BUCKETS,
            registry=registry,
        )
        for outcome in ("settled", "unavailable"):
            for one in HOPS:
                # Exported from the start, at 0: rates of no hold are 0.
                self.held.labels(outcome, one)
        self.unwinding = Gauge(
            "webhook_bridge_api_unwinding_requests",
            "API requests answered 503 at their timeout whose handlers still run (cancelled, "
            "waiting on a Kafka client against a broker that does not answer). At "
            f"{MAX_UNWINDING} new requests are refused (503) until they are down to half.",
            registry=registry,
        )

    def observe(self, route: str, method: str, status: int, seconds: float, hop: str) -> None:
        self.requests.labels(route, method, f"{status // 100}xx", hop).inc()
        self.duration.labels(route, hop).observe(seconds)


def hop_of(request: web.Request) -> str:
    """``peer`` for a request one worker sent another (a route under :data:`PEER_ROUTES`, or one
    carrying :data:`RELAYED_BY`), else ``client``.

    Both workers count such a request: the one the client asked (``client``, with the status the
    client got, the owner's relayed back) and the one that answered it (``peer``). Until
    2026-12-07 both counted it alike, so the API's answers summed over workers counted a relayed
    change, and an owner's ``503``, twice, and WebhookBridgeApiErrors could fire on fewer
    ``5xx`` than its threshold. The header is not trusted (the owner checks the client's token,
    which a relayed or routed request carries, as for any other): a client sending it has its
    requests counted ``peer``, where they stay visible, and never relayed."""
    if request.path.startswith(PEER_ROUTES) or RELAYED_BY in request.headers:
        return "peer"
    return "client"


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
            metrics.observe(route, method, status, clock() - started, hop_of(request))

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
