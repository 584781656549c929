"""A token restricted to a site or account sees what is its webhooks' now: not a recovery of
a webhook since moved out of its site, and not what was made for a deleted webhook whose id
one of its own took again (client-chosen ids): log, deliveries, dead letters, recoveries."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import ClientResponse

from bridge.api.activity import EndpointStatus
from bridge.attempts.record import Attempt
from tests.unit.api.conftest import (
    ADMIN,
    NOW,
    SITE_1,
    Api,
    attempt,
    auth,
    dead_letter,
)


async def status_of(response: ClientResponse) -> tuple[int, Any]:
    text = await response.text()
    return response.status, text


# GET and DELETE /v1/recoveries/{id} judge the webhook as it is, not as it was when the
# recovery began.


async def _moved_out_recovery(api: Api) -> str:
    """wh_1 is site_1's; site_1 starts a recovery of it; the platform then moves wh_1 to
    site_2. The recovery's location."""
    await api.create(id="wh_1", site_id="site_1", user_id="user_1")
    api.runner.hold = True
    started = await api.client.post(
        "/v1/webhooks/wh_1/recoveries",
        json={"since": "2026-01-15T09:00:00Z"},
        headers=auth(SITE_1),
    )
    assert started.status == 202, await started.text()
    moved = await api.client.patch(
        "/v1/webhooks/wh_1", json={"site_id": "site_2", "user_id": "user_2"}, headers=auth()
    )
    assert moved.status == 200, await moved.text()
    # The webhook is now outside site_1: to it, there is no such webhook.
    listed = await api.client.get("/v1/webhooks/wh_1/recoveries", headers=auth(SITE_1))
    assert listed.status == 404
    return started.headers["Location"]


async def test_a_recovery_of_a_webhook_moved_out_of_the_site_is_not_shown_to_the_site(
    api: Api,
) -> None:
    location = await _moved_out_recovery(api)
    response = await api.client.get(location, headers=auth(SITE_1))
    assert response.status == 404, await status_of(response)


async def test_a_recovery_of_a_webhook_moved_out_of_the_site_cannot_be_cancelled_by_it(
    api: Api,
) -> None:
    location = await _moved_out_recovery(api)
    response = await api.client.delete(location, headers=auth(SITE_1))
    assert response.status == 404, await status_of(response)
    [operation] = api.runner.ran
    assert operation.state == "running"


# A webhook id used again after a delete: the new webhook's owner does not see (or replay)
# the deleted webhook's log, deliveries, dead letters and recoveries, event payloads included.


def _site_2_letter() -> dict[str, Any]:
    letter = dead_letter(7, webhook_id="wh_x")
    letter["event"] = {
        "id": "evt_secret",
        "type": "post.created",
        "site_id": "site_2",
        "user_id": "user_2",
        "data": {"title": "site 2's private post"},
    }
    return letter


async def _site_2_history_then_site_1_takes_the_id(api: Api) -> None:
    await api.create(id="wh_x", site_id="site_2", user_id="user_2")
    api.activity.add(attempt("d_x", 1, webhook_id="wh_x", at=NOW - 60))
    api.dead_letters.records = [_site_2_letter()]
    # While wh_x is site_2's, site_1 sees none of it.
    hidden = await api.client.get("/v1/dead-letters", headers=auth(SITE_1))
    assert (await hidden.json())["items"] == []
    assert (await api.client.get("/v1/deliveries/d_x", headers=auth(SITE_1))).status == 404
    # site_2's webhook is deleted (by the platform, or by site_2's own token)...
    deleted = await api.client.delete("/v1/webhooks/wh_x", headers=auth())
    assert deleted.status == 204
    # ... and, as documented, its delivery is then 404 and its dead letters left out.
    assert (await api.client.get("/v1/deliveries/d_x", headers=auth(SITE_1))).status == 404
    hidden = await api.client.get("/v1/dead-letters", headers=auth(SITE_1))
    assert (await hidden.json())["items"] == []
    # Later, site_1 creates a webhook of its own with the same id.
    api.clock.now = datetime.fromtimestamp(NOW + 60, UTC)
    await api.create(SITE_1, id="wh_x", site_id="site_1", user_id="user_1")


async def test_a_reused_id_does_not_show_the_deleted_webhooks_dead_letters(api: Api) -> None:
    await _site_2_history_then_site_1_takes_the_id(api)
    response = await api.client.get("/v1/dead-letters", headers=auth(SITE_1))
    assert response.status == 200
    assert (await response.json())["items"] == [], "site_2's dead letter (event payload) leaked"


async def test_a_reused_id_does_not_replay_the_deleted_webhooks_dead_letters(api: Api) -> None:
    await _site_2_history_then_site_1_takes_the_id(api)
    response = await api.client.post(
        "/v1/dead-letters/replay", json={"webhook_id": "wh_x"}, headers=auth(SITE_1)
    )
    # A replayed letter is retried to the webhook id's current URL and secret (site_1's).
    assert (await response.json())["replayed"] == [], "site_2's event replayed to site_1"


async def test_a_reused_id_does_not_show_the_deleted_webhooks_deliveries(api: Api) -> None:
    await _site_2_history_then_site_1_takes_the_id(api)
    for path in ("/v1/deliveries/d_x", "/v1/deliveries/d_x?webhook_id=wh_x"):
        response = await api.client.get(path, headers=auth(SITE_1))
        assert response.status == 404, await status_of(response)


async def test_a_reused_id_does_not_show_the_deleted_webhooks_attempts(api: Api) -> None:
    await _site_2_history_then_site_1_takes_the_id(api)
    response = await api.client.get("/v1/webhooks/wh_x/attempts", headers=auth(SITE_1))
    assert response.status == 200
    assert (await response.json())["items"] == [], "site_2's delivery log leaked"


async def test_a_reused_id_does_not_list_the_deleted_webhooks_recoveries(api: Api) -> None:
    await api.create(id="wh_x", site_id="site_2", user_id="user_2")
    started = await api.client.post(
        "/v1/webhooks/wh_x/recoveries", json={"since": "2026-01-15T09:00:00Z"}, headers=auth()
    )
    assert started.status == 202
    assert (await api.client.delete("/v1/webhooks/wh_x", headers=auth())).status == 204
    api.clock.now = datetime.fromtimestamp(NOW + 60, UTC)
    await api.create(SITE_1, id="wh_x", site_id="site_1", user_id="user_1")
    # By id, the old recovery is no recovery of site_1's webhook ...
    by_id = await api.client.get(started.headers["Location"], headers=auth(SITE_1))
    assert by_id.status == 404
    # ... nor is it in the webhook's listing.
    listed = await api.client.get("/v1/webhooks/wh_x/recoveries", headers=auth(SITE_1))
    assert (await listed.json())["items"] == [], "site_2's recovery listed to site_1"


async def test_the_new_webhooks_own_history_is_shown_to_its_owner(api: Api) -> None:
    """What was made for the new webhook after it was created is its owner's as always."""
    await _site_2_history_then_site_1_takes_the_id(api)
    created = (await api.repository.get("wh_x")).created_at
    own = dead_letter(8, webhook_id="wh_x", at="2026-01-15T10:32:00.000Z")
    own["webhook_created_at"] = created
    api.dead_letters.records.append(own)
    api.activity.add(attempt("d_own", 1, webhook_id="wh_x", at=NOW + 120))
    listed = await api.client.get("/v1/dead-letters", headers=auth(SITE_1))
    assert [r["source"]["offset"] for r in (await listed.json())["items"]] == [8]
    attempts = await api.client.get("/v1/webhooks/wh_x/attempts", headers=auth(SITE_1))
    assert [a["delivery_id"] for a in (await attempts.json())["items"]] == ["d_own"]
    for path in ("/v1/deliveries/d_own", "/v1/deliveries/d_own?webhook_id=wh_x"):
        assert (await api.client.get(path, headers=auth(SITE_1))).status == 200
    replay = await api.client.post(
        "/v1/dead-letters/replay", json={"webhook_id": "wh_x"}, headers=auth(SITE_1)
    )
    assert (await replay.json())["replayed"] == ["dl_8"]


async def test_a_delivery_id_both_webhooks_of_an_id_had_is_the_current_ones(api: Api) -> None:
    """A delivery id is made of the event's and the webhook's ids: site_1's new wh_x sent an
    event the deleted wh_x had (a recovery) has the deleted one's delivery id. Until
    2026-12-06 the two were one delivery (two "attempt 1"), and site_1 got 404 for its own,
    listed, attempt because the first attempt was the deleted webhook's."""
    await _site_2_history_then_site_1_takes_the_id(api)
    created = (await api.repository.get("wh_x")).created_at
    own = attempt("d_x", 1, webhook_id="wh_x", at=NOW + 120, outcome="success", status=200)
    own.webhook_created_at = created
    api.activity.add(own)
    for token in (SITE_1, ADMIN):
        for path in ("/v1/deliveries/d_x", "/v1/deliveries/d_x?webhook_id=wh_x"):
            response = await api.client.get(path, headers=auth(token))
            assert response.status == 200, await status_of(response)
            body = await response.json()
            assert [(a["attempt"], a["outcome"]) for a in body["attempts"]] == [(1, "success")]
            assert body["state"] == "delivered"
    redelivered = await api.client.post("/v1/deliveries/d_x/redeliver", headers=auth(SITE_1))
    assert redelivered.status == 202, await status_of(redelivered)


async def test_a_deleted_webhooks_delivery_is_still_shown_to_an_unrestricted_token(
    api: Api,
) -> None:
    """While the webhook of its id now has no attempt of it, the platform's token sees the
    deleted webhook's (its history), a restricted one does not."""
    await _site_2_history_then_site_1_takes_the_id(api)
    assert (await api.client.get("/v1/deliveries/d_x", headers=auth(SITE_1))).status == 404
    response = await api.client.get("/v1/deliveries/d_x", headers=auth(ADMIN))
    assert response.status == 200
    assert [a["attempt"] for a in (await response.json())["attempts"]] == [1]


def _made_for(one: Attempt, webhook: dict[str, Any]) -> Attempt:
    """``one`` as recorded for ``webhook`` (attempt records carry its ``created_at``)."""
    one.webhook_created_at = webhook["created_at"]
    return one


async def test_a_reused_id_does_not_show_the_deleted_webhooks_stats_or_state(api: Api) -> None:
    """Counts, latencies, last success and failing period of site_2's deleted webhook are not
    site_1's new one's (nor anyone's: the stats are of the newest webhook of the id)."""
    old = await api.create(id="wh_x", site_id="site_2", user_id="user_2")
    for n in range(3):
        ok = attempt(f"d_old{n}", 1, webhook_id="wh_x", at=NOW - 300 + n, outcome="success")
        api.activity.add(_made_for(ok, old))
    api.activity.add(_made_for(attempt("d_oldf", 1, webhook_id="wh_x", at=NOW - 200), old))
    api.activity.statuses["wh_x"] = EndpointStatus("failing", NOW - 200, None, "x")
    assert (await api.client.delete("/v1/webhooks/wh_x", headers=auth())).status == 204
    api.clock.now = datetime.fromtimestamp(NOW - 100, UTC)
    new = await api.create(SITE_1, id="wh_x", site_id="site_1", user_id="user_1")
    api.activity.add(_made_for(attempt("d_new", 1, webhook_id="wh_x", at=NOW - 50), new))
    # A deleted webhook's attempt read late (another partition's reader lagging) is not counted.
    api.activity.add(_made_for(attempt("d_late", 1, webhook_id="wh_x", at=NOW - 40), old))
    for token in (SITE_1, ADMIN):
        response = await api.client.get("/v1/webhooks/wh_x/stats", headers=auth(token))
        stats = await response.json()
        assert response.status == 200, stats
        for name, window in stats["windows"].items():
            assert (window["attempts"], window["successes"]) == (1, 0), (token, name)
        assert stats["last_success_at"] is None
        assert stats["last_failure_at"] == "2026-01-15T10:29:10.000Z"
        # Failing since its own first failure, not since the deleted webhook's (status or log).
        assert stats["state"]["failing_since"] == "2026-01-15T10:29:10.000Z", stats["state"]


async def site_2_counted_then_site_1_takes_the_id(api: Api) -> dict[str, Any]:
    """site_2's wh_x: three successes and a failure, the newest skipped by an open circuit,
    all counted for it; deleted; site_1 makes its own wh_x, which has no attempt yet."""
    old = await api.create(id="wh_x", site_id="site_2", user_id="user_2")
    for n in range(3):
        ok = attempt(f"d_old{n}", 1, webhook_id="wh_x", at=NOW - 300 + n, outcome="success")
        api.activity.add(_made_for(ok, old))
    api.activity.add(_made_for(attempt("d_oldf", 1, webhook_id="wh_x", at=NOW - 200), old))
    skipped = attempt("d_olds", 1, webhook_id="wh_x", at=NOW - 150, outcome="skipped")
    skipped.error, skipped.next_at = "circuit_open", "2026-01-15T11:00:00.000Z"
    api.activity.add(_made_for(skipped, old))
    assert (await api.client.delete("/v1/webhooks/wh_x", headers=auth())).status == 204
    api.clock.now = datetime.fromtimestamp(NOW - 100, UTC)
    return await api.create(SITE_1, id="wh_x", site_id="site_1", user_id="user_1")


async def test_a_reused_id_shows_no_stats_before_its_own_first_attempt(api: Api) -> None:
    """Until the new webhook's first attempt its stats are empty, not the deleted one's, nor
    is its circuit open because the deleted one's was (until 2026-12-05 they were shown, to
    the site that took the id too)."""
    await site_2_counted_then_site_1_takes_the_id(api)
    for token in (SITE_1, ADMIN):
        response = await api.client.get("/v1/webhooks/wh_x/stats", headers=auth(token))
        stats = await response.json()
        assert response.status == 200, stats
        assert all(w["attempts"] == 0 for w in stats["windows"].values()), (token, stats)
        assert stats["last_success_at"] is None and stats["last_failure_at"] is None
        assert stats["state"]["circuit_open_until"] is None, stats["state"]
        assert stats["state"]["health"] == "healthy", stats["state"]


async def test_a_deleted_webhooks_running_recovery_neither_blocks_nor_shows_to_the_ids_new_owner(
    api: Api,
) -> None:
    """site_2's webhook wh_x has a recovery running when it is deleted and site_1 takes the
    id: site_1 recovers its own wh_x over the same window, and nothing it is told names the
    other (until 2026-12-06 its recoveries were refused 409 naming site_2's, whose window it
    could find by asking for narrower ones)."""
    await api.create(id="wh_x", site_id="site_2", user_id="user_2")
    api.runner.hold = True
    window = {"since": "2026-01-15T09:13:07Z", "until": "2026-01-15T09:41:52Z"}
    theirs = await api.client.post("/v1/webhooks/wh_x/recoveries", json=window, headers=auth())
    assert theirs.status == 202, await theirs.text()
    foreign = (await theirs.json())["id"]
    assert (await api.client.delete("/v1/webhooks/wh_x", headers=auth())).status == 204
    api.clock.now = datetime.fromtimestamp(NOW + 60, UTC)
    await api.create(token=SITE_1, id="wh_x", site_id="site_1", user_id="user_1")
    mine = await api.client.post("/v1/webhooks/wh_x/recoveries", json=window, headers=auth(SITE_1))
    assert mine.status == 202, await mine.text()
    assert foreign not in await mine.text()
    listed = await api.client.get("/v1/webhooks/wh_x/recoveries", headers=auth(SITE_1))
    assert foreign not in await listed.text()
    # The same webhook's running recovery still refuses an overlapping one.
    again = await api.client.post("/v1/webhooks/wh_x/recoveries", json=window, headers=auth())
    assert again.status == 409, await again.text()
    assert foreign not in await again.text()


async def test_a_deleted_webhooks_attempt_recorded_after_the_id_was_taken_is_not_listed(
    api: Api,
) -> None:
    """A deleted webhook's pending retry is recorded (dropped, ``webhook_deleted``) when it
    falls due, after another site may have taken its id: until 2026-12-07 the attempts list
    showed it (its delivery and event ids, event type and time) to the site that took it,
    judging by the time alone, where ``/v1/deliveries`` judged by the webhook it was made
    for. The internal route a worker relays to judges the same way."""
    await api.create(id="wh_x", site_id="site_2", user_id="user_2")
    site_2s = (await api.repository.get("wh_x")).created_at
    assert (await api.client.delete("/v1/webhooks/wh_x", headers=auth())).status == 204
    api.clock.now = datetime.fromtimestamp(NOW + 60, UTC)
    await api.create(SITE_1, id="wh_x", site_id="site_1", user_id="user_1")
    site_1s = (await api.repository.get("wh_x")).created_at
    assert site_1s != site_2s
    dropped = attempt("d_site2", 3, webhook_id="wh_x", at=NOW + 120).as_dict()
    api.activity.add(Attempt.of({**dropped, "webhook_created_at": site_2s}))
    own = attempt("d_own", 1, webhook_id="wh_x", at=NOW + 130).as_dict()
    api.activity.add(Attempt.of({**own, "webhook_created_at": site_1s}))
    listed = await api.client.get("/v1/webhooks/wh_x/attempts", headers=auth(SITE_1))
    assert [a["delivery_id"] for a in (await listed.json())["items"]] == ["d_own"]
    # The platform's token sees the id's whole log, each attempt naming its webhook.
    everything = await api.client.get("/v1/webhooks/wh_x/attempts", headers=auth(ADMIN))
    assert [a["delivery_id"] for a in (await everything.json())["items"]] == ["d_own", "d_site2"]


async def test_a_restricted_tokens_until_before_the_webhook_was_created_is_an_empty_page(
    api: Api,
) -> None:
    """Until 2026-12-07 a site's token asking for attempts ``until`` a time at or before its
    webhook's creation got a 500 (its ``since`` moved past the ``until``)."""
    await api.create(SITE_1, id="wh_1", site_id="site_1", user_id="user_1")
    api.activity.add(attempt("d_1", 1, at=NOW + 60))
    created = (await api.repository.get("wh_1")).created_at
    for query in (
        "until=2020-01-01T00:00:00Z",
        f"until={created}",
        f"since=1970-01-01T00:00:00Z&until={created}",
    ):
        response = await api.client.get(f"/v1/webhooks/wh_1/attempts?{query}", headers=auth(SITE_1))
        assert response.status == 200, (query, await response.text())
        assert await response.json() == {"items": [], "next_cursor": None}
