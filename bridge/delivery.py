"""Sending one delivery attempt over HTTP and classifying what came back."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import httpx

from . import standard_webhooks
from .events import Event, format_timestamp
from .retry_policy import parse_retry_after
from .signing import sign
from .ssrf import AddressPolicy, DestinationForbidden, check_url, guarded_transport
from .subscriptions import Webhook

__all__ = [
    "USER_AGENT",
    "Delivery",
    "AttemptResult",
    "Sender",
    "DeliverySender",
    "build_headers",
    "is_success",
    "status_class",
    "new_client",
]

#: The documented spelling.
USER_AGENT = "Position-Webhooks/1.0"


@dataclass(frozen=True)
class Delivery:
    """One event for one webhook, ready to send."""

    delivery_id: str
    webhook: Webhook = field(repr=False)
    event_id: str
    event_type: str
    #: The exact body bytes; the signature is computed over these at send time.
    body: bytes = field(repr=False)
    #: When the event happened (its ``timestamp``), for end-to-end latency.
    occurred_at: datetime | None = None
    #: The event itself, for dead letters.
    event: Event | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class AttemptResult:
    """What one HTTP attempt produced. Contains no secret and no body."""

    #: True when the response counts as an acknowledgement.
    success: bool
    #: HTTP status, or ``None`` when no response arrived.
    status: int | None
    #: Error class when no response arrived or it did not count: ``timeout``, ``connect_error``,
    #: ``tls_error``, ``protocol_error``, ``redirect``, ``http_status``; ``None`` on success.
    error: str | None
    #: Seconds from sending to the end of the response (or the failure).
    duration: float
    #: When the attempt started (UTC, ``Z``).
    at: str
    #: Seconds a ``Retry-After`` header asked for (429 and 503 answers), if any.
    retry_after: float | None = None
    #: For ``destination_forbidden``: why (``loopback``, ``private``, ``plain_http`` ...).
    refusal: str | None = None

    def as_record(self) -> dict[str, object]:
        return {
            "at": self.at,
            "status": self.status,
            "error": self.error,
            "duration_seconds": round(self.duration, 6),
        }


class DeliverySender(Protocol):
    """What sends one attempt: :class:`Sender` (httpx) or ``AiohttpSender`` (the hot path)."""

    async def send(self, delivery: Delivery) -> AttemptResult: ...

    async def aclose(self) -> None: ...


def is_success(status: int, *, any_2xx: bool = False) -> bool:
    """Only 200 acknowledges a delivery, unless the operator widened it to any 2xx."""
    return status == 200 or (any_2xx and 200 <= status < 300)


def status_class(status: int | None) -> str:
    """``2xx`` … ``5xx``, or ``none`` when no response arrived (a bounded metric label)."""
    if status is None:
        return "none"
    if 100 <= status < 600:
        return f"{status // 100}xx"
    return "other"


def build_headers(delivery: Delivery, now: datetime | None = None) -> dict[str, str]:
    """The documented headers, signed with the webhook's current secret; for webhooks that opted
    in, the Standard Webhooks headers too (both secrets during a rotation overlap)."""
    headers = {
        "Content-Type": "application/json",
        "X-Webhook-Signature": sign(delivery.webhook.secret, delivery.body),
        "X-Webhook-Event": delivery.event_type,
        "X-Webhook-Delivery": delivery.delivery_id,
        "User-Agent": USER_AGENT,
    }
    if delivery.webhook.standard_webhooks:
        moment = now or datetime.now(UTC)
        headers.update(
            standard_webhooks.headers(
                delivery.delivery_id,
                int(moment.timestamp()),
                delivery.body,
                delivery.webhook.signing_secrets(moment),
            )
        )
    return headers


def new_client(
    timeout: float,
    max_connections: int,
    *,
    policy: AddressPolicy | None = None,
    ca_bundle: str | None = None,
) -> httpx.AsyncClient:
    """The one shared client: keep-alive pooling, no redirects, TLS verification always on.

    Every connection goes through the SSRF guard (``policy``), which connects to the address it
    checked; without a policy (unit tests only) nothing is checked.
    """
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=30.0,
    )
    transport = guarded_transport(
        policy if policy is not None else AddressPolicy(enabled=False),
        verify=ca_bundle or True,
        limits=limits,
    )
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        transport=transport,
        follow_redirects=False,
        trust_env=False,
    )


def _error_class(exc: BaseException) -> str:
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ssl.SSLError) or "SSL" in type(cause).__name__:
            return "tls_error"
        return "connect_error"
    if isinstance(exc, httpx.RemoteProtocolError | httpx.LocalProtocolError):
        return "protocol_error"
    if isinstance(exc, httpx.NetworkError):
        return "network_error"
    return "request_error"


class Sender:
    """Posts deliveries with one shared ``httpx.AsyncClient`` (the reference sender; the worker's
    hot path uses :class:`bridge.aiohttp_sender.AiohttpSender`, which behaves the same)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        timeout: float,
        any_2xx: bool = False,
        allow_http: bool = True,
        policy: AddressPolicy | None = None,
        clock: Callable[[], float] = time.perf_counter,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._client = client
        self._timeout = timeout
        self._any_2xx = any_2xx
        self._allow_http = allow_http
        self._policy = policy
        self._clock = clock
        self._wall_clock = wall_clock

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, delivery: Delivery) -> AttemptResult:
        """One attempt; never raises for what the endpoint or the network does."""
        now = self._wall_clock()
        at = format_timestamp(now)
        started = self._clock()
        try:
            check_url(delivery.webhook.url, allow_http=self._allow_http, policy=self._policy)
            headers = build_headers(delivery, now)
            # The client's timeout applies per phase; this one bounds the whole request, as the
            # documentation promises ("We will time out requests after 30 seconds").
            async with asyncio.timeout(self._timeout):
                response = await self._client.post(
                    delivery.webhook.url, content=delivery.body, headers=headers
                )
                await response.aread()
        except DestinationForbidden as exc:
            return refused(exc, duration=self._clock() - started, at=at)
        except (httpx.HTTPError, TimeoutError, OSError, ssl.SSLError) as exc:
            return AttemptResult(False, None, _error_class(exc), self._clock() - started, at)
        return answered(
            response.status_code,
            response.headers.get("Retry-After"),
            duration=self._clock() - started,
            at=at,
            wall_clock=self._wall_clock,
            any_2xx=self._any_2xx,
        )


def answered(
    status: int,
    retry_after_header: str | None,
    *,
    duration: float,
    at: str,
    wall_clock: Callable[[], datetime],
    any_2xx: bool,
) -> AttemptResult:
    """The result of an attempt that got a response (shared by every sender). ``wall_clock``
    is read only to turn a ``Retry-After`` date into seconds."""
    if is_success(status, any_2xx=any_2xx):
        return AttemptResult(True, status, None, duration, at)
    error = "redirect" if 300 <= status < 400 else "http_status"
    retry_after = (
        parse_retry_after(retry_after_header, wall_clock()) if status in (429, 503) else None
    )
    return AttemptResult(False, status, error, duration, at, retry_after)


def refused(exc: DestinationForbidden, *, duration: float, at: str) -> AttemptResult:
    """The result of an attempt the SSRF guard refused before connecting."""
    return AttemptResult(
        False, None, "destination_forbidden", duration, at, refusal=exc.classification
    )
