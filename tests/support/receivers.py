"""Real HTTP receivers on 127.0.0.1 that record, verify and count deliveries."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from bridge.config import Settings
from bridge.contract.signing import verify
from bridge.subscriptions.store import WebhookStore

NODE_DIR = Path(__file__).resolve().parent.parent / "node"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float = field(default_factory=time.monotonic)

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def delivery_id(self) -> str:
        return self.headers["X-Webhook-Delivery"]


@dataclass
class Receiver:
    """An aiohttp server recording every request; the answer per path is configurable."""

    secrets: dict[str, str] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    holds: dict[str, asyncio.Event] = field(default_factory=dict)
    #: Statuses answered in turn, per path, before falling back to ``statuses``.
    scripts: dict[str, list[int]] = field(default_factory=dict)
    #: Extra response headers per path (e.g. Retry-After).
    headers: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Response bodies answered in turn, per path, the last one again (``OK`` otherwise).
    bodies: dict[str, list[bytes]] = field(default_factory=dict)
    #: Seconds each request to a path takes to be answered (an endpoint's own latency).
    delays: dict[str, float] = field(default_factory=dict)
    #: How many of its first requests each delivery (by ``X-Webhook-Delivery``, whatever the
    #: path) gets a 500 for; its later requests get the path's answer.
    fail_first: dict[str, int] = field(default_factory=dict)
    #: When set, every request gets a dropped connection instead of an answer.
    down: bool = False
    received: list[Received] = field(default_factory=list)
    port: int = 0
    _tries: dict[str, int] = field(default_factory=dict)
    _changed: asyncio.Condition | None = None
    _runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> Receiver:
        self._changed = asyncio.Condition()
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        for hold in self.holds.values():
            hold.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        hold = self.holds.get(request.path)
        script = self.scripts.get(request.path)
        status = script.pop(0) if script else self.statuses.get(request.path, 200)
        delivery = request.headers.get("X-Webhook-Delivery")
        if delivery is not None and delivery in self.fail_first:
            tries = self._tries[delivery] = self._tries.get(delivery, 0) + 1
            if tries <= self.fail_first[delivery]:
                status = 500
        answers = self.bodies.get(request.path)
        answer = (answers.pop(0) if len(answers) > 1 else answers[0]) if answers else None
        if self.down:
            status = 0
        record = Received(request.path, dict(request.headers), body, status)
        assert self._changed is not None
        async with self._changed:
            self.received.append(record)
            self._changed.notify_all()
        if hold is not None:
            await hold.wait()
        delay = self.delays.get(request.path)
        if delay is not None:
            await asyncio.sleep(delay)
        if status == 0:
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        headers = dict(self.headers.get(request.path, {}))
        if 300 <= status < 400:
            headers["Location"] = self.url("/elsewhere")
        if answer is not None:
            return web.Response(status=status, body=answer, headers=headers)
        return web.Response(status=status, text="OK", headers=headers)

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    def verified(self, record: Received) -> bool:
        secret = self.secrets[record.path]
        return verify(secret, record.body, record.headers.get("X-Webhook-Signature", ""))

    async def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout: float = 30.0
    ) -> None:
        assert self._changed is not None
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: predicate(self.received)), timeout
            )


class NodeSpecReceiver:
    """The documentation's Express receiver, run by Node.js, verifying with one secret."""

    def __init__(self, secret: str, port: int) -> None:
        self.secret = secret
        self.port = port
        self.results: list[dict[str, Any]] = []
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()
        self.output: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhook"

    async def start(self, timeout: float = 20.0) -> NodeSpecReceiver:
        env = dict(os.environ, PORT=str(self.port), WEBHOOK_SECRET=self.secret)
        self._process = await asyncio.create_subprocess_exec(
            "node",
            str(NODE_DIR / "spec_receiver.js"),
            cwd=str(NODE_DIR),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # The example logs each event it receives on one line: a delivery of
            # max_body_bytes is a line past asyncio's default 64 KiB.
            limit=4 * 1024 * 1024,
        )
        listening = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(listening))
        await asyncio.wait_for(listening, timeout)
        return self

    async def _read(self, listening: asyncio.Future[None]) -> None:
        assert self._process is not None and self._process.stdout is not None
        async for raw in self._process.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.output.append(line)
            if line.startswith("Webhook server running") and not listening.done():
                listening.set_result(None)
            if line.startswith("RESULT "):
                async with self._changed:
                    self.results.append(json.loads(line[len("RESULT ") :]))
                    self._changed.notify_all()
        if not listening.done():
            listening.set_exception(RuntimeError("node exited:\n" + "\n".join(self.output)))

    async def wait_for(self, count: int, timeout: float = 30.0) -> None:
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: len(self.results) >= count), timeout
            )

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()
        if self._reader is not None:
            # What failed reading its output is the test's to see (in ``output``), not a
            # reason to leave the next receiver a test stops running.
            await asyncio.gather(self._reader, return_exceptions=True)


async def create_verified(
    store: WebhookStore,
    receiver: Receiver,
    name: str,
    *,
    site_id: str,
    events: Sequence[str],
    path: str | None = None,
) -> None:
    """Create webhook ``name`` of account ``u1`` at ``path`` (``/name``) of ``receiver``, which
    then verifies its deliveries."""
    path = path if path is not None else f"/{name}"
    secret = f"secret-{name}-0123456789"
    receiver.secrets[path] = secret
    await store.create(
        url=receiver.url(path),
        events=list(events),
        site_id=site_id,
        user_id="u1",
        secret=secret,
        webhook_id=name,
        name=name,
    )


async def subscribe(
    settings: Settings, receiver: Receiver, sites: dict[str, str], events: tuple[str, ...]
) -> None:
    """Create one webhook per ``{name: site_id}`` of account ``u1``, at ``/name`` of
    ``receiver``, which then verifies its deliveries."""
    async with WebhookStore(settings) as store:
        for name, site in sites.items():
            await create_verified(store, receiver, name, site_id=site, events=events)
