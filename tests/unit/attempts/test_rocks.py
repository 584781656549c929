"""bridge.attempts.rocks: a partition's log on disk, its checkpoint written with its attempts."""

from __future__ import annotations

from pathlib import Path

import pytest
import rocksdict

from bridge.attempts.keys import DELIVERY_INDEX
from bridge.attempts.log import LogQuery
from bridge.attempts.rocks import Checkpoint, PartitionLog
from tests.support.attempt_logs import attempt_bytes
from tests.unit.attempts.test_attempts import T0, attempt

RECORDS = [
    attempt(T0 + (i % 4) * 10 + i, delivery_id=f"d{i % 3}", attempt=i // 3 + 1) for i in range(12)
]


def open_log(path: Path, now: float = T0 + 100, max_attempts: int = 5) -> PartitionLog:
    return PartitionLog(path, max_attempts=max_attempts, max_age=86400, now=now)


def kept(log: PartitionLog) -> list[str]:
    return [f"{a.delivery_id}/{a.attempt}" for a in log.log("wh").attempts()]


class Crash(Exception):
    pass


def test_a_failed_write_leaves_the_checkpoint_and_attempts_together(tmp_path: Path) -> None:
    # Nothing trimmed by count: stats rebuilt at open count kept attempts only.
    clean = open_log(tmp_path / "clean", max_attempts=20)
    for offset, one in enumerate(RECORDS):
        clean.add(one, attempt_bytes(one), offset, T0 + 100, 5000 + offset)
    clean.flush()

    log = open_log(tmp_path / "crashed", max_attempts=20)
    writes = 0

    def fail_on_the_seventh(batch: rocksdict.WriteBatch) -> None:
        nonlocal writes
        writes += 1
        if writes == 7:
            raise Crash
        real(batch)

    real = log.write
    log.write = fail_on_the_seventh
    with pytest.raises(Crash):
        for offset, one in enumerate(RECORDS):
            log.add(one, attempt_bytes(one), offset, T0 + 100, 5000 + offset)
    before = (kept(log), log.checkpoint, log.stats("wh"))
    log.close()

    # Reopened ("restarted"): the checkpoint is right after the last record written, and
    # exactly that record's and its predecessors' attempts are there, as memory had them.
    log = open_log(tmp_path / "crashed", max_attempts=20)
    assert log.checkpoint == Checkpoint(6, 5000 + 5)
    assert (kept(log), log.checkpoint) == before[:2]
    stats = log.stats("wh")
    assert stats is not None and before[2] is not None
    assert stats.window("1h", T0 + 100) == before[2].window("1h", T0 + 100)
    # Reading on from the checkpoint (each record again at most once) ends where a clean read
    # ends, with nothing counted twice.
    for offset in range(log.checkpoint.offset, len(RECORDS)):
        log.add(RECORDS[offset], attempt_bytes(RECORDS[offset]), offset, T0 + 100, 5000 + offset)
    assert kept(log) == kept(clean)
    assert log.checkpoint == clean.checkpoint == (len(RECORDS), 5000 + len(RECORDS) - 1)
    mine, theirs = log.stats("wh"), clean.stats("wh")
    assert mine is not None and theirs is not None
    assert mine.window("1h", T0 + 100) == theirs.window("1h", T0 + 100)
    log.close()
    clean.close()


def test_records_not_kept_move_the_checkpoint_when_flushed(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    one = RECORDS[0]
    assert log.add(one, attempt_bytes(one), 0, T0 + 100, 10)
    assert not log.add(one, attempt_bytes(one), 1, T0 + 100, 11)  # read twice
    log.skip(2, 12)  # not an attempt record
    assert log.checkpoint == (1, 10)
    log.flush()
    assert log.checkpoint == (3, 12)
    log.close()
    assert open_log(tmp_path).checkpoint == (3, 12)


def test_what_is_trimmed_leaves_the_delivery_index_too(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    for offset, one in enumerate(RECORDS):
        log.add(one, attempt_bytes(one), offset, T0 + 100)
    assert len(kept(log)) == 5
    index = [k for k, _ in log._db.items() if bytes(k).startswith(DELIVERY_INDEX)]
    assert len(index) == 5
    assert sum(len(log.delivery(d)) for d in ("d0", "d1", "d2")) == 5
    log.close()


def test_at_open_old_attempts_are_deleted_and_stats_rebuilt(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    for offset, one in enumerate(RECORDS[:3]):
        log.add(one, attempt_bytes(one), offset, T0 + 100)
    log.close()
    log = open_log(tmp_path, now=T0 + 86400 + 15)
    assert kept(log) == ["d2/1"]
    stats = log.stats("wh")
    assert stats is not None and stats.window("7d", T0 + 86400 + 15).attempts == 3
    assert len(log.log("wh").page(LogQuery(), now=T0 + 86400 + 15).items) == 1
    log.close()


def test_records_as_read_are_kept_with_fields_this_version_does_not_know(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    value = attempt_bytes(RECORDS[0])[:-1] + b', "response_bytes": 12}'
    log.add(RECORDS[0], value, 0, T0 + 100)
    assert [v for v in log.oldest_first(b"wh\x00\x01")] == [value]
    log.close()
