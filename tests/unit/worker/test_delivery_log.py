"""bridge.worker.delivery_log and the worker's routing rules, without a broker."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner

from bridge.attempts.record import MAX_LENGTHS, MAX_RECORD_BYTES, Attempt
from bridge.attempts.stores import Checkpoint, DeliveryLogStore, MemoryStore, RocksStore
from bridge.config import MAX_ATTEMPT_RESPONSE_PREFIX
from bridge.contract import jsoncanon
from bridge.contract.jsoncanon import MAX_SAFE_INTEGER
from bridge.worker.app import Bridge
from bridge.worker.delivery_log import (
    FUTURE_MARGIN,
    NEVER_READ,
    REOPEN_FIRST,
    DeliveryLogReader,
    OwnerUnavailable,
    attempts_partition,
)
from tests.support.clocks import FakeClock
from tests.support.waiting import PROMPT, eventually
from tests.support.workers import offline_bridge
from tests.unit.attempts.test_attempts import T0, attempt, record, stamp


@pytest.fixture(params=["memory", "rocksdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DeliveryLogStore]:
    made: DeliveryLogStore = (
        MemoryStore(max_attempts=10, max_age=7 * 86400.0)
        if request.param == "memory"
        else RocksStore(tmp_path / "log", max_attempts=10, max_age=7 * 86400.0)
    )
    yield made
    made.close()


def reader(store: DeliveryLogStore, **options: Any) -> DeliveryLogReader:
    """A reader of ``store``, never started, a minute after :data:`T0`."""
    return DeliveryLogReader(
        topic="attempts",
        consumer_factory=lambda: None,  # type: ignore[arg-type,return-value]  # never started
        store=store,
        max_age=7 * 86400.0,
        clock=lambda: T0 + 60,
        **options,
    )


def value(webhook_id: str, n: int) -> bytes:
    return jsoncanon.dumps(record(webhook_id=webhook_id, delivery_id=f"d{n}"))


def test_the_partition_is_the_producers() -> None:
    every = list(range(6))
    for webhook_id in ("wh", "a", "webhook-123", "é"):
        expected = DefaultPartitioner()(webhook_id.encode(), every, every)
        assert attempts_partition(webhook_id, 6) == expected


def test_records_of_held_partitions_fill_the_store_and_gaps_are_reported(
    store: DeliveryLogStore,
) -> None:
    log = reader(store)
    log.hold(0)
    log.hold(1)
    log.add(0, 0, value("a", 0))
    log.add(0, 1, value("a", 1))
    log.add(0, 3, value("a", 3))  # offset 2 never came
    log.add(1, 5, value("b", 0))  # a partition may start anywhere
    log.add(1, 6, b"not json")
    log.add(2, 0, value("c", 0))  # not held (fetched before a revocation): ignored
    summary = log.summary()
    assert (summary["attempts"], summary["records_read"], summary["invalid"]) == (4, 5, 1)
    assert summary["gaps"] == [(0, 2, 3)]
    assert log.store.get("c") is None
    log.forget([0])
    assert log.store.get("a") is None and log.store.get("b") is not None
    assert log.summary()["partitions"] == [1]


def test_attempts_stamped_past_the_readers_clock_are_not_kept(store: DeliveryLogStore) -> None:
    """An attempt stamped more than FUTURE_MARGIN ahead did not happen: kept, such records
    pushed real attempts out of the log (it keeps the newest) and grew the stats by a bucket a
    minute, which no sweep expires (until 2026-12-05). Skipped as invalid; one within the
    margin (a writer's clock a little ahead) is kept."""
    log = reader(store)  # its clock: T0 + 60
    log.hold(0)
    now = T0 + 60
    ahead = [
        jsoncanon.dumps(record(webhook_id="a", delivery_id=f"f{n}", at=stamp(now + 301 + n)))
        for n in range(50)
    ]
    log.add_many(0, [(n, raw, -1) for n, raw in enumerate(ahead)])
    near = record(webhook_id="a", delivery_id="near", at=stamp(now + FUTURE_MARGIN - 1))
    log.add(0, 50, jsoncanon.dumps(near))
    summary = log.summary()
    assert (summary["attempts"], summary["invalid"]) == (1, 50)
    kept = log.store.get("a")
    assert kept is not None and [a.delivery_id for a in kept.log.attempts()] == ["near"]
    assert log.positions == {0: 50}


def test_records_with_fields_past_what_the_bridge_writes_are_not_kept(
    store: DeliveryLogStore,
) -> None:
    """A record is bounded by what the bridge's writer can produce (ids of 200 characters,
    times of 64, a response prefix of 1,024, MAX_RECORD_BYTES a value): until 2026-12-07 a
    record of 500 KB strings was kept whole, ~500 KB of memory or ~3 MB of disk a record.
    Longer ones are counted invalid and not kept; records at every bound are kept."""
    log = reader(store)
    log.hold(0)
    at_bounds = record(**{name: "x" * limit for name, limit in MAX_LENGTHS.items()})
    at_bounds.update(
        at=stamp(T0),
        next_at=stamp(T0 + 60),
        event_at=stamp(T0 - 1),
        webhook_created_at=stamp(T0 - 3600),
    )
    at_bounds["webhook_id"] = "a" * MAX_LENGTHS["webhook_id"]
    at_bounds["endpoint"] = "https://" + "h" * (MAX_LENGTHS["endpoint"] - 14) + ":65535"
    webhook = at_bounds["webhook_id"]
    over = [
        record(webhook_id=webhook, delivery_id="d" * 201),
        record(webhook_id=webhook, error="e" * 201),
        record(webhook_id=webhook, event_type="t" * 201),
        record(webhook_id=webhook, response_prefix="p" * 1025),
        record(webhook_id=webhook, next_at="2" * 65),
        record(webhook_id=webhook, endpoint="https://" + "h" * 254 + ":65535"),
        record(webhook_id=webhook, endpoint="https://hooks.example:443/hook"),
        record(webhook_id=webhook, error="http_status", padding="x" * 500_000),
        {**at_bounds, "delivery_id": "d" * 200 + "x"},
    ]
    log.add_many(0, [(n, jsoncanon.dumps(r), -1) for n, r in enumerate(over)])
    log.add(0, len(over), jsoncanon.dumps(at_bounds))
    log.add(0, len(over) + 1, value(webhook, 1))
    summary = log.summary()
    assert (summary["attempts"], summary["invalid"]) == (2, len(over))
    kept = log.store.get(webhook)
    assert kept is not None
    assert sorted(a.delivery_id for a in kept.log.attempts()) == ["d1", "x" * 200]


def test_a_record_at_every_bound_in_its_longest_json_is_under_the_size_cap() -> None:
    """Each character a control character, which JSON writes as 6 bytes: still read."""
    widest = record(at=stamp(T0), trigger="manual", response_bytes=MAX_SAFE_INTEGER)
    for name, limit in MAX_LENGTHS.items():
        if not name.endswith("at"):
            widest[name] = "\x01" * limit
    widest["next_at"] = widest["event_at"] = widest["webhook_created_at"] = (
        "2024-01-15T10:30:00.123456+05:30"
    )
    # scheme://host:port, of characters JSON writes as they are (a control character is none).
    widest["endpoint"] = "https://" + "h" * (MAX_LENGTHS["endpoint"] - 14) + ":65535"
    raw = jsoncanon.dumps(widest)
    assert len(raw) <= MAX_RECORD_BYTES
    assert Attempt.parse(raw).response_prefix == "\x01" * MAX_ATTEMPT_RESPONSE_PREFIX


def test_a_record_of_a_webhook_created_after_it_is_not_kept(store: DeliveryLogStore) -> None:
    """A webhook_created_at later than the attempt's own time (past FUTURE_MARGIN), or none
    that reads as a time, is no real webhook's: counted invalid. Until 2026-12-07 one made the
    stats start afresh for a webhook created 9000-01-01, and the webhook's own stats (read by
    its real created_at) showed nothing for a week."""
    log = reader(store)
    log.hold(0)
    created = stamp(T0 - 86400)

    def success(n: int, made: str = created) -> bytes:
        at = stamp(T0 + n)
        return jsoncanon.dumps(
            record(webhook_id="a", delivery_id=f"d{n}", at=at, webhook_created_at=made)
        )

    log.add_many(0, [(n, success(n), -1) for n in range(10)])
    hostile = record(
        webhook_id="a",
        delivery_id="h",
        at=stamp(T0 + 10),
        outcome="failure",
        status=500,
        webhook_created_at="9000-01-01T00:00:00Z",
    )
    log.add(0, 10, jsoncanon.dumps(hostile))
    log.add_many(0, [(11 + n, success(20 + n), -1) for n in range(10)])
    unreadable = jsoncanon.dumps({**hostile, "webhook_created_at": "last tuesday"})
    log.add(0, 21, unreadable)
    near = success(40, stamp(T0 + 40 + FUTURE_MARGIN - 1))  # the API's clock a little ahead
    kept = log.store.get("a")
    assert kept is not None
    window = kept.stats.of_webhook(created).window("7d", T0 + 60)
    assert (window.successes, window.failures) == (20, 0)
    assert log.summary()["invalid"] == 2
    log.add(0, 22, near)
    assert log.summary()["invalid"] == 2
    assert "d40" in [a.delivery_id for a in kept.log.attempts()]


def test_caught_up_only_once_every_assigned_partition_is_read_to_its_end(
    store: DeliveryLogStore,
) -> None:
    log = reader(store)
    assert not log.caught_up  # no assignment yet
    log.assign([0, 1])
    assert not log.caught_up
    log._changed.clear()
    log._held = {0, 1}
    log.store.open(1, T0)
    log._catching_up = {0: NEVER_READ, 1: 2}
    assert not log.caught_up
    log._catching_up = {1: 2}
    log.add(1, 1, value("b", 1))
    assert log.caught_up


@pytest.fixture
def bridge(tmp_path: Path) -> Iterator[Bridge]:
    tokens = tmp_path / "tokens.json"
    tokens.write_text('{"tokens": []}')
    yield offline_bridge(
        tmp_path / "data", delivery_log=True, api_tokens=str(tokens), web_port=7001
    )


class FakeAssignor:
    """The owners of an assignment, received when Faust had counted ``received_at``
    rebalances as begun (as :class:`~bridge.worker.delivery_log.CountingAssignor` notes)."""

    def __init__(
        self,
        hosts: dict[str, dict[str, list[int]]],
        *,
        as_table: bool = True,
        received_at: int = 0,
    ) -> None:
        self.hosts = hosts
        self.as_table = as_table
        self.received_at = received_at

    def table_metadata(self, topic: str) -> Any:
        return self.hosts if self.as_table else {}

    def external_topics_metadata(self) -> Any:
        return {} if self.as_table else self.hosts


def owners(bridge: Bridge, mine: list[int], theirs: list[int], *, as_table: bool = True) -> None:
    topic = bridge.settings.attempts_topic
    hosts = {
        "http://127.0.0.1:7001": {topic: mine},
        "http://127.0.0.1:7002": {topic: theirs},
    }
    bridge.app.assignor = FakeAssignor(  # type: ignore[assignment]
        hosts, as_table=as_table, received_at=bridge.app.rebalancing_count
    )


def test_owner_is_found_in_the_assignment(bridge: Bridge) -> None:
    p = attempts_partition("wh", 6)
    owners(bridge, [p], [q for q in range(6) if q != p])
    owner = bridge.owner("wh")
    assert (owner.partition, owner.url, owner.local) == (p, "http://127.0.0.1:7001", True)
    owners(bridge, [q for q in range(6) if q != p], [p])
    owner = bridge.owner("wh")
    assert (owner.url, owner.local) == ("http://127.0.0.1:7002", False)


def test_no_worker_owns_a_webhook_for_a_change_from_a_rebalance_s_start_to_its_assignment(
    bridge: Bridge,
) -> None:
    """Reads may go to the last assignment's owner while a rebalance goes on; a change, a
    recovery, a take-over or a disable waits for the next assignment (the old and the new
    owner would otherwise both make it, each from the assignment it has)."""
    p = attempts_partition("wh", 6)
    owners(bridge, [p], [q for q in range(6) if q != p])
    assert not bridge.owner("wh", settled=True).local  # no assignment applied yet
    bridge._attempts_assigned({p})
    assert bridge.owner("wh", settled=True).local and bridge._owns_log_of("wh")
    bridge.app.on_rebalance_start()
    assert bridge.owner("wh").local  # the last assignment, for reads
    unsettled = bridge.owner("wh", settled=True)
    assert (unsettled.url, unsettled.local) == (None, False)
    assert not bridge._owns_log_of("wh")
    owners(bridge, [p], [q for q in range(6) if q != p])  # the next assignment received
    bridge._attempts_assigned({p})
    assert bridge.owner("wh", settled=True).local and bridge._owns_log_of("wh")


def test_an_assignment_the_next_rebalance_overtook_on_its_way_to_the_tables_is_not_settled(
    bridge: Bridge,
) -> None:
    """Faust's consumer thread receives an assignment, and the next rebalance begins there
    before the event loop applies it: the owners it names may have moved already."""
    p = attempts_partition("wh", 6)
    owners(bridge, [p], [q for q in range(6) if q != p])
    bridge.app.on_rebalance_start()
    bridge._attempts_assigned({p})
    assert not bridge.assignment_settled()
    assert bridge.owner("wh", settled=True).url is None and not bridge._owns_log_of("wh")
    owners(bridge, [p], [q for q in range(6) if q != p])  # the next one received
    bridge._attempts_assigned({p})
    assert bridge.assignment_settled() and bridge.owner("wh", settled=True).local


def test_owners_are_found_when_the_leader_has_no_attempts_table(bridge: Bridge) -> None:
    # A deliver worker as the group's leader files the attempts topic with the other topics.
    p = attempts_partition("wh", 6)
    owners(bridge, [q for q in range(6) if q != p], [p], as_table=False)
    assert bridge.owner("wh").url == "http://127.0.0.1:7002"


def test_no_owner_during_a_rebalance_is_unavailable(bridge: Bridge) -> None:
    owners(bridge, [], [])
    with pytest.raises(OwnerUnavailable):
        asyncio.run(bridge.activity_for("wh"))
    with pytest.raises(OwnerUnavailable):
        asyncio.run(bridge.delivery_for("d1"))


def test_a_routed_read_is_never_routed_again(bridge: Bridge) -> None:
    p = attempts_partition("wh", 6)
    owners(bridge, [q for q in range(6) if q != p], [p])
    with pytest.raises(OwnerUnavailable):
        bridge.local_activity("wh")  # what the internal route answers: this book or 503


def test_an_owned_webhook_is_answered_from_the_book(bridge: Bridge) -> None:
    p = attempts_partition("wh", 6)
    owners(bridge, [p], [q for q in range(6) if q != p])
    log = bridge.delivery_log
    assert log is not None
    log.assign([p])
    with pytest.raises(OwnerUnavailable):  # assigned but not read yet
        bridge.local_activity("wh")
    # Held, and being read up to its end at assignment (offset 1), as the reader does: still
    # unavailable (a part of the book would be answered as if it were all).
    log.hold(p)
    log._catching_up[p] = 1
    with pytest.raises(OwnerUnavailable):
        bridge.local_activity("wh")
    with pytest.raises(OwnerUnavailable):
        bridge.local_delivery("d0")
    now = jsoncanon.dumps(record(webhook_id="wh", delivery_id="d0", at=stamp(time.time() - 10)))
    log.add(p, 0, now)
    activity = asyncio.run(bridge.activity_for("wh"))
    assert [a.delivery_id for a in activity.log.attempts()] == ["d0"]
    assert [a.delivery_id for a in bridge.local_delivery("d0")] == ["d0"]


def test_an_attempt_on_a_partition_other_than_its_webhook_s_is_not_kept(bridge: Bridge) -> None:
    """Only a writer other than the bridge puts one there. Until 2026-12-07 it went into that
    partition's book, and a webhook's log and stats were read from the first book holding
    the webhook: one record elsewhere hid every real attempt of it (and its delivery was
    shown). Skipped and counted ``misplaced``; the checkpoint goes past it."""
    p = attempts_partition("wh", 6)
    other = (p + 1) % 6
    owners(bridge, [p, other], [q for q in range(6) if q not in (p, other)])
    log = bridge.delivery_log
    assert log is not None
    log.assign([p, other])
    log.hold(other)  # held first: its book was looked at first
    log.hold(p)
    log.add(other, 0, recent("wh", "foreign"))
    log.add_many(p, [(n, recent("wh", f"real{n}"), -1) for n in range(3)])
    activity = asyncio.run(bridge.activity_for("wh"))
    assert sorted(a.delivery_id for a in activity.log.attempts()) == ["real0", "real1", "real2"]
    assert bridge.local_delivery("foreign") == []
    summary = log.summary()
    assert (summary["misplaced"], summary["invalid"], summary["attempts"]) == (1, 0, 3)
    assert log.positions[other] == 0


def test_a_delivery_past_the_logs_age_is_not_shown_before_the_sweep_forgets_it(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a webhook's pages do not show it (until 2026-12-06 the delivery route did, until the
    next sweep)."""
    p = attempts_partition("wh", 6)
    owners(bridge, [p], [q for q in range(6) if q != p])
    log = bridge.delivery_log
    assert log is not None
    log.assign([p])
    log.hold(p)
    log.add(p, 0, recent("wh", "d0"))
    assert [a.delivery_id for a in bridge.local_delivery("d0")] == ["d0"]
    later = time.time() + bridge.settings.delivery_log_max_age
    monkeypatch.setattr(time, "time", lambda: later)
    assert bridge.local_delivery("d0") == []


def recent(webhook_id: str, delivery_id: str) -> bytes:
    """An attempt record of ten seconds ago (kept by the bridge's book, which uses the clock)."""
    at = stamp(time.time() - 10)
    return jsoncanon.dumps(record(webhook_id=webhook_id, delivery_id=delivery_id, at=at))


class Assigned:
    """What the reader asks of its consumer when partitions are assigned: each starts at 0 and
    ends at ``ends[partition]``."""

    def __init__(self, ends: dict[int, int]) -> None:
        self.ends = ends

    def assign(self, tps: Any) -> None:
        pass

    def seek(self, tp: Any, offset: int) -> None:
        pass

    async def beginning_offsets(self, tps: Any) -> dict[Any, int]:
        return {tp: 0 for tp in tps}

    async def end_offsets(self, tps: Any) -> dict[Any, int]:
        return {tp: self.ends[tp.partition] for tp in tps}

    async def offsets_for_times(self, times: Any) -> dict[Any, Any]:
        return {tp: SimpleNamespace(offset=0) for tp in times}


async def turns(n: int = 20) -> None:
    """Let the other tasks run (none of those here waits for a clock)."""
    for _ in range(n):
        await asyncio.sleep(0)


def counting_looks(bridge: Bridge, monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Count the calls of ``bridge``'s method ``name`` (how often a held request looked)."""
    looks: list[int] = []
    original = getattr(bridge, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        looks.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(bridge, name, counted)
    return looks


async def test_the_reader_tells_when_partitions_are_held_and_when_each_is_read_to_its_end(
    store: DeliveryLogStore,
) -> None:
    told: list[tuple[bool, bool, bool]] = []
    log = DeliveryLogReader(
        topic="attempts",
        consumer_factory=lambda: None,  # type: ignore[arg-type,return-value]  # never started
        store=store,
        max_age=7 * 86400.0,
        clock=lambda: T0 + 60,
        on_change=lambda: told.append((log.complete(0), log.complete(1), log.caught_up)),
    )
    log.assign([0, 1])
    await log._reassign(Assigned({0: 2, 1: 0}))  # partition 1 is empty: read at once
    assert told == [(False, False, False), (False, True, False)]
    log.add(0, 0, value("a", 0))
    assert len(told) == 2  # not at its end yet: nothing to tell
    log.add(0, 1, value("a", 1))
    assert told[2:] == [(True, True, True)]


async def test_a_read_while_no_owner_is_known_is_held_until_the_new_owner_read_the_log(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = attempts_partition("wh", 6)
    log = bridge.delivery_log
    assert log is not None
    looks = counting_looks(bridge, monkeypatch, "_activity_or_owner")
    owners(bridge, [], [])  # a rebalance: no assignment names an owner
    loop = asyncio.get_running_loop()
    read = asyncio.ensure_future(bridge.activity_for("wh", until=loop.time() + 60))
    await turns()
    assert not read.done() and len(looks) == 1
    # The assignment: Faust's assignor learns every owner, then the table tells the bridge.
    owners(bridge, [p], [q for q in range(6) if q != p])
    bridge._attempts_assigned({p})
    await turns()
    assert not read.done() and len(looks) == 2  # this worker's now, but not read
    await log._reassign(Assigned({p: 1}))
    await turns()
    assert not read.done() and len(looks) == 3  # held, being read: a part is not the log
    log.add(p, 0, recent("wh", "d0"))
    activity = await asyncio.wait_for(read, PROMPT)
    assert [a.delivery_id for a in activity.log.attempts()] == ["d0"]
    assert len(looks) == 4  # once per change, never in between: no polling


async def test_a_read_that_does_not_settle_is_unavailable_after_its_hold(bridge: Bridge) -> None:
    owners(bridge, [], [])
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(OwnerUnavailable) as raised:
        await bridge.activity_for("wh", until=start + 0.2)
    assert 0.2 <= loop.time() - start < PROMPT
    assert raised.value.retry_after == 1 and "no owner" in raised.value.detail
    with pytest.raises(OwnerUnavailable):
        await bridge.delivery_for("d1", until=loop.time() + 0.1)


async def test_a_known_and_ready_owner_is_answered_at_once(bridge: Bridge) -> None:
    p = attempts_partition("wh", 6)
    log = bridge.delivery_log
    assert log is not None
    owners(bridge, list(range(6)), [])
    log.assign(range(6))
    await log._reassign(Assigned(dict.fromkeys(range(6), 0)))
    log.hold(p)
    loop = asyncio.get_running_loop()
    # Nothing changes from here on: a read that waited would wait for its whole hold.
    read = bridge.activity_for("wh", until=loop.time() + 60)
    assert (await asyncio.wait_for(read, PROMPT)).log.attempts() == []
    lookup = bridge.delivery_for("d0", until=loop.time() + 60)
    assert await asyncio.wait_for(lookup, PROMPT) == []


async def test_a_delivery_lookup_is_held_until_every_partition_has_an_owner(
    bridge: Bridge,
) -> None:
    log = bridge.delivery_log
    assert log is not None
    owners(bridge, [0, 1, 2], [])  # a rebalance under way: half the partitions have none
    loop = asyncio.get_running_loop()
    lookup = asyncio.ensure_future(bridge.delivery_for("d0", until=loop.time() + 60))
    await turns()
    assert not lookup.done()
    owners(bridge, list(range(6)), [])
    bridge._attempts_assigned(set(range(6)))
    await log._reassign(Assigned(dict.fromkeys(range(6), 0)))
    p = attempts_partition("wh", 6)
    log.add(p, 0, recent("wh", "d0"))
    found = await asyncio.wait_for(lookup, PROMPT)
    assert [a.delivery_id for a in found] == ["d0"]


async def test_a_routed_read_the_owner_did_not_answer_is_asked_of_the_next_owner(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner went (a worker leaving): the read waits for the assignment without it and
    asks the owner that names, with what is left of its hold."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from bridge.attempts.wire import activity_to_dict
    from bridge.worker.embedded import free_port
    from bridge.worker.settling import HOLD_HEADER

    log = bridge.delivery_log
    assert log is not None
    asked: list[str] = []
    refused: list[str] = []
    ask = bridge._ask

    async def asking(*args: Any) -> Any:
        try:
            return await ask(*args)
        except OwnerUnavailable as exc:
            refused.append(exc.detail)
            raise

    monkeypatch.setattr(bridge, "_ask", asking)

    async def answer(request: web.Request) -> web.Response:
        asked.append(request.headers[HOLD_HEADER])
        return web.json_response(activity_to_dict(log.store.empty()))

    app = web.Application()
    app.router.add_get("/internal/v1/activity/{webhook_id}", answer)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        gone = f"http://127.0.0.1:{free_port()}"
        topic = bridge.settings.attempts_topic
        bridge.app.assignor = FakeAssignor({gone: {topic: list(range(6))}})  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        read = asyncio.ensure_future(bridge.activity_for("wh", until=loop.time() + 5))
        await eventually(lambda: refused, interval=0.01)  # nothing listens there
        await turns()
        assert not read.done() and not asked  # held: waiting for the next assignment
        live = str(server.make_url("")).rstrip("/")
        bridge.app.assignor = FakeAssignor({live: {topic: list(range(6))}})  # type: ignore[assignment]
        bridge._attempts_assigned(set())
        activity = await asyncio.wait_for(read, PROMPT)
        assert activity.log.attempts() == []
        assert len(asked) == 1 and 0 < float(asked[0]) <= 5
    finally:
        await server.close()
        await bridge.close()


class Seeks:
    """What the reader asks of its consumer after a failed write."""

    def __init__(self) -> None:
        self.seeks: list[tuple[int, int]] = []

    def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp.partition, offset))


class Disk:
    """The disk of a :class:`StoreOnDisk`: while ``broken``, every write fails, a database that
    failed one fails every later one until it is opened again (as RocksDB does: its background
    error), and opening one fails."""

    def __init__(self) -> None:
        self.broken = False
        self.failed_writes = 0
        self.failed_opens = 0
        self.opens = 0


class StoreOnDisk(RocksStore):
    """A RocksDB store on a :class:`Disk` that can break."""

    def __init__(
        self, directory: Path, disk: Disk, max_attempts: int = 10, max_age: float = 7 * 86400.0
    ) -> None:
        super().__init__(directory, max_attempts=max_attempts, max_age=max_age)
        self.disk = disk

    def _open(self, partition: int, now: float) -> Any:
        disk = self.disk
        if disk.broken:
            disk.failed_opens += 1
            raise Exception("IO error: While renaming a file to LOG.old: Operation not permitted")
        opened = super()._open(partition, now)
        disk.opens += 1
        real = opened.write
        failed = False

        def write(batch: Any) -> None:
            nonlocal failed
            if failed or disk.broken:
                failed = True
                disk.failed_writes += 1
                raise Exception("IO error: No space left on device")
            real(batch)

        opened.write = write  # type: ignore[method-assign]
        return opened


class Consumer(Seeks):
    """The consumer's end and position of each partition, as the reader asks them."""

    def __init__(self, end: int) -> None:
        super().__init__()
        self.end = end
        self.at: dict[int, int] = {}

    def seek(self, tp: Any, offset: int) -> None:
        super().seek(tp, offset)
        self.at[tp.partition] = offset

    def highwater(self, tp: Any) -> int:
        return self.end

    async def position(self, tp: Any) -> int:
        return self.at.get(tp.partition, self.end)


def clocked_reader(
    store: DeliveryLogStore, clock: FakeClock, failures: list[str] | None = None, **options: Any
) -> DeliveryLogReader:
    """A :func:`reader` whose waits are measured by ``clock``, each failure of its store
    appended to ``failures``."""
    failed = None if failures is None else failures.append
    return reader(store, monotonic=clock, on_store_failure=failed, **options)


async def test_a_failed_write_is_read_again_from_the_checkpoint_once_opened_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A write that failed leaves the partition unanswered (not complete, not caught up) until
    its database is opened again, after a wait that doubles while opening fails, and it is read
    again from its checkpoint to its end; then its log holds every record. Until 2026-12-07 the
    reader went back to the checkpoint at once, with RocksDB refusing every write since the
    first failed, over and over, and answered from the partition meanwhile."""
    caplog.set_level(logging.INFO, logger="bridge.worker.delivery_log")
    disk = Disk()
    store = StoreOnDisk(tmp_path / "log", disk)
    clock = FakeClock()
    failures: list[str] = []
    log = clocked_reader(store, clock, failures)
    log.assign([0])
    log._changed.clear()
    log.hold(0)
    log.add_many(0, [(n, value("a", n), -1) for n in range(3)])
    log._flush([0])
    assert log.complete(0) and log.caught_up and disk.opens == 1
    consumer = Consumer(end=5)

    disk.broken = True
    log.add_many(0, [(3, value("a", 3), -1), (4, value("a", 4), -1)])  # 3 fails: 4 is not read
    log._flush([0])
    assert not log.complete(0) and not log.caught_up
    assert failures == ["write"] and disk.failed_writes == 1
    assert log.summary()["failed"] == [0]
    await log._reopen_failed(consumer)  # type: ignore[arg-type]
    await log._check_caught_up(consumer)  # type: ignore[arg-type]
    assert disk.failed_opens == 0 and not consumer.seeks  # it waits
    log.add_many(0, [(3, value("a", 3), -1)])  # fetched meanwhile: not kept, not written
    assert disk.failed_writes == 1 and not log.complete(0)

    clock.now += REOPEN_FIRST
    await log._reopen_failed(consumer)  # type: ignore[arg-type]
    assert disk.failed_opens == 1 and failures == ["write", "reopen"]
    clock.now += REOPEN_FIRST  # the wait doubled: not yet
    await log._reopen_failed(consumer)  # type: ignore[arg-type]
    assert disk.failed_opens == 1 and not consumer.seeks and not log.complete(0)

    disk.broken = False
    clock.now += REOPEN_FIRST
    await log._reopen_failed(consumer)  # type: ignore[arg-type]
    assert disk.opens == 2 and consumer.seeks == [(0, 3)]
    await log._check_caught_up(consumer)  # type: ignore[arg-type]
    assert not log.complete(0) and not log.caught_up  # read again to its end first
    log.add_many(0, [(3, value("a", 3), -1), (4, value("a", 4), -1)])
    consumer.at[0] = 5  # fetched up to the high-water mark
    log._flush([0])
    await log._check_caught_up(consumer)  # type: ignore[arg-type]
    assert log.complete(0) and log.caught_up and not log._failures
    activity = store.get("a")
    assert activity is not None
    assert [a.delivery_id for a in activity.log.attempts()] == [f"d{n}" for n in range(5)]
    assert activity.stats.window("1h", T0 + 60).attempts == 5
    assert store.partitions[0].checkpoint == (5, -1)
    assert not log.gaps and failures == ["write", "reopen"]
    # One traceback for the failures in a row; one line for the next one, one at the end.
    errors = [r for r in caplog.records if r.name == "bridge.worker.delivery_log"]
    assert [(r.levelname, r.exc_info is not None) for r in errors] == [
        ("ERROR", True),
        ("WARNING", False),
        ("INFO", False),
    ], caplog.text
    store.close()


class AssignedSeeks(Assigned, Consumer):
    """A consumer for assignments (:class:`Assigned`) that remembers its seeks and answers
    its position and high-water marks (:class:`Consumer`)."""

    def __init__(self, ends: dict[int, int]) -> None:
        Assigned.__init__(self, ends)
        Consumer.__init__(self, end=max(ends.values()))

    def seek(self, tp: Any, offset: int) -> None:
        Consumer.seek(self, tp, offset)


async def test_a_partition_whose_store_cannot_be_opened_when_assigned_is_assigned_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A store that cannot be opened when its partition is assigned (a full or unwritable disk
    at start or at a rebalance) leaves that partition unanswered, the others answered, and is
    assigned again after the waits a failed write's store is opened again after; once it
    opens, the partition is resumed from its checkpoint, which is checked as at any
    assignment. Until 2026-12-07 the error stopped the reader (and, with ``--role all``,
    the worker's deliveries)."""
    caplog.set_level(logging.INFO, logger="bridge.worker.delivery_log")
    disk = Disk()
    directory = tmp_path / "log"
    store = StoreOnDisk(directory, disk)
    log = reader(store)
    log.hold(1)
    log.add_many(1, [(n, value("b", n), 100 + n) for n in range(3)])  # a checkpoint kept
    log._flush([1])
    store.close()

    disk = Disk()
    store = StoreOnDisk(directory, disk)
    clock = FakeClock()
    failures: list[str] = []
    told: list[bool] = []
    log = clocked_reader(store, clock, failures, on_change=lambda: told.append(log.caught_up))
    consumer = AssignedSeeks({0: 2, 1: 5, 2: 0})
    log.assign([0, 1])
    disk.broken = True
    await log._reassign(consumer)  # type: ignore[arg-type]
    assert failures == ["open", "open"] and log.summary()["failed"] == [0, 1]
    assert log.assigned == {0, 1} and not log.complete(0) and not log.caught_up
    # Their records are fetched from their ends meanwhile, and not kept.
    assert consumer.seeks == [(0, 2), (1, 5)]
    log.add_many(1, [(5, value("b", 5), 105)])
    assert store.get("b") is None and not log._changed.is_set()

    clock.now += REOPEN_FIRST
    await log._reopen_failed(consumer)  # type: ignore[arg-type]
    assert log.assigned == set() and log._changed.is_set()  # to be assigned again
    await log._reassign(consumer)  # type: ignore[arg-type]
    assert failures == ["open"] * 4 and log.assigned == {0, 1}  # still broken: waits longer
    clock.now += REOPEN_FIRST
    await log._reopen_failed(consumer)  # type: ignore[arg-type]
    assert not log._changed.is_set() and log.assigned == {0, 1}

    # Partition 2 is assigned meanwhile and revoked while waiting to be held again.
    log.assign([0, 1, 2])
    await log._reassign(consumer)  # type: ignore[arg-type]
    assert log.summary()["failed"] == [0, 1, 2] and log._failures[2] == 1
    clock.now += REOPEN_FIRST
    await log._reopen_failed(consumer)  # type: ignore[arg-type]
    log.assign([0, 1])
    await log._reassign(consumer)  # type: ignore[arg-type]
    assert log.assigned == {0, 1} and set(log._failures) == {0, 1}
    assert set(failures) == {"open"}
    seen = len(failures)

    disk.broken = False
    clock.now += 2.0  # the third wait in a row
    await log._reopen_failed(consumer)  # type: ignore[arg-type]
    consumer.seeks.clear()
    await log._reassign(consumer)  # type: ignore[arg-type]
    assert len(failures) == seen and not log._failed
    # Partition 0 kept nothing: read from the start; 1 resumes one record before its
    # checkpoint, to check that record is the one the checkpoint names.
    assert consumer.seeks == [(0, 0), (1, 2)] and log._verifying == {1: Checkpoint(3, 102)}
    log.add_many(0, [(0, value("a", 0), 200), (1, value("a", 1), 201)])
    log.add_many(1, [(n, value("b", n), 100 + n) for n in range(2, 5)])
    log._flush([0, 1])
    assert log.complete(0) and log.complete(1) and log.caught_up and told[-1]
    activity = store.get("b")
    assert activity is not None
    assert [a.delivery_id for a in activity.log.attempts()] == [f"d{n}" for n in range(5)]
    assert not log.gaps and not log._failures
    # One traceback per partition for its failures in a row, a line for each next one and for
    # each first preload that failed.
    errors = [r for r in caplog.records if r.levelname != "INFO"]
    assert [r.exc_info is not None for r in errors if r.levelname == "ERROR"] == [True] * 3
    warnings = [r for r in errors if r.levelname == "WARNING"]
    assert len(warnings) == seen and not any(r.exc_info for r in warnings), caplog.text
    store.close()


async def test_a_store_that_cannot_be_made_anew_after_a_checkpoint_too_old_is_tried_again(
    tmp_path: Path,
) -> None:
    """A checkpoint before the partition's start (retention deleted what it names) drops the
    partition's database and makes it anew; a disk that fails then holds the partition for a
    later try, as at its first opening (until 2026-12-07 that error stopped the reader)."""
    directory = tmp_path / "log"
    store = StoreOnDisk(directory, Disk())
    log = reader(store)
    log.hold(1)
    log.add_many(1, [(n, value("b", n), 100 + n) for n in range(3)])
    log._flush([1])
    store.close()

    class FirstOpenOnly(StoreOnDisk):
        """Opens the database it kept; making it anew fails (a full disk)."""

        def _open(self, partition: int, now: float) -> Any:
            if self.disk.opens >= 1:
                self.disk.broken = True
            return super()._open(partition, now)

    class Later(AssignedSeeks):
        async def beginning_offsets(self, tps: Any) -> dict[Any, int]:
            return {tp: 10 for tp in tps}  # past the checkpoint (offset 3)

    store = FirstOpenOnly(directory, Disk())
    clock = FakeClock()
    failures: list[str] = []
    log = clocked_reader(store, clock, failures)
    consumer = Later({1: 20})
    log.assign([1])
    await log._reassign(consumer)  # type: ignore[arg-type]
    assert failures == ["open"] and log.summary()["failed"] == [1] and log.reread == 1
    assert log.assigned == {1} and not log.complete(1) and consumer.seeks == [(1, 20)]
    store.disk.broken = False
    store.disk.opens = -10  # opens from here on
    clock.now += REOPEN_FIRST
    await log._reopen_failed(consumer)  # type: ignore[arg-type]
    await log._reassign(consumer)  # type: ignore[arg-type]
    assert failures == ["open"] and not log._failed and log.assigned == {1}
    assert consumer.seeks[-1] == (1, 10)  # read anew from the partition's start
    store.close()


async def test_a_memory_store_that_failed_a_write_reads_the_partition_anew(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The memory store keeps nothing to go back to: the partition is read again from the
    topic (at the next reassignment), after the same wait."""

    class Failing(MemoryStore):
        def __init__(self) -> None:
            super().__init__(max_attempts=10, max_age=7 * 86400.0)
            self.fail = True

        def add(self, *args: Any, **kwargs: Any) -> bool:
            if self.fail:
                self.fail = False
                raise RuntimeError("a bug")
            return super().add(*args, **kwargs)

    clock = FakeClock()
    log = clocked_reader(Failing(), clock)
    log.assign([0])
    log._changed.clear()
    log.hold(0)
    log.add(0, 0, value("a", 0))
    assert not log.complete(0) and log.assigned == {0}
    await log._reopen_failed(Seeks())  # type: ignore[arg-type]
    assert log.assigned == {0} and not log._changed.is_set()
    clock.now += REOPEN_FIRST
    await log._reopen_failed(Seeks())  # type: ignore[arg-type]
    assert log.assigned == set() and log.reread == 1 and log._changed.is_set()
    assert log._failures == {0: 1}  # in a row until the partition is read to its end


def test_a_checkpoint_is_resumed_and_a_revoked_partition_deleted(tmp_path: Path) -> None:
    store = RocksStore(tmp_path / "log", max_attempts=10, max_age=7 * 86400.0)
    log = reader(store)
    assert log.hold(2) is None
    log.add(2, 7, value("a", 0), 1700)
    log.add(2, 8, b"{}", 1800)
    log._flush([2])
    store.close()
    store = RocksStore(tmp_path / "log", max_attempts=10, max_age=7 * 86400.0)
    log = reader(store)
    assert log.hold(2) == (9, 1800)
    log.forget([2])
    assert not (tmp_path / "log" / "2").exists()
    store.close()


def resumed_twice(tmp_path: Path) -> tuple[RocksStore, DeliveryLogReader]:
    """A reader holding partitions 0 and 1 of a store on disk, each resumed from a checkpoint
    naming offset 5 at time 1700."""
    store = RocksStore(tmp_path / "log", max_attempts=10, max_age=7 * 86400.0)
    log = reader(store)
    log.hold(0)
    log.hold(1)
    log._verifying = {0: Checkpoint(5, 1700), 1: Checkpoint(5, 1700)}
    return store, log


def test_a_resumed_partition_must_start_with_the_record_its_checkpoint_names(
    tmp_path: Path,
) -> None:
    store, log = resumed_twice(tmp_path)
    log.add(0, 4, value("a", 4), 1700)  # the same record: the same topic
    log.add(0, 5, value("a", 5), 1800)
    log.add(1, 4, value("b", 4), 9999)  # another record at that offset: recreated
    log.add(1, 5, value("b", 5), 9999)
    assert log._stale == {1} and log.summary()["records_read"] == 1
    log._check_resumed(Highwaters({}))  # type: ignore[arg-type]
    assert log.assigned == {0} and log.reread == 1 and log._changed.is_set()
    store.close()


def test_a_fetched_batch_is_checked_against_the_checkpoint_by_its_first_record_only(
    tmp_path: Path,
) -> None:
    store, log = resumed_twice(tmp_path)
    log.add_many(1, [])  # nothing fetched: the check still waits for the first record
    assert log._verifying == {0: Checkpoint(5, 1700), 1: Checkpoint(5, 1700)}
    log.add_many(0, [(4, value("a", 4), 1700), (5, value("a", 5), 1800), (6, value("a", 6), 9)])
    log.add_many(1, [(4, value("b", 4), 9999), (5, value("b", 5), 1800)])
    assert log._stale == {1} and not log._verifying
    assert log.summary()["records_read"] == 2 and log.summary()["read"] == {"0": 2}
    assert log.positions == {0: 6} and not log.gaps
    store.close()


def test_a_fetch_without_the_checkpoint_s_record_and_a_lower_end_is_another_topic(
    tmp_path: Path,
) -> None:
    store = RocksStore(tmp_path / "log", max_attempts=10, max_age=7 * 86400.0)
    log = reader(store)
    for p in (0, 1, 2):
        log.hold(p)
    log._verifying = {p: Checkpoint(50, 1700) for p in (0, 1, 2)}
    # Partition 0 not fetched yet; 1 answered up to 50 (its record is coming); 2 ends at 3.
    log._check_resumed(Highwaters({1: 50, 2: 3}))  # type: ignore[arg-type]
    assert log.assigned == {0, 1} and set(log._verifying) == {0, 1}
    store.close()


class Highwaters:
    def __init__(self, marks: dict[int, int]) -> None:
        self.marks = marks

    def highwater(self, tp: Any) -> int | None:
        return self.marks.get(tp.partition)


class SteppedStore(MemoryStore):
    """A memory store whose sweep takes ``steps`` steps, the last one failing if asked."""

    def __init__(self, steps: int, fail: bool = False) -> None:
        super().__init__(max_attempts=10, max_age=7 * 86400.0)
        self.steps, self.fail, self.taken = steps, fail, 0

    def sweep_steps(self, now: float) -> Iterator[None]:
        for n in range(self.steps):
            if self.fail and n == self.steps - 1:
                raise RuntimeError("a bug in the sweep")
            self.taken += 1
            yield


def test_the_reader_sweeps_a_slice_at_a_time_and_one_sweep_at_once() -> None:
    store = SteppedStore(3)
    log = reader(store)
    log.sweep_for(0.0)  # no sweep under way: nothing
    log.start_sweep(T0)
    log.start_sweep(T0 + 1)  # one under way already: not another
    for taken in (1, 2, 3):
        assert log.sweeping
        log.sweep_for(0.0)  # a budget spent at once: one step a call
        assert store.taken == taken
    log.sweep_for(0.0)
    assert not log.sweeping and log.sweeps == 1 and store.taken == 3
    log.start_sweep(T0 + 2)
    log.sweep_for(60.0)  # budget enough: the whole sweep
    assert not log.sweeping and log.sweeps == 2 and store.taken == 6


def test_a_failing_sweep_ends_and_the_next_one_starts_afresh(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = SteppedStore(2, fail=True)
    log = reader(store)
    log.start_sweep(T0)
    log.sweep_for(60.0)
    assert not log.sweeping and log.sweeps == 0 and store.taken == 1
    assert "delivery log: sweep failed" in caplog.text
    store.fail = False
    log.start_sweep(T0 + 60)
    log.sweep_for(60.0)
    assert log.sweeps == 1 and store.taken == 3


def test_a_sweep_is_sliced_for_the_event_loop() -> None:
    """The store's whole sweep of 100,000 webhooks took 0.2 s (memory) to 1.3 s (RocksDB) in
    one call, every minute, on the worker's event loop; slices of it stay near their budget
    (20,000 webhooks here: ~45 ms in one call)."""
    store = MemoryStore(max_attempts=10, max_age=7 * 86400.0)
    store.open(0, T0)
    for n in range(20_000):
        store.books[0].add(attempt(T0, webhook_id=f"wh-{n}", delivery_id=f"d{n}"), T0)
    log = reader(store)
    log.start_sweep(T0 + 8 * 86400)
    slices = []
    while log.sweeping:
        started = time.perf_counter()
        log.sweep_for(0.005)
        slices.append(time.perf_counter() - started)
    assert len(slices) >= 3 and len(store.books[0]) == 0
    # The budget plus one step (256 webhooks, ~1 ms); generous for a loaded machine.
    assert sorted(slices)[len(slices) // 2] < 0.05


class SlowPreloadStore(MemoryStore):
    """A memory store whose preload takes ``seconds`` of a thread (as reading a big partition
    from disk does), or fails."""

    def __init__(self, seconds: float, fail: bool = False) -> None:
        super().__init__(max_attempts=10, max_age=7 * 86400.0)
        self.seconds, self.fail, self.preloaded = seconds, fail, False

    def preload(self, partition: int, now: float) -> None:
        time.sleep(self.seconds)
        if self.fail:
            raise OSError("disk on fire")
        self.preloaded = True


async def test_a_partition_is_read_while_the_event_loop_goes_on() -> None:
    log = reader(SlowPreloadStore(0.5))
    gaps: list[float] = []

    async def tick() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    started = time.perf_counter()
    await log._preload(0)
    took = time.perf_counter() - started
    ticker.cancel()
    assert took >= 0.5 and len(gaps) > 10
    assert max(gaps) < 0.25, max(gaps)  # on the loop, one gap would have been >= 0.5 s


async def test_a_failed_preload_leaves_the_partition_to_open(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = SlowPreloadStore(0.0, fail=True)
    log = reader(store)
    await log._preload(3)
    assert "partition 3 not preloaded" in caplog.text
    assert log.hold(3) is None and log.assigned == {3}


async def test_stopping_during_a_preload_waits_for_the_thread() -> None:
    """So that closing the store, next, closes what the thread opened."""
    store = SlowPreloadStore(0.3)
    log = reader(store)
    loading = asyncio.create_task(log._preload(0))
    await asyncio.sleep(0.05)
    loading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loading
    assert store.preloaded


@pytest.mark.parametrize(("sent", "passed_on"), [("7", 7), ("0", 1), ("3600", 60), ("soon", 1)])
async def test_a_routed_read_refused_for_the_token_s_rate_is_the_caller_s_429(
    bridge: Bridge, sent: str, passed_on: int
) -> None:
    """The owner refused the caller's token its rate of log reads: the caller is answered
    ``429`` with the owner's ``Retry-After`` (within 1-60 s) at once, not held for a
    rebalance and answered ``503`` (until 2026-12-06: a client told to retry at once, which
    the owner's limit refused again)."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from bridge.api.problems import Problem
    from bridge.worker.api import WorkerActivitySource

    asked: list[str] = []

    async def refuse(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.json_response({"type": "x"}, status=429, headers={"Retry-After": sent})

    app = web.Application()
    app.router.add_get("/internal/v1/activity/{webhook_id}", refuse)
    app.router.add_get("/internal/v1/deliveries/{delivery_id}", refuse)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        topic = bridge.settings.attempts_topic
        live = str(server.make_url("")).rstrip("/")
        bridge.app.assignor = FakeAssignor({live: {topic: list(range(6))}})  # type: ignore[assignment]
        bridge._attempts_assigned(set())
        source = WorkerActivitySource(bridge)
        loop = asyncio.get_running_loop()
        started = loop.time()
        for read in (source.activity("wh"), source.delivery("dlv")):
            with pytest.raises(Problem) as refused:
                await asyncio.wait_for(read, PROMPT)
            assert refused.value.status == 429
            assert refused.value.headers["Retry-After"] == str(passed_on)
        assert loop.time() - started < PROMPT  # not held
        assert asked == ["/internal/v1/activity/wh", "/internal/v1/deliveries/dlv"]
    finally:
        await server.close()
        await bridge.close()


@pytest.mark.parametrize("how", ["fails", "stopped"])
async def test_a_reader_whose_consumer_does_not_start_lets_its_directory_go(
    tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The RocksDB store holds its directory for its life: until 2026-12-07 a reader whose
    consumer failed to start (or that was stopped meanwhile) never closed it, and a worker
    started again in the same process was refused the directory."""
    from bridge.errors import ConfigError
    from bridge.kafka import clients

    monkeypatch.setattr(clients, "START_GRACE", 0.05)  # a stop lets a start finish this long
    started = asyncio.Event()

    class Consumer:
        async def start(self) -> None:
            started.set()
            if how == "fails":
                raise ConnectionError("no broker")
            await asyncio.sleep(3600)

        async def stop(self) -> None:
            pass

    store = RocksStore(tmp_path / "log", max_attempts=10, max_age=86400)
    with pytest.raises(ConfigError):
        RocksStore(tmp_path / "log", max_attempts=10, max_age=86400)  # held
    log = DeliveryLogReader(
        topic="attempts",
        consumer_factory=lambda: Consumer(),  # type: ignore[arg-type,return-value]
        store=store,
        max_age=86400.0,
    )
    reading = asyncio.ensure_future(log._read(log))  # (a mode ServiceTask: its own service)
    await asyncio.wait_for(started.wait(), PROMPT)
    if how == "stopped":
        reading.cancel()
    with pytest.raises((ConnectionError, asyncio.CancelledError)):
        await reading
    RocksStore(tmp_path / "log", max_attempts=10, max_age=86400).close()
