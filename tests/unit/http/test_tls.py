"""bridge.http.tls: the endpoints' TLS context offers elliptic-curve key exchange only and
refuses renegotiation, so that no endpoint can choose a key exchange that costs the worker
a large share of a second per handshake."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from bridge.http import tls
from bridge.http.http1 import ConnectFailed, Http1Client, target_of
from bridge.http.ssrf import AddressPolicy
from tests.unit.http.test_senders import FakeResolver, self_signed

REQUEST = b"POST /h HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"


def test_the_context_offers_ecdhe_and_tls_13_suites_only_and_no_renegotiation() -> None:
    context = tls.ssl_context(True)
    assert context.options & ssl.OP_NO_RENEGOTIATION
    suites = context.get_ciphers()
    assert suites
    for suite in suites:
        if suite["protocol"] == "TLSv1.3":
            continue
        assert suite["kea"] == "kx-ecdhe", suite["name"]
        assert suite["aead"], suite["name"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_a_ca_bundle_context_is_hardened_too(tmp_path: Path) -> None:
    cert = self_signed(tmp_path, "hooks.test")
    context = tls.ssl_context(str(cert.cert_file))
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert {s["kea"] for s in context.get_ciphers() if s["protocol"] != "TLSv1.3"} == {"kx-ecdhe"}


def test_a_context_the_groups_cannot_be_set_on_is_said_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def unreachable(context: ssl.SSLContext, groups: str) -> None:
        raise RuntimeError("the SSL_CTX of an ssl.SSLContext was not found where expected")

    monkeypatch.setattr(tls, "_set_groups", unreachable)
    with caplog.at_level("WARNING", logger="bridge.http.tls"):
        context = tls.ssl_context(True)
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert "groups not limited" in caplog.text


async def _post(context: ssl.SSLContext, port: int) -> int:
    client = Http1Client(
        policy=AddressPolicy.from_setting("127.0.0.0/8"),
        ssl_context=context,
        resolver=FakeResolver(["127.0.0.1"]),
    )
    try:
        answer = await client.post(target_of(f"https://hooks.test:{port}/h"), REQUEST, 5.0)
    finally:
        await client.aclose()
    return answer[0]


async def test_a_server_offering_finite_field_groups_only_is_refused(tmp_path: Path) -> None:
    """A TLS 1.3 server that takes ffdhe2048 alone: OpenSSL's default client agrees to it (a
    HelloRetryRequest to ffdhe8192 cost 0.1 s of CPU a handshake); the endpoints' context does
    not offer it, and the handshake fails (tls_error)."""
    cert = self_signed(tmp_path, "hooks.test")
    server_context = cert.server_context
    server_context.minimum_version = ssl.TLSVersion.TLSv1_3
    tls._set_groups(server_context, "ffdhe2048")

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_context)
    port = int(server.sockets[0].getsockname()[1])
    try:
        # OpenSSL's defaults, trusting the certificate: the server works.
        plain = ssl.create_default_context(cafile=str(cert.cert_file))
        assert await _post(plain, port) == 200
        # Refused: an alert (ssl.SSLError), or, from this server, a close with none.
        with pytest.raises((ssl.SSLError, ConnectFailed)):
            await _post(tls.ssl_context(str(cert.cert_file)), port)
    finally:
        server.close()
        await server.wait_closed()
