"""bridge.config: defaults, parsing every environment variable, overrides, validation, redaction."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bridge.config import (
    DEFAULT_HTTP_TIMEOUT,
    MAX_ATTEMPT_RESPONSE_PREFIX,
    RENAMED,
    Section,
    Settings,
    add_section_flags,
    add_setting_flags,
    overrides_from_args,
    parse_bool,
    parse_list,
    parse_time,
    settings_of,
)
from bridge.contract.resources import load_json
from bridge.delivery.retry_policy import MAX_RETRY_DELAY
from bridge.errors import BridgeError, ConfigError
from bridge.worker.embedded import GROUP_TIMEOUTS

SASL = {
    "BRIDGE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "BRIDGE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "BRIDGE_KAFKA_SASL_USERNAME": "bridge",
    "BRIDGE_KAFKA_SASL_PASSWORD": "pa55-w0rd-XYZ",
}

# ------------------------------------------------------------------------------- defaults

DEFAULTS: dict[str, Any] = {
    "kafka_bootstrap_servers": None,
    "kafka_security_protocol": "PLAINTEXT",
    "kafka_sasl_mechanism": None,
    "kafka_sasl_username": None,
    "kafka_sasl_password": None,
    "kafka_ssl_cafile": None,
    "kafka_ssl_certfile": None,
    "kafka_ssl_keyfile": None,
    "group_id": "webhook-bridge",
    "events_topic": "postion.events",
    "extra_source_topics": (),
    "subscriptions_topic": "postion.webhooks",
    "deadletter_topic": "postion.webhooks.deadletter",
    "topic_replication_factor": 1,
    "http_timeout": 30.0,
    "success_any_2xx": False,
    "http_client": "http1",
    "event_loop": "uvloop",
    "max_in_flight": 256,
    "max_body_bytes": 100 * 1024,
    "attempt_response_prefix_bytes": 0,
    "subscription_sync_timeout": 5.0,
    # Svix's schedule: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
    "retry_schedule": (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0),
    "retry_jitter": 0.1,
    "retry_after_cap": 3600.0,
    "retry_topic_prefix": "postion.webhooks.retry",
    "attempts_topic": "postion.webhooks.attempts",
    "status_topic": "postion.webhooks.status",
    "recoveries_topic": "postion.webhooks.recoveries",
    "endpoint_max_in_flight": 16,
    "endpoint_max_queued": 256,
    "owner_max_in_flight": 64,
    "slow_endpoint_share": 0.5,
    "breaker_threshold": 5,
    "breaker_cooldown": 30.0,
    "disable_after": 5 * 86400.0,
    "delivery_log_max_attempts": 1000,
    "delivery_log_max_age": 7 * 86400.0,
    "delivery_log": False,
    "delivery_log_store": "memory",
    "role": "all",
    "api_tokens": None,
    "api_max_recoveries": 8,
    "api_rate_limit": 100.0,
    "api_max_webhooks": 100,
    "api_recovery_rate": 500.0,
    "api_scan_share": 0.25,
    "recovery_retention": 7 * 86400.0,
    "advertised_url": None,
    "api_url": None,
    "api_token": None,
    "drain_timeout": 20.0,
    "ssrf_guard": True,
    "allow_networks": (),
    "allow_http": None,
    "ca_bundle": None,
    "secret_keys": None,
    "log_format": "auto",
    "web_host": "127.0.0.1",
    "web_port": 6066,
    "data_dir": None,
    "log_level": "INFO",
    "embedded_port": 9092,
    "kafka_rebalance_timeout": 4.0,
    "kafka_fetch_max_wait": 0.05,
    "kafka_output_linger": 0.005,
    "kafka_session_timeout": 6.0,
}


def test_defaults_cover_every_setting() -> None:
    assert set(DEFAULTS) == set(Settings.specs())


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_default(name: str) -> None:
    assert getattr(Settings.load(env={}), name) == DEFAULTS[name]


def test_default_http_timeout_is_the_documented_30_seconds() -> None:
    assert DEFAULT_HTTP_TIMEOUT == 30.0
    assert Settings().http_timeout == 30.0


def test_defaults_mean_embedded_broker_and_only_200_is_success() -> None:
    settings = Settings.load(env={})
    assert settings.embedded is True
    assert settings.success_any_2xx is False
    assert settings.source_topics == ("postion.events",)


def test_load_without_env_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_GROUP_ID", "from-process-env")
    assert Settings.load().group_id == "from-process-env"


def test_explicit_env_ignores_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_GROUP_ID", "from-process-env")
    assert Settings.load(env={}).group_id == "webhook-bridge"


def test_unrelated_env_vars_are_ignored() -> None:
    assert Settings.load(env={"BRIDGE_NOT_A_SETTING": "x", "HOME": "/root"}) == Settings()


def test_a_bridge_variable_naming_no_setting_is_named_in_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Ignored in silence until 2026-12-06, a misspelt or renamed variable left the default in
    force. The value is never logged."""
    env = {
        "BRIDGE_HTTP_TIMOUT": "3-secret-value",
        "BRIDGE_RECOVERY_SHARE": "0.3",
        "BRIDGE_NOT_A_SETTING": "x",
        "BRIDGE_GROUP_ID": "g",
        "HOME": "/root",
    }
    with caplog.at_level(logging.WARNING, logger="bridge.config"):
        assert Settings.load(env=env) == Settings(group_id="g")
    assert [r.getMessage() for r in caplog.records] == [
        "environment variable BRIDGE_HTTP_TIMOUT names no setting and is ignored"
        " (did you mean BRIDGE_HTTP_TIMEOUT?)",
        "environment variable BRIDGE_NOT_A_SETTING names no setting and is ignored",
        "environment variable BRIDGE_RECOVERY_SHARE names no setting and is ignored"
        " (did you mean BRIDGE_API_SCAN_SHARE?)",
    ]
    assert "secret" not in caplog.text
    assert set(RENAMED.values()) <= {spec.env for spec in Settings.specs().values()}


# ----------------------------------------------------------------- every variable parsed

# name -> (raw environment text, parsed value). Values differ from the defaults.
PARSED: dict[str, tuple[str, Any]] = {
    "kafka_bootstrap_servers": ("k1:9092,k2:9092", "k1:9092,k2:9092"),
    "kafka_security_protocol": ("ssl", "SSL"),
    "kafka_sasl_mechanism": (" scram-sha-256 ", "SCRAM-SHA-256"),
    "kafka_sasl_username": ("alice", "alice"),
    "kafka_sasl_password": ("s3cret", "s3cret"),
    "kafka_ssl_cafile": ("/etc/ca.pem", "/etc/ca.pem"),
    "kafka_ssl_certfile": ("/etc/cert.pem", "/etc/cert.pem"),
    "kafka_ssl_keyfile": ("/etc/key.pem", "/etc/key.pem"),
    "group_id": ("bridge-test-1", "bridge-test-1"),
    "events_topic": ("ev", "ev"),
    "extra_source_topics": (" a , b ,,c,", ("a", "b", "c")),
    "subscriptions_topic": ("subs", "subs"),
    "deadletter_topic": ("dlq", "dlq"),
    "topic_replication_factor": ("3", 3),
    "http_timeout": ("2.5", 2.5),
    "success_any_2xx": ("TRUE", True),
    "http_client": ("HTTPX", "httpx"),
    "event_loop": ("AsyncIO", "asyncio"),
    "max_in_flight": ("8", 8),
    "max_body_bytes": ("4096", 4096),
    "attempt_response_prefix_bytes": ("256", 256),
    "subscription_sync_timeout": ("0.25", 0.25),
    "retry_schedule": ("1s, 2m,,3h ", (1.0, 120.0, 10800.0)),
    "retry_jitter": ("0.25", 0.25),
    "retry_after_cap": ("10m", 600.0),
    "retry_topic_prefix": ("t1.retry", "t1.retry"),
    "attempts_topic": ("t1.attempts", "t1.attempts"),
    "status_topic": ("t1.status", "t1.status"),
    "recoveries_topic": ("t1.recoveries", "t1.recoveries"),
    "endpoint_max_in_flight": ("4", 4),
    "endpoint_max_queued": ("10", 10),
    "owner_max_in_flight": ("0", 0),
    "slow_endpoint_share": ("1", 1.0),
    "breaker_threshold": ("3", 3),
    "breaker_cooldown": ("500ms", 0.5),
    "disable_after": ("1d", 86400.0),
    "delivery_log_max_attempts": ("50", 50),
    "delivery_log_max_age": ("14d", 14 * 86400.0),
    "delivery_log": ("on", True),
    "delivery_log_store": ("RocksDB", "rocksdb"),
    "role": ("Deliver", "deliver"),
    "api_max_recoveries": ("2", 2),
    "api_rate_limit": ("0", 0.0),
    "api_max_webhooks": ("0", 0),
    "api_recovery_rate": ("50", 50.0),
    "api_scan_share": ("1", 1.0),
    "recovery_retention": ("1h", 3600.0),
    "api_tokens": ("/etc/bridge/tokens.yaml", "/etc/bridge/tokens.yaml"),
    "advertised_url": ("http://10.0.0.7:8080", "http://10.0.0.7:8080"),
    "api_url": ("http://10.0.0.7:6066", "http://10.0.0.7:6066"),
    "api_token": ("wbt_x", "wbt_x"),
    "drain_timeout": ("5", 5.0),
    "ssrf_guard": ("off", False),
    "allow_networks": ("10.1.0.0/16, fd00::/8", ("10.1.0.0/16", "fd00::/8")),
    "allow_http": ("yes", True),
    "ca_bundle": ("/etc/ca-bundle.pem", "/etc/ca-bundle.pem"),
    "secret_keys": ("k1:AAAA", "k1:AAAA"),
    "log_format": ("TEXT", "text"),
    "web_host": ("0.0.0.0", "0.0.0.0"),
    "web_port": ("8080", 8080),
    "data_dir": ("/var/lib/bridge", "/var/lib/bridge"),
    "log_level": ("debug", "DEBUG"),
    "embedded_port": ("19092", 19092),
    "kafka_rebalance_timeout": ("2", 2.0),
    "kafka_fetch_max_wait": ("200ms", 0.2),
    "kafka_output_linger": ("2ms", 0.002),
    "kafka_session_timeout": ("10", 10.0),
}


#: Every setting that is a duration: since 2026-12-07 each takes a unit (the four timeouts
#: took plain seconds only, and ``30s`` was refused with Python's own float error).
TIMEOUTS = ("http_timeout", "subscription_sync_timeout", "kafka_rebalance_timeout",
            "kafka_session_timeout")  # fmt: skip


@pytest.mark.parametrize("name", TIMEOUTS)
def test_every_timeout_takes_a_unit_and_refuses_nothing_or_no_duration(name: str) -> None:
    env_name = Settings.specs()[name].env
    assert getattr(Settings.load(env={env_name: "2500ms"}), name) == 2.5
    assert getattr(Settings.load(env={env_name: "5s"}), name) == 5.0
    for refused in ("0", "0s", "inf", "nan", "-1", "1e3", "soon"):
        with pytest.raises(ConfigError):
            Settings.load(env={env_name: refused})


def test_parse_table_covers_every_setting() -> None:
    assert set(PARSED) == set(Settings.specs())


@pytest.mark.parametrize("name", sorted(PARSED))
def test_env_var_is_parsed(name: str) -> None:
    raw, expected = PARSED[name]
    env_name = Settings.specs()[name].env
    # The delivery log needs the API's token file.
    needs = {"BRIDGE_API_TOKENS": "t.yaml"} if name == "delivery_log" else {}
    settings = Settings.load(env={**needs, env_name: raw})
    assert getattr(settings, name) == expected
    assert expected != DEFAULTS[name]


def test_spec_names_are_consistent_and_unique() -> None:
    specs = Settings.specs()
    envs = [s.env for s in specs.values()]
    flags = [s.flag for s in specs.values()]
    assert len(set(envs)) == len(envs)
    assert len(set(flags)) == len(flags)
    for name, spec in specs.items():
        assert spec.env == "BRIDGE_" + name.upper(), name
        assert spec.flag.startswith("--"), name
        assert spec.help, name
        assert isinstance(spec.section, Section), name
    assert [n for n, s in specs.items() if s.secret] == [
        "kafka_sasl_password",
        "api_token",
        "secret_keys",
    ]


@pytest.mark.parametrize("text", ["1", "true", "True", "YES", "on", " On "])
def test_parse_bool_true(text: str) -> None:
    assert parse_bool(text) is True


@pytest.mark.parametrize("text", ["0", "false", "FALSE", "no", "off", "", "  "])
def test_parse_bool_false(text: str) -> None:
    assert parse_bool(text) is False


@pytest.mark.parametrize("text", ["2", "y", "n", "enabled", "truee"])
def test_parse_bool_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="boolean"):
        parse_bool(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", ()), (",", ()), ("a", ("a",)), ("a,b", ("a", "b")), (" a ,, b , ", ("a", "b"))],
)
def test_parse_list(text: str, expected: tuple[str, ...]) -> None:
    assert parse_list(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "1000000d",  # before year 1
        "99999999999d",  # more seconds than a time span holds
        "0001-01-01T00:00:00+01:00",  # year 0 in UTC
        "9999-12-31T23:00:00-05:00",  # year 10000 in UTC
        "soon",
    ],
)
def test_parse_time_refuses_a_time_outside_the_calendar_in_utc(text: str) -> None:
    """Until 2026-12-06 a duration reaching before year 1 raised ``OverflowError``, and a time
    whose offset takes it out of the calendar in UTC was taken and failed later (a traceback
    from every command given it)."""
    with pytest.raises(ValueError, match="not a time"):
        parse_time(text)


def test_parse_time_reads_times_in_utc_and_one_without_an_offset_as_utc() -> None:
    now = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    assert parse_time("2h", now) == datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
    assert parse_time("2026-12-06T14:00:00+02:00") == now
    assert parse_time("2026-12-06T12:00:00Z") == now
    assert parse_time("2026-12-06T12:00:00") == now
    assert parse_time("0001-01-01T00:00:00") == datetime(1, 1, 1, tzinfo=UTC)
    for text in ("2026-12-06T14:00:00+02:00", "0001-01-01T00:00:00"):
        assert parse_time(text).tzinfo is UTC


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("3600", "needs its unit"),  # seconds ago, until 2026-12-07
        ("1767225600", "needs its unit"),  # a Unix time: 1970, until 2026-12-07
        ("1.5", "needs its unit"),
        ("20261301", "not a time"),  # month 13
        ("", "not a time"),
    ],
)
def test_parse_time_refuses_a_bare_number_but_a_basic_date(text: str, said: str) -> None:
    with pytest.raises(ValueError, match=said):
        parse_time(text)
    assert parse_time("20260101") == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_time("90s", datetime(2026, 1, 1, tzinfo=UTC)) == datetime(
        2025, 12, 31, 23, 58, 30, tzinfo=UTC
    )


def test_empty_bool_env_means_false() -> None:
    assert Settings.load(env={"BRIDGE_SUCCESS_ANY_2XX": ""}).success_any_2xx is False


def test_empty_optional_string_means_unset() -> None:
    settings = Settings.load(env={"BRIDGE_KAFKA_BOOTSTRAP_SERVERS": ""})
    assert settings.kafka_bootstrap_servers is None
    assert settings.embedded is True


def test_bootstrap_servers_turn_off_the_embedded_broker() -> None:
    assert Settings.load(env={"BRIDGE_KAFKA_BOOTSTRAP_SERVERS": "k:9092"}).embedded is False


@pytest.mark.parametrize("port", ["0", "1", "65535"])
def test_port_bounds_accepted(port: str) -> None:
    assert Settings.load(env={"BRIDGE_WEB_PORT": port}).web_port == int(port)


# ------------------------------------------------------------------------- bad values

BAD: list[tuple[str, str]] = [
    ("BRIDGE_SUCCESS_ANY_2XX", "maybe"),
    ("BRIDGE_KAFKA_SECURITY_PROTOCOL", "TLS"),
    ("BRIDGE_KAFKA_SASL_MECHANISM", "GSSAPI"),
    ("BRIDGE_LOG_LEVEL", "TRACE"),
    ("BRIDGE_LOG_FORMAT", "yaml"),
    ("BRIDGE_ROLE", "both"),
    ("BRIDGE_WEB_PORT", "65536"),
    ("BRIDGE_WEB_PORT", "-1"),
    ("BRIDGE_WEB_PORT", "http"),
    ("BRIDGE_EMBEDDED_PORT", "99999"),
    ("BRIDGE_HTTP_TIMEOUT", "0"),
    ("BRIDGE_API_RATE_LIMIT", "-1"),
    ("BRIDGE_API_RATE_LIMIT", "nan"),
    ("BRIDGE_API_RATE_LIMIT", "inf"),
    ("BRIDGE_API_MAX_WEBHOOKS", "-1"),
    ("BRIDGE_API_MAX_WEBHOOKS", "2.5"),
    ("BRIDGE_API_RECOVERY_RATE", "0"),
    ("BRIDGE_API_RECOVERY_RATE", "-5"),
    ("BRIDGE_API_SCAN_SHARE", "0"),
    ("BRIDGE_API_SCAN_SHARE", "1.5"),
    ("BRIDGE_API_SCAN_SHARE", "nan"),
    ("BRIDGE_HTTP_TIMEOUT", "-1.5"),
    ("BRIDGE_HTTP_TIMEOUT", "nan"),
    ("BRIDGE_HTTP_TIMEOUT", "soon"),
    ("BRIDGE_SUBSCRIPTION_SYNC_TIMEOUT", "0"),
    ("BRIDGE_KAFKA_REBALANCE_TIMEOUT", "-4"),
    ("BRIDGE_KAFKA_SESSION_TIMEOUT", "0"),
    ("BRIDGE_MAX_IN_FLIGHT", "0"),
    ("BRIDGE_MAX_IN_FLIGHT", "1.5"),
    ("BRIDGE_MAX_BODY_BYTES", "-10"),
    ("BRIDGE_MAX_BODY_BYTES", "1MB"),
    # Not host:port (until 2026-12-07 a traceback of the clients at `run`).
    ("BRIDGE_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:notaport"),
    ("BRIDGE_KAFKA_BOOTSTRAP_SERVERS", "k1:"),
    ("BRIDGE_KAFKA_BOOTSTRAP_SERVERS", ":9092"),
    ("BRIDGE_KAFKA_BOOTSTRAP_SERVERS", "k1:70000"),
    ("BRIDGE_TOPIC_REPLICATION_FACTOR", "0"),
    ("BRIDGE_RETRY_SCHEDULE", ""),
    ("BRIDGE_RETRY_SCHEDULE", "5s,soon"),
    ("BRIDGE_RETRY_SCHEDULE", "5s,0s"),
    ("BRIDGE_RETRY_SCHEDULE", "5s,25h"),
    ("BRIDGE_RETRY_JITTER", "some"),
    ("BRIDGE_RETRY_AFTER_CAP", "-1s"),
    ("BRIDGE_ENDPOINT_MAX_IN_FLIGHT", "0"),
    ("BRIDGE_ENDPOINT_MAX_QUEUED", "0"),
    ("BRIDGE_OWNER_MAX_IN_FLIGHT", "-1"),
    ("BRIDGE_BREAKER_THRESHOLD", "0"),
    ("BRIDGE_BREAKER_COOLDOWN", "30 secs"),
    ("BRIDGE_DISABLE_AFTER", "5 days"),
    ("BRIDGE_DRAIN_TIMEOUT", "1w"),
    ("BRIDGE_ATTEMPT_RESPONSE_PREFIX_BYTES", "-1"),
    ("BRIDGE_ATTEMPT_RESPONSE_PREFIX_BYTES", "1k"),
    # Taken until 2026-12-07: a topic nothing can read, a group of no one.
    ("BRIDGE_EVENTS_TOPIC", ""),
    ("BRIDGE_SUBSCRIPTIONS_TOPIC", "my topic"),
    ("BRIDGE_STATUS_TOPIC", ".."),
    ("BRIDGE_EXTRA_SOURCE_TOPICS", "a,b/c"),
    ("BRIDGE_RETRY_TOPIC_PREFIX", "r" * 247),
    ("BRIDGE_GROUP_ID", " "),
    ("BRIDGE_GROUP_ID", "a/b"),
]


@pytest.mark.parametrize(("env_name", "raw"), BAD)
def test_bad_value_raises_config_error_naming_the_variable(env_name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load(env={env_name: raw})
    assert str(info.value).startswith(f"{env_name}: ")
    assert isinstance(info.value, BridgeError)
    assert info.value.retriable is False


def test_no_retry_waits_longer_than_its_topic_keeps_records() -> None:
    """A retry record waits its delay in its tier's topic: the longest delay allowed is a
    third of what the retry topics keep (until 2026-12-06 any delay was taken, and one of
    3 days or more had the broker delete retries before they were due)."""
    declared = load_json("topics.json")["topics"]["retries"]
    kept = int(declared["configs"]["retention.ms"]) / 1000
    assert MAX_RETRY_DELAY * 3 <= kept
    assert max(DEFAULTS["retry_schedule"]) <= MAX_RETRY_DELAY
    assert Settings.load(env={"BRIDGE_RETRY_SCHEDULE": "1d"}).retry_schedule == (86400.0,)
    with pytest.raises(ConfigError, match="at most 1d"):
        Settings(retry_schedule=(5.0, MAX_RETRY_DELAY + 1))


@pytest.mark.parametrize("jitter", ["1", "1.5", "-0.1", "nan"])
def test_retry_jitter_must_be_a_fraction(jitter: str) -> None:
    with pytest.raises(ConfigError, match="retry_jitter"):
        Settings.load(env={"BRIDGE_RETRY_JITTER": jitter})
    assert Settings.load(env={"BRIDGE_RETRY_JITTER": "0"}).retry_jitter == 0.0


def test_the_response_prefix_is_off_by_default_and_bounded() -> None:
    """Response bodies can hold personal data: none is kept unless asked for, and never more
    than MAX_ATTEMPT_RESPONSE_PREFIX bytes."""
    assert Settings().attempt_response_prefix_bytes == 0
    most = MAX_ATTEMPT_RESPONSE_PREFIX
    assert most == 1024
    env = "BRIDGE_ATTEMPT_RESPONSE_PREFIX_BYTES"
    assert Settings.load(env={env: str(most)}).attempt_response_prefix_bytes == most
    with pytest.raises(ConfigError, match="attempt_response_prefix_bytes"):
        Settings.load(env={env: str(most + 1)})
    with pytest.raises(ConfigError, match="attempt_response_prefix_bytes"):
        Settings(attempt_response_prefix_bytes=-1)
    with pytest.raises(ConfigError, match="attempt_response_prefix_bytes"):
        Settings().replace(attempt_response_prefix_bytes=most + 1)


def test_the_delivery_log_keeps_at_least_the_longest_stats_window() -> None:
    with pytest.raises(ConfigError, match="recovery_retention"):
        Settings.load(env={"BRIDGE_RECOVERY_RETENTION": "0s"})
    with pytest.raises(ConfigError, match="delivery_log_max_age"):
        Settings.load(env={"BRIDGE_DELIVERY_LOG_MAX_AGE": "6d"})
    assert Settings.load(env={"BRIDGE_DELIVERY_LOG_MAX_AGE": "7d"}).delivery_log_max_age == 604800


def test_the_api_role_needs_a_token_file() -> None:
    with pytest.raises(ConfigError, match="api_tokens"):
        Settings.load(env={"BRIDGE_ROLE": "api"})
    settings = Settings.load(env={"BRIDGE_ROLE": "api", "BRIDGE_API_TOKENS": "t.yaml"})
    assert (settings.serves_api, settings.delivers) == (True, False)


def test_the_delivery_log_needs_a_role_serving_the_api() -> None:
    for env in (
        {"BRIDGE_DELIVERY_LOG": "on"},
        {"BRIDGE_DELIVERY_LOG": "on", "BRIDGE_ROLE": "deliver", "BRIDGE_API_TOKENS": "t.yaml"},
    ):
        with pytest.raises(ConfigError, match="delivery_log"):
            Settings.load(env=env)
    env = {"BRIDGE_DELIVERY_LOG": "on", "BRIDGE_API_TOKENS": "t.yaml"}
    assert Settings.load(env=env).delivery_log


def test_roles() -> None:
    assert (Settings.load(env={}).delivers, Settings.load(env={}).serves_api) == (True, False)
    deliver = Settings.load(env={"BRIDGE_ROLE": "deliver", "BRIDGE_API_TOKENS": "t.yaml"})
    assert (deliver.delivers, deliver.serves_api) == (True, False)


def test_the_canonical_url_defaults_to_the_web_server() -> None:
    settings = Settings.load(env={"BRIDGE_WEB_PORT": "9001"})
    assert settings.canonical_url == "http://127.0.0.1:9001"
    advertised = settings.replace(advertised_url="http://10.0.0.7:9001/")
    assert advertised.canonical_url == "http://10.0.0.7:9001"


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("::", "http://[::]:9001"),
        ("fd00::7", "http://[fd00::7]:9001"),
        ("[::1]", "http://[::1]:9001"),
        ("", "http://localhost:9001"),
        ("0.0.0.0", "http://0.0.0.0:9001"),
    ],
)
def test_the_web_url_is_a_url_faust_takes_for_any_host(host: str, url: str) -> None:
    """Until 2026-12-07 an IPv6 host went in bare (http://:::9001): Faust refused it as the
    app's canonical_url, and a worker bound to :: without advertised_url did not start."""
    import yarl

    settings = Settings.load(env={"BRIDGE_WEB_HOST": host, "BRIDGE_WEB_PORT": "9001"})
    assert settings.web_url == settings.canonical_url == url
    assert yarl.URL(url).port == 9001


def test_session_timeout_must_exceed_half_the_rebalance_timeout() -> None:
    with pytest.raises(ConfigError, match="kafka_session_timeout"):
        Settings.load(env={"BRIDGE_KAFKA_REBALANCE_TIMEOUT": "20"})
    ok = Settings.load(
        env={"BRIDGE_KAFKA_REBALANCE_TIMEOUT": "20", "BRIDGE_KAFKA_SESSION_TIMEOUT": "10.5"}
    )
    assert ok.kafka_session_timeout == 10.5


# ------------------------------------------------------------------------- overrides


def test_overrides_beat_env() -> None:
    settings = Settings.load(
        env={"BRIDGE_GROUP_ID": "from-env", "BRIDGE_HTTP_TIMEOUT": "3"},
        overrides={"group_id": "from-flag", "http_timeout": 7.0},
    )
    assert settings.group_id == "from-flag"
    assert settings.http_timeout == 7.0


def test_none_and_empty_overrides_leave_env_in_place() -> None:
    settings = Settings.load(
        env={"BRIDGE_GROUP_ID": "from-env", "BRIDGE_EXTRA_SOURCE_TOPICS": "x,y"},
        overrides={"group_id": None, "extra_source_topics": ()},
    )
    assert settings.group_id == "from-env"
    assert settings.extra_source_topics == ("x", "y")


def test_false_override_is_not_ignored() -> None:
    settings = Settings.load(
        env={"BRIDGE_SUCCESS_ANY_2XX": "true"}, overrides={"success_any_2xx": False}
    )
    assert settings.success_any_2xx is False


def test_unknown_override_is_rejected() -> None:
    with pytest.raises(ConfigError, match="no_such_setting"):
        Settings.load(env={}, overrides={"no_such_setting": 1})


def test_given_defaults_yield_to_env_and_flags() -> None:
    defaults = {"kafka_session_timeout": 5.0, "group_id": "from-defaults", "http_timeout": 9.0}
    settings = Settings.load(
        env={"BRIDGE_GROUP_ID": "from-env"}, overrides={"http_timeout": 7.0}, defaults=defaults
    )
    assert settings.kafka_session_timeout == 5.0
    assert settings.group_id == "from-env"
    assert settings.http_timeout == 7.0
    assert Settings.load(env={}).kafka_session_timeout == DEFAULTS["kafka_session_timeout"]


def test_unknown_default_is_rejected() -> None:
    with pytest.raises(ConfigError, match="no_such_setting"):
        Settings.load(env={}, defaults={"no_such_setting": 1})


def test_embedded_group_timeouts_are_valid_settings_and_shorter() -> None:
    settings = Settings.load(env={}, defaults=GROUP_TIMEOUTS)
    # Tansu answers a forming group's first join once half the session timeout has passed
    # (at most 3 s), looking once a second: 2 s is the longest session with a 1 s join.
    assert settings.kafka_session_timeout <= 2.0
    assert settings.kafka_rebalance_timeout < 2 * settings.kafka_session_timeout
    assert settings.kafka_session_timeout < DEFAULTS["kafka_session_timeout"]


# ----------------------------------------------------------------------------- SASL


def test_sasl_complete_is_accepted() -> None:
    settings = Settings.load(env=SASL)
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.kafka_sasl_mechanism == "SCRAM-SHA-512"
    assert settings.kafka_sasl_username == "bridge"
    assert settings.kafka_sasl_password == "pa55-w0rd-XYZ"


@pytest.mark.parametrize(
    "missing",
    ["BRIDGE_KAFKA_SASL_MECHANISM", "BRIDGE_KAFKA_SASL_USERNAME", "BRIDGE_KAFKA_SASL_PASSWORD"],
)
@pytest.mark.parametrize("protocol", ["SASL_SSL", "SASL_PLAINTEXT"])
def test_sasl_needs_mechanism_user_and_password(missing: str, protocol: str) -> None:
    env = {**SASL, "BRIDGE_KAFKA_SECURITY_PROTOCOL": protocol}
    del env[missing]
    with pytest.raises(ConfigError, match="SASL"):
        Settings.load(env=env)


def test_empty_sasl_password_counts_as_missing() -> None:
    with pytest.raises(ConfigError, match="kafka_sasl_password"):
        Settings.load(env={**SASL, "BRIDGE_KAFKA_SASL_PASSWORD": ""})


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL"])
def test_non_sasl_protocols_need_no_credentials(protocol: str) -> None:
    settings = Settings.load(env={"BRIDGE_KAFKA_SECURITY_PROTOCOL": protocol})
    assert settings.kafka_security_protocol == protocol
    assert settings.kafka_sasl_password is None


def test_sasl_error_does_not_contain_the_password() -> None:
    env = dict(SASL)
    del env["BRIDGE_KAFKA_SASL_USERNAME"]
    with pytest.raises(ConfigError) as info:
        Settings.load(env=env)
    assert "pa55-w0rd-XYZ" not in str(info.value)


# ------------------------------------------------------------------------- redaction


def test_repr_hides_the_password() -> None:
    settings = Settings.load(env=SASL)
    text = repr(settings)
    assert "pa55-w0rd-XYZ" not in text
    assert "pa55-w0rd-XYZ" not in str(settings)
    assert "kafka_sasl_username='bridge'" in text


def test_redacted_replaces_secrets_only() -> None:
    settings = Settings.load(env={**SASL, "BRIDGE_GROUP_ID": "g"})
    redacted = settings.redacted()
    assert set(redacted) == set(Settings.specs())
    assert redacted["kafka_sasl_password"] == "***"
    assert "pa55-w0rd-XYZ" not in repr(redacted)
    for name, value in redacted.items():
        if name != "kafka_sasl_password":
            assert value == getattr(settings, name), name


def test_redacted_keeps_an_absent_secret_as_none() -> None:
    assert Settings.load(env={}).redacted()["kafka_sasl_password"] is None


# --------------------------------------------------------------- immutability, derived


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.group_id = "other"  # type: ignore[misc]


def test_replace_changes_and_validates_again() -> None:
    settings = Settings()
    changed = settings.replace(group_id="g2", max_in_flight=4)
    assert (changed.group_id, changed.max_in_flight) == ("g2", 4)
    assert settings.group_id == "webhook-bridge"
    with pytest.raises(ConfigError):
        settings.replace(kafka_security_protocol="SASL_SSL")


def test_source_topics_start_with_the_events_topic() -> None:
    settings = Settings.load(
        env={"BRIDGE_EVENTS_TOPIC": "ev", "BRIDGE_EXTRA_SOURCE_TOPICS": "legacy,other"}
    )
    assert settings.source_topics == ("ev", "legacy", "other")


def test_retry_topics_one_per_schedule_entry() -> None:
    settings = Settings.load(
        env={"BRIDGE_RETRY_SCHEDULE": "5s,1m,1h", "BRIDGE_RETRY_TOPIC_PREFIX": "t.retry"}
    )
    assert settings.retry_topics == ("t.retry.1", "t.retry.2", "t.retry.3")
    assert len(Settings().retry_topics) == len(DEFAULTS["retry_schedule"])


def test_resolved_data_dir() -> None:
    assert Settings(data_dir="/srv/b").resolved_data_dir == Path("/srv/b")
    expected = Path(tempfile.gettempdir()) / "webhook-bridge" / "grp"
    assert Settings(group_id="grp").resolved_data_dir == expected


# ---------------------------------------------------------------------- argparse flags

ALL = list(Settings.specs())


def make_parser(names: list[str] = ALL) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bridge-test")
    add_setting_flags(parser, names)
    return parser


def test_every_setting_has_a_flag_without_conflicts() -> None:
    args = make_parser().parse_args([])
    overrides = overrides_from_args(args, ALL)
    assert set(overrides) == set(ALL)
    assert overrides["extra_source_topics"] is None
    assert all(value is None for value in overrides.values())
    assert Settings.load(env={}, overrides=overrides) == Settings()


def test_help_names_the_env_var() -> None:
    text = make_parser(["http_timeout", "extra_source_topics"]).format_help()
    assert "BRIDGE_HTTP_TIMEOUT" in text
    assert "BRIDGE_EXTRA_SOURCE_TOPICS" in text
    assert "repeatable" in text


def test_flags_are_parsed_and_beat_env() -> None:
    names = ["group_id", "http_timeout", "success_any_2xx", "log_level", "web_port"]
    args = make_parser(names).parse_args(
        [
            "--group-id",
            "flag-group",
            "--http-timeout",
            "2.5",
            "--success-any-2xx",
            "yes",
            "--log-level",
            "warning",
        ]
    )
    overrides = overrides_from_args(args, names)
    assert overrides == {
        "group_id": "flag-group",
        "http_timeout": 2.5,
        "success_any_2xx": True,
        "log_level": "WARNING",
        "web_port": None,
    }
    env = {"BRIDGE_GROUP_ID": "env-group", "BRIDGE_WEB_PORT": "7000"}
    settings = Settings.load(env=env, overrides=overrides)
    assert settings.group_id == "flag-group"
    assert settings.http_timeout == 2.5
    assert settings.success_any_2xx is True
    assert settings.log_level == "WARNING"
    assert settings.web_port == 7000


def test_repeatable_flag_collects_a_tuple() -> None:
    names = ["extra_source_topics"]
    args = make_parser(names).parse_args(["--extra-source-topic", "a", "--extra-source-topic", "b"])
    overrides = overrides_from_args(args, names)
    assert overrides == {"extra_source_topics": ("a", "b")}
    settings = Settings.load(env={"BRIDGE_EXTRA_SOURCE_TOPICS": "x"}, overrides=overrides)
    assert settings.extra_source_topics == ("a", "b")


def test_absent_repeatable_flag_keeps_env() -> None:
    names = ["extra_source_topics"]
    overrides = overrides_from_args(make_parser(names).parse_args([]), names)
    settings = Settings.load(env={"BRIDGE_EXTRA_SOURCE_TOPICS": "x,y"}, overrides=overrides)
    assert settings.extra_source_topics == ("x", "y")


def test_comma_separated_repeatable_flag_loses_nothing() -> None:
    names = ["extra_source_topics"]
    try:
        args = make_parser(names).parse_args(["--extra-source-topic", "a,b"])
    except SystemExit:  # refusing the comma is an acceptable fix too
        return
    assert overrides_from_args(args, names)["extra_source_topics"] == ("a", "b")


@pytest.mark.parametrize(
    "argv",
    [
        ["--http-timeout", "0"],
        ["--web-port", "70000"],
        ["--success-any-2xx", "perhaps"],
        ["--log-level", "LOUD"],
        ["--max-in-flight", "many"],
    ],
)
def test_bad_flag_values_are_argparse_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        make_parser().parse_args(argv)
    assert info.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_overrides_from_args_ignores_missing_attributes() -> None:
    overrides = overrides_from_args(argparse.Namespace(group_id="g"), ["group_id", "web_port"])
    assert overrides == {"group_id": "g", "web_port": None}


def test_to_env_round_trips_through_load() -> None:
    settings = Settings.load(
        env={},
        overrides={
            "kafka_bootstrap_servers": "k1:9092",
            "retry_schedule": (0.3, 0.6),
            "allow_networks": ("127.0.0.0/8", "::1/128"),
            "allow_http": False,
            "http_client": "httpx",
            "disable_after": 1.5,
            "secret_keys": "k1:AAAA",
        },
    )
    env = settings.to_env()
    assert env["BRIDGE_ALLOW_HTTP"] == "false"
    assert "BRIDGE_DATA_DIR" not in env  # unset stays unset
    assert Settings.load(env=env) == settings


@pytest.mark.parametrize("text", ["auto", "JSON", " Text "])
def test_log_format_values(text: str) -> None:
    assert Settings.load(env={"BRIDGE_LOG_FORMAT": text}).log_format == text.strip().lower()


# ---------------------------------------------------------------------------- sections


def test_settings_of_follows_sections_then_declaration_order() -> None:
    names = list(Settings.specs())
    kafka = settings_of([Section.KAFKA])
    assert kafka[0] == "kafka_bootstrap_servers"
    assert kafka == sorted(kafka, key=names.index)
    assert settings_of([Section.EMBEDDED, Section.KAFKA]) == ["embedded_port", *kafka]
    assert settings_of([Section.KAFKA, Section.KAFKA]) == kafka
    assert settings_of([]) == []


def test_add_section_flags_groups_the_flags_and_returns_the_names() -> None:
    parser = argparse.ArgumentParser(prog="bridge-test")
    names = add_section_flags(parser, [Section.SUBSCRIPTIONS, Section.SECRETS])
    assert names == ["subscriptions_topic", "status_topic", "secret_keys"]
    text = parser.format_help()
    assert "\nSubscription topics settings:\n  --subscriptions-topic" in text
    assert "\nSecret encryption settings:\n  --secret-keys" in text
    args = parser.parse_args(["--status-topic", "st"])
    assert Settings.load(env={}, overrides=overrides_from_args(args, names)).status_topic == "st"


def test_development_mode_allows_loopback_endpoints_over_http_for_every_process() -> None:
    """``webhook-bridge run`` and ``python -m bridge.api serve`` on the embedded broker take the
    same development settings (until 2026-12-06 serve refused the loopback URLs the worker
    delivered to)."""
    from bridge.config import LOOPBACK_NETWORKS
    from bridge.http.ssrf import check_url
    from bridge.kafka.clients import address_policy

    settings = Settings.load(env={}).on_embedded_broker("127.0.0.1:19092")
    assert settings.kafka_bootstrap_servers == "127.0.0.1:19092" and not settings.embedded
    assert settings.plain_http_allowed
    assert set(LOOPBACK_NETWORKS) <= set(settings.allow_networks)
    check_url(
        "http://127.0.0.1:8080/hook",
        allow_http=settings.plain_http_allowed,
        policy=address_policy(settings),
        remember=False,
    )
    told = Settings.load(env={"BRIDGE_ALLOW_HTTP": "false"}).on_embedded_broker("127.0.0.1:1")
    assert not told.plain_http_allowed  # a setting given is kept


TOPIC_SETTINGS = (
    "events_topic",
    "subscriptions_topic",
    "deadletter_topic",
    "attempts_topic",
    "status_topic",
    "recoveries_topic",
)


@pytest.mark.parametrize("first", TOPIC_SETTINGS)
@pytest.mark.parametrize("second", [*TOPIC_SETTINGS, "extra_source_topics", "retry_topic_prefix"])
def test_no_two_uses_share_a_topic(first: str, second: str) -> None:
    """A source topic that is the subscriptions topic had its webhook records read as events
    and dead-lettered whole, a secret in each where no keyring encrypts them (until
    2026-12-06); every such pair is refused at start, naming both settings."""
    if first == second:
        return
    topic = getattr(Settings(), first)
    if second == "extra_source_topics":
        change: dict[str, Any] = {second: ("other.topic", topic)}
    elif second == "retry_topic_prefix":
        # The tiers' topics are <prefix>.1, <prefix>.2 ...: the first names tier 1's.
        change = {second: "shared.retry", first: "shared.retry.1"}
    else:
        change = {second: topic}
    with pytest.raises(ConfigError, match="name the same topic") as info:
        Settings().replace(**change)
    assert first in str(info.value) and second in str(info.value)


def test_a_source_topic_listed_twice_is_one_use() -> None:
    settings = Settings().replace(extra_source_topics=("a", "a", "b"))
    assert settings.source_topics == (settings.events_topic, "a", "b")  # each read once


@pytest.mark.parametrize("servers", ["[::1]x", "[::1]:", "[]:9092", "h:-1", "a b:9092"])
def test_bootstrap_servers_in_brackets_or_signed_are_host_port_or_refused(servers: str) -> None:
    """(Not in the shared refused values: the chart's tests read those as YAML.)"""
    with pytest.raises(ConfigError, match="BRIDGE_KAFKA_BOOTSTRAP_SERVERS"):
        Settings.load(env={"BRIDGE_KAFKA_BOOTSTRAP_SERVERS": servers})


@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_ssrf_guard_is_refused_not_read_as_off(empty: str) -> None:
    """An empty variable (an unset compose or shell variable, Helm's ``--set key=``) is read
    as false for other booleans; for the SSRF guard it would turn the safeguard off, silently
    (until 2026-12-07). It is refused, naming the variable."""
    with pytest.raises(ConfigError, match="BRIDGE_SSRF_GUARD"):
        Settings.load(env={"BRIDGE_SSRF_GUARD": empty})
    assert Settings.load(env={"BRIDGE_SSRF_GUARD": "false"}).ssrf_guard is False
    assert Settings.load(env={}).ssrf_guard is True


def test_the_ssrf_guard_turned_off_is_logged_as_a_worker_starts(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Once, when the worker is made (not at its first delivery, which a worker without
    traffic never makes), and never for a guard on."""
    from bridge.worker.app import Bridge

    with caplog.at_level(logging.WARNING, logger="bridge.kafka.clients"):
        kafka = {"BRIDGE_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}  # (made, never reached)
        Bridge(Settings.load(env=kafka, overrides={"data_dir": str(tmp_path)}))
        assert not caplog.records
        unguarded = {**kafka, "BRIDGE_SSRF_GUARD": "off"}
        Bridge(Settings.load(env=unguarded, overrides={"data_dir": str(tmp_path)}))
    assert [r.getMessage() for r in caplog.records] == [
        "the SSRF guard is off (ssrf_guard false): deliveries may reach loopback, private and "
        "link-local addresses, cloud metadata services included"
    ]
