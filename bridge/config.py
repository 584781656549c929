"""The bridge's settings: one typed, immutable object read from the environment and flags.

This is the only module that reads environment variables. Every setting is declared once, with its
section, type, environment name (``BRIDGE_*``), command-line flag, default and help text; the CLI
builds its flag groups and docs/configuration.md its tables from these declarations, and everything
else receives a :class:`Settings`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import ipaddress
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bridge.contract.events import parse_time as _parse_utc
from bridge.delivery.retry_policy import DEFAULT_SCHEDULE, MAX_RETRY_DELAY
from bridge.errors import ConfigError
from bridge.redaction import for_logs, without_userinfo

log = logging.getLogger(__name__)

__all__ = [
    "parse_duration",
    "parse_explicit_bool",
    "parse_schedule",
    "RENAMED",
    "format_duration",
    "parse_time",
    "Settings",
    "Section",
    "SettingSpec",
    "parse_bool",
    "parse_list",
    "parse_topic",
    "parse_topics",
    "parse_retry_prefix",
    "parse_group_id",
    "parse_port",
    "DEFAULT_HTTP_TIMEOUT",
    "LOOPBACK_NETWORKS",
    "MAX_ATTEMPT_RESPONSE_PREFIX",
    "add_setting_flags",
    "add_section_flags",
    "settings_of",
    "overrides_from_args",
    "settings_reference",
]

#: The public contract: "We will time out requests after 30 seconds."
DEFAULT_HTTP_TIMEOUT = 30.0
#: The networks development mode allows endpoints in (:meth:`Settings.on_embedded_broker`).
LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")
#: The public contract's receiver example parses bodies with ``express.json()`` at its default
#: ``limit`` of 100 kB (102,400 bytes), and answers ``413`` past it: every delivery sent at the
#: default verifies there (until 2026-12-07 the default was 1 MiB).
_DEFAULT_MAX_BODY_BYTES = 100 * 1024
#: The most of a response's body an attempt record may keep (``attempt_response_prefix_bytes``):
#: enough to see a receiver's error message, small enough that a kept delivery log stays small.
MAX_ATTEMPT_RESPONSE_PREFIX = 1024
_DEFAULT_WEB_PORT = 6066
_DEFAULT_EMBEDDED_PORT = 9092

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(text: str) -> float:
    """``"5s"``, ``"5m"``, ``"2h"``, ``"1d"``, ``"200ms"`` or plain seconds → seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (examples: 200ms, 5s, 5m, 2h, 1d)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def _positive_duration(text: str) -> float:
    """A duration (:func:`parse_duration`) longer than nothing."""
    value = parse_duration(text)
    if not value > 0:
        raise ValueError(f"must be longer than 0, got {text!r}")
    return value


def parse_schedule(text: str) -> tuple[float, ...]:
    """A comma-separated list of durations, each the wait before one more attempt."""
    return _check_schedule(tuple(parse_duration(part) for part in text.split(",") if part.strip()))


def _check_schedule(delays: tuple[float, ...]) -> tuple[float, ...]:
    """``delays``, if a retry schedule may hold them; ``ValueError`` saying why otherwise."""
    if not delays:
        raise ValueError("the retry schedule needs at least one delay")
    if any(not d > 0 for d in delays):
        raise ValueError("retry delays must be positive")
    if any(d > MAX_RETRY_DELAY for d in delays):
        raise ValueError(
            f"retry delays must be at most {format_duration(MAX_RETRY_DELAY)} (a retry record "
            "waits its delay in a retry topic, which keeps records 3 days)"
        )
    return delays


def format_duration(seconds: float) -> str:
    """The inverse of :func:`parse_duration`, for messages and ``--help``."""
    for unit in ("d", "h", "m", "s"):
        size = _UNITS[unit]
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{round(seconds * 1000)}ms"


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An ISO-8601 time (``2024-01-15T10:30:00Z``; one without an offset is in UTC) or a
    duration ago (``30m``, ``2h``, ``1d``), in UTC.

    ``ValueError`` for anything else, and for a time outside the calendar in UTC, as
    :func:`bridge.contract.events.parse_time` reads times (until 2026-12-06 ``1000000d`` and
    ``0001-01-01T00:00:00+01:00`` were taken, and failed later with a traceback)."""
    refused = f"not a time: {text!r} (ISO-8601, or a duration ago like 2h)"
    duration = _DURATION.match(text)
    if duration is not None:
        if duration.group(2) is None:
            # A bare number: no unit says it is a duration (until 2026-12-07 it was taken
            # for seconds ago, and an ISO basic date, 20260101, or a Unix time with it),
            # and no calendar reads it as a time but a basic date (YYYYMMDD), read below.
            return _basic_date(text, refused)
        try:
            return (now or datetime.now(UTC)) - timedelta(seconds=parse_duration(text))
        except OverflowError:
            raise ValueError(f"{refused}: too long ago") from None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(refused) from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return _parse_utc(text)
    except ValueError as exc:
        raise ValueError(f"{refused}: {exc}") from None


def _basic_date(text: str, refused: str) -> datetime:
    """An ISO-8601 basic date (``20260101``), in UTC; ``ValueError`` for any other number."""
    digits = text.strip()
    if len(digits) != 8 or not digits.isdigit():
        raise ValueError(f"{refused}: a duration ago needs its unit (90s, 2h)")
    try:
        return datetime.strptime(digits, "%Y%m%d").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(refused) from None


_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


def parse_topic(text: str) -> str:
    """A Kafka topic name: 1 to 249 of ``A-Z a-z 0-9 . _ -``, not ``.`` or ``..`` (an empty
    one was taken until 2026-12-07, and every read of it failed)."""
    if not _TOPIC.fullmatch(text) or text in (".", ".."):
        raise ValueError(
            f"not a topic name: {text!r} (1 to 249 of letters, digits, '.', '_' and '-')"
        )
    return text


def parse_topics(text: str) -> tuple[str, ...]:
    """A comma-separated list of topic names (:func:`parse_topic`)."""
    return tuple(parse_topic(topic) for topic in parse_list(text))


def parse_retry_prefix(text: str) -> str:
    """The retry topics' prefix: ``PREFIX.N`` must be a topic name for every tier."""
    parse_topic(f"{text}.99")
    return text


def parse_group_id(text: str) -> str:
    """A consumer group id, which Faust names topics after (``GROUP-__assignor-__leader``):
    what a topic name may hold."""
    try:
        parse_topic(f"{text}-__assignor-__leader")
    except ValueError:
        raise ValueError(
            f"not a group id: {text!r} (letters, digits, '.', '_' and '-': Faust names topics "
            "after it)"
        ) from None
    return text


def parse_bool(text: str) -> bool:
    """Parse ``1/0``, ``true/false``, ``yes/no``, ``on/off`` (case-insensitive)."""
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected a boolean (true/false), got {text!r}")


def parse_explicit_bool(text: str) -> bool:
    """:func:`parse_bool` without the empty value: for a safeguard (``ssrf_guard``), which a
    variable set to nothing (an unset shell or compose variable, Helm's ``--set key=``) must
    not turn off. Until 2026-12-07 ``BRIDGE_SSRF_GUARD=`` did, silently."""
    if not text.strip():
        raise ValueError("expected true or false, got an empty value (which would turn it off)")
    return parse_bool(text)


def parse_list(text: str) -> tuple[str, ...]:
    """Parse a comma-separated list, ignoring blanks around items."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"must be positive, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or math.isinf(value):
        raise ValueError(f"must be 0 or more, got {text!r}")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise ValueError(f"must be more than 0 and at most 1, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"must be positive, got {text!r}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must be 0 or more, got {text!r}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"not a TCP port: {text!r}")
    return value


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().upper()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {text!r}")
        return value

    return parse


def parse_port(text: str) -> int:
    """A TCP port to listen on, 1 to 65535 (an ``argparse`` type: until 2026-12-07
    ``receive --port 99999``, and ``python -m bridge.api serve --port 99999``, were tracebacks)."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError("must be a port number from 1 to 65535")
    return port


def _optional_str(text: str) -> str | None:
    return text or None


def _bootstrap_servers(text: str) -> str | None:
    # Kafka takes no credentials there, and the clients would print them in every connection
    # error (until 2026-12-05 they were passed on as given).
    if "@" in text:
        raise ValueError(
            "user information (user:password@) is not taken here: give credentials as "
            "kafka_sasl_username and kafka_sasl_password"
        )
    for server in text.split(",") if text else ():
        # host, host:port, [v6] or [v6]:port (a bare IPv6 address, and an empty entry, as
        # given): a port that is no number was a traceback of the clients (until 2026-12-07,
        # `run` with 127.0.0.1:notaport).
        host, port = server.strip(), ""
        if not host or host.count(":") > 1 and not host.startswith("["):
            continue
        if host.startswith("["):
            host, _, rest = host.partition("]")
            host += "]"
            if rest and not rest.startswith(":"):
                raise ValueError(f"not host:port: {server.strip()!r}")
            port = rest[1:]
            if rest and not port:
                raise ValueError(f"not host:port: {server.strip()!r}")
        elif ":" in host:
            host, port = host.rsplit(":", 1)
            port = port.strip()
            if not port:
                raise ValueError(f"not host:port: {server.strip()!r}")
        if host in ("", "[]") or any(c.isspace() for c in host):
            raise ValueError(f"not host:port: {server.strip()!r}")
        if port and not (port.isascii() and port.isdigit()):
            raise ValueError(f"not host:port: {server.strip()!r}")
        if port and not 0 < int(port) < 65536:
            raise ValueError(f"a port is 1 to 65535: {server.strip()!r}")
        if not host.startswith("["):
            try:
                # What the clients' connection does with it (until 2026-12-07 an empty label,
                # `kafka..internal`, or one over 63 characters was a traceback of the idna codec).
                host.encode("idna")
            except UnicodeError:
                raise ValueError(f"not a host name: {server.strip()!r}") from None
    return text or None


class Section(enum.Enum):
    """A group of settings, declared with each setting (as faust's ``@sections.Broker.setting``).

    Each command takes the flags of whole sections (:data:`bridge.cli.commands.COMMAND_SECTIONS`),
    its ``--help`` shows one group per section, and docs/configuration.md one table per section.
    The value is the group's title.
    """

    KAFKA = "Kafka connection"
    EMBEDDED = "Embedded broker"
    EVENTS = "Events topic"
    SUBSCRIPTIONS = "Subscription topics"
    DEAD_LETTERS = "Retry and dead-letter topics"
    TOPICS = "Other topics and the consumer group"
    SECRETS = "Secret encryption"
    DELIVERY = "Delivery"
    RELIABILITY = "Retries, limits and circuit breakers"
    SECURITY = "Endpoint security"
    PROCESS = "Worker process"
    CONSUMER = "Kafka client tuning"
    ACTIVITY = "Delivery log and stats"
    API_CLIENT = "Control plane API, for the management commands"

    def setting(
        self,
        default: Any,
        env: str,
        flag: str,
        parse: Callable[[str], Any],
        help: str,
        *,
        secret: bool = False,
        repeatable: bool = False,
    ) -> Any:
        """Declare a :class:`Settings` field of this section."""
        spec = SettingSpec(
            env=env,
            flag=flag,
            parse=parse,
            help=help,
            section=self,
            secret=secret,
            repeatable=repeatable,
        )
        return field(default=default, metadata={"spec": spec}, repr=not secret)


@dataclass(frozen=True)
class SettingSpec:
    """How one setting is read: environment name, flag, parser, help and section."""

    env: str
    flag: str
    parse: Callable[[str], Any]
    help: str
    section: Section
    secret: bool = False
    repeatable: bool = False


@dataclass(frozen=True)
class Settings:
    """Everything the bridge can be configured with. Build with :meth:`load`."""

    kafka_bootstrap_servers: str | None = Section.KAFKA.setting(
        None,
        "BRIDGE_KAFKA_BOOTSTRAP_SERVERS",
        "--bootstrap-servers",
        _bootstrap_servers,
        "Kafka bootstrap servers (host:port,...). Unset: `run` starts the embedded broker.",
    )
    kafka_security_protocol: str = Section.KAFKA.setting(
        "PLAINTEXT",
        "BRIDGE_KAFKA_SECURITY_PROTOCOL",
        "--kafka-security-protocol",
        _choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
        "Kafka security protocol.",
    )
    kafka_sasl_mechanism: str | None = Section.KAFKA.setting(
        None,
        "BRIDGE_KAFKA_SASL_MECHANISM",
        "--kafka-sasl-mechanism",
        _choice("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
        "SASL mechanism when the protocol is SASL_*.",
    )
    kafka_sasl_username: str | None = Section.KAFKA.setting(
        None, "BRIDGE_KAFKA_SASL_USERNAME", "--kafka-sasl-username", _optional_str, "SASL user."
    )
    kafka_sasl_password: str | None = Section.KAFKA.setting(
        None,
        "BRIDGE_KAFKA_SASL_PASSWORD",
        "--kafka-sasl-password",
        _optional_str,
        "SASL password (prefer the environment variable over the flag).",
        secret=True,
    )
    kafka_ssl_cafile: str | None = Section.KAFKA.setting(
        None,
        "BRIDGE_KAFKA_SSL_CAFILE",
        "--kafka-ssl-cafile",
        _optional_str,
        "CA bundle that signed the brokers' certificates (SSL, SASL_SSL).",
    )
    kafka_ssl_certfile: str | None = Section.KAFKA.setting(
        None,
        "BRIDGE_KAFKA_SSL_CERTFILE",
        "--kafka-ssl-certfile",
        _optional_str,
        "Client certificate for mutual TLS.",
    )
    kafka_ssl_keyfile: str | None = Section.KAFKA.setting(
        None,
        "BRIDGE_KAFKA_SSL_KEYFILE",
        "--kafka-ssl-keyfile",
        _optional_str,
        "Client private key for mutual TLS.",
    )
    group_id: str = Section.TOPICS.setting(
        "webhook-bridge",
        "BRIDGE_GROUP_ID",
        "--group-id",
        parse_group_id,
        "Consumer group and Faust app id; workers sharing it share the event partitions.",
    )
    # Topic names only: partitions and configs are declared in topics/.
    events_topic: str = Section.EVENTS.setting(
        "postion.events",
        "BRIDGE_EVENTS_TOPIC",
        "--events-topic",
        parse_topic,
        "Platform events topic (keyed by site_id).",
    )
    extra_source_topics: tuple[str, ...] = Section.TOPICS.setting(
        (),
        "BRIDGE_EXTRA_SOURCE_TOPICS",
        "--extra-source-topic",
        parse_topics,
        "More topics carrying platform events in the same envelope (comma-separated in env).",
        repeatable=True,
    )
    subscriptions_topic: str = Section.SUBSCRIPTIONS.setting(
        "postion.webhooks",
        "BRIDGE_SUBSCRIPTIONS_TOPIC",
        "--subscriptions-topic",
        parse_topic,
        "Compacted topic of webhook subscriptions (keyed by webhook id).",
    )
    deadletter_topic: str = Section.DEAD_LETTERS.setting(
        "postion.webhooks.deadletter",
        "BRIDGE_DEADLETTER_TOPIC",
        "--deadletter-topic",
        parse_topic,
        "Where records and deliveries that cannot be processed go, with their reason.",
    )
    topic_replication_factor: int = Section.TOPICS.setting(
        1,
        "BRIDGE_TOPIC_REPLICATION_FACTOR",
        "--topic-replication-factor",
        _positive_int,
        "Replication factor used by `topics apply` when it creates topics.",
    )
    http_timeout: float = Section.DELIVERY.setting(
        DEFAULT_HTTP_TIMEOUT,
        "BRIDGE_HTTP_TIMEOUT",
        "--http-timeout",
        _positive_duration,
        "How long a delivery attempt may take before it is abandoned (the documented "
        "contract is 30 s).",
    )
    success_any_2xx: bool = Section.DELIVERY.setting(
        False,
        "BRIDGE_SUCCESS_ANY_2XX",
        "--success-any-2xx",
        parse_bool,
        "Count any 2xx as success. Off: only 200 is success, as the documentation promises.",
    )
    http_client: str = Section.DELIVERY.setting(
        "http1",
        "BRIDGE_HTTP_CLIENT",
        "--http-client",
        lambda text: _choice("HTTP1", "HTTPX")(text).lower(),
        "HTTP client of the delivery hot path: http1 (the bridge's own keep-alive HTTP/1.1 "
        "client, fastest) or httpx (the reference). Both keep one contract, but for the "
        "differences tests/unit/http/test_sender_contract.py lists (httpx reads bytes an "
        "endpoint sent past a response as its next answer; http1 drops the connection).",
    )
    event_loop: str = Section.PROCESS.setting(
        "uvloop",
        "BRIDGE_EVENT_LOOP",
        "--event-loop",
        lambda text: _choice("UVLOOP", "ASYNCIO")(text).lower(),
        "Event loop of the worker: uvloop (faster) or asyncio (the standard library's).",
    )
    max_in_flight: int = Section.DELIVERY.setting(
        256,
        "BRIDGE_MAX_IN_FLIGHT",
        "--max-in-flight",
        _positive_int,
        "Deliveries in flight at once per worker, across all endpoints.",
    )
    max_body_bytes: int = Section.DELIVERY.setting(
        _DEFAULT_MAX_BODY_BYTES,
        "BRIDGE_MAX_BODY_BYTES",
        "--max-body-bytes",
        _positive_int,
        "Largest delivery body in bytes; bigger events are dead-lettered (payload_too_large). "
        "The default, 102400, is the limit at which the public documentation's receiver "
        "example (express.json()) reads a body: raise it only with receivers told to raise "
        "theirs.",
    )
    attempt_response_prefix_bytes: int = Section.DELIVERY.setting(
        0,
        "BRIDGE_ATTEMPT_RESPONSE_PREFIX_BYTES",
        "--attempt-response-prefix-bytes",
        _count,
        "Keep the first N bytes of each response body in its attempt record (response_prefix), "
        f"at most {MAX_ATTEMPT_RESPONSE_PREFIX}. 0, the default, keeps none: bodies can hold "
        "personal data; only their size is recorded.",
    )
    subscription_sync_timeout: float = Section.DELIVERY.setting(
        5.0,
        "BRIDGE_SUBSCRIPTION_SYNC_TIMEOUT",
        "--subscription-sync-timeout",
        _positive_duration,
        "Longest wait for the subscription table to catch up before an event is matched.",
    )
    retry_schedule: tuple[float, ...] = Section.DEAD_LETTERS.setting(
        DEFAULT_SCHEDULE,
        "BRIDGE_RETRY_SCHEDULE",
        "--retry-schedule",
        parse_schedule,
        "Waits before each retry after the first attempt fails (default "
        + ",".join(format_duration(d) for d in DEFAULT_SCHEDULE)
        + "); one retry topic per entry; each at most 1d (the retry topics keep records 3 days).",
    )
    retry_jitter: float = Section.RELIABILITY.setting(
        0.1,
        "BRIDGE_RETRY_JITTER",
        "--retry-jitter",
        float,
        "Fraction of each retry delay taken off at random, spreading bursts of retries.",
    )
    retry_after_cap: float = Section.RELIABILITY.setting(
        3600.0,
        "BRIDGE_RETRY_AFTER_CAP",
        "--retry-after-cap",
        parse_duration,
        "Longest Retry-After (on 429 and 503) honoured; longer requests are cut to this.",
    )
    retry_topic_prefix: str = Section.DEAD_LETTERS.setting(
        "postion.webhooks.retry",
        "BRIDGE_RETRY_TOPIC_PREFIX",
        "--retry-topic-prefix",
        parse_retry_prefix,
        "Retry topics are named PREFIX.1 ... PREFIX.N, one per schedule entry.",
    )
    attempts_topic: str = Section.TOPICS.setting(
        "postion.webhooks.attempts",
        "BRIDGE_ATTEMPTS_TOPIC",
        "--attempts-topic",
        parse_topic,
        "Every delivery attempt is recorded here (the per-webhook delivery log).",
    )
    delivery_log_max_attempts: int = Section.ACTIVITY.setting(
        1000,
        "BRIDGE_DELIVERY_LOG_MAX_ATTEMPTS",
        "--delivery-log-max-attempts",
        _positive_int,
        "Attempts kept in each webhook's delivery log (the newest).",
    )
    delivery_log_max_age: float = Section.ACTIVITY.setting(
        7 * 86400.0,
        "BRIDGE_DELIVERY_LOG_MAX_AGE",
        "--delivery-log-max-age",
        parse_duration,
        "Attempts older than this leave the delivery log; at least 7d, the longest stats window.",
    )
    delivery_log: bool = Section.ACTIVITY.setting(
        False,
        "BRIDGE_DELIVERY_LOG",
        "--delivery-log",
        parse_bool,
        "Hold the delivery log and stats of this worker's attempts partitions in memory and "
        "answer /v1 from them (roles api and all; needs api_tokens).",
    )
    delivery_log_store: str = Section.ACTIVITY.setting(
        "memory",
        "BRIDGE_DELIVERY_LOG_STORE",
        "--delivery-log-store",
        lambda text: _choice("MEMORY", "ROCKSDB")(text).lower(),
        "Where the delivery log is held: memory (a restart reads the attempts topic again "
        "from now - delivery_log_max_age) or rocksdb (under DATA_DIR/delivery-log, one "
        "database per partition with a checkpoint: a restart reads only what it missed; "
        "memory holds the stats and RocksDB's caches, about half the memory store's at "
        "1,000,000 attempts, BENCHMARKS.md).",
    )
    role: str = Section.ACTIVITY.setting(
        "all",
        "BRIDGE_ROLE",
        "--role",
        lambda text: _choice("API", "DELIVER", "ALL")(text).lower(),
        "What the worker does: deliver (events and retries), api (/v1 and the delivery log, "
        "no deliveries) or all (both).",
    )
    api_tokens: str | None = Section.ACTIVITY.setting(
        None,
        "BRIDGE_API_TOKENS",
        "--api-tokens",
        _optional_str,
        "Token file (YAML or JSON) of the /v1 API; the worker serves /v1 on its web port when "
        "set and its role includes the API.",
    )
    api_max_recoveries: int = Section.ACTIVITY.setting(
        8,
        "BRIDGE_API_MAX_RECOVERIES",
        "--api-max-recoveries",
        _positive_int,
        "Recoveries and redeliveries one worker runs at once (each reads the events topic), "
        "half of them at most of one site's (account's) webhooks; a request for another is "
        "answered 429 with Retry-After.",
    )
    api_recovery_rate: float = Section.ACTIVITY.setting(
        500.0,
        "BRIDGE_API_RECOVERY_RATE",
        "--api-recovery-rate",
        _positive_float,
        "Deliveries a second that one worker's recoveries and redeliveries enqueue together "
        "(each recovery's own rate applies first): what replays add to the deliveries, however "
        "many run.",
    )
    api_max_webhooks: int = Section.ACTIVITY.setting(
        100,
        "BRIDGE_API_MAX_WEBHOOKS",
        "--api-max-webhooks",
        _count,
        "Webhooks a site may have, and an account's account-wide webhooks, for a creation or "
        "a move through /v1 (one more is answered 409; the CLI is not limited). Each matching "
        "webhook is a delivery of every event of its site: this bounds what one site's events "
        "cost. 0: no limit.",
    )
    api_rate_limit: float = Section.ACTIVITY.setting(
        100.0,
        "BRIDGE_API_RATE_LIMIT",
        "--api-rate-limit",
        _non_negative_float,
        "Requests a second each /v1 token may make of one worker (a token quiet for two "
        "seconds may send two seconds' worth at once); more are answered 429 with Retry-After. "
        "0: no limit.",
    )
    api_scan_share: float = Section.ACTIVITY.setting(
        0.25,
        "BRIDGE_API_SCAN_SHARE",
        "--api-scan-share",
        _share,
        "The share of a worker's event loop that the topic reads it makes for /v1 may take "
        "together: recoveries and redeliveries reading the events topic, dead-letter listings "
        "and replays reading theirs (more than 0, at most 1: as much as they get); the "
        "deliveries keep the rest however many run. Role all only (a worker in role api "
        "delivers nothing and reads at full speed).",
    )
    recovery_retention: float = Section.ACTIVITY.setting(
        7 * 86400.0,
        "BRIDGE_RECOVERY_RETENTION",
        "--recovery-retention",
        parse_duration,
        "How long a recovery or redelivery that ended stays readable (GET /v1/recoveries/{id}); "
        "then its webhook's owner writes its tombstone to the recoveries topic, and every "
        "worker forgets it. A webhook keeps at most its newest 1,000 ended ones, whatever "
        "their age (since 2026-12-06).",
    )
    advertised_url: str | None = Section.ACTIVITY.setting(
        None,
        "BRIDGE_ADVERTISED_URL",
        "--advertised-url",
        _optional_str,
        "URL other workers reach this worker's web server at, to route delivery-log requests "
        "to it (default: http://web_host:web_port; set it when web_host is 0.0.0.0).",
    )
    api_url: str | None = Section.API_CLIENT.setting(
        None,
        "BRIDGE_API_URL",
        "--api-url",
        _optional_str,
        "Base URL of a worker serving /v1 (http://HOST:PORT): the delivery-log, stats, "
        "delivery and recovery commands ask it instead of reading Kafka themselves.",
    )
    api_token: str | None = Section.API_CLIENT.setting(
        None,
        "BRIDGE_API_TOKEN",
        "--api-token",
        _optional_str,
        "Bearer token for api_url (prefer the environment variable over the flag).",
        secret=True,
    )
    status_topic: str = Section.SUBSCRIPTIONS.setting(
        "postion.webhooks.status",
        "BRIDGE_STATUS_TOPIC",
        "--status-topic",
        parse_topic,
        "Compacted topic of endpoint health (failing since, disabled), keyed by webhook id.",
    )
    recoveries_topic: str = Section.ACTIVITY.setting(
        "postion.webhooks.recoveries",
        "BRIDGE_RECOVERIES_TOPIC",
        "--recoveries-topic",
        parse_topic,
        "Compacted topic of the API's recoveries and redeliveries (progress, positions), keyed "
        "by recovery id.",
    )
    endpoint_max_in_flight: int = Section.RELIABILITY.setting(
        16,
        "BRIDGE_ENDPOINT_MAX_IN_FLIGHT",
        "--endpoint-max-in-flight",
        _positive_int,
        "Requests in flight at once to one endpoint (scheme, host and port).",
    )
    endpoint_max_queued: int = Section.RELIABILITY.setting(
        256,
        "BRIDGE_ENDPOINT_MAX_QUEUED",
        "--endpoint-max-queued",
        _positive_int,
        "Deliveries waiting for one busy endpoint; more go to the retry path.",
    )
    owner_max_in_flight: int = Section.RELIABILITY.setting(
        64,
        "BRIDGE_OWNER_MAX_IN_FLIGHT",
        "--owner-max-in-flight",
        _count,
        "Requests in flight at once, per worker, for one site's webhooks (an account's "
        "account-wide ones) across all their endpoints; a delivery finding them all taken goes "
        "to the retry path (owner_busy). 0: no limit.",
    )
    slow_endpoint_share: float = Section.RELIABILITY.setting(
        0.5,
        "BRIDGE_SLOW_ENDPOINT_SHARE",
        "--slow-endpoint-share",
        _share,
        "The share of max_in_flight that endpoints and sites answering slowly (an answer of 2 "
        "s or more in the last 5 minutes), and endpoints not yet heard answering quickly, hold "
        "together; a request to a slow one finding it taken goes to the retry path "
        "(endpoint_busy), one to an endpoint not yet heard from waits for a place (10 s at "
        "most). More than 0, at most 1 (1: no share).",
    )
    breaker_threshold: int = Section.RELIABILITY.setting(
        5,
        "BRIDGE_BREAKER_THRESHOLD",
        "--breaker-threshold",
        _positive_int,
        "Consecutive failures or timeouts that open an endpoint's circuit.",
    )
    breaker_cooldown: float = Section.RELIABILITY.setting(
        30.0,
        "BRIDGE_BREAKER_COOLDOWN",
        "--breaker-cooldown",
        parse_duration,
        "How long an open circuit sends deliveries straight to the retry path before a probe.",
    )
    disable_after: float = Section.RELIABILITY.setting(
        5 * 86400.0,
        "BRIDGE_DISABLE_AFTER",
        "--disable-after",
        parse_duration,
        "An endpoint failing continuously this long (no success, and no day without a failure, "
        "since the webhook was last changed) is disabled until its webhook is updated.",
    )
    drain_timeout: float = Section.RELIABILITY.setting(
        20.0,
        "BRIDGE_DRAIN_TIMEOUT",
        "--drain-timeout",
        parse_duration,
        "On SIGTERM, how long in-flight deliveries may finish before they go to the retry path.",
    )
    ssrf_guard: bool = Section.SECURITY.setting(
        True,
        "BRIDGE_SSRF_GUARD",
        "--ssrf-guard",
        parse_explicit_bool,
        "Refuse deliveries to loopback, private, link-local and other internal addresses.",
    )
    allow_networks: tuple[str, ...] = Section.SECURITY.setting(
        (),
        "BRIDGE_ALLOW_NETWORKS",
        "--allow-network",
        parse_list,
        "Networks (CIDR) deliveries may reach despite the SSRF guard (comma-separated in env).",
        repeatable=True,
    )
    allow_http: bool | None = Section.SECURITY.setting(
        None,
        "BRIDGE_ALLOW_HTTP",
        "--allow-http",
        parse_bool,
        "Allow plain http:// endpoints (default: only in embedded mode; https otherwise).",
    )
    ca_bundle: str | None = Section.SECURITY.setting(
        None,
        "BRIDGE_CA_BUNDLE",
        "--ca-bundle",
        _optional_str,
        "CA bundle (file or directory) for verifying endpoints' TLS certificates.",
    )
    secret_keys: str | None = Section.SECRETS.setting(
        None,
        "BRIDGE_SECRET_KEYS",
        "--secret-keys",
        _optional_str,
        "Keys encrypting webhook secrets in Kafka: kid:base64key,... (first one encrypts).",
        secret=True,
    )
    web_host: str = Section.PROCESS.setting(
        "127.0.0.1",
        "BRIDGE_WEB_HOST",
        "--web-host",
        str,
        "Address the worker's web server (health, metrics) binds to; empty: every address, "
        "IPv4 and IPv6 (:: is IPv6 alone, 0.0.0.0 IPv4 alone).",
    )
    web_port: int = Section.PROCESS.setting(
        _DEFAULT_WEB_PORT,
        "BRIDGE_WEB_PORT",
        "--web-port",
        _port,
        "Port of the worker's web server; each worker on one machine needs its own.",
    )
    data_dir: str | None = Section.PROCESS.setting(
        None,
        "BRIDGE_DATA_DIR",
        "--data-dir",
        _optional_str,
        "Writable directory for Faust's local files (default: under the system temp dir).",
    )
    log_level: str = Section.PROCESS.setting(
        "INFO",
        "BRIDGE_LOG_LEVEL",
        "--log-level",
        _choice("DEBUG", "INFO", "WARNING", "ERROR"),
        "Log level.",
    )
    log_format: str = Section.PROCESS.setting(
        "auto",
        "BRIDGE_LOG_FORMAT",
        "--log-format",
        lambda text: _choice("AUTO", "JSON", "TEXT")(text).lower(),
        "Log lines of `run`: json (one JSON object per line), text (one readable line per event; "
        "Faust's start-up chatter hidden below DEBUG) or auto (text when stderr is a terminal, "
        "else json; the container image sets json).",
    )
    embedded_port: int = Section.EMBEDDED.setting(
        _DEFAULT_EMBEDDED_PORT,
        "BRIDGE_EMBEDDED_PORT",
        "--embedded-port",
        _port,
        "Port of the embedded broker (only when no bootstrap servers are configured).",
    )
    kafka_rebalance_timeout: float = Section.CONSUMER.setting(
        4.0,
        "BRIDGE_KAFKA_REBALANCE_TIMEOUT",
        "--kafka-rebalance-timeout",
        _positive_duration,
        "How long a consumer-group rebalance may take (kept short so joins take seconds). "
        "`run` on the embedded broker uses 3s unless set (below twice its session timeout).",
    )
    kafka_fetch_max_wait: float = Section.CONSUMER.setting(
        0.05,
        "BRIDGE_KAFKA_FETCH_MAX_WAIT",
        "--kafka-fetch-max-wait",
        parse_duration,
        "Longest time a fetch waits for new records. The embedded broker holds every fetch "
        "this long (latency), and below ~50ms it can return nothing for a large backlog (see "
        "BENCHMARKS.md, *Fetch wait on the embedded broker*); Apache Kafka answers as soon "
        "as records arrive, so there it only paces idle polling (500ms is Kafka's default).",
    )
    kafka_output_linger: float = Section.CONSUMER.setting(
        0.005,
        "BRIDGE_KAFKA_OUTPUT_LINGER",
        "--kafka-output-linger",
        parse_duration,
        "How long attempt, retry and dead-letter records wait to share a produce request.",
    )
    kafka_session_timeout: float = Section.CONSUMER.setting(
        6.0,
        "BRIDGE_KAFKA_SESSION_TIMEOUT",
        "--kafka-session-timeout",
        _positive_duration,
        "How long a silent worker stays in the group (6s is Apache Kafka's lowest by "
        "default). The embedded broker holds a new group's first join until half of it has "
        "passed (at most 3 s, checked once a second): `run` on the embedded broker uses 2s unless "
        "set, a 1 s join. A worker whose event loop did not run for this less one heartbeat "
        "interval (paused) writes no webhook change for this long after (docs/api.md).",
    )

    def __post_init__(self) -> None:
        if self.kafka_security_protocol.startswith("SASL_"):
            if not (self.kafka_sasl_mechanism and self.kafka_sasl_username):
                raise ConfigError(
                    "SASL security protocol needs kafka_sasl_mechanism and kafka_sasl_username"
                )
            if self.kafka_sasl_password is None:
                raise ConfigError("SASL security protocol needs kafka_sasl_password")
        for network in self.allow_networks:
            try:
                ipaddress.ip_network(network)
            except ValueError as exc:
                raise ConfigError(f"allow_networks: {exc}") from None
        if not 0 <= self.attempt_response_prefix_bytes <= MAX_ATTEMPT_RESPONSE_PREFIX:
            raise ConfigError(
                "attempt_response_prefix_bytes must be between 0 and "
                f"{MAX_ATTEMPT_RESPONSE_PREFIX} (0 keeps no response body)"
            )
        try:
            _check_schedule(self.retry_schedule)
        except ValueError as exc:
            raise ConfigError(f"retry_schedule: {exc}") from None
        if not 0.0 <= self.retry_jitter < 1.0:
            raise ConfigError("retry_jitter must be at least 0 and less than 1")
        if self.kafka_session_timeout <= self.kafka_rebalance_timeout / 2:
            raise ConfigError("kafka_session_timeout must be longer than half the rebalance one")
        if self.recovery_retention <= 0:
            raise ConfigError("recovery_retention must be positive")
        if self.delivery_log_max_age < 7 * 86400.0:
            raise ConfigError("delivery_log_max_age must be at least 7d (the longest stats window)")
        if self.role == "api" and self.api_tokens is None:
            raise ConfigError("role api needs api_tokens (the token file of /v1)")
        if self.delivery_log and (self.role == "deliver" or self.api_tokens is None):
            raise ConfigError("delivery_log needs a role with the API (api or all) and api_tokens")
        self._check_topics_apart()

    def _check_topics_apart(self) -> None:
        """Every topic has one use: a source topic that is also the subscriptions topic (or
        any of the bridge's own) has its records read as events, dead-lettered whole, a
        webhook's secret with them where no keyring encrypts it."""
        named = [
            ("events_topic", self.events_topic),
            *(("extra_source_topics", topic) for topic in self.extra_source_topics),
            ("subscriptions_topic", self.subscriptions_topic),
            ("deadletter_topic", self.deadletter_topic),
            ("attempts_topic", self.attempts_topic),
            ("status_topic", self.status_topic),
            ("recoveries_topic", self.recoveries_topic),
            *(("retry_topic_prefix", topic) for topic in self.retry_topics),
        ]
        seen: dict[str, str] = {}
        for setting, topic in named:
            first = seen.setdefault(topic, setting)
            if first != setting:
                raise ConfigError(
                    f"{first} and {setting} name the same topic {topic!r}: each topic has one use"
                )

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def specs(cls) -> dict[str, SettingSpec]:
        """The declaration of every setting, by field name."""
        return {f.name: f.metadata["spec"] for f in dataclasses.fields(cls)}

    @classmethod
    def load(
        cls,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> Settings:
        """Read settings from ``env`` (default: the process environment), then apply overrides.

        ``overrides`` holds already-parsed values by field name (the CLI's flags); ``None``
        values are ignored so that an absent flag leaves the environment's value in place.
        ``defaults`` replaces the declared defaults of some settings (parsed values by field
        name): for a setting neither the environment nor a flag gives.
        """
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, value in (defaults or {}).items():
            if name not in cls.specs():
                raise ConfigError(f"unknown setting {name!r}")
            values[name] = value
        for name, spec in cls.specs().items():
            raw = source.get(spec.env)
            if raw is None:
                continue
            try:
                values[name] = spec.parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{spec.env}: {exc}") from None
        _warn_unknown(source)
        for name, value in (overrides or {}).items():
            if name not in cls.specs():
                raise ConfigError(f"unknown setting {name!r}")
            if value is not None and value != ():
                values[name] = value
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The ``BRIDGE_*`` variables that make :meth:`load` return these settings again (for
        starting a worker process with them); unset settings are left out."""
        env: dict[str, str] = {}
        for name, spec in self.specs().items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, tuple):
                env[spec.env] = ",".join(str(v) for v in value)
            elif isinstance(value, bool):
                env[spec.env] = "true" if value else "false"
            else:
                env[spec.env] = str(value)
        return env

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def on_embedded_broker(self, bootstrap_servers: str) -> Settings:
        """Development mode, for a process on the embedded broker at ``bootstrap_servers``
        (``webhook-bridge run`` and ``python -m bridge.api serve`` with no broker
        configured): endpoints on this machine over plain http are the point of it, so
        ``allow_http`` is on unless set, and loopback networks are allowed."""
        return self.replace(
            kafka_bootstrap_servers=bootstrap_servers,
            allow_http=True if self.allow_http is None else self.allow_http,
            allow_networks=(*self.allow_networks, *LOOPBACK_NETWORKS),
        )

    # -- derived values ------------------------------------------------------------------------
    @property
    def serves_api(self) -> bool:
        """The worker serves ``/v1`` (a role with the API and a token file)."""
        return self.role in ("api", "all") and self.api_tokens is not None

    @property
    def delivers(self) -> bool:
        """The worker consumes events and retries (roles deliver and all)."""
        return self.role in ("deliver", "all")

    @property
    def kafka_heartbeat_interval(self) -> float:
        """Seconds between the consumer's heartbeats: a quarter of the session timeout, at most
        one."""
        return min(1.0, self.kafka_session_timeout / 4)

    @property
    def web_url(self) -> str:
        """The worker's web server as a URL on this machine: ``web_host`` (an IPv6 address in
        brackets, every address, empty, as ``localhost``) and ``web_port``. Until 2026-12-07 an
        IPv6 host went in bare (``http://:::6066``), which Faust refused as the app's
        ``canonical_url``: a worker bound to ``::`` without ``advertised_url`` did not start."""
        host = self.web_host or "localhost"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.web_port}"

    @property
    def canonical_url(self) -> str:
        """Where other workers reach this one's web server (``advertised_url`` or
        :attr:`web_url`)."""
        return (self.advertised_url or self.web_url).rstrip("/")

    @property
    def embedded(self) -> bool:
        """True when no broker is configured and the embedded one is to be used."""
        return self.kafka_bootstrap_servers is None

    @property
    def source_topics(self) -> tuple[str, ...]:
        """Every topic the worker consumes platform events from, each once (one listed twice
        in ``extra_source_topics`` was counted twice in a recovery's total until 2026-12-06)."""
        return tuple(dict.fromkeys((self.events_topic, *self.extra_source_topics)))

    @property
    def plain_http_allowed(self) -> bool:
        """http:// endpoints are allowed when configured, else only on the embedded broker."""
        return self.embedded if self.allow_http is None else self.allow_http

    @property
    def retry_topics(self) -> tuple[str, ...]:
        """The retry topic of each schedule entry (tier), in order."""
        return tuple(
            f"{self.retry_topic_prefix}.{n}" for n in range(1, len(self.retry_schedule) + 1)
        )

    @property
    def resolved_data_dir(self) -> Path:
        """Faust's data directory."""
        if self.data_dir:
            return Path(self.data_dir)
        return Path(tempfile.gettempdir()) / "webhook-bridge" / self.group_id

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict, secrets replaced by ``"***"``, the credentials of URLs
        (``user:password@``) by ``***@`` and their queries by ``?***`` (a token may ride in
        one; until 2026-12-07 shown) (for logs and diagnostics)."""
        out: dict[str, Any] = {}
        for name, spec in self.specs().items():
            value = getattr(self, name)
            if spec.secret and value is not None:
                value = "***"
            elif isinstance(value, str):
                value = _shown_setting(value)
            elif isinstance(value, tuple) and all(isinstance(v, str) for v in value):
                value = tuple(_shown_setting(v) for v in value)
            out[name] = value
        return out

    def __repr__(self) -> str:
        # The secrets left out, as the dataclass's own repr did, and URLs without credentials.
        specs = self.specs()
        shown = (f"{k}={v!r}" for k, v in self.redacted().items() if not specs[k].secret)
        return f"Settings({', '.join(shown)})"


def _shown_setting(value: str) -> str:
    """A setting's text as logs show it: a URL without its credentials and query."""
    return for_logs(value) if "://" in value else without_userinfo(value)


def settings_of(sections: Iterable[Section]) -> list[str]:
    """The names of the settings in ``sections``, section by section in declaration order."""
    wanted = list(dict.fromkeys(sections))
    specs = Settings.specs()
    return [name for section in wanted for name, spec in specs.items() if spec.section is section]


def _shown_default(item: dataclasses.Field[Any]) -> str:
    spec: SettingSpec = item.metadata["spec"]
    default = item.default
    durations = spec.parse in (parse_duration, _positive_duration, parse_schedule)
    if isinstance(default, tuple):
        shown = ",".join(format_duration(v) if durations else str(v) for v in default)
    elif isinstance(default, bool):
        shown = "true" if default else "false"
    elif durations and isinstance(default, float):
        shown = format_duration(default)
    else:
        shown = "" if default is None else str(default)
    return f"`{shown}`" if shown else "(unset)"


def settings_reference() -> str:
    """docs/configuration.md's tables: one per section, every setting with its flag, variable
    and default."""
    fields = {item.name: item for item in dataclasses.fields(Settings)}
    parts: list[str] = []
    for section in Section:
        lines = [
            f"### {section.value}",
            "",
            "| setting | flag | environment variable | default | meaning |",
            "|---|---|---|---|---|",
        ]
        for name in settings_of([section]):
            spec: SettingSpec = fields[name].metadata["spec"]
            help_text = spec.help.replace("|", "\\|")
            lines.append(
                f"| `{name}` | `{spec.flag}` | `{spec.env}` | {_shown_default(fields[name])} "
                f"| {help_text} |"
            )
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def add_setting_flags(parser: Any, names: Sequence[str]) -> None:
    """Add the flags of the named settings to an ``argparse`` parser or argument group
    (dest = field name)."""
    specs = Settings.specs()
    for name in names:
        spec = specs[name]
        if spec.repeatable:
            parser.add_argument(
                spec.flag,
                dest=name,
                action="extend",
                type=spec.parse,
                help=f"{spec.help} [env {spec.env}] (repeatable, or comma-separated)",
            )
        else:
            parser.add_argument(
                spec.flag, dest=name, type=spec.parse, help=f"{spec.help} [env {spec.env}]"
            )


def add_section_flags(
    parser: Any, sections: Iterable[Section], *, without: Iterable[str] = ()
) -> list[str]:
    """Add the flags of every setting in ``sections`` but those named in ``without`` to an
    ``argparse`` parser, one argument group per section; returns the names of those settings
    (for :func:`overrides_from_args`)."""
    left_out = set(without)
    unknown = left_out - set(Settings.specs())
    if unknown:
        raise ValueError(f"no such setting: {', '.join(sorted(unknown))}")
    names: list[str] = []
    for section in dict.fromkeys(sections):
        members = [name for name in settings_of([section]) if name not in left_out]
        add_setting_flags(parser.add_argument_group(f"{section.value} settings"), members)
        names.extend(members)
    return names


def overrides_from_args(args: Any, names: Sequence[str]) -> dict[str, Any]:
    """Collect parsed flag values for :meth:`Settings.load`."""
    out: dict[str, Any] = {}
    for name in names:
        value = getattr(args, name, None)
        if isinstance(value, list):
            value = tuple(v for v in value if v)
        out[name] = value
    return out


#: Variables renamed, with their new names (the old ones are not read).
RENAMED = {"BRIDGE_RECOVERY_SHARE": "BRIDGE_API_SCAN_SHARE"}


def _warn_unknown(source: Mapping[str, str]) -> None:
    """Log the ``BRIDGE_*`` variables that name no setting (their names, never values): a
    misspelt or renamed one was ignored in silence, leaving the default in force."""
    prefix = "BRIDGE_"
    known = {spec.env.removeprefix(prefix) for spec in Settings.specs().values()}
    unknown = sorted(n for n in source if n.startswith(prefix) and n[len(prefix) :] not in known)
    for name in unknown:
        close = difflib.get_close_matches(name[len(prefix) :], known, n=1, cutoff=0.75)
        meant = RENAMED.get(name) or (prefix + close[0] if close else None)
        log.warning(
            "environment variable %s names no setting and is ignored%s",
            name,
            f" (did you mean {meant}?)" if meant else "",
        )
