"""Kafka client arguments built from settings (security passes through to real clusters)."""

from __future__ import annotations

import ssl

import faust
import pytest

from bridge.config import Settings
from bridge.errors import ConfigError
from bridge.kafka.clients import address_policy, client_kwargs, faust_broker_kwargs, keyring


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
