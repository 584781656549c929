"""A webhook receiver that verifies signatures and prints deliveries (demos and debugging)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from aiohttp import web

from bridge.contract.signing import verify
from bridge.terminal import json_line

__all__ = ["make_receiver_app"]


def make_receiver_app(
    secrets: str | Sequence[str],
    *,
    status: int = 200,
    out: TextIO | None = None,
    on_delivery: Callable[[dict[str, Any]], None] | None = None,
) -> web.Application:
    """An aiohttp app answering ``POST`` on any path: 401 for a bad signature, else ``status``.

    A signature is good when it verifies with any of ``secrets`` (a webhook's old and new
    secret, around a rotation). Each request is printed as one JSON line: delivery id, event
    type, whether the signature verified, and the parsed body, with the characters a terminal
    could act on as JSON escapes (:func:`~bridge.terminal.json_line`).
    """
    stream = out if out is not None else sys.stdout
    accepted = (secrets,) if isinstance(secrets, str) else tuple(secrets)

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        signature = request.headers.get("X-Webhook-Signature", "")
        ok = bool(signature) and any(verify(secret, body, signature) for secret in accepted)
        try:
            parsed: Any = json.loads(body)
        except (ValueError, RecursionError):  # (a body nested deeper than json reads)
            parsed = None
        line = {
            "delivery": request.headers.get("X-Webhook-Delivery"),
            "event": request.headers.get("X-Webhook-Event"),
            "verified": ok,
            "path": request.path,
            "body": parsed,
        }
        # What anyone sent, verified or not: shown, never obeyed (until 2026-12-07 a request's
        # C1 controls and bidi overrides reached the terminal raw).
        print(json_line(line), file=stream, flush=True)
        if on_delivery is not None:
            on_delivery(line)
        if not ok:
            return web.Response(status=401, text="Invalid signature")
        return web.Response(status=status, text="OK" if status == 200 else "")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/{tail:.*}", handle)
    return app
