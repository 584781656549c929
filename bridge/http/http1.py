"""A small HTTP/1.1 keep-alive client that does one thing: POST a body and read the status.

The worker's hot path (:class:`bridge.http.http1_sender.Http1Sender`) spends most of its time in the
HTTP client; general clients (httpx, aiohttp) build request objects, header multidicts, payload
wrappers and several timers per request. This client keeps, per URL, the request line and ``Host``
header as bytes, writes head and body in one ``write`` and arms one timer per request. Responses
are parsed by llhttp (Node's parser, through ``httptools``), never by code of ours; we only read
the status, ``Retry-After`` and what llhttp says about keeping the connection. What it promises:

* Every new connection goes to addresses from :func:`bridge.http.ssrf.checked_addresses` (IP
  literals
  and DNS answers checked against the policy before any socket exists), tried in order.
* TLS is verified against the URL's host name (SNI and certificate name), never the IP. It is
  done here (:class:`_Tls`, over :class:`ssl.MemoryBIO`), not by the event loop's TLS
  transport, so that every read of the socket counts against the limits below, handshake
  included; a closed connection sends its ``close_notify`` and waits for none.
* One deadline covers resolving, connecting, the TLS handshake, sending and reading the whole
  response; at the deadline the connection is aborted and :class:`TimeoutError` raised.
* Redirects are answers like any other (never followed); ``1xx`` interim answers are skipped
  (``101`` is a :class:`ProtocolError`: we never ask to switch protocols).
* One cap, :data:`MAX_RESPONSE` bytes, counts *every* byte received after the request is sent:
  status lines (interim ones too), headers, chunk sizes and extensions, trailers, body. A
  response that needs more ends there and its connection is closed: once the final status line
  and headers are complete, that status is the answer (the body is never needed); before, it is
  a :class:`ProtocolError`.
* The body is never decoded or kept: its bytes are counted as llhttp hands them over (after
  chunk framing, up to the cap), and only its first ``body_prefix`` bytes are copied when the
  client is told to keep them (0, the default, copies nothing).
* A response is complete when its framing says so (``Content-Length``, the last chunk, or, with
  neither, the server's clean close). A reset, or a close before the framing is complete, fails
  the exchange (``OSError``, :class:`ProtocolError`); so does anything llhttp refuses, and:
  ``Transfer-Encoding`` other than one ``chunked``, NUL, VT or FF in the reason phrase, a version
  other than HTTP/1.0 and HTTP/1.1, a status below 100 (h11, and so httpx, refuses these too).
  The connection of a failed exchange is closed.
* A connection is kept only after a complete exchange that llhttp says may keep alive, with no
  byte after it, and is reused only while no byte (nor the peer's close) waits in its socket:
  what an endpoint writes after its answer is never the next request's answer. (One written
  after the next request left cannot be told from that request's answer: HTTP/1.1 has no
  request ids. It is the same endpoint, and it is what an endpoint that answers twice gets.)
  A kept connection that turns out closed or reset before a single response byte
  (the server's keep-alive timeout racing our reuse) is replaced by a new one once: deliveries
  are idempotent by their delivery id.

Errors, all raised from :meth:`Http1Client.post`::

    HttpError
    ├── ConnectFailed      resolving or connecting failed (the cause is chained)
    └── ProtocolError      malformed, truncated, oversized or missing response
    TimeoutError           the deadline passed
    ssl.SSLError           the TLS handshake failed (certificate, name, protocol)
    OSError                the network failed after connecting (a reset, ...)
    DestinationForbidden   the SSRF guard refused the destination (nothing was connected)
"""

from __future__ import annotations

import asyncio
import re
import select
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from httptools import HttpResponseParser

from bridge.errors import InvalidUrl
from bridge.http.ssrf import AddressPolicy, Resolver, checked_addresses
from bridge.subscriptions.urls import WebhookUrl

__all__ = [
    "MAX_HANDSHAKE_READS",
    "MAX_HANDSHAKE_RECORDS",
    "MAX_IDLE_READS",
    "MAX_IDLE_RECORDS",
    "MAX_READS",
    "MAX_RESPONSE",
    "MAX_TLS_BYTES",
    "MAX_TLS_RECORDS",
    "TlsRecords",
    "Answer",
    "HttpError",
    "ConnectFailed",
    "ProtocolError",
    "Target",
    "target_of",
    "render_head",
    "open_connection",
    "Http1Client",
]

#: Bytes of one response read at most, everything after the request counted. Below h11's own
#: limit on an incomplete head or chunk line (100 KiB in httpcore), so that in the httpx
#: reference sender, which counts the same bytes, this cap is also what ends an endless line.
MAX_RESPONSE = 64 * 1024
#: Reads (``data_received`` calls) of one response at most: each costs the event loop ~10 us
#: whatever its size, so an endpoint sending its response a byte at a time within the deadline
#: cost 0.6-2 s of CPU per delivery (TLS, asyncio's loop), until 2026-12-05. A response usually
#: comes in one to three; 64 KiB in segments of 536 bytes takes 123. Past it, as past the cap
#: on bytes: a complete head stands (the rest is not read, the connection not kept); an
#: incomplete one is a protocol error. Over TLS the reads counted are the socket's, of
#: ciphertext (:class:`_Tls`): the event loops' TLS transports read and try to decrypt every
#: segment before the protocol sees a byte, so a response sent a byte at a time, its records
#: never complete, cost 0.6-1.3 s of CPU per delivery in 0 counted reads (until 2026-12-06).
MAX_READS = 128
#: Reads of the TLS handshake at most (a server's flight usually comes in one to four).
MAX_HANDSHAKE_READS = 32
#: Reads on a connection between two exchanges at most (a TLS 1.3 session ticket, the peer's
#: ``close_notify``): past it the connection is dropped.
MAX_IDLE_READS = 4
#: Bytes of TLS records read for one response at most, beside :data:`MAX_RESPONSE` of what
#: they decrypt to: records may carry nothing (padding, empty records, session tickets).
MAX_TLS_BYTES = 4 * MAX_RESPONSE
#: TLS records of one response at most, counted from their headers before any is decrypted:
#: each costs ~10-20 us however small (a KeyUpdate asking for one back, an empty record), and
#: 5,000 of them in one read cost a delivery 44-83 ms (until 2026-12-06). A 64 KiB response
#: needs 4 of 16 KiB, or 64 of 1 KiB from a server writing them small.
MAX_TLS_RECORDS = 256
#: TLS records of a handshake at most (its messages, a few records usually), and between two
#: exchanges (a session ticket or two, the peer's ``close_notify``).
MAX_HANDSHAKE_RECORDS = 64
MAX_IDLE_RECORDS = 8

_VERSIONS = ("1.1", "1.0")
#: What h11 refuses in a reason phrase and llhttp lets through.
_BAD_REASON = re.compile(rb"[\x00\x0b\x0c]")


#: What one exchange got back: ``(status, Retry-After, body bytes, cut, prefix)``: the final
#: status; the ``Retry-After`` header (repeated ones joined with ``, ``) or ``None``; the body
#: bytes read (after chunk framing, up to the cap on the whole response); whether the cap ended
#: the body before its framing did (the rest never read); the body's first bytes, as many as
#: the client keeps, or ``None`` when it keeps none. A plain tuple: one is built per attempt on
#: the hot path, where a named tuple costs a Python-level call.
Answer = tuple[int, str | None, int, bool, bytes | None]


class HttpError(Exception):
    """Base of this client's own errors."""


class ConnectFailed(HttpError):
    """No connection: the name did not resolve or no address accepted (the cause is chained)."""


class ProtocolError(HttpError):
    """The server's answer was malformed, truncated, oversized or missing."""

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
    """Parse an ``http``/``https`` webhook URL (``ValueError`` for anything else) as every
    other part of the bridge reads it (:meth:`~bridge.subscriptions.urls.WebhookUrl.parse`:
    the SSRF check, the endpoint's key): the request target is its normal form's, byte for
    byte, as the API stores and shows it. Until 2026-12-07 it was yarl's reading, which
    decoded escapes such as ``%2F`` in a signed query and resolved ``%2e%2e``."""
    try:
        parsed = WebhookUrl.parse(url)
    except InvalidUrl as refused:
        raise ValueError(f"not a usable http(s) URL: {refused}") from None
    # authority brackets IPv6 and leaves the scheme's default port out.
    prefix = f"POST {parsed.target} HTTP/1.1\r\nHost: {parsed.authority}\r\n".encode("ascii")
    return Target((parsed.scheme, parsed.host, parsed.port), prefix)


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
    factory: Callable[[], _Connection],
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
) -> _Connection:
    """Every socket the client opens is opened here (``host`` is a checked IP literal): a
    plain TCP connection, with TLS done by :class:`_Tls` over it (verified against
    ``server_hostname``), never by the event loop's own TLS transport."""
    if ssl_context is None:
        _transport, protocol = await loop.create_connection(factory, host, port)
        return protocol
    assert server_hostname is not None
    context, name = ssl_context, server_hostname
    _transport, tls = await loop.create_connection(
        lambda: _Tls(loop, context, name, factory()), host, port
    )
    try:
        await tls.handshake
    except BaseException:
        tls.abort()  # timed out, cancelled or refused: nothing is left open
        raise
    return tls.app


class TlsRecords:
    """Counts the TLS records a connection's reads start, from their 5-byte headers (which may
    span reads), before any is decrypted. Shared with the httpx reference sender."""

    def __init__(self) -> None:
        #: The record being read: its header's bytes so far, then how many of its body are due.
        self._header = b""
        self._body_due = 0

    def count(self, data: bytes) -> int:
        """How many records start in ``data``, the connection's next bytes."""
        count = 0
        at, size = 0, len(data)
        while at < size:
            if self._body_due:
                step = min(self._body_due, size - at)
                self._body_due -= step
                at += step
                continue
            need = 5 - len(self._header)
            self._header += data[at : at + need]
            at += need
            if len(self._header) == 5:
                self._body_due = int.from_bytes(self._header[3:5], "big")
                self._header = b""
                count += 1
        return count


class _Tls(asyncio.Protocol):
    """TLS over a plain TCP connection through :class:`ssl.MemoryBIO` s: the protocol of the
    socket, and the transport of the :class:`_Connection` above it (``app``).

    The event loops' TLS transports read every TCP segment and try to decrypt it before the
    protocol above them sees a byte, so no count of :meth:`_Connection.data_received` bounds
    what a peer sending a byte at a time costs. Here every read of the socket is counted, and
    the TLS records it starts (from their headers, before any is decrypted):
    :data:`MAX_HANDSHAKE_READS` and :data:`MAX_HANDSHAKE_RECORDS` during the handshake, then
    the exchange's :data:`MAX_READS`, :data:`MAX_TLS_BYTES` and :data:`MAX_TLS_RECORDS`
    (:meth:`_Connection.tls_read`), or between exchanges :data:`MAX_IDLE_READS` and
    :data:`MAX_IDLE_RECORDS`. What a read decrypted to is handed on before an error that
    followed it in the same read. A closed connection waits for nothing: the ``close_notify``
    is sent, the peer's never awaited."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        context: ssl.SSLContext,
        server_hostname: str,
        app: _Connection,
    ) -> None:
        self.app = app
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(
            self._incoming, self._outgoing, server_side=False, server_hostname=server_hostname
        )
        self._raw: asyncio.Transport | None = None
        self.handshake: asyncio.Future[None] = loop.create_future()
        self._handshake_reads = MAX_HANDSHAKE_READS
        self._handshake_records = MAX_HANDSHAKE_RECORDS
        self._records = TlsRecords()
        #: Why the connection was aborted (a TLS error), told to ``app`` as the loss's cause.
        self._error: Exception | None = None
        self._ended = False

    # -- the socket's protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = cast(asyncio.Transport, transport)
        self._shake()

    def data_received(self, data: bytes) -> None:
        if self._ended:
            return
        records = self._records.count(data)  # counted before any is decrypted
        self._incoming.write(data)
        if not self.handshake.done():
            self._handshake_reads -= 1
            self._handshake_records -= records
            if self._handshake_reads < 0 or self._handshake_records < 0:
                self._give_up(
                    ProtocolError(
                        f"TLS handshake in more than {MAX_HANDSHAKE_READS} reads or "
                        f"{MAX_HANDSHAKE_RECORDS} records"
                    )
                )
                return
            self._shake()
            if not self.handshake.done() or self.handshake.exception() is not None:
                return
            # The rest of this read (a session ticket, ...) is read below, as the exchange's.
            records = 0
        if not self.app.tls_read(len(data), records):
            return  # the read ended the exchange or the connection
        plain: list[bytes] = []
        ended = False
        failure: ssl.SSLError | None = None
        try:
            while True:
                chunk = self._ssl.read(65536)
                if not chunk:
                    ended = True  # a close without close_notify that the module reports so
                    break
                plain.append(chunk)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            ended = True  # the peer's close_notify
        except ssl.SSLError as exc:
            failure = exc
        self._flush()  # what reading made us answer (a key update)
        if plain:
            # Before a failure that followed it: a complete answer stands.
            self.app.data_received(b"".join(plain))
        if failure is not None:
            if not self._ended:
                self._give_up(failure)
            return
        if ended and not self._ended:
            self.app.eof_received()
            self.close()
            return
        self.app.after_tls_read()

    def eof_received(self) -> bool:
        if not self.handshake.done():
            self._give_up(ConnectionResetError("closed during the TLS handshake"))
            return False
        if not self._ended:
            self.app.eof_received()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended = True
        cause = exc if exc is not None else self._error
        if not self.handshake.done():
            self.handshake.set_exception(
                cause
                if cause is not None
                else ConnectionResetError("closed during the TLS handshake")
            )
            return
        self.app.connection_lost(cause)

    def pause_writing(self) -> None:
        self.app.pause_writing()

    def resume_writing(self) -> None:
        self.app.resume_writing()

    # -- the app's transport
    def write(self, data: bytes) -> None:
        if self._ended:
            return
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:
            self._give_up(exc)
            return
        self._flush()

    def get_write_buffer_size(self) -> int:
        raw = 0 if self._raw is None else self._raw.get_write_buffer_size()
        return raw + self._outgoing.pending

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._ssl
        return default if self._raw is None else self._raw.get_extra_info(name, default)

    def abort(self) -> None:
        self._ended = True
        if self._raw is not None:
            self._raw.abort()

    def close(self) -> None:
        if self._ended:
            return
        self._ended = True
        if self._raw is None:
            return
        if self.handshake.done() and self.handshake.exception() is None:
            try:
                self._ssl.unwrap()  # queues our close_notify; the peer's is not waited for
            except ssl.SSLError:
                pass
            self._flush()
        self._raw.close()

    # -- inside
    def _shake(self) -> None:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except ssl.SSLError as exc:
            self._flush()  # the alert telling the peer why
            self._give_up(exc)
            return
        self._flush()
        self.handshake.set_result(None)
        self.app.connection_made(self)  # type: ignore[arg-type]

    def _flush(self) -> None:
        pending = self._outgoing.pending
        if pending and self._raw is not None and not self._raw.is_closing():
            self._raw.write(self._outgoing.read(pending))

    def _give_up(self, exc: Exception) -> None:
        """Abort the connection: ``exc`` fails the handshake, or is the exchange's error."""
        if not self.handshake.done():
            self.handshake.set_exception(exc)
        self._error = exc
        if self._raw is not None:
            self._raw.abort()


class _PastTheEnd(Exception):
    """Stops the parser at a byte after the final response (raised from a callback)."""


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection carrying one exchange at a time; its responses parsed by
    llhttp, whose callbacks are the ``on_*`` methods."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        key: tuple[str, str, int],
        max_response: int,
        body_prefix: int = 0,
    ) -> None:
        self.loop = loop
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.on_lost: Callable[[_Connection], None] | None = None
        self._max_response = max_response
        self._prefix_limit = body_prefix
        self._parser = HttpResponseParser(self)
        # RFC 9112 allows whitespace before a chunk extension ("2 ;x=y"); h11 and aiohttp read
        # it too (aiohttp sets this leniency for responses).
        self._parser.set_dangerous_leniencies(lenient_spaces_after_chunk_size=True)
        self._waiter: asyncio.Future[Answer] | None = None
        # -- the exchange
        self._left = 0  # bytes of the cap not used yet
        self._reads_left = 0  # reads of MAX_READS not used yet
        self._tls = False  # reads are counted by the TLS layer (_Tls), of ciphertext
        #: The socket, polled by has_input (only while the connection is open).
        self._poll: select.poll | None = None
        self._tls_left = 0  # bytes of MAX_TLS_BYTES not used yet
        self._records_left = 0  # records of MAX_TLS_RECORDS not used yet
        self._idle_reads = 0  # reads since the last exchange ended
        self._idle_records = 0  # records since the last exchange ended
        self._received = False
        self._status = 0  # the final status, once its head is complete
        self._complete = False
        self._keep = True
        self._body_bytes = 0
        self._body_cut = False
        self._prefix = b""
        # -- the message (interim or final) being parsed
        self._in_head = False
        self._framed = False  # Content-Length or Transfer-Encoding: chunked
        self._chunked = False
        self._retry_after: str | None = None

    @property
    def received(self) -> bool:
        """Whether any byte of a response arrived in the current (or last) exchange."""
        return self._received

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self._tls = isinstance(transport, _Tls)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # poll, not select: select refuses descriptors past 1,023, and a worker with
            # many connections has them.
            self._poll = select.poll()
            self._poll.register(sock.fileno(), select.POLLIN)

    def tls_read(self, size: int, records: int) -> bool:
        """A read of ``size`` bytes of the socket under TLS, starting ``records`` records,
        before any is decrypted: counted against the exchange's :data:`MAX_READS`,
        :data:`MAX_TLS_BYTES` and :data:`MAX_TLS_RECORDS`, or between exchanges against
        :data:`MAX_IDLE_READS` and :data:`MAX_IDLE_RECORDS`. ``False`` when the exchange or
        the connection ended on it."""
        if self._waiter is None:
            self._idle_reads += 1
            self._idle_records += records
            if self._idle_reads > MAX_IDLE_READS or self._idle_records > MAX_IDLE_RECORDS:
                self.abort()
                return False
            return True
        self._reads_left -= 1
        self._tls_left -= size
        self._records_left -= records
        if self._tls_left < 0 or self._records_left < 0:
            self._past_a_limit(
                f"response in more than {MAX_TLS_BYTES} bytes or {MAX_TLS_RECORDS} TLS records"
            )
            return False
        return True

    def after_tls_read(self) -> None:
        """What a read under TLS decrypted to was handed on (if anything): the read that
        used the last of :data:`MAX_READS` ends a response still incomplete."""
        if self._waiter is not None and self._reads_left <= 0:
            self._past_a_limit(f"response head in more than {MAX_READS} reads")

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            # Bytes nobody asked for: the connection cannot be trusted with the next request.
            self.abort()
            return
        # Any byte, even one refused below: the exchange is not one to send again elsewhere.
        received, self._received = self._received, True
        if not received and data[:1] != b"H":
            # A response starts with its status line ("HTTP/"): an empty line or any other
            # byte before it is refused, as h11 (the reference sender) refuses it.
            self._fail(ProtocolError("response does not start with a status line"))
            return
        if not self._tls:
            self._reads_left -= 1
        left = self._left
        over = len(data) > left
        if over:
            data = data[:left]
        self._left = left - len(data)
        try:
            self._parser.feed_data(data)
        except Exception as exc:  # llhttp's errors, and whatever our callbacks raised
            if not self._complete:
                self._fail(_malformed(exc))
                return
            self._keep = False  # bytes past the final response
        if self._complete:
            if over:
                self._keep = False  # bytes past the response, cut at the cap unread
            self._done()
        elif over:
            self._past_a_limit(f"response head longer than {self._max_response} bytes")
        elif self._reads_left <= 0:
            self._past_a_limit(f"response head in more than {MAX_READS} reads")

    def _past_a_limit(self, detail: str) -> None:
        """The response passed a limit before it was complete: a complete final head stands
        (the receiver answered, and the rest is not needed, nor read); else ``detail``."""
        if self._status:
            self._keep = False
            self._body_cut = True
            self._done()
        else:
            self._fail(ProtocolError(detail))

    def eof_received(self) -> bool:
        self._ended(None)
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended(exc)
        if self.on_lost is not None:
            self.on_lost(self)

    # -- llhttp's callbacks ----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._complete:
            raise _PastTheEnd
        self._in_head = True
        self._framed = self._chunked = False
        self._retry_after = None
        # Bare LF line ends in the head, as h11 and aiohttp read them (not in chunk framing,
        # where h11 refuses them).
        self._parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)

    def on_status(self, reason: bytes) -> None:
        if _BAD_REASON.search(reason) is not None:
            raise ProtocolError("control character in the reason phrase")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer: not part of the answer
        name = name.lower()
        if name == b"transfer-encoding":
            # llhttp also reads other codings (gzip, chunked; identity ...), which h11 and
            # httpx refuse; we never need a body decoded.
            if self._chunked or value.strip(b" \t").lower() != b"chunked":
                raise ProtocolError("Transfer-Encoding other than one chunked")
            self._framed = self._chunked = True
        elif name == b"content-length":
            self._framed = True
        elif name == b"retry-after":
            text = value.rstrip(b" \t").decode("latin-1")
            if self._retry_after is not None:
                text = f"{self._retry_after}, {text}"  # repeated: joined, as httpx does
            self._retry_after = text

    def on_body(self, body: bytes) -> None:
        # Only the final response has a body (llhttp gives none to interim ones, and a second
        # response stops at on_message_begin). Counted always, copied only when asked for.
        count = self._body_bytes
        self._body_bytes = count + len(body)
        if count < self._prefix_limit:
            self._prefix += body[: self._prefix_limit - count]

    def on_headers_complete(self) -> None:
        parser = self._parser
        parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=False)
        self._in_head = False
        status = parser.get_status_code()
        if status < 100 or parser.get_http_version() not in _VERSIONS:
            raise ProtocolError("malformed status line")
        if status < 200:
            if status == 101:
                raise ProtocolError("unexpected protocol switch")
            return  # an interim answer: the real one follows
        self._status = status
        self._keep = parser.should_keep_alive()

    def on_message_complete(self) -> None:
        if self._status:
            self._complete = True

    # -- the exchange --------------------------------------------------------------------------
    def exchange(self, data: bytes) -> asyncio.Future[Answer]:
        """Send one request; the future gives the :data:`Answer` once the response is
        complete (or its final head is and the cap is reached), or fails with
        :class:`ProtocolError`, ``OSError`` or ``TimeoutError``."""
        assert self.transport is not None and self._waiter is None
        waiter: asyncio.Future[Answer] = self.loop.create_future()
        self._waiter = waiter
        self._left = self._max_response
        self._reads_left = MAX_READS
        self._tls_left = MAX_TLS_BYTES
        self._records_left = MAX_TLS_RECORDS
        self._idle_reads = self._idle_records = 0
        self._received = False
        self._status = 0
        self._complete = False
        self._keep = True
        self._body_bytes = 0
        self._body_cut = False
        self._prefix = b""
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

    def has_input(self) -> bool:
        """Whether the socket holds bytes (or the peer's close) not read yet: on a connection
        about to be reused, what no exchange asked for. The loop hands them to
        :meth:`data_received` only when it next polls; a request sent first would take them
        for its answer (a stray ``500`` an endpoint wrote after its answer was the next
        delivery's, until 2026-12-06)."""
        if self._poll is None:
            return False
        try:
            return bool(self._poll.poll(0))  # readable, or hung up
        except OSError:
            return True  # closed under us

    @property
    def unsent(self) -> int:
        """Bytes of the request still in the transport's buffer (not taken by the peer)."""
        return 0 if self.transport is None else self.transport.get_write_buffer_size()

    @property
    def keepable(self) -> bool:
        # A response that came before the peer took the whole request (it answered without
        # reading it) leaves the rest in our buffer: such a connection is not reused, or each
        # reuse would add another request to what the worker holds for that peer.
        return self._keep and not self.closed and self._waiter is None and self.unsent == 0

    def _ended(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is None:
            return
        if exc is None and self._status and not self._framed:
            # A body without a length ends with the connection: a clean close completes it
            # (a reset does not).
            self._keep = False
            self._done()
        elif isinstance(exc, OSError):
            self._fail(exc)
        elif not self._received:
            # Closed before a single byte of the response: for a kept-alive connection this is
            # the server's idle timeout racing our reuse (post() retries it once).
            failure = ProtocolError("connection closed without a response", nothing_received=True)
            failure.__cause__ = exc
            self._fail(failure)
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
        if waiter is not None and not waiter.done():
            waiter.set_result(
                (
                    self._status,
                    self._retry_after,
                    self._body_bytes,
                    self._body_cut,
                    self._prefix if self._prefix_limit else None,
                )
            )


def _closed_unanswered(exc: Exception) -> bool:
    """Whether ``exc`` is a connection's close or reset before any byte of an answer."""
    if isinstance(exc, ProtocolError):
        return exc.nothing_received
    return isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError)


def _malformed(exc: Exception) -> ProtocolError:
    """The :class:`ProtocolError` for an exception out of ``feed_data``: our own, raised in a
    callback (llhttp reports it as a callback error), or llhttp's, with its reason."""
    if isinstance(exc.__context__, ProtocolError):
        return exc.__context__
    failure = ProtocolError(f"malformed response: {exc}")
    failure.__cause__ = exc
    return failure


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
        max_response: int = MAX_RESPONSE,
        body_prefix: int = 0,
    ) -> None:
        self._policy = policy
        self._max_response = max_response
        #: Body bytes of each response to keep (the :data:`Answer`'s last item); 0 keeps none.
        self._body_prefix = body_prefix
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

    async def post(self, target: Target, data: bytes, timeout: float) -> Answer:
        """Send ``data`` (head and body) to ``target``; what came back."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = self._take(target.key, loop.time())
        if conn is not None:
            try:
                return await self._exchange(loop, conn, data, deadline)
            except TimeoutError:
                raise
            except (ProtocolError, OSError) as exc:
                # The server closed or reset a kept-alive connection as we reused it, before
                # answering: once more, on a new connection. Not after a limit or a TLS error
                # ended it, even with no byte of an answer (a record sent a byte at a time):
                # that is the endpoint's answer.
                if conn.received or not _closed_unanswered(exc):
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
    ) -> Answer:
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
        elif conn.unsent:
            conn.abort()  # a close would keep the rest of the request to flush to the peer
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
                        lambda: _Connection(
                            loop, target.key, self._max_response, self._body_prefix
                        ),
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
            if not conn.closed and now - conn.idle_since < self._expiry and not conn.has_input():
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
