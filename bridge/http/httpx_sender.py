"""The httpx sender: the reference implementation and test oracle of the sender contract."""

from __future__ import annotations

import asyncio
import re
import select
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.abc
import httpcore
import httpx
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSAttribute, TLSStream

from bridge.delivery.job import Job
from bridge.http.base import ErrorTable, SenderBase
from bridge.http.dns import resolver_for
from bridge.http.guarded_transport import guarded_transport
from bridge.http.http1 import (
    MAX_HANDSHAKE_READS,
    MAX_HANDSHAKE_RECORDS,
    MAX_READS,
    MAX_RESPONSE,
    MAX_TLS_BYTES,
    MAX_TLS_RECORDS,
    Answer,
    TlsRecords,
)
from bridge.http.ssrf import AddressPolicy, Resolver
from bridge.subscriptions.urls import WebhookUrl

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
    :data:`bridge.http.http1.MAX_RESPONSE` bytes, counted on the wire (see :class:`HttpxSender`),
    and every connection's reads of its socket (beneath TLS, the handshake's too) are held to
    the limits of :mod:`bridge.http.http1` (:class:`_Wire`).
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
        inner=_WireBackend(),
    )
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
    """A response, or a TLS handshake, passed one of :mod:`bridge.http.http1`'s limits (the
    message says which)."""


class _Wire(anyio.abc.ByteStream):
    """One connection's socket, every read of it counted before anything is decrypted, with
    :mod:`bridge.http.http1`'s limits (there :class:`~bridge.http.http1._Tls`): for each
    response :data:`~bridge.http.http1.MAX_READS` reads and, under TLS,
    :data:`~bridge.http.http1.MAX_TLS_BYTES` bytes and :data:`~bridge.http.http1.MAX_TLS_RECORDS`
    records; for a TLS handshake :data:`~bridge.http.http1.MAX_HANDSHAKE_READS` reads and
    :data:`~bridge.http.http1.MAX_HANDSHAKE_RECORDS` records. The read past one raises
    :class:`_CapReached` (its bytes never reach TLS). The counts restart when a request is
    sent (:meth:`exchange`, called by :class:`_Stream`), never at a write of TLS's own (its
    handshake, an answer to a key update).

    Beneath TLS, for that is where the cost is: anyio's TLS reads the socket and tries to
    decrypt until a record is complete, so an endpoint sending its TLS a byte a segment cost
    a read per byte, never counted by a stream above TLS, for the whole timeout (1.3-1.6 s of
    CPU a delivery), and 20,000 session tickets were decrypted in one response's reads
    (until 2026-12-07)."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._stream = stream
        self._records = TlsRecords()
        self._tls = False
        self._reads_left = MAX_READS
        self._bytes_left: int | None = None  # None: not counted (a handshake)
        self._records_left = MAX_TLS_RECORDS
        self._too_many_reads = self._too_much = f"response head in more than {MAX_READS} reads"

    def handshake(self) -> None:
        """A TLS handshake starts: its limits (then, at :meth:`exchange`, the responses')."""
        self._tls = True
        self._reads_left = MAX_HANDSHAKE_READS
        self._bytes_left = None
        self._records_left = MAX_HANDSHAKE_RECORDS
        self._too_many_reads = self._too_much = (
            f"TLS handshake in more than {MAX_HANDSHAKE_READS} reads or "
            f"{MAX_HANDSHAKE_RECORDS} records"
        )

    def exchange(self) -> None:
        """A request is being sent: the next response's counts start."""
        self._reads_left = MAX_READS
        self._bytes_left = MAX_TLS_BYTES
        self._records_left = MAX_TLS_RECORDS
        self._too_many_reads = f"response head in more than {MAX_READS} reads"
        self._too_much = (
            f"response in more than {MAX_TLS_BYTES} bytes or {MAX_TLS_RECORDS} TLS records"
        )

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._reads_left <= 0:
            raise _CapReached(self._too_many_reads)
        data = await self._stream.receive(max_bytes)
        self._reads_left -= 1
        if self._tls:
            self._records_left -= self._records.count(data)
            if self._bytes_left is not None:
                self._bytes_left -= len(data)
            if self._records_left < 0 or (self._bytes_left is not None and self._bytes_left < 0):
                raise _CapReached(self._too_much)
        return data

    async def send(self, item: bytes) -> None:
        await self._stream.send(item)

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._stream.extra_attributes


class _Stream(httpcore.AsyncNetworkStream):
    """httpcore's view of a connection (as ``httpcore.AnyIOStream``, over a :class:`_Wire`, or
    over TLS over it), whose reads also stop after :data:`~bridge.http.http1.MAX_RESPONSE`
    bytes per request: every byte after the request counts (status lines, headers, chunk
    framing, trailers, body), as :mod:`bridge.http.http1` counts them. h11 never sees more;
    the read that would pass the cap raises :class:`_CapReached` instead (and httpcore closes
    the connection)."""

    def __init__(self, stream: anyio.abc.ByteStream, wire: _Wire) -> None:
        self._stream = stream
        self._wire = wire
        self._left = MAX_RESPONSE

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._left <= 0:
            raise _CapReached(f"response head longer than {MAX_RESPONSE} bytes")
        try:
            with anyio.fail_after(timeout):
                data = await self._stream.receive(min(max_bytes, self._left))
        except anyio.EndOfStream:
            return b""
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(str(exc)) from exc
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise httpcore.ReadError(str(exc)) from exc
        self._left -= len(data)
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # httpcore writes the whole request before it reads the response: the counts restart.
        self._left = MAX_RESPONSE
        self._wire.exchange()
        if not buffer:
            return
        try:
            with anyio.fail_after(timeout):
                await self._stream.send(buffer)
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc)) from exc
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise httpcore.WriteError(str(exc)) from exc

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self._wire.handshake()
        try:
            with anyio.fail_after(timeout):
                tls = await TLSStream.wrap(
                    self._stream,
                    ssl_context=ssl_context,
                    hostname=server_hostname,
                    standard_compatible=False,  # as httpcore: no close_notify awaited
                    server_side=False,
                )
        except BaseException as exc:
            await anyio.aclose_forcefully(self._stream)
            if isinstance(exc, TimeoutError):
                raise httpcore.ConnectTimeout(str(exc)) from exc
            if isinstance(exc, anyio.BrokenResourceError | anyio.EndOfStream | ssl.SSLError):
                raise httpcore.ConnectError(str(exc)) from exc
            raise
        return _Stream(tls, self._wire)

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._stream.extra(TLSAttribute.ssl_object, None)
        if info == "client_addr":
            return self._stream.extra(SocketAttribute.local_address, None)
        if info == "server_addr":
            return self._stream.extra(SocketAttribute.remote_address, None)
        if info == "socket":
            return self._stream.extra(SocketAttribute.raw_socket, None)
        if info == "is_readable":
            sock = self._stream.extra(SocketAttribute.raw_socket, None)
            return sock is not None and _readable(sock)
        return None


def _readable(sock: socket.socket) -> bool:
    """Whether ``sock`` holds bytes, or the peer's close, not read yet (the pool then drops a
    kept connection rather than reuse it)."""
    fd = sock.fileno()
    if fd == -1:
        return True  # closed
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    try:
        return bool(poller.poll(0))
    except OSError:
        return True


class _WireBackend(httpcore.AsyncNetworkBackend):
    """Opens connections as ``httpcore.AnyIOBackend`` does, each as a :class:`_Stream` over a
    :class:`_Wire`: the network backend beneath the SSRF guard of :func:`new_client`."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):
                stream = await anyio.connect_tcp(host, port, local_host=local_address)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except (OSError, anyio.BrokenResourceError) as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        # anyio's sockets have TCP_NODELAY already.
        for option in socket_options or ():
            stream.extra(SocketAttribute.raw_socket).setsockopt(*option)
        wire = _Wire(stream)
        return _Stream(wire, wire)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not opened here")

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


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
    head was not complete by then, else its status stands and the connection is closed. So
    are responses past :mod:`bridge.http.http1`'s limits on reads of the socket, TLS bytes and
    records, and a TLS handshake past its own (``protocol_error``). Heads that h11 accepts and
    llhttp refuses are refused here too (see :func:`_refusal`)."""

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
                # The URL's normal form: its host as the SSRF check read it (127.1. is
                # 127.0.0.1, not a name to look up), its target as the API stores it; and
                # its Host header, which httpx would otherwise make by decoding an xn-- name
                # whole (raising for a later label IDNA 2008 refuses, my_svc).
                parsed = WebhookUrl.parse(job.webhook.url)
                async with self._client.stream(
                    "POST",
                    parsed.url,
                    content=body,
                    headers={"Host": parsed.authority, **headers},
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
            except _CapReached as exc:
                detail = str(exc)
        # Raised here, out of the handler: a limit met inside TLS's read carries the
        # SSLWantReadError TLS was handling as its context, which classify would take for a
        # TLS failure.
        raise httpx.RemoteProtocolError(detail)
