"""bridge.http.sender: one HTTP attempt through httpx.MockTransport, and how outcomes are
classed."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime

import httpx
import pytest

from bridge.contract.signing import sign, verify
from bridge.http.base import (
    USER_AGENT,
    AttemptResult,
    build_headers,
    is_success,
    status_class,
)
from bridge.http.httpx_sender import HttpxSender, new_client
from tests.support.clocks import Ticks
from tests.support.jobs import SPEC_EVENT, Outgoing, outgoing, spec_webhook

SECRET = "whsec_delivery-test-secret"
URL = "https://hooks.example/receive?x=1"
WALL = datetime(2024, 1, 15, 10, 30, 0, 250000, tzinfo=UTC)

Handler = Callable[[httpx.Request], Awaitable[httpx.Response] | httpx.Response]

EVENT = SPEC_EVENT
WEBHOOK = spec_webhook(URL, SECRET)


def make_delivery() -> Outgoing:
    return outgoing(EVENT, WEBHOOK)


class Recorder:
    """A MockTransport handler that records requests and answers with ``respond``."""

    def __init__(self, respond: Handler) -> None:
        self.requests: list[httpx.Request] = []
        self.bodies: list[bytes] = []
        self._respond = respond

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.bodies.append(await request.aread())
        result = self._respond(request)
        if isinstance(result, httpx.Response):
            return result
        return await result


async def send_with(
    respond: Handler, *, timeout: float = 5.0, any_2xx: bool = False
) -> tuple[AttemptResult, Recorder]:
    recorder = Recorder(respond)
    async with httpx.AsyncClient(transport=httpx.MockTransport(recorder)) as client:
        sender = HttpxSender(
            client, timeout=timeout, any_2xx=any_2xx, clock=Ticks(), wall_clock=lambda: WALL
        )
        result = await sender.send(*make_delivery())
    return result, recorder


def status(code: int, **kwargs: object) -> Handler:
    return lambda request: httpx.Response(code, **kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------- the request


async def test_sends_one_post_with_the_documented_headers() -> None:
    delivery = make_delivery()
    result, recorder = await send_with(status(200, text="OK"))
    assert result.success is True
    (request,) = recorder.requests
    assert request.method == "POST"
    assert str(request.url) == URL
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Webhook-Signature"] == sign(SECRET, delivery.body)
    assert request.headers["X-Webhook-Event"] == "post.published"
    assert request.headers["X-Webhook-Delivery"] == delivery.delivery_id
    assert request.headers.get_list("User-Agent") == ["Position-Webhooks/1.0"]
    assert request.headers.get_list("Content-Type") == ["application/json"]
    assert request.headers["Content-Length"] == str(len(delivery.body))


async def test_body_bytes_are_sent_unchanged_and_verify() -> None:
    delivery = make_delivery()
    _, recorder = await send_with(status(200))
    (body,) = recorder.bodies
    assert body == delivery.body
    assert verify(SECRET, body, recorder.requests[0].headers["X-Webhook-Signature"])


async def test_no_secret_in_headers_or_body() -> None:
    _, recorder = await send_with(status(200))
    request = recorder.requests[0]
    assert SECRET not in " ".join(f"{k}: {v}" for k, v in request.headers.items())
    assert SECRET.encode() not in recorder.bodies[0]


def test_build_headers_exactly() -> None:
    delivery = make_delivery()
    assert build_headers(*delivery) == {
        "Content-Type": "application/json",
        "X-Webhook-Signature": sign(SECRET, delivery.body),
        "X-Webhook-Event": "post.published",
        "X-Webhook-Delivery": delivery.delivery_id,
        "User-Agent": USER_AGENT,
    }
    assert USER_AGENT == "Position-Webhooks/1.0"


def test_job_repr_has_no_secret_url_or_body() -> None:
    delivery = make_delivery()
    text = repr(delivery.job)
    assert delivery.delivery_id in text
    assert SECRET not in text
    assert "hooks.example" not in text
    assert "post_123" not in text


# ------------------------------------------------------------------------- responses


async def test_200_is_success() -> None:
    result, _ = await send_with(status(200, text="OK"))
    assert result == AttemptResult(
        True, 200, None, 0.25, "2024-01-15T10:30:00.250Z", response_bytes=2
    )
    assert result.as_record() == {
        "at": "2024-01-15T10:30:00.250Z",
        "status": 200,
        "error": None,
        "duration_seconds": 0.25,
    }


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (201, "http_status"),
        (202, "http_status"),
        (204, "http_status"),
        (299, "http_status"),
        (301, "redirect"),
        (302, "redirect"),
        (304, "redirect"),
        (307, "redirect"),
        (308, "redirect"),
        (400, "http_status"),
        (401, "http_status"),
        (404, "http_status"),
        (429, "http_status"),
        (500, "http_status"),
        (503, "http_status"),
    ],
)
async def test_only_200_is_success(code: int, error: str) -> None:
    result, recorder = await send_with(status(code))
    assert (result.success, result.status, result.error) == (False, code, error)
    assert len(recorder.requests) == 1


@pytest.mark.parametrize("code", [200, 201, 202, 204, 299])
async def test_any_2xx_widens_success(code: int) -> None:
    result, _ = await send_with(status(code), any_2xx=True)
    assert (result.success, result.status, result.error) == (True, code, None)


@pytest.mark.parametrize(("code", "error"), [(301, "redirect"), (400, "http_status")])
async def test_any_2xx_still_fails_other_classes(code: int, error: str) -> None:
    result, _ = await send_with(status(code), any_2xx=True)
    assert (result.success, result.error) == (False, error)


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
async def test_redirects_are_not_followed(code: int) -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        if request.url.host == "elsewhere.example":
            return httpx.Response(200)
        return httpx.Response(code, headers={"Location": "https://elsewhere.example/ok"})

    result, recorder = await send_with(respond)
    assert len(recorder.requests) == 1
    assert recorder.requests[0].url.host == "hooks.example"
    assert (result.success, result.status, result.error) == (False, code, "redirect")


async def test_new_client_does_not_follow_redirects() -> None:
    client = new_client(timeout=30.0, max_connections=4)
    try:
        assert client.follow_redirects is False
        assert client.timeout == httpx.Timeout(30.0)
        assert client.trust_env is False
    finally:
        await client.aclose()


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (httpx.ReadTimeout("read timed out"), "timeout"),
        (httpx.ConnectTimeout("connect timed out"), "timeout"),
        (httpx.WriteTimeout("write timed out"), "timeout"),
        (httpx.PoolTimeout("pool timed out"), "timeout"),
        (httpx.ConnectError("connection refused"), "connect_error"),
        (httpx.RemoteProtocolError("server hung up"), "protocol_error"),
        (httpx.LocalProtocolError("bad request line"), "protocol_error"),
        (httpx.ReadError("connection reset"), "network_error"),
        (httpx.WriteError("broken pipe"), "network_error"),
    ],
)
async def test_transport_errors_are_classified(exc: Exception, error: str) -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        raise exc

    result, recorder = await send_with(respond)
    assert len(recorder.requests) == 1
    assert result == AttemptResult(False, None, error, 0.25, "2024-01-15T10:30:00.250Z")
    assert result.as_record()["status"] is None


async def test_tls_failure_is_tls_error() -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        try:
            raise ssl.SSLCertVerificationError("certificate verify failed")
        except ssl.SSLError as cause:
            raise httpx.ConnectError("tls handshake failed") from cause

    result, _ = await send_with(respond)
    assert (result.success, result.error) == (False, "tls_error")


async def test_slow_response_hits_the_whole_request_timeout() -> None:
    async def respond(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200)

    result, recorder = await asyncio.wait_for(send_with(respond, timeout=0.05), 5)
    assert len(recorder.requests) == 1
    assert (result.success, result.status, result.error) == (False, None, "timeout")


async def test_slow_body_after_200_headers_hits_the_timeout() -> None:
    # The timeout covers reading the response too: a 200 whose body never ends is no success.
    async def trickle() -> AsyncIterator[bytes]:
        yield b"O"
        await asyncio.sleep(30)
        yield b"K"

    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=trickle())

    result, _ = await asyncio.wait_for(send_with(respond, timeout=0.05), 5)
    assert (result.success, result.error) == (False, "timeout")


async def test_duration_uses_the_injected_clock() -> None:
    def clock() -> Iterator[float]:
        yield 10.0
        yield 12.75

    ticks = clock()
    async with httpx.AsyncClient(transport=httpx.MockTransport(status(200))) as client:
        sender = HttpxSender(client, timeout=5, clock=lambda: next(ticks), wall_clock=lambda: WALL)
        result = await sender.send(*make_delivery())
    assert result.duration == 2.75
    assert result.at == "2024-01-15T10:30:00.250Z"


# --------------------------------------------------------------------------- tables


@pytest.mark.parametrize(
    ("code", "any_2xx", "expected"),
    [
        (200, False, True),
        (201, False, False),
        (204, False, False),
        (299, False, False),
        (199, False, False),
        (301, False, False),
        (500, False, False),
        (200, True, True),
        (201, True, True),
        (204, True, True),
        (299, True, True),
        (199, True, False),
        (300, True, False),
        (404, True, False),
    ],
)
def test_is_success(code: int, any_2xx: bool, expected: bool) -> None:
    assert is_success(code, any_2xx=any_2xx) is expected


@pytest.mark.parametrize(
    ("code", "label"),
    [
        (None, "none"),
        (100, "1xx"),
        (199, "1xx"),
        (200, "2xx"),
        (204, "2xx"),
        (302, "3xx"),
        (404, "4xx"),
        (500, "5xx"),
        (599, "5xx"),
        (0, "other"),
        (99, "other"),
        (600, "other"),
        (999, "other"),
    ],
)
def test_status_class(code: int | None, label: str) -> None:
    assert status_class(code) == label
