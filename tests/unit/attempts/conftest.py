"""The delivery log under test in each store: in memory and in RocksDB."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.attempts.log import WebhookLog
from tests.support.attempt_logs import DiskLog, LogFactory


@pytest.fixture(params=["memory", "rocksdb"])
def make_log(request: pytest.FixtureRequest) -> Iterator[LogFactory]:
    """Makes a webhook's log (``max_attempts``, ``max_age``) in the store of the parameter."""
    opened: list[DiskLog] = []
    with tempfile.TemporaryDirectory() as directory:

        def make(*, max_attempts: int, max_age: float) -> Any:
            if request.param == "memory":
                return WebhookLog(max_attempts=max_attempts, max_age=max_age)
            log = DiskLog(
                Path(directory) / str(len(opened)), max_attempts=max_attempts, max_age=max_age
            )
            opened.append(log)
            return log

        yield make
        for log in opened:
            log.partition.close()
