"""Objects built from settings: Kafka client arguments, the SSRF policy, the secrets keyring."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bridge.config import Settings
from bridge.errors import ConfigError, MissingTopic
from bridge.http.ssrf import AddressPolicy, check_url
from bridge.kafka import aiokafka_patches
from bridge.subscriptions.secretbox import Keyring
from bridge.subscriptions.urls import WebhookUrl

__all__ = [
    "RECORD_DUMPING_LOGGERS",
    "KafkaClient",
    "START_GRACE",
    "started",
    "stopped",
    "client_kwargs",
    "new_consumer",
    "faust_broker_kwargs",
    "bootstrap_servers",
    "address_policy",
    "warn_if_unguarded",
    "endpoint_check",
    "keyring",
    "require_topics",
]


#: aiokafka's loggers whose DEBUG lines hold whole requests, responses and records: a webhook's
#: secret (a record of the subscriptions topic without a keyring), the SASL password. Their DEBUG
#: lines are dropped whatever the log level (a filter, which leaves their level alone): a secret
#: is never printed.
RECORD_DUMPING_LOGGERS = ("aiokafka.conn", "aiokafka.producer.producer")


log = logging.getLogger(__name__)


class _NoDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


for _name in RECORD_DUMPING_LOGGERS:
    logging.getLogger(_name).addFilter(_NoDebug())


class KafkaClient(Protocol):
    """What aiokafka's producers and consumers have in common here (its admin client closes
    with ``close()`` instead)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


_Client = TypeVar("_Client", bound=KafkaClient)


#: How long a start whose task is cancelled meanwhile is let go on before it is cancelled too:
#: aiokafka's bootstrap, cancelled while it waits for the broker's metadata, leaves that
#: connection open and referenced by nothing (collected with a ``ResourceWarning``, its socket
#: open until then), where a bootstrap that ends keeps or closes it. Against a broker that
#: answers, a start takes milliseconds.
START_GRACE = 5.0


async def started(client: _Client) -> _Client:
    """``client``, started; stopped again when its start fails or is cancelled (a client whose
    start did not finish keeps its connections open, and aiokafka warns when it is collected).

    When the task awaiting it is cancelled, the start is let finish (at most
    :data:`START_GRACE` seconds) before the client is stopped and the cancellation goes on.
    """
    starting = asyncio.ensure_future(client.start())
    try:
        await asyncio.shield(starting)
    except asyncio.CancelledError:
        await _let_finish(starting, START_GRACE)
        await stopped(client)
        raise
    except BaseException:
        await stopped(client)
        raise
    return client


async def _let_finish(task: asyncio.Future[None], timeout: float) -> None:
    """Wait up to ``timeout`` seconds for ``task`` (less if the waiting task is cancelled
    again), then cancel it if it has not ended, and wait for it to end."""
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait([task], timeout=timeout)
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([task])
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: a failed start is the stop's to clean up, not a log line


async def stopped(client: KafkaClient) -> None:
    """Stop ``client``, to the end even when the task awaiting it is cancelled meanwhile (a stop
    under way when a worker shuts down is not left half done)."""
    stopping = asyncio.ensure_future(client.stop())
    try:
        await asyncio.shield(stopping)
    except asyncio.CancelledError:
        await asyncio.wait([stopping])
        raise


def warn_if_unguarded(settings: Settings) -> None:
    """Log, as a worker or ``serve`` starts, that the SSRF guard is off."""
    if not settings.ssrf_guard:
        log.warning(
            "the SSRF guard is off (ssrf_guard false): deliveries may reach loopback, private "
            "and link-local addresses, cloud metadata services included"
        )


def address_policy(settings: Settings) -> AddressPolicy:
    """The SSRF guard's policy: on unless disabled, with the configured allow-list."""
    return AddressPolicy.from_setting(
        ",".join(settings.allow_networks), enabled=settings.ssrf_guard
    )


def endpoint_check(settings: Settings) -> Callable[[str], WebhookUrl]:
    """How workers of ``settings`` judge a webhook URL a client sends (``/v1``, the CLI):
    :func:`~bridge.http.ssrf.check_url` with their plain-http rule and SSRF policy, the
    verdict not remembered."""

    def check(url: str) -> WebhookUrl:
        return check_url(url, allow_http=allow_http, policy=policy, remember=False)

    allow_http, policy = settings.plain_http_allowed, address_policy(settings)
    return check


def keyring(settings: Settings) -> Keyring | None:
    """The keys that encrypt webhook secrets in Kafka, when configured."""
    return Keyring.from_setting(settings.secret_keys) if settings.secret_keys else None


def bootstrap_servers(settings: Settings) -> str:
    if settings.kafka_bootstrap_servers is None:
        raise ConfigError("no Kafka bootstrap servers configured")
    return settings.kafka_bootstrap_servers


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.kafka_security_protocol.endswith("SSL"):
        return None
    context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
    if settings.kafka_ssl_certfile:
        context.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile)
    return context


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for aiokafka clients (producer, consumer, admin)."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers(settings),
        "security_protocol": settings.kafka_security_protocol,
    }
    context = _ssl_context(settings)
    if context is not None:
        kwargs["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL_"):
        kwargs["sasl_mechanism"] = settings.kafka_sasl_mechanism
        kwargs["sasl_plain_username"] = settings.kafka_sasl_username
        kwargs["sasl_plain_password"] = settings.kafka_sasl_password
    return kwargs


def new_consumer(settings: Settings, **kwargs: Any) -> AIOKafkaConsumer:
    """An aiokafka consumer of ``settings``' brokers (:func:`client_kwargs` and ``kwargs``),
    aiokafka's record reader patched first (:mod:`bridge.kafka.aiokafka_patches`: a header key
    that is not UTF-8 raised out of every read of its batch). Every consumer of the bridge's
    own is made here; the Faust worker's get the patch from its installer."""
    aiokafka_patches.install()
    return AIOKafkaConsumer(**client_kwargs(settings), **kwargs)


def faust_broker_kwargs(settings: Settings) -> dict[str, Any]:
    """``broker`` and ``broker_credentials`` for ``faust.App``."""
    import faust

    urls = ";".join(f"kafka://{host}" for host in bootstrap_servers(settings).split(","))
    credentials: Any = None
    context = _ssl_context(settings)
    if settings.kafka_security_protocol.startswith("SASL_"):
        credentials = faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password,
            ssl_context=context,
            mechanism=settings.kafka_sasl_mechanism or "PLAIN",
        )
    elif context is not None:
        credentials = faust.SSLCredentials(context)
    out: dict[str, Any] = {"broker": urls}
    if credentials is not None:
        out["broker_credentials"] = credentials
    return out


async def require_topics(producer: AIOKafkaProducer, topics: Iterable[str]) -> None:
    """:class:`~bridge.errors.MissingTopic` for the first of ``topics`` that is not on the
    brokers, asked of them for every topic (a request naming a missing topic creates it on a
    broker with ``auto.create.topics.enable``: until 2026-12-07 a management command given a
    misspelt topic made one, of the broker's default shape, and wrote to it)."""
    cluster = await producer.client.fetch_all_metadata()
    known = cluster.topics()
    for topic in topics:
        if topic not in known:
            raise MissingTopic(topic)
