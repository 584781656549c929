"""``Idempotency-Key``: a change sent again is made at most once and answers what it made.

The examples name each promise of docs/api.md ("Idempotency keys"); the state machine at the end
sends generated changes, with keys drawn from a small pool and repeats of earlier requests, while
other clients change the webhook and the clock moves, and holds the API to them.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from bridge.api.app import ApiConfig, create_app
from bridge.api.auth import TokenSet, hash_token
from bridge.api.control import ControlService
from bridge.api.idempotency import (
    HEADER,
    KEY_LIFETIME,
    MAX_KEY_LENGTH,
    MAX_KEYS_PER_WEBHOOK,
    RECORD_FIELD,
    REPLAYED_HEADER,
    IdempotencyKey,
)
from bridge.api.problems import PROBLEM_TYPE_PREFIX, Problem
from bridge.api.recoveries import Recoveries
from bridge.api.repository import MemoryRepository
from bridge.api.service import WebhookService
from bridge.subscriptions.webhook import webhook_from_record
from tests.support.journals import Journal
from tests.support.keyed import made_twice
from tests.support.waiting import eventually
from tests.unit.api.conftest import (
    ADMIN,
    NOW,
    SITE_1,
    TOKENS,
    WRITER,
    Api,
    Clock,
    MemoryActivity,
    MemoryDeadLetters,
    Published,
    Runner,
    attempt,
    auth,
    control_service,
)

BODY = {"url": "https://example.com/h", "events": ["*"], "site_id": "site_1"}


def keyed(key: str, token: str = ADMIN) -> dict[str, str]:
    return {**auth(token), HEADER: key}


async def answer(response: Any) -> tuple[int, Any, Any]:
    return response.status, response.headers, await response.json()


async def version(api: Api, webhook_id: str = "wh_1") -> str:
    got = await api.client.get(f"/v1/webhooks/{webhook_id}", headers=auth())
    assert got.status == 200
    return str((await got.json())["version"])


def reason(body: dict[str, Any]) -> tuple[str, str, str]:
    (error,) = body["errors"]
    return body["type"].removeprefix(PROBLEM_TYPE_PREFIX), error["field"], error["reason"]


# --- the header itself ---


@pytest.mark.parametrize("value", ["", "k" * (MAX_KEY_LENGTH + 1), "caf\u00e9", "a\tb", "a\x7fb"])
def test_a_key_that_is_not_1_to_255_printable_ascii_characters_is_refused(value: str) -> None:
    with pytest.raises(Problem) as refused:
        IdempotencyKey.of(value, "admin")
    (error,) = refused.value.errors
    assert (error.field, error.location, error.reason) == (
        HEADER,
        "header",
        "invalid_idempotency_key",
    )


def test_a_key_is_the_token_s_own_and_is_never_kept_as_sent() -> None:
    mine = IdempotencyKey.of("k-1", "admin")
    assert mine is not None and IdempotencyKey.of(None, "admin") is None
    assert mine == IdempotencyKey.of("k-1", "admin") != IdempotencyKey.of("k-1", "writer")
    assert "k-1" not in mine.digest and mine.webhook_id() != mine.request("P", "wh", {}).event_id()
    assert IdempotencyKey.of("k" * MAX_KEY_LENGTH, "admin") is not None


async def test_an_invalid_key_is_400_naming_the_header_and_changes_nothing(api: Api) -> None:
    await api.create(id="wh_1", **BODY)
    before = await version(api)
    status, _, body = await answer(
        await api.client.patch("/v1/webhooks/wh_1", json={"name": "x"}, headers=keyed("\u00e9"))
    )
    assert status == 400 and body["errors"][0]["field"] == HEADER
    assert await version(api) == before


async def test_two_keys_in_one_request_are_400_and_change_nothing(api: Api) -> None:
    await api.create(id="wh_1", **BODY)
    before = await version(api)
    headers = [*auth().items(), (HEADER, "k-1"), (HEADER, "k-2")]
    status, _, body = await answer(
        await api.client.patch("/v1/webhooks/wh_1", json={"name": "x"}, headers=headers)
    )
    assert (status, reason(body)) == (400, ("validation_failed", HEADER, "repeated"))
    assert await version(api) == before


# --- PATCH ---


async def test_a_patch_sent_again_is_made_once_even_after_another_change(api: Api) -> None:
    """The first was made and its answer lost; someone else changed the webhook; the repeat
    (with the If-Match it first sent, stale now) answers the webhook as it is, replayed, and
    changes nothing."""
    created = await api.create(id="wh_1", **BODY)
    sent = {
        "json": {"name": "mine"},
        "headers": {**keyed("k-1"), "If-Match": f'"{created["version"]}"'},
    }
    first = await api.client.patch("/v1/webhooks/wh_1", **sent)
    assert first.status == 200 and REPLAYED_HEADER not in first.headers
    other = await api.client.patch("/v1/webhooks/wh_1", json={"rate_limit": 5}, headers=auth())
    assert other.status == 200
    now = await version(api)
    status, headers, body = await answer(await api.client.patch("/v1/webhooks/wh_1", **sent))
    assert (status, headers[REPLAYED_HEADER]) == (200, "true")
    assert (body["name"], body["rate_limit"], body["version"]) == ("mine", 5, now)
    assert headers["ETag"] == f'"{now}"' and await version(api) == now


async def test_a_key_used_again_for_another_change_is_422_and_changes_nothing(api: Api) -> None:
    await api.create(id="wh_1", **BODY)
    await api.create(id="wh_2", **BODY)
    assert (
        await api.client.patch("/v1/webhooks/wh_1", json={"name": "a"}, headers=keyed("k"))
    ).status == 200
    before = await version(api)
    for path, change in (
        ("/v1/webhooks/wh_1", {"name": "b"}),
        ("/v1/webhooks/wh_1", {"name": "a", "active": False}),
    ):
        status, _, body = await answer(
            await api.client.patch(path, json=change, headers=keyed("k"))
        )
        assert (status, reason(body)) == (422, ("idempotency_key_reused", HEADER, "reused"))
    assert await version(api) == before
    # Another webhook keeps keys of its own; another token's same key is another key.
    assert (
        await api.client.patch("/v1/webhooks/wh_2", json={"name": "b"}, headers=keyed("k"))
    ).status == 200
    again = await api.client.patch(
        "/v1/webhooks/wh_1", json={"name": "c"}, headers=keyed("k", WRITER)
    )
    assert again.status == 200 and REPLAYED_HEADER not in again.headers


async def test_a_key_is_honoured_for_a_day_then_makes_the_change_again(api: Api) -> None:
    await api.create(id="wh_1", **BODY)
    sent = {"json": {"active": False}, "headers": keyed("k")}
    assert (await api.client.patch("/v1/webhooks/wh_1", **sent)).status == 200
    await api.client.patch("/v1/webhooks/wh_1", json={"active": True}, headers=auth())
    api.clock.now += timedelta(seconds=KEY_LIFETIME - 60)
    replayed = await api.client.patch("/v1/webhooks/wh_1", **sent)
    assert REPLAYED_HEADER in replayed.headers and (await replayed.json())["active"] is True
    api.clock.now += timedelta(seconds=120)
    made = await api.client.patch("/v1/webhooks/wh_1", **sent)
    assert REPLAYED_HEADER not in made.headers and (await made.json())["active"] is False


async def test_expired_keys_leave_the_record_at_its_next_change(api: Api) -> None:
    await api.create(id="wh_1", **BODY)
    for key in ("k1", "k2"):
        await api.client.patch("/v1/webhooks/wh_1", json={"name": key}, headers=keyed(key))
    api.clock.now += timedelta(seconds=KEY_LIFETIME / 2)
    await api.client.patch("/v1/webhooks/wh_1", json={"name": "k3"}, headers=keyed("k3"))
    api.clock.now += timedelta(seconds=KEY_LIFETIME / 2 + 60)
    await api.client.patch("/v1/webhooks/wh_1", json={"name": "n"}, headers=auth())
    record = (await api.repository.get("wh_1")).to_record()  # type: ignore[union-attr]
    assert [e.split(" ")[0] for e in record[RECORD_FIELD]] == [
        IdempotencyKey.of("k3", "admin", hash_token(ADMIN)).digest  # type: ignore[union-attr]
    ]
    api.clock.now += timedelta(seconds=KEY_LIFETIME)
    await api.client.post("/v1/webhooks/wh_1/rotate-secret", headers=auth())
    record = (await api.repository.get("wh_1")).to_record()  # type: ignore[union-attr]
    assert RECORD_FIELD not in record


async def test_a_webhook_remembers_its_last_keyed_changes_only(api: Api) -> None:
    await api.create(id="wh_1", **BODY)
    for n in range(MAX_KEYS_PER_WEBHOOK + 1):
        assert (
            await api.client.patch(
                "/v1/webhooks/wh_1", json={"name": f"n{n}"}, headers=keyed(f"k{n}")
            )
        ).status == 200
    record = (await api.repository.get("wh_1")).to_record()  # type: ignore[union-attr]
    assert len(record[RECORD_FIELD]) == MAX_KEYS_PER_WEBHOOK
    last = await api.client.patch(
        "/v1/webhooks/wh_1",
        json={"name": f"n{MAX_KEYS_PER_WEBHOOK}"},
        headers=keyed(f"k{MAX_KEYS_PER_WEBHOOK}"),
    )
    assert REPLAYED_HEADER in last.headers
    first = await api.client.patch("/v1/webhooks/wh_1", json={"name": "n0"}, headers=keyed("k0"))
    assert REPLAYED_HEADER not in first.headers  # forgotten: made again


@pytest.mark.parametrize(
    "junk",
    [
        "not a list",
        [1, None, "x", {"key": 1}, "a b not-a-time", "a b c d", ["k r t"]],
        [{"key": "k", "request": "r", "at": "2026-01-15T09:30:00.000Z"}],
    ],
)
async def test_keys_in_a_record_someone_else_wrote_are_read_with_care(api: Api, junk: Any) -> None:
    """The topic is written by others too: whatever they put in the field, a keyed change is
    answered (no 500), and the entries it writes are well-formed."""
    await api.create(id="wh_1", **BODY)
    current = await api.repository.get("wh_1")
    assert current is not None
    await api.repository.put(webhook_from_record({**current.to_record(), RECORD_FIELD: junk}))
    for _ in range(2):
        response = await api.client.patch(
            "/v1/webhooks/wh_1", json={"name": "x"}, headers=keyed("k")
        )
        assert response.status == 200
    record = (await api.repository.get("wh_1")).to_record()  # type: ignore[union-attr]
    assert len(record[RECORD_FIELD]) == 1 and len(record[RECORD_FIELD][0].split(" ")) == 3


# --- rotation ---


async def test_a_rotation_sent_again_answers_the_secret_it_made_not_a_second_one(api: Api) -> None:
    await api.create(id="wh_1", **BODY, standard_webhooks=True)  # (an overlap needs it)
    sent = {"json": {"overlap_seconds": 3600}, "headers": keyed("rot-1")}
    status, headers, first = await answer(
        await api.client.post("/v1/webhooks/wh_1/rotate-secret", **sent)
    )
    assert status == 200 and REPLAYED_HEADER not in headers
    status, headers, again = await answer(
        await api.client.post("/v1/webhooks/wh_1/rotate-secret", **sent)
    )
    assert (status, headers[REPLAYED_HEADER], headers["Cache-Control"]) == (200, "true", "no-store")
    assert again["secret"] == first["secret"] and again["version"] == first["version"]
    stored = await api.repository.get("wh_1")
    assert stored is not None and stored.secret == first["secret"]
    # The secret before the first rotation is the one still valid beside it.
    assert stored.previous_secret is not None and stored.previous_secret != first["secret"]


async def test_a_rotation_sent_again_after_another_change_is_409_and_shows_no_secret(
    api: Api,
) -> None:
    await api.create(id="wh_1", **BODY)
    sent = {"headers": keyed("rot-1")}
    assert (await api.client.post("/v1/webhooks/wh_1/rotate-secret", **sent)).status == 200
    await api.client.patch("/v1/webhooks/wh_1", json={"name": "x"}, headers=auth())
    before = await version(api)
    status, _, body = await answer(await api.client.post("/v1/webhooks/wh_1/rotate-secret", **sent))
    assert (status, reason(body)) == (409, ("conflict", HEADER, "changed_since"))
    assert "secret" not in body and await version(api) == before


async def test_a_rotation_sent_again_with_another_secret_is_422(api: Api) -> None:
    """A secret counts by presence in the key's request digest (it is kept next to the
    record's secret, which may be encrypted); the one sent again is compared instead."""
    await api.create(id="wh_1", **BODY)
    sent = {"json": {"secret": "a" * 32}, "headers": keyed("rot-1")}
    assert (await api.client.post("/v1/webhooks/wh_1/rotate-secret", **sent)).status == 200
    assert (await api.client.post("/v1/webhooks/wh_1/rotate-secret", **sent)).status == 200
    other = {"json": {"secret": "b" * 32}, "headers": keyed("rot-1")}
    status, _, body = await answer(
        await api.client.post("/v1/webhooks/wh_1/rotate-secret", **other)
    )
    assert (status, reason(body)) == (422, ("idempotency_key_reused", HEADER, "reused"))
    stored = await api.repository.get("wh_1")
    assert stored is not None and stored.secret == "a" * 32
    record = stored.to_record()
    assert "a" * 32 not in str(record[RECORD_FIELD])


# --- create and test events ---


async def test_a_create_with_a_key_and_no_id_is_made_once(api: Api) -> None:
    first = await api.client.post("/v1/webhooks", json=BODY, headers=keyed("c-1"))
    assert first.status == 201
    made = await first.json()
    status, headers, again = await answer(
        await api.client.post("/v1/webhooks", json=BODY, headers=keyed("c-1"))
    )
    assert (status, headers[REPLAYED_HEADER]) == (200, "true")
    assert again["id"] == made["id"] and again["secret"] == made["secret"]
    assert len(await api.repository.scan(after=None, limit=10, where=lambda w: True)) == 1
    status, _, body = await answer(
        await api.client.post("/v1/webhooks", json={**BODY, "name": "other"}, headers=keyed("c-1"))
    )
    assert (status, reason(body)) == (422, ("idempotency_key_reused", HEADER, "reused"))
    # Another token's key of the same text makes its own webhook.
    theirs = await api.client.post("/v1/webhooks", json=BODY, headers=keyed("c-1", SITE_1))
    assert theirs.status == 201 and (await theirs.json())["id"] != made["id"]


async def test_a_created_webhook_changed_since_is_replayed_without_its_secret(api: Api) -> None:
    first = await api.client.post("/v1/webhooks", json=BODY, headers=keyed("c-1"))
    made = await first.json()
    await api.client.post(f"/v1/webhooks/{made['id']}/rotate-secret", headers=auth())
    status, headers, again = await answer(
        await api.client.post("/v1/webhooks", json=BODY, headers=keyed("c-1"))
    )
    assert (status, headers[REPLAYED_HEADER]) == (200, "true") and "secret" not in again


async def test_a_test_event_sent_again_is_the_same_event(api: Api) -> None:
    await api.create(id="wh_1", **BODY, user_id="user_1")
    answers = []
    for key, message in (("t-1", ""), ("t-1", ""), ("t-2", ""), ("t-1", "other")):
        response = await api.client.post(
            "/v1/webhooks/wh_1/test", json={"message": message}, headers=keyed(key)
        )
        assert response.status == 202
        answers.append(await response.json())
    # The same key and request: the same event; another key, or another request: another.
    assert answers[0] == answers[1]
    assert len({a["delivery_id"] for a in answers[1:]}) == 3
    assert [e.id for e in api.published.events] == [a["event_id"] for a in answers]


# --- generated: changes, repeats, other clients and time ---


class KeyedChanges(RuleBasedStateMachine):
    """One webhook; keyed changes with keys from a small pool (so keys are reused for other
    requests), repeats of requests sent before, unkeyed changes by another client, and the
    clock moving by hours.

    Promises held: a repeat never changes the webhook, and answers ``200`` replayed (a rotation
    with the secret it made, or ``409`` when the webhook changed since) while its key is kept
    (within a day, among the last ten keyed changes); a kept key sent with another request is
    ``422`` and changes nothing; a key not kept makes the change."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = Clock()
        self.repository = MemoryRepository()
        service = WebhookService(self.repository, publisher=Published(), clock=self.clock)
        tokens = TokenSet.from_mapping(TOKENS)
        app = create_app(service, control_service(self.repository), tokens, config=ApiConfig())

        async def start() -> TestClient[Any, Any]:
            client: TestClient[Any, Any] = TestClient(TestServer(app))
            await client.start_server()
            return client

        self.client = self.loop.run_until_complete(start())
        #: (token, key) -> (request, when made, the number of keyed changes made before it).
        self.kept: dict[tuple[str, str], tuple[tuple[str, str], float, int]] = {}
        self.keyed_changes = 0
        #: Every keyed request sent and answered 200, with its answer's secret (rotations).
        self.sent: list[tuple[str, str, tuple[str, str], str | None]] = []
        self.changes = 0
        self.last_version = ""

    def teardown(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()

    def call(
        self, method: str, path: str, body: Any, headers: dict[str, str]
    ) -> tuple[int, Any, Any]:
        async def go() -> tuple[int, Any, Any]:
            response = await self.client.request(method, path, json=body, headers=headers)
            return response.status, response.headers, await response.json()

        status, headers_, answered = self.loop.run_until_complete(go())
        assert status < 500, answered
        return status, headers_, answered

    def current(self) -> Any:
        webhook = self.loop.run_until_complete(self.repository.get("wh_1"))
        assert webhook is not None
        return webhook

    @initialize()
    def create(self) -> None:
        # Standard Webhooks headers: the one header that carries a rotation's previous secret.
        created = {"id": "wh_1", **BODY, "standard_webhooks": True}
        status, _, body = self.call("POST", "/v1/webhooks", created, auth())
        assert status == 201
        self.last_version = body["version"]

    def kept_now(self, who: tuple[str, str]) -> tuple[tuple[str, str], float, int] | None:
        entry = self.kept.get(who)
        if entry is None:
            return None
        _, when, before = entry
        if self.clock.now.timestamp() - when > KEY_LIFETIME:
            return None
        if self.keyed_changes - before > MAX_KEYS_PER_WEBHOOK:
            return None
        return entry

    def send(self, token: str, key: str, request: tuple[str, str]) -> None:
        kind, value = request
        method, path = (
            ("PATCH", "/v1/webhooks/wh_1")
            if kind == "name"
            else ("POST", "/v1/webhooks/wh_1/rotate-secret")
        )
        body = {"name": value} if kind == "name" else {"overlap_seconds": int(value)}
        before = self.current()
        entry = self.kept_now((token, key))
        status, headers, answered = self.call(method, path, body, keyed(key, token))
        after = self.current()
        if entry is None:
            if (
                kind == "secret"
                and int(value) > 0
                and len(before.signing_secrets(self.clock.now)) > 1
            ):
                # One previous secret is kept: another overlap while one runs is refused.
                assert (status, reason(answered)) == (
                    409,
                    ("conflict", "overlap_seconds", "overlap_running"),
                )
                assert after.to_record() == before.to_record()
                return
            assert status == 200 and REPLAYED_HEADER not in headers, answered
            assert after.updated_at != before.updated_at
            self.keyed_changes += 1
            self.kept[(token, key)] = (request, self.clock.now.timestamp(), self.keyed_changes - 1)
            self.sent.append((token, key, request, answered.get("secret")))
            return
        assert after.to_record() == before.to_record(), "a repeat changed the webhook"
        made_request = entry[0]
        if made_request != request:
            assert (status, reason(answered)[0]) == (422, "idempotency_key_reused"), answered
            return
        if kind == "secret" and status == 409:
            assert reason(answered) == ("conflict", HEADER, "changed_since")
            return
        assert (status, headers[REPLAYED_HEADER]) == (200, "true"), answered
        if kind == "secret":
            first = next(
                s for t, k, r, s in reversed(self.sent) if (t, k, r) == (token, key, request)
            )
            assert answered["secret"] == first == after.secret

    @rule(
        token=st.sampled_from([ADMIN, WRITER]),
        key=st.sampled_from(["a", "b", "c"]),
        request=st.tuples(st.just("name"), st.sampled_from(["x", "y"]))
        | st.tuples(st.just("secret"), st.sampled_from(["0", "60"])),
    )
    def keyed_change(self, token: str, key: str, request: tuple[str, str]) -> None:
        self.send(token, key, request)

    @rule(data=st.data())
    def repeat(self, data: st.DataObject) -> None:
        if self.sent:
            token, key, request, _ = data.draw(st.sampled_from(self.sent))
            self.send(token, key, request)

    @rule(n=st.integers(0, 1000))
    def fresh_keyed_change(self, n: int) -> None:
        """Enough keys to push the pool's out of the webhook's last ten."""
        self.send(ADMIN, f"fresh-{n}-{self.keyed_changes}", ("name", f"f{n}"))

    @rule(name=st.sampled_from(["x", "z"]))
    def another_client_changes_it(self, name: str) -> None:
        status, _, _ = self.call("PATCH", "/v1/webhooks/wh_1", {"name": name}, auth())
        assert status == 200

    @rule(hours=st.sampled_from([1, 6, 23]))
    def time_passes(self, hours: int) -> None:
        # Seven seconds more each time: a key's age is then never within seconds of its
        # lifetime (1 + 23 hours), where the model, which does not know the millisecond the
        # API stamped it with, would guess either way.
        self.clock.now += timedelta(hours=hours, seconds=7)

    @invariant()
    def the_record_keeps_at_most_ten_keys(self) -> None:
        record = self.current().to_record()
        assert len(record.get(RECORD_FIELD, [])) <= MAX_KEYS_PER_WEBHOOK


TestKeyedChanges = KeyedChanges.TestCase
TestKeyedChanges.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --- recoveries and redeliveries ---


async def test_a_recovery_sent_again_is_the_one_it_started(api: Api) -> None:
    """Its id is made from the key: the same request answers that recovery (202, replayed)
    whatever state it is in, and nothing new starts; another request with the key is 422."""
    await api.create(id="wh_1", **BODY)
    body = {"since": "2026-01-15T09:00:00Z", "rate": 5}
    path = "/v1/webhooks/wh_1/recoveries"
    first = await api.client.post(path, json=body, headers=keyed("r-1"))
    assert first.status == 202 and REPLAYED_HEADER not in first.headers
    started = await first.json()
    await api.client.patch("/v1/webhooks/wh_1", json={"active": False}, headers=auth())
    status, headers, again = await answer(
        await api.client.post(path, json=body, headers=keyed("r-1"))
    )
    assert (status, headers[REPLAYED_HEADER]) == (202, "true")
    assert again["id"] == started["id"] and headers["Location"] == first.headers["Location"]
    await eventually(lambda: len(api.runner.ran) == 1)
    assert [o.id for o in api.runner.ran] == [started["id"]]  # one recovery, run once
    other = {**body, "rate": 6}
    status, _, problem_body = await answer(
        await api.client.post(path, json=other, headers=keyed("r-1"))
    )
    assert (status, reason(problem_body)) == (422, ("idempotency_key_reused", HEADER, "reused"))
    # Another key, or no key: another recovery (here refused: the webhook is off now).
    assert (await api.client.post(path, json=body, headers=keyed("r-2"))).status == 409


async def test_a_redelivery_sent_again_is_the_one_it_started(api: Api) -> None:
    await api.create(id="wh_1", **BODY)
    api.activity.add(attempt("d1", 1, at=NOW - 300), attempt("d1", 2, at=NOW - 200))
    path = "/v1/deliveries/d1/redeliver"
    first = await api.client.post(path, headers=keyed("rd-1"))
    assert first.status == 202
    again = await api.client.post(path, headers=keyed("rd-1"))
    assert again.status == 202 and again.headers[REPLAYED_HEADER] == "true"
    assert (await again.json())["id"] == (await first.json())["id"]
    fresh = await api.client.post(path, headers=keyed("rd-2"))
    assert fresh.status == 202 and (await fresh.json())["id"] != (await first.json())["id"]
    await eventually(lambda: len(api.runner.ran) == 2)
    for _ in range(20):  # a third would have started by now
        await asyncio.sleep(0)
    assert sorted(o.id for o in api.runner.ran) == sorted(
        [(await first.json())["id"], (await fresh.json())["id"]]
    )


class _SlowJournal(Journal):
    """A journal whose writes and reads wait for the broker, as the recoveries topic's do."""

    async def write(self, record: dict[str, Any]) -> None:
        await asyncio.sleep(0.01)
        await super().write(record)

    async def read(self, operation_id: str) -> dict[str, Any] | None:
        await asyncio.sleep(0.005)
        return await super().read(operation_id)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/webhooks/wh_1/recoveries", {"since": "2026-01-15T09:00:00Z"}),
        ("/v1/deliveries/d1/redeliver", None),
        ("/v1/deliveries/d1/redeliver?webhook_id=wh_1", None),
    ],
)
async def test_one_key_sent_twice_at_once_to_the_owner_starts_one_operation(
    tokens: TokenSet, path: str, body: dict[str, Any] | None
) -> None:
    """Two requests with one key at the same moment, at the worker that starts them: each looks
    for the key's operation while the other is being recorded (neither in the journal yet); one
    starts it, the other answers it replayed, and the runner runs it once."""
    repository = MemoryRepository()
    runner = Runner(hold=True)
    control = ControlService(
        repository,
        activity := MemoryActivity(),
        Recoveries(runner, journal=_SlowJournal(), url="http://w1", clock=lambda: NOW),
        MemoryDeadLetters(),
        clock=lambda: NOW,
    )
    service = WebhookService(repository, publisher=Published(), clock=Clock())
    app = create_app(service, control, tokens, config=ApiConfig(max_body_bytes=64 * 1024))
    async with TestClient(TestServer(app)) as client:
        created = await client.post("/v1/webhooks", json={**BODY, "id": "wh_1"}, headers=auth())
        assert created.status == 201
        activity.add(attempt("d1", 1, at=NOW - 300))
        answers = await asyncio.gather(
            *(client.post(path, json=body, headers=keyed("once")) for _ in range(3))
        )
        assert [a.status for a in answers] == [202] * 3, [await a.text() for a in answers]
        assert len({(await a.json())["id"] for a in answers}) == 1
        assert sorted(a.headers.get(REPLAYED_HEADER, "") for a in answers) == ["", "true", "true"]
        await eventually(lambda: len(runner.ran) >= 1)
        for _ in range(20):  # a second would have started by now
            await asyncio.sleep(0)
        assert len(runner.ran) == 1


async def test_two_owners_that_do_not_see_each_other_make_a_keyed_change_twice_and_it_shows(
    api: Api,
) -> None:
    """What the chaos test reads the subscriptions topic for (tests.support.keyed.made_twice):
    a rename sent twice with one key to one owner is recorded once; to a second owner whose
    table does not show the first's record (a rebalance's window), it is made again, and the
    records show the key with two updated_at."""
    await api.create(id="wh_1", **BODY)
    current = await api.repository.get("wh_1")
    assert current is not None
    stale = MemoryRepository({"wh_1": current})  # the second owner's view, now
    second = WebhookService(stale, clock=api.clock)
    sent = {"json": {"name": "renamed"}, "headers": keyed("rename-1")}
    written: list[dict[str, Any]] = []
    for _ in range(2):  # the first owner: made, then replayed
        assert (await api.client.patch("/v1/webhooks/wh_1", **sent)).status == 200
        written.append((await api.repository.get("wh_1")).to_record())  # type: ignore[union-attr]
    assert not made_twice(written)
    principal = TokenSet.from_mapping(TOKENS).authenticate(f"Bearer {ADMIN}")
    key = IdempotencyKey.of("rename-1", principal.name, principal.key_salt)
    await second.update(principal, "wh_1", {"name": "renamed"}, if_match=None, key=key)
    written.append((await stale.get("wh_1")).to_record())  # type: ignore[union-attr]
    assert list(made_twice(written)) == [("wh_1", key.digest)]  # type: ignore[union-attr]


async def test_the_id_a_key_makes_cannot_be_taken_first_by_another_token(api: Api) -> None:
    """Until 2026-12-07 the id a keyed create makes was the token's name and the key alone:
    another site's token computed it, created a webhook under it, and the owner's create was
    refused 409. Now the token's hash (in the token file alone) is part of it."""
    from tests.unit.api.conftest import SITE_1

    guessed = IdempotencyKey.of("order-42", "admin")
    assert guessed is not None
    squatted = await api.client.post(
        "/v1/webhooks",
        json={**BODY, "id": guessed.webhook_id(), "site_id": "site_1", "user_id": "user_1"},
        headers=auth(SITE_1),
    )
    assert squatted.status == 201, await squatted.text()
    made = await api.client.post("/v1/webhooks", json=BODY, headers=keyed("order-42"))
    assert made.status == 201, await made.text()
    assert (await made.json())["id"] != guessed.webhook_id()
