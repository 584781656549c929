"""Sending delivery attempts with aiohttp directly (``http_client=aiohttp``).

The worker's default is :class:`bridge.http1_sender.Http1Sender`, about twice as fast (see
BENCHMARKS.md); this one posts with aiohttp behind the same interface
(:class:`bridge.delivery.SenderBase`): same headers, same success rule, same whole-request
timeout, no redirects, TLS verification always on, and every connection through the SSRF guard
(:class:`bridge.ssrf.GuardedResolver`, plus :func:`bridge.ssrf.check_url` for IP literals).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime

import aiohttp

from .delivery import Delivery, SenderBase
from .ssrf import AddressPolicy, GuardedResolver, Resolver, ssl_context

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


class AiohttpSender(SenderBase):
    """Posts deliveries with one shared ``aiohttp.ClientSession`` (keep-alive pooling)."""

    _failures = (aiohttp.ClientError, TimeoutError, OSError, ssl.SSLError, ValueError)

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
        super().__init__(
            timeout=timeout,
            any_2xx=any_2xx,
            allow_http=allow_http,
            policy=policy,
            clock=clock,
            wall_clock=wall_clock,
        )
        # The same trust as the httpx sender: certifi's bundle, or the CA file or directory.
        self._ssl = ssl_context(ca_bundle or True)
        # aiohttp connects to whatever its resolver returns: only addresses the policy allows.
        self._resolver = GuardedResolver(policy, resolver=resolver)
        self._limits = (max_connections, max_connections_per_endpoint)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Created lazily: a session belongs to the running event loop.
        if self._session is None:
            limit, per_host = self._limits
            connector = aiohttp.TCPConnector(
                resolver=self._resolver,
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

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _post(self, delivery: Delivery, headers: dict[str, str]) -> tuple[int, str | None]:
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
                return response.status, response.headers.get("Retry-After")

    _error_class = staticmethod(_error_class)
