"""Delivery logs for tests: the on-disk log added to as the in-memory one is."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridge.attempts.log import AttemptLog, LogQuery, Page
from bridge.attempts.record import Attempt
from bridge.attempts.rocks import PartitionLog

__all__ = ["DiskLog", "LogFactory", "attempt_bytes"]


def attempt_bytes(attempt: Attempt) -> bytes:
    """The record of ``attempt`` as the deliverer writes it."""
    return json.dumps({k: v for k, v in attempt.as_dict().items() if k != "status_class"}).encode()


class DiskLog:
    """One webhook's log in a :class:`PartitionLog`, added to as :class:`WebhookLog` is."""

    def __init__(self, path: Path, *, max_attempts: int, max_age: float) -> None:
        self.partition = PartitionLog(path, max_attempts=max_attempts, max_age=max_age, now=0.0)
        self.offset = 0
        self.webhook_id = "wh"

    def _log(self) -> AttemptLog:
        return self.partition.log(self.webhook_id)

    def add(self, attempt: Attempt, now: float) -> bool:
        self.webhook_id = attempt.webhook_id
        self.offset += 1
        return self.partition.add(attempt, attempt_bytes(attempt), self.offset, now)

    def page(
        self, query: LogQuery, *, now: float, limit: int = 50, cursor: str | None = None
    ) -> Page:
        return self._log().page(query, now=now, limit=limit, cursor=cursor)

    def delivery(self, delivery_id: str) -> list[Attempt]:
        return self._log().delivery(delivery_id)

    def attempts(self) -> list[Attempt]:
        return self._log().attempts()

    def __len__(self) -> int:
        return len(self._log())


LogFactory = Callable[..., Any]
