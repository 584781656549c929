"""Sending delivery attempts with :mod:`bridge.http.http1`: the worker's hot path.

Same interface and behaviour as :class:`bridge.http.httpx_sender.HttpxSender` (httpx, the
reference): the documented headers from :func:`bridge.http.base.build_headers`, the same success
rule, one whole-request timeout, no redirects, TLS always verified, every URL through
:func:`bridge.http.ssrf.check_url` and every connection through the SSRF guard, the same cap on what
is read of a response and the same outcome for every malformed one
(tests/unit/http/test_sender_contract.py). It differs in cost only (see BENCHMARKS.md).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime

from bridge.delivery.job import Job
from bridge.http.base import ErrorTable, SenderBase
from bridge.http.dns import resolver_for
from bridge.http.http1 import (
    Answer,
    ConnectFailed,
    Http1Client,
    ProtocolError,
    render_head,
    target_of,
)
from bridge.http.ssrf import AddressPolicy, Resolver
from bridge.http.tls import ssl_context
from bridge.memo import remembered

__all__ = ["Http1Sender"]


#: The parsed target of each URL (the URL has passed the SSRF check first).
_target_of = remembered(target_of)


class Http1Sender(SenderBase):
    """Posts deliveries over pooled keep-alive HTTP/1.1 connections (:class:`Http1Client`)."""

    _errors: ErrorTable = (
        (TimeoutError, "timeout"),
        (ssl.SSLError, "tls_error"),  # certificate errors too
        (ConnectFailed, "connect_error"),
        (ProtocolError, "protocol_error"),
        (OSError, "network_error"),
        # render_head refusing a header value that could split the head.
        (ValueError, "request_error"),
    )

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
        response_prefix: int = 0,
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
            response_prefix=response_prefix,
        )
        self._client = Http1Client(
            policy=policy,
            # The same trust as the other senders: certifi's bundle, or the CA file or directory.
            ssl_context=ssl_context(ca_bundle or True),
            resolver=resolver if resolver is not None else resolver_for(timeout),
            max_idle=max_connections,
            max_idle_per_endpoint=max_connections_per_endpoint,
            body_prefix=response_prefix,
        )

    @property
    def open_connections(self) -> int:
        return self._client.open_connections

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _post(self, job: Job, body: bytes, headers: dict[str, str]) -> Answer:
        target = _target_of(job.webhook.url)
        head = render_head(target, headers, len(body))
        return await self._client.post(target, head + body, self._timeout)
