"""Sending one delivery attempt over HTTP and classifying what came back."""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import httpcore
import httpx

from bridge.contract import standard_webhooks
from bridge.contract.events import Event, format_timestamp
from bridge.contract.signing import sign
from bridge.delivery.retry_policy import parse_retry_after
from bridge.http.http1 import MAX_RESPONSE
from bridge.http.ssrf import (
    AddressPolicy,
    DestinationForbidden,
    GuardedBackend,
    Resolver,
    check_url,
    guarded_transport,
)
from bridge.subscriptions.webhook import Webhook

__all__ = [
    "USER_AGENT",
    "Delivery",
    "AttemptResult",
    "ErrorTable",
    "Sender",
    "SenderBase",
    "classify",
    "DeliverySender",
    "build_headers",
    "is_success",
    "status_class",
    "new_client",
]

#: The documented spelling.
USER_AGENT = "Position-Webhooks/1.0"


@dataclass(frozen=True)
class Delivery:
    """One event for one webhook, ready to send."""

    delivery_id: str
    webhook: Webhook = field(repr=False)
    event_id: str
    event_type: str
    #: The exact body bytes; the signature is computed over these at send time.
    body: bytes = field(repr=False)
    #: When the event happened (its ``timestamp``), for end-to-end latency.
    occurred_at: datetime | None = None
    #: The event itself, for dead letters.
    event: Event | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class AttemptResult:
    """What one HTTP attempt produced. Contains no secret and no body."""

    #: True when the response counts as an acknowledgement.
    success: bool
    #: HTTP status, or ``None`` when no response arrived.
    status: int | None
    #: Error class when no response arrived or it did not count: ``timeout``, ``connect_error``,
    #: ``tls_error``, ``protocol_error``, ``redirect``, ``http_status``; ``None`` on success.
    error: str | None
    #: Seconds from sending to the end of the response (or the failure).
    duration: float
    #: When the attempt started (UTC, ``Z``).
    at: str
    #: Seconds a ``Retry-After`` header asked for (429 and 503 answers), if any; for a
    #: ``circuit_open`` skip, the seconds until the circuit lets a probe through.
    retry_after: float | None = None
    #: For ``destination_forbidden``: why (``loopback``, ``private``, ``plain_http`` ...).
    refusal: str | None = None

    def as_record(self) -> dict[str, object]:
        return {
            "at": self.at,
            "status": self.status,
            "error": self.error,
            "duration_seconds": round(self.duration, 6),
        }


class DeliverySender(Protocol):
    """What sends one attempt: :class:`Sender` (httpx) or ``Http1Sender`` (the hot path)."""

    async def send(self, delivery: Delivery) -> AttemptResult: ...

    async def aclose(self) -> None: ...


def is_success(status: int, *, any_2xx: bool = False) -> bool:
    """Only 200 acknowledges a delivery, unless the operator widened it to any 2xx."""
    return status == 200 or (any_2xx and 200 <= status < 300)


def status_class(status: int | None) -> str:
    """``2xx`` … ``5xx``, or ``none`` when no response arrived (a bounded metric label)."""
    if status is None:
        return "none"
    if 100 <= status < 600:
        return f"{status // 100}xx"
    return "other"


def build_headers(delivery: Delivery, now: datetime | None = None) -> dict[str, str]:
    """The documented headers, signed with the webhook's current secret; for webhooks that opted
    in, the Standard Webhooks headers too (both secrets during a rotation overlap)."""
    headers = {
        "Content-Type": "application/json",
        "X-Webhook-Signature": sign(delivery.webhook.secret, delivery.body),
        "X-Webhook-Event": delivery.event_type,
        "X-Webhook-Delivery": delivery.delivery_id,
        "User-Agent": USER_AGENT,
    }
    if delivery.webhook.standard_webhooks:
        moment = now or datetime.now(UTC)
        headers.update(
            standard_webhooks.headers(
                delivery.delivery_id,
                int(moment.timestamp()),
                delivery.body,
                delivery.webhook.signing_secrets(moment),
            )
        )
    return headers


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
    checked (names resolved by ``resolver``, the system's by default); without a policy (unit
    tests only) nothing is checked. Every response is cut at
    :data:`bridge.http.http1.MAX_RESPONSE` bytes, counted on the wire (see :class:`Sender`).
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
        resolver=resolver,
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
    """A response needed more than :data:`~bridge.http.http1.MAX_RESPONSE` bytes."""


class _CappedStream(httpcore.AsyncNetworkStream):
    """A connection whose reads stop after :data:`~bridge.http.http1.MAX_RESPONSE` bytes per
    request: every byte after the request counts (status lines, headers, chunk framing, trailers,
    body), as :mod:`bridge.http.http1` counts them. h11 never sees more; the read that would pass
    the cap raises :class:`_CapReached` instead (and httpcore closes the connection)."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._left = MAX_RESPONSE

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._left <= 0:
            raise _CapReached
        data = await self._inner.read(min(max_bytes, self._left), timeout)
        self._left -= len(data)
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # httpcore writes the whole request before it reads the response: the count restarts.
        self._left = MAX_RESPONSE
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

    httpx lets no network backend be passed; :func:`bridge.http.ssrf.guarded_transport` built the
    pool with its :class:`~bridge.http.ssrf.GuardedBackend`, kept by httpcore 1.0 as
    ``_network_backend`` and handed to each new connection. Refuses to go on if that changed."""
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


#: How a sender's failures are classed: ``(exception type, error class)`` pairs; the first
#: that the exception, or one it was raised from or while handling, is an instance of gives
#: the class. (httpx raises its error from httpcore's, which httpcore's pool re-raises
#: ``from None`` while handling the ``ssl`` or ``OSError`` one: the chain is followed through
#: ``__context__`` even when a traceback would hide it.)
ErrorTable = tuple[tuple[type[BaseException], str], ...]


def classify(exc: BaseException, table: ErrorTable) -> str | None:
    """The error class ``table`` gives ``exc``, or ``None`` when it names no failure."""
    chain = [exc]
    while len(chain) < 8:
        last = chain[-1]
        link = last.__cause__ or last.__context__
        if link is None:
            break
        chain.append(link)
    for kind, error in table:
        if any(isinstance(link, kind) for link in chain):
            return error
    return None


class SenderBase:
    """What every sender shares: the attempt's clocks, the SSRF check of the URL (its verdict
    remembered per URL), the documented headers, and turning what came back into an
    :class:`AttemptResult`. A sender implements ``_post`` (send, return the status and the
    ``Retry-After`` header) and ``aclose``, and declares in ``_errors`` the exceptions that mean
    the endpoint or the network failed, with their error class."""

    #: An attempt's failures, not bugs, by error class (read by :func:`classify` in ``send``);
    #: any other exception propagates.
    _errors: ErrorTable = ((TimeoutError, "timeout"), (OSError, "network_error"))
    #: URLs whose verdict is remembered; cleared when full.
    _CHECKED_URLS = 50_000

    def __init__(
        self,
        *,
        timeout: float,
        any_2xx: bool,
        allow_http: bool,
        policy: AddressPolicy | None,
        clock: Callable[[], float],
        wall_clock: Callable[[], datetime],
    ) -> None:
        self._timeout = timeout
        self._any_2xx = any_2xx
        self._allow_http = allow_http
        self._policy = policy
        self._clock = clock
        self._wall_clock = wall_clock
        #: check_url's verdict per URL (it depends only on the URL and fixed settings).
        self._checked: dict[str, DestinationForbidden | None] = {}

    def _check(self, url: str) -> None:
        if url not in self._checked:
            if len(self._checked) >= self._CHECKED_URLS:
                self._checked.clear()
            try:
                check_url(url, allow_http=self._allow_http, policy=self._policy)
                self._checked[url] = None
            except DestinationForbidden as exc:
                self._checked[url] = exc
        refusal = self._checked[url]
        if refusal is not None:
            raise refusal

    async def _post(self, delivery: Delivery, headers: dict[str, str]) -> tuple[int, str | None]:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def send(self, delivery: Delivery) -> AttemptResult:
        """One attempt; never raises for what the endpoint or the network does."""
        now = self._wall_clock()
        at = format_timestamp(now)
        started = self._clock()
        try:
            self._check(delivery.webhook.url)
            status, retry_after = await self._post(delivery, build_headers(delivery, now))
        except DestinationForbidden as exc:
            return refused(exc, duration=self._clock() - started, at=at)
        except Exception as exc:
            error = classify(exc, self._errors)
            if error is None:
                raise
            return AttemptResult(False, None, error, self._clock() - started, at)
        return answered(
            status,
            retry_after,
            duration=self._clock() - started,
            at=at,
            wall_clock=self._wall_clock,
            any_2xx=self._any_2xx,
        )


class Sender(SenderBase):
    """Posts deliveries with one shared ``httpx.AsyncClient``: the reference sender, and the
    hot path's test oracle (:class:`bridge.http.http1_sender.Http1Sender` behaves the same).

    The response is streamed and its body discarded as it arrives, never held. With a client
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
        self._client = client

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _post(self, delivery: Delivery, headers: dict[str, str]) -> tuple[int, str | None]:
        # The client's timeout applies per phase; this one bounds the whole request, as the
        # documentation promises ("We will time out requests after 30 seconds").
        async with asyncio.timeout(self._timeout):
            try:
                async with self._client.stream(
                    "POST", delivery.webhook.url, content=delivery.body, headers=headers
                ) as response:
                    refusal = _refusal(response)
                    if refusal is not None:
                        raise httpx.RemoteProtocolError(refusal)
                    try:
                        # Raw: a body is never decoded (a response built in memory, as with
                        # httpx.MockTransport, has been read already).
                        if not response.is_stream_consumed:
                            async for _ in response.aiter_raw():
                                pass
                    except _CapReached:
                        pass  # the head was complete: the receiver answered
                    return response.status_code, response.headers.get("Retry-After")
            except _CapReached:
                raise httpx.RemoteProtocolError(
                    f"response head longer than {MAX_RESPONSE} bytes"
                ) from None


def answered(
    status: int,
    retry_after_header: str | None,
    *,
    duration: float,
    at: str,
    wall_clock: Callable[[], datetime],
    any_2xx: bool,
) -> AttemptResult:
    """The result of an attempt that got a response (shared by every sender). ``wall_clock``
    is read only to turn a ``Retry-After`` date into seconds."""
    if is_success(status, any_2xx=any_2xx):
        return AttemptResult(True, status, None, duration, at)
    error = "redirect" if 300 <= status < 400 else "http_status"
    retry_after = (
        parse_retry_after(retry_after_header, wall_clock()) if status in (429, 503) else None
    )
    return AttemptResult(False, status, error, duration, at, retry_after)


def refused(exc: DestinationForbidden, *, duration: float, at: str) -> AttemptResult:
    """The result of an attempt the SSRF guard refused before connecting."""
    return AttemptResult(
        False, None, "destination_forbidden", duration, at, refusal=exc.classification
    )
