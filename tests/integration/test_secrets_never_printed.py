"""No secret is printed by a real worker or the command line: not a webhook's signing secret by
aiokafka's DEBUG lines (a write of a webhook record without a keyring), not an API token in a
request the HTTP server refused, not the credentials in a webhook URL that another producer
wrote, by `webhooks list` or `GET /v1/webhooks/{id}`."""

from __future__ import annotations

import asyncio
import base64
import logging
import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from bridge.admin.topics import apply_topics
from bridge.config import Settings
from bridge.contract import jsoncanon
from bridge.kafka.clients import client_kwargs
from bridge.subscriptions.store import WebhookStore
from bridge.worker.logs import JsonFormatter
from tests.support.api import LOG_AUTH, LOG_TOKEN, write_token_file
from tests.support.processes import WorkerProcess, settings_env
from tests.support.waiting import poll

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"plaintext-signing-secret-never-printed").decode()
ROTATED = "whsec_" + base64.b64encode(b"ROTATEDsecretValue0123456789abcdef-never-printed").decode()
URL_PASSWORD = "userinfoPassw0rd-never-printed"
RAW_SECRET = "rawSigningSecret0123456789abcdef-never-printed"


def leaks(text: str, secret: str) -> bool:
    return secret in text or secret.encode().hex() in text


async def test_a_webhook_write_logs_no_secret_at_debug(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings()
    await apply_topics(settings)
    caplog.set_level(logging.DEBUG)
    async with WebhookStore(settings) as store:
        await store.create(
            url="https://example.com/hook",
            events=["*"],
            site_id="s1",
            secret=SECRET,
            webhook_id="wh_debug",
            standard=True,
        )
        await store.rotate_secret("wh_debug", secret=ROTATED, overlap=60)
    lines = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    assert any(r.name.startswith("aiokafka") for r in caplog.records)  # DEBUG lines were kept
    assert not leaks(lines, SECRET) and not leaks(lines, ROTATED)


async def test_a_worker_at_debug_logs_no_secret_of_a_webhook_made_through_the_api(
    make_settings: Callable[..., Settings],
    workers: Callable[[Settings], WorkerProcess],
    tmp_path: object,
) -> None:
    tokens = write_token_file(tmp_path / "tokens.json")  # type: ignore[operator]
    settings = make_settings(api_tokens=str(tokens), log_level="DEBUG", log_format="json")
    await apply_topics(settings)
    worker = workers(settings)
    await worker.wait_ready()
    async with httpx.AsyncClient(base_url=worker.base_url, timeout=30) as client:
        response = await client.post(
            "/v1/webhooks",
            headers=LOG_AUTH,
            json={
                "id": "wh_api_debug",
                "url": "https://example.com/hook",
                "events": ["*"],
                "site_id": "s1",
                "secret": SECRET,
                "standard_webhooks": True,
            },
        )
        assert response.status_code == 201, response.text
    # Requests the HTTP server refuses, carrying the token where aiohttp's error would quote it.
    port = int(worker.base_url.rsplit(":", 1)[1])
    for raw in (
        f"GET /v1/webhooks HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {LOG_TOKEN}\x01\r\n\r\n",
        f"GET /v1/webhooks?t={LOG_TOKEN}{'q' * 70_000} HTTP/1.1\r\nHost: a\r\n\r\n",
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw.encode("latin-1"))
        await writer.drain()
        assert (await reader.read(12)).startswith(b"HTTP/1.")
        writer.close()
        await writer.wait_closed()
    log = await poll(
        lambda: worker.tail(1_000_000),
        until=lambda text: text.count("refused a malformed HTTP request") == 2,
        timeout=10,
        interval=0.1,
    )
    assert log.count("refused a malformed HTTP request") == 2, log[-2000:]
    assert '"level": "debug"' in log  # the worker logs at DEBUG
    hits = [line for line in log.splitlines() if SECRET in line or LOG_TOKEN in line]
    assert not hits, hits[0][:600]


async def write_a_url_with_credentials(settings: Settings) -> None:
    """A webhook record as another producer (or an older bridge) may have written it: its URL
    carries a password (the bridge keeps it: URLs are not judged on load)."""
    record = {
        "id": "wh_raw",
        "name": "raw",
        "url": f"https://alice:{URL_PASSWORD}@example.com/hook",
        "secret": RAW_SECRET,
        "events": ["*"],
        "site_id": "s1",
        "user_id": None,
        "active": True,
    }
    producer = AIOKafkaProducer(**client_kwargs(settings))
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.subscriptions_topic, jsoncanon.dumps(record), key=b"wh_raw"
        )
    finally:
        await producer.stop()


@pytest.mark.parametrize("extra", [[], ["--json"]])
async def test_webhooks_list_shows_no_url_password(
    make_settings: Callable[..., Settings], extra: list[str]
) -> None:
    settings = make_settings()
    await apply_topics(settings)
    await write_a_url_with_credentials(settings)
    listed = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "webhooks", "list", *extra],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = listed.stdout + listed.stderr
    assert "wh_raw" in out and "***@example.com/hook" in out
    assert RAW_SECRET not in out and URL_PASSWORD not in out, out


async def test_the_api_answers_no_url_password(
    make_settings: Callable[..., Settings],
    workers: Callable[[Settings], WorkerProcess],
    tmp_path: object,
) -> None:
    tokens = write_token_file(tmp_path / "tokens.json")  # type: ignore[operator]
    settings = make_settings(api_tokens=str(tokens))
    await apply_topics(settings)
    await write_a_url_with_credentials(settings)
    worker = workers(settings)
    await worker.wait_ready()
    async with httpx.AsyncClient(base_url=worker.base_url, timeout=30) as client:
        response = await poll(
            lambda: client.get("/v1/webhooks/wh_raw", headers=LOG_AUTH),
            until=lambda r: r.status_code == 200,
            timeout=15,
            interval=0.1,
        )
    assert response.status_code == 200, response.text
    assert response.json()["url"] == "https://***@example.com/hook"
    assert RAW_SECRET not in response.text and URL_PASSWORD not in response.text
