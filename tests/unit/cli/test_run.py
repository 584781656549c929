"""``webhook-bridge run``: the group timeouts a worker gets on the embedded broker or another."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.admin import topics
from bridge.cli import commands as cli
from bridge.config import Settings
from bridge.worker.embedded import GROUP_TIMEOUTS


class _Stop(Exception):
    """Raised where the worker would start: the test has what it came for."""


class _FakeBroker:
    def __init__(self, port: int) -> None:
        self.bootstrap_servers = f"127.0.0.1:{port}"
        self.stopped = False

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.stopped = True


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Settings]]:
    """Settings that ``run`` would start its worker with (the broker and topics faked)."""
    seen: list[Settings] = []

    async def apply_topics(settings: Settings) -> Any:
        seen.append(settings)
        raise _Stop

    loops: list[asyncio.AbstractEventLoop] = []
    new_loop = cli._new_loop

    def recorded_loop(kind: str) -> asyncio.AbstractEventLoop:
        loops.append(new_loop(kind))
        return loops[-1]

    monkeypatch.setattr(cli, "_new_loop", recorded_loop)
    monkeypatch.setattr(cli, "EmbeddedBroker", _FakeBroker)
    monkeypatch.setattr(topics, "apply_topics", apply_topics)
    for name in ("BRIDGE_KAFKA_BOOTSTRAP_SERVERS", "BRIDGE_KAFKA_SESSION_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    thresholds = gc.get_threshold()
    yield seen
    gc.set_threshold(*thresholds)
    for loop in loops:
        loop.close()
    asyncio.set_event_loop(None)
    asyncio.set_event_loop_policy(None)


def _run(*flags: str) -> None:
    with pytest.raises(_Stop):
        cli.main(["run", "--event-loop", "asyncio", *flags])


def test_on_the_embedded_broker_the_group_timeouts_are_short(started: list[Settings]) -> None:
    _run()
    (settings,) = started
    assert settings.kafka_bootstrap_servers.startswith("127.0.0.1:")
    assert settings.kafka_session_timeout == GROUP_TIMEOUTS["kafka_session_timeout"]
    assert settings.kafka_rebalance_timeout == GROUP_TIMEOUTS["kafka_rebalance_timeout"]


def test_on_the_embedded_broker_configured_group_timeouts_win(
    started: list[Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRIDGE_KAFKA_SESSION_TIMEOUT", "5")
    _run("--kafka-rebalance-timeout", "8")
    (settings,) = started
    assert (settings.kafka_session_timeout, settings.kafka_rebalance_timeout) == (5.0, 8.0)


def test_on_a_configured_broker_the_defaults_stay(started: list[Settings]) -> None:
    _run("--bootstrap-servers", "127.0.0.1:1")
    (settings,) = started
    defaults = Settings.load(env={})
    assert settings.kafka_session_timeout == defaults.kafka_session_timeout == 6.0
    assert settings.kafka_rebalance_timeout == defaults.kafka_rebalance_timeout


def test_a_session_shorter_than_apache_kafka_accepts_is_warned_of(
    started: list[Settings], caplog: pytest.LogCaptureFixture
) -> None:
    _run("--bootstrap-servers", "127.0.0.1:1", "--kafka-session-timeout", "6")
    assert "session" not in caplog.text
    _run("--bootstrap-servers", "127.0.0.1:1", "--kafka-session-timeout", "2.5")
    assert "kafka_session_timeout 2.5s is below 6s" in caplog.text
    caplog.clear()
    _run("--kafka-session-timeout", "2.5")  # the embedded broker takes it
    assert "session" not in caplog.text
