"""The httpx sender: the reference implementation and test oracle of the sender contract."""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import httpcore
import httpx

from bridge.delivery.job import Job
from bridge.http.base import ErrorTable, SenderBase
from bridge.http.dns import resolver_for
from bridge.http.guarded_transport import GuardedBackend, guarded_transport
from bridge.http.http1 import MAX_READS, MAX_RESPONSE, Answer
from bridge.http.ssrf import AddressPolicy, Resolver

__all__ = ["new_client", "HttpxSender"]


def new_client(
    timeout: float,
    max_connections: int,
    *,
    policy: AddressPolicy | None = None,
    ca_bundle: str | None = None,
    resolver: Resolver | None = None,
) -> httpx.AsyncClient:
    """The one shared client: keep-alive pooling, no redirects, TLS verification always on.

    Every connection goes through the SSRF guard (``policy``), which connects to the address it
    checked (names resolved by ``resolver``, by default a
    :func:`bridge.http.dns.resolver_for` ``timeout``); without a policy (unit tests only)
    nothing is checked. Every response is cut at
    :data:`bridge.http.http1.MAX_RESPONSE` bytes, counted on the wire (see :class:`HttpxSender`).
    """
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=30.0,
    )
    transport = guarded_transport(
        policy if policy is not None else AddressPolicy(enabled=False),
        verify=ca_bundle or True,
        limits=limits,
        resolver=resolver if resolver is not None else resolver_for(timeout),
    )
    _count_response_bytes(transport)
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        transport=transport,
        follow_redirects=False,
        trust_env=False,
    )
    # Only the documented headers (and Host, Content-Length), as Http1Sender sends: not httpx's
    # own Accept, Accept-Encoding, Connection and User-Agent.
    client.headers.clear()
    return client


class _CapReached(Exception):
    """A response needed more than :data:`~bridge.http.http1.MAX_RESPONSE` bytes, or more than
    :data:`~bridge.http.http1.MAX_READS` reads."""


class _CappedStream(httpcore.AsyncNetworkStream):
    """A connection whose reads stop after :data:`~bridge.http.http1.MAX_RESPONSE` bytes, or
    :data:`~bridge.http.http1.MAX_READS` reads, per request: every byte after the request counts
    (status lines, headers, chunk framing, trailers, body), as :mod:`bridge.http.http1` counts
    them. h11 never sees more; the read that would pass a cap raises :class:`_CapReached`
    instead (and httpcore closes the connection). Counting reads too: an endpoint dribbling its
    answer a byte at a time cost the worker a read, and h11 a parse, per byte for the whole
    timeout (until 2026-12-07; ~2.5 s of CPU a delivery)."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._left = MAX_RESPONSE
        self._reads_left = MAX_READS

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._left <= 0 or self._reads_left <= 0:
            raise _CapReached
        self._reads_left -= 1
        data = await self._inner.read(min(max_bytes, self._left), timeout)
        self._left -= len(data)
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # httpcore writes the whole request before it reads the response: the counts restart.
        self._left = MAX_RESPONSE
        self._reads_left = MAX_READS
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _CappedStream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _CappedBackend(httpcore.AsyncNetworkBackend):
    """Wraps every stream of ``inner`` in a :class:`_CappedStream`."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _CappedStream(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _CappedStream(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _count_response_bytes(transport: httpx.AsyncHTTPTransport) -> None:
    """Put :class:`_CappedBackend` around the network backend of ``transport``'s pool.

    httpx lets no network backend be passed; :func:`bridge.http.guarded_transport.guarded_transport`
    built the pool with its :class:`~bridge.http.guarded_transport.GuardedBackend`, kept by httpcore
    1.0 as ``_network_backend`` and handed to each new connection. Refuses to go on if that
    changed."""
    pool = transport._pool
    backend = getattr(pool, "_network_backend", None)
    if not isinstance(pool, httpcore.AsyncConnectionPool) or not isinstance(
        backend, GuardedBackend
    ):
        raise RuntimeError(
            "httpx/httpcore changed: the transport's pool has no GuardedBackend to wrap; "
            "the reference sender cannot cap responses"
        )
    pool._network_backend = _CappedBackend(backend)


#: What h11 accepts in a header value and llhttp, the hot path's parser, refuses: control
#: characters other than tab.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


#: The largest Content-Length llhttp reads (a 64-bit count).
_MAX_CONTENT_LENGTH = 2**64 - 1


def _refusal(response: httpx.Response) -> str | None:
    """Why a response head that h11 accepted is malformed all the same, or ``None``.

    llhttp refuses these and h11 does not; both senders must give the same outcome."""
    if response.http_version not in ("HTTP/1.1", "HTTP/1.0"):
        return "malformed status line"
    length = encoded = False
    for name, value in response.headers.raw:
        if _CONTROL.search(value):
            return "control character in a header value"
        name = name.lower()
        if name == b"content-length":
            if int(value) > _MAX_CONTENT_LENGTH:  # h11 has checked that it is digits
                return "Content-Length overflow"
            length = True
        elif name == b"transfer-encoding":
            encoded = True
    if length and encoded:
        return "both Content-Length and Transfer-Encoding"
    return None


async def _one(content: bytes) -> AsyncIterator[bytes]:
    """A body already read, as the one piece of a stream."""
    if content:
        yield content


class HttpxSender(SenderBase):
    """Posts deliveries with one shared ``httpx.AsyncClient``: the reference sender, and the
    hot path's test oracle (:class:`bridge.http.http1_sender.Http1Sender` behaves the same).

    The response is streamed and its body discarded as it arrives, never held: its bytes are
    counted, and only its first ``response_prefix`` bytes kept when asked for. With a client
    from :func:`new_client`, reads stop at :data:`bridge.http.http1.MAX_RESPONSE` bytes of the
    response, every byte counted: a response that needs more is a ``protocol_error`` if its
    head was not complete by then, else its status stands and the connection is closed. Heads
    that h11 accepts and llhttp refuses are refused here too (see :func:`_refusal`)."""

    _errors: ErrorTable = (
        (httpx.TimeoutException, "timeout"),
        (TimeoutError, "timeout"),
        # A failed TLS handshake is a ConnectError raised from the SSL error.
        (ssl.SSLError, "tls_error"),
        (httpx.ConnectError, "connect_error"),
        (httpx.ProtocolError, "protocol_error"),
        (httpx.NetworkError, "network_error"),
        (OSError, "network_error"),
        (httpx.HTTPError, "request_error"),
    )

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        timeout: float,
        any_2xx: bool = False,
        allow_http: bool = True,
        policy: AddressPolicy | None = None,
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
        self._client = client

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _post(self, job: Job, body: bytes, headers: dict[str, str]) -> Answer:
        # The client's timeout applies per phase; this one bounds the whole request, as the
        # documentation promises ("We will time out requests after 30 seconds").
        async with asyncio.timeout(self._timeout):
            try:
                async with self._client.stream(
                    "POST", job.webhook.url, content=body, headers=headers
                ) as response:
                    refusal = _refusal(response)
                    if refusal is not None:
                        raise httpx.RemoteProtocolError(refusal)
                    limit = self._response_prefix
                    read = 0
                    cut = False
                    prefix = b""
                    try:
                        # Raw: a body is never decoded (a response built in memory, as with
                        # httpx.MockTransport, has been read already and comes as one piece).
                        pieces = (
                            response.aiter_raw()
                            if not response.is_stream_consumed
                            else _one(response.content)
                        )
                        async for piece in pieces:
                            if read < limit:
                                prefix += piece[: limit - read]
                            read += len(piece)
                    except _CapReached:
                        cut = True  # the head was complete: the receiver answered
                    return (
                        response.status_code,
                        response.headers.get("Retry-After"),
                        read,
                        cut,
                        prefix if limit else None,
                    )
            except _CapReached:
                raise httpx.RemoteProtocolError(
                    f"response head longer than {MAX_RESPONSE} bytes or {MAX_READS} reads"
                ) from None
