"""bridge.attempts.stores: the in-memory and the RocksDB store keep and answer the same log."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.attempts.book import RELEASE_CHUNK, SWEEP_CHUNK, ActivityBook
from bridge.attempts.log import LogQuery, WebhookLog, decode_cursor
from bridge.attempts.record import Attempt
from bridge.attempts.stats import WINDOWS
from bridge.attempts.stores import DeliveryLogStore, MemoryStore, RocksStore
from bridge.errors import ConfigError
from tests.support.attempt_logs import attempt_bytes
from tests.unit.attempts.test_attempts import T0, attempt, cursors

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
        st.booleans(),  # a sweep after this add
    ),
    max_size=60,
)


def delivery_index(book: ActivityBook) -> dict[str, set[str]]:
    """The book's index of which webhooks keep an attempt of each delivery."""
    return {
        delivery_id: {holders} if isinstance(holders, str) else set(holders)
        for delivery_id, holders in book._by_delivery.items()
    }


def held_deliveries(book: ActivityBook) -> dict[str, set[str]]:
    """The same, worked out from every webhook's log: what the index must say."""
    held: dict[str, set[str]] = {}
    for webhook_id, activity in book._activity.items():
        assert isinstance(activity.log, WebhookLog)
        for delivery_id in activity.log.delivery_ids():
            held.setdefault(delivery_id, set()).add(webhook_id)
    return held


def sweep(store: DeliveryLogStore, now: float) -> int:
    """A whole sweep of ``store``; how many steps it took."""
    return sum(1 for _ in store.sweep_steps(now))


@settings(max_examples=60, deadline=None)
@given(adds, st.integers(1, 6), st.integers(1, 8), st.integers(0, 70))
def test_any_adds_give_the_same_pages_from_both_stores(
    rows: list[tuple[str, int, str, int, str, int, bool]],
    limit: int,
    max_attempts: int,
    restart: int,
) -> None:
    """Also across sweeps, and a restart of the RocksDB store after ``restart`` adds (the
    memory store goes on): its log is the same; its stats, rebuilt from kept attempts, are then
    not compared."""
    memory = MemoryStore(max_attempts=max_attempts, max_age=60)
    with tempfile.TemporaryDirectory() as directory:
        disk = RocksStore(Path(directory), max_attempts=max_attempts, max_age=60)
        now = T0
        for store in (memory, disk):
            store.open(0, now)
        restarted = False
        for offset, (webhook_id, at, delivery_id, number, outcome, step, swept) in enumerate(rows):
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
            assert delivery_index(memory.books[0]) == held_deliveries(memory.books[0])
            disk.flush(0)
            if swept:
                for store in (memory, disk):
                    sweep(store, now)
                assert delivery_index(memory.books[0]) == held_deliveries(memory.books[0])
            if offset % 7 == 0 or swept:
                stats = not restarted
                assert view(memory, now, limit, stats=stats) == view(disk, now, limit, stats=stats)
        stats = not restarted
        assert view(memory, now, limit, stats=stats) == view(disk, now, limit, stats=stats)
        disk.close()


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(sorted(WINDOWS)),
    st.integers(0, 10**8),  # when asked, in ms after T0
    st.data(),
)
def test_an_attempt_a_window_long_ago_or_less_is_counted_once_in_it(
    name: str, asked_ms: int, data: st.DataObject
) -> None:
    """Counted by both stores, added as soon as made or any time up to the asking, and by the
    RocksDB store after a restart (its stats rebuilt, not counted twice). Times in whole ms,
    as attempt records give them."""
    window_ms = int(WINDOWS[name] * 1000)
    # Drawn as how much younger than the window: hypothesis favours 0, the edge.
    age_ms = window_ms - data.draw(st.integers(0, window_ms), label="short of the window (ms)")
    lag_ms = data.draw(st.integers(0, age_ms), label="age when added (ms)")
    made_ms = int(T0 * 1000) + asked_ms - age_ms
    now, added = (made_ms + age_ms) / 1000, (made_ms + lag_ms) / 1000
    one = attempt(made_ms / 1000)
    assert one.at_seconds == made_ms / 1000
    max_age = 7 * 86400.0  # the least delivery_log_max_age
    with tempfile.TemporaryDirectory() as directory:
        memory = MemoryStore(max_attempts=10, max_age=max_age)
        disk = RocksStore(Path(directory), max_attempts=10, max_age=max_age)
        for store in (memory, disk):
            store.open(0, added)
            assert store.add(0, 0, one, attempt_bytes(one), added)
        disk.close()
        restarted = RocksStore(Path(directory), max_attempts=10, max_age=max_age)
        restarted.open(0, now)
        assert not restarted.add(0, 0, one, attempt_bytes(one), now)  # read again: kept once
        for store in (memory, restarted):
            activity = store.get(one.webhook_id)
            assert activity is not None
            assert activity.stats.window(name, now).attempts == 1
        restarted.close()


@settings(max_examples=200, deadline=None)
@given(cursors, st.integers(1, 3))
def test_any_cursor_gives_the_same_page_from_both_stores_or_is_refused(
    cursor: str, limit: int
) -> None:
    """Refused (``ValueError``, which the API answers with a 400 naming ``cursor``) by both,
    or decoded, and then the same page from both: a NaN time gave the memory store's empty
    page and the RocksDB store's whole log, a negative attempt number a page from one and a
    refusal from the other, a time beyond the double range an OverflowError."""
    with tempfile.TemporaryDirectory() as directory:
        memory = MemoryStore(max_attempts=10, max_age=60)
        disk = RocksStore(Path(directory), max_attempts=10, max_age=60)
        for store in (memory, disk):
            store.open(0, T0)
            for n, (at, delivery_id, number) in enumerate(
                [(-2, "d0", 1), (-1, "d1", 2), (0, "d1", 3), (0, "d2", 1)]
            ):
                one = attempt(T0 + at, delivery_id=delivery_id, attempt=number)
                assert store.add(0, n, one, attempt_bytes(one), T0)
        try:
            decode_cursor(cursor)
        except ValueError:
            for store in (memory, disk):
                with pytest.raises(ValueError):
                    (store.get("wh") or store.empty()).log.page(
                        LogQuery(), now=T0, limit=limit, cursor=cursor
                    )
        else:
            memory_page, disk_page = (
                (store.get("wh") or store.empty()).log.page(
                    LogQuery(), now=T0, limit=limit, cursor=cursor
                )
                for store in (memory, disk)
            )
            assert memory_page == disk_page
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


def test_a_partition_whose_manifest_is_gone_is_read_again(tmp_path: Path) -> None:
    """RocksDB says "IO error: No such file or directory" for a MANIFEST gone from the
    partition's own directory: until 2026-12-07 taken for a disk that cannot be used now, and
    the partition failed to open at every start until the directory was deleted by hand."""
    store = RocksStore(tmp_path, max_attempts=10, max_age=86400)
    one = attempt(T0, webhook_id="x")
    store.open(0, T0)
    assert store.add(0, 5, one, attempt_bytes(one), T0)
    store.flush(0)
    store.close()
    manifests = list((tmp_path / "0").glob("MANIFEST-*"))
    assert manifests
    for manifest in manifests:
        manifest.unlink()
    store = RocksStore(tmp_path, max_attempts=10, max_age=86400)
    assert store.open(0, T0) is None and store.get("x") is None
    store.close()


def test_a_revoked_partition_whose_database_fails_to_close_is_deleted(tmp_path: Path) -> None:
    """RocksDB refuses to close cleanly after a failed write ("Writer has previous error"):
    until 2026-12-07 such a partition, revoked while it waited to be opened again, raised out
    of the reader, its files kept."""
    store = RocksStore(tmp_path, max_attempts=10, max_age=86400)
    store.open(0, T0)
    held = store.partitions[0]
    held._db.close()

    class Failing:
        def close(self) -> None:
            raise Exception("IO error: Writer has previous error")

    held._db = Failing()
    store.drop(0)
    assert not (tmp_path / "0").exists()
    store.close()


def in_another_process(code: str, *args: str) -> subprocess.Popen[str]:
    """``code`` run by another Python process (``sys.argv[1:]``: ``args``), which says
    ``ready`` on its output once it has done what it does before it waits for its input."""
    child = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[3],  # this tree's bridge
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    if line.strip() != "ready":
        child.kill()
        _, err = child.communicate()
        raise AssertionError(f"the other process did not start: {line!r} {err}")
    return child


def ended(child: subprocess.Popen[str]) -> str:
    """Let ``child`` end (its input closed); what it wrote after ``ready``."""
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    return out


HOLD_STORE = """
import sys
from pathlib import Path
from bridge.attempts.stores import RocksStore
store = RocksStore(Path(sys.argv[1]), max_attempts=10, max_age=86400)
store.open(0, 0.0)
print("ready", flush=True)
sys.stdin.read()
store.close()
"""


def test_a_directory_another_process_holds_is_refused_and_kept(tmp_path: Path) -> None:
    """Two workers given one ``data_dir``: the second refuses to start, naming the directory
    (until 2026-12-07 it took the first one's locked databases for damaged files and deleted
    them, and the first deleted the second's when it gave partitions up)."""
    holder = in_another_process(HOLD_STORE, str(tmp_path))
    try:
        with pytest.raises(ConfigError, match="own data_dir") as refused:
            RocksStore(tmp_path, max_attempts=10, max_age=86400)
        assert str(tmp_path) in str(refused.value)
        assert (tmp_path / "0" / "CURRENT").exists()
    finally:
        ended(holder)
    store = RocksStore(tmp_path, max_attempts=10, max_age=86400)  # released with its close
    # Held by the store, not by the process: a second store in this one is refused too.
    with pytest.raises(ConfigError):
        RocksStore(tmp_path, max_attempts=10, max_age=86400)
    store.close()
    RocksStore(tmp_path, max_attempts=10, max_age=86400).close()


HOLD_DATABASE = """
import sys, rocksdict
db = rocksdict.Rdict(sys.argv[1], options=rocksdict.Options(raw_mode=True))
print("ready", flush=True)
sys.stdin.read()
db.close()
"""


def test_a_partition_whose_database_another_process_holds_is_not_taken_for_damaged(
    tmp_path: Path,
) -> None:
    """RocksDB's lock on a database open elsewhere is an error of the moment, not damage: the
    files are left as they are (until 2026-12-07 they were deleted, under the process that had
    them open), and the partition opens once they are free."""
    store = RocksStore(tmp_path, max_attempts=10, max_age=86400)
    store.open(0, T0)
    one = attempt(T0, webhook_id="x")
    assert store.add(0, 5, one, attempt_bytes(one), T0)
    store.close()
    holder = in_another_process(HOLD_DATABASE, str(tmp_path / "0"))
    store = RocksStore(tmp_path, max_attempts=10, max_age=86400)
    try:
        with pytest.raises(Exception, match="lock"):
            store.open(0, T0)
        with pytest.raises(Exception, match="lock"):
            store.preload(0, T0)
        assert store.partitions == {}
    finally:
        ended(holder)
    assert store.open(0, T0) == (6, -1)
    activity = store.get("x")
    assert activity is not None and activity.log.attempts() == [one]
    store.close()


@pytest.mark.parametrize("damage", ["checkpoint", "key", "block"])
def test_a_partition_whose_contents_are_damaged_is_read_again(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Files that open but whose contents are not what the store wrote (a checkpoint or a key
    of another form, a block whose checksum does not match): the partition is removed and
    read again, as one that does not open (until 2026-12-06 the database left open by the
    failed read held its lock, and opening it afresh failed too). ``caplog`` keeps the
    logged error, and the failed read with it, alive, as a worker's log handlers may."""
    import rocksdict

    from bridge.attempts.keys import CHECKPOINT

    store = RocksStore(tmp_path, max_attempts=1000, max_age=86400 * 30)
    store.open(0, T0)
    kept = [attempt(T0 - n, webhook_id=f"w{n % 7}", delivery_id=f"d{n}") for n in range(300)]
    for offset, one in enumerate(kept):
        assert store.add(0, offset, one, attempt_bytes(one), T0)
    store.flush(0)
    store.close()
    if damage == "block":
        for sst in (tmp_path / "0").glob("*.sst"):
            data = bytearray(sst.read_bytes())
            for k in range(200, 400):
                data[k] ^= 0xFF
            sst.write_bytes(bytes(data))
    else:
        db = rocksdict.Rdict(str(tmp_path / "0"), options=rocksdict.Options(raw_mode=True))
        if damage == "checkpoint":
            db[CHECKPOINT] = b"not a checkpoint"
        else:
            db[b"a key of no form the store writes"] = attempt_bytes(kept[0])
        db.close()
    store = RocksStore(tmp_path, max_attempts=1000, max_age=86400 * 30)
    assert store.open(0, T0) is None and store.get("w0") is None
    assert store.add(0, 0, kept[0], attempt_bytes(kept[0]), T0)
    assert "unreadable; reading it again" in caplog.text
    store.close()


def test_a_kept_value_this_release_does_not_read_is_left_out_of_every_answer(
    tmp_path: Path,
) -> None:
    """A value an earlier release kept, whose checks were looser (a status of 2**62, refused
    since 2026-12-05): left out of pages, attempts and deliveries, as the memory store never
    keeps one (until 2026-12-06 every page of its webhook raised, a 500)."""
    import json

    import rocksdict

    from bridge.attempts.keys import attempt_key

    store = RocksStore(tmp_path, max_attempts=10, max_age=86400)
    store.open(0, T0)
    good = attempt(T0 - 10, webhook_id="x", delivery_id="d_good")
    stale = attempt(T0 - 5, webhook_id="x", delivery_id="d_stale")
    for offset, one in enumerate((good, stale)):
        assert store.add(0, offset, one, attempt_bytes(one), T0)
    store.flush(0)
    store.close()
    db = rocksdict.Rdict(str(tmp_path / "0"), options=rocksdict.Options(raw_mode=True))
    written = json.loads(attempt_bytes(stale))
    db[attempt_key(stale)] = json.dumps({**written, "status": 2**62}).encode()
    db.close()
    store = RocksStore(tmp_path, max_attempts=10, max_age=86400)
    store.open(0, T0)
    activity = store.get("x")
    assert activity is not None
    page = activity.log.page(LogQuery(), now=T0)
    assert [a.delivery_id for a in page.items] == ["d_good"]
    assert [a.delivery_id for a in activity.log.attempts()] == ["d_good"]
    assert store.delivery("d_stale") == [] and len(store.delivery("d_good")) == 1
    store.close()


def stores(directory: Path, max_age: float = 60) -> list[DeliveryLogStore]:
    return [
        MemoryStore(max_attempts=5, max_age=max_age),
        RocksStore(directory, max_attempts=5, max_age=max_age),
    ]


def test_a_sweep_goes_a_slice_of_webhooks_a_step_and_forgets_the_emptied(tmp_path: Path) -> None:
    """A sweep never holds its caller for every webhook at once, and a webhook left with no
    attempt and no stats bucket is forgotten, its deliveries with it (the memory store kept
    every webhook it had ever seen until its partition was revoked)."""
    webhooks = [f"wh-{n}" for n in range(2 * SWEEP_CHUNK + 10)]
    for store in stores(tmp_path):
        for partition in (0, 1):
            store.open(partition, T0)
        for n, webhook_id in enumerate(webhooks):
            one = attempt(T0, webhook_id=webhook_id, delivery_id=f"d{n}")
            assert store.add(n % 2, n // 2, one, attempt_bytes(one), T0)
        assert sweep(store, T0 + 30) >= 3  # nothing expires yet: everything stays
        assert store.summary()["attempts"] == len(webhooks)
        assert store.get("wh-0") is not None and len(store.delivery("d0")) == 1
        # Past the log's age and every stats window: nothing left of any webhook.
        assert sweep(store, T0 + 8 * 86400) >= 3
        assert all(store.get(w) is None for w in webhooks)
        assert store.summary()["attempts"] == 0 and store.summary()["webhooks"] == 0
        assert store.delivery("d0") == []
        if isinstance(store, MemoryStore):
            assert all(not book._by_delivery and not len(book) for book in store.books.values())
        store.close()


def test_adds_and_drops_between_the_steps_of_a_sweep(tmp_path: Path) -> None:
    for store in stores(tmp_path, max_age=8 * 86400):
        for partition in (0, 1):
            store.open(partition, T0)
        old = T0 - 7 * 86400  # kept, and past the week of stats at the sweep's time
        for n in range(3 * SWEEP_CHUNK):
            one = attempt(old, webhook_id=f"wh-{n}", delivery_id=f"d{n}")
            assert store.add(n % 2, n // 2, one, attempt_bytes(one), T0)
        now = T0 + 86400 + 60  # the old attempts are beyond the age limit now
        steps = store.sweep_steps(now)
        next(steps)
        # A new attempt of a webhook not swept yet, and of one swept already; then a partition
        # goes (revoked), under the sweep's feet.
        for n in (3 * SWEEP_CHUNK - 2, 0):
            fresh = attempt(now, webhook_id=f"wh-{n}", delivery_id=f"new-{n}")
            assert store.add(n % 2, 10_000 + n, fresh, attempt_bytes(fresh), now)
        store.drop(1)
        for _ in steps:
            pass
        kept = {n for n in range(3 * SWEEP_CHUNK) if store.get(f"wh-{n}") is not None}
        assert kept == {0, 3 * SWEEP_CHUNK - 2}, sorted(kept)[:10]
        assert [a.delivery_id for a in store.delivery("new-0")] == ["new-0"]
        assert store.summary()["attempts"] == 2
        store.close()


async def test_a_partition_read_in_a_thread_is_the_one_opened(tmp_path: Path) -> None:
    """Opening a partition reads all it kept (1.5-2 s per 100,000 attempts): ``preload`` does
    that in a worker thread, showing nothing until ``open`` takes it."""
    store = RocksStore(tmp_path, max_attempts=10, max_age=86400)
    store.open(0, T0)
    one = attempt(T0, webhook_id="x")
    assert store.add(0, 5, one, attempt_bytes(one), T0)
    store.flush(0)
    store.close()
    store = RocksStore(tmp_path, max_attempts=10, max_age=86400)
    for partition in (0, 1):  # 1: no files yet (an empty log is falsy, and must still be taken)
        await asyncio.to_thread(store.preload, partition, T0)
    assert store.partitions == {} and store.get("x") is None
    assert store.open(0, T0) == (6, -1) and store.open(1, T0) is None
    activity = store.get("x")
    assert activity is not None and activity.log.attempts() == [one]
    store.preload(0, T0)  # held already: nothing read again
    assert store.open(0, T0) == (6, -1)
    store.close()


async def test_a_preloaded_partition_is_closed_or_deleted_with_the_store(tmp_path: Path) -> None:
    store = RocksStore(tmp_path, max_attempts=10, max_age=86400)
    await asyncio.to_thread(store.preload, 0, T0)
    await asyncio.to_thread(store.preload, 1, T0)
    store.drop(1)  # revoked before it was opened: its files go
    assert not (tmp_path / "1").exists()
    store.close()  # and 0 is closed: another store can open it (RocksDB locks its files)
    again = RocksStore(tmp_path, max_attempts=10, max_age=86400)
    assert again.open(0, T0) is None and again.open(1, T0) is None
    again.close()


def test_a_dropped_partition_goes_at_once_and_is_freed_a_slice_at_a_time() -> None:
    """Forgetting 170,000 attempts of a revoked partition took 0.6 s in one call; now the
    partition's book goes at once and the next sweep frees it a slice at a time."""
    store = MemoryStore(max_attempts=100, max_age=86400)
    for partition in (0, 1):
        store.open(partition, T0)
    for n in range(3 * RELEASE_CHUNK):
        one = attempt(T0, webhook_id=f"wh-{n % 300}", delivery_id=f"d{n}")
        assert store.add(n % 2, n, one, b"", T0)
    dropped = store.books[1]
    store.drop(1)
    assert store.get("wh-1") is None and store.delivery("d1") == []
    assert store.get("wh-0") is not None and len(store.delivery("d0")) == 1
    assert len(dropped) == 150  # still held until the sweep frees it
    steps = store.sweep_steps(T0)
    next(steps)
    assert 0 < len(dropped) < 150  # a slice of it
    for _ in steps:
        pass
    assert len(dropped) == 0 and dropped._by_delivery == {}
    assert store.summary() == {
        "store": "memory",
        "webhooks": 150,
        "attempts": 3 * RELEASE_CHUNK // 2,
    }
    store.drop(1)  # not held: nothing
    store.open(1, T0)  # held again, read anew
    one = attempt(T0, webhook_id="wh-1", delivery_id="again")
    assert store.add(1, 0, one, b"", T0) and len(store.delivery("again")) == 1


def test_an_attempt_recorded_after_a_full_log_of_newer_ones_is_counted_not_kept(
    tmp_path: Path,
) -> None:
    """A timeout is stamped when it began and recorded when it ended, 30 s later: a busy
    webhook has filled its log with newer attempts by then. Both stores count it in the stats
    (failures, last failure) without keeping it (until 2026-12-06 it was in no stat: a webhook
    whose slow requests all timed out looked healthy); a copy of a kept attempt is not counted
    again."""
    memory = MemoryStore(max_attempts=5, max_age=3600)
    disk = RocksStore(tmp_path, max_attempts=5, max_age=3600)
    now = T0 + 40
    late = attempt(T0, delivery_id="slow", outcome="failure", status=None, duration_seconds=30.0)
    for store in (memory, disk):
        store.open(0, now)
        for n in range(5):
            fast = attempt(T0 + 1 + n, delivery_id=f"fast{n}", outcome="success", status=200)
            assert store.add(0, n, fast, attempt_bytes(fast), now)
        assert not store.add(0, 5, late, attempt_bytes(late), now)  # older than every kept
        again = attempt(T0 + 5, delivery_id="fast4", outcome="success", status=200)
        assert not store.add(0, 6, again, attempt_bytes(again), now)  # a copy: not counted
        # A copy of the late one (a send retried), or its record read again: counted once.
        assert not store.add(0, 7, late, attempt_bytes(late), now)
        activity = store.get(late.webhook_id)
        assert activity is not None and len(activity.log) == 5
        counted = activity.stats.window("1h", now)
        assert (counted.attempts, counted.successes, counted.failures) == (6, 5, 1)
        assert activity.stats.last_failure is not None
        assert activity.stats.last_failure.delivery_id == "slow"
    disk.close()


def test_a_restarted_disk_store_still_knows_the_last_success_its_log_no_longer_keeps(
    tmp_path: Path,
) -> None:
    """One success, then five failures in a log of three: after a restart the RocksDB store
    shows the success as the memory store, reading the topic again, does (until 2026-12-06 it
    showed none, its stats rebuilt from the kept attempts alone); once the webhook is
    forgotten (nothing kept, nothing counted), so are they, on disk too."""
    max_age = 7 * 86400.0
    rows = [attempt(T0, delivery_id="d0", outcome="success", status=200)] + [
        attempt(T0 + n, delivery_id=f"d{n}", outcome="failure", status=500) for n in range(1, 6)
    ]
    now = T0 + 10
    disk = RocksStore(tmp_path, max_attempts=3, max_age=max_age)
    disk.open(0, now)
    for offset, one in enumerate(rows):
        disk.add(0, offset, one, attempt_bytes(one), now)
    disk.flush(0)
    disk.close()
    disk = RocksStore(tmp_path, max_attempts=3, max_age=max_age)
    disk.open(0, now)
    activity = disk.get("wh")
    assert activity is not None and len(activity.log) == 3
    assert activity.stats.last_success is not None
    assert activity.stats.last_success.delivery_id == "d0"
    assert activity.stats.last_failure is not None
    assert activity.stats.last_failure.delivery_id == "d5"
    # A week and more later: nothing kept, nothing counted; the webhook and its last
    # outcomes are forgotten, on disk too.
    later = T0 + max_age + 3 * 86400
    sweep(disk, later)
    assert disk.get("wh") is None
    disk.close()
    disk = RocksStore(tmp_path, max_attempts=3, max_age=max_age)
    disk.open(0, later)
    assert disk.get("wh") is None
    disk.close()


def test_a_last_outcome_read_back_names_the_webhook_it_was_of() -> None:
    """Restored beside kept attempts that name no ``created_at`` (records written before they
    did), it says which webhook the stats count, as counting it did: a deleted webhook's are
    then not shown as another's (``of_webhook``)."""
    from bridge.attempts.stats import WebhookStats

    created = "2024-01-15T09:00:00.000Z"
    stats = WebhookStats()
    stats.add(attempt(T0, delivery_id="old", outcome="failure", status=500), T0)
    stats.remember(
        attempt(T0 + 1, delivery_id="d", outcome="success", status=200, webhook_created_at=created)
    )
    assert stats.webhook_created_at == created
    assert stats.last_success is not None and stats.last_success.delivery_id == "d"
    assert stats.of_webhook("2024-01-15T11:00:00.000Z") is not stats
