"""bridge.cli.receiver: the demo receiver verifies with any of its secrets, on a real server on
127.0.0.1."""

from __future__ import annotations

import io
import json

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bridge.cli import commands
from bridge.cli.receiver import make_receiver_app
from bridge.contract.signing import sign

BODY = b'{"event": "post.created", "data": {}}'


async def test_a_signature_of_any_secret_given_verifies_and_no_other() -> None:
    """Around a rotation a receiver holds the old and the new secret (``--secret`` twice)."""
    out = io.StringIO()
    server = TestServer(
        make_receiver_app(["old-secret-1", "new-secret-2"], out=out), host="127.0.0.1"
    )
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            statuses = []
            for secret in ("old-secret-1", "new-secret-2", "other-secret-3"):
                headers = {"X-Webhook-Signature": sign(secret, BODY)}
                async with session.post(server.make_url("/hook"), data=BODY, headers=headers) as r:
                    statuses.append(r.status)
    finally:
        await server.close()
    assert statuses == [200, 200, 401]
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["verified"] for line in lines] == [True, True, False]


def test_receive_takes_the_secret_flag_again() -> None:
    args = commands._parser().parse_args(
        ["receive", "--port", "1", "--secret", "a-secret", "--secret", "b-secret"]
    )
    assert args.secrets == ["a-secret", "b-secret"]


def test_receive_refuses_an_empty_secret(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        commands._parser().parse_args(["receive", "--port", "1", "--secret", ""])
    assert "--secret" in capsys.readouterr().err


async def test_what_a_request_sent_is_shown_never_obeyed() -> None:
    """A receiver prints what anyone sent, verified or not: until 2026-12-07 a request's C1
    controls and bidi overrides (body and headers) reached the terminal raw."""
    import asyncio

    out = io.StringIO()
    server = TestServer(make_receiver_app(["a-secret"], out=out), host="127.0.0.1")
    await server.start_server()
    hostile = "\x9b2J\u202egnp\x1b]0;x\x07\u2028 café"
    body = json.dumps({"title": hostile}, ensure_ascii=False).encode()
    head = (
        b"POST /hook HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"X-Webhook-Delivery: d\xc2\x9b2J\xe2\x80\xae\r\nX-Webhook-Event: e\x9b\r\n"
        b"X-Webhook-Signature: v1=00\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head + body)
        await writer.drain()
        answer = await reader.read()
        writer.close()
        await writer.wait_closed()
    finally:
        await server.close()
    assert answer.startswith(b"HTTP/1.1 401")
    (line,) = out.getvalue().splitlines()
    assert line.isprintable() and "café" in line
    printed = json.loads(line)
    assert printed["verified"] is False
    assert printed["body"] == {"title": hostile}
    assert printed["delivery"] == "d\x9b2J\u202e"


async def test_a_body_nested_deeper_than_json_reads_is_shown_as_no_json() -> None:
    """Until 2026-12-07 a 200,000-deep array was a 500 and a RecursionError traceback."""
    out = io.StringIO()
    server = TestServer(make_receiver_app(["a-secret"], out=out), host="127.0.0.1")
    await server.start_server()
    deep = b"[" * 200_000 + b"]" * 200_000
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(server.make_url("/hook"), data=deep) as response:
                status = response.status
    finally:
        await server.close()
    assert status == 401  # unsigned: refused, as any
    (line,) = [json.loads(text) for text in out.getvalue().splitlines()]
    assert line["body"] is None and line["verified"] is False
