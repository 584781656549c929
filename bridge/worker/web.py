"""The worker's own HTTP server: ``/healthz``, ``/readyz`` and ``/metrics``, and ``/v1`` when
the worker serves the API.

It runs beside Faust (whose web server only starts after table recovery), so liveness answers
from the first second and readiness can say "recovering".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["MAX_REQUEST_LINE", "MAX_HEADER_LINE", "RUNNER_OPTIONS", "WebServer", "app_runner"]

#: Longest request line (method, target, version) and header line the server reads (aiohttp's
#: default is 8190 bytes for both). Beyond them aiohttp answers ``400`` in plain text before any
#: route or middleware sees the request; below them ``/v1`` judges the request itself and names
#: what is wrong in a problem (a cursor of 2,000 characters, percent-encoded, is up to 18 KB).
MAX_REQUEST_LINE = 64 * 1024
MAX_HEADER_LINE = 64 * 1024


#: How the bridge's servers read requests: no access log, the request and header line limits
#: above, and request bodies as sent (no ``Content-Encoding`` undone: ``/v1`` refuses an encoded
#: body with ``415``; decoded by aiohttp, a body that was not what its header said raised out of
#: the route, a ``500``, and out of aiohttp's draining of a body no route read, an error logged
#: with its traceback for any client, until 2026-12-06). Tests serve the API with them too.
RUNNER_OPTIONS: dict[str, Any] = {
    "access_log": None,
    "max_line_size": MAX_REQUEST_LINE,
    "max_field_size": MAX_HEADER_LINE,
    "auto_decompress": False,
}


def app_runner(app: web.Application) -> web.AppRunner:
    """The runner of a server of the bridge's (:data:`RUNNER_OPTIONS`)."""
    return web.AppRunner(app, **RUNNER_OPTIONS)


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
    ) -> None:
        super().__init__()
        self._host = host
        self._port = port
        self._registry = registry
        self._ready = ready
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
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, why = self._ready()
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
