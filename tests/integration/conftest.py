"""Fixtures for integration tests: one embedded broker per session, fresh topics per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from bridge.admin.topics import apply_topics
from bridge.config import Settings
from bridge.worker.embedded import GROUP_TIMEOUTS, EmbeddedBroker, free_port
from tests.support.api import write_token_file
from tests.support.processes import WorkerProcess
from tests.support.receivers import Receiver
from tests.support.workers import InProcessWorker


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(free_port(), log_path=str(log)) as running:
        yield running


def settings_factory(broker: EmbeddedBroker, data_dir: Path) -> Callable[..., Settings]:
    """Settings with their own topics and group (one fresh suffix per factory) on ``broker``;
    each call applies its ``changes`` to them."""
    suffix = uuid.uuid4().hex[:10]

    def make(**changes: object) -> Settings:
        base = Settings.load(
            env={},
            overrides={
                "kafka_bootstrap_servers": broker.bootstrap_servers,
                "group_id": f"t-{suffix}",
                "events_topic": f"t-{suffix}.events",
                "subscriptions_topic": f"t-{suffix}.webhooks",
                "deadletter_topic": f"t-{suffix}.deadletter",
                "attempts_topic": f"t-{suffix}.attempts",
                "status_topic": f"t-{suffix}.status",
                "recoveries_topic": f"t-{suffix}.recoveries",
                "retry_topic_prefix": f"t-{suffix}.retry",
                "web_port": free_port(),
                "data_dir": str(data_dir),
                "log_level": "INFO",
                # Short retries so that schedules finish within a test; tests of the circuit
                # breaker set its threshold themselves (all paths of one receiver are one
                # endpoint).
                "retry_schedule": (0.3, 0.6),
                "retry_jitter": 0.0,
                "breaker_threshold": 1000,
                "drain_timeout": 5.0,
                # The tests' receivers are on this machine: allow loopback over plain http,
                # as the embedded mode does. (test_security.py turns the guard's allow-list off.)
                "allow_http": True,
                "allow_networks": ("127.0.0.0/8",),
                # The tests poll /v1 as fast as it answers (poll's interval 0): unlimited, but
                # in the tests of the limit itself (test_api.py, test_api_routing_edges.py).
                "api_rate_limit": 0.0,
                # Group timeouts of `run` on the embedded broker: a 1 s first join, and a
                # worker that stopped leaves its group's rebalances after 2 s, not 6 (a restart
                # into the same group took ~11 s instead of ~4).
                **GROUP_TIMEOUTS,
            },
        )
        return base.replace(**changes) if changes else base

    return make


@pytest.fixture
def make_settings(broker: EmbeddedBroker, tmp_path: Path) -> Callable[..., Settings]:
    """Settings with this test's own topics and group, on the session's broker."""
    return settings_factory(broker, tmp_path / "data")


@pytest.fixture(scope="module")
def make_module_settings(
    broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Settings]:
    """:func:`make_settings` shared by the tests of one module (one worker for all of them)."""
    return settings_factory(broker, tmp_path_factory.mktemp("module") / "data")


@pytest.fixture
async def settings(make_settings: Callable[..., Settings]) -> Settings:
    current = make_settings()
    await apply_topics(current)
    return current


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    running = await Receiver().start()
    yield running
    await running.stop()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[[Settings], WorkerProcess]]:
    """Start worker processes; every one still running is killed (SIGKILL) at teardown: the
    tests of a graceful stop stop their workers themselves, and each test has its own consumer
    group, so nothing waits for a killed member (a bounded SIGTERM took ~5 s per worker)."""
    started: list[WorkerProcess] = []

    def start(worker_settings: Settings) -> WorkerProcess:
        worker = WorkerProcess(worker_settings, tmp_path / f"worker-{len(started)}.log")
        started.append(worker.start())
        return worker

    yield start
    for worker in started:
        worker.kill()


@pytest.fixture
async def in_process_workers() -> AsyncIterator[Callable[[Settings], InProcessWorker]]:
    """Start workers inside the test's event loop (where no crash, signal, log output or command
    line is tested); every one is stopped, within a bounded time, at teardown."""
    started: list[InProcessWorker] = []

    def start(worker_settings: Settings) -> InProcessWorker:
        worker = InProcessWorker(worker_settings)
        started.append(worker.start())
        return worker

    yield start
    failures: list[BaseException] = []
    for worker in reversed(started):
        try:
            await worker.stop()
        except Exception as exc:  # stop the others, then fail
            failures.append(exc)
    if failures:
        raise failures[0]


@pytest.fixture
async def log_settings(make_settings: Callable[..., Settings], tmp_path: Path) -> Settings:
    """This test's settings for workers that serve /v1 with a delivery log (token
    :data:`tests.support.api.LOG_TOKEN`), its topics created."""
    tokens = write_token_file(tmp_path / "tokens.json")
    current = make_settings(delivery_log=True, api_tokens=str(tokens))
    await apply_topics(current)
    return current
