"""Sending delivery attempts with aiohttp directly: the worker's hot path.

Measured on this project's benchmarks, httpx's client layer costs more per request than the rest
of a delivery (see BENCHMARKS.md), so the worker posts with aiohttp behind the same interface as
:class:`bridge.delivery.Sender`: same headers, same success rule, same whole-request timeout, no
redirects, TLS verification always on, and every connection through the SSRF guard
(:class:`bridge.ssrf.GuardedResolver`, plus :func:`bridge.ssrf.check_url` for IP literals).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime

import aiohttp

from .delivery import AttemptResult, Delivery, answered, build_headers, refused
from .events import format_timestamp
from .ssrf import (
    AddressPolicy,
    DestinationForbidden,
    GuardedResolver,
    Resolver,
    check_url,
    ssl_context,
)

__all__ = ["AiohttpSender"]


def _error_class(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return "tls_error"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect_error"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return "protocol_error"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "protocol_error"
    if isinstance(exc, aiohttp.ClientOSError | OSError):
        return "network_error"
    return "request_error"


class AiohttpSender:
    """Posts deliveries with one shared ``aiohttp.ClientSession`` (keep-alive pooling)."""

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
        # The same trust as the httpx sender: certifi's bundle, or the CA file or directory.
        self._ssl = ssl_context(ca_bundle or True)
        self._resolver = resolver
        self._limits = (max_connections, max_connections_per_endpoint)
        self._session: aiohttp.ClientSession | None = None
        #: check_url's verdict per URL (it depends only on the URL and fixed settings).
        self._checked: dict[str, DestinationForbidden | None] = {}

    def _open(self) -> aiohttp.ClientSession:
        # Created lazily: a session belongs to the running event loop.
        if self._session is None:
            limit, per_host = self._limits
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(self._policy, resolver=self._resolver),
                limit=limit,
                limit_per_host=per_host,
                ssl=self._ssl,
                keepalive_timeout=30.0,
                ttl_dns_cache=10,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                auto_decompress=True,
                trust_env=False,
                # Only the documented headers, plus what HTTP/1.1 needs.
                skip_auto_headers=("Accept", "Accept-Encoding"),
            )
        return self._session

    def _check(self, url: str) -> None:
        if url not in self._checked:
            if len(self._checked) > 50_000:
                self._checked.clear()
            try:
                check_url(url, allow_http=self._allow_http, policy=self._policy)
                self._checked[url] = None
            except DestinationForbidden as exc:
                self._checked[url] = exc
        refusal = self._checked[url]
        if refusal is not None:
            raise refusal

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, delivery: Delivery) -> AttemptResult:
        """One attempt; never raises for what the endpoint or the network does."""
        now = self._wall_clock()
        at = format_timestamp(now)
        started = self._clock()
        try:
            self._check(delivery.webhook.url)
            headers = build_headers(delivery, now)
            # The session's total timeout bounds the request; this one also covers reading the
            # body ("We will time out requests after 30 seconds").
            async with asyncio.timeout(self._timeout):
                async with self._open().post(
                    delivery.webhook.url,
                    data=delivery.body,
                    headers=headers,
                    allow_redirects=False,
                ) as response:
                    await response.read()
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
        except DestinationForbidden as exc:
            return refused(exc, duration=self._clock() - started, at=at)
        except (aiohttp.ClientError, TimeoutError, OSError, ssl.SSLError, ValueError) as exc:
            return AttemptResult(False, None, _error_class(exc), self._clock() - started, at)
        return answered(
            status,
            retry_after,
            duration=self._clock() - started,
            at=at,
            wall_clock=self._wall_clock,
            any_2xx=self._any_2xx,
        )
