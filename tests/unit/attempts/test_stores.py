"""bridge.attempts.stores: the in-memory and the RocksDB store keep and answer the same log."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.attempts.log import LogQuery
from bridge.attempts.record import Attempt
from bridge.attempts.stats import WINDOWS
from bridge.attempts.stores import DeliveryLogStore, MemoryStore, RocksStore
from tests.support.attempt_logs import attempt_bytes
from tests.unit.attempts.test_attempts import T0, attempt

WEBHOOKS = ["a", "b", "c\x00d"]


def pages(store: DeliveryLogStore, webhook_id: str, query: LogQuery, now: float, limit: int) -> Any:
    activity = store.get(webhook_id) or store.empty()
    out = []
    cursor = None
    for _ in range(200):
        page = activity.log.page(query, now=now, limit=limit, cursor=cursor)
        out.append(([a.as_dict() for a in page.items], page.next_cursor))
        cursor = page.next_cursor
        if cursor is None:
            break
    return out


def view(store: DeliveryLogStore, now: float, limit: int, *, stats: bool = True) -> Any:
    """Everything a client can see of ``store`` at ``now`` (``stats``: with the stats)."""
    seen: dict[str, Any] = {}
    for webhook_id in WEBHOOKS:
        activity = store.get(webhook_id) or store.empty()
        seen[webhook_id] = {
            "all": pages(store, webhook_id, LogQuery(), now, limit),
            "failures": pages(store, webhook_id, LogQuery(outcome="failure"), now, limit),
            "since": pages(store, webhook_id, LogQuery(since=T0 + 20), now, limit),
            "length": len(activity.log),
            "attempts": [a.as_dict() for a in activity.log.attempts()],
        }
        if stats:
            seen[webhook_id]["stats"] = [activity.stats.window(name, now) for name in WINDOWS]
            seen[webhook_id]["last"] = (activity.stats.last_success, activity.stats.last_failure)
    for delivery_id in ("d0", "d1", "d2"):
        seen[delivery_id] = sorted(
            (a.as_dict() for a in store.delivery(delivery_id)), key=lambda a: str(a)
        )
    return seen


adds = st.lists(
    st.tuples(
        st.sampled_from(WEBHOOKS),
        st.integers(-50, 120),  # started at, from T0: some older than the age limit
        st.sampled_from(["d0", "d1", "d2"]),
        st.integers(1, 3),
        st.sampled_from(["success", "failure", "skipped"]),
        st.integers(0, 40),  # how far the clock moved
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(adds, st.integers(1, 6), st.integers(1, 8), st.integers(0, 70))
def test_any_adds_give_the_same_pages_from_both_stores(
    rows: list[tuple[str, int, str, int, str, int]], limit: int, max_attempts: int, restart: int
) -> None:
    """Also across a restart of the RocksDB store after ``restart`` adds (the memory store goes
    on): its log is the same; its stats, rebuilt from kept attempts, are then not compared."""
    memory = MemoryStore(max_attempts=max_attempts, max_age=60)
    with tempfile.TemporaryDirectory() as directory:
        disk = RocksStore(Path(directory), max_attempts=max_attempts, max_age=60)
        now = T0
        for store in (memory, disk):
            store.open(0, now)
        restarted = False
        for offset, (webhook_id, at, delivery_id, number, outcome, step) in enumerate(rows):
            if offset == restart:
                disk.close()
                disk = RocksStore(Path(directory), max_attempts=max_attempts, max_age=60)
                assert disk.open(0, now) == (None if offset == 0 else (offset, -1))
                restarted = True
            now += step
            one: Attempt = attempt(
                T0 + at,
                webhook_id=webhook_id,
                delivery_id=delivery_id,
                attempt=number,
                outcome=outcome,
                status=200 if outcome == "success" else None,
            )
            kept = [s.add(0, offset, one, attempt_bytes(one), now) for s in (memory, disk)]
            assert kept[0] == kept[1]
            disk.flush(0)
            if offset % 7 == 0:
                stats = not restarted
                assert view(memory, now, limit, stats=stats) == view(disk, now, limit, stats=stats)
        stats = not restarted
        assert view(memory, now, limit, stats=stats) == view(disk, now, limit, stats=stats)
        disk.close()


def test_a_dropped_partition_is_deleted_and_a_kept_one_reopens(tmp_path: Path) -> None:
    store = RocksStore(tmp_path, max_attempts=10, max_age=86400)
    assert store.open(0, T0) is None and store.open(1, T0) is None
    one, two = attempt(T0, webhook_id="x"), attempt(T0, webhook_id="y")
    assert store.add(0, 5, one, attempt_bytes(one), T0)
    assert store.add(1, 9, two, attempt_bytes(two), T0)
    store.drop(1)
    assert not (tmp_path / "1").exists() and store.get("y") is None
    store.close()
    store = RocksStore(tmp_path, max_attempts=10, max_age=86400)
    assert store.open(0, T0) == (6, -1)
    assert store.open(1, T0) is None
    activity = store.get("x")
    assert activity is not None and activity.log.attempts() == [one]
    assert activity.stats.window("1h", T0).attempts == 1
    store.close()


def test_a_partition_whose_files_are_damaged_is_read_again(tmp_path: Path) -> None:
    store = RocksStore(tmp_path, max_attempts=10, max_age=86400)
    one = attempt(T0, webhook_id="x")
    store.open(0, T0)
    assert store.add(0, 5, one, attempt_bytes(one), T0)
    store.close()
    for name in ("CURRENT", *(f.name for f in (tmp_path / "0").glob("MANIFEST-*"))):
        (tmp_path / "0" / name).write_bytes(b"not rocksdb")
    store = RocksStore(tmp_path, max_attempts=10, max_age=86400)
    assert store.open(0, T0) is None and store.get("x") is None
    assert store.add(0, 0, one, attempt_bytes(one), T0)
    store.close()
