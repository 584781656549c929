"""Every recovery's newest record, as the worker's recoveries table applies them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from bridge.contract import jsoncanon
from bridge.contract.events import parse_time
from bridge.errors import InvalidRecord
from bridge.subscriptions.freshness import TableFreshness

__all__ = [
    "DEFAULT_STALE_AFTER",
    "RecoveryView",
    "ended",
    "live_runner",
    "recovery_record",
    "updated_at",
]

#: Seconds without a record after which a running recovery's runner is taken for gone.
DEFAULT_STALE_AFTER = 15.0


def updated_at(record: dict[str, Any]) -> float | None:
    try:
        return parse_time(record.get("updated_at")).timestamp()
    except ValueError:
        return None


def recovery_record(key: bytes, value: bytes) -> dict[str, Any] | None:
    """A record (not a tombstone) of the recoveries topic as its key's recovery, or ``None``
    when it is not one (not JSON, not an object, another id, a key that is not UTF-8): the key's
    newest record then stands. The view and :func:`bridge.admin.recovery.recorded_recoveries`
    read it alike."""
    try:
        operation_id = key.decode("utf-8")
        record = jsoncanon.loads(value)
    except (InvalidRecord, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("id") == operation_id else None


def live_runner(record: dict[str, Any], now: float, stale_after: float) -> str | None:
    """The URL of the worker running the recovery of ``record``, if it recorded it within
    ``stale_after`` seconds of ``now``, either way: a record stamped further ahead (the
    runner's clock ahead of this one's) was taken as live until then (until 2026-12-06: a
    week ahead, a week of cancels answered 503, nobody taking it over)."""
    if record.get("state") != "running":
        return None
    runner = record.get("runner")
    updated = updated_at(record)
    if not isinstance(runner, str) or updated is None or abs(now - updated) > stale_after:
        return None
    return runner


def ended(record: dict[str, Any] | None) -> bool:
    """Whether ``record`` is a recovery's end (``done``, ``cancelled``, ``failed``): final."""
    return record is not None and record.get("state") in ("done", "cancelled", "failed")


class RecoveryView:
    """The newest record of each recovery, fed by the recoveries table (:meth:`apply`)."""

    def __init__(self, freshness: TableFreshness) -> None:
        self.freshness = freshness
        self._records: dict[str, dict[str, Any]] = {}
        #: The ids of those recorded ``running`` (looked through every few seconds, where the
        #: ended ones, kept for ``recovery_retention``, may be many more).
        self._running: set[str] = set()
        #: The ids of each webhook's recoveries (listings of one webhook's).
        self._by_webhook: dict[str, set[str]] = {}
        self.invalid = 0

    def __len__(self) -> int:
        return len(self._records)

    def apply(self, partition: int, offset: int, key: bytes | None, value: bytes | None) -> None:
        """One record of the topic; never raises (an invalid one is counted and skipped)."""
        try:
            if key is None:
                self.invalid += 1
                return
            operation_id = key.decode("utf-8")
            if value is None:
                self._forget(operation_id)
                return
            record = recovery_record(key, value)
            if record is None:
                self.invalid += 1
                return
            if record.get("state") == "running" and ended(self._records.get(operation_id)):
                # An end is final: a runner's record after it is one that had not seen it yet
                # (a heartbeat, or a take-over resuming it as another worker recorded it
                # cancelled), and that runner stops when its next heartbeat reads the end
                # (until 2026-12-06 the recovery ran on, shown running again).
                return
            self._forget(operation_id)
            self._records[operation_id] = record
            webhook_id = record.get("webhook_id")
            if isinstance(webhook_id, str):
                self._by_webhook.setdefault(webhook_id, set()).add(operation_id)
            if record.get("state") == "running":
                self._running.add(operation_id)
            else:
                self._running.discard(operation_id)
        except UnicodeDecodeError:  # a key that is not UTF-8
            self.invalid += 1
        finally:
            self.freshness.applied(partition, offset)

    def _forget(self, operation_id: str) -> None:
        old = self._records.pop(operation_id, None)
        self._running.discard(operation_id)
        webhook_id = None if old is None else old.get("webhook_id")
        if isinstance(webhook_id, str):
            ids = self._by_webhook.get(webhook_id)
            if ids is not None:
                ids.discard(operation_id)
                if not ids:
                    del self._by_webhook[webhook_id]

    def get(self, operation_id: str) -> dict[str, Any] | None:
        return self._records.get(operation_id)

    def of_webhook(self, webhook_id: str) -> list[dict[str, Any]]:
        """The newest records of one webhook's recoveries (in no order)."""
        return [self._records[i] for i in self._by_webhook.get(webhook_id, ())]

    def running(self) -> Iterator[dict[str, Any]]:
        """The records of recoveries recorded ``running``."""
        return (self._records[i] for i in list(self._running) if i in self._records)

    def ended(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """The ids and records of recoveries recorded as anything but ``running`` (``done``,
        ``cancelled``, ``failed``, or a state no worker writes)."""
        return (
            (operation_id, record)
            for operation_id, record in list(self._records.items())
            if operation_id not in self._running
        )

    def live_runner(self, operation_id: str, now: float, stale_after: float) -> str | None:
        """The URL of the worker running a recovery, if it recorded it within ``stale_after``
        seconds of ``now``."""
        record = self._records.get(operation_id)
        return None if record is None else live_runner(record, now, stale_after)
