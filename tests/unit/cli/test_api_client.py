"""bridge.cli.api_client: what --api-url does when it cannot get an answer (one line, no token),
and how it sends a request again (503s, lost answers: a POST with the same Idempotency-Key)."""

from __future__ import annotations

import httpx
import pytest

from bridge.cli.api_client import MAX_ANSWER_BYTES, ApiClient
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


# -- answers that are not the API's: one line each ------------------------------------------------


def answering(response: httpx.Response) -> ApiClient:
    return ApiClient(
        "http://api.test",
        "wbt_t",
        retry_for=0.0,
        transport=httpx.MockTransport(lambda request: response),
        sleep=lambda s: None,
    )


@pytest.mark.parametrize(
    ("response", "said"),
    [
        (httpx.Response(200, text="<html>hi</html>"), "answered 200 with something not JSON"),
        (
            httpx.Response(302, headers={"Location": "https://elsewhere.example/"}),
            "a redirect, not followed",
        ),
        (httpx.Response(400, json=[1, 2]), "answered 400: Bad Request"),
        (httpx.Response(404, json="gone"), "answered 404: Not Found"),
        (httpx.Response(409, json={"title": "Conflict", "detail": 7}), "answered 409: Conflict: 7"),
        (
            httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=b"\x1f\x8b"),
            "in an encoding not asked for",
        ),
        (httpx.Response(200, content=b" " * (MAX_ANSWER_BYTES + 1)), "over 16 MiB"),
    ],
    ids=["html", "redirect", "list-problem", "text-problem", "number-detail", "gzip", "huge"],
)
def test_an_answer_that_is_not_the_apis_is_one_line(response: httpx.Response, said: str) -> None:
    with answering(response) as client:
        with pytest.raises(ConfigError) as caught:
            client.get("/v1/webhooks/wh/stats")
    assert said in str(caught.value) and "wbt_t" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "token", "said"),
    [
        ("http://[::1", "wbt_t", "--api-url is not a URL"),
        ("http://127.0.0.1:1", "wbt_tökén", "not one: printable ASCII"),
        ("http://127.0.0.1:1", "wbt t", "not one: printable ASCII"),
        ("http://127.0.0.1:1", "", "not one: printable ASCII"),
    ],
)
def test_settings_it_cannot_use_are_one_line(url: str, token: str, said: str) -> None:
    with pytest.raises(ConfigError, match=said) as caught:
        ApiClient(url, token)
    assert "ökén" not in str(caught.value)


def test_a_cursor_given_again_ends_the_reading() -> None:
    asked: list[httpx.Request] = []

    def again(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        return httpx.Response(200, json={"items": [{"id": "r"}], "next_cursor": "same"})

    client = ApiClient("http://api.test", "wbt_t", transport=httpx.MockTransport(again))
    with client, pytest.raises(ConfigError, match="a cursor it had given before"):
        client.pages("/v1/webhooks/wh/recoveries", {"limit": "100"})
    assert len(asked) == 2


def test_an_answer_dribbled_past_the_timeout_ends_at_it() -> None:
    """A server sending its answer a byte every 0.2 s: httpx's timeout is per read, and the
    command waited for ever (until 2026-12-07); it ends once ``timeout`` has passed."""
    import socket
    import threading
    import time

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            while not stop.wait(0.2):
                try:
                    conn.sendall(b" ")
                except OSError:
                    return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    began = time.monotonic()
    try:
        with ApiClient(f"http://127.0.0.1:{port}", "wbt_t", timeout=1.0, retry_for=0.0) as client:
            with pytest.raises(ConfigError, match="took over 1s"):
                client.get("/v1/webhooks/wh/stats")
    finally:
        stop.set()
        thread.join(5)
        server.close()
    assert time.monotonic() - began < 5.0


class Following:
    """A recovery's views as the API gives them, one a poll: a view (a dict), a status, or an
    error raised; the clock moves by what the client sleeps."""

    def __init__(self, *script: dict | int | Exception) -> None:
        self.script = list(script)
        self.now = 0.0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, Exception):
            raise step
        if isinstance(step, int):
            return httpx.Response(step, headers={"Retry-After": "1"}, json={"title": "t"})
        return httpx.Response(200, json=step)

    def client(self) -> ApiClient:
        def sleep(seconds: float) -> None:
            self.now += seconds

        return ApiClient(
            "http://api.test",
            "wbt_t",
            transport=httpx.MockTransport(self),
            sleep=sleep,
            clock=lambda: self.now,
        )


def view(state: str, enqueued: int) -> dict:
    return {"id": "r1", "state": state, "enqueued": enqueued}


def test_a_recovery_is_followed_through_a_workers_restart_to_its_end() -> None:
    """No answer for 60 s, then 503s (a rebalance): until 2026-12-07 the command ended within
    10 s, the recovery running on (it was resumed, and ended done), its id never shown."""
    down = [httpx.ConnectError("refused")] * 60
    following = Following(*down, 503, 503, view("running", 3), view("done", 5))
    with following.client() as client:
        assert client.finished(view("running", 1)) == view("done", 5)
    assert following.now >= 60


def test_a_long_recovery_is_followed_while_it_moves() -> None:
    """Until 2026-12-07 one followed for more than 3,600 s was given up on, moving or not."""
    moving = [view("running", n) for n in range(1, 20_000)]
    following = Following(*moving, view("done", 20_000))
    with following.client() as client:
        assert client.finished(view("running", 0)) == view("done", 20_000)
    assert following.now > 3600


def test_following_ends_when_nothing_changes_and_says_the_recovery_goes_on() -> None:
    following = Following(view("running", 2))
    with following.client() as client, pytest.raises(ConfigError) as caught:
        client.finished(view("running", 2), patience=30)
    assert "recovery r1 still running, no change seen for 30 s; it goes on" in str(caught.value)
    assert 30 < following.now < 32
    gone = Following(httpx.ConnectError("refused"))
    with gone.client() as client, pytest.raises(ConfigError) as caught:
        client.finished(view("running", 2), patience=30)
    assert "recovery r1 may still be running (the API did not answer" in str(caught.value)
    assert "webhooks recoveries WEBHOOK_ID" in str(caught.value)
