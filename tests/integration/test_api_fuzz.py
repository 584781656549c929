"""Schemathesis fuzzes every ``/v1`` operation of a real worker (role ``all``, ``delivery_log``)
on the embedded broker, whose delivery log holds real attempts made to a real receiver (a
delivery that failed once, one dead-lettered, recoveries): no 5xx, every answer as the document
describes it (schemathesis's default checks but ``positive_data_acceptance``). And every
operation of the document refuses a request without a token, with a bad one, with a token
lacking its scope and with a token of another site.

Nothing leaves loopback, whatever the fuzzer makes up. The worker runs in this process, in a
thread with its own event loop (schemathesis calls synchronously), under a
:class:`~tests.support.loopback.LoopbackGuard` installed for the whole module: a lookup of any
name, or a connection to anything but 127.0.0.0/8 or ::1, is refused and fails the tests.
Generated webhook URLs never name another host: half of the generated bodies with a ``url``
get the receiver's, and before each request every other ``url`` is pointed at the receiver
(keeping the generated path and query), unless :meth:`WebhookUrl.parse` refuses it: the API
refuses those with that same parser before anything is stored, so they stay as generated, to be
answered ``400``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from bridge.admin.publish import publish_events
from bridge.admin.topics import apply_topics
from bridge.api.auth import hash_token
from bridge.api.openapi import openapi_document
from bridge.config import Settings
from bridge.contract.events import Event, build_event, format_timestamp
from bridge.contract.payload import delivery_id
from bridge.subscriptions.urls import InvalidUrl, WebhookUrl
from bridge.worker.web import MAX_HEADER_LINE, MAX_REQUEST_LINE
from tests.support.api import served_only
from tests.support.loopback import LoopbackGuard
from tests.support.receivers import Receiver, subscribe
from tests.support.waiting import eventually_sync, poll
from tests.support.workers import InProcessWorker

T = TypeVar("T")

WRITER = "wbt_fuzz-writer-0123456789abcdef0123456789abcdef"
READER = "wbt_fuzz-reader-0123456789abcdef0123456789abcdef"
WRITE_ONLY = "wbt_fuzz-write-only-0123456789abcdef0123456789ab"
SITE_2 = "wbt_fuzz-site-2-0123456789abcdef0123456789abcdef"
TOKENS = {
    "tokens": [
        {"name": "writer", "sha256": hash_token(WRITER), "scopes": ["read", "write"]},
        {"name": "reader", "sha256": hash_token(READER), "scopes": ["read"]},
        {"name": "write-only", "sha256": hash_token(WRITE_ONLY), "scopes": ["write"]},
        {
            "name": "site-2",
            "sha256": hash_token(SITE_2),
            "scopes": ["read", "write"],
            "site_id": "s2",
        },
    ]
}

#: Examples per operation and generation mode. Bounded whatever the hypothesis profile says:
#: every request reaches Kafka, and the file must stay well under 90 s on a loaded 2-core
#: machine; schemathesis's coverage phase adds its own cases (edges of every schema) on top.
FUZZ_EXAMPLES = 20

#: The webhooks the auth test reads and writes: site s1's (another site for the site token)
#: and site s2's (its own). The fuzzer is not given their ids, so it cannot change them.
THEIRS = "auth-site-1-hook"
MINE = "auth-site-2-hook"
#: The only webhooks the fuzzer's deletes are given (of a site no event is published to).
DOOMED = ["doomed-1", "doomed-2", "doomed-3"]
#: Every webhook of the deployment, by site: each one posts to its own path of the receiver.
SITES = {"wh": "s1", "dead": "s1", "other": "s2", THEIRS: "s1", MINE: "s2"} | dict.fromkeys(
    DOOMED, "s3"
)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class LoopThread:
    """An event loop in a thread of its own: the worker, the receiver and every asynchronous
    step of these tests run there, while schemathesis calls the worker from the test's thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="worker-loop")

    def __enter__(self) -> LoopThread:
        self._thread.start()
        return self

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def __exit__(self, *exc_info: object) -> None:
        async def finish() -> None:
            current = asyncio.current_task()
            left = [task for task in asyncio.all_tasks() if task is not current]
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        try:
            self.run(finish(), timeout=30.0)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(30.0)
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()


@dataclass
class Deployment:
    """The worker under test, its receiver, and the ids of what its delivery log holds."""

    worker: InProcessWorker
    receiver: Receiver
    guard: LoopbackGuard
    #: Ids the fuzzer's path parameters are also drawn from (besides the ones it makes up).
    known: dict[str, list[str]]
    #: Path parameters naming site s1's webhook, one of its deliveries and a recovery of it.
    theirs: dict[str, str]
    #: The same for site s2's webhook (the site token's own).
    mine: dict[str, str]

    @property
    def base_url(self) -> str:
        return self.worker.base_url


def post(site: str) -> Event:
    return build_event(
        "post.created", {"id": f"p-{site}", "title": "t"}, site_id=site, user_id="u1"
    )


async def _api(worker: InProcessWorker, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=worker.base_url, headers=auth(WRITER)) as client:
        return await client.request(method, path, timeout=30.0, **kwargs)


async def _recovered(worker: InProcessWorker, webhook_id: str, since: str) -> str:
    """The id of a finished recovery of ``webhook_id`` since ``since``."""
    started = await _api(
        worker, "POST", f"/v1/webhooks/{webhook_id}/recoveries", json={"since": since}
    )
    assert started.status_code == 202, started.text
    location = started.headers["Location"]
    shown = await poll(
        lambda: _api(worker, "GET", location),
        until=lambda r: r.json()["state"] != "running",
        timeout=30,
        interval=0.2,
    )
    assert shown.json()["state"] == "done", shown.text
    return str(shown.json()["id"])


async def _start(settings: Settings, receiver: Receiver, guard: LoopbackGuard) -> InProcessWorker:
    """The worker (built in this loop, which the guard must see), subscribed to ``receiver``."""
    loop = asyncio.get_running_loop()
    assert LoopbackGuard.covers(loop)
    # The guard is on in this loop (an IP literal: even unguarded, nothing would be looked up).
    with pytest.raises(OSError, match="loopback guard"):
        await loop.getaddrinfo("192.0.2.1", 80)
    assert guard.violations == ["lookup of '192.0.2.1' in an event loop"]
    guard.violations.clear()
    await apply_topics(settings)
    receiver.scripts["/wh"] = [500]  # fails once, then the retry succeeds
    receiver.statuses["/dead"] = 500  # fails every attempt: dead-lettered after the schedule
    await subscribe(settings, receiver, SITES, ("post.created",))
    return InProcessWorker(settings).start()


async def _seed(
    settings: Settings, worker: InProcessWorker, receiver: Receiver, guard: LoopbackGuard
) -> Deployment:
    """Deliveries made and kept in the delivery log, a dead letter, two finished recoveries."""
    await worker.wait_ready()
    # The recoveries below resend what was published since then (these topics are the test's).
    since = format_timestamp(datetime.now(UTC) - timedelta(minutes=1))
    events = [post("s1"), post("s2")]
    await publish_events(settings, events)
    counts = {"/wh": 2, "/dead": 3, "/other": 1, f"/{THEIRS}": 1, f"/{MINE}": 1}
    await receiver.wait_for(lambda _: all(len(receiver.at(p)) == n for p, n in counts.items()))
    assert [r.status for r in receiver.at("/wh")] == [500, 200]

    deliveries = {name: delivery_id(events[site == "s2"].id, name) for name, site in SITES.items()}
    for name, attempts in (("wh", 2), ("dead", 3), ("other", 1), (THEIRS, 1), (MINE, 1)):
        shown = await poll(
            lambda name=name: _api(worker, "GET", f"/v1/deliveries/{deliveries[name]}"),
            until=lambda r, n=attempts: r.status_code == 200 and len(r.json()["attempts"]) == n,
            timeout=30,
            interval=0.2,
        )
        assert shown.status_code == 200 and len(shown.json()["attempts"]) == attempts, shown.text
    dead = await poll(
        lambda: _api(worker, "GET", "/v1/dead-letters"),
        until=lambda r: r.status_code == 200 and len(r.json()["items"]) == 1,
        timeout=30,
        interval=0.2,
    )
    assert [d["webhook_id"] for d in dead.json()["items"]] == ["dead"], dead.text
    # Every replay re-enqueues every dead letter: were they to fail again, each replay the
    # fuzzer asks for would double them. From now on the endpoint accepts.
    receiver.statuses["/dead"] = 200

    theirs_recovery = await _recovered(worker, THEIRS, since)
    wh_recovery = await _recovered(worker, "wh", since)
    return Deployment(
        worker=worker,
        receiver=receiver,
        guard=guard,
        known={
            "webhook_id": ["wh", "dead", "other"],
            "delivery_id": [deliveries["wh"], deliveries["dead"], deliveries["other"]],
            "recovery_id": [wh_recovery],
        },
        theirs={
            "webhook_id": THEIRS,
            "delivery_id": deliveries[THEIRS],
            "recovery_id": theirs_recovery,
        },
        mine={"webhook_id": MINE, "delivery_id": deliveries[MINE]},
    )


@pytest.fixture(scope="module")
def deployment(
    make_module_settings: Callable[..., Settings], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    tokens = tmp_path_factory.mktemp("api") / "tokens.json"
    tokens.write_text(json.dumps(TOKENS))
    # Unlimited: the fuzzer's requests, one token's as fast as they are answered, each reach the
    # handlers (the rate limit's 429 is tested in tests/unit/api/test_ratelimit.py).
    settings = make_module_settings(
        role="all", delivery_log=True, api_tokens=str(tokens), api_rate_limit=0.0
    )
    with LoopbackGuard() as guard, LoopThread() as thread:
        receiver = thread.run(Receiver().start())
        worker: InProcessWorker | None = None
        try:
            worker = thread.run(_start(settings, receiver, guard))
            deployed = thread.run(_seed(settings, worker, receiver, guard))
            TARGETS.ids, TARGETS.doomed, TARGETS.receiver = deployed.known, DOOMED, receiver
            yield deployed
        finally:
            TARGETS.ids, TARGETS.doomed, TARGETS.receiver = {}, [], None
            if worker is not None:
                thread.run(worker.stop())
            thread.run(receiver.stop())
    # Deliveries made after the last test (a test event, a replay) were guarded as well.
    assert guard.violations == []


def fetch_document(deployment: Deployment) -> dict[str, Any]:
    response = httpx.get(deployment.base_url + "/v1/openapi.json", timeout=30.0)
    assert response.status_code == 200, response.text
    return served_only(response.json())


schema = schemathesis.openapi.from_dict(served_only(openapi_document()))
# Invalid data may also be refused for its size before it is judged: a string past its
# maxLength of characters that JSON writes as escapes can pass the body limit
# (bridge.api.problems.DEFAULT_MAX_BODY_BYTES), answered 413, as documented.
schema.config.checks.negative_data_rejection.expected_statuses = [
    *schema.config.checks.negative_data_rejection.expected_statuses,
    "413",
]


@dataclass
class Targets:
    """What the fuzzer's hooks draw from besides what they make up, so that requests also
    reach webhooks, attempts and recoveries that exist, and webhooks get valid URLs (of the
    receiver): filled by the ``deployment`` fixture."""

    ids: dict[str, list[str]] = field(default_factory=dict)
    #: Webhooks DELETE /v1/webhooks/{webhook_id} draws from instead, so the others stay.
    doomed: list[str] = field(default_factory=list)
    receiver: Receiver | None = None


TARGETS = Targets()


@schema.hook
def flatmap_path_parameters(
    context: schemathesis.HookContext, parameters: dict[str, Any] | None
) -> st.SearchStrategy[dict[str, Any] | None]:
    ids = dict(TARGETS.ids)
    operation = context.operation
    if operation is not None and (operation.method.upper(), operation.path) == (
        "DELETE",
        "/v1/webhooks/{webhook_id}",
    ):
        ids["webhook_id"] = TARGETS.doomed
    # Only a valid generated id is replaced (every path id is 1 to 200 characters): an invalid
    # one belongs to a negative case, which must stay invalid.
    names = [
        name
        for name, value in (parameters or {}).items()
        if ids.get(name) and isinstance(value, str) and 0 < len(value) <= 200
    ]
    if parameters is None or not names:
        return st.just(parameters)
    (name,) = names
    known = st.sampled_from(ids[name]).map(lambda value: {**parameters, name: value})
    return st.one_of(st.just(parameters), known)


@schema.hook
def flatmap_body(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
    # A generated string is rarely a valid URL: without this, few webhooks would be created.
    if TARGETS.receiver is None or not (
        isinstance(body, dict) and isinstance(body.get("url"), str)
    ):
        return st.just(body)
    return st.one_of(st.just(body), st.just({**body, "url": TARGETS.receiver.url("/fuzzed")}))


@schema.hook
def filter_query(context: schemathesis.HookContext, query: dict[str, Any] | None) -> bool:
    # A negative case whose only fault is an unknown parameter with an empty list of values is
    # sent without that parameter (no value, no name): a valid request, rightly answered 200.
    if any(value == [] for value in (query or {}).values()):
        return False
    # A request line beyond the worker's limit is refused by its HTTP layer before /v1 sees it
    # (plain-text 400, docs/api.md); the document holds below it (the margin: the path and the
    # percent-encoding of what urlencode leaves as it is).
    return len(urlencode(query or {}, doseq=True)) < MAX_REQUEST_LINE // 2


@schema.hook
def filter_headers(context: schemathesis.HookContext, headers: dict[str, Any] | None) -> bool:
    # As for the request line: a header line beyond the worker's limit never reaches /v1.
    return all(len(f"{k}: {v}") < MAX_HEADER_LINE // 2 for k, v in (headers or {}).items())


def test_the_worker_serves_the_fuzzed_document(deployment: Deployment) -> None:
    assert fetch_document(deployment) == served_only(openapi_document())


def confine_urls(value: Any, receiver: Receiver) -> None:
    """Point every ``url`` in a generated body at ``receiver``, keeping its path and query;
    a URL that :meth:`WebhookUrl.parse` refuses stays: the API refuses it with that parser
    before storing anything, so nothing is ever sent to it."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "url" and isinstance(item, str):
                try:
                    value[key] = receiver.url(WebhookUrl.parse(item).target)
                except InvalidUrl:
                    pass
            else:
                confine_urls(item, receiver)
    elif isinstance(value, list):
        for item in value:
            confine_urls(item, receiver)


# The worker, in this process, uses the random module from its own thread: Hypothesis, which
# compares the module's state before and after each draw, takes that for a strategy using it.
@pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)
@schema.parametrize()
@settings(max_examples=FUZZ_EXAMPLES, suppress_health_check=list(HealthCheck), deadline=None)
def test_no_operation_fails_or_answers_outside_its_document(
    case: schemathesis.Case, deployment: Deployment
) -> None:
    # Schema-valid is not always acceptable, so that check is left out (as over the in-memory
    # fakes, tests/unit/api/test_fuzz.py): a cursor is opaque, a URL a string WebhookUrl judges.
    confine_urls(case.body, deployment.receiver)
    case.call_and_validate(
        base_url=deployment.base_url,
        headers=auth(WRITER),
        excluded_checks=[schemathesis.checks.positive_data_acceptance],
    )
    assert deployment.guard.violations == []


#: Valid bodies, so that what refuses a request is its token (not its body).
BODIES: dict[str, Any] = {
    "updateWebhook": {"name": "renamed"},
    "rotateWebhookSecret": {},
    "sendTestEvent": {},
    "startRecovery": {"since": "2020-01-01T00:00:00Z"},
    "replayDeadLetters": {},
}


#: Operations whose request (a filter, a body) names site s1: another site's token is refused
#: them (403 naming the field). Any other is answered as for an id that names nothing (404).
NAMES_THE_SITE = frozenset({"listWebhooks", "createWebhook"})


#: Operations that read nothing of any site's (the event types): any token with the scope reads
#: them, a site's token too.
SITE_FREE = frozenset({"listEventTypes"})


def elsewhere(operation: dict[str, Any], path: str, deployment: Deployment) -> dict[str, Any]:
    """``httpx`` arguments of a request that touches site s1's webhook, for a site s2 token."""
    if "{" in path:
        return {
            "url": path.format(**deployment.theirs),
            "json": BODIES.get(operation["operationId"]),
        }
    theirs = deployment.theirs["webhook_id"]
    requests = {
        "listWebhooks": {"params": {"site_id": "s1"}},
        "createWebhook": {
            "json": {"url": deployment.receiver.url("/x"), "events": ["*"], "site_id": "s1"}
        },
        "listDeadLetters": {"params": {"webhook_id": theirs}},
        "replayDeadLetters": {"json": {"webhook_id": theirs}},
        "listEventTypes": {},
    }
    if operation["operationId"] not in requests:
        pytest.fail(f"no request of site s1's for {operation['operationId']}: add one here")
    return {"url": path, **requests[operation["operationId"]]}


def refused(response: httpx.Response, status: int, label: str) -> dict[str, Any]:
    assert response.status_code == status, (label, response.status_code, response.text)
    assert response.headers["Content-Type"].startswith("application/problem+json"), label
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status, (label, problem)
    return problem


def test_every_operation_refuses_missing_bad_and_insufficient_tokens(
    deployment: Deployment,
) -> None:
    document = fetch_document(deployment)
    operations = [
        (method, path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method != "parameters"
    ]
    public = [(method, path) for method, path, operation in operations if not operation["security"]]
    assert public == [("get", "/v1/openapi.json")]
    bad = [
        auth("wbt_not-a-token-0123456789abcdef0123456789abcdef"),
        {"Authorization": "Basic d3JpdGVyOnNlY3JldA=="},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {WRITER}x"},
    ]
    with httpx.Client(base_url=deployment.base_url, timeout=30.0) as client:
        for method, path, operation in operations:
            if not operation["security"]:
                continue
            label = f"{method.upper()} {path}"
            (requirement,) = operation["security"]
            (scope,) = requirement["bearer"]
            request = elsewhere(operation, path, deployment)
            missing = client.request(method, **request)
            refused(missing, 401, label)
            assert missing.headers["WWW-Authenticate"] == 'Bearer realm="webhook-bridge"', label
            for headers in bad:
                refused(client.request(method, **request, headers=headers), 401, label)
            lacking = READER if scope == "write" else WRITE_ONLY
            response = client.request(method, **request, headers=auth(lacking))
            refused(response, 403, label)
            assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"], label
            response = client.request(method, **request, headers=auth(SITE_2))
            if operation["operationId"] in SITE_FREE:
                assert response.status_code == 200, (label, response.text)
                continue
            if operation["operationId"] in NAMES_THE_SITE:
                problem = refused(response, 403, f"{label} with another site's token")
                reasons = [e["reason"] for e in problem["errors"]]
                assert reasons == ["out_of_scope"], (label, problem)
                continue
            # Site s1's webhook, delivery or recovery is, to site s2, one that does not exist.
            problem = refused(response, 404, f"{label} with another site's token")
            assert "errors" not in problem, (label, problem)

        # The site token does read its own site's: the refusals above are about the site.
        mine = deployment.mine
        for path in (
            "/v1/webhooks/{webhook_id}",
            "/v1/webhooks/{webhook_id}/attempts",
            "/v1/webhooks/{webhook_id}/stats",
            "/v1/deliveries/{delivery_id}",
        ):
            response = client.get(path.format(**mine), headers=auth(SITE_2))
            assert response.status_code == 200, (path, response.text)
        listed = client.get("/v1/webhooks", headers=auth(SITE_2)).json()["items"]
        # (The fuzzer may have made webhooks of site s2 too, or deleted "other".)
        assert MINE in {w["id"] for w in listed}
        assert {w["site_id"] for w in listed} == {"s2"}
    assert deployment.guard.violations == []


def test_the_guard_refuses_what_the_worker_would_send_elsewhere(deployment: Deployment) -> None:
    """A webhook whose host is a name (under .invalid, which never resolves) gets a test event:
    each attempt of the worker's is refused by the guard before any lookup. The webhook is
    deleted once its delivery is dead-lettered, so a replay would drop it, whatever ran after."""
    guard = deployment.guard
    assert guard.violations == []
    with httpx.Client(base_url=deployment.base_url, headers=auth(WRITER), timeout=30.0) as client:
        body = {
            "id": "probe",
            "url": "http://guard-probe.invalid/hook",
            "events": ["post.created"],
            "site_id": "s4",
            "user_id": "u4",
        }
        assert client.post("/v1/webhooks", json=body).status_code == 201
        sent = client.post("/v1/webhooks/probe/test", json={})
        assert sent.status_code == 202, sent.text
        path = f"/v1/deliveries/{delivery_id(sent.json()['event_id'], 'probe')}"

        last: list[Any] = []

        def ended() -> dict[str, Any] | None:
            response = client.get(path)
            shown: dict[str, Any] = response.json()
            last[:] = [response.status_code, shown, list(guard.violations)]
            return shown if response.status_code == 200 and shown["state"] != "retrying" else None

        delivery = eventually_sync(
            ended, timeout=60.0, interval=0.2, message=lambda: f"last answer and lookups: {last}"
        )
        assert client.delete("/v1/webhooks/probe").status_code == 204
    assert delivery["state"] == "dead_lettered", delivery
    assert {a["outcome"] for a in delivery["attempts"]} == {"failure"}
    refused = "lookup of 'guard-probe.invalid' by c-ares"
    assert guard.violations == [refused] * len(delivery["attempts"])
    guard.violations.clear()
