"""bridge.cli.api_client: what --api-url does when it cannot get an answer (one line, no token),
and how it sends a request again (503s, lost answers: a POST with the same Idempotency-Key)."""

from __future__ import annotations

import httpx
import pytest

from bridge.cli.api_client import ApiClient
from bridge.errors import ConfigError
from bridge.worker.embedded import free_port


def test_a_url_without_a_token_is_refused() -> None:
    with pytest.raises(ConfigError, match="BRIDGE_API_TOKEN"):
        ApiClient("http://127.0.0.1:1", None)


def test_an_api_that_does_not_answer_is_one_line_without_the_token() -> None:
    token = "wbt_never-printed-0123456789"
    with ApiClient(
        f"http://127.0.0.1:{free_port()}", token, timeout=2.0, retry_for=0.5, sleep=lambda s: None
    ) as client:
        with pytest.raises(ConfigError) as caught:
            client.get("/v1/webhooks")
    assert "did not answer" in str(caught.value)
    assert token not in str(caught.value) and "\n" not in str(caught.value)


class Flaky:
    """A transport answering from a script: a status (with Retry-After), or an error raised."""

    def __init__(self, *script: int | Exception) -> None:
        self.script = list(script)
        self.sent: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        if step == 503:
            return httpx.Response(503, headers={"Retry-After": "30"}, json={"title": "t"})
        return httpx.Response(step, json={"id": "r1", "state": "running"})


def client_of(flaky: Flaky, slept: list[float], retry_for: float = 60.0) -> ApiClient:
    return ApiClient(
        "http://api.test",
        "wbt_t",
        retry_for=retry_for,
        transport=httpx.MockTransport(flaky),
        sleep=slept.append,
    )


def test_a_post_is_sent_again_after_503s_and_a_lost_answer_with_one_key() -> None:
    flaky = Flaky(503, httpx.ReadError("lost"), 503, 202)
    slept: list[float] = []
    with client_of(flaky, slept) as client:
        assert client.post("/v1/webhooks/wh/recoveries", {"since": "x"}) == {
            "id": "r1",
            "state": "running",
        }
    keys = {r.headers["Idempotency-Key"] for r in flaky.sent}
    assert len(flaky.sent) == 4 and len(keys) == 1
    assert slept == [5.0, 1.0, 5.0]  # Retry-After, at most 5 s; 1 s after no answer
    # Another request is another key.
    flaky = Flaky(202)
    with client_of(flaky, []) as client:
        client.post("/v1/webhooks/wh/recoveries", {"since": "x"})
    assert flaky.sent[0].headers["Idempotency-Key"] not in keys


def test_a_read_is_sent_again_after_a_503_without_a_key() -> None:
    flaky = Flaky(503, 200)
    with client_of(flaky, []) as client:
        client.get("/v1/webhooks/wh/stats")
    assert len(flaky.sent) == 2 and "Idempotency-Key" not in flaky.sent[0].headers


def test_it_gives_up_when_its_time_is_over() -> None:
    with client_of(Flaky(503), [], retry_for=0.0) as client:
        with pytest.raises(ConfigError, match="answered 503"):
            client.get("/v1/webhooks")
    with client_of(Flaky(httpx.ConnectError("refused")), [], retry_for=0.0) as client:
        with pytest.raises(ConfigError, match="did not answer: ConnectError"):
            client.get("/v1/webhooks")
    # An error no second try mends is not tried again.
    flaky = Flaky(httpx.UnsupportedProtocol("no"))
    with client_of(flaky, []) as client:
        with pytest.raises(ConfigError, match="UnsupportedProtocol"):
            client.get("/v1/webhooks")
    assert len(flaky.sent) == 1
