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
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = [
    "MAX_REQUEST_LINE",
    "MAX_HEADER_LINE",
    "MAX_HEADERS",
    "HEADERS_TIMEOUT",
    "KEEPALIVE_TIMEOUT",
    "RUNNER_OPTIONS",
    "READINESS",
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
#: Seconds a connection has to send its first request's headers, whole: aiohttp waits for
#: them as long as it keeps an idle connection (an hour by default, until 2026-12-07: a client
#: sending a header line a minute held its connection and what it had sent that long).
HEADERS_TIMEOUT = 10.0
#: Seconds an idle connection is kept (and a later request's headers are waited for): longer
#: than the 60 s a proxy in front (nginx's upstream keep-alive) keeps one, so that the proxy,
#: not the worker, ends an idle connection.
KEEPALIVE_TIMEOUT = 75.0

if "_request_count" not in getattr(web_protocol.RequestHandler, "__slots__", ()):
    # What the headers deadline reads (aiohttp has no public way to tell): fail here, at
    # import, rather than let a connection's deadline go unenforced.
    raise ImportError("aiohttp's RequestHandler no longer counts its requests (_request_count)")


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


class _DeadlineServer(web.Server):
    """aiohttp's server, closing a connection whose first request's headers have not all
    arrived :data:`HEADERS_TIMEOUT` seconds after it was opened."""

    #: Each open connection's deadline, cancelled as it closes.
    _deadlines: dict[web_protocol.RequestHandler, asyncio.TimerHandle]

    def connection_made(self, handler: web_protocol.RequestHandler, transport: Any) -> None:
        super().connection_made(handler, transport)
        loop = asyncio.get_running_loop()
        self._deadlines[handler] = loop.call_later(HEADERS_TIMEOUT, _headers_late, handler)

    def connection_lost(
        self, handler: web_protocol.RequestHandler, exc: BaseException | None = None
    ) -> None:
        deadline = self._deadlines.pop(handler, None)
        if deadline is not None:
            deadline.cancel()
        super().connection_lost(handler, exc)


def _headers_late(handler: web_protocol.RequestHandler) -> None:
    if handler._request_count == 0:  # no request's headers were whole
        handler.force_close()


class _Runner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp makes its Server itself (Application._make_handler): this one is it with
        # the deadline (a subclass adding no state of its own but a dictionary).
        assert type(server) is web.Server, type(server)
        server.__class__ = _DeadlineServer
        deadlines = cast(_DeadlineServer, server)
        deadlines._deadlines = {}
        return deadlines


def app_runner(app: web.Application) -> web.AppRunner:
    """The runner of a server of the bridge's (:data:`RUNNER_OPTIONS`, and a connection's
    first request's headers whole within :data:`HEADERS_TIMEOUT`)."""
    return _Runner(app, **RUNNER_OPTIONS)


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
        self._runner = app_runner(await self._routes())
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
