"""Sending delivery attempts with :mod:`bridge.http1`: the worker's hot path.

Same interface and behaviour as :class:`bridge.delivery.Sender` (httpx) and
:class:`bridge.aiohttp_sender.AiohttpSender`: the documented headers from
:func:`bridge.delivery.build_headers`, the same success rule, one whole-request timeout, no
redirects, TLS always verified, every URL through :func:`bridge.ssrf.check_url` and every
connection through the SSRF guard. It differs in cost only (see BENCHMARKS.md).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime

from .delivery import AttemptResult, Delivery, answered, build_headers, refused
from .events import format_timestamp
from .http1 import (
    ConnectFailed,
    Http1Client,
    HttpError,
    ProtocolError,
    Target,
    render_head,
    target_of,
)
from .ssrf import AddressPolicy, DestinationForbidden, Resolver, check_url, ssl_context

__all__ = ["Http1Sender"]

#: URLs whose verdict (a Target or a refusal) is remembered; cleared when full.
_TARGETS_CACHED = 50_000


class Http1Sender:
    """Posts deliveries over pooled keep-alive HTTP/1.1 connections (:class:`Http1Client`)."""

    def __init__(
        self,
        *,
        timeout: float,
        max_connections: int,
        max_connections_per_endpoint: int,
        policy: AddressPolicy,
        allow_http: bool,
        any_2xx: bool = False,
        ca_bundle: str | None = None,
        resolver: Resolver | None = None,
        clock: Callable[[], float] = time.perf_counter,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._timeout = timeout
        self._policy = policy
        self._allow_http = allow_http
        self._any_2xx = any_2xx
        self._clock = clock
        self._wall_clock = wall_clock
        self._client = Http1Client(
            policy=policy,
            # The same trust as the other senders: certifi's bundle, or the CA file or directory.
            ssl_context=ssl_context(ca_bundle or True),
            resolver=resolver,
            max_idle=max_connections,
            max_idle_per_endpoint=max_connections_per_endpoint,
        )
        #: check_url's verdict and the parsed target per URL (both depend only on the URL).
        self._targets: dict[str, Target | DestinationForbidden] = {}

    @property
    def open_connections(self) -> int:
        return self._client.open_connections

    def _target(self, url: str) -> Target:
        verdict = self._targets.get(url)
        if verdict is None:
            if len(self._targets) >= _TARGETS_CACHED:
                self._targets.clear()
            try:
                check_url(url, allow_http=self._allow_http, policy=self._policy)
                verdict = target_of(url)
            except DestinationForbidden as exc:
                verdict = exc
            self._targets[url] = verdict
        if isinstance(verdict, DestinationForbidden):
            raise verdict
        return verdict

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, delivery: Delivery) -> AttemptResult:
        """One attempt; never raises for what the endpoint or the network does."""
        now = self._wall_clock()
        at = format_timestamp(now)
        started = self._clock()
        try:
            target = self._target(delivery.webhook.url)
            body = delivery.body
            head = render_head(target, build_headers(delivery, now), len(body))
            status, retry_after = await self._client.post(target, head + body, self._timeout)
        except DestinationForbidden as exc:
            return refused(exc, duration=self._clock() - started, at=at)
        except (HttpError, TimeoutError, OSError, ValueError) as exc:
            return AttemptResult(False, None, _error_class(exc), self._clock() - started, at)
        return answered(
            status,
            retry_after,
            duration=self._clock() - started,
            at=at,
            wall_clock=self._wall_clock,
            any_2xx=self._any_2xx,
        )


def _error_class(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return "tls_error"
    if isinstance(exc, ConnectFailed):
        return "connect_error"
    if isinstance(exc, ProtocolError):
        return "protocol_error"
    if isinstance(exc, OSError):
        return "network_error"
    return "request_error"
