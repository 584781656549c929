"""What an attempt record keeps of the receiver's answer, on the real broker with a real worker
and receiver: the body's size always, its first bytes only when configured
(``attempt_response_prefix_bytes``), read back from the worker's delivery log, the management
command printing them escaped."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.admin.publish import publish_events
from bridge.admin.topics import apply_topics
from bridge.api.auth import hash_token
from bridge.config import Settings
from bridge.contract.events import build_event
from bridge.contract.payload import delivery_id
from tests.support.processes import settings_env
from tests.support.receivers import Receiver, subscribe
from tests.support.waiting import poll
from tests.support.workers import InProcessWorker

pytestmark = pytest.mark.integration

TOKEN = "wbt_attempt-response-0123456789abcdef0123456789ab"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: What the receiver answers its first attempt with (a 500): terminal escapes, a NUL, a byte that
#: is not UTF-8, and text that could be personal data.
REFUSED = b"\x1b[2J\x00\xff error for jane.roe@example.test"
#: What it answers the retry with (a 200).
ACCEPTED = b'{"received": true}'


@pytest.mark.parametrize("kept", [0, 8])
async def test_the_log_has_the_response_size_and_the_prefix_only_when_configured(
    make_settings: Callable[..., Settings],
    receiver: Receiver,
    in_process_workers: Callable[[Settings], InProcessWorker],
    tmp_path: Path,
    kept: int,
) -> None:
    tokens = tmp_path / "tokens.json"
    entry = {"name": "it", "sha256": hash_token(TOKEN), "scopes": ["read", "write"]}
    tokens.write_text(json.dumps({"tokens": [entry]}))
    settings = make_settings(
        delivery_log=True, api_tokens=str(tokens), attempt_response_prefix_bytes=kept
    )
    await apply_topics(settings)
    receiver.scripts["/wh"] = [500]
    await subscribe(settings, receiver, {"wh": "s1"}, ("post.created",))
    worker = in_process_workers(settings)
    await worker.wait_ready()

    receiver.bodies["/wh"] = [REFUSED, ACCEPTED]
    event = build_event("post.created", {"id": "p1", "title": "t"}, site_id="s1", user_id="u1")
    await publish_events(settings, [event])
    await receiver.wait_for(lambda got: [r.status for r in got] == [500, 200])

    async def attempts() -> list[dict[str, Any]]:
        async with httpx.AsyncClient() as client:
            response = await client.get(
                f"{worker.base_url}/v1/webhooks/wh/attempts", headers=AUTH, timeout=10.0
            )
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    logged = await poll(attempts, until=lambda a: len(a) == 2, timeout=30, interval=0.2)
    assert [(a["status"], a["response_bytes"]) for a in logged] == [
        (200, len(ACCEPTED)),
        (500, len(REFUSED)),
    ]
    assert [a["response_truncated"] for a in logged] == [False, False]
    if kept:
        assert [a["response_prefix"] for a in logged] == [
            ACCEPTED[:kept].decode(),
            # 8 bytes kept; U+FFFD for the invalid byte (3 bytes) leaves room for 7 of them.
            "\x1b[2J\x00\ufffd",
        ]
    else:
        assert [a for a in logged if "response_prefix" in a] == []

    # The command prints the size, and the prefix escaped: a receiver's bytes never reach the
    # terminal as control characters.
    # A child process, awaited: the worker answering it runs in this event loop.
    env = settings_env(
        settings.replace(
            api_url=worker.base_url, api_token=TOKEN, api_tokens=None, delivery_log=False
        )
    )
    target = delivery_id(event.id, "wh")
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge.cli",
        "deliveries",
        "show",
        target,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), 120)
    assert child.returncode == 0, err
    shown = out.decode()
    first, second, state = shown.splitlines()
    assert state == "state delivered"
    assert f"  {len(REFUSED)}B  " in first and f"  {len(ACCEPTED)}B" in second
    assert "\x1b" not in shown and "\x00" not in shown
    if kept:
        assert first.endswith('body "\\x1b[2J\\x00\ufffd"')
    else:
        assert "body" not in shown
