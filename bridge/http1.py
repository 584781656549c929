"""A small HTTP/1.1 keep-alive client that does one thing: POST a body and read the status.

The worker's hot path (:class:`bridge.http1_sender.Http1Sender`) spends most of its time in the
HTTP client; general clients (httpx, aiohttp) build request objects, header multidicts, payload
wrappers and several timers per request. This client keeps, per URL, the request line and ``Host``
header as bytes, writes head and body in one ``write``, parses only what decides the outcome
(status, ``Content-Length``, ``Transfer-Encoding``, ``Connection``, ``Retry-After``) and arms one
timer per request. What it promises:

* Every new connection goes to addresses from :func:`bridge.ssrf.checked_addresses` (IP literals
  and DNS answers checked against the policy before any socket exists), tried in order.
* TLS is verified against the URL's host name (SNI and certificate name), never the IP.
* One deadline covers resolving, connecting, the TLS handshake, sending and reading the whole
  response; at the deadline the connection is aborted and :class:`TimeoutError` raised.
* Redirects are answers like any other (never followed); ``1xx`` interim answers are skipped.
* A response body is read and discarded, up to :data:`MAX_DRAIN` bytes; a longer body ends the
  exchange at that point and the connection is closed instead of kept.
* A connection is kept only after a complete, well-formed HTTP/1.1 exchange without
  ``Connection: close``. A kept connection that turns out closed before a single response byte
  (the server's keep-alive timeout racing our reuse) is replaced by a new one once: deliveries are
  idempotent by their delivery id.

Errors, all raised from :meth:`Http1Client.post`::

    HttpError
    ├── ConnectFailed      resolving or connecting failed (the cause is chained)
    └── ProtocolError      malformed, truncated or missing response
    TimeoutError           the deadline passed
    ssl.SSLError           the TLS handshake failed (certificate, name, protocol)
    OSError                the network failed after connecting
    DestinationForbidden   the SSRF guard refused the destination (nothing was connected)
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from yarl import URL

from .ssrf import AddressPolicy, Resolver, checked_addresses

__all__ = [
    "MAX_HEAD",
    "MAX_DRAIN",
    "HttpError",
    "ConnectFailed",
    "ProtocolError",
    "Target",
    "target_of",
    "render_head",
    "open_connection",
    "Http1Client",
]

#: Largest response head (status line and headers) accepted.
MAX_HEAD = 64 * 1024
#: Response body bytes read to keep a connection; beyond it the connection is dropped instead.
MAX_DRAIN = 1024 * 1024
_MAX_LINE = 8 * 1024

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_CLOSE, _DONE = range(8)


class HttpError(Exception):
    """Base of this client's own errors."""


class ConnectFailed(HttpError):
    """No connection: the name did not resolve or no address accepted (the cause is chained)."""


class ProtocolError(HttpError):
    """The server's answer was malformed, truncated or missing."""

    def __init__(self, detail: str, *, nothing_received: bool = False) -> None:
        super().__init__(detail)
        #: True when the connection ended before a single byte of the response.
        self.nothing_received = nothing_received


@dataclass(frozen=True, slots=True)
class Target:
    """Where one URL's requests go, with their first bytes prepared."""

    #: (scheme, host, port); connections are pooled per key. The host is the one to resolve
    #: and to verify TLS against (IDNA-encoded, IPv6 without brackets).
    key: tuple[str, str, int]
    #: ``POST <path?query> HTTP/1.1`` and the ``Host`` header, CRLF-terminated.
    prefix: bytes

    @property
    def host(self) -> str:
        return self.key[1]

    @property
    def port(self) -> int:
        return self.key[2]

    @property
    def tls(self) -> bool:
        return self.key[0] == "https"


def target_of(url: str) -> Target:
    """Parse an ``http``/``https`` URL (``ValueError`` for anything else)."""
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parsed.port
    assert port is not None  # yarl knows the default ports of http and https
    path = parsed.raw_path_qs or "/"
    # host_port_subcomponent brackets IPv6 and leaves the scheme's default port out.
    host_header = parsed.host_port_subcomponent
    prefix = f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\n".encode("ascii")
    return Target((parsed.scheme, parsed.raw_host, port), prefix)


def render_head(target: Target, headers: dict[str, str], content_length: int) -> bytes:
    """The request head: ``target``'s prefix, ``headers`` in their order, ``Content-Length``.

    ``ValueError`` if a name or value could split the head (CR, LF) or is not Latin-1."""
    lines = [f"{name}: {value}\r\n" for name, value in headers.items()]
    text = "".join(lines)
    if text.count("\n") != len(lines) or text.count("\r") != len(lines):
        raise ValueError("a header name or value contains CR or LF")
    return b"%b%bContent-Length: %d\r\n\r\n" % (
        target.prefix,
        text.encode("latin-1"),
        content_length,
    )


async def open_connection(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], asyncio.Protocol],
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
) -> asyncio.Protocol:
    """Every socket the client opens is opened here (``host`` is a checked IP literal)."""
    _transport, protocol = await loop.create_connection(
        factory, host, port, ssl=ssl_context, server_hostname=server_hostname
    )
    return protocol


def _content_length(value: bytes) -> int:
    value = value.strip()
    if not value.isdigit():
        raise ProtocolError("malformed Content-Length")
    return int(value)


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection carrying one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, key: tuple[str, str, int]) -> None:
        self.loop = loop
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.on_lost: Callable[[_Connection], None] | None = None
        self._waiter: asyncio.Future[tuple[int, str | None]] | None = None
        self._buf = bytearray()
        self._state = _DONE
        self._received = False
        self._status = 0
        self._retry_after: str | None = None
        self._keep = True
        self._remaining = 0
        self._drained = 0

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            # Bytes nobody asked for: the connection cannot be trusted with the next request.
            self.abort()
            return
        self._received = True
        self._buf += data
        try:
            self._advance()
        except ProtocolError as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        self._ended(None)
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended(exc)
        if self.on_lost is not None:
            self.on_lost(self)

    # -- the exchange --------------------------------------------------------------------------
    def exchange(self, data: bytes) -> asyncio.Future[tuple[int, str | None]]:
        """Send one request; the future gives ``(status, Retry-After)`` once the response is
        complete, or fails with :class:`ProtocolError`, ``OSError`` or ``TimeoutError``."""
        assert self.transport is not None and self._waiter is None
        waiter: asyncio.Future[tuple[int, str | None]] = self.loop.create_future()
        self._waiter = waiter
        self._state = _HEAD
        self._received = False
        self._keep = True
        self._retry_after = None
        self._drained = 0
        self._buf.clear()
        self.transport.write(data)
        return waiter

    def expire(self) -> None:
        """The deadline passed: fail the exchange and drop the connection."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError())
        self._waiter = None
        self.abort()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    @property
    def keepable(self) -> bool:
        return self._keep and not self.closed and self._waiter is None

    def _ended(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is None:
            return
        if self._state == _UNTIL_CLOSE:
            self._keep = False
            self._done()
        elif not self._received:
            # Closed or reset before a single byte of the response: for a kept-alive connection
            # this is the server's idle timeout racing our reuse (post() retries it once).
            failure = ProtocolError("connection closed without a response", nothing_received=True)
            failure.__cause__ = exc
            self._fail(failure)
        elif isinstance(exc, OSError):
            self._fail(exc)
        else:
            self._fail(ProtocolError("connection closed before the response ended"))

    def _fail(self, exc: BaseException) -> None:
        waiter = self._waiter
        self._waiter = None
        self._keep = False
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.abort()

    def _done(self) -> None:
        waiter = self._waiter
        self._waiter = None
        self._state = _DONE
        if self._buf:  # bytes past the response: not a connection to reuse
            self._keep = False
        if waiter is not None and not waiter.done():
            waiter.set_result((self._status, self._retry_after))

    def _advance(self) -> None:
        buf = self._buf
        while self._waiter is not None:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0 or end > MAX_HEAD:
                    if len(buf) > MAX_HEAD:
                        raise ProtocolError("response head too large")
                    return
                head = bytes(buf[:end])
                del buf[: end + 4]
                self._head(head)
            elif state == _LENGTH:
                if len(buf) < self._remaining:
                    self._remaining -= len(buf)
                    buf.clear()
                    return
                del buf[: self._remaining]
                self._done()
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > _MAX_LINE:
                        raise ProtocolError("chunk size line too long")
                    return
                size_text = bytes(buf[:end]).split(b";", 1)[0].strip()
                del buf[: end + 2]
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise ProtocolError("malformed chunk size") from None
                if size < 0 or size_text[:1] in (b"+", b"-") or b"_" in size_text:
                    raise ProtocolError("malformed chunk size")
                self._drained += size
                if self._drained > MAX_DRAIN:
                    self._keep = False
                    self._done()
                elif size == 0:
                    self._state = _TRAILER
                else:
                    self._remaining = size
                    self._state = _CHUNK_DATA
            elif state == _CHUNK_DATA:
                if len(buf) < self._remaining:
                    self._remaining -= len(buf)
                    buf.clear()
                    return
                del buf[: self._remaining]
                self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise ProtocolError("chunk not followed by CRLF")
                del buf[:2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILER:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise ProtocolError("trailer too large")
                    return
                del buf[: end + 2]
                if end == 0:
                    self._done()
            elif state == _UNTIL_CLOSE:
                self._drained += len(buf)
                buf.clear()
                if self._drained > MAX_DRAIN:
                    self._done()
                return
            else:
                return

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        line = lines[0]
        if (
            line[:5] != b"HTTP/"
            or line[5:8] not in (b"1.1", b"1.0")
            or line[8:9] != b" "
            or not line[9:12].isdigit()
            or line[12:13] not in (b"", b" ")
        ):
            raise ProtocolError("malformed status line")
        status = int(line[9:12])
        if status < 100:
            raise ProtocolError("malformed status line")
        keep = line[5:8] == b"1.1"
        length: int | None = None
        chunked = False
        encoded = False
        retry_after: str | None = None
        for header in lines[1:]:
            name, sep, value = header.partition(b":")
            if not sep or not name or name != name.strip():
                raise ProtocolError("malformed header line")
            name = name.lower()
            if name == b"content-length":
                declared = _content_length(value)
                if length is not None and declared != length:
                    raise ProtocolError("conflicting Content-Length headers")
                length = declared
            elif name == b"transfer-encoding":
                encoded = True
                chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
            elif name == b"connection":
                if b"close" in value.lower():
                    keep = False
            elif name == b"retry-after":
                retry_after = value.strip().decode("latin-1")
        if status < 200:
            if status == 101:
                raise ProtocolError("unexpected protocol switch")
            return  # an interim answer: the real one follows
        self._status = status
        self._retry_after = retry_after
        self._keep = keep
        if status in (204, 304):
            self._done()
        elif encoded:
            if chunked:
                self._state = _CHUNK_SIZE
            else:
                self._keep = False
                self._state = _UNTIL_CLOSE
        elif length is not None:
            if length > MAX_DRAIN:
                self._keep = False
                self._done()
            elif length == 0:
                self._done()
            else:
                self._remaining = length
                self._state = _LENGTH
        else:
            self._keep = False
            self._state = _UNTIL_CLOSE


class Http1Client:
    """Pooled keep-alive connections per (scheme, host, port); see the module docstring."""

    def __init__(
        self,
        *,
        policy: AddressPolicy,
        ssl_context: ssl.SSLContext,
        resolver: Resolver | None = None,
        max_idle: int = 100,
        max_idle_per_endpoint: int = 10,
        keepalive_expiry: float = 30.0,
    ) -> None:
        self._policy = policy
        self._ssl = ssl_context
        self._resolver = resolver
        self._max_idle = max_idle
        self._max_idle_per_endpoint = max_idle_per_endpoint
        self._expiry = keepalive_expiry
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._idle_count = 0
        self._open: set[_Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def post(self, target: Target, data: bytes, timeout: float) -> tuple[int, str | None]:
        """Send ``data`` (head and body) to ``target``; ``(status, Retry-After)``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = self._take(target.key, loop.time())
        if conn is not None:
            try:
                return await self._exchange(loop, conn, data, deadline)
            except ProtocolError as exc:
                # The server closed a kept-alive connection as we reused it: once more, fresh.
                if not exc.nothing_received:
                    raise
        conn = await self._connect(loop, target, deadline)
        return await self._exchange(loop, conn, data, deadline)

    async def aclose(self) -> None:
        """Close every connection (in use or idle); the client stays usable."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()
        self._idle_count = 0

    async def _exchange(
        self,
        loop: asyncio.AbstractEventLoop,
        conn: _Connection,
        data: bytes,
        deadline: float,
    ) -> tuple[int, str | None]:
        waiter = conn.exchange(data)
        timer = loop.call_at(deadline, conn.expire)
        try:
            answer = await waiter
        except BaseException:
            conn.abort()  # cancelled, timed out or failed: its state is unknown
            raise
        finally:
            timer.cancel()
        if conn.keepable:
            self._put(conn, loop.time())
        else:
            conn.close()
        return answer

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, target: Target, deadline: float
    ) -> _Connection:
        context = self._ssl if target.tls else None
        hostname = target.host if target.tls else None
        async with asyncio.timeout_at(deadline):
            try:
                addresses = await checked_addresses(
                    self._policy, target.host, target.port, resolver=self._resolver
                )
            except OSError as exc:
                raise ConnectFailed(f"cannot resolve {target.host}: {exc}") from exc
            failure: OSError | None = None
            for ip in addresses:
                try:
                    protocol = await open_connection(
                        loop,
                        lambda: _Connection(loop, target.key),
                        str(ip),
                        target.port,
                        ssl_context=context,
                        server_hostname=hostname,
                    )
                except ssl.SSLError:
                    raise
                except OSError as exc:
                    failure = exc
                    continue
                assert isinstance(protocol, _Connection)
                protocol.on_lost = self._lost
                self._open.add(protocol)
                return protocol
        raise ConnectFailed(f"cannot connect to {target.host}:{target.port}: {failure}") from (
            failure
        )

    def _lost(self, conn: _Connection) -> None:
        self._open.discard(conn)

    def _take(self, key: tuple[str, str, int], now: float) -> _Connection | None:
        stack = self._idle.get(key)
        while stack:
            conn = stack.pop()
            self._idle_count -= 1
            if not conn.closed and now - conn.idle_since < self._expiry:
                return conn
            conn.close()
        return None

    def _put(self, conn: _Connection, now: float) -> None:
        stack = self._idle.get(conn.key)
        if stack is None:
            stack = self._idle[conn.key] = []
        if len(stack) >= self._max_idle_per_endpoint or self._idle_count >= self._max_idle:
            conn.close()
            return
        conn.idle_since = now
        stack.append(conn)
        self._idle_count += 1
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self._expiry, self._sweep)

    def _sweep(self) -> None:
        """Close idle connections unused for ``keepalive_expiry`` (servers rarely say when)."""
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        for key, stack in list(self._idle.items()):
            keep: list[_Connection] = []
            for conn in stack:
                if not conn.closed and now - conn.idle_since < self._expiry:
                    keep.append(conn)
                else:
                    conn.close()
            self._idle_count -= len(stack) - len(keep)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        if self._idle_count:
            self._sweeper = asyncio.get_running_loop().call_later(self._expiry, self._sweep)
