"""bridge.worker.api while owners settle: a change is held until its owner is known, then made
here or relayed once; a relayed change is held until this worker is its owner, never relayed
again, and answered 503 with Retry-After after its hold; the owner's internal route holds a read
until its partition is read. No broker: the assignment is set by hand, other workers are local
servers."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.typedefs import Handler
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.admin.recovery import Operation, RecoveryRequest
from bridge.api.app import create_app
from bridge.api.auth import Principal, TokenSet, hash_token
from bridge.api.control import ControlService
from bridge.api.idempotency import HEADER as IDEMPOTENCY_KEY
from bridge.api.metrics import ApiMetrics
from bridge.api.problems import PROBLEM_TYPE_PREFIX, Problem, problem_middleware
from bridge.api.recoveries import Recoveries
from bridge.api.repository import MemoryRepository
from bridge.api.service import WebhookService
from bridge.api.table_repository import TableRepository
from bridge.contract import jsoncanon
from bridge.subscriptions.serial import NotWritable
from bridge.subscriptions.webhook import Webhook
from bridge.worker.api import (
    RELAYED_BY,
    WorkerActivitySource,
    _authorization,
    _holding,
    _Internal,
    _Relay,
)
from bridge.worker.app import Bridge
from bridge.worker.delivery_log import attempts_partition
from bridge.worker.embedded import free_port
from bridge.worker.recovery_view import DEFAULT_STALE_AFTER, live_runner
from bridge.worker.settling import HOLD_HEADER
from tests.support.api import LOG_AUTH, SITE_AUTH, write_token_file
from tests.support.builders import encode, webhook_record
from tests.support.journals import ViewJournal
from tests.support.waiting import PROMPT, eventually
from tests.support.workers import offline_bridge
from tests.unit.api.conftest import MemoryActivity, MemoryDeadLetters, Runner, attempt
from tests.unit.worker.test_delivery_log import (
    Assigned,
    FakeAssignor,
    counting_looks,
    recent,
    turns,
)

#: The hold of these tests' requests (the workers' own, with the default request timeout).
HOLD = 5.0


def api_bridge(tmp: Path) -> Bridge:
    """A worker with the delivery log and the API (its token file written), never started."""
    tokens = write_token_file(tmp / "tokens.json")
    return offline_bridge(tmp / "data", delivery_log=True, api_tokens=str(tokens), web_port=7001)


@pytest.fixture
def bridge(tmp_path: Path) -> Iterator[Bridge]:
    yield api_bridge(tmp_path)


def assign(bridge: Bridge, owners: dict[str, list[int]]) -> None:
    """A new assignment: Faust's assignor learns every owner (URL: partitions), then the
    attempts table tells the bridge which partitions are its own."""
    topic = bridge.settings.attempts_topic
    bridge.app.assignor = FakeAssignor(  # type: ignore[assignment]
        {url: {topic: p} for url, p in owners.items()}, received_at=bridge.app.rebalancing_count
    )
    bridge._attempts_assigned(set(owners.get(bridge.settings.canonical_url, ())))


class Peer:
    """Another worker: the owner of the webhooks it is assigned, answering relayed changes."""

    def __init__(self) -> None:
        self.relayed: list[dict[str, str]] = []
        #: The connection each relayed change came on (its client port: a closed connection's
        #: is in TIME_WAIT on the relaying side, so a new connection has another).
        self.connections: list[int] = []
        app = web.Application()
        app.router.add_patch("/v1/webhooks/{webhook_id}", self._change)
        self.server = TestServer(app, host="127.0.0.1")

    async def _change(self, request: web.Request) -> web.Response:
        self.relayed.append(dict(request.headers))
        assert request.transport is not None
        self.connections.append(request.transport.get_extra_info("peername")[1])
        return web.json_response({"made_by": "peer"})

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    running = Peer()
    await running.server.start_server()
    yield running
    await running.server.close()


def relaying_app(bridge: Bridge, change: Handler, hold: float) -> web.Application:
    """``/v1`` as a worker serves it (problems, the hold, timed in the bridge's registry, and
    the relay) over ``change``, the stub of a webhook's change."""
    tokens = TokenSet.from_file(str(bridge.settings.api_tokens))
    relay = _Relay(bridge, tokens, max_bytes=1 << 20)
    holding = _holding(hold, ApiMetrics(bridge.registry))
    app = web.Application(middlewares=[problem_middleware(10.0), holding, relay.middleware])
    app.router.add_patch("/v1/webhooks/{webhook_id}", change)
    return app


@pytest.fixture
async def worker(bridge: Bridge) -> AsyncIterator[tuple[TestClient[Any, Any], list[str]]]:
    """This worker's ``/v1`` changes behind its relay (the change itself a stub recording what
    it made), and its internal read of a webhook's log."""
    made: list[str] = []

    async def change(request: web.Request) -> web.Response:
        made.append(request.match_info["webhook_id"])
        return web.json_response({"made_by": "here"})

    webhook = Webhook(
        id="wh", name="n", url="https://example.com/h", secret="s" * 16,
        events=frozenset({"*"}), site_id="s1", user_id="u1",
    )  # fmt: skip
    tokens = TokenSet.from_file(str(bridge.settings.api_tokens))
    internal = _Internal(bridge, tokens, MemoryRepository({"wh": webhook}))
    app = relaying_app(bridge, change, HOLD)
    app.router.add_delete("/v1/recoveries/{recovery_id}", change)  # (a stub: never reached here)
    app.router.add_get("/internal/v1/activity/{webhook_id}", internal.activity)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client, made
    await bridge.close()


def holds(bridge: Bridge, outcome: str, hop: str = "client") -> tuple[float, float]:
    """How many requests (as ``hop`` counts them) were held and ended ``outcome``, and their
    seconds held in all."""
    registry = bridge.registry
    labels = {"outcome": outcome, "hop": hop}
    count = registry.get_sample_value("webhook_bridge_api_held_seconds_count", labels)
    total = registry.get_sample_value("webhook_bridge_api_held_seconds_sum", labels)
    return count or 0.0, total or 0.0


def others(p: int) -> list[int]:
    return [q for q in range(6) if q != p]


async def held(looks: list[int], sent: asyncio.Future[Any], at_least: int) -> None:
    """Wait until the request ``sent`` has looked for its owner ``at_least`` times (it got to
    this worker), then check that it is still waiting: it was held, not answered."""
    await eventually(lambda: len(looks) >= at_least or sent.done())
    await turns()
    assert not sent.done(), sent.result()


async def test_a_change_while_no_owner_is_known_is_held_then_relayed_once(
    bridge: Bridge,
    worker: tuple[TestClient[Any, Any], list[str]],
    peer: Peer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, made = worker
    p = attempts_partition("wh", 6)
    looks = counting_looks(bridge, monkeypatch, "owner")
    assign(bridge, {})  # a rebalance: no assignment names an owner
    sent = asyncio.ensure_future(client.patch("/v1/webhooks/wh", json={}, headers=LOG_AUTH))
    await held(looks, sent, 2)  # is it this worker's? then: whose?
    assign(bridge, {bridge.settings.canonical_url: others(p), peer.url: [p]})
    answer = await asyncio.wait_for(sent, PROMPT)
    assert answer.status == 200 and await answer.json() == {"made_by": "peer"}
    assert not made and len(peer.relayed) == 1
    relayed = peer.relayed[0]
    assert relayed[RELAYED_BY] == bridge.settings.canonical_url
    assert 0 < float(relayed[HOLD_HEADER]) <= HOLD  # what is left of this worker's hold
    assert holds(bridge, "settled")[0] == 1 and holds(bridge, "unavailable")[0] == 0


async def test_a_relayed_change_is_made_once_this_worker_learns_it_is_the_owner(
    bridge: Bridge,
    worker: tuple[TestClient[Any, Any], list[str]],
    peer: Peer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The relaying worker learnt the new assignment first: the change waits for this worker's,
    rather than be refused (or relayed back)."""
    client, made = worker
    p = attempts_partition("wh", 6)
    looks = counting_looks(bridge, monkeypatch, "owner")
    assign(bridge, {bridge.settings.canonical_url: others(p), peer.url: [p]})
    headers = {**LOG_AUTH, RELAYED_BY: peer.url}
    sent = asyncio.ensure_future(client.patch("/v1/webhooks/wh", json={}, headers=headers))
    await held(looks, sent, 2)
    assign(bridge, {bridge.settings.canonical_url: list(range(6))})
    answer = await asyncio.wait_for(sent, PROMPT)
    assert answer.status == 200 and await answer.json() == {"made_by": "here"}
    assert made == ["wh"] and not peer.relayed


async def test_a_relayed_change_that_stays_another_worker_s_is_unavailable_after_its_hold(
    bridge: Bridge, worker: tuple[TestClient[Any, Any], list[str]], peer: Peer
) -> None:
    client, made = worker
    p = attempts_partition("wh", 6)
    assign(bridge, {bridge.settings.canonical_url: others(p), peer.url: [p]})
    headers = {**LOG_AUTH, RELAYED_BY: peer.url, HOLD_HEADER: "0.3"}  # what the peer had left
    started = time.monotonic()
    answer = await asyncio.wait_for(
        client.patch("/v1/webhooks/wh", json={}, headers=headers), PROMPT
    )
    assert 0.3 <= time.monotonic() - started < PROMPT
    assert answer.status == 503 and answer.headers["Retry-After"] == "1"
    problem = await answer.json()
    assert problem["type"] == PROBLEM_TYPE_PREFIX + "unavailable"
    assert "another worker" in problem["detail"]
    assert not made and not peer.relayed  # neither made here nor relayed again
    count, seconds = holds(bridge, "unavailable", hop="peer")  # sent with the relay header
    assert count == 1 and 0.3 - 0.05 <= seconds < PROMPT
    assert holds(bridge, "unavailable") == (0, 0)


async def test_a_change_the_worker_owns_is_made_at_once(
    bridge: Bridge, worker: tuple[TestClient[Any, Any], list[str]]
) -> None:
    client, made = worker
    assign(bridge, {bridge.settings.canonical_url: list(range(6))})
    # Nothing changes from here on: held, it would wait its whole hold (longer than PROMPT).
    answer = await asyncio.wait_for(
        client.patch("/v1/webhooks/wh", json={}, headers=LOG_AUTH), PROMPT
    )
    assert answer.status == 200 and made == ["wh"]
    for hop in ("client", "peer"):  # never waited
        assert holds(bridge, "settled", hop) == holds(bridge, "unavailable", hop) == (0, 0)


async def test_a_change_waiting_at_the_owner_as_a_rebalance_begins_is_made_by_the_next_owner(
    bridge: Bridge, peer: Peer
) -> None:
    """The change waits for the webhook's lock (another change of it is being made) when the
    worker gives its partitions up: it is not written here (the fence as it is written), and
    goes to the owner the next assignment names, as one not yet made."""
    made: list[str] = []
    entered = asyncio.Event()

    async def change(request: web.Request) -> web.Response:
        webhook_id = request.match_info["webhook_id"]
        entered.set()
        async with bridge.change_locks.hold(webhook_id):
            async with bridge.change_locks.writing(webhook_id):
                made.append(webhook_id)
        return web.json_response({"made_by": "here"})

    p = attempts_partition("wh", 6)
    assign(bridge, {bridge.settings.canonical_url: list(range(6))})
    try:
        async with TestClient(TestServer(relaying_app(bridge, change, HOLD))) as client:
            async with bridge.change_locks.hold("wh"):  # another change of it, being made
                sent = asyncio.ensure_future(
                    client.patch("/v1/webhooks/wh", json={}, headers=LOG_AUTH)
                )
                await asyncio.wait_for(entered.wait(), PROMPT)
                await turns()
                bridge.app.on_rebalance_start()  # as Faust's consumer gives them up
            await turns()
            assert not sent.done()  # held: no owner until the next assignment
            assign(bridge, {bridge.settings.canonical_url: others(p), peer.url: [p]})
            answer = await asyncio.wait_for(sent, PROMPT)
            assert answer.status == 200 and await answer.json() == {"made_by": "peer"}
    finally:
        await bridge.close()
    assert not made and len(peer.relayed) == 1
    assert await bridge.change_locks.drained(0.0)


async def test_a_worker_giving_its_partitions_up_waits_for_the_changes_being_written(
    bridge: Bridge,
) -> None:
    """Faust awaits the revocation before the group is joined again: the changes let through
    before the rebalance began are written (acknowledged) before any worker is given the
    partition; one that does not end is waited for no longer than half the rebalance
    timeout."""
    assign(bridge, {bridge.settings.canonical_url: list(range(6))})
    release = asyncio.Event()

    async def write() -> None:
        async with bridge.change_locks.hold("wh"), bridge.change_locks.writing("wh"):
            await release.wait()

    writing = asyncio.create_task(write())
    await turns()
    bridge.app.on_rebalance_start()
    with pytest.raises(NotWritable):  # none begins from here on
        async with bridge.change_locks.writing("wh_other"):
            pass
    revoked = asyncio.create_task(bridge.app.on_partitions_revoked.send(set()))
    await turns()
    assert not revoked.done()
    release.set()
    await asyncio.wait_for(revoked, PROMPT)
    await writing

    # A write that never ends: the rebalance goes on after half its timeout.
    release.clear()
    assign(bridge, {bridge.settings.canonical_url: list(range(6))})
    stuck = asyncio.create_task(write())
    await turns()
    bound = bridge.settings.kafka_rebalance_timeout / 2
    started = time.monotonic()
    await asyncio.wait_for(bridge.app.on_partitions_revoked.send(set()), bound + PROMPT)
    assert bound <= time.monotonic() - started + 0.05
    release.set()
    await stuck
    await bridge.close()


async def test_a_stranger_s_change_is_refused_before_it_could_be_held(
    bridge: Bridge, worker: tuple[TestClient[Any, Any], list[str]]
) -> None:
    client, made = worker
    assign(bridge, {})
    for headers in ({}, {RELAYED_BY: "http://127.0.0.1:1"}):
        answer = await asyncio.wait_for(
            client.patch("/v1/webhooks/wh", json={}, headers=headers), PROMPT
        )
        assert answer.status == 401
    assert not made


async def test_the_owner_holds_a_routed_read_until_its_partition_is_read(
    bridge: Bridge, worker: tuple[TestClient[Any, Any], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = worker
    log = bridge.delivery_log
    assert log is not None
    p = attempts_partition("wh", 6)
    assign(bridge, {bridge.settings.canonical_url: list(range(6))})
    await log._reassign(Assigned({**dict.fromkeys(range(6), 0), p: 1}))
    path = "/internal/v1/activity/wh"
    # With what a peer's hold had left (nothing): answered at once, 503 with Retry-After.
    answer = await asyncio.wait_for(
        client.get(path, headers={**LOG_AUTH, HOLD_HEADER: "0"}), PROMPT
    )
    assert answer.status == 503 and answer.headers["Retry-After"] == "1"
    assert "still reading" in (await answer.json())["detail"]
    looks = counting_looks(bridge, monkeypatch, "local_activity")
    sent = asyncio.ensure_future(client.get(path, headers=LOG_AUTH))
    await held(looks, sent, 1)  # a part of the log is not answered as if it were all
    log.add(p, 0, recent("wh", "d0"))
    answer = await asyncio.wait_for(sent, PROMPT)
    assert answer.status == 200, await answer.text()
    assert [a["delivery_id"] for a in (await answer.json())["attempts"]] == ["d0"]


async def test_a_change_for_an_owner_that_is_gone_goes_to_the_next_one(
    bridge: Bridge,
    worker: tuple[TestClient[Any, Any], list[str]],
    peer: Peer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The assignment still names a worker that was killed: no connection, nothing sent; the
    change waits for the assignment that names the next owner and goes there, once."""
    client, made = worker
    p = attempts_partition("wh", 6)
    gone = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    looks = counting_looks(bridge, monkeypatch, "owner")
    assign(bridge, {bridge.settings.canonical_url: others(p), gone: [p]})
    sent = asyncio.ensure_future(client.patch("/v1/webhooks/wh", json={}, headers=LOG_AUTH))
    await held(looks, sent, 2)
    assign(bridge, {bridge.settings.canonical_url: others(p), peer.url: [p]})
    answer = await asyncio.wait_for(sent, PROMPT)
    assert answer.status == 200 and await answer.json() == {"made_by": "peer"}
    assert not made and len(peer.relayed) == 1


async def test_each_relayed_change_has_a_connection_of_its_own(
    bridge: Bridge, worker: tuple[TestClient[Any, Any], list[str]], peer: Peer
) -> None:
    """A kept connection the owner closed as it stopped would fail a change that never reached
    it like one it dropped midway (never sent again); a new one is refused instead, which sends
    the change to the next owner. Routed reads keep reusing theirs."""
    client, made = worker
    p = attempts_partition("wh", 6)
    assign(bridge, {bridge.settings.canonical_url: others(p), peer.url: [p]})
    for _ in range(3):
        answer = await asyncio.wait_for(
            client.patch("/v1/webhooks/wh", json={}, headers=LOG_AUTH), PROMPT
        )
        assert answer.status == 200
    assert len(peer.relayed) == 3 and len(set(peer.connections)) == 3
    assert bridge.peers(fresh=True) is not bridge.peers()


async def test_a_cancel_for_a_runner_that_is_gone_is_unavailable(
    bridge: Bridge,
    worker: tuple[TestClient[Any, Any], list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A recovery's cancel goes to the worker running it; when that worker cannot be connected
    to, the answer is 503 with Retry-After (not a server error), and nothing is made here."""
    client, made = worker
    gone = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    monkeypatch.setattr(bridge.recoveries, "live_runner", lambda *args: gone)

    async def current(*args: Any) -> bool:  # no broker here: the recoveries table is current
        return True

    monkeypatch.setattr(bridge.recoveries.freshness, "wait_current", current)
    answer = await asyncio.wait_for(client.delete("/v1/recoveries/r1", headers=LOG_AUTH), PROMPT)
    assert answer.status == 503 and answer.headers["Retry-After"] == "1"
    assert "did not answer" in (await answer.json())["detail"]
    assert not made


async def test_a_cancel_without_a_token_is_refused_before_the_recoveries_table_is_asked(
    bridge: Bridge,
    worker: tuple[TestClient[Any, Any], list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finding a recovery's runner waits for the recoveries table (an end-offsets request):
    a request without a token, or one that may not write, is refused first (until
    2026-12-06 each made the worker ask the broker, and waited with it)."""
    client, made = worker
    asked: list[float] = []

    async def current(received_at: float, *args: Any) -> bool:
        asked.append(received_at)
        return True

    monkeypatch.setattr(bridge.recoveries.freshness, "wait_current", current)
    answer = await asyncio.wait_for(client.delete("/v1/recoveries/r1"), PROMPT)
    assert answer.status == 401 and asked == [] and not made
    answer = await asyncio.wait_for(
        client.delete("/v1/recoveries/r1", headers={"Authorization": "Bearer nope"}), PROMPT
    )
    assert answer.status == 401 and asked == [] and not made


async def taking_and_closing() -> tuple[list[bytes], asyncio.Server]:
    """An owner that takes each request's head, then closes the connection without an answer
    (as a worker stopping); the heads it took, and the server (close it)."""
    taken: list[bytes] = []

    async def take_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        taken.append(await reader.readuntil(b"\r\n\r\n"))
        writer.close()

    return taken, await asyncio.start_server(take_and_close, "127.0.0.1", 0)


async def test_a_change_sent_to_an_owner_that_then_went_is_not_sent_again(
    bridge: Bridge, worker: tuple[TestClient[Any, Any], list[str]], peer: Peer
) -> None:
    """The owner took the request and closed the connection without an answer: it may have
    made the change (a rotation, say), so the change is answered 503, never made twice."""
    client, made = worker
    p = attempts_partition("wh", 6)
    taken, server = await taking_and_closing()
    port = server.sockets[0].getsockname()[1]
    try:
        assign(bridge, {bridge.settings.canonical_url: others(p), f"http://127.0.0.1:{port}": [p]})
        answer = await asyncio.wait_for(
            client.patch("/v1/webhooks/wh", json={}, headers=LOG_AUTH), PROMPT
        )
        # A change of assignment now finds no request waiting to be sent again.
        assign(bridge, {bridge.settings.canonical_url: others(p), peer.url: [p]})
    finally:
        server.close()
        await server.wait_closed()
    assert answer.status == 503 and answer.headers["Retry-After"] == "1"
    assert "did not answer" in (await answer.json())["detail"]
    assert len(taken) == 1 and not made and not peer.relayed


async def test_a_keyed_change_sent_to_an_owner_that_then_went_goes_to_the_next_one(
    bridge: Bridge, worker: tuple[TestClient[Any, Any], list[str]], peer: Peer
) -> None:
    """The same, with an Idempotency-Key: the next owner makes it at most once (the key is in
    the webhook's record), so the change waits for the next assignment and goes there, within
    the same hold, with its key."""
    client, made = worker
    p = attempts_partition("wh", 6)
    taken, server = await taking_and_closing()
    port = server.sockets[0].getsockname()[1]
    headers = {**LOG_AUTH, IDEMPOTENCY_KEY: "retry-me-1"}
    try:
        assign(bridge, {bridge.settings.canonical_url: others(p), f"http://127.0.0.1:{port}": [p]})
        sent = asyncio.ensure_future(client.patch("/v1/webhooks/wh", json={}, headers=headers))
        await eventually(lambda: len(taken) == 1)
        await turns()
        assert not sent.done()  # held for the next assignment, not answered 503
        assign(bridge, {bridge.settings.canonical_url: others(p), peer.url: [p]})
        answer = await asyncio.wait_for(sent, PROMPT)
    finally:
        server.close()
        await server.wait_closed()
    assert answer.status == 200 and await answer.json() == {"made_by": "peer"}
    assert b"idempotency-key: retry-me-1" in taken[0].lower()
    assert len(peer.relayed) == 1 and peer.relayed[0][IDEMPOTENCY_KEY] == "retry-me-1"
    assert not made


async def test_a_keyed_request_of_a_route_that_ignores_keys_is_not_sent_again(
    bridge: Bridge, peer: Peer
) -> None:
    """A delete takes no key (a second one answers 404, not what the first did): one sent and
    not answered is ``503`` whatever it carries, and goes to no other owner."""
    made: list[str] = []

    async def delete(request: web.Request) -> web.Response:
        made.append(request.match_info["webhook_id"])
        return web.Response(status=204)

    app = relaying_app(bridge, delete, HOLD)
    app.router.add_delete("/v1/webhooks/{webhook_id}", delete)
    p = attempts_partition("wh", 6)
    taken, server = await taking_and_closing()
    port = server.sockets[0].getsockname()[1]
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            assign(
                bridge,
                {bridge.settings.canonical_url: others(p), f"http://127.0.0.1:{port}": [p]},
            )
            answer = await asyncio.wait_for(
                client.delete("/v1/webhooks/wh", headers={**LOG_AUTH, IDEMPOTENCY_KEY: "k"}),
                PROMPT,
            )
            assign(bridge, {bridge.settings.canonical_url: others(p), peer.url: [p]})
    finally:
        server.close()
        await server.wait_closed()
        await bridge.close()
    assert answer.status == 503 and len(taken) == 1
    assert not made and not peer.relayed


#: Who an assignment names as the owner of the webhook's partition: nobody (a rebalance), this
#: worker, a live peer, or a worker that is gone (still named, nothing listens); or a rebalance
#: begins (this worker gave up its partitions; the last assignment's owners are still known).
_OWNERS = st.sampled_from(["nobody", "here", "peer", "gone", "rebalancing"])


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    first=_OWNERS,
    then=st.lists(st.tuples(st.integers(0, 6), _OWNERS), max_size=4),
    relayed=st.booleans(),
    taking=st.integers(0, 6),
)
def test_whatever_the_assignments_a_change_is_made_once_by_an_owner_or_not_at_all(
    tmp_path_factory: pytest.TempPathFactory,
    first: str,
    then: list[tuple[int, str]],
    relayed: bool,
    taking: int,
) -> None:
    """A change sent while assignments come and go (each after a generated number of event-loop
    turns), the owner taking ``taking`` turns under the webhook's lock before it writes: it is
    answered within its hold; made at most once, and only by a worker the assignment named as
    the owner when it was written; ``200`` if and only if it was made; a change relayed by a
    peer is never relayed again."""
    tmp = tmp_path_factory.mktemp("w")
    asyncio.run(_change_under_assignments(tmp, first, then, relayed, taking))


async def _change_under_assignments(
    tmp: Path, first: str, then: list[tuple[int, str]], relayed: bool, taking: int
) -> None:
    bridge = api_bridge(tmp)
    peer = Peer()
    await peer.server.start_server()
    hold = 0.3
    made_here: list[bool] = []  # whether this worker was the owner when it made the change

    async def change(request: web.Request) -> web.Response:
        async with bridge.change_locks.hold("wh"):
            await turns(taking)  # reading its table: a rebalance may begin meanwhile
            async with bridge.change_locks.writing("wh"):
                # Named by the last assignment, and no rebalance begun since.
                made_here.append(bridge.owner("wh").local and bridge.assignment_settled())
        return web.json_response({"made_by": "here"})

    p = attempts_partition("wh", 6)
    gone = f"http://127.0.0.1:{free_port()}"
    urls = {"here": bridge.settings.canonical_url, "peer": peer.url, "gone": gone}

    def assign_to(who: str) -> None:
        if who == "rebalancing":
            bridge.app.on_rebalance_start()  # as Faust's consumer does when it gives them up
            return
        owners = {bridge.settings.canonical_url: others(p)}
        if who != "nobody":
            owners.setdefault(urls[who], []).append(p)
        assign(bridge, owners)

    app = relaying_app(bridge, change, hold)
    headers = {**LOG_AUTH, **({RELAYED_BY: peer.url} if relayed else {})}
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            assign_to(first)
            started = time.monotonic()
            sent = asyncio.ensure_future(client.patch("/v1/webhooks/wh", json={}, headers=headers))
            for wait, who in then:
                await turns(wait)
                assign_to(who)
            answer = await asyncio.wait_for(sent, PROMPT)
            took = time.monotonic() - started
            body = await answer.json()
    finally:
        await peer.server.close()
        await bridge.close()
    made = len(made_here) + len(peer.relayed)
    assert took < hold + PROMPT / 2, took
    assert made <= 1 and all(made_here), (made_here, peer.relayed)
    assert (answer.status == 200) == (made == 1), (answer.status, body)
    assert answer.status in (200, 503), body
    if relayed:
        assert not peer.relayed  # never relayed a second time
    if peer.relayed:
        assert peer.relayed[0][RELAYED_BY] == bridge.settings.canonical_url


async def test_a_request_refused_by_the_fence_on_no_webhook_s_route_is_unavailable(
    bridge: Bridge,
) -> None:
    """A request not routed to an owner (no webhook named) that the fence refuses all the same
    (nothing written) is answered 503 with Retry-After, never 500."""

    async def refused(request: web.Request) -> web.Response:
        raise NotWritable("wh")

    app = relaying_app(bridge, refused, 0.3)
    app.router.add_post("/v1/deliveries/{delivery_id}/redeliver", refused)
    assign(bridge, {bridge.settings.canonical_url: list(range(6))})
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        # No log keeps the delivery: the request is not routed, and reaches the route here.
        bridge.delivery_for = _no_delivery  # type: ignore[method-assign]
        answer = await client.post("/v1/deliveries/d1/redeliver", headers=LOG_AUTH)
        assert answer.status == 503 and answer.headers["Retry-After"] == "1"
    await bridge.close()


async def _no_delivery(delivery_id: str, **kwargs: Any) -> list[Any]:
    return []


async def test_a_redelivery_with_authorization_given_twice_is_refused_before_any_owner_is_asked(
    bridge: Bridge,
) -> None:
    """Its webhook is looked up in the owners' logs with the request's token: until 2026-12-07
    the first Authorization line alone was judged there, and the owners asked."""
    from multidict import CIMultiDict

    asked: list[str] = []

    async def delivery_for(delivery_id: str, **kwargs: Any) -> list[Any]:
        asked.append(delivery_id)
        return []

    async def route(request: web.Request) -> web.Response:
        return web.json_response({"made_by": "here"})

    app = relaying_app(bridge, route, 0.3)
    app.router.add_post("/v1/deliveries/{delivery_id}/redeliver", route)
    assign(bridge, {bridge.settings.canonical_url: list(range(6))})
    bridge.delivery_for = delivery_for  # type: ignore[method-assign]
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        headers = CIMultiDict(LOG_AUTH)
        headers.add("Authorization", "Bearer wbt_garbage")
        answer = await client.post("/v1/deliveries/d1/redeliver", headers=headers)
        assert answer.status == 401, await answer.text()
    assert asked == []
    await bridge.close()


async def test_a_redelivery_goes_to_the_owner_of_its_delivery_s_webhook(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sent to another worker: the delivery's webhook is looked up in the owners' logs and the
    request relayed to its owner, naming it, whether or not this worker's table holds the
    webhook; one forged as relayed without naming it is looked up too, and never started here;
    a delivery no log keeps is answered here (a 404)."""
    made: list[str] = []
    relayed: list[str] = []

    async def redeliver(request: web.Request) -> web.Response:
        made.append(request.rel_url.path_qs)
        return web.json_response({"made_by": "here"}, status=202)

    async def owner_redeliver(request: web.Request) -> web.Response:
        relayed.append(request.rel_url.path_qs)
        return web.json_response({"made_by": "peer"}, status=202)

    owner = web.Application()
    owner.router.add_post("/v1/deliveries/{delivery_id}/redeliver", owner_redeliver)
    kept = {"d1": [attempt("d1", 1, webhook_id="wh")]}
    asked: list[str] = []

    async def delivery_for(delivery_id: str, **kwargs: Any) -> list[Any]:
        asked.append(delivery_id)
        return kept.get(delivery_id, [])

    monkeypatch.setattr(bridge, "delivery_for", delivery_for)
    # This worker's table does not hold the webhook (still being read; or deleted since):
    # routed all the same, the owner answers.
    monkeypatch.setattr(bridge.index, "get", lambda webhook_id: None)
    app = relaying_app(bridge, redeliver, 0.3)
    app.router.add_post("/v1/deliveries/{delivery_id}/redeliver", redeliver)
    async with TestServer(owner, host="127.0.0.1") as peer_server:
        peer_url = str(peer_server.make_url("")).rstrip("/")
        p = attempts_partition("wh", 6)
        assign(bridge, {bridge.settings.canonical_url: others(p), peer_url: [p]})
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            path = "/v1/deliveries/d1/redeliver"
            answer = await client.post(path, headers=LOG_AUTH)
            assert answer.status == 202 and await answer.json() == {"made_by": "peer"}
            assert relayed == [f"{path}?webhook_id=wh"] and asked == ["d1"] and not made
            forged = await client.post(path, headers={**LOG_AUTH, RELAYED_BY: peer_url})
            assert forged.status == 503 and not made and len(relayed) == 1
            named = await client.post(f"{path}?webhook_id=wh", headers=LOG_AUTH)
            assert named.status == 202 and relayed[-1] == f"{path}?webhook_id=wh"
            assert asked == ["d1", "d1"]  # named: no lookup
            unknown = await client.post("/v1/deliveries/d2/redeliver", headers=LOG_AUTH)
            assert unknown.status == 202 and made == ["/v1/deliveries/d2/redeliver"]
            stranger = await client.post(path)
            assert stranger.status == 401 and asked == ["d1", "d1", "d2"]
            # Owned here: made here, in that webhook's log alone (not every owner's again).
            assign(bridge, {bridge.settings.canonical_url: list(range(6)), peer_url: []})
            here = await client.post(path, headers=LOG_AUTH)
            assert here.status == 202 and made[-1] == f"{path}?webhook_id=wh"
            assert asked == ["d1", "d1", "d2", "d1"] and len(relayed) == 2


async def test_a_relayed_change_carries_every_line_of_its_headers(tmp_path: Path) -> None:
    """Two ``Idempotency-Key`` lines are refused where the change is made, whichever worker
    was asked, and an ``If-Match`` listed over two lines matches by either (until 2026-12-06
    a relayed change carried each header's first line: the change was made with the first key,
    and the tag on the second line was lost)."""
    from multidict import CIMultiDict

    from bridge.api.app import ApiConfig, create_app
    from bridge.api.service import WebhookService
    from tests.unit.api.conftest import Clock, control_service

    bridge = api_bridge(tmp_path)
    tokens = TokenSet.from_file(str(bridge.settings.api_tokens))
    repository = MemoryRepository()
    owner_app = create_app(
        WebhookService(repository, clock=Clock()),
        control_service(repository),
        tokens,
        config=ApiConfig(),
    )

    async def never(request: web.Request) -> web.Response:
        raise AssertionError("made at a worker that does not own it")

    body = {"id": "wh", "url": "https://example.com/h", "events": ["*"], "site_id": "s1"}
    try:
        async with (
            TestClient(TestServer(owner_app, host="127.0.0.1")) as owner,
            TestClient(TestServer(relaying_app(bridge, never, HOLD), host="127.0.0.1")) as worker,
        ):
            made = await owner.post("/v1/webhooks", json=body, headers=LOG_AUTH)
            assert made.status == 201
            owner_url = str(owner.make_url("")).rstrip("/")
            p = attempts_partition("wh", 6)
            assign(bridge, {bridge.settings.canonical_url: others(p), owner_url: [p]})
            two_keys = CIMultiDict(
                [*LOG_AUTH.items(), (IDEMPOTENCY_KEY, "k-1"), (IDEMPOTENCY_KEY, "k-2")]
            )
            refused = await worker.patch("/v1/webhooks/wh", json={"name": "b"}, headers=two_keys)
            assert refused.status == 400
            kept = await repository.get("wh")
            assert kept is not None and kept.name != "b"
            tags = CIMultiDict(
                [*LOG_AUTH.items(), ("If-Match", '"stale"'), ("If-Match", made.headers["ETag"])]
            )
            changed = await worker.patch("/v1/webhooks/wh", json={"name": "c"}, headers=tags)
            assert changed.status == 200, await changed.text()
    finally:
        await bridge.close()


async def test_a_stranger_s_creation_is_refused_before_its_body_is_read(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Until 2026-12-07 the relay read and parsed a creation's body before anything checked its
    token: a stranger was answered 413 or 415, not 401, having had 64 KiB read."""
    from bridge.worker import api as worker_api

    read: list[int] = []
    real_read = worker_api.read_body

    async def counted(request: web.Request, **kwargs: Any) -> bytes:
        read.append(1)
        return await real_read(request, **kwargs)

    monkeypatch.setattr(worker_api, "read_body", counted)

    async def never(request: web.Request) -> web.Response:
        raise AssertionError("a stranger's creation reached the route")

    app = relaying_app(bridge, never, HOLD)
    app.router.add_post("/v1/webhooks", never)
    site_only = {"Authorization": SITE_AUTH["Authorization"]}  # read alone
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        for headers, body, status in (
            ({}, b"x" * 2_000, 401),
            ({"Content-Encoding": "gzip"}, gzip.compress(b"{}"), 401),
            ({"Authorization": "Bearer nope"}, b"x" * 2_000, 401),
            (site_only, b"x" * 2_000, 403),
        ):
            answer = await client.post(
                "/v1/webhooks", data=body, headers={"Content-Type": "application/json", **headers}
            )
            assert answer.status == status, await answer.text()
            if status == 401:
                assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert read == []
    await bridge.close()


async def test_an_owner_s_401_is_relayed_with_its_challenge(bridge: Bridge) -> None:
    """A token the owner refuses (its token file changed first): the challenge comes back with
    the 401 (until 2026-12-07 it was left behind)."""

    async def refusing(request: web.Request) -> web.Response:
        return web.json_response(
            {"type": "about:blank", "title": "Unauthorized", "status": 401},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="webhook-bridge", error="invalid_token"'},
            content_type="application/problem+json",
        )

    async def never(request: web.Request) -> web.Response:
        raise AssertionError("made at a worker that does not own it")

    owner = web.Application()
    owner.router.add_patch("/v1/webhooks/{webhook_id}", refusing)
    async with TestServer(owner, host="127.0.0.1") as owner_server:
        owner_url = str(owner_server.make_url("")).rstrip("/")
        p = attempts_partition("wh", 6)
        assign(bridge, {bridge.settings.canonical_url: others(p), owner_url: [p]})
        app = relaying_app(bridge, never, HOLD)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            answer = await client.patch("/v1/webhooks/wh", json={"name": "x"}, headers=LOG_AUTH)
            assert answer.status == 401
            assert answer.headers["WWW-Authenticate"] == (
                'Bearer realm="webhook-bridge", error="invalid_token"'
            )
    await bridge.close()


@pytest.mark.parametrize("webhook_id", ["victim?", "a#x", "a%2Fb", "x/../victim", "%41", "a b&c=d"])
async def test_a_relayed_change_reaches_the_webhook_its_request_named(
    tmp_path: Path, webhook_id: str
) -> None:
    """The owner is sent the path as the request named it, encoded: until 2026-12-07 it was
    sent decoded, and a change of `victim?` deleted `victim` at the owner (`a%2Fb` was
    `a/b`, `%41` was `A`)."""
    bridge = api_bridge(tmp_path)
    seen: list[str] = []
    conditions: list[str | None] = []

    async def owner(request: web.Request) -> web.Response:
        seen.append(request.match_info["webhook_id"])
        conditions.append(request.headers.get("If-None-Match"))
        return web.json_response({"made_by": "peer"})

    async def here(request: web.Request) -> web.Response:
        return web.json_response({"made_by": "here"})

    peer_app = web.Application()
    peer_app.router.add_delete("/v1/webhooks/{webhook_id}", owner)
    peer = TestServer(peer_app, host="127.0.0.1")
    await peer.start_server()
    app = relaying_app(bridge, here, HOLD)
    app.router.add_delete("/v1/webhooks/{webhook_id}", here)
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            p = attempts_partition(webhook_id, 6)
            peer_url = str(peer.make_url("")).rstrip("/")
            assign(bridge, {bridge.settings.canonical_url: others(p), peer_url: [p]})
            answer = await client.delete(
                "/v1/webhooks/" + quote(webhook_id, safe=""),
                headers={**LOG_AUTH, "If-None-Match": '"v"'},
            )
            assert (answer.status, await answer.json()) == (200, {"made_by": "peer"})
            assert seen == [webhook_id]
            # The owner refuses a change with If-None-Match: it is sent on to it.
            assert conditions == ['"v"']
    finally:
        await peer.close()
        await bridge.close()


#: The webhook of these tests' routed reads, in site s1 (:data:`SITE_AUTH`'s).
WEBHOOK = Webhook(
    id="wh", name="n", url="https://example.com/h", secret="s" * 16,
    events=frozenset({"*"}), site_id="s1", user_id="u1",
)  # fmt: skip


async def owning_every_log(
    tmp: Path, webhooks: dict[str, Webhook], held: list[tuple[str, str]]
) -> tuple[Bridge, TestServer]:
    """Another worker owning every attempts partition, each read to its end, its book holding
    an attempt of each (webhook id, delivery id) of ``held``, serving the internal reads of
    its book over its table ``webhooks``."""
    tmp.mkdir()
    owner = api_bridge(tmp)
    log = owner.delivery_log
    assert log is not None
    assign(owner, {owner.settings.canonical_url: list(range(6))})
    await log._reassign(Assigned(dict.fromkeys(range(6), 0)))
    offsets = dict.fromkeys(range(6), 0)
    for webhook_id, delivery_id in held:
        p = attempts_partition(webhook_id, 6)
        log.add(p, offsets[p], recent(webhook_id, delivery_id))
        offsets[p] += 1
    tokens = TokenSet.from_file(str(owner.settings.api_tokens))
    internal = _Internal(owner, tokens, MemoryRepository(webhooks))
    app = web.Application(middlewares=[problem_middleware(10.0)])
    app.router.add_get("/internal/v1/activity/{webhook_id}", internal.activity)
    app.router.add_get("/internal/v1/deliveries/{delivery_id}", internal.delivery)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return owner, server


def routed_to(bridge: Bridge, server: TestServer) -> ControlService:
    """The delivery reads of ``bridge``'s ``/v1``, every attempts partition owned by the worker
    at ``server``."""
    assign(bridge, {str(server.make_url("")).rstrip("/"): list(range(6))})
    return ControlService(
        MemoryRepository({"wh": WEBHOOK}),
        WorkerActivitySource(bridge),
        Recoveries(Runner()),
        MemoryDeadLetters(),
    )


async def test_a_delivery_id_of_dots_is_looked_up_as_itself_at_the_owners(
    bridge: Bridge, tmp_path: Path
) -> None:
    """A delivery id is one path segment at the owners, whatever it holds: until 2026-12-07
    `.` and `..` were sent as they are, the client resolved them away (the owners were asked
    for `/internal/v1/deliveries/` or `/internal/v1/`), the owners' 404 was taken for owners
    not answering, and the lookup was 503 for as long as it was asked."""
    owner, server = await owning_every_log(
        tmp_path / "owner", {"wh": WEBHOOK}, [("wh", "."), ("wh", "..")]
    )
    control = routed_to(bridge, server)
    admin = Principal("admin", frozenset({"read", "write"}))
    sending = _authorization.set(LOG_AUTH["Authorization"])  # as the request's handler
    try:
        for held in (".", ".."):
            shown = await asyncio.wait_for(control.delivery(admin, held), PROMPT)
            assert [a["delivery_id"] for a in shown["attempts"]] == [held]
        for unknown in ("%2E%2E", "a/../b", "../wh"):
            with pytest.raises(Problem) as missing:
                await asyncio.wait_for(control.delivery(admin, unknown), PROMPT)
            assert missing.value.status == 404, missing.value.detail
    finally:
        _authorization.reset(sending)
        await server.close()
        await owner.close()
        await bridge.close()


async def test_a_deleted_webhook_s_delivery_is_routed_to_an_unrestricted_token_alone(
    bridge: Bridge, tmp_path: Path
) -> None:
    """As ``/v1`` answers from the worker's own book: a deleted webhook's attempts are shown
    to an unrestricted token only (until 2026-12-07 the owners left them out of what they
    answered every token, so the answer depended on which worker was asked)."""
    owner, server = await owning_every_log(
        tmp_path / "owner", {"wh": WEBHOOK}, [("gone", "d1"), ("wh", "d2")]
    )
    control = routed_to(bridge, server)
    admin = Principal("admin", frozenset({"read", "write"}))
    site = Principal("site", frozenset({"read"}), site_id="s1")
    try:
        for authorization, principal, shown in ((LOG_AUTH, admin, ["d1"]), (SITE_AUTH, site, [])):
            sending = _authorization.set(authorization["Authorization"])
            try:
                found = await asyncio.wait_for(
                    bridge.delivery_for("d1", headers=authorization), PROMPT
                )
                assert [a.delivery_id for a in found] == shown
                if shown:
                    view = await asyncio.wait_for(control.delivery(principal, "d1"), PROMPT)
                    assert view["webhook_id"] == "gone"
                    assert view["attempts"] == [a.as_dict() for a in owner.local_delivery("d1")]
                else:
                    with pytest.raises(Problem) as missing:
                        await asyncio.wait_for(control.delivery(principal, "d1"), PROMPT)
                    assert missing.value.status == 404
                # The webhook that exists is shown to both.
                view = await asyncio.wait_for(control.delivery(principal, "d2"), PROMPT)
                assert view["webhook_id"] == "wh"
            finally:
                _authorization.reset(sending)
    finally:
        await server.close()
        await owner.close()
        await bridge.close()


#: A token that may write, restricted to site s1.
SITE_WRITER = "wbt_site-writer-0123456789abcdef0123456789abcdef"


async def test_a_restricted_token_is_told_nothing_of_another_site_s_running_recovery(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel of a recovery another worker runs, sent by a token restricted to a site that
    may not see it, is answered here by the route, ``404`` as for an id naming nothing, with
    or without a forged ``X-Bridge-Relayed-By``: until 2026-12-07 the forged header was
    answered ``503`` ("the recovery moved to another worker") for a recovery and ``404`` for
    no recovery, which told another site's running recoveries apart."""
    tokens_file = Path(str(bridge.settings.api_tokens))
    entries = json.loads(tokens_file.read_text())["tokens"]
    entries.append(
        {"name": "w1", "sha256": hash_token(SITE_WRITER), "scopes": ["write"], "site_id": "s1"}
    )
    tokens_file.write_text(json.dumps({"tokens": entries}))
    tokens = TokenSet.from_file(str(tokens_file))

    async def current(*args: Any) -> bool:  # no broker here: the tables are current
        return True

    monkeypatch.setattr(bridge.recoveries.freshness, "wait_current", current)
    monkeypatch.setattr(bridge.freshness, "wait_current", current)
    topic = bridge.settings.subscriptions_topic
    for offset, (webhook_id, site) in enumerate((("whA", "s1"), ("whB", "s2"))):
        value = encode(webhook_record(id=webhook_id, site_id=site))
        message = SimpleNamespace(
            topic=topic, partition=0, offset=offset, key=webhook_id.encode(), value=value
        )
        await bridge.on_subscription_event(SimpleNamespace(message=message))

    cancelled: list[str] = []

    async def runner_cancels(request: web.Request) -> web.Response:
        cancelled.append(request.match_info["recovery_id"])
        return web.json_response({"cancelled_by": "runner"})

    runner_app = web.Application()
    runner_app.router.add_delete("/v1/recoveries/{recovery_id}", runner_cancels)
    runner = TestServer(runner_app, host="127.0.0.1")
    await runner.start_server()
    runner_url = str(runner.make_url("")).rstrip("/")
    now = datetime.now(UTC)
    running: dict[str, str] = {}
    for offset, webhook_id in enumerate(("whA", "whB")):
        webhook = bridge.index.get(webhook_id)
        assert webhook is not None
        request = RecoveryRequest(webhook, now - timedelta(hours=1), now)
        operation = Operation(request, runner=runner_url)
        record = operation.to_record(updated_at=time.time())
        bridge.recoveries.apply(0, offset, operation.id.encode(), jsoncanon.dumps(record))
        running[webhook_id] = operation.id

    repository = TableRepository(bridge.index, bridge.freshness, None, current=False)  # type: ignore[arg-type]
    recoveries = Recoveries(
        Runner(),
        journal=ViewJournal(bridge.recoveries),
        url=bridge.settings.canonical_url,
        live_runner=lambda record, now: live_runner(record, now, DEFAULT_STALE_AFTER),
    )
    control = ControlService(repository, MemoryActivity(), recoveries, MemoryDeadLetters())
    app = create_app(WebhookService(repository), control, tokens)
    app.middlewares.append(_holding(HOLD))
    app.middlewares.append(_Relay(bridge, tokens, max_bytes=1 << 20).middleware)
    site = {"Authorization": f"Bearer {SITE_WRITER}"}
    forged = {**site, RELAYED_BY: "http://x"}
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:

            async def cancel(recovery_id: str, headers: dict[str, str]) -> tuple[int, str]:
                answer = await asyncio.wait_for(
                    client.delete(f"/v1/recoveries/{recovery_id}", headers=headers), PROMPT
                )
                return answer.status, (await answer.json()).get("detail", "")

            nothing = await cancel("no-such-recovery", forged)
            assert nothing == (404, "no such recovery")
            assert await cancel(running["whB"], forged) == nothing
            assert await cancel(running["whB"], site) == nothing
            assert cancelled == []
            # Its own site's: sent to the worker running it, as before.
            assert (await cancel(running["whA"], site))[0] == 200
            status, detail = await cancel(running["whA"], forged)
            assert status == 503 and "moved to another worker" in detail
            # An unrestricted token's cancel of either goes to the runner.
            assert (await cancel(running["whB"], LOG_AUTH))[0] == 200
            assert cancelled == [running["whA"], running["whB"]]
    finally:
        await runner.close()
        await bridge.close()


async def test_a_creation_is_counted_once_and_before_its_body_is_read(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay reads a creation's body to find where it goes: its token is counted first, so a
    token over its rate is answered 429 with the body neither read nor parsed, and counted once
    (the route, which counts it too, takes nothing more from the bucket); the body is parsed
    once for the relay and the route. Until 2026-12-07 each 429 had the body parsed first (6 ms
    for 64 KiB), and each creation's body was parsed twice."""
    from bridge.api import problems
    from bridge.api.app import ApiConfig
    from bridge.api.ratelimit import TokenBuckets
    from bridge.contract import jsoncanon as canon
    from bridge.worker import api as worker_api
    from tests.unit.api.conftest import Clock, Published

    read: list[int] = []
    parsed: list[int] = []
    real_read, real_loads = problems.read_body, canon.loads_encodable

    async def counted_read(request: web.Request, **kwargs: Any) -> bytes:
        read.append(1)
        return await real_read(request, **kwargs)

    def counted_loads(data: bytes | str) -> object:
        parsed.append(1)
        return real_loads(data)

    monkeypatch.setattr(worker_api, "read_body", counted_read)
    monkeypatch.setattr(problems, "read_body", counted_read)
    monkeypatch.setattr(canon, "loads_encodable", counted_loads)

    tokens = TokenSet.from_file(str(bridge.settings.api_tokens))
    config = ApiConfig(rate_limit=0.5)  # a bucket of one request
    buckets = TokenBuckets(config.rate_limit)
    service = WebhookService(MemoryRepository(), publisher=Published(), clock=Clock())
    control = ControlService(
        MemoryRepository(), MemoryActivity(), Recoveries(Runner()), MemoryDeadLetters()
    )
    app = create_app(service, control, tokens, config=config, buckets=buckets)
    app.middlewares.append(_Relay(bridge, tokens, max_bytes=1 << 20, buckets=buckets).middleware)
    headers = {**LOG_AUTH, "Content-Type": "application/json"}
    body = b'{"url": "https://example.com/h", "events": [0, 0, 0]}'
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            first = await client.post("/v1/webhooks", data=body, headers=headers)
            # Counted once: counted by the relay and again by the route, it was a 429.
            assert first.status == 400, await first.text()
            assert read and len(parsed) == 1  # parsed once, for both
            reads = len(read)
            second = await client.post("/v1/webhooks", data=body, headers=headers)
            assert second.status == 429, await second.text()
            assert (len(read), len(parsed)) == (reads, 1)  # neither read nor parsed
    finally:
        await bridge.close()
