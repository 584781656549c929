"""The routes workers read each other's delivery logs through (``/internal/v1/...``), served
beside ``/v1`` to anyone with a token: they answer no more than ``/v1`` would, and no faster."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bridge.api.auth import TokenSet
from bridge.api.problems import problem_middleware
from bridge.attempts.record import Attempt
from bridge.worker.api import _Internal
from tests.unit.api.conftest import NOW, SITE_1, TOKENS, Api, attempt, auth
from tests.unit.api.test_reused_ids import site_2_counted_then_site_1_takes_the_id


class _Changes:
    def watch(self) -> None:
        return None


class _Bridge:
    """What the internal routes ask of a worker: its book."""

    def __init__(self, api: Api) -> None:
        self.activity = api.activity
        self.changes = _Changes()

    def local_activity(self, webhook_id: str) -> Any:
        return self.activity.book.get(webhook_id) or self.activity.book.empty()

    def local_delivery(self, delivery_id: str) -> list[Attempt]:
        return self.activity.book.delivery(delivery_id)


def internal_app(api: Api, rate_limit: float = 0.0) -> web.Application:
    internal = _Internal(
        cast(Any, _Bridge(api)),
        TokenSet.from_mapping(TOKENS),
        api.repository,
        rate_limit=rate_limit,
    )
    app = web.Application(middlewares=[problem_middleware(10.0)])
    app.router.add_get("/internal/v1/activity/{webhook_id}", internal.activity)
    app.router.add_get("/internal/v1/deliveries/{delivery_id}", internal.delivery)
    return app


async def test_the_internal_routes_show_a_restricted_token_what_v1_does(api: Api) -> None:
    """The routes workers read each other's logs through are served beside /v1, to any
    caller with a token: given a site's, they answer what /v1 shows it, not the log, stats or
    deliveries of the deleted webhook whose id its own took (until 2026-12-05 they did)."""
    await site_2_counted_then_site_1_takes_the_id(api)
    api.activity.add(attempt("d_new", 1, webhook_id="wh_x", at=NOW - 50))
    async with TestClient(TestServer(internal_app(api), host="127.0.0.1")) as client:
        seen = await (await client.get("/internal/v1/activity/wh_x", headers=auth(SITE_1))).json()
        assert [a["delivery_id"] for a in seen["attempts"]] == ["d_new"]
        assert seen["stats"]["webhook_created_at"] is None  # none counted for site_1's wh_x
        assert seen["stats"]["last_success"] is None
        old = await client.get("/internal/v1/deliveries/d_oldf", headers=auth(SITE_1))
        assert (await old.json())["attempts"] == []
        # The platform's token is shown the log as kept, as /v1 shows it.
        whole = await (await client.get("/internal/v1/activity/wh_x", headers=auth())).json()
        assert len(whole["attempts"]) == 6


async def test_a_tokens_log_reads_here_are_limited_as_through_v1(api: Api) -> None:
    """Each answer is a webhook's whole log: a token may read here ``api_rate_limit`` times a
    second, and is then told when to come back (until 2026-12-05 it was not limited)."""
    await api.create(SITE_1, id="wh_1", site_id="site_1", user_id="user_1")
    api.activity.add(attempt("d_1", 1, webhook_id="wh_1", at=NOW - 50))
    async with TestClient(TestServer(internal_app(api, rate_limit=1.0), host="127.0.0.1")) as c:
        statuses = [
            (await c.get("/internal/v1/activity/wh_1", headers=auth(SITE_1))).status
            for _ in range(4)
        ]
        assert statuses[:2] == [200, 200]  # the burst: two seconds' worth
        refused = await c.get("/internal/v1/deliveries/d_1", headers=auth(SITE_1))
        assert refused.status == 429 and refused.headers["Retry-After"] == "1"
        assert statuses[2:] == [429, 429]


async def test_the_internal_log_leaves_out_a_deleted_webhooks_attempt_recorded_after_it(
    api: Api,
) -> None:
    """An attempt made for the deleted webhook (its record names it) but recorded after the
    id was taken again (a dropped retry): judged by the webhook it was made for, as /v1 does
    (until 2026-12-07 by its time alone)."""
    await api.create(id="wh_x", site_id="site_2", user_id="user_2")
    site_2s = (await api.repository.get("wh_x")).created_at
    assert (await api.client.delete("/v1/webhooks/wh_x", headers=auth())).status == 204
    api.clock.now = datetime.fromtimestamp(NOW + 60, UTC)
    await api.create(SITE_1, id="wh_x", site_id="site_1", user_id="user_1")
    dropped = attempt("d_site2", 3, webhook_id="wh_x", at=NOW + 120).as_dict()
    api.activity.add(Attempt.of({**dropped, "webhook_created_at": site_2s}))
    async with TestClient(TestServer(internal_app(api), host="127.0.0.1")) as client:
        seen = await (await client.get("/internal/v1/activity/wh_x", headers=auth(SITE_1))).json()
        assert seen["attempts"] == []
