"""bench/ceilings.py: a ceiling whose requests fail has no rate; its client stops when told
and gives up on a receiver that never answers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from bench import ceilings, report


def test_a_ceiling_with_a_failed_request_has_no_rate_and_says_why() -> None:
    failed = ceilings._result("ceiling_aiohttp", 2.0, [0.002] * 10, 3, 10)
    assert failed["deliveries_per_s"] is None
    assert failed["ceiling_per_s"] is None
    assert failed["ratio"] is None
    assert failed["error"] == "3 of 10 requests not answered 200"
    assert "failures=3" in report._notes(failed)
    assert "ERROR: 3 of 10 requests" in report._notes(failed)
    measured = ceilings._result("ceiling_aiohttp", 2.0, [0.002] * 10, 0, 10)
    assert measured["deliveries_per_s"] == measured["ceiling_per_s"] == 5.0
    assert "error" not in measured
    assert "failures=0" in report._notes(measured)


Serve = Callable[[Callable[[web.Request], Awaitable[web.StreamResponse]]], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Starts an aiohttp server on 127.0.0.1 answering every POST with the given handler;
    returns its URL."""
    runners: list[web.AppRunner] = []

    async def start(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> str:
        app = web.Application()
        app.router.add_post("/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}/hook"

    yield start
    for runner in runners:
        await runner.cleanup()


async def _unavailable(request: web.Request) -> web.StreamResponse:
    await request.read()
    return web.Response(status=503, text="no")


async def test_the_aiohttp_ceiling_against_a_receiver_answering_503_is_an_error(
    serve: Serve,
) -> None:
    url = await serve(_unavailable)
    result = await ceilings.aiohttp_ceiling([url], 60, 4, runs=2, loop="asyncio")
    assert result["deliveries_per_s"] is None and result["ratio"] is None
    assert result["failures"] == result["requests"] == 120
    assert result["error"] == "120 of 120 requests not answered 200"


async def test_the_bridge_sender_ceiling_against_a_receiver_answering_503_is_an_error(
    serve: Serve,
) -> None:
    url = await serve(_unavailable)
    result = await ceilings.bridge_sender_ceiling([url], 40, 4, loop="asyncio")
    assert result["deliveries_per_s"] is None and result["ratio"] is None
    assert result["error"] == "40 of 40 requests not answered 200"


async def test_the_post_loop_sends_nothing_more_once_stopped() -> None:
    stop = threading.Event()
    sent = 0

    async def post(url: str, body: bytes, headers: dict[str, str]) -> bool:
        nonlocal sent
        sent += 1
        if sent == 10:
            stop.set()
        await asyncio.sleep(0)
        return True

    run = await ceilings._post_loop(post, ["http://127.0.0.1:1/hook"], 100_000, 4, stop)
    # The four tasks each end after the request they were sending.
    assert 10 <= sent < 14
    assert len(run.latencies) == sent


async def test_a_cancelled_ceiling_stops_its_client(serve: Serve) -> None:
    answered = 0

    async def slow(request: web.Request) -> web.StreamResponse:
        nonlocal answered
        await request.read()
        await asyncio.sleep(0.01)
        answered += 1
        return web.Response(text="OK")

    url = await serve(slow)
    ceiling = asyncio.create_task(
        ceilings.aiohttp_ceiling([url], 100_000, 4, runs=1, loop="asyncio")
    )
    await asyncio.sleep(0.5)
    assert answered > 0
    ceiling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await ceiling
    await asyncio.sleep(0.3)  # the requests in flight then are answered
    settled = answered
    await asyncio.sleep(0.5)
    assert answered == settled


async def test_a_ceiling_gives_up_on_a_receiver_that_never_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ceilings, "CLIENT_TIMEOUT_S", 0.3)
    release = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            await ceilings.aiohttp_ceiling(
                [f"http://127.0.0.1:{port}/hook"], 100, 4, runs=1, loop="asyncio"
            )
        assert time.monotonic() - started < 5.0
    finally:
        release.set()
        server.close()
        await server.wait_closed()
