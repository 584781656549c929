"""What a sender is given and returns: one signed attempt, its documented headers and outcome."""

from __future__ import annotations

import codecs
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from bridge.contract import standard_webhooks
from bridge.contract.events import format_timestamp
from bridge.contract.signing import sign
from bridge.delivery.job import Job
from bridge.delivery.retry_policy import parse_retry_after
from bridge.http.http1 import Answer
from bridge.http.ssrf import AddressPolicy, DestinationForbidden, check_url
from bridge.memo import Remembered

__all__ = [
    "USER_AGENT",
    "AttemptResult",
    "DeliverySender",
    "is_success",
    "status_class",
    "build_headers",
    "ErrorTable",
    "classify",
    "SenderBase",
    "answered",
    "refused",
]


#: The documented spelling.
USER_AGENT = "Position-Webhooks/1.0"


@dataclass(frozen=True)
class AttemptResult:
    """What one HTTP attempt produced. Contains no secret, and nothing of the response's body
    but its size, unless the sender was told to keep its first bytes (``response_prefix``)."""

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
    #: Seconds a ``Retry-After`` header asked for (429 and 503 answers), if any; for a
    #: ``circuit_open`` skip, the seconds until the circuit lets a probe through.
    retry_after: float | None = None
    #: For ``destination_forbidden``: why (``loopback``, ``private``, ``plain_http`` ...).
    refusal: str | None = None
    #: Body bytes read, up to the cap on what is read of a response
    #: (:data:`bridge.http.http1.MAX_RESPONSE`, the head counted too); ``None`` when no
    #: response arrived.
    response_bytes: int | None = None
    #: True when the cap ended the body: ``response_bytes`` is what was read, not its length.
    response_truncated: bool = False
    #: The body's first bytes, only when the sender keeps them (``attempt_response_prefix_bytes``);
    #: never in :meth:`as_record` (retries and dead letters), never logged.
    response_prefix: bytes | None = field(default=None, repr=False)

    @property
    def response_text(self) -> str | None:
        """:attr:`response_prefix` as text: UTF-8, each invalid byte replaced by U+FFFD, a
        character cut by the prefix's end left out, and never more bytes (as UTF-8) than the
        prefix had: a replacement character takes 3 bytes, so text of invalid bytes is shortened
        to fit. Control characters are kept (whatever shows the text must escape them)."""
        prefix = self.response_prefix
        if prefix is None:
            return None
        # Not final: an incomplete character at the end stays in the decoder, left out.
        text = codecs.getincrementaldecoder("utf-8")("replace").decode(prefix)
        encoded = text.encode("utf-8")
        if len(encoded) > len(prefix):
            text = encoded[: len(prefix)].decode("utf-8", "ignore")
        return text

    def as_record(self) -> dict[str, object]:
        return {
            "at": self.at,
            "status": self.status,
            "error": self.error,
            "duration_seconds": round(self.duration, 6),
        }


class DeliverySender(Protocol):
    """What sends one attempt: :class:`~bridge.http.httpx_sender.HttpxSender` or ``Http1Sender``."""

    async def send(self, job: Job, body: bytes) -> AttemptResult: ...

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


def build_headers(job: Job, body: bytes, now: datetime | None = None) -> dict[str, str]:
    """The documented headers, signed with the webhook's current secret; for webhooks that opted
    in, the Standard Webhooks headers too (both secrets during a rotation overlap)."""
    headers = {
        "Content-Type": "application/json",
        "X-Webhook-Signature": sign(job.webhook.secret, body),
        "X-Webhook-Event": job.event.type,
        "X-Webhook-Delivery": job.delivery_id,
        "User-Agent": USER_AGENT,
    }
    if job.webhook.standard_webhooks:
        moment = now or datetime.now(UTC)
        headers.update(
            standard_webhooks.headers(
                job.delivery_id,
                int(moment.timestamp()),
                body,
                job.webhook.signing_secrets(moment),
            )
        )
    return headers


#: How a sender's failures are classed: ``(exception type, error class)`` pairs; the first
#: that the exception, or one it was raised from or while handling, is an instance of gives
#: the class. (httpx raises its error from httpcore's, which httpcore's pool re-raises
#: ``from None`` while handling the ``ssl`` or ``OSError`` one: the chain is followed through
#: ``__context__`` even when a traceback would hide it.)
ErrorTable = tuple[tuple[type[BaseException], str], ...]


def classify(exc: BaseException, table: ErrorTable) -> str | None:
    """The error class ``table`` gives ``exc``, or ``None`` when it names no failure."""
    chain = [exc]
    while len(chain) < 8:
        last = chain[-1]
        link = last.__cause__ or last.__context__
        if link is None:
            break
        chain.append(link)
    for kind, error in table:
        if any(isinstance(link, kind) for link in chain):
            return error
    return None


class SenderBase:
    """What every sender shares: the attempt's clocks, the SSRF check of the URL (its verdict
    remembered per URL), the documented headers, and turning what came back into an
    :class:`AttemptResult`. A sender implements ``_post`` (send, return the
    :data:`~bridge.http.http1.Answer`: status, ``Retry-After`` header, what was read of the
    body) and ``aclose``, and declares in ``_errors`` the exceptions that mean the endpoint or
    the network failed, with their error class."""

    #: An attempt's failures, not bugs, by error class (read by :func:`classify` in ``send``);
    #: any other exception propagates.
    _errors: ErrorTable = ((TimeoutError, "timeout"), (OSError, "network_error"))

    def __init__(
        self,
        *,
        timeout: float,
        any_2xx: bool,
        allow_http: bool,
        policy: AddressPolicy | None,
        clock: Callable[[], float],
        wall_clock: Callable[[], datetime],
        response_prefix: int = 0,
    ) -> None:
        self._timeout = timeout
        #: Body bytes of each response to keep in the result (0: none, nothing copied).
        self._response_prefix = response_prefix
        self._any_2xx = any_2xx
        self._allow_http = allow_http
        self._policy = policy
        self._clock = clock
        self._wall_clock = wall_clock
        #: check_url's verdict per URL (it depends only on the URL and fixed settings).
        self._checked = Remembered(self._verdict)

    def _verdict(self, url: str) -> DestinationForbidden | None:
        try:
            check_url(url, allow_http=self._allow_http, policy=self._policy)
        except DestinationForbidden as exc:
            return exc.with_traceback(None)
        return None

    def _check(self, url: str) -> None:
        refusal = self._checked(url)
        if refusal is not None:
            # A new exception each time: the remembered one raised again kept every refused
            # delivery's frames, and its body, on its traceback (65 KiB a delivery of 64 KiB,
            # until 2026-12-06).
            raise DestinationForbidden(
                refusal.detail, host=refusal.host, classification=refusal.classification
            )

    async def _post(self, job: Job, body: bytes, headers: dict[str, str]) -> Answer:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def send(self, job: Job, body: bytes) -> AttemptResult:
        """One attempt to POST ``body`` (built for ``job``), signed now; never raises for what the
        endpoint or the network does."""
        now = self._wall_clock()
        at = format_timestamp(now)
        started = self._clock()
        try:
            self._check(job.webhook.url)
            answer = await self._post(job, body, build_headers(job, body, now))
        except DestinationForbidden as exc:
            return refused(exc, duration=self._clock() - started, at=at)
        except Exception as exc:
            error = classify(exc, self._errors)
            if error is None:
                raise
            return AttemptResult(False, None, error, self._clock() - started, at)
        return answered(
            answer,
            duration=self._clock() - started,
            at=at,
            wall_clock=self._wall_clock,
            any_2xx=self._any_2xx,
        )


def answered(
    answer: Answer,
    *,
    duration: float,
    at: str,
    wall_clock: Callable[[], datetime],
    any_2xx: bool,
) -> AttemptResult:
    """The result of an attempt that got a response (shared by every sender). ``wall_clock``
    is read only to turn a ``Retry-After`` date into seconds."""
    status, retry_after_header, body_bytes, cut, prefix = answer
    if is_success(status, any_2xx=any_2xx):
        return AttemptResult(
            True,
            status,
            None,
            duration,
            at,
            response_bytes=body_bytes,
            response_truncated=cut,
            response_prefix=prefix,
        )
    error = "redirect" if 300 <= status < 400 else "http_status"
    retry_after = (
        parse_retry_after(retry_after_header, wall_clock()) if status in (429, 503) else None
    )
    return AttemptResult(
        False,
        status,
        error,
        duration,
        at,
        retry_after,
        response_bytes=body_bytes,
        response_truncated=cut,
        response_prefix=prefix,
    )


def refused(exc: DestinationForbidden, *, duration: float, at: str) -> AttemptResult:
    """The result of an attempt the SSRF guard refused before connecting."""
    return AttemptResult(
        False, None, "destination_forbidden", duration, at, refusal=exc.classification
    )
