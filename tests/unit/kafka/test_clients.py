"""Kafka client arguments built from settings (security passes through to real clusters), and
clients started and stopped to the end whatever interrupts them."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import faust
import pytest
from aiokafka.errors import KafkaConnectionError

from bridge.admin import recovery
from bridge.config import Settings
from bridge.errors import ConfigError
from bridge.kafka import clients
from bridge.kafka.clients import (
    address_policy,
    client_kwargs,
    faust_broker_kwargs,
    keyring,
    started,
    stopped,
)
from tests.support.fakes import AllTopicsBut
from tests.unit.admin.test_recovery import request


def test_plaintext() -> None:
    settings = Settings.load(env={}, overrides={"kafka_bootstrap_servers": "k1:9092,k2:9092"})
    assert client_kwargs(settings) == {
        "bootstrap_servers": "k1:9092,k2:9092",
        "security_protocol": "PLAINTEXT",
    }
    assert faust_broker_kwargs(settings) == {"broker": "kafka://k1:9092;kafka://k2:9092"}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_passes_credentials_and_tls(mechanism: str) -> None:
    settings = Settings.load(
        env={
            "BRIDGE_KAFKA_BOOTSTRAP_SERVERS": "k1:9093",
            "BRIDGE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "BRIDGE_KAFKA_SASL_MECHANISM": mechanism,
            "BRIDGE_KAFKA_SASL_USERNAME": "bridge",
            "BRIDGE_KAFKA_SASL_PASSWORD": "pw-123",
        }
    )
    kwargs = client_kwargs(settings)
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == mechanism
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("bridge", "pw-123")
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    assert kwargs["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    credentials = faust_broker_kwargs(settings)["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.mechanism.value == mechanism
    assert credentials.ssl_context is not None
    assert "pw-123" not in repr(credentials)


def test_ssl_with_a_missing_ca_file_fails_clearly(tmp_path) -> None:
    settings = Settings.load(
        env={
            "BRIDGE_KAFKA_BOOTSTRAP_SERVERS": "k1:9093",
            "BRIDGE_KAFKA_SECURITY_PROTOCOL": "SSL",
            "BRIDGE_KAFKA_SSL_CAFILE": str(tmp_path / "missing.pem"),
        }
    )
    with pytest.raises(OSError):
        client_kwargs(settings)


def test_no_bootstrap_servers_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        client_kwargs(Settings.load(env={}))


def test_address_policy_and_keyring_follow_the_settings() -> None:
    settings = Settings.load(env={}, overrides={"allow_networks": ("10.1.0.0/16",)})
    policy = address_policy(settings)
    import ipaddress

    assert policy.check(ipaddress.ip_address("10.1.2.3")) is None
    assert policy.check(ipaddress.ip_address("10.2.0.1")) == "private"
    assert keyring(settings) is None
    off = address_policy(settings.replace(ssrf_guard=False))
    assert off.check(ipaddress.ip_address("127.0.0.1")) is None


class Client:
    """A Kafka client whose start fails, is cancelled or succeeds; its stop takes a moment."""

    def __init__(self, start: BaseException | None = None) -> None:
        self.failure = start
        self.calls: list[str] = []

    async def start(self) -> None:
        self.calls.append("start")
        if self.failure is not None:
            raise self.failure

    async def stop(self) -> None:
        self.calls.append("stop")
        await asyncio.sleep(0.01)
        self.calls.append("stopped")

    @property
    def client(self) -> Client:  # (a producer's: the brokers' metadata, every topic on them)
        return self

    async def fetch_all_metadata(self) -> Client:
        return self

    def topics(self) -> AllTopicsBut:
        return AllTopicsBut(set())


@pytest.mark.parametrize(
    "failure", [KafkaConnectionError("no broker"), asyncio.CancelledError()], ids=repr
)
async def test_a_client_whose_start_fails_or_is_cancelled_is_stopped(
    failure: BaseException,
) -> None:
    client = Client(failure)
    with pytest.raises(type(failure)):
        await started(client)
    assert client.calls == ["start", "stop", "stopped"]
    assert await started(ok := Client()) is ok and ok.calls == ["start"]


class SlowStart(Client):
    """A client whose start waits for :attr:`go` (as aiokafka's waits for the broker)."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()

    async def start(self) -> None:
        self.calls.append("start")
        try:
            await self.go.wait()
        except asyncio.CancelledError:
            self.calls.append("start cancelled")
            raise
        self.calls.append("started")


async def test_a_start_whose_task_is_cancelled_ends_before_the_client_is_stopped() -> None:
    """aiokafka's bootstrap cut off mid-request leaves its connection open: the start is let
    end (the broker answers), then the client is stopped, then the cancellation goes on."""
    client = SlowStart()
    task = asyncio.ensure_future(started(client))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0.01)
    assert client.calls == ["start"] and not task.done()  # not stopped under the start
    client.go.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.calls == ["start", "started", "stop", "stopped"]


async def test_a_start_that_outlasts_the_grace_is_cancelled_then_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(clients, "START_GRACE", 0.02)
    client = SlowStart()  # never let go: a broker that does not answer
    task = asyncio.ensure_future(started(client))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert client.calls == ["start", "start cancelled", "stop", "stopped"]


async def test_a_start_cancelled_twice_stops_waiting_and_stops_the_client() -> None:
    """A second cancellation (a worker's stop giving up) ends the wait for the start at once."""
    client = SlowStart()
    task = asyncio.ensure_future(started(client))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert client.calls == ["start", "start cancelled", "stop", "stopped"]


async def test_a_stop_goes_on_to_its_end_when_its_task_is_cancelled() -> None:
    client = Client()
    task = asyncio.ensure_future(stopped(client))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.calls == ["stop", "stopped"]


async def test_a_recovery_stops_its_producer_when_its_consumer_does_not_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A recovery released as it starts (its worker stops): the producer it started is stopped,
    not left to warn when it is collected."""
    made: list[Client] = []

    def client(failure: BaseException | None) -> Any:
        def make(*args: Any, **kwargs: Any) -> Client:
            made.append(Client(failure))
            return made[-1]

        return make

    monkeypatch.setattr(recovery, "AIOKafkaProducer", client(None))
    monkeypatch.setattr(recovery, "new_consumer", client(asyncio.CancelledError()))
    settings = Settings.load(env={}, overrides={"kafka_bootstrap_servers": "127.0.0.1:1"})
    with pytest.raises(asyncio.CancelledError):
        await recovery.recover(settings, recovery.Operation(request()))
    assert [c.calls for c in made] == [["start", "stop", "stopped"]] * 2
