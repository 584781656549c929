"""The recovery view keeps each recovery's newest record, skips what is not one, reports every
record applied (so reads are never held up), and tells a live runner from a gone one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.contract import jsoncanon
from bridge.subscriptions.freshness import TableFreshness
from bridge.worker.recovery_view import RecoveryView


async def _ends() -> Mapping[int, int]:
    return {}


def view() -> RecoveryView:
    return RecoveryView(TableFreshness(_ends, timeout=1.0))


def record(**changes: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "id": "r1",
        "webhook_id": "wh",
        "state": "running",
        "runner": "http://w1:6066",
        "updated_at": "2024-01-15T10:00:00.000Z",
    }
    value.update(changes)
    return value


def test_the_newest_record_wins_and_a_tombstone_forgets() -> None:
    v = view()
    v.apply(0, 0, b"r1", jsoncanon.dumps(record()))
    v.apply(0, 1, b"r1", jsoncanon.dumps(record(state="done")))
    assert v.get("r1") is not None and v.get("r1")["state"] == "done"  # type: ignore[index]
    assert list(v.running()) == []
    v.apply(0, 2, b"r1", None)
    assert v.get("r1") is None and len(v) == 0


def test_records_that_are_not_recoveries_are_counted_and_still_applied() -> None:
    v = view()
    bad = [
        (None, jsoncanon.dumps(record())),
        (b"\xff", jsoncanon.dumps(record())),
        (b"r1", b"not json"),
        (b"r1", jsoncanon.dumps([1])),
        (b"r2", jsoncanon.dumps(record())),  # its id is another one's
    ]
    for offset, (key, value) in enumerate(bad):
        v.apply(1, offset, key, value)
    assert v.invalid == len(bad) and len(v) == 0
    assert v.freshness.caught_up_to({1: len(bad)})


def test_a_runner_is_live_only_while_it_records() -> None:
    v = view()
    v.apply(0, 0, b"r1", jsoncanon.dumps(record()))
    at = 1705312800.0  # 2024-01-15T10:00:00Z
    assert v.live_runner("r1", at + 10, stale_after=15) == "http://w1:6066"
    assert v.live_runner("r1", at + 16, stale_after=15) is None
    # Stamped ahead of this clock: live within the same bound (a runner's clock a little
    # ahead), not until the stamp (a week ahead was a week of 503s, until 2026-12-06).
    assert v.live_runner("r1", at - 10, stale_after=15) == "http://w1:6066"
    assert v.live_runner("r1", at - 16, stale_after=15) is None
    v.apply(0, 1, b"r1", jsoncanon.dumps(record(runner=None)))
    assert v.live_runner("r1", at, stale_after=15) is None
    assert v.live_runner("unknown", at, stale_after=15) is None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["r1", "r2", "r3"]),
            st.sampled_from(["running", "done", "failed", "tombstone", "not json"]),
            st.sampled_from(["wh1", "wh2", None]),
        ),
        max_size=40,
    )
)
def test_running_ended_and_by_webhook_are_the_newest_records(
    changes: list[tuple[str, str, str | None]],
) -> None:
    """Split by state and by webhook (a recovery's records may even name other webhooks). An
    end is final: a running record after one is skipped (a runner that had not seen it yet),
    until a tombstone forgets the recovery."""
    v = view()
    model: dict[str, tuple[str, str | None]] = {}
    for offset, (rid, state, webhook_id) in enumerate(changes):
        if state == "tombstone":
            v.apply(0, offset, rid.encode(), None)
            model.pop(rid, None)
        elif state == "not json":  # skipped: the newest valid record stands
            v.apply(0, offset, rid.encode(), b"{")
        else:
            value = record(id=rid, state=state, webhook_id=webhook_id)
            v.apply(0, offset, rid.encode(), jsoncanon.dumps(value))
            if state == "running" and model.get(rid, ("running", None))[0] != "running":
                continue  # after an end: skipped
            model[rid] = (state, webhook_id)
    assert sorted(r["id"] for r in v.running()) == sorted(
        rid for rid, (state, _) in model.items() if state == "running"
    )
    assert sorted(rid for rid, _ in v.ended()) == sorted(
        rid for rid, (state, _) in model.items() if state != "running"
    )
    for webhook_id in ("wh1", "wh2"):
        assert sorted(r["id"] for r in v.of_webhook(webhook_id)) == sorted(
            rid for rid, (_, owner) in model.items() if owner == webhook_id
        )


def test_an_end_is_final_for_a_runner_that_had_not_seen_it() -> None:
    """Recorded cancelled by a worker that found no live runner while a take-over resumed it:
    the new runner's running record after it is skipped, the recovery stays cancelled, and
    the runner stops at its next heartbeat (until 2026-12-06 it ran on, shown running)."""
    v = view()
    v.apply(0, 0, b"r1", jsoncanon.dumps(record(runner=None)))
    v.apply(0, 1, b"r1", jsoncanon.dumps(record(state="cancelled", runner=None)))
    v.apply(0, 2, b"r1", jsoncanon.dumps(record(runner="http://w2:6066")))
    got = v.get("r1")
    assert got is not None and got["state"] == "cancelled" and list(v.running()) == []
    assert v.freshness.caught_up_to({0: 3})
    v.apply(0, 3, b"r1", None)  # forgotten: a later record is a new start
    v.apply(0, 4, b"r1", jsoncanon.dumps(record(runner="http://w2:6066")))
    assert [r["id"] for r in v.running()] == ["r1"]
