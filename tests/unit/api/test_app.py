"""The webhook routes over an in-memory repository: CRUD, versions, idempotency, auth, paging."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bridge.api.idempotency import REPLAYED_HEADER
from bridge.api.openapi import served_operations
from bridge.api.problems import PROBLEM_JSON, Problem
from bridge.api.repository import WebhookFilter, webhook_version
from bridge.api.service import decode_cursor, encode_cursor
from bridge.contract.events import parse_time
from bridge.contract.payload import delivery_id
from bridge.contract.schemas import EVENT_TYPES, event_data_errors
from tests.unit.api.conftest import ADMIN, READER, SITE_1, USER_1, WRITER, Api, auth


async def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM_JSON
    body: dict[str, Any] = await response.json(content_type=PROBLEM_JSON)
    return body


def fields(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["field"], e["reason"]) for e in body.get("errors", [])]


async def test_create_returns_the_secret_once_then_get_and_list_never_do(api: Api) -> None:
    response = await api.client.post(
        "/v1/webhooks",
        json={"url": "https://example.com/hook", "events": ["post.created", "post.published"],
              "site_id": "site_1", "user_id": "user_1", "name": "My Webhook"},
        headers=auth(),
    )  # fmt: skip
    assert response.status == 201
    created = await response.json()
    assert len(created["secret"]) == 64 and created["state"] == "active"
    assert response.headers["Location"] == f"/v1/webhooks/{created['id']}"
    assert response.headers["ETag"] == f'"{created["version"]}"'
    assert response.headers["Cache-Control"] == "no-store"
    stored = await api.repository.get(created["id"])
    assert stored is not None and stored.secret == created["secret"]
    assert created["version"] == webhook_version(stored)

    got = await api.client.get(f"/v1/webhooks/{created['id']}", headers=auth(READER))
    assert got.status == 200 and got.headers["ETag"] == response.headers["ETag"]
    body = await got.json()
    assert "secret" not in body and body == {k: v for k, v in created.items() if k != "secret"}
    listing = await (await api.client.get("/v1/webhooks", headers=auth(READER))).json()
    assert listing == {"items": [body], "next_cursor": None}
    assert created["secret"] not in json.dumps(listing)


async def test_a_standard_webhooks_secret_is_generated_when_asked(api: Api) -> None:
    created = await api.create(standard_webhooks=True)
    assert created["secret"].startswith("whsec_") and created["standard_webhooks"] is True


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"events": ["post.created"], "site_id": "s"}, [("url", "required")]),
        ({"url": "https://e.com/h", "site_id": "s"}, [("events", "required")]),
        ({"url": "https://e.com/h", "events": ["*"]}, [("site_id", "required")]),
        ({"url": "https://e.com/h", "events": [], "site_id": "s"}, [("events", "minItems")]),
        ({"url": "https://e.com/h", "events": ["post.exploded"], "site_id": "s"},
         [("events[0]", "enum")]),
        ({"url": "https://e.com/h", "events": ["*", "*"], "site_id": "s"},
         [("events", "duplicate")]),
        ({"url": 5, "events": ["*"], "site_id": "s"}, [("url", "type")]),
        ({"url": "ftp://e.com/h", "events": ["*"], "site_id": "s"}, [("url", "invalid_url")]),
        ({"url": "https://u:p@e.com/h", "events": ["*"], "site_id": "s"},
         [("url", "invalid_url")]),
        ({"url": "https://e.com/h", "events": ["*"], "site_id": "s", "colour": "red"},
         [("colour", "unknown_field")]),
        ({"url": "https://e.com/h", "events": ["*"], "site_id": "s", "rate_limit": 0},
         [("rate_limit", "minimum")]),
        ({"url": "https://e.com/h", "events": ["*"], "site_id": "s", "rate_limit": 1e-6},
         [("rate_limit", "minimum")]),
        ({"url": "https://e.com/h", "events": ["*"], "site_id": "s", "rate_limit": 1e-320},
         [("rate_limit", "minimum")]),
        ({"url": "https://e.com/h", "events": ["*"], "site_id": "s", "id": ""},
         [("id", "minLength"), ("id", "pattern")]),
        ({"url": "https://e.com/h", "events": ["*"], "site_id": "s", "standard_webhooks": True,
          "secret": "whsec_!!!"}, [("secret", "secret_malformed")]),
        ({"url": "https://e.com/h", "events": ["*"], "site_id": "s", "created_at": "x"},
         [("created_at", "unknown_field")]),
    ],
)  # fmt: skip
async def test_invalid_creates_are_400s_naming_the_field(
    api: Api, body: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    response = await api.client.post("/v1/webhooks", json=body, headers=auth())
    result = await problem(response, 400)
    assert fields(result) == expected
    assert await api.repository.scan(after=None, limit=10, where=lambda w: True) == []


async def test_the_deployments_url_policy_is_applied(api: Api) -> None:
    from bridge.api.service import WebhookService
    from bridge.http.ssrf import AddressPolicy, check_url

    service = WebhookService(
        api.repository,
        check_url=lambda url: check_url(url, allow_http=False, policy=AddressPolicy()),
    )
    from bridge.api.auth import Principal

    admin = Principal("admin", frozenset({"read", "write"}))
    for url in ("http://example.com/h", "https://127.0.0.1/h"):
        with pytest.raises(Problem) as caught:
            await service.create(admin, {"url": url, "events": ["*"], "site_id": "s"})
        assert [(e.field, e.reason) for e in caught.value.errors] == [
            ("url", "destination_forbidden")
        ]


async def test_creating_with_a_chosen_id_twice_is_idempotent(api: Api) -> None:
    body = {"id": "wh_mine", "url": "https://example.com/h", "events": ["post.created"],
            "site_id": "site_1", "user_id": "user_1"}  # fmt: skip
    first = await api.client.post("/v1/webhooks", json=body, headers=auth())
    assert first.status == 201
    again = await api.client.post("/v1/webhooks", json=body, headers=auth())
    assert again.status == 200
    assert await again.json() == await first.json()  # the secret too: the first answer was lost
    other = await api.client.post(
        "/v1/webhooks", json={**body, "events": ["post.deleted"]}, headers=auth()
    )
    assert fields(await problem(other, 409)) == [("id", "exists")]
    wrong_secret = await api.client.post(
        "/v1/webhooks", json={**body, "secret": "guess"}, headers=auth()
    )
    await problem(wrong_secret, 409)


async def test_a_repeated_create_shows_the_secret_only_to_its_creator_for_a_day(api: Api) -> None:
    """A client whose first answer was lost learns the secret by repeating the create; another
    token in scope, that could read every field of the body, does not, nor the creator a day
    later: the secret stays with whoever was given it."""
    body = {"id": "wh_s", "url": "https://example.com/h", "events": ["*"], "site_id": "site_1",
            "user_id": "user_1"}  # fmt: skip
    first = await api.client.post("/v1/webhooks", json=body, headers=auth(SITE_1))
    assert first.status == 201
    secret = (await first.json())["secret"]
    again = await api.client.post("/v1/webhooks", json=body, headers=auth(SITE_1))
    assert again.status == 200 and (await again.json())["secret"] == secret
    for token in (ADMIN, WRITER):
        other = await api.client.post("/v1/webhooks", json=body, headers=auth(token))
        assert other.status == 200
        shown = await other.json()
        assert "secret" not in shown and shown["id"] == "wh_s"
        assert secret not in await other.text()
    api.clock.now += timedelta(days=1, seconds=1)
    later = await api.client.post("/v1/webhooks", json=body, headers=auth(SITE_1))
    assert later.status == 200 and "secret" not in await later.json()


async def test_concurrent_creates_of_one_id_make_one_webhook(api: Api) -> None:
    body = {"id": "wh_race", "url": "https://example.com/h", "events": ["*"], "site_id": "s"}
    answers = await asyncio.gather(
        *(api.client.post("/v1/webhooks", json=body, headers=auth()) for _ in range(5))
    )
    assert sorted(a.status for a in answers) == [200, 200, 200, 200, 201]
    assert len({(await a.json())["secret"] for a in answers}) == 1


async def test_update_with_if_match_and_a_lost_update_is_a_412(api: Api) -> None:
    created = await api.create()
    path, tag = f"/v1/webhooks/{created['id']}", f'"{created["version"]}"'
    first = await api.client.patch(
        path, json={"name": "renamed"}, headers={**auth(), "If-Match": tag}
    )
    assert first.status == 200
    updated = await first.json()
    assert updated["name"] == "renamed" and updated["version"] != created["version"]
    assert first.headers["ETag"] == f'"{updated["version"]}"'
    assert "secret" not in updated
    lost = await api.client.patch(path, json={"name": "mine"}, headers={**auth(), "If-Match": tag})
    result = await problem(lost, 412)
    assert lost.headers["ETag"] == first.headers["ETag"]
    assert "changed" in result["detail"]
    weak = await api.client.patch(
        path, json={"name": "x"}, headers={**auth(), "If-Match": f"W/{first.headers['ETag']}"}
    )
    await problem(weak, 412)
    any_version = await api.client.patch(
        path, json={"name": "any"}, headers={**auth(), "If-Match": "*"}
    )
    assert any_version.status == 200
    malformed = await api.client.patch(
        path, json={"name": "x"}, headers={**auth(), "If-Match": "abc"}
    )
    assert fields(await problem(malformed, 400)) == [("If-Match", "malformed")]
    stored = await api.repository.get(created["id"])
    assert stored is not None and stored.name == "any"


async def test_a_webhook_with_a_64_bit_id_of_its_producer_s_is_read_and_changed(
    api: Api,
) -> None:
    """An integer beyond 2^53 in a field of the producer's own (``crm_id``): its version is
    computed (as the record is written), the API answers without it, and a change keeps it as
    read (refused as read on 2026-12-07, the webhook absent)."""
    from bridge.contract import jsoncanon
    from bridge.subscriptions.webhook import webhook_from_record

    created = await api.create()
    stored = await api.repository.get(created["id"])
    assert stored is not None
    record = {**stored.to_record(), "crm_id": 1234567890123456789}
    await api.repository.put(webhook_from_record(record))
    path = f"/v1/webhooks/{created['id']}"
    got = await api.client.get(path, headers=auth(READER))
    assert got.status == 200, await got.text()
    assert "crm_id" not in await got.json()
    changed = await api.client.patch(
        path, json={"name": "renamed"}, headers={**auth(), "If-Match": got.headers["ETag"]}
    )
    assert changed.status == 200, await changed.text()
    after = await api.repository.get(created["id"])
    assert after is not None and after.name == "renamed"
    assert b'"crm_id":1234567890123456789' in jsoncanon.dumps(after.to_record(), big_integers=True)


async def test_update_follows_webhook_store_update(api: Api) -> None:
    created = await api.create(rate_limit=5)
    path = f"/v1/webhooks/{created['id']}"
    stored = await api.repository.get(created["id"])
    assert stored is not None
    from bridge.subscriptions.webhook import webhook_from_record

    record = stored.to_record()
    record.update(active=False, disabled_reason="gone")
    await api.repository.put(webhook_from_record(record))
    disabled = await (await api.client.get(path, headers=auth())).json()
    assert disabled["state"] == "disabled" and disabled["disabled_reason"] == "gone"
    inactive = await api.client.get("/v1/webhooks?state=disabled", headers=auth())
    assert [w["id"] for w in (await inactive.json())["items"]] == [created["id"]]

    enabled = await (
        await api.client.patch(path, json={"active": True, "rate_limit": None}, headers=auth())
    ).json()
    assert enabled["state"] == "active" and enabled["disabled_reason"] is None
    assert enabled["rate_limit"] is None
    assert enabled["created_at"] == created["created_at"]
    assert enabled["updated_at"] > created["updated_at"]
    for body, expected in [
        ({}, [("", "empty")]),
        ({"secret": "new"}, [("secret", "unknown_field")]),
        ({"url": "https://e.com/#frag"}, [("url", "invalid_url")]),
        # Naming the field a create names for it (no field until 2026-12-07).
        ({"site_id": None, "user_id": None}, [("site_id", "schema_invalid")]),
        ({"events": "post.created"}, [("events", "type")]),
    ]:
        response = await api.client.patch(path, json=body, headers=auth())
        assert fields(await problem(response, 400)) == expected, body
    standard = await api.client.patch(path, json={"standard_webhooks": True}, headers=auth())
    assert fields(await problem(standard, 409)) == [("standard_webhooks", "secret_not_whsec")]


async def test_delete_with_and_without_if_match(api: Api) -> None:
    created = await api.create()
    path = f"/v1/webhooks/{created['id']}"
    await problem(await api.client.delete(path, headers={**auth(), "If-Match": '"old"'}), 412)
    assert (await api.client.delete(path, headers=auth())).status == 204
    await problem(await api.client.get(path, headers=auth()), 404)
    await problem(await api.client.delete(path, headers=auth()), 404)
    await problem(await api.client.patch(path, json={"name": "x"}, headers=auth()), 404)


async def test_rotate_secret_with_an_overlap(api: Api) -> None:
    created = await api.create(standard_webhooks=True)
    path = f"/v1/webhooks/{created['id']}/rotate-secret"
    response = await api.client.post(
        path, json={"overlap_seconds": 3600}, headers={**auth(), "If-Match": response_tag(created)}
    )
    assert response.status == 200 and response.headers["Cache-Control"] == "no-store"
    rotated = await response.json()
    assert rotated["secret"] != created["secret"] and rotated["secret"].startswith("whsec_")
    assert rotated["version"] != created["version"]
    stored = await api.repository.get(created["id"])
    assert stored is not None and stored.previous_secret == created["secret"]
    expires = parse_time(rotated["previous_secret_expires_at"])
    assert 3599 < (expires - api.clock.now).total_seconds() <= 3600
    assert stored.signing_secrets(api.clock.now) == [rotated["secret"], created["secret"]]

    # A second overlap while the first runs would end the first before its end (one previous
    # secret is kept): refused, naming it (until 2026-12-06 the first secret was dropped).
    again = await api.client.post(path, json={"overlap_seconds": 60}, headers=auth())
    refused = await problem(again, 409)
    assert fields(refused) == [("overlap_seconds", "overlap_running")]
    assert rotated["previous_secret_expires_at"] in refused["errors"][0]["detail"]
    kept = await api.repository.get(created["id"])
    assert kept is not None and kept.signing_secrets(api.clock.now) == stored.signing_secrets(
        api.clock.now
    )
    bare = await api.client.post(path, headers=auth())  # no body: new secret, no overlap
    assert bare.status == 200
    final = await bare.json()
    assert final["previous_secret_expires_at"] is None
    chosen = await api.client.post(path, json={"secret": WHSEC}, headers=auth())
    assert (await chosen.json())["secret"] == WHSEC
    for body, expected in [
        ({"overlap_seconds": -1}, [("overlap_seconds", "minimum")]),
        ({"overlap_seconds": 10**9}, [("overlap_seconds", "maximum")]),
        ({"overlap": "24h"}, [("overlap", "unknown_field")]),
        ({"secret": ""}, [("secret", "minLength")]),
    ]:
        response = await api.client.post(path, json=body, headers=auth())
        assert fields(await problem(response, 400)) == expected, body


def response_tag(webhook: dict[str, Any]) -> str:
    return f'"{webhook["version"]}"'


WHSEC = "whsec_" + base64.b64encode(b"c" * 32).decode()
PREVIOUS_WHSEC = "whsec_" + base64.b64encode(b"p" * 32).decode()


async def test_an_overlap_of_a_webhook_without_standard_headers_is_refused(api: Api) -> None:
    """X-Webhook-Signature carries one signature, the current secret's: only the Standard
    Webhooks header carries the previous secret too. Until 2026-12-07 the overlap was taken
    (200, its end shown), carried by no delivery, and a second one refused as running."""
    created = await api.create()
    path = f"/v1/webhooks/{created['id']}/rotate-secret"
    for overlap in (3600, 0.5):
        refused = await problem(
            await api.client.post(path, json={"overlap_seconds": overlap}, headers=auth()), 409
        )
        assert fields(refused) == [("overlap_seconds", "overlap_needs_standard_webhooks")]
        assert "X-Webhook-Signature holds one signature" in refused["detail"]
    kept = await api.repository.get(created["id"])
    assert kept is not None and kept.secret == created["secret"]
    assert webhook_version(kept) == created["version"]
    # Without an overlap (0 too) it rotates.
    for body in ({"overlap_seconds": 0}, {}):
        rotated = await api.client.post(path, json=body, headers=auth())
        assert rotated.status == 200
        assert (await rotated.json())["previous_secret_expires_at"] is None


@pytest.mark.parametrize("rate", [1e-6, 1e-320, 0.0099, 0])
async def test_a_rate_limit_below_the_lowest_is_refused_by_a_change(api: Api, rate: float) -> None:
    """At most one delivery every 100 s, the slowest a deferred delivery waits for within its
    deferrals: until 2026-12-07 a lower one was taken, and every delivery after the first was
    dead-lettered (at 1e-320 its wait was infinite)."""
    created = await api.create(rate_limit=5)
    path = f"/v1/webhooks/{created['id']}"
    refused = await problem(
        await api.client.patch(path, json={"rate_limit": rate}, headers=auth()), 400
    )
    assert fields(refused) == [("rate_limit", "minimum")]
    assert refused["errors"][0]["detail"] == "less than 0.01"
    at_floor = await api.client.patch(path, json={"rate_limit": 0.01}, headers=auth())
    assert at_floor.status == 200 and (await at_floor.json())["rate_limit"] == 0.01
    removed = await api.client.patch(path, json={"rate_limit": None}, headers=auth())
    assert (await removed.json())["rate_limit"] is None


async def test_a_record_below_the_lowest_rate_limit_is_shown_and_written_at_it(api: Api) -> None:
    """A record of an older writer, or of another producer: read as 0.01, and the next change
    writes that."""
    from bridge.subscriptions.webhook import webhook_from_record

    created = await api.create()
    stored = await api.repository.get(created["id"])
    assert stored is not None
    await api.repository.put(webhook_from_record({**stored.to_record(), "rate_limit": 1e-320}))
    got = await (await api.client.get(f"/v1/webhooks/{created['id']}", headers=auth())).json()
    assert got["rate_limit"] == 0.01
    renamed = await api.client.patch(
        f"/v1/webhooks/{created['id']}", json={"name": "renamed"}, headers=auth()
    )
    assert renamed.status == 200
    written = await api.repository.get(created["id"])
    assert written is not None and written.to_record()["rate_limit"] == 0.01


async def test_an_ended_overlap_is_not_shown_and_the_next_change_drops_it(api: Api) -> None:
    """Until 2026-12-07 the retired secret stayed in the record, written again by every later
    change, and answers showed the end of the overlap long past."""
    created = await api.create(standard_webhooks=True)
    path = f"/v1/webhooks/{created['id']}"
    rotated = await (
        await api.client.post(path + "/rotate-secret", json={"overlap_seconds": 60}, headers=auth())
    ).json()
    shown = await (await api.client.get(path, headers=auth())).json()
    assert shown["previous_secret_expires_at"] == rotated["previous_secret_expires_at"]
    api.clock.now += timedelta(seconds=61)
    ended = await api.client.get(path, headers=auth())
    assert (await ended.json())["previous_secret_expires_at"] is None
    listed = await (await api.client.get("/v1/webhooks", headers=auth())).json()
    assert [w["previous_secret_expires_at"] for w in listed["items"]] == [None]
    before = await api.repository.get(created["id"])
    assert before is not None and before.previous_secret == created["secret"]  # until a change
    renamed = await api.client.patch(path, json={"name": "renamed"}, headers=auth())
    assert (await renamed.json())["previous_secret_expires_at"] is None
    after = await api.repository.get(created["id"])
    assert after is not None and after.previous_secret is None
    assert "previous_secret" not in after.to_record()
    assert "previous_secret_expires_at" not in after.to_record()
    # A new overlap may begin: the last one ended.
    again = await api.client.post(
        path + "/rotate-secret", json={"overlap_seconds": 60}, headers=auth()
    )
    assert again.status == 200


@pytest.mark.parametrize(("previous", "kept"), [("p" * 32, False), (PREVIOUS_WHSEC, True)])
async def test_turning_standard_signing_on_keeps_only_a_whsec_previous_secret(
    api: Api, previous: str, kept: bool
) -> None:
    """A webhook an older version gave an overlap without Standard Webhooks headers (its
    previous secret hex, as generated for such a webhook): turned on, its Standard header was
    signed with that previous secret too (until 2026-12-07), which Standard Webhooks signing
    never uses. Dropped; a whsec_ one is a Standard Webhooks secret, and signs on."""
    from bridge.contract.events import format_timestamp
    from bridge.subscriptions.webhook import webhook_from_record

    created = await api.create(secret=WHSEC)
    path = f"/v1/webhooks/{created['id']}"
    stored = await api.repository.get(created["id"])
    assert stored is not None
    ends = format_timestamp(api.clock.now + timedelta(hours=1))
    older = {**stored.to_record(), "previous_secret": previous, "previous_secret_expires_at": ends}
    await api.repository.put(webhook_from_record(older))
    shown = await (await api.client.get(path, headers=auth())).json()
    assert shown["previous_secret_expires_at"] is None  # no header carries it
    turned_on = await api.client.patch(path, json={"standard_webhooks": True}, headers=auth())
    assert turned_on.status == 200, await turned_on.text()
    assert (await turned_on.json())["previous_secret_expires_at"] == (ends if kept else None)
    now_stored = await api.repository.get(created["id"])
    assert now_stored is not None
    assert now_stored.signing_secrets(api.clock.now) == ([WHSEC, previous] if kept else [WHSEC])
    assert ("previous_secret" in now_stored.to_record()) == kept
    # Turned off, no header carries the previous secret: the overlap ends.
    turned_off = await api.client.patch(path, json={"standard_webhooks": False}, headers=auth())
    assert (await turned_off.json())["previous_secret_expires_at"] is None
    off = await api.repository.get(created["id"])
    assert off is not None and off.previous_secret is None


async def test_send_a_test_event(api: Api) -> None:
    created = await api.create()
    path = f"/v1/webhooks/{created['id']}/test"
    response = await api.client.post(path, json={"message": "hello"}, headers=auth())
    assert response.status == 202
    answer = await response.json()
    (event,) = api.published.events
    assert answer == {
        "webhook_id": created["id"],
        "event_id": event.id,
        "delivery_id": delivery_id(event.id, created["id"]),
    }
    assert event.type == "test.event" and event.site_id == "site_1"
    assert event.data == {"webhook_id": created["id"], "message": "hello"}
    assert (await api.client.post(path, headers=auth())).status == 202
    account = await api.create(site_id=None, user_id="user_1")
    scope = await api.client.post(f"/v1/webhooks/{account['id']}/test", headers=auth())
    assert fields(await problem(scope, 400)) == [("site_id", "test_event_scope")]
    await api.client.patch(f"/v1/webhooks/{created['id']}", json={"active": False},
                           headers=auth())  # fmt: skip
    await problem(await api.client.post(path, headers=auth()), 409)


async def test_list_filters_and_pages_with_cursors(api: Api) -> None:
    ids = []
    for n in range(7):
        created = await api.create(
            id=f"wh_{n}",
            site_id=f"site_{n % 2}",
            user_id="user_1",
            events=["post.created"] if n % 3 else ["*"],
            active=n != 4,
        )
        ids.append(created["id"])
    seen: list[str] = []
    cursor = None
    while True:
        query = "limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = await (await api.client.get(f"/v1/webhooks?{query}", headers=auth())).json()
        seen += [w["id"] for w in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids

    async def listed(query: str) -> list[str]:
        response = await api.client.get(f"/v1/webhooks?{query}", headers=auth())
        assert response.status == 200, await response.text()
        return [w["id"] for w in (await response.json())["items"]]

    assert await listed("site_id=site_0") == ["wh_0", "wh_2", "wh_4", "wh_6"]
    assert await listed("event_type=post.deleted") == ["wh_0", "wh_3", "wh_6"]
    assert await listed("event_type=post.created&site_id=site_1") == ["wh_1", "wh_3", "wh_5"]
    assert await listed("state=inactive") == ["wh_4"]
    assert await listed("user_id=user_2") == []

    first = await (await api.client.get("/v1/webhooks?limit=2&site_id=site_0",
                                        headers=auth())).json()  # fmt: skip
    other_filter = await api.client.get(
        f"/v1/webhooks?limit=2&cursor={first['next_cursor']}", headers=auth()
    )
    assert fields(await problem(other_filter, 400)) == [("cursor", "invalid_cursor")]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("limit=0", [("limit", "range")]),
        ("limit=201", [("limit", "range")]),
        ("limit=ten", [("limit", "range")]),
        ("limit=%EF%BC%91", [("limit", "range")]),  # a full-width digit
        ("state=sleeping", [("state", "enum")]),
        ("event_type=post.exploded", [("event_type", "enum")]),
        ("site_id=", [("site_id", "length")]),
        ("colour=red", [("colour", "unknown_field")]),
        ("limit=1&limit=2", [("limit", "repeated")]),
        ("cursor=not-a-cursor", [("cursor", "invalid_cursor")]),
        ("cursor=e30", [("cursor", "invalid_cursor")]),
    ],
)
async def test_bad_list_parameters_are_400s_naming_them(
    api: Api, query: str, expected: list[tuple[str, str]]
) -> None:
    response = await api.client.get(f"/v1/webhooks?{query}", headers=auth())
    result = await problem(response, 400)
    assert fields(result) == expected
    assert all(e["in"] == "query" for e in result["errors"])


def test_a_cursor_carries_its_filter() -> None:
    where = WebhookFilter(site_id="s")
    assert decode_cursor(encode_cursor("wh_9", where), where) == "wh_9"
    with pytest.raises(Problem):
        decode_cursor(encode_cursor("wh_9", where), WebhookFilter())


def path_of(template: str) -> str:
    for name in ("webhook_id", "delivery_id", "recovery_id"):
        template = template.replace(f"{{{name}}}", "x_1")
    return template


@pytest.mark.parametrize(
    ("method", "path"), [op for op in served_operations() if op[1] != "/v1/openapi.json"]
)
async def test_every_route_needs_a_token_and_its_scope(api: Api, method: str, path: str) -> None:
    url = path_of(path)
    response = await api.client.request(method, url)
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="webhook-bridge"'
    await problem(response, 401)
    response = await api.client.request(method, url, headers=auth("wbt_nope"))
    await problem(response, 401)
    wrong = WRITER if method == "GET" else READER
    response = await api.client.request(method, url, json={}, headers=auth(wrong))
    result = await problem(response, 403)
    assert "scope" in result["detail"]


@pytest.mark.parametrize(
    ("method", "path"), [op for op in served_operations() if op[1] != "/v1/openapi.json"]
)
async def test_every_route_refuses_a_query_parameter_it_does_not_name(
    api: Api, method: str, path: str
) -> None:
    """Before anything is looked up or changed (until 2026-12-06 the routes of one webhook,
    delivery or recovery ignored them, while listings refused them)."""
    webhook = await api.create(site_id="site_1", user_id="user_1")
    url = path.replace("{webhook_id}", webhook["id"])
    response = await api.client.request(
        method, f"{path_of(url)}?colour=red", json={}, headers=auth()
    )
    result = await problem(response, 400)
    assert [(e["field"], e["reason"], e["in"]) for e in result["errors"]] == [
        ("colour", "unknown_field", "query")
    ]
    assert await api.repository.get(webhook["id"]) is not None  # not deleted


async def test_a_site_token_sees_and_changes_only_its_site(api: Api) -> None:
    mine = await api.create(token=SITE_1, site_id="site_1", user_id="user_9")
    theirs = await api.create(site_id="site_2", user_id="user_1")
    account = await api.create(site_id=None, user_id="user_1")
    listing = await (await api.client.get("/v1/webhooks", headers=auth(SITE_1))).json()
    assert [w["id"] for w in listing["items"]] == [mine["id"]]
    other = await api.client.get("/v1/webhooks?site_id=site_2", headers=auth(SITE_1))
    assert fields(await problem(other, 403)) == [("site_id", "out_of_scope")]
    # Another site's webhook is answered as an id that names nothing: the token cannot tell
    # which ids are taken.
    for webhook_id in (theirs["id"], account["id"], "wh_none"):
        path = f"/v1/webhooks/{webhook_id}"
        for method, route, body in [
            ("GET", path, None),
            ("DELETE", path, None),
            ("PATCH", path, {"name": "mine now"}),
            ("POST", f"{path}/rotate-secret", {}),
            ("POST", f"{path}/test", {}),
        ]:
            refused = await api.client.request(method, route, json=body, headers=auth(SITE_1))
            assert await problem(refused, 404) == {
                "type": "tag:webhook-bridge,2026:problem:not_found",
                "title": "Not found",
                "status": 404,
                "detail": "no such webhook",
            }, (method, route)
    for webhook in (theirs, account):
        assert await api.repository.get(webhook["id"]) is not None
    taken = await api.client.post(
        "/v1/webhooks",
        json={"id": theirs["id"], "url": "https://e.com/h", "events": ["*"], "site_id": "site_1"},
        headers=auth(SITE_1),
    )
    assert fields(await problem(taken, 409)) == [("id", "exists")]
    move = await api.client.patch(
        f"/v1/webhooks/{mine['id']}", json={"site_id": "site_2"}, headers=auth(SITE_1)
    )
    assert fields(await problem(move, 403)) == [("site_id", "out_of_scope")]
    create_elsewhere = await api.client.post(
        "/v1/webhooks",
        json={"url": "https://e.com/h", "events": ["*"], "user_id": "user_9"},
        headers=auth(SITE_1),
    )
    await problem(create_elsewhere, 403)
    user_listing = await (await api.client.get("/v1/webhooks", headers=auth(USER_1))).json()
    assert {w["id"] for w in user_listing["items"]} == {account["id"]}


async def test_an_account_token_has_its_account_webhooks_not_a_sites(api: Api) -> None:
    """A site's webhook gets every event of the site, whoever's account it concerns: a token
    restricted to an account alone neither sees nor makes one (its own user id or not); its
    account webhook's test event names one of the account's sites, and goes to that webhook
    alone."""
    site_webhook = await api.create(site_id="site_2", user_id="user_1")
    account = await api.create(token=USER_1, site_id=None, user_id="user_1")
    path = f"/v1/webhooks/{site_webhook['id']}"
    for method in ("GET", "DELETE"):
        refused = await api.client.request(method, path, headers=auth(USER_1))
        assert (await problem(refused, 404))["detail"] == "no such webhook"
    body = {"url": "https://e.com/h", "events": ["*"], "site_id": "site_2", "user_id": "user_1"}
    made = await api.client.post("/v1/webhooks", json=body, headers=auth(USER_1))
    assert fields(await problem(made, 403)) == [("site_id", "out_of_scope")]
    moved = await api.client.patch(
        f"/v1/webhooks/{account['id']}", json={"site_id": "site_2"}, headers=auth(USER_1)
    )
    assert fields(await problem(moved, 403)) == [("site_id", "out_of_scope")]
    listed = await api.client.get("/v1/webhooks?site_id=site_2", headers=auth(USER_1))
    assert fields(await problem(listed, 403)) == [("site_id", "out_of_scope")]
    test = await api.client.post(
        f"/v1/webhooks/{account['id']}/test", json={"site_id": "site_2"}, headers=auth(USER_1)
    )
    assert test.status == 202, await test.text()
    [event] = api.published.events
    assert (event.site_id, event.user_id, event.data["webhook_id"]) == (
        "site_2",
        "user_1",
        account["id"],
    )
    as_another = await api.client.post(
        f"/v1/webhooks/{account['id']}/test",
        json={"site_id": "site_2", "user_id": "user_2"},
        headers=auth(USER_1),
    )
    assert fields(await problem(as_another, 403)) == [("user_id", "out_of_scope")]


async def test_a_long_or_odd_path_id_is_a_400_or_404_never_a_500(api: Api) -> None:
    response = await api.client.get("/v1/webhooks/" + "x" * 201, headers=auth())
    assert fields(await problem(response, 400)) == [("webhook_id", "invalid_id")]
    response = await api.client.get("/v1/webhooks/%00", headers=auth())
    await problem(response, 400)
    response = await api.client.get("/v1/webhooks/%E2%9C%93", headers=auth())
    await problem(response, 404)


async def test_deeply_nested_bodies_are_a_400(api: Api) -> None:
    body = b'{"url": ' + b"[" * 20000 + b"]" * 20000 + b"}"
    response = await api.client.post(
        "/v1/webhooks", data=body, headers={**auth(), "Content-Type": "application/json"}
    )
    await problem(response, 400)


async def test_no_secret_or_token_in_the_log(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    created = await api.create()
    await api.client.get("/v1/webhooks", headers=auth())
    await api.client.get("/v1/webhooks", headers=auth("wbt_wrong"))
    await api.client.post(
        f"/v1/webhooks/{created['id']}/rotate-secret", json={"secret": "chosen-s3cret"},
        headers=auth(),
    )  # fmt: skip
    for secret in (created["secret"], "chosen-s3cret", ADMIN, "wbt_wrong"):
        assert secret not in caplog.text


#: The data schemas as the repository holds them.
DATA_SCHEMAS = Path(__file__).resolve().parents[3] / "topics" / "schemas" / "data"


async def test_event_types_lists_each_type_with_the_schema_its_data_is_checked_against(
    api: Api,
) -> None:
    """What a receiver's author needs: every type a webhook can subscribe to, and the schema a
    delivery's data met (the bridge dead-letters an event whose data does not)."""
    response = await api.client.get("/v1/event-types", headers=auth(READER))
    assert response.status == 200
    items = (await response.json())["items"]
    assert [i["type"] for i in items] == list(EVENT_TYPES)
    for item in items:
        on_disk = json.loads((DATA_SCHEMAS / f"{item['type']}.json").read_text(encoding="utf-8"))
        assert item["data_schema"] == on_disk
    post = next(i["data_schema"] for i in items if i["type"] == "post.created")
    assert not event_data_errors("post.created", {"id": "p1", "title": "t"})
    assert "title" in post["required"] and event_data_errors("post.created", {"id": "p1"})
    unknown = await api.client.get("/v1/event-types?limit=1", headers=auth(READER))
    assert (await problem(unknown, 400))["errors"][0]["field"] == "limit"


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "GZIP, identity"])
async def test_an_encoded_body_is_refused_naming_the_header(api: Api, encoding: str) -> None:
    """The API takes bodies as sent (bridge/worker/web.py's runner undoes no encoding)."""
    response = await api.client.post(
        "/v1/webhooks",
        data=b"\x1f\x8bnot-gzip",
        headers={**auth(), "Content-Type": "application/json", "Content-Encoding": encoding},
    )
    assert fields(await problem(response, 415)) == [("Content-Encoding", "encoding")]


async def test_identity_is_no_encoding(api: Api) -> None:
    response = await api.client.post(
        "/v1/webhooks",
        json={"url": "https://e.com/h", "events": ["*"], "site_id": "s1"},
        headers={**auth(), "Content-Encoding": "identity"},
    )
    assert response.status == 201, await response.text()


@pytest.mark.parametrize("length", [501, 2048])
async def test_a_long_url_without_a_name_names_the_webhook_after_its_start(
    api: Api, length: int
) -> None:
    """A name is at most 500 characters, a URL up to 2,048: a webhook named after a longer URL
    was refused for a name its client never sent (until 2026-12-06)."""
    url = "https://e.com/" + "p" * (length - len("https://e.com/"))
    response = await api.client.post(
        "/v1/webhooks", json={"url": url, "events": ["*"], "site_id": "s1"}, headers=auth()
    )
    assert response.status == 201, await response.text()
    made = await response.json()
    assert (made["url"], made["name"]) == (url, url[:500])


async def test_a_patch_of_the_url_renames_a_webhook_named_after_it(api: Api) -> None:
    """Its name (the old URL, query token and all) went on in every delivery body to the new
    endpoint (until 2026-12-07); a name of its own stays."""
    old = "https://old.example.com/in?token=Old-token-secret"
    new = "https://new.example.net/hook"
    unnamed = await api.create(url=old)
    named = await api.create(url=old, name="Orders")
    for made, name in ((unnamed, new), (named, "Orders")):
        path = f"/v1/webhooks/{made['id']}"
        response = await api.client.patch(path, json={"url": new}, headers=auth())
        assert response.status == 200, await response.text()
        assert (await response.json())["name"] == name
        stored = await api.repository.get(made["id"])
        assert stored is not None and stored.name == name


async def test_a_url_too_long_is_refused_naming_the_url(api: Api) -> None:
    url = "https://e.com/" + "p" * 5000
    response = await api.client.post(
        "/v1/webhooks", json={"url": url, "events": ["*"], "site_id": "s1"}, headers=auth()
    )
    assert [f for f, _ in fields(await problem(response, 400))] == ["url"]


async def test_a_repeated_create_of_a_long_url_and_no_name_is_the_same_webhook(api: Api) -> None:
    """Named after its URL's first 500 characters: a repeat (a client-chosen id, or an
    Idempotency-Key) is the webhook made, not a 409 or a 422 (until 2026-12-06 the repeat
    compared the whole URL with the name)."""
    url = "https://example.com/" + "a" * 600
    body = {"id": "wh_long", "url": url, "events": ["post.created"], "site_id": "site_1"}
    first = await api.client.post("/v1/webhooks", json=body, headers=auth())
    assert first.status == 201, await first.text()
    again = await api.client.post("/v1/webhooks", json=body, headers=auth())
    assert again.status == 200, await again.text()
    assert (await again.json())["id"] == "wh_long"
    keyed = {**auth(), "Idempotency-Key": "k-long"}
    unnamed = {k: v for k, v in body.items() if k != "id"}
    made = await api.client.post("/v1/webhooks", json=unnamed, headers=keyed)
    assert made.status == 201, await made.text()
    repeated = await api.client.post("/v1/webhooks", json=unnamed, headers=keyed)
    assert repeated.status == 200, await repeated.text()
    assert repeated.headers[REPLAYED_HEADER] == "true"
    assert (await repeated.json())["id"] == (await made.json())["id"]


@pytest.mark.parametrize(
    ("webhook", "body", "field"),
    [
        # another account than the webhook's owner: never delivered
        ({"site_id": "site_1", "user_id": "user_1"}, {"user_id": "user_2"}, "user_id"),
        ({"site_id": None, "user_id": "user_1"}, {"site_id": "s", "user_id": "user_2"}, "user_id"),
        # another site than a site's webhook's: never delivered without an owner, delivered
        # as the other site's event with one
        ({"site_id": "site_1", "user_id": None}, {"site_id": "site_2"}, "site_id"),
        ({"site_id": "site_1", "user_id": "user_1"}, {"site_id": "site_2"}, "site_id"),
    ],
)
async def test_a_test_event_the_webhook_would_not_get_is_refused_naming_the_field(
    api: Api, webhook: dict[str, Any], body: dict[str, Any], field: str
) -> None:
    """Until 2026-12-06 it was published and answered 202 with a delivery id that never came
    (or delivered to a site's webhook as another site's); a test event given what the webhook
    has no own of (an account-scoped webhook's site, an ownerless one's account) is sent."""
    created = await api.create(**webhook)
    refused = await api.client.post(f"/v1/webhooks/{created['id']}/test", json=body, headers=auth())
    [(named, reason)] = fields(await problem(refused, 400))
    assert named == field and reason.startswith("test_event_")
    assert api.published.events == []
    # What it has no own of may be given; its own may be repeated.
    own = {k: v for k, v in webhook.items() if v is not None}
    fill = {"site_id": "site_9"} if webhook["site_id"] is None else {"user_id": "user_9"}
    allowed = (
        own
        if webhook["user_id"] is not None and webhook["site_id"] is not None
        else {**own, **fill}
    )
    sent = await api.client.post(f"/v1/webhooks/{created['id']}/test", json=allowed, headers=auth())
    assert sent.status == 202, await sent.text()
    [event] = api.published.events
    hook = await api.repository.get(created["id"])
    assert hook is not None and hook.receives(event)


async def test_a_test_event_of_an_inactive_webhook_is_a_409_whatever_its_body(api: Api) -> None:
    created = await api.create(active=False)
    for body in ({}, {"site_id": "site_2"}, {"user_id": "user_2"}):
        refused = await api.client.post(
            f"/v1/webhooks/{created['id']}/test", json=body, headers=auth()
        )
        await problem(refused, 409)
    assert api.published.events == []


async def test_if_none_match_answers_304_on_get_and_is_refused_on_changes(api: Api) -> None:
    """RFC 9110 If-None-Match: a webhook's GET naming its current ETag (weak comparison, or
    ``*``) is a 304; a change carrying it is refused, not made regardless (until 2026-12-07
    the header was ignored: PATCH with ``If-None-Match: *`` changed the webhook)."""
    created = await api.create()
    path = f"/v1/webhooks/{created['id']}"
    tag = response_tag(created)
    for value in (tag, f"W/{tag}", "*", f'"other", {tag}'):
        cached = await api.client.get(path, headers={**auth(), "If-None-Match": value})
        assert cached.status == 304, value
        assert cached.headers["ETag"] == tag and await cached.read() == b""
    fresh = await api.client.get(path, headers={**auth(), "If-None-Match": '"other"'})
    assert fresh.status == 200 and (await fresh.json())["id"] == created["id"]
    malformed = await api.client.get(path, headers={**auth(), "If-None-Match": "nope"})
    assert fields(await problem(malformed, 400)) == [("If-None-Match", "malformed")]
    for method, route, body in (
        ("PATCH", path, {"name": "changed"}),
        ("DELETE", path, None),
        ("POST", f"{path}/rotate-secret", {}),
        ("POST", f"{path}/test", {}),
    ):
        refused = await api.client.request(
            method, route, json=body, headers={**auth(), "If-None-Match": "*"}
        )
        assert fields(await problem(refused, 400)) == [("If-None-Match", "unsupported")], route
    after = await (await api.client.get(path, headers=auth())).json()
    assert after["version"] == created["version"] and after["name"] == created["name"]
    # A stranger is told 401 first.
    stranger = await api.client.patch(path, json={}, headers={"If-None-Match": "*"})
    await problem(stranger, 401)


async def test_authorization_given_twice_is_refused_whichever_comes_first(api: Api) -> None:
    """Until 2026-12-07 the first line was taken: a valid token then a bad one was served, a
    bad one then a valid one refused, and a proxy judging the last would disagree."""
    from multidict import CIMultiDict

    from tests.unit.api.conftest import ADMIN, READER

    for first, second in ((READER, "wbt_nope"), ("wbt_nope", READER), (ADMIN, READER)):
        headers = CIMultiDict([("Authorization", f"Bearer {first}")])
        headers.add("Authorization", f"Bearer {second}")
        refused = await api.client.get("/v1/webhooks", headers=headers)
        body = await problem(refused, 401)
        assert "more than once" in body["detail"]
        assert 'error="invalid_request"' in refused.headers["WWW-Authenticate"]
