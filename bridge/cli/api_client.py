"""The management commands' client of ``/v1``, for ``--api-url``: answers, or one-line errors.

A ``503`` (the workers rebalancing, with ``Retry-After``) and a request that got no answer are
sent again, a few times within :data:`RETRY_FOR` seconds; a ``POST`` carries an
``Idempotency-Key`` (the same one each time), so a recovery or redelivery whose first answer was
lost is started once (:mod:`bridge.api.idempotency`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from bridge.errors import ConfigError
from bridge.paths import path_segment

__all__ = [
    "ApiClient",
    "FOLLOW_PATIENCE",
    "RETRY_FOR",
    "MAX_RETRY_AFTER",
    "MAX_ANSWER_BYTES",
    "MAX_PAGES",
]

#: Seconds within which a 503 or an unanswered request is sent again.
RETRY_FOR = 10.0
#: The longest ``Retry-After`` waited for between two tries (seconds).
MAX_RETRY_AFTER = 5.0


#: The largest answer read (bytes): a page of 1,000 attempts with their response prefixes is
#: about 2 MB; a server sending more is not the API (until 2026-12-07 a 100 MB answer was read
#: whole).
MAX_ANSWER_BYTES = 16 * 1024 * 1024
#: Pages of a list read at most (``webhooks recoveries``): a server giving cursors for ever
#: is not the API either.
MAX_PAGES = 1000
#: Seconds a recovery is followed (:meth:`ApiClient.finished`) while its view does not change,
#: or while the API does not answer, before the command gives up on following it (the
#: recovery goes on). Until 2026-12-07 a recovery was followed 3,600 s in all (one of more
#: than 3,600 events at ``--rate 1`` was given up on while it ran) and a worker's restart
#: ended the command within :data:`RETRY_FOR`, the recovery running on, its id never shown.
FOLLOW_PATIENCE = 300.0


class _Unanswered(ConfigError):
    """No answer from the API within :data:`RETRY_FOR` (none, or ``503``s)."""


class ApiClient:
    """Calls one worker's ``/v1`` with a bearer token. A problem answer (RFC 9457), an answer
    that is not the API's (not JSON, a redirect, over :data:`MAX_ANSWER_BYTES`, longer than
    ``timeout`` in coming) or an unreachable API becomes a :class:`ConfigError` carrying the
    problem's title and detail (never the token)."""

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        timeout: float = 30.0,
        retry_for: float = RETRY_FOR,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if token is None:
            raise ConfigError("--api-url needs a token: set BRIDGE_API_TOKEN (or --api-token)")
        if not token or not all("!" <= c <= "~" for c in token):
            # (until 2026-12-07 a token with a letter past ASCII was a traceback)
            raise ConfigError("the API token is not one: printable ASCII, no spaces")
        try:
            self._client = httpx.Client(
                base_url=url.rstrip("/"),
                # Not compressed: what is read is what is counted.
                headers={"Authorization": f"Bearer {token}", "Accept-Encoding": "identity"},
                timeout=timeout,
                trust_env=False,
                transport=transport,
            )
        except (httpx.InvalidURL, ValueError, TypeError):
            raise ConfigError("--api-url is not a URL (http://HOST:PORT)") from None
        self._timeout = timeout
        self._retry_for = retry_for
        self._clock = clock
        self._sleep = sleep

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        return self._answer(lambda: self._fetch("GET", path, params=dict(params or {})))

    def post(
        self,
        path: str,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        key = {"Idempotency-Key": str(uuid.uuid4())}
        return self._answer(
            lambda: self._fetch(
                "POST", path, json=dict(body or {}), params=dict(params or {}), headers=key
            )
        )

    def pages(self, path: str, params: Mapping[str, str]) -> list[Any]:
        """Every item of a cursor-paginated list, page after page; a cursor given again, or
        more than :data:`MAX_PAGES` pages, is an error (until 2026-12-07 a server repeating its
        cursor was asked for ever)."""
        items: list[Any] = []
        query = dict(params)
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            answer = self.get(path, query)
            items += answer["items"]
            cursor = answer["next_cursor"]
            if cursor is None:
                return items
            if not isinstance(cursor, str) or cursor in seen:
                raise ConfigError("the API gave a cursor it had given before")
            seen.add(cursor)
            query["cursor"] = cursor
        raise ConfigError(f"the list is longer than {MAX_PAGES} pages")

    def _fetch(self, method: str, path: str, **kwargs: Any) -> _Answer:
        """One request and its whole answer, read within ``timeout`` and
        :data:`MAX_ANSWER_BYTES` (a server sending a byte every few seconds held a command
        for ever, until 2026-12-07: httpx's timeout is per read)."""
        deadline = time.monotonic() + self._timeout
        with self._client.stream(method, path, **kwargs) as response:
            encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise ConfigError(
                    f"the API answered {response.status_code} in an encoding not asked for"
                )
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    raise ConfigError(
                        f"the API's answer is over {MAX_ANSWER_BYTES // (1024 * 1024)} MiB"
                    )
                if time.monotonic() > deadline:
                    raise ConfigError(f"the API's answer took over {self._timeout:g}s")
            return _Answer(
                response.status_code, response.reason_phrase, _retry_after(response), bytes(body)
            )

    def _answer(self, call: Callable[[], _Answer]) -> Any:
        answer = self._tried(call)
        if answer.status == 503:
            raise _Unanswered(f"the API answered 503: {answer.problem()}")
        if answer.status >= 400:
            raise ConfigError(f"the API answered {answer.status}: {answer.problem()}")
        if answer.status >= 300:
            raise ConfigError(
                f"the API answered {answer.status}, a redirect, not followed: is --api-url "
                "the workers' address?"
            )
        try:
            return json.loads(answer.body)
        except ValueError:
            raise ConfigError(f"the API answered {answer.status} with something not JSON") from None

    def _tried(self, call: Callable[[], _Answer]) -> _Answer:
        """``call``'s answer, sent again after a 503 or without an answer while
        :data:`RETRY_FOR` lasts (a connection refused or a response lost alike: every request
        sent is a read or carries its key)."""
        deadline = self._clock() + self._retry_for
        while True:
            try:
                answer = call()
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                if self._clock() >= deadline:
                    raise _Unanswered(f"the API did not answer: {type(exc).__name__}") from None
                self._sleep(1.0)
                continue
            except httpx.HTTPError as exc:  # not worth a second try (a URL it cannot use)
                raise ConfigError(f"the API did not answer: {type(exc).__name__}") from None
            except httpx.InvalidURL:  # (not an HTTPError: until 2026-12-07 a traceback)
                raise ConfigError(
                    "no request made: its URL is too long or not one (an id of thousands of "
                    "characters?)"
                ) from None
            if answer.status != 503 or self._clock() >= deadline:
                return answer
            self._sleep(answer.retry_after)

    def finished(self, operation: Mapping[str, Any], *, patience: float = FOLLOW_PATIENCE) -> Any:
        """Poll a recovery until it is no longer running; its final view. Followed while its
        view changes (its counts grow) or for ``patience`` seconds since it last did, through
        a worker's restart or a rebalance (no answer, ``503``) as long; past that, a
        :class:`ConfigError` saying the recovery may still be running and where to see it."""
        current: Any = _operation(operation)
        seen = dict(current)
        changed = self._clock()
        #: Why the last poll got no view (none while the API answers).
        unanswered: _Unanswered | None = None
        while current["state"] == "running":
            if self._clock() - changed > patience:
                if unanswered is not None:
                    raise ConfigError(
                        f"recovery {current['id']} may still be running ({unanswered}); "
                        "`webhook-bridge webhooks recoveries WEBHOOK_ID` shows it"
                    )
                raise ConfigError(
                    f"recovery {current['id']} still running, no change seen for {patience:g} s; "
                    "it goes on: `webhook-bridge webhooks recoveries WEBHOOK_ID` shows it"
                )
            self._sleep(0.5)
            try:
                view = self.get(f"/v1/recoveries/{path_segment(current['id'])}")
            except _Unanswered as exc:
                unanswered = exc
                continue
            unanswered = None
            current = _operation(view)
            if current != seen:
                seen = dict(current)
                changed = self._clock()
        return current


def _operation(answer: Any) -> Mapping[str, Any]:
    """``answer`` if it is a recovery's view (an id and a state), else the error saying so."""
    if (
        not isinstance(answer, Mapping)
        or not isinstance(answer.get("id"), str)
        or not isinstance(answer.get("state"), str)
    ):
        raise ConfigError("the API's answer is not a recovery")
    return answer


@dataclass(frozen=True)
class _Answer:
    """A response read whole."""

    status: int
    reason: str
    #: Seconds to wait before asking again after a 503 (:func:`_retry_after`).
    retry_after: float
    body: bytes

    def problem(self) -> str:
        """A problem answer's title and detail (its reason phrase when it has none)."""
        try:
            problem = json.loads(self.body)
        except ValueError:
            return self.reason
        if not isinstance(problem, dict):
            return self.reason
        parts = [problem.get("title"), problem.get("detail")]
        return ": ".join(str(part) for part in parts if part) or self.reason


def _retry_after(response: httpx.Response) -> float:
    """The response's ``Retry-After`` in seconds (1 when absent or not a number of seconds),
    at most :data:`MAX_RETRY_AFTER`."""
    try:
        seconds = float(response.headers.get("Retry-After", "1"))
    except ValueError:
        seconds = 1.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)
