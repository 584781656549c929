"""bench/receiver.py and bench/signatures.py: the aiohttp receiver counts a request as a
delivery only once its body is whole and signed with the secret of the webhook it names."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import ceilings, kit
from bench.procs import REPO, free_port, wait_port
from bench.receivers import Arrivals, unverified
from bench.signatures import sign, verify, webhook_secret
from bridge.contract.events import parse_event
from bridge.contract.payload import EncodedEvent, build_body
from bridge.delivery.job import Job, SourceRef
from bridge.http.base import build_headers
from bridge.subscriptions.webhook import Webhook


def _bridge_delivery(hook: kit.Hook) -> tuple[bytes, dict[str, str]]:
    """The body and headers the bridge sends for an event of ``hook``'s site."""
    raw = kit.event_bytes(str(uuid.uuid4()), hook.site_id, hook.user_id, kit.now_stamp(), 7)
    webhook = Webhook(
        id=hook.id,
        name=f"bench {hook.id}",
        url=hook.url,
        secret=hook.secret,
        events=frozenset({"*"}),
        site_id=hook.site_id,
        user_id=hook.user_id,
    )
    encoded = EncodedEvent.of(parse_event(raw))
    body = build_body(encoded, webhook)
    job = Job(encoded, webhook, 1, SourceRef("t", 0, 0))
    return body, build_headers(job, body)


def test_the_bridge_signs_a_bench_webhook_as_the_receiver_checks_it() -> None:
    hooks, _, _ = kit.make_hooks("bench-r-x", 3, 2, ["http://127.0.0.1:1/hook"])
    assert [h.secret for h in hooks] == [webhook_secret(h.id) for h in hooks]
    assert len({h.secret for h in hooks}) == len(hooks)
    body, headers = _bridge_delivery(hooks[4])
    assert verify(body, headers["X-Webhook-Signature"]) is None
    assert verify(body, headers["X-Webhook-Signature"].upper()) is None
    other = sign(webhook_secret(hooks[3].id), body)
    assert verify(body, other) == "bad_signature"
    assert verify(body, None) == "no_signature"
    assert verify(b"xyz", headers["X-Webhook-Signature"]) == "not_json"
    assert verify(b'{"id": "d"}', headers["X-Webhook-Signature"]) == "no_webhook"
    assert verify(b"[1]", headers["X-Webhook-Signature"]) == "no_webhook"
    ceiling_body, _ = kit.sample_body()
    assert verify(ceiling_body, sign(webhook_secret(kit.SAMPLE_WEBHOOK), ceiling_body)) is None


def _post(port: int, head: bytes, body: bytes, *, answer: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(head + body)
        return connection.recv(200).split(b"\r\n")[0] if answer else b""


def _head(delivery: str, signature: str, length: int) -> bytes:
    return (
        f"POST /hook HTTP/1.1\r\nHost: x\r\nX-Webhook-Delivery: {delivery}\r\n"
        f"X-Webhook-Signature: {signature}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """``python -m bench.receiver`` on a free port: (port, its arrivals log)."""
    log = tmp_path / "arrivals.log"
    port = free_port()
    command = [sys.executable, "-m", "bench.receiver", "--log", str(log)]
    command += ["--listen", f"{port}:ok:0", "--max-seconds", "60"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL)
    try:
        wait_port("127.0.0.1", port, 15.0, process)
        yield port, log
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)


def test_the_receiver_logs_only_whole_bodies_signed_by_their_webhook(
    receiver: tuple[int, Path],
) -> None:
    port, log = receiver
    hooks, _, _ = kit.make_hooks("bench-r-y", 1, 1, [f"http://127.0.0.1:{port}/hook"])
    body, headers = _bridge_delivery(hooks[0])
    signature = headers["X-Webhook-Signature"]
    assert _post(port, _head("signed", signature, len(body)), body) == b"HTTP/1.1 200 OK"
    forged = sign("not its secret", body)
    refused = _post(port, _head("forged", forged, len(body)), body)
    assert refused == b"HTTP/1.1 401 Unauthorized"
    assert _post(port, _head("junk", "00", 3), b"xyz").startswith(b"HTTP/1.1 401")
    # Half a body, then the connection closed: never a delivery.
    _post(port, _head("half", signature, len(body)), body[:100], answer=False)
    time.sleep(0.5)  # the receiver writes its logs every 0.1 s
    arrivals = Arrivals(log)
    arrivals.poll()
    assert arrivals.ids == ["signed"]
    assert unverified(log) == {"bad_signature": 1, "not_json": 1}


async def test_the_ceilings_requests_are_deliveries_to_the_receiver(
    receiver: tuple[int, Path],
) -> None:
    port, log = receiver
    url = f"http://127.0.0.1:{port}/hook"
    top = await ceilings.aiohttp_ceiling([url], 200, 4, runs=1, loop="asyncio")
    sender = await ceilings.bridge_sender_ceiling([url, url + "2"], 200, 4, loop="asyncio")
    assert top["failures"] == sender["failures"] == 0
    await asyncio.sleep(0.5)
    assert unverified(log) == {}
    assert Arrivals(log).poll() == 200 + 200 + 200 + 200  # each with its warm-up
