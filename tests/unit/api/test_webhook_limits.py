"""What one site (or account) may make of the webhooks every worker holds: at most
``api_max_webhooks`` of them, and no field longer than ``MAX_LENGTHS`` allows.

A site-restricted token is handed to a site's own tools; each webhook it makes is held in every
worker's memory and is one more delivery of every event of its site. These tests try to pass
the limit the ways a client could: many creations at once, moves from other sites, account-wide
webhooks beside a site's, repeats of a create, and fields as long as a request body allows.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.api.app import create_app
from bridge.api.auth import Principal, TokenSet
from bridge.api.problems import Problem
from bridge.api.repository import MemoryRepository, WebhookFilter
from bridge.api.service import WebhookService
from bridge.errors import InvalidSubscription
from bridge.subscriptions import urls
from bridge.subscriptions.changes import (
    MAX_LENGTHS,
    created_record,
    rotated_record,
    updated_record,
)
from bridge.subscriptions.webhook import Webhook, webhook_from_record
from tests.unit.api.conftest import (
    NOW,
    SITE_1,
    TOKENS,
    USER_1,
    Api,
    Clock,
    auth,
    control_service,
)

LIMIT = 3
ADMIN_PRINCIPAL = Principal("admin", frozenset({"read", "write"}))
URL = "https://example.com/hook"


class SlowRepository(MemoryRepository):
    """Webhooks in a dict whose writes take a few turns of the event loop, as a write to Kafka
    does: a creation that counted before another's write landed would pass the limit."""

    async def put(self, webhook: Webhook) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        await super().put(webhook)


def service(repository: MemoryRepository, limit: int = LIMIT) -> WebhookService:
    return WebhookService(repository, clock=Clock(), max_webhooks=limit)


def owner(site_id: str | None, user_id: str | None) -> tuple[str, str | None]:
    return ("site", site_id) if site_id is not None else ("account", user_id)


async def owners(repository: MemoryRepository) -> Counter[tuple[str, str | None]]:
    """How many webhooks each owner has: a site, or an account's account-wide ones."""
    every = await repository.scan(after=None, limit=1_000_000, where=lambda w: True)
    return Counter(owner(w.site_id, w.user_id) for w in every)


async def attempt(call: Callable[[], Any]) -> str:
    """``ok``, or the problem's slug and the field it names."""
    try:
        await call()
    except Problem as problem:
        fields = ",".join(e.field for e in problem.errors)
        return f"{problem.slug}:{fields}"
    return "ok"


async def test_creations_at_once_pass_the_limit_by_none() -> None:
    """Twelve creations for one site at once, each write taking turns of the loop: exactly the
    room left is made, the others are 409 naming site_id (without the owner's lock all twelve
    were made)."""
    repository = SlowRepository()
    webhooks = service(repository)
    body = {"url": URL, "events": ["*"], "site_id": "site_1"}
    await webhooks.create(ADMIN_PRINCIPAL, {**body, "id": "wh_0"})
    outcomes = await asyncio.gather(
        *(
            attempt(lambda n=n: webhooks.create(ADMIN_PRINCIPAL, {**body, "id": f"wh_{n}"}))
            for n in range(1, 13)
        )
    )
    assert Counter(outcomes) == {"ok": LIMIT - 1, "conflict:site_id": 12 - (LIMIT - 1)}
    assert await owners(repository) == {("site", "site_1"): LIMIT}


OPERATION = st.one_of(
    st.tuples(
        st.just("create"), st.sampled_from(["s1", "s2", None]), st.sampled_from(["u1", "u2"])
    ),
    st.tuples(st.just("move"), st.sampled_from(["s1", "s2", None]), st.sampled_from(["u1", "u2"])),
    st.tuples(st.just("delete"), st.none(), st.none()),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rounds=st.lists(
        st.lists(st.tuples(OPERATION, st.integers(0, 9)), min_size=1, max_size=10),
        min_size=1,
        max_size=6,
    )
)
def test_no_owner_ever_has_more_than_the_limit(
    rounds: list[list[tuple[tuple[str, str | None, str | None], int]]],
) -> None:
    """Generated rounds of creations, moves (site to site, site to account-wide and back) and
    deletes of ten ids, each round's operations at once: after every round no site and no
    account has more than the limit, and every refusal was a 409 naming the owner's field
    while that owner was full."""

    async def run() -> None:
        repository = SlowRepository()
        webhooks = service(repository)

        async def one(op: tuple[str, str | None, str | None], n: int) -> str:
            kind, site, user = op
            webhook_id = f"wh_{n}"
            if kind == "create":
                body: dict[str, Any] = {"id": webhook_id, "url": URL, "events": ["*"]}
                body.update({"site_id": site} if site else {})
                body["user_id"] = user
                return await attempt(lambda: webhooks.create(ADMIN_PRINCIPAL, body))
            if await repository.get(webhook_id) is None:
                return "absent"
            if kind == "delete":
                return await attempt(
                    lambda: webhooks.delete(ADMIN_PRINCIPAL, webhook_id, if_match=None)
                )
            changes = {"site_id": site, "user_id": user}
            return await attempt(
                lambda: webhooks.update(ADMIN_PRINCIPAL, webhook_id, changes, if_match=None)
            )

        for round_ in rounds:
            outcomes = await asyncio.gather(*(one(op, n) for op, n in round_))
            counts = await owners(repository)
            assert max(counts.values(), default=0) <= LIMIT, counts
            done = [
                op for (op, _), outcome in zip(round_, outcomes, strict=True) if outcome == "ok"
            ]
            # A webhook left an owner this round (a delete, a move): a refusal before it may
            # have been for an owner that has room now.
            left = any(kind in ("delete", "move") for kind, _, _ in done)
            for ((kind, site, user), _), outcome in zip(round_, outcomes, strict=True):
                assert outcome in (
                    "ok",
                    "absent",
                    "not_found:",  # (deleted by another operation of the round)
                    "conflict:id",
                    "conflict:site_id",
                    "conflict:user_id",
                ), outcome
                if outcome in ("conflict:site_id", "conflict:user_id"):
                    assert kind in ("create", "move")
                    assert outcome == ("conflict:site_id" if site else "conflict:user_id")
                    if not left:
                        assert counts[owner(site, user)] == LIMIT, (counts, site, user)

    asyncio.run(run())


@pytest.fixture
async def client() -> AsyncIterator[tuple[TestClient[Any, Any], MemoryRepository]]:
    repository = MemoryRepository()
    app = create_app(
        service(repository), control_service(repository), TokenSet.from_mapping(TOKENS)
    )
    test_client: TestClient[Any, Any] = TestClient(TestServer(app))
    await test_client.start_server()
    try:
        yield test_client, repository
    finally:
        await test_client.close()


async def test_a_site_token_gets_409_naming_site_id_at_the_limit(
    client: tuple[TestClient[Any, Any], MemoryRepository],
) -> None:
    """A site's token makes its site's webhooks up to the limit; one more is 409 with the
    reason ``webhook_limit``; repeats of a create made already still answer; a delete makes
    room again; an account's account-wide webhooks are counted apart from its sites'."""
    http, _ = client
    body = {"url": URL, "events": ["*"], "site_id": "site_1"}
    for n in range(LIMIT):
        made = await http.post("/v1/webhooks", json={**body, "id": f"wh_{n}"}, headers=auth(SITE_1))
        assert made.status == 201
    refused = await http.post("/v1/webhooks", json={**body, "id": "wh_x"}, headers=auth(SITE_1))
    assert refused.status == 409
    problem = await refused.json()
    assert problem["errors"] == [
        {
            "field": "site_id",
            "in": "body",
            "reason": "webhook_limit",
            "detail": f"the site has {LIMIT} webhooks, the most it may have",
        }
    ]
    repeated = await http.post("/v1/webhooks", json={**body, "id": "wh_0"}, headers=auth(SITE_1))
    assert repeated.status == 200
    assert (await http.delete("/v1/webhooks/wh_0", headers=auth(SITE_1))).status == 204
    again = await http.post("/v1/webhooks", json={**body, "id": "wh_x"}, headers=auth(SITE_1))
    assert again.status == 201
    # The account's own: counted apart from its site's webhooks, by user_id.
    account = {"url": URL, "events": ["*"], "user_id": "user_1"}
    for n in range(LIMIT):
        made = await http.post(
            "/v1/webhooks", json={**account, "id": f"acc_{n}"}, headers=auth(USER_1)
        )
        assert made.status == 201
    full = await http.post("/v1/webhooks", json={**account, "id": "acc_x"}, headers=auth(USER_1))
    assert full.status == 409
    assert [e["field"] for e in (await full.json())["errors"]] == ["user_id"]


async def test_a_move_into_a_full_site_is_409_and_a_change_within_it_is_not(
    client: tuple[TestClient[Any, Any], MemoryRepository],
) -> None:
    http, repository = client
    for n in range(LIMIT):
        await http.post(
            "/v1/webhooks",
            json={"id": f"wh_{n}", "url": URL, "events": ["*"], "site_id": "full"},
            headers=auth(),
        )
    await http.post(
        "/v1/webhooks",
        json={"id": "other", "url": URL, "events": ["*"], "site_id": "elsewhere"},
        headers=auth(),
    )
    moved = await http.patch("/v1/webhooks/other", json={"site_id": "full"}, headers=auth())
    assert moved.status == 409
    assert [e["reason"] for e in (await moved.json())["errors"]] == ["webhook_limit"]
    assert (await repository.get("other")).site_id == "elsewhere"  # type: ignore[union-attr]
    renamed = await http.patch("/v1/webhooks/wh_0", json={"name": "x"}, headers=auth())
    assert renamed.status == 200
    to_account = await http.patch(
        "/v1/webhooks/wh_1", json={"site_id": None, "user_id": "user_9"}, headers=auth()
    )
    assert to_account.status == 200
    # Room in the full site now: the move is made.
    assert (
        await http.patch("/v1/webhooks/other", json={"site_id": "full"}, headers=auth())
    ).status == 200


async def test_no_limit_when_0() -> None:
    repository = MemoryRepository()
    webhooks = service(repository, limit=0)
    for n in range(LIMIT * 4):
        await webhooks.create(
            ADMIN_PRINCIPAL, {"id": f"wh_{n}", "url": URL, "events": ["*"], "site_id": "s"}
        )
    assert await owners(repository) == {("site", "s"): LIMIT * 4}


def test_the_count_walks_only_the_owners_webhooks() -> None:
    """The service narrows its count to the owner (``within``): a repository can walk only
    that site's (or account's) webhooks, not every one."""
    seen: list[WebhookFilter | None] = []

    class Watching(MemoryRepository):
        async def scan(
            self, *, after: Any, limit: int, where: Any, within: Any = None
        ) -> list[Webhook]:
            seen.append(within)
            return await super().scan(after=after, limit=limit, where=where, within=within)

    async def run() -> None:
        webhooks = service(Watching())
        await webhooks.create(ADMIN_PRINCIPAL, {"url": URL, "events": ["*"], "site_id": "s"})
        await webhooks.create(ADMIN_PRINCIPAL, {"url": URL, "events": ["*"], "user_id": "u"})

    asyncio.run(run())
    assert seen == [WebhookFilter(site_id="s"), WebhookFilter(user_id="u")]


# -- field lengths ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MAX_LENGTHS))
async def test_a_field_one_longer_than_allowed_is_400_naming_it(
    client: tuple[TestClient[Any, Any], MemoryRepository], name: str
) -> None:
    """On create, PATCH (site_id, user_id) and rotation (secret): at the limit accepted, one
    past it 400 naming the field; the probe that found it stored a 1 MB site_id and secret."""
    http, _ = client
    longest = MAX_LENGTHS[name]
    body: dict[str, Any] = {"url": URL, "events": ["*"], "site_id": "s", "user_id": "u"}
    at = await http.post(
        "/v1/webhooks", json={**body, "id": "at", name: "x" * longest}, headers=auth()
    )
    assert at.status == 201, await at.text()
    past = await http.post(
        "/v1/webhooks", json={**body, "id": "past", name: "x" * (longest + 1)}, headers=auth()
    )
    assert past.status == 400
    assert [e["field"] for e in (await past.json())["errors"]] == [name]
    if name == "secret":
        rotated = await http.post(
            "/v1/webhooks/at/rotate-secret", json={"secret": "y" * (longest + 1)}, headers=auth()
        )
    else:
        rotated = await http.patch(
            "/v1/webhooks/at", json={name: "y" * (longest + 1)}, headers=auth()
        )
    assert rotated.status == 400
    assert [e["field"] for e in (await rotated.json())["errors"]] == [name]


@pytest.mark.parametrize("name", sorted(MAX_LENGTHS))
def test_every_writer_refuses_a_field_too_long_but_keeps_an_old_record_changeable(
    name: str,
) -> None:
    """The records the CLI and the workers write are held to the same lengths
    (``created_record``, ``updated_record``, ``rotated_record``); a webhook written before
    the lengths were bounded can still be changed in its other fields."""
    from datetime import UTC, datetime

    now = datetime.fromtimestamp(NOW, UTC)
    long = "x" * (MAX_LENGTHS[name] + 1)
    fields: dict[str, Any] = {"site_id": "s", "user_id": "u", name: long}
    with pytest.raises(InvalidSubscription) as created:
        created_record(webhook_id="wh", url=URL, events=["*"], now=now, **fields)
    assert created.value.reason == "too_long"
    record = created_record(
        webhook_id="wh", url=URL, events=["*"], now=now, site_id="s", user_id="u"
    )
    old = webhook_from_record({**record, name: long})  # as written before the bound
    assert updated_record(old, {"name": "renamed"}, now)[name] == long
    with pytest.raises(InvalidSubscription):
        if name == "secret":
            rotated_record(webhook_from_record(record), now=now, secret=long)
        else:
            updated_record(webhook_from_record(record), {name: long}, now)


def test_the_bounds_are_the_documents() -> None:
    """The OpenAPI document states the same lengths the service holds writes to."""
    from bridge.api.openapi import openapi_document

    schemas = openapi_document()["components"]["schemas"]
    for name, longest in MAX_LENGTHS.items():
        assert schemas["WebhookCreate"]["properties"][name]["maxLength"] == longest
        if name != "secret":
            assert schemas["WebhookUpdate"]["properties"][name]["maxLength"] == longest
    assert schemas["RotateSecret"]["properties"]["secret"]["maxLength"] == MAX_LENGTHS["secret"]


async def test_urls_a_client_sends_are_judged_without_being_remembered(api: Api) -> None:
    """The URL cache of the delivery path (50,000 entries of ~6.6 KB) is for the webhooks'
    URLs: a client sending distinct URLs by the thousand, accepted or refused, leaves it as it
    was (until 2026-12-05 each was remembered, 330 MB when full, pushing the webhooks' own
    URLs out)."""
    created = await api.create(id="wh_c")
    before = len(urls._parse)
    for n in range(200):
        good = await api.client.patch(
            "/v1/webhooks/wh_c", json={"url": f"https://a{n}.example/{'p' * 1500}"}, headers=auth()
        )
        assert good.status == 200, await good.text()
        bad = await api.client.patch(
            "/v1/webhooks/wh_c", json={"url": f"ftp://b{n}.example/"}, headers=auth()
        )
        assert bad.status == 400
    assert len(urls._parse) == before
    assert created["id"] == "wh_c"
