"""The worker's own HTTP server: ``/healthz``, ``/readyz`` and ``/metrics``, and ``/v1`` when
the worker serves the API.

It runs beside Faust (whose web server only starts after table recovery), so liveness answers
from the first second and readiness can say "recovering".
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web, web_protocol
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from bridge.metrics import ConnectionMetrics

__all__ = [
    "MAX_REQUEST_LINE",
    "MAX_HEADER_LINE",
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "MAX_CONNECTIONS",
    "HEADERS_TIMEOUT",
    "KEEPALIVE_TIMEOUT",
    "RUNNER_OPTIONS",
    "READINESS",
    "HeadersTooLarge",
    "WebServer",
    "app_runner",
]

#: Longest request line (method, target, version) and header line the server reads (aiohttp's
#: default is 8190 bytes for both). Beyond them aiohttp answers ``400`` in plain text before any
#: route or middleware sees the request; below them ``/v1`` judges the request itself and names
#: what is wrong in a problem (a cursor of 2,000 characters, percent-encoded, is up to 18 KB).
#: A header line is at most 16 KiB, and a request has at most :data:`MAX_HEADERS` of them: a
#: request's headers are held as they arrive, and until 2026-12-07 128 lines of 64 KiB let one
#: connection hold 16 MiB.
MAX_REQUEST_LINE = 64 * 1024
MAX_HEADER_LINE = 16 * 1024
MAX_HEADERS = 64
#: Bytes of a request's header lines together (names, values, their separators and line
#: ends), whatever their number and lengths; beyond, the request is answered ``431`` and its
#: connection closed, as soon as that many have arrived (whole or not). aiohttp's parser holds
#: each header twice as it arrives (its bytes and their text): until 2026-12-07 the bound was
#: 64 lines of 16 KiB, and a connection sending them and never the blank line held ~1.9 MB.
MAX_HEADER_BYTES = 64 * 1024
#: Connections a server holds at most. A connection beyond it takes the place of the one
#: waiting longest (idle, its headers arriving, or its answer being written: ``shed``), so a
#: client that sends its request at once, as the kubelet's probes and Prometheus do, is
#: answered however many connections others hold open; only when every one of them is answering
#: a request (a route running) is it answered ``503`` and closed (``refused``). Each holds at
#: most a request line and :data:`MAX_HEADER_BYTES` of headers (~0.2 MB at worst; 512 each
#: sending 64 KiB of headers, never whole, add 47 MB), so 512 stay well within the worker's
#: memory limit (768 MiB); the probes need no room of their own, which a flood would take as
#: well (they cannot be told apart before their request arrives). Until 2026-12-07 there was
#: no bound, and 200 connections sending 62 header lines of 16 KiB, never whole, took a worker
#: from 150 to 529 MB for 75 s.
MAX_CONNECTIONS = 512
#: Seconds a request's headers have, whole, from the opening of its connection for the first
#: and from its first bytes for a later one on a kept connection. aiohttp waits for them as
#: long as it keeps an idle connection (an hour by default, until 2026-12-07: a client sending a
#: header line a minute held its connection and what it had sent that long; until 2026-12-07
#: too, only a connection's first request had this deadline, and a second one's headers were
#: waited for the 75 s of an idle connection).
HEADERS_TIMEOUT = 10.0
#: Seconds an idle connection is kept (and a later request's first bytes are waited for):
#: longer than the 60 s a proxy in front (nginx's upstream keep-alive) keeps one, so that the
#: proxy, not the worker, ends an idle connection.
KEEPALIVE_TIMEOUT = 75.0

#: What the connections' bounds read and write of aiohttp's request handler (it has no public
#: way to tell): fail here, at import, rather than let a bound go unenforced.
_HANDLER_SLOTS = (
    "_request_count",
    "_messages",
    "_waiter",
    "_request_handler",
    "_buffer_paused",
    "_force_close",
    "_close",
)
if not set(_HANDLER_SLOTS) <= {
    slot for cls in web_protocol.RequestHandler.__mro__ for slot in getattr(cls, "__slots__", ())
}:
    raise ImportError(f"aiohttp's RequestHandler no longer has all of {_HANDLER_SLOTS}")
if not hasattr(web_protocol, "_ErrInfo"):
    raise ImportError("aiohttp's RequestHandler no longer answers a refusal (_ErrInfo)")


#: How the bridge's servers read requests: no access log, the request and header line limits
#: above, and request bodies as sent (no ``Content-Encoding`` undone: ``/v1`` refuses an encoded
#: body with ``415``; decoded by aiohttp, a body that was not what its header said raised out of
#: the route, a ``500``, and out of aiohttp's draining of a body no route read, an error logged
#: with its traceback for any client, until 2026-12-06). Tests serve the API with them too.
RUNNER_OPTIONS: dict[str, Any] = {
    "access_log": None,
    "max_line_size": MAX_REQUEST_LINE,
    "max_field_size": MAX_HEADER_LINE,
    "max_headers": MAX_HEADERS,
    "keepalive_timeout": KEEPALIVE_TIMEOUT,
    "auto_decompress": False,
}


class HeadersTooLarge(HttpProcessingError):
    """A request's headers past :data:`MAX_HEADER_BYTES` (logged as any request the parser
    refuses: one INFO line naming this class, nothing of the request)."""

    def __init__(self) -> None:
        super().__init__(code=431, message="Request Header Fields Too Large")


_BUSY_TEXT = b"Too many connections open"
#: What a busy server answers a connection beyond its bound before closing it.
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s"
) % (len(_BUSY_TEXT), _BUSY_TEXT)


class _Refused(asyncio.Protocol):
    """A connection beyond the server's bound while every one it holds answers a request:
    answered :data:`_BUSY` and closed, without a parser or a task."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).write(_BUSY)
        transport.close()


class _Connection(web_protocol.RequestHandler):
    """aiohttp's request handler with each request's headers bounded in time
    (:data:`HEADERS_TIMEOUT`) and size (:data:`MAX_HEADER_BYTES`), and telling its server
    while a route answers one of its requests (it is then not shed)."""

    __slots__ = ("_server", "_route", "_deadline", "_body", "_carry", "_started", "_lined", "_size")

    def __init__(self, server: _Server, **options: Any) -> None:
        super().__init__(server, **options)
        self._server = server
        assert self._request_handler is not None
        self._route = self._request_handler
        self._request_handler = self._answer
        #: The deadline of the request whose headers are awaited, if any.
        self._deadline: asyncio.TimerHandle | None = None
        #: The body of the last request whose headers were whole (until it is read whole,
        #: what arrives is that body's, not a next request's).
        self._body: StreamReader = EMPTY_PAYLOAD
        #: The last two bytes of the request whose headers are arriving (for a blank line
        #: split between two reads), whether anything but blank lines came, whether its
        #: request line ended, and the bytes of its headers since.
        self._carry = b""
        self._started = False
        self._lined = False
        self._size = 0

    async def _answer(self, request: web.BaseRequest) -> web.StreamResponse:
        self._server._busy(self)
        try:
            return await self._route(request)
        finally:
            self._server._waiting(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._force_close:  # shed before it was made
            transport.abort() if isinstance(transport, asyncio.Transport) else transport.close()
            return
        self._arm()  # the first request's headers: from the opening

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self._loop.call_later(HEADERS_TIMEOUT, self._late)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _late(self) -> None:
        self._deadline = None
        if not (self._force_close or self._close):
            self._server._dropped("headers_timeout")
            self.force_close()

    def data_received(self, data: bytes) -> None:
        if not data:  # aiohttp parsing what it held while its queue of requests was full
            self._parse(data)
        while data and not (self._force_close or self._close):
            if not self._body.is_eof():
                # A body: handed over whole, with whatever follows it (a next request's first
                # bytes are then counted from its next read).
                self._parse(data)
                return
            self._arm()
            # The request's line and headers, up to their blank line: parsed apart from what
            # follows, so that the next request's bytes are counted from its first.
            end = _blank_line_end(self._carry, data)
            piece, data = (data, b"") if end < 0 else (data[:end], data[end:])
            if not self._parse(piece):
                self._carry = (self._carry + piece)[-2:]
                self._count(piece)

    def _parse(self, data: bytes) -> bool:
        """Parses ``data`` as aiohttp does; whether a request's headers were whole in it."""
        before = self._request_count
        super().data_received(data)
        whole = self._request_count - before
        if whole <= 0:
            return False
        self._disarm()
        self._carry, self._started, self._lined, self._size = b"", False, False, 0
        messages = self._messages
        for at in range(len(messages) - whole, len(messages)):
            message, body = messages[at]
            if isinstance(message, RawRequestMessage):
                size = sum(len(name) + len(value) + 4 for name, value in message.raw_headers)
                if size > MAX_HEADER_BYTES:
                    for _ in range(len(messages) - at):
                        messages.pop()
                    self._refuse()
                    return True
            self._body = body
        return True

    def _count(self, piece: bytes) -> None:
        """Counts the bytes of headers in ``piece``, part of a request not yet whole, and
        refuses the request once they pass :data:`MAX_HEADER_BYTES`."""
        if self._buffer_paused:  # held by aiohttp's parser until requests before it are read
            return
        if not self._lined:
            start = 0
            if not self._started:  # blank lines before a request line are skipped
                start = len(piece) - len(piece.lstrip(b"\r\n"))
                self._started = start < len(piece)
            end = piece.find(b"\n", start) if self._started else -1
            if end < 0:
                return  # the request line, bounded by the parser (MAX_REQUEST_LINE)
            self._lined = True
            piece = piece[end + 1 :]
        self._size += len(piece)
        if self._size > MAX_HEADER_BYTES:
            self._refuse()

    def _refuse(self) -> None:
        """Answers ``431`` once the requests before are answered, then closes; reads nothing
        more of the connection."""
        self._disarm()
        self._server._dropped("headers_too_large")
        refused = HeadersTooLarge()
        error = web_protocol._ErrInfo(status=431, exc=refused, message=refused.message)
        self._messages.append((error, EMPTY_PAYLOAD))
        self._body = EMPTY_PAYLOAD
        self._close = True  # aiohttp reads no more; the answer closes the connection
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _blank_line_end(carry: bytes, data: bytes) -> int:
    """Where in ``data`` the first blank line ends (the end of a request's headers), reading
    ``carry``, the bytes before it, too; -1 when there is none."""
    window = carry + data
    ends = [at + len(blank) for blank in (b"\n\r\n", b"\n\n") if (at := window.find(blank)) >= 0]
    return min(ends) - len(carry) if ends else -1


class _Server(web.Server):
    """aiohttp's server with its connections bounded (:data:`MAX_CONNECTIONS`): their
    requests' headers too (:class:`_Connection`)."""

    _metrics: ConnectionMetrics | None
    #: The connections held and not being closed; those no route is answering a request of, by
    #: how long they have waited (the longest first), which a new connection beyond the bound
    #: takes the place of.
    _held: set[_Connection]
    _idle: dict[_Connection, None]

    def __call__(self) -> web_protocol.RequestHandler:
        if len(self._held) >= MAX_CONNECTIONS:
            oldest = next(iter(self._idle), None)
            if oldest is None:
                self._dropped("refused")
                return cast(web_protocol.RequestHandler, _Refused())
            self._dropped("shed")
            self._forget(oldest)
            transport = oldest.transport
            oldest.force_close()
            if isinstance(transport, asyncio.Transport):
                transport.abort()  # not after an answer its client may never read
        # Counted from here, not from connection_made: asyncio accepts a burst of connections
        # before making any of them.
        connection = _Connection(self, loop=self._loop, **self._kwargs)
        self._held.add(connection)
        self._idle[connection] = None
        return connection

    def connection_lost(
        self, handler: web_protocol.RequestHandler, exc: BaseException | None = None
    ) -> None:
        self._forget(cast(_Connection, handler))
        super().connection_lost(handler, exc)

    def _forget(self, connection: _Connection) -> None:
        self._held.discard(connection)
        self._idle.pop(connection, None)

    def _busy(self, connection: _Connection) -> None:
        self._idle.pop(connection, None)

    def _waiting(self, connection: _Connection) -> None:
        if connection in self._held:
            self._idle[connection] = None

    def _dropped(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.dropped.labels(reason).inc()


class _Runner(web.AppRunner):
    def __init__(
        self, app: web.Application, metrics: ConnectionMetrics | None, **options: Any
    ) -> None:
        super().__init__(app, **options)
        self._metrics = metrics

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp makes its Server itself (Application._make_handler): this one is it with
        # the bounds (a subclass adding no state of its own but what is set here).
        assert type(server) is web.Server, type(server)
        server.__class__ = _Server
        bounded = cast(_Server, server)
        bounded._metrics = self._metrics
        bounded._held = set()
        bounded._idle = {}
        if self._metrics is not None:
            self._metrics.open.set_function(lambda: len(bounded._held))
        return bounded


def app_runner(app: web.Application, metrics: ConnectionMetrics | None = None) -> web.AppRunner:
    """The runner of a server of the bridge's: :data:`RUNNER_OPTIONS`, each request's headers
    whole within :data:`HEADERS_TIMEOUT` and :data:`MAX_HEADER_BYTES`, and at most
    :data:`MAX_CONNECTIONS` connections, counted in ``metrics``."""
    return _Runner(app, metrics, **RUNNER_OPTIONS)


#: The readiness of the application the probes are added to, beside the worker's own: ``/readyz``
#: is ready when both are. The API's is not while it refuses requests for the handlers still
#: unwinding after their timeout (``bridge.api.problems.Unwinding``).
READINESS = web.AppKey[Callable[[], tuple[bool, str]]]("readiness")


class WebServer(Service):
    """Serves health, readiness and metrics on one port."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        registry: CollectorRegistry,
        ready: Callable[[], tuple[bool, str]],
        application: Callable[[], Awaitable[web.Application]] | None = None,
        alive: Callable[[], tuple[bool, str]] | None = None,
    ) -> None:
        super().__init__()
        self._host = host
        self._port = port
        self._registry = registry
        self._ready = ready
        #: Whether the process still works (``/healthz``); always, unless given.
        self._alive = alive
        #: Makes the application the probes are added to (the API's), else a bare one.
        self._application = application
        self._runner: web.AppRunner | None = None
        self._connections = ConnectionMetrics(registry)

    async def _routes(self) -> web.Application:
        app = await self._application() if self._application is not None else web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _healthz(self, request: web.Request) -> web.Response:
        alive, why = (True, "") if self._alive is None else self._alive()
        if alive:
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "failed", "detail": why}, status=503)

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, why = self._ready()
        application = request.app.get(READINESS)
        if ready and application is not None:
            served, reason = application()
            if not served:
                ready, why = False, reason
        return web.json_response(
            {"status": "ready" if ready else "not_ready", "detail": why},
            status=200 if ready else 503,
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def on_start(self) -> None:
        self._runner = app_runner(await self._routes(), self._connections)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
