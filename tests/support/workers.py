"""Workers run inside the test's event loop (:meth:`bridge.worker.app.Bridge.start`), for tests
where no crash, signal, log output or command line is involved: they start without a new Python
process and stop in a bounded time. They answer as :class:`tests.support.processes.WorkerProcess`
does (``wait_ready``, ``metrics``, ``wait_metric``, ``stop``); tests that kill a worker, send it a
signal or read what it prints keep child processes."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest

from bridge.config import Settings
from bridge.worker.app import Bridge
from tests.support.processes import MetricsWaiting, parse_metrics
from tests.support.waiting import eventually


class InProcessWorker(MetricsWaiting):
    """A :class:`Bridge` started in the running loop; its web server listens as a child's does."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bridge = Bridge(settings)
        self._starting: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.web_port}"

    def start(self) -> InProcessWorker:
        self._starting = asyncio.ensure_future(self.bridge.start())
        return self

    @property
    def running(self) -> bool:
        """Started, and neither stopped nor crashed."""
        return (
            self._starting is not None
            and self._starting.done()
            and self._starting.exception() is None
            and not self.bridge.app.should_stop
        )

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait for the start (it returns once the tables are recovered), then for readiness."""
        assert self._starting is not None, "not started"
        await asyncio.wait_for(asyncio.shield(self._starting), timeout)
        await eventually(
            lambda: self.bridge.ready()[0],
            timeout=timeout,
            interval=0.05,
            message=lambda: f"worker not ready: {self.bridge.ready()[1]}",
        )

    async def metrics(self) -> dict[str, float]:
        """What the worker's /metrics serves, read from its registry."""
        return parse_metrics(generate_latest(self.bridge.registry).decode())

    async def stop(self, grace: float = 30.0) -> None:
        """Stop the worker (in-flight deliveries get ``drain_timeout``); fail when it takes longer
        than ``grace`` seconds, rather than leave a half-stopped worker behind."""
        if self._starting is None:
            return
        await asyncio.wait_for(self.bridge.stop(), grace)
        try:
            await asyncio.wait_for(self._starting, grace)
        finally:
            self._starting = None

    def tail(self, lines: int = 60) -> str:
        return "(an in-process worker: its logs are in the test's captured log output)"


#: A secret key (32 bytes, base64) for bridges that never reach a broker.
OFFLINE_KEY = "k1:" + base64.b64encode(bytes(range(32))).decode()


def offline_bridge(data_dir: Path, **overrides: Any) -> Bridge:
    """A :class:`Bridge` that is never started (its broker is never contacted): its wiring,
    tables and routes driven by hand, with ``overrides`` on top of the defaults."""
    settings = Settings.load(
        env={},
        overrides={
            "kafka_bootstrap_servers": "127.0.0.1:1",  # never contacted
            "data_dir": str(data_dir),
            "secret_keys": OFFLINE_KEY,
            **overrides,
        },
    )
    return Bridge(settings)
