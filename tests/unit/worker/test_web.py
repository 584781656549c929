"""bridge.worker.web.WebServer on a real port: what reaches the application (and so gets a
problem naming what is wrong) and what the HTTP layer refuses before it."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import logging.config
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from bridge.worker.embedded import free_port
from bridge.worker.logs import logging_config
from bridge.worker.web import (
    MAX_HEADER_BYTES,
    MAX_HEADER_LINE,
    MAX_REQUEST_LINE,
    READINESS,
    WebServer,
)
from tests.support.waiting import eventually


async def _echo(request: web.Request) -> web.Response:
    return web.json_response(
        {"query": len(request.query_string), "header": len(request.headers.get("X-Long", ""))}
    )


async def _refuse(request: web.Request) -> web.Response:
    """A route that refuses before reading the body (as /v1 does without a token)."""
    return web.Response(status=401)


async def _body(request: web.Request) -> web.Response:
    return web.json_response({"size": len(await request.read())})


async def _application() -> web.Application:
    app = web.Application()
    app.router.add_get("/v1/echo", _echo)
    app.router.add_post("/v1/refuse", _refuse)
    app.router.add_post("/v1/body", _body)
    return app


@asynccontextmanager
async def serving(registry: CollectorRegistry | None = None, **options: Any) -> AsyncIterator[str]:
    """A WebServer on a free loopback port, ready, with ``options``: its base URL."""
    port = free_port()
    served = WebServer(
        host="127.0.0.1",
        port=port,
        registry=registry if registry is not None else CollectorRegistry(),
        ready=lambda: (True, "ready"),
        **options,
    )
    await served.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await served.stop()


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async with serving(application=_application) as base:
        yield base


async def test_readyz_is_not_ready_while_the_application_is_not(server: str) -> None:
    """The API refusing /v1 for its handlers still unwinding after their timeout makes the
    worker not ready (bridge.api.problems.Unwinding); an application without a readiness of
    its own leaves the worker's."""
    served: list[tuple[bool, str]] = [(False, "refusing /v1")]

    async def application() -> web.Application:
        app = await _application()
        app[READINESS] = lambda: served[-1]
        return app

    async with aiohttp.ClientSession() as session:
        async with serving(application=application) as base:
            async with session.get(f"{base}/readyz") as answer:
                assert answer.status == 503
                assert await answer.json() == {"status": "not_ready", "detail": "refusing /v1"}
            served.append((True, ""))
            async with session.get(f"{base}/readyz") as answer:
                assert answer.status == 200
                assert await answer.json() == {"status": "ready", "detail": "ready"}
        async with session.get(f"{server}/readyz") as answer:
            assert answer.status == 200


async def test_long_request_lines_and_headers_reach_the_application(server: str) -> None:
    """aiohttp's own limit (8190 bytes) answered such requests in plain text, outside the API's
    document; up to the server's limits the application sees them."""
    query = "q=" + "x" * (MAX_REQUEST_LINE - 100)
    header = "y" * (MAX_HEADER_LINE - 100)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server}/v1/echo?{query}", headers={"X-Long": header}) as answer:
            assert answer.status == 200
            assert await answer.json() == {"query": len(query), "header": len(header)}


@pytest.mark.parametrize("where", ["line", "header"])
async def test_beyond_the_limits_the_http_layer_refuses(server: str, where: str) -> None:
    too_long = "z" * (MAX_REQUEST_LINE + 10)
    url = f"{server}/v1/echo" + (f"?q={too_long}" if where == "line" else "")
    headers = {"X-Long": too_long} if where == "header" else {}
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=headers) as answer:
            assert answer.status == 400
            assert answer.content_type == "text/plain"


TOKEN = "wbt_never-logged-0123456789abcdef"

#: Requests the HTTP parser refuses, each carrying the token where a careless log would quote it.
MALFORMED = [
    f"GET /v1/echo HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\x01\r\n\r\n",
    "GET /v1/echo HTTP/1.1\r\nHost: a\r\nX-Long: "
    + "a" * (MAX_HEADER_LINE + 10)
    + f"\r\nAuthorization: Bearer {TOKEN}\r\n\r\n",
    f"GET /v1/echo?token={TOKEN} HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
    f"GET /v1/echo?token={TOKEN}{'q' * (MAX_REQUEST_LINE + 10)} HTTP/1.1\r\nHost: a\r\n\r\n",
]


@contextmanager
def worker_logging(level: str, fmt: str) -> Iterator[io.StringIO]:
    """The worker's logging (bridge.worker.logs.logging_config) onto a string, restored after."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.level, root.handlers[:], sys.stderr)
    sys.stderr = stream
    try:
        logging.config.dictConfig(logging_config(level, fmt))
        yield stream
    finally:
        sys.stderr = saved[2]
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])


@pytest.mark.parametrize("fmt", ["json", "text"])
@pytest.mark.parametrize("level", ["INFO", "WARNING"])
async def test_a_refused_request_is_one_line_that_quotes_nothing_of_it(
    server: str, fmt: str, level: str
) -> None:
    """aiohttp logged each as an error with a traceback quoting the refused bytes (the token in
    the first request's Authorization header among them)."""
    port = int(server.rsplit(":", 1)[1])
    with worker_logging(level, fmt) as stream:
        for raw in MALFORMED:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(raw.encode("latin-1"))
            await writer.drain()
            assert (await reader.read(12)).startswith(b"HTTP/1.")  # answered 400
            writer.close()
            await writer.wait_closed()
    logged = stream.getvalue()
    assert TOKEN not in logged and "Traceback" not in logged
    lines = [line for line in logged.splitlines() if "refused a malformed HTTP request" in line]
    assert len(lines) == (len(MALFORMED) if level == "INFO" else 0), logged
    assert lines == [line for line in logged.splitlines() if "aiohttp" in line or "server:" in line]


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
async def test_an_encoded_body_is_taken_as_sent_and_never_logged_as_an_error(
    server: str, encoding: str
) -> None:
    """aiohttp undid a Content-Encoding itself: a body that was not what its header said
    raised out of a route that read it (a 500) and out of aiohttp's draining of one no route
    read (an error with its traceback, for anyone, no token needed). Taken as sent, /v1
    refuses it (415, bridge.api.problems.read_body)."""
    garbage = b"\x1f\x8bnot-" + encoding.encode() + b"-at-all" * 1000
    with worker_logging("INFO", "text") as stream:
        async with aiohttp.ClientSession() as session:
            for route, status in (("refuse", 401), ("body", 200)):
                async with session.post(
                    f"{server}/v1/{route}",
                    data=garbage,
                    headers={"Content-Encoding": encoding, "Content-Type": "application/json"},
                ) as answer:
                    assert answer.status == status
                    if status == 200:
                        assert await answer.json() == {"size": len(garbage)}
    logged = stream.getvalue()
    assert "Traceback" not in logged and "ERROR" not in logged, logged


async def test_a_connection_must_send_its_first_requests_headers_in_time(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp waits for a request's headers as long as it keeps an idle connection (an hour
    by default): a client sending a header line now and then held its connection, and the
    lines it had sent, that long (until 2026-12-07). A connection whose first request's
    headers are not whole by HEADERS_TIMEOUT is closed; one whose request was whole is kept
    for its next (keep-alive)."""
    from bridge.worker import web as worker_web

    monkeypatch.setattr(worker_web, "HEADERS_TIMEOUT", 0.3)
    port = int(server.rsplit(":", 1)[1])
    loop = asyncio.get_running_loop()
    silent = await asyncio.open_connection("127.0.0.1", port)
    dribbling = await asyncio.open_connection("127.0.0.1", port)
    whole = await asyncio.open_connection("127.0.0.1", port)
    dribbling[1].write(b"GET /v1/echo HTTP/1.1\r\nHost: a\r\n")
    whole[1].write(b"GET /v1/echo HTTP/1.1\r\nHost: a\r\n\r\n")
    started = loop.time()
    answer = await asyncio.wait_for(whole[0].readuntil(b"}"), 5)
    assert answer.startswith(b"HTTP/1.1 200")
    dribbling[1].write(b"X-More: 1\r\n")
    for reader, writer in (silent, dribbling):
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing answered
        writer.close()
    assert loop.time() - started < 3
    await asyncio.sleep(0.5)  # past the deadline: the kept connection still serves
    whole[1].write(b"GET /v1/echo HTTP/1.1\r\nHost: a\r\n\r\n")
    again = await asyncio.wait_for(whole[0].readuntil(b"}"), 5)
    assert again.startswith(b"HTTP/1.1 200")
    whole[1].close()


def test_the_servers_hold_at_most_a_bounded_set_of_headers() -> None:
    from bridge.worker.web import KEEPALIVE_TIMEOUT, MAX_HEADERS, RUNNER_OPTIONS

    assert RUNNER_OPTIONS["max_headers"] * RUNNER_OPTIONS["max_field_size"] <= 1024 * 1024
    assert (MAX_HEADERS, RUNNER_OPTIONS["keepalive_timeout"]) == (64, KEEPALIVE_TIMEOUT)


async def test_healthz_fails_once_the_process_no_longer_works() -> None:
    state = {"alive": (True, "")}
    async with serving(alive=lambda: state["alive"]) as base, aiohttp.ClientSession() as session:
        url = f"{base}/healthz"
        async with session.get(url) as ok:
            assert ok.status == 200
        state["alive"] = (False, "crashed: KafkaTimeoutError")
        async with session.get(url) as failed:
            assert failed.status == 503
            assert await failed.json() == {
                "status": "failed",
                "detail": "crashed: KafkaTimeoutError",
            }


# -- each request's headers bounded in time and size, and the connections in number ------------
async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The status and body of the next answer on a raw connection."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    length = next(
        int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length")
    )
    return int(lines[0].split()[1]), await asyncio.wait_for(reader.readexactly(length), 5)


async def _rest(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """What a connection sends until the server closes it (a reset is a close too)."""
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        return b""


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


def _dropped(registry: CollectorRegistry, reason: str) -> float:
    value = registry.get_sample_value(
        "webhook_bridge_http_connections_dropped_total", {"reason": reason}
    )
    return -1.0 if value is None else value


GET = b"GET /v1/echo HTTP/1.1\r\nHost: a\r\n\r\n"


async def test_every_requests_headers_on_a_kept_connection_must_arrive_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Until 2026-12-07 only a connection's first request had HEADERS_TIMEOUT: a second
    request's headers, sent a line at a time, were waited for as long as an idle connection
    is kept (75 s). The deadline starts again at a later request's first bytes, not while the
    connection is idle between requests."""
    from bridge.worker import web as worker_web

    monkeypatch.setattr(worker_web, "HEADERS_TIMEOUT", 0.5)
    registry = CollectorRegistry()
    loop = asyncio.get_running_loop()
    async with serving(registry, application=_application) as base:
        port = int(base.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(3):  # whole requests, one after the other, each answered
            writer.write(GET)
            assert (await _answer(reader))[0] == 200
        writer.write(b"GET /v1/echo HTTP/1.1\r\nHost: a\r\n")
        started = loop.time()

        async def dribble() -> None:
            while True:
                writer.write(b"X-More: 1\r\n")
                await asyncio.sleep(0.2)

        dribbling = asyncio.ensure_future(dribble())
        try:
            assert await _rest(reader) == b""  # closed, nothing answered
        finally:
            dribbling.cancel()
            await _close(writer)
        assert 0.4 < loop.time() - started < 3
        assert _dropped(registry, "headers_timeout") == 1


async def test_a_requests_headers_past_their_bound_are_refused_431() -> None:
    """Until 2026-12-07 a request's headers were bounded by their lines only (64 of 16 KiB):
    a client sending 62 of them for a second request and never the blank line held ~1.9 MB of
    the worker for 75 s, per connection. Whole or still arriving, headers past MAX_HEADER_BYTES
    are answered 431 at once and their connection closed; up to it, with the longest request
    line besides, the route sees them."""
    line = b"X-Pad: " + b"p" * (MAX_HEADER_LINE - 100) + b"\r\n"
    over = MAX_HEADER_BYTES // len(line) + 1
    registry = CollectorRegistry()
    loop = asyncio.get_running_loop()
    async with serving(registry, application=_application) as base:
        port = int(base.rsplit(":", 1)[1])
        # Whole, in one write.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /v1/echo HTTP/1.1\r\nHost: a\r\n" + line * over + b"\r\n")
        status, body = await _answer(reader)
        assert (status, body) == (431, b"Request Header Fields Too Large")
        assert await _rest(reader) == b""
        await _close(writer)
        # A kept connection's second request, never whole: refused as its bytes pass the
        # bound, not at its deadline (10 s) nor at the idle connection's end (75 s).
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(GET)
        assert (await _answer(reader))[0] == 200
        started = loop.time()
        writer.write(b"GET /v1/echo HTTP/1.1\r\nHost: a\r\n")
        for _ in range(over):
            writer.write(line)
            await writer.drain()
        status, body = await _answer(reader)
        assert status == 431
        assert await _rest(reader) == b""
        assert loop.time() - started < 3
        await _close(writer)
        assert _dropped(registry, "headers_too_large") == 2
        # Up to the bound, after a request line at its own, sent in pieces: answered.
        query = "q=" + "x" * (MAX_REQUEST_LINE - 100)
        within = b"X-Long: " + b"y" * (MAX_HEADER_LINE - 100) + b"\r\n"
        fits = (MAX_HEADER_BYTES - 100) // len(within)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = f"GET /v1/echo?{query} HTTP/1.1\r\nHost: a\r\n".encode() + within * fits
        for at in range(0, len(request), 7000):
            writer.write(request[at : at + 7000])
            await writer.drain()
        writer.write(b"\r\n")
        status, body = await _answer(reader)
        assert status == 200, body
        assert b'"query": %d' % len(query) in body
        await _close(writer)


async def test_connections_past_the_bound_shed_the_longest_waiting_and_probes_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Until 2026-12-07 a worker held every connection opened to it: ~320 of them sending
    headers that never end took a worker past its memory limit. At MAX_CONNECTIONS, a new
    connection takes the place of the one waiting longest (shed), so that a probe is answered
    whatever others hold open; while every connection is answering a request (a route
    running), a new one is answered 503 and closed (refused); the open ones are exported."""
    from bridge.worker import web as worker_web

    monkeypatch.setattr(worker_web, "MAX_CONNECTIONS", 6)
    release = asyncio.Event()
    entered: list[int] = []

    async def hold(request: web.Request) -> web.Response:
        entered.append(1)
        await release.wait()
        return web.json_response({"held": True})

    async def application() -> web.Application:
        app = await _application()
        app.router.add_get("/v1/hold", hold)
        return app

    registry = CollectorRegistry()

    def open_connections() -> float | None:
        return registry.get_sample_value("webhook_bridge_http_connections")

    async with serving(registry, application=application) as base:
        port = int(base.rsplit(":", 1)[1])
        slow = []
        for _ in range(6):  # a request answered, then headers that never end
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(GET)
            assert (await _answer(reader))[0] == 200
            writer.write(b"GET /v1/echo HTTP/1.1\r\nX-Slow: 1\r\n")
            await writer.drain()
            slow.append((reader, writer))
        assert open_connections() == 6
        # A connection per probe, as the kubelet opens.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            for path in ("/healthz", "/readyz", "/metrics"):
                async with s.get(f"{base}{path}") as answer:
                    assert answer.status == 200, path
        # The first took the place of the longest waiting; the later ones found room, the
        # probe before closed once answered.
        assert await _rest(slow[0][0]) == b""
        assert _dropped(registry, "shed") == 1
        await eventually(lambda: open_connections() == 5, message="5 connections open")
        for _, writer in slow:
            await _close(writer)
        await eventually(lambda: open_connections() == 0, message="connections closed")
        # Every connection answering a request: a new one is refused, the probes too.
        busy = []
        for _ in range(6):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /v1/hold HTTP/1.1\r\nHost: a\r\n\r\n")
            busy.append((reader, writer))
        await eventually(lambda: len(entered) == 6, message="6 requests being answered")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        refused = await _rest(reader)
        assert refused == b"" or refused.startswith(b"HTTP/1.1 503 "), refused
        await _close(writer)
        assert _dropped(registry, "refused") == 1
        release.set()
        for reader, writer in busy:
            assert (await _answer(reader))[0] == 200
            await _close(writer)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/healthz") as answer:
                assert answer.status == 200
