"""The management commands' client of ``/v1``, for ``--api-url``: answers, or one-line errors.

A ``503`` (the workers rebalancing, with ``Retry-After``) and a request that got no answer are
sent again, a few times within :data:`RETRY_FOR` seconds; a ``POST`` carries an
``Idempotency-Key`` (the same one each time), so a recovery or redelivery whose first answer was
lost is started once (:mod:`bridge.api.idempotency`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from bridge.errors import ConfigError

__all__ = ["ApiClient", "RETRY_FOR", "MAX_RETRY_AFTER"]

#: Seconds within which a 503 or an unanswered request is sent again.
RETRY_FOR = 10.0
#: The longest ``Retry-After`` waited for between two tries (seconds).
MAX_RETRY_AFTER = 5.0


class ApiClient:
    """Calls one worker's ``/v1`` with a bearer token. A problem answer (RFC 9457) or an
    unreachable API becomes a :class:`ConfigError` carrying the problem's title and detail
    (never the token)."""

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        timeout: float = 30.0,
        retry_for: float = RETRY_FOR,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if token is None:
            raise ConfigError("--api-url needs a token: set BRIDGE_API_TOKEN (or --api-token)")
        self._client = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            trust_env=False,
            transport=transport,
        )
        self._retry_for = retry_for
        self._sleep = sleep

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        return self._answer(lambda: self._client.get(path, params=dict(params or {})))

    def post(
        self,
        path: str,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        key = {"Idempotency-Key": str(uuid.uuid4())}
        return self._answer(
            lambda: self._client.post(
                path, json=dict(body or {}), params=dict(params or {}), headers=key
            )
        )

    def _answer(self, call: Callable[[], httpx.Response]) -> Any:
        response = self._tried(call)
        if response.status_code >= 400:
            try:
                problem = response.json()
                what = f"{problem.get('title', '')}: {problem.get('detail', '')}".strip(": ")
            except ValueError:
                what = response.reason_phrase
            raise ConfigError(f"the API answered {response.status_code}: {what}")
        return response.json()

    def _tried(self, call: Callable[[], httpx.Response]) -> httpx.Response:
        """``call``'s response, sent again after a 503 or without an answer while
        :data:`RETRY_FOR` lasts (a connection refused or a response lost alike: every request
        sent is a read or carries its key)."""
        deadline = time.monotonic() + self._retry_for
        while True:
            try:
                response = call()
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                if time.monotonic() >= deadline:
                    raise ConfigError(f"the API did not answer: {type(exc).__name__}") from None
                self._sleep(1.0)
                continue
            except httpx.HTTPError as exc:  # not worth a second try (a URL it cannot use)
                raise ConfigError(f"the API did not answer: {type(exc).__name__}") from None
            if response.status_code != 503 or time.monotonic() >= deadline:
                return response
            self._sleep(_retry_after(response))

    def finished(self, operation: Mapping[str, Any], *, timeout: float = 3600.0) -> Any:
        """Poll a recovery until it is no longer running; its final view."""
        deadline = time.monotonic() + timeout
        current: Any = operation
        while current.get("state") == "running":
            if time.monotonic() > deadline:
                raise ConfigError(f"recovery {current.get('id')} still running after {timeout}s")
            time.sleep(0.5)
            current = self.get(f"/v1/recoveries/{current['id']}")
        return current


def _retry_after(response: httpx.Response) -> float:
    """The response's ``Retry-After`` in seconds (1 when absent or not a number of seconds),
    at most :data:`MAX_RETRY_AFTER`."""
    try:
        seconds = float(response.headers.get("Retry-After", "1"))
    except ValueError:
        seconds = 1.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)
