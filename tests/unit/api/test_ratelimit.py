"""Requests per token (bridge.api.ratelimit): no window lets a token through more than its
burst and its rate; a refused request's Retry-After is enough; the API answers 429 with it,
per token, after authentication and scope."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from bridge.api.app import ApiConfig, create_app
from bridge.api.auth import TokenSet, hash_token
from bridge.api.problems import PROBLEM_TYPE_PREFIX
from bridge.api.ratelimit import BURST_SECONDS, TokenBuckets
from bridge.api.repository import MemoryRepository
from bridge.api.service import WebhookService
from tests.unit.api.conftest import (
    ADMIN,
    READER,
    Clock,
    MemoryActivity,
    MemoryDeadLetters,
    Published,
    Runner,
    auth,
    control_service,
)


class Now:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@given(
    rate=st.floats(min_value=0.1, max_value=50.0),
    requests=st.lists(
        st.tuples(st.sampled_from("abc"), st.floats(min_value=0.0, max_value=1.0)),
        min_size=1,
        max_size=200,
    ),
    retry=st.booleans(),
)
def test_no_window_admits_more_than_the_burst_and_the_rate_and_retry_after_is_enough(
    rate: float, requests: list[tuple[str, float]], retry: bool
) -> None:
    """Requests of three tokens at generated times (with ``retry``, each refused one sent again
    after the Retry-After it was given, and then admitted): in no window are more of a token's
    admitted than its bucket holds plus the rate over the window, whatever the others send."""
    now = Now()
    buckets = TokenBuckets(rate, clock=now)
    admitted: dict[str, list[float]] = {}
    for token, gap in requests:
        now.t += gap
        wait = buckets.take(token)
        if wait and retry:
            assert wait >= 1
            now.t += wait
            wait = buckets.take(token)
            assert wait == 0
        if wait == 0:
            admitted.setdefault(token, []).append(now.t)
    capacity = max(1.0, rate * BURST_SECONDS)
    for times in admitted.values():
        for i, start in enumerate(times):
            for j in range(i, len(times)):
                assert j - i + 1 <= capacity + rate * (times[j] - start) + 1e-6


def test_tokens_have_their_own_buckets_and_rate_zero_has_none() -> None:
    now = Now()
    buckets = TokenBuckets(1.0, clock=now)
    assert [buckets.take("a") for _ in range(3)] == [0, 0, 1]  # a burst of two seconds' worth
    assert buckets.take("b") == 0
    now.t += 1.0
    assert buckets.take("a") == 0
    unlimited = TokenBuckets(0.0, clock=now)
    assert all(unlimited.take("a") == 0 for _ in range(10_000))


@pytest.fixture
async def limited() -> AsyncIterator[TestClient[Any, Any]]:
    """The API at half a request a second per token: one at once, then one every two seconds."""
    repository = MemoryRepository()
    service = WebhookService(repository, publisher=Published(), clock=Clock())
    control = control_service(repository, MemoryActivity(), Runner(), MemoryDeadLetters())
    tokens = TokenSet.from_mapping(
        {
            "tokens": [
                {"name": "admin", "sha256": hash_token(ADMIN), "scopes": ["read", "write"]},
                {"name": "reader", "sha256": hash_token(READER), "scopes": ["read"]},
            ]
        }
    )
    app = create_app(service, control, tokens, config=ApiConfig(rate_limit=0.5))
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_a_token_over_its_rate_is_answered_429_with_retry_after(
    limited: TestClient[Any, Any],
) -> None:
    # Refused for its scope: not counted.
    refused = await limited.post("/v1/webhooks", json={}, headers=auth(READER))
    assert refused.status == 403
    assert (await limited.get("/v1/webhooks", headers=auth(READER))).status == 200
    over = await limited.get("/v1/webhooks", headers=auth(READER))
    assert over.status == 429
    assert over.headers["Retry-After"] == "2"
    assert over.content_type == "application/problem+json"
    problem = await over.json()
    assert problem["type"] == PROBLEM_TYPE_PREFIX + "too_many_requests"
    assert problem["status"] == 429
    # Another token is not held back by this one; no token at all is 401 as ever.
    assert (await limited.get("/v1/webhooks", headers=auth(ADMIN))).status == 200
    assert (await limited.get("/v1/webhooks")).status == 401
