"""Changes at their edges, as a generated sequence of operations against a model of the API
first found them (tests/unit/api/test_model.py): a disabled webhook changed, changes within one
millisecond, a repeated create after a rotation, Standard Webhooks secrets however set, and
client-chosen ids that are dot segments."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bridge.api.app import create_app
from bridge.api.auth import TokenSet
from bridge.api.repository import MemoryRepository
from bridge.api.service import WebhookService
from bridge.subscriptions.changes import disabled_record
from bridge.subscriptions.webhook import webhook_from_record
from tests.unit.api.conftest import ADMIN, SITE_1, TOKENS, Api, auth, control_service

BODY = {"id": "wh_1", "url": "https://example.com/h", "events": ["*"], "site_id": "site_1"}


async def disable(api: Api, webhook_id: str) -> None:
    """What the bridge does to a failing endpoint (WebhookStore.disable)."""
    current = await api.repository.get(webhook_id)
    assert current is not None
    await api.repository.put(webhook_from_record(disabled_record(current, "gone", api.clock())))


async def test_a_disabled_webhook_stays_disabled_until_its_owner_turns_it_on(api: Api) -> None:
    """A PATCH of other fields and a rotation leave the bridge's reason (the webhook is still
    off for it); ``active`` (on, or off) is the owner's word and clears it."""
    await api.create(**BODY)
    await disable(api, "wh_1")
    renamed = await api.client.patch("/v1/webhooks/wh_1", json={"name": "x"}, headers=auth())
    assert renamed.status == 200
    body = await renamed.json()
    assert (body["state"], body["disabled_reason"]) == ("disabled", "gone")
    off = await api.client.patch("/v1/webhooks/wh_1", json={"active": False}, headers=auth())
    assert ((await off.json())["state"], (await off.json())["disabled_reason"]) == (
        "inactive",
        None,
    )
    await disable(api, "wh_1")
    on = await api.client.patch("/v1/webhooks/wh_1", json={"active": True}, headers=auth())
    assert ((await on.json())["state"], (await on.json())["disabled_reason"]) == ("active", None)


async def test_rotation_and_patch_treat_a_disabled_webhook_alike(api: Api) -> None:
    await api.create(**BODY)
    await api.create(**{**BODY, "id": "wh_2"})
    await disable(api, "wh_1")
    await disable(api, "wh_2")
    patched = await (
        await api.client.patch("/v1/webhooks/wh_1", json={"name": "x"}, headers=auth())
    ).json()
    rotated = await (
        await api.client.post("/v1/webhooks/wh_2/rotate-secret", headers=auth())
    ).json()
    assert (patched["state"], patched["disabled_reason"]) == (
        rotated["state"],
        rotated["disabled_reason"],
    )


FROZEN = datetime(2026, 1, 15, 9, 30, tzinfo=UTC)


@pytest.fixture
async def same_millisecond() -> AsyncIterator[TestClient[Any, Any]]:
    """The API with a clock whose readings all fall in one millisecond (two changes made
    within one, as a real clock reads them)."""
    clock: Callable[[], datetime] = lambda: FROZEN  # noqa: E731
    repository = MemoryRepository()
    service = WebhookService(repository, clock=clock)
    app = create_app(service, control_service(repository), TokenSet.from_mapping(TOKENS))
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def test_a_rotation_changes_the_version(same_millisecond: TestClient[Any, Any]) -> None:
    """docs/api.md, Versions: the version "changes with every change"; a stale If-Match is 412."""
    client = same_millisecond
    created = await client.post("/v1/webhooks", json=BODY, headers=auth())
    before = created.headers["ETag"]
    rotated = await client.post("/v1/webhooks/wh_1/rotate-secret", headers=auth())
    assert rotated.status == 200
    assert rotated.headers["ETag"] != before
    patched = await client.patch(
        "/v1/webhooks/wh_1", json={"name": "x"}, headers={**auth(), "If-Match": before}
    )
    assert patched.status == 412


async def test_a_webhook_made_again_within_the_millisecond_of_its_delete_has_another_version(
    same_millisecond: TestClient[Any, Any],
) -> None:
    """The version is the record's without its secrets: the same fields stamped in the same
    millisecond had the deleted webhook's version, so an If-Match taken of it passed on the
    new one, whose secret is another (until 2026-12-06)."""
    client = same_millisecond
    first = await client.post("/v1/webhooks", json=BODY, headers=auth())
    assert first.status == 201
    deleted = await client.delete("/v1/webhooks/wh_1", headers=auth())
    assert deleted.status == 204
    again = await client.post("/v1/webhooks", json=BODY, headers=auth())
    assert again.status == 201
    assert again.headers["ETag"] != first.headers["ETag"]
    assert (await again.json())["created_at"] > (await first.json())["created_at"]
    stale = await client.patch(
        "/v1/webhooks/wh_1",
        json={"name": "x"},
        headers={**auth(), "If-Match": first.headers["ETag"]},
    )
    assert stale.status == 412


async def test_a_repeated_create_does_not_answer_a_secret_rotated_since(api: Api) -> None:
    """docs/api.md, Idempotent create: the repeat is for "a client whose first answer was
    lost"; the secret "stays with whoever was given it". The creator's repeat answers the
    secret another token rotated to, which the creator was never given."""
    first = await api.client.post(
        "/v1/webhooks", json={**BODY, "user_id": "user_1"}, headers=auth(SITE_1)
    )
    assert first.status == 201
    rotated = await api.client.post("/v1/webhooks/wh_1/rotate-secret", headers=auth(ADMIN))
    new_secret = (await rotated.json())["secret"]
    again = await api.client.post(
        "/v1/webhooks", json={**BODY, "user_id": "user_1"}, headers=auth(SITE_1)
    )
    assert again.status == 200
    assert new_secret not in await again.text()


async def test_standard_webhooks_needs_a_whsec_secret_however_it_is_reached(api: Api) -> None:
    """PATCH refuses standard_webhooks for a secret that is not whsec_ (409 secret_not_whsec,
    "which no Standard Webhooks library could verify"); create and rotate-secret make that
    very webhook."""
    plain = await api.client.post("/v1/webhooks", json={**BODY, "id": "wh_p"}, headers=auth())
    assert plain.status == 201
    patched = await api.client.patch(
        "/v1/webhooks/wh_p", json={"standard_webhooks": True}, headers=auth()
    )
    assert patched.status == 409
    created = await api.client.post(
        "/v1/webhooks",
        json={**BODY, "standard_webhooks": True, "secret": "plain-secret"},
        headers=auth(),
    )
    assert created.status == 409
    await api.create(**{**BODY, "id": "wh_s", "standard_webhooks": True})
    rotated = await api.client.post(
        "/v1/webhooks/wh_s/rotate-secret", json={"secret": "plain-secret"}, headers=auth()
    )
    assert rotated.status == 409


@pytest.mark.parametrize("dots", [".", ".."])
async def test_an_id_that_is_a_dot_segment_is_refused(api: Api, dots: str) -> None:
    """Ids are client-chosen text; ``.`` and ``..`` as a path segment are resolved away by
    every client (RFC 3986, 5.2.4, also when percent-encoded), so such a webhook could never
    be read or changed: refused, naming the field."""
    made = await api.client.post("/v1/webhooks", json={**BODY, "id": dots}, headers=auth())
    assert made.status == 400
    assert [e["field"] for e in (await made.json())["errors"]] == ["id"]
    assert (
        await api.client.post("/v1/webhooks", json={**BODY, "id": "..."}, headers=auth())
    ).status == 201


async def test_a_repeated_create_naming_a_secret_tells_no_other_token_whether_it_is_right(
    api: Api,
) -> None:
    """A repeat of a create with a client-chosen id and secret is recognised (200) for the
    token that created the webhook; any other token gets 409 whether its secret is right or
    wrong (until 2026-12-06 the two answers told it which: a check of guesses of the secret
    that changed nothing)."""
    body = {**BODY, "user_id": "user_1", "secret": "the-right-secret-0123456789"}
    first = await api.client.post("/v1/webhooks", json=body, headers=auth(SITE_1))
    assert first.status == 201
    again = await api.client.post("/v1/webhooks", json=body, headers=auth(SITE_1))
    assert again.status == 200
    for secret in ("the-right-secret-0123456789", "a-wrong-guess-0123456789"):
        guess = await api.client.post(
            "/v1/webhooks", json={**body, "secret": secret}, headers=auth(ADMIN)
        )
        assert guess.status == 409, secret
    # Without a secret, a repeat is still recognised for anyone in scope (nothing to tell).
    bare = {k: v for k, v in body.items() if k != "secret"}
    assert (await api.client.post("/v1/webhooks", json=bare, headers=auth(ADMIN))).status == 200
