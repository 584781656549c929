"""bench.recoveries: a recovery's start answered 503 (the worker settling its assignment) is
sent again after its Retry-After, with the same key, as the CLI does; a run at 39b831d
stopped on one."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from bench import kit
from bench.recoveries import Recovering


async def test_a_start_answered_503_is_sent_again_with_its_key() -> None:
    keys: list[str] = []

    async def start(request: web.Request) -> web.Response:
        keys.append(request.headers["Idempotency-Key"])
        if len(keys) == 2:  # the second webhook's first try
            return web.json_response({"title": "t"}, status=503, headers={"Retry-After": "0"})
        return web.json_response({"id": f"r{len(keys)}"}, status=202)

    app = web.Application()
    app.router.add_post("/v1/webhooks/{webhook_id}/recoveries", start)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        recovering = Recovering("wbt_t", filler=0, count=3)
        recovering._hooks = [kit.Hook(f"wh{n}", "http://x/", "s" * 32, "s", "u") for n in range(3)]
        worker: Any = SimpleNamespace(base_url=str(server.make_url("")).rstrip("/"))
        await recovering.start(worker)
    finally:
        await server.close()
    assert recovering.started == [202, 503, 202, 202]
    assert keys[1] == keys[2] and len(set(keys)) == 3
    assert recovering._ids == ["r1", "r3", "r4"]
