"""Problem details: their shape, reading bodies (size, media type, strict JSON), the middleware."""

from __future__ import annotations

import asyncio
import gc
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from bridge.api.metrics import ApiMetrics
from bridge.api.problems import (
    PROBE_PATHS,
    PROBLEM_JSON,
    PROBLEM_TITLES,
    PROBLEM_TYPE_PREFIX,
    REFUSED_RETRY_AFTER,
    FieldError,
    Problem,
    Unwinding,
    problem_middleware,
    read_json_object,
)
from tests.support.waiting import eventually

LIMIT = 1024


async def echo(request: web.Request) -> web.Response:
    return web.json_response(await read_json_object(request, max_bytes=LIMIT))


async def boom(request: web.Request) -> web.Response:
    raise RuntimeError("a bug with a secret in its message: s3cr3t")


async def broker_failed(request: web.Request) -> web.Response:
    raise KafkaError("Unexpected error during batch delivery")


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(10)
    return web.Response()


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    app = web.Application(middlewares=[problem_middleware(0.2)], client_max_size=LIMIT)
    app.router.add_post("/echo", echo)
    app.router.add_get("/boom", boom)
    app.router.add_get("/boom/{rest}", boom)
    app.router.add_get("/slow", slow)
    app.router.add_post("/broker", broker_failed)
    test_client = TestClient(TestServer(app))
    await test_client.start_server()
    try:
        yield test_client
    finally:
        await test_client.close()


def test_a_problem_is_rfc_9457_with_field_errors() -> None:
    problem = Problem.invalid(
        FieldError("url", "invalid_url", "no host"), FieldError("limit", "range", "1..200", "query")
    )
    assert problem.to_dict() == {
        "type": PROBLEM_TYPE_PREFIX + "validation_failed",
        "title": PROBLEM_TITLES["validation_failed"][1],
        "status": 400,
        "detail": "invalid: limit, url",
        "errors": [
            {"field": "url", "in": "body", "reason": "invalid_url", "detail": "no host"},
            {"field": "limit", "in": "query", "reason": "range", "detail": "1..200"},
        ],
    }
    assert "errors" not in Problem("not_found", "no such webhook").to_dict()


async def problem_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM_JSON
    body: dict[str, Any] = await response.json(content_type=PROBLEM_JSON)
    assert body["status"] == status and body["type"].startswith(PROBLEM_TYPE_PREFIX)
    return body


async def test_a_json_object_is_read(client: TestClient[Any, Any]) -> None:
    response = await client.post("/echo", data=b'{"a": [1, 2.5, "\\u00e9"]}',
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    assert await response.json() == {"a": [1, 2.5, "é"]}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{", "malformed_json"),
        (b"", "malformed_json"),
        (b'{"a": NaN}', "malformed_json"),
        (b'{"a": 1e999}', "malformed_json"),
        (b'{"a": "\\ud800"}', "invalid_text"),
        (b'{"a": 9007199254740993}', "unsafe_integer"),
        (b'{"a": "\xff"}', "malformed_json"),
    ],
)
async def test_what_is_not_strict_json_is_a_400_saying_why(
    client: TestClient[Any, Any], body: bytes, reason: str
) -> None:
    response = await client.post("/echo", data=body, headers={"Content-Type": "application/json"})
    problem = await problem_of(response, 400)
    assert problem["type"].endswith("malformed_json")
    assert problem["detail"].startswith(reason)


async def test_a_body_that_is_not_an_object_names_the_body(client: TestClient[Any, Any]) -> None:
    response = await client.post("/echo", data=b"[1]", headers={"Content-Type": "application/json"})
    problem = await problem_of(response, 400)
    assert problem["errors"] == [{"field": "", "in": "body", "reason": "type",
                                  "detail": "the body must be a JSON object"}]  # fmt: skip


async def test_other_media_types_are_a_415(client: TestClient[Any, Any]) -> None:
    response = await client.post("/echo", data=b"{}", headers={"Content-Type": "text/plain"})
    problem = await problem_of(response, 415)
    assert problem["errors"][0]["field"] == "Content-Type"
    response = await client.post(
        "/echo", data=b"{}", headers={"Content-Type": "application/merge-patch+json"}
    )
    assert response.status == 200


async def test_too_large_bodies_are_a_413_declared_or_chunked(client: TestClient[Any, Any]) -> None:
    big = b'{"a": "' + b"x" * LIMIT + b'"}'
    response = await client.post("/echo", data=big, headers={"Content-Type": "application/json"})
    await problem_of(response, 413)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b" " * (LIMIT // 2)

    response = await client.post(
        "/echo", data=chunks(), headers={"Content-Type": "application/json"}
    )
    await problem_of(response, 413)


async def test_unknown_routes_and_methods_are_problems(client: TestClient[Any, Any]) -> None:
    await problem_of(await client.get("/nowhere"), 404)
    response = await client.get("/echo")
    await problem_of(response, 405)
    assert response.headers["Allow"] == "POST"


async def test_an_unknown_route_or_method_is_not_quoted(client: TestClient[Any, Any]) -> None:
    """A token pasted into a path is not answered back, in a 404 or a 405 (until 2026-12-06
    the detail was the method and path)."""
    token = "wbt_pasted-into-the-path-0123456789abcdef"
    response = await client.get(f"/v1/webhooks/wh_1/{token}")
    assert token not in await response.text()
    await problem_of(response, 404)
    response = await client.put(f"/echo?{token}")
    assert token not in await response.text()
    await problem_of(response, 405)


async def test_a_bug_is_a_500_without_its_message(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    problem = await problem_of(await client.get("/boom"), 500)
    assert "s3cr3t" not in str(problem)
    assert "internal error answering GET /boom" in caplog.text
    token = "wbt_pasted-into-the-path-0123456789abcdef"
    await problem_of(await client.get(f"/boom/{token}"), 500)
    assert "internal error answering GET /boom/{rest}" in caplog.text
    assert token not in caplog.text  # the route's template, not the path (until 2026-12-06)


async def test_a_slow_request_is_a_503_with_retry_after(client: TestClient[Any, Any]) -> None:
    response = await client.get("/slow")
    await problem_of(response, 503)
    assert response.headers["Retry-After"] == "1"


async def test_a_request_is_answered_at_its_timeout_however_long_its_handler_unwinds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Until 2026-12-07 the 503 waited for the cancelled handler to end: one stopping a Kafka
    client against a broker that did not answer was answered 5 s past the timeout. Its
    cancellation goes on after the answer, and what it raises then is logged."""
    released = asyncio.Event()
    unwound: list[str] = []

    async def stubborn(request: web.Request) -> web.Response:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await released.wait()  # as a client's shielded stop against a hung broker
            unwound.append("done")
            raise RuntimeError("failed as it stopped") from None
        return web.Response()

    app = web.Application(middlewares=[problem_middleware(0.2)])
    app.router.add_get("/stubborn", stubborn)
    async with TestClient(TestServer(app)) as client:
        response = await asyncio.wait_for(client.get("/stubborn"), timeout=5.0)
        assert (await problem_of(response, 503))["type"].endswith("timeout")
        assert response.headers["Retry-After"] == "1"
        assert unwound == []  # answered while the handler still unwinds
        released.set()
        await eventually(lambda: "failed after its timeout" in caplog.text)
        assert unwound == ["done"]
        assert "RuntimeError" in caplog.text


async def test_a_handler_failing_at_once_as_it_is_cancelled_at_its_timeout_is_a_503(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler cancelled at its timeout that fails within the grace is answered as timed
    out and its failure logged: until 2026-12-07 its failure was the answer (a 500)."""

    async def failing(request: web.Request) -> web.Response:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise RuntimeError("failed as it stopped") from None
        return web.Response()

    app = web.Application(middlewares=[problem_middleware(0.2)])
    app.router.add_get("/failing", failing)
    async with TestClient(TestServer(app)) as client:
        response = await asyncio.wait_for(client.get("/failing"), timeout=5.0)
        assert (await problem_of(response, 503))["type"].endswith("timeout")
        assert "failed after its timeout" in caplog.text and "RuntimeError" in caplog.text


async def test_a_handler_failing_as_its_request_is_cancelled_is_logged_not_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The request's own task cancelled (the server stopping): the handler is cancelled and
    waited for, and what it raised then is logged; until 2026-12-07 asyncio reported it as a
    task exception never retrieved."""
    entered = asyncio.Event()
    unretrieved: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: unretrieved.append(context))

    async def failing(request: web.Request) -> web.Response:
        entered.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise RuntimeError("failed as it stopped") from None
        return web.Response()

    middleware = problem_middleware(5.0)
    request = make_mocked_request("GET", "/failing")
    answering = asyncio.ensure_future(middleware(request, failing))
    await entered.wait()
    answering.cancel()
    with pytest.raises(asyncio.CancelledError):
        await answering
    gc.collect()
    await asyncio.sleep(0)
    assert unretrieved == []
    assert "RuntimeError" in caplog.text


async def test_a_broker_that_failed_is_a_503_to_retry_not_a_500(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Until 2026-12-06 a write the broker failed (a link cut as the producer sent it) was
    answered 500, as a bug: the client could not tell it should retry."""
    response = await client.post("/broker")
    problem = await problem_of(response, 503)
    assert problem["type"].endswith("unavailable")
    assert "read it first" in problem["detail"]
    assert response.headers["Retry-After"] == "1"
    assert "the broker failed answering POST /broker: KafkaError" in caplog.text
    assert "Traceback" not in caplog.text


class Stubborn:
    """Handlers that, cancelled at their timeout, go on until released (as a Kafka client's stop
    against a broker that does not answer), each by its ``?n=``; and handlers that answer at
    once, each call noted."""

    def __init__(self) -> None:
        self.releases: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.entered: list[str] = []
        self.called: list[str] = []

    async def hang(self, request: web.Request) -> web.Response:
        n = request.query["n"]
        self.entered.append(n)
        try:
            await asyncio.Event().wait()  # only the timeout ends it
        except asyncio.CancelledError:
            await self.releases[n].wait()
            raise
        return web.Response()

    async def answer(self, request: web.Request) -> web.Response:
        self.called.append(request.path)
        return web.Response(text="answered")


def stubborn_app(stubborn: Stubborn, unwinding: Unwinding) -> web.Application:
    app = web.Application(middlewares=[problem_middleware(0.2, unwinding)])
    app.router.add_get("/hang", stubborn.hang)
    app.router.add_get("/answer", stubborn.answer)
    for path in sorted(PROBE_PATHS):
        app.router.add_get(path, stubborn.answer)
    return app


async def test_requests_still_unwinding_at_the_limit_refuse_new_ones_until_half_are_done(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Until 2026-12-07 every request against a broker that did not answer left its handler
    unwinding (a Kafka client open) after its 503, without bound, and nothing exported how
    many. At the limit a request is answered 503 at once, its handler not run, the probes and
    the scrape still answered, until they are down to half of it; logged once each way."""
    registry = CollectorRegistry()
    unwinding = Unwinding(limit=4, gauge=ApiMetrics(registry).unwinding)
    stubborn = Stubborn()

    def gauge() -> float | None:
        return registry.get_sample_value("webhook_bridge_api_unwinding_requests")

    async with TestClient(TestServer(stubborn_app(stubborn, unwinding))) as client:
        assert gauge() == 0
        for n in range(3):
            response = await client.get("/hang", params={"n": str(n)})
            assert (await problem_of(response, 503))["type"].endswith("timeout")
            assert gauge() == n + 1
        assert unwinding.readiness() == (True, "")
        response = await client.get("/hang", params={"n": "3"})
        assert (await problem_of(response, 503))["type"].endswith("timeout")
        assert gauge() == 4 and unwinding.refusing

        for path in ("/answer", "/hang?n=4", "/v1/anything"):
            response = await client.get(path)
            problem = await problem_of(response, 503)
            assert problem["type"].endswith("unavailable")
            assert response.headers["Retry-After"] == str(REFUSED_RETRY_AFTER)
        assert stubborn.called == [] and stubborn.entered == ["0", "1", "2", "3"]
        for path in sorted(PROBE_PATHS):
            assert (await client.get(path)).status == 200
        assert stubborn.called == sorted(PROBE_PATHS)
        ready, why = unwinding.readiness()
        assert not ready and "4 API requests still unwinding" in why
        assert caplog.text.count("refusing new ones (503)") == 1

        stubborn.releases["0"].set()
        await eventually(lambda: gauge() == 3)
        assert unwinding.refusing  # one ended: the broker may still hang
        assert (await client.get("/answer")).status == 503
        stubborn.releases["1"].set()
        await eventually(lambda: gauge() == 2)
        assert not unwinding.refusing and unwinding.readiness() == (True, "")
        assert caplog.text.count("answering again (4 refused meanwhile)") == 1
        response = await client.get("/answer")
        assert response.status == 200 and await response.text() == "answered"

        stubborn.releases["2"].set()
        stubborn.releases["3"].set()
        await eventually(lambda: gauge() == 0)
        assert len(unwinding) == 0
    assert caplog.text.count("refusing new ones (503)") == 1
    assert caplog.text.count("answering again") == 1


async def test_the_limit_is_reached_again_after_it_cleared(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A limit of 1: each handler left unwinding refuses the next requests until it ends."""
    unwinding = Unwinding(limit=1)
    stubborn = Stubborn()
    async with TestClient(TestServer(stubborn_app(stubborn, unwinding))) as client:
        for n in ("a", "b"):
            response = await client.get("/hang", params={"n": n})
            assert (await problem_of(response, 503))["type"].endswith("timeout")
            assert unwinding.refusing and len(unwinding) == 1
            assert (await client.get("/hang", params={"n": "never"})).status == 503
            stubborn.releases[n].set()
            await eventually(lambda: not unwinding.refusing)
            assert len(unwinding) == 0
    assert "never" not in stubborn.entered
    assert caplog.text.count("refusing new ones (503)") == 2
    assert caplog.text.count("answering again (1 refused meanwhile)") == 2


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Unwinding(limit=0)


async def test_problem_answers_leave_no_reference_cycles() -> None:
    """Refusals through the whole ``/v1`` stack (metrics, problems, routes) leave nothing for the
    collector: until 2026-12-07 each was a reference cycle of some 30 objects (the handler's
    task held by the frame re-raising its error, which held the frame; a problem kept in the
    frame raising it), so a flood of 401s made full collections pause the loop 120-220 ms every
    few seconds. (An unknown route's or method's 404 and 405 are aiohttp's own cycles of a few
    objects, its match info and route, left out here.)"""
    from bridge.api.app import ApiConfig, create_app
    from bridge.api.auth import TokenSet
    from bridge.api.repository import MemoryRepository
    from bridge.api.service import WebhookService
    from tests.unit.api.conftest import (
        ADMIN,
        READER,
        TOKENS,
        Clock,
        Published,
        control_service,
    )

    def app(rate: float) -> web.Application:
        service = WebhookService(MemoryRepository(), publisher=Published(), clock=Clock())
        return create_app(
            service,
            control_service(MemoryRepository()),
            TokenSet.from_mapping(TOKENS),
            config=ApiConfig(rate_limit=rate),
            metrics=ApiMetrics(CollectorRegistry()),
        )

    json_headers = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"}
    reader = {"Authorization": f"Bearer {READER}"}
    cases = [
        ("GET", "/v1/webhooks", {}, None, 401),
        ("POST", "/v1/webhooks", reader, b"{}", 403),
        ("POST", "/v1/webhooks", json_headers, b'{"url": 1', 400),
        ("POST", "/v1/webhooks", json_headers, b'{"url": 1}', 400),
        ("POST", "/v1/webhooks", json_headers, b"x" * 20_000, 413),
        ("GET", "/v1/webhooks?cursor=nope", reader, None, 400),
        ("GET", "/v1/webhooks/nope", reader, None, 404),
        ("GET", "/v1/webhooks/nope", reader, None, 429),  # at 0.5 a second: over after one
    ]
    for method, path, headers, body, status in cases:
        async with TestClient(TestServer(app(0.5 if status == 429 else 0.0))) as client:
            for warm in (True, False):
                if not warm:
                    gc.collect()
                    gc.disable()
                try:
                    for _ in range(5 if warm else 40):
                        response = await client.request(method, path, headers=headers, data=body)
                        await response.read()
                    assert response.status == status, (path, await response.text())
                    if not warm:
                        assert gc.collect() == 0, (method, path, status)
                finally:
                    gc.enable()


async def test_a_body_is_parsed_once_and_not_encoded_again(
    client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A middleware and the route reading the body get one parse of it (a worker's creation
    was parsed twice until 2026-12-07), and what the topic's records cannot carry is found as
    the body is read, not by encoding the whole value again (which took longer than reading
    it): ``dumps`` runs only for a body it refuses, to name where."""
    from bridge.api import problems
    from bridge.contract import jsoncanon

    parsed: list[bytes | str] = []
    encoded: list[object] = []
    real_loads, real_dumps = jsoncanon.loads_encodable, jsoncanon.dumps

    def loads_counted(data: bytes | str) -> object:
        parsed.append(data)
        return real_loads(data)

    def dumps_counted(value: object, **kwargs: Any) -> bytes:
        encoded.append(value)
        return real_dumps(value, **kwargs)

    monkeypatch.setattr(jsoncanon, "loads_encodable", loads_counted)
    monkeypatch.setattr(jsoncanon, "dumps", dumps_counted)

    async def twice(request: web.Request) -> web.Response:
        first = await problems.read_json(request, max_bytes=LIMIT)
        second = await read_json_object(request, max_bytes=LIMIT)
        assert first is second
        return web.Response(text="read")

    async def refused_twice(request: web.Request) -> web.Response:
        details = []
        for _ in range(2):
            with pytest.raises(Problem) as refused:
                await read_json_object(request, max_bytes=LIMIT)
            details.append(refused.value.detail)
        assert details[0] == details[1]
        return web.Response(text=details[0])

    app = web.Application(middlewares=[problem_middleware(5.0)])
    app.router.add_post("/twice", twice)
    app.router.add_post("/refused", refused_twice)
    headers = {"Content-Type": "application/json"}
    async with TestClient(TestServer(app)) as twice_client:
        body = b'{"events": [' + b"1234567890123," * 50 + b'0], "n": 9007199254740991}'
        response = await twice_client.post("/twice", data=body, headers=headers)
        assert response.status == 200, await response.text()
        assert len(parsed) == 1 and encoded == []
        response = await twice_client.post(
            "/refused", data=b'{"a": [0, {"b": 9007199254740993}]}', headers=headers
        )
        assert response.status == 200
        assert await response.text() == (
            "unsafe_integer: integer beyond +/-(2**53 - 1) (send a string) at $.a[1].b"
        )
        assert len(parsed) == 2 and len(encoded) == 1  # once, to name where


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 9007199254740991, "b": -9007199254740991}',
        '{"a": 9007199254740992}',  # JavaScript's rendering of a double: read as that double
        '{"a": 1152921504606847000}',
        '{"a": 9007199254740993}',
        '{"a": -9007199254740993}',
        '{"a": [1, 2, {"b": 12345678901234567890}]}',
        '{"a": ' * 128 + "[" * 128 + "]" * 128 + "}" * 128,  # 256 levels, mixed
        '{"a": ' * 128 + "[" * 129 + "]" * 129 + "}" * 128,  # 257
        '[{"a": ' * 128 + "0" + "}]" * 128,
        '[{"a": ' * 128 + "[]" + "}]" * 128,
        '{"a": "9007199254740993", "b": 0.9007199254740993}',
        '{"a": 1' + "0" * 400 + "}",
        "[" * 256 + "]" * 256,
        "[" * 257 + "]" * 257,
        '{"a": ' + "[" * 256 + "]" * 256 + "}",
        '{"a": "' + "[" * 300 + '", "b": [' + "{}," * 300 + "{}]}",
        '{"a": "\\"[[[", "b": ' + "{" * 257 + "}" * 257 + "}",
        "[" * 300 + "9007199254740993" + "]" * 300,
        "[9007199254740993, " + "[" * 300 + "]" * 300 + "]",
        '{"a": "\\ud800"}',
        "[1e999]",
    ],
)
def test_the_body_is_refused_as_encoding_it_again_refused_it(text: str) -> None:
    """``loads_encodable`` answers what ``loads`` then ``dumps`` answered (the value, or the
    same error naming the same place), however the check is made now."""
    from bridge.contract import jsoncanon
    from bridge.errors import InvalidRecord

    def before(data: str) -> tuple[str, str] | object:
        try:
            value = jsoncanon.loads(data)
            jsoncanon.dumps(value)
        except InvalidRecord as exc:
            return (exc.reason, exc.detail)
        return value

    def now(data: str) -> tuple[str, str] | object:
        try:
            return jsoncanon.loads_encodable(data)
        except InvalidRecord as exc:
            return (exc.reason, exc.detail)

    for data in (text, text.encode("utf-8", "surrogatepass")):
        if isinstance(data, bytes) and b"\\ud800" not in data and b"\xed" in data:
            continue
        assert repr(now(data)) == repr(before(data))  # repr: an int is not its float
