"""The management commands' client of ``/v1``, for ``--api-url``: answers, or one-line errors."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import httpx

from bridge.errors import ConfigError

__all__ = ["ApiClient"]


class ApiClient:
    """Calls one worker's ``/v1`` with a bearer token. A problem answer (RFC 9457) or an
    unreachable API becomes a :class:`ConfigError` carrying the problem's title and detail
    (never the token)."""

    def __init__(self, url: str, token: str | None, *, timeout: float = 30.0) -> None:
        if token is None:
            raise ConfigError("--api-url needs a token: set BRIDGE_API_TOKEN (or --api-token)")
        self._client = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            trust_env=False,
        )

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
        return self._answer(
            lambda: self._client.post(path, json=dict(body or {}), params=dict(params or {}))
        )

    def _answer(self, call: Any) -> Any:
        try:
            response: httpx.Response = call()
        except httpx.HTTPError as exc:
            raise ConfigError(f"the API did not answer: {type(exc).__name__}") from None
        if response.status_code >= 400:
            try:
                problem = response.json()
                what = f"{problem.get('title', '')}: {problem.get('detail', '')}".strip(": ")
            except ValueError:
                what = response.reason_phrase
            raise ConfigError(f"the API answered {response.status_code}: {what}")
        return response.json()

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
