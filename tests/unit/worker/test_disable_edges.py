"""bridge.worker.disables at its edges: the owner's table is current as of holding the lock
(a change the API answered 200 while the writer waited for the lock is not written over; the
wait was made before the lock, and such a PATCH was lost, on the real broker too); health decides
again after every verdict that leaves a webhook on; odd and older status records."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from bridge.config import Settings
from bridge.contract.schemas import is_valid
from bridge.delivery.endpoint_health import EndpointHealth, HealthChange
from bridge.metrics import Metrics
from bridge.subscriptions.serial import KeyedLocks
from bridge.subscriptions.webhook import Webhook
from bridge.worker.disables import DisableWriter, disable_verdict
from tests.unit.worker.test_disables import CREATED, VERSION, disabled, webhook


class _Topic:
    """The subscriptions topic and a table that trails it: a record written is in the table
    only after a freshness wait that started after the write (as TableFreshness)."""

    def __init__(self, current: Webhook) -> None:
        self.table: dict[str, Webhook] = {current.id: current}
        self.written: list[Webhook] = []

    async def wait_current(self, received_at: float) -> bool:
        for w in self.written:
            self.table[w.id] = w
        return True


class _Store:
    def __init__(self, topic: _Topic) -> None:
        self.topic = topic
        self.calls: list[tuple[str, Any]] = []

    async def disable(self, current: Webhook, reason: str) -> Webhook:
        self.calls.append(("disable", current.updated_at))
        return current

    async def put_status(self, record: dict[str, Any]) -> None:
        self.calls.append(("status", record["state"]))


async def test_a_patch_made_while_the_writer_waits_for_the_lock_is_not_written_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    v1 = webhook()
    topic = _Topic(v1)
    store = _Store(topic)
    locks = KeyedLocks()
    writer = DisableWriter(
        Settings(),
        index_get=topic.table.get,
        statuses={v1.id: disabled(webhook_id=v1.id)},
        freshness=topic,  # type: ignore[arg-type]
        locks=locks,
        owns=lambda _: True,
        metrics=Metrics(CollectorRegistry()),
    )

    async def opened() -> _Store:
        return store

    monkeypatch.setattr(writer, "_opened", opened)

    # The API's PATCH of the webhook: under the lock, read (current), write, answer 200.
    patch_holds = asyncio.Event()
    patch_may_write = asyncio.Event()

    async def patch() -> None:
        async with locks.hold(v1.id):
            await topic.wait_current(0.0)
            assert topic.table[v1.id] is v1
            patch_holds.set()
            await patch_may_write.wait()
            v2 = webhook(version="2024-01-15T10:00:05.000Z", name="patched")
            topic.written.append(v2)  # acknowledged: answered 200 when the lock is released

    task = asyncio.ensure_future(patch())
    await patch_holds.wait()
    writer.offer([v1.id])  # the disabled status record arrives at the owner now
    for _ in range(10):
        await asyncio.sleep(0)
    patch_may_write.set()
    await task
    for _ in range(50):
        await asyncio.sleep(0)
        if writer._task is not None and writer._task.done():
            break
    await writer.aclose()
    # The owner reads the table current as of the lock (v2): "changed", health afresh; a
    # disable of v1 would write v1's fields over the PATCH answered 200.
    assert store.calls == [("status", "healthy")], store.calls


W = "webhook_abc"
T = 1705312800.0


def _record(change: HealthChange, at: str) -> dict[str, Any]:
    return change.to_record(at)


@pytest.mark.parametrize("patch_first", [True, False])
def test_after_changed_a_later_410_disables(patch_first: bool) -> None:
    statuses: dict[str, dict[str, Any]] = {}
    health = EndpointHealth(60.0, statuses.get)
    gone = health.on_gone(W, T, CREATED)
    assert gone is not None and gone.state == "disabled"
    r1 = _record(gone, "2024-01-15T10:00:01.000Z") | {
        "webhook_created_at": CREATED,
        "webhook_updated_at": VERSION,
    }
    if patch_first:
        health.on_webhook_enabled(W)  # the PATCH's record (active) arrives first
        statuses[W] = r1
    else:
        statuses[W] = r1
        health.on_webhook_enabled(W)
    assert disable_verdict(webhook(version="2024-01-15T10:00:00.900Z"), r1) == "changed"
    statuses[W] = _record(HealthChange(W, "healthy", None), "2024-01-15T10:00:02.000Z")
    again = health.on_gone(W, T + 5, CREATED)
    assert again is not None and again.state == "disabled"


def test_after_other_webhook_the_new_webhook_410_disables() -> None:
    statuses: dict[str, dict[str, Any]] = {}
    health = EndpointHealth(60.0, statuses.get)
    gone = health.on_gone(W, T, CREATED)
    assert gone is not None
    statuses[W] = _record(gone, "2024-01-15T10:00:01.000Z") | {"webhook_created_at": CREATED}
    new_created = "2024-01-15T10:00:00.500Z"
    health.on_webhook_enabled(W)
    assert disable_verdict(webhook(created=new_created), statuses[W]) == "other_webhook"
    statuses[W] = _record(HealthChange(W, "healthy", None), "2024-01-15T10:00:02.000Z")
    again = health.on_gone(W, T + 5, new_created)
    assert again is not None and again.state == "disabled"


def test_inactive_then_reenabled_decides_again() -> None:
    statuses: dict[str, dict[str, Any]] = {}
    health = EndpointHealth(60.0, statuses.get)
    gone = health.on_gone(W, T, CREATED)
    assert gone is not None
    statuses[W] = _record(gone, "2024-01-15T10:00:01.000Z")
    # turned off by its user meanwhile: "inactive", no healthy record; turned on again later
    health.on_webhook_enabled(W)
    again = health.on_gone(W, T + 5, CREATED)
    assert again is not None and again.state == "disabled"


# -- odd status records (the schema first, then the verdict) -------------------------------
@pytest.mark.parametrize(
    "record",
    [
        disabled(webhook_updated_at=123),
        disabled(webhook_created_at=None),
        disabled(failing_since="x"),
        disabled(failing_since=True),
        disabled(reason=7),
        {k: v for k, v in disabled().items() if k != "updated_at"},
        disabled(state="DISABLED"),
    ],
)
def test_schema_refuses(record: dict[str, Any]) -> None:
    assert not is_valid("schemas/status.json", record)


def test_huge_reason_is_valid_and_written_as_failing() -> None:
    record = disabled(reason="x" * 500_000)
    assert is_valid("schemas/status.json", record)
    assert disable_verdict(webhook(), record) == "written"


def test_a_record_without_a_version_leaves_on_a_webhook_reenabled_after_it() -> None:
    """A disabled record of before 2026-12-04 (no webhook_created_at/webhook_updated_at),
    decided at 10:00:01; the webhook was turned on again by its user at 11:00 (a PATCH,
    updated_at 11:00). The owner judges it at its first start after the upgrade."""
    legacy = {
        k: v for k, v in disabled().items() if k not in ("webhook_created_at", "webhook_updated_at")
    }
    assert is_valid("schemas/status.json", legacy)
    reenabled = webhook(version="2024-01-15T11:00:00.000Z")
    # Changed after the decision: left on, its health afresh (it was disabled again).
    assert disable_verdict(reenabled, legacy) == "changed"
