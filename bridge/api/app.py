"""The aiohttp application of ``/v1``: the OpenAPI document and the webhook routes.

Handlers are thin: authenticate (:class:`~bridge.api.auth.TokenSet`), check the scope, read and
bound the input, call :class:`~bridge.api.service.WebhookService`, answer JSON. Every error is a
problem (:mod:`bridge.api.problems`), bad input always a ``4xx``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from aiohttp import web

from bridge.api.auth import Principal, Scope, TokenSet
from bridge.api.openapi import (
    DEFAULT_PAGE_LIMIT,
    MAX_PAGE_LIMIT,
    WEBHOOK_STATES,
    openapi_document,
)
from bridge.api.problems import (
    DEFAULT_MAX_BODY_BYTES,
    FieldError,
    Problem,
    problem_middleware,
    read_json_object,
)
from bridge.api.service import WebhookFilter, WebhookService, etag, public_view
from bridge.contract import jsoncanon
from bridge.contract.schemas import EVENT_TYPES
from bridge.subscriptions.webhook import Webhook

__all__ = ["DEFAULT_REQUEST_TIMEOUT", "ApiConfig", "create_app"]

#: How long a request may take before it is answered ``503`` (seconds).
DEFAULT_REQUEST_TIMEOUT = 10.0

_LIST_PARAMS = ("site_id", "user_id", "event_type", "state", "limit", "cursor")
_MAX_ID = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiConfig:
    """Limits of the API server."""

    #: The largest request body (bytes); larger ones are answered ``413``.
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: Seconds a request may take; then ``503`` with ``Retry-After``.
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT


def _json(
    value: Any, status: int = 200, *, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=jsoncanon.dumps(value),
        content_type="application/json",
        headers=dict(headers or {}),
    )


def _webhook_response(
    webhook: Webhook, status: int = 200, *, with_secret: bool = False, **headers: str
) -> web.Response:
    out = {"ETag": etag(webhook), **headers}
    if with_secret:
        out["Cache-Control"] = "no-store"
    return _json(public_view(webhook, with_secret=with_secret), status, headers=out)


class _Routes:
    def __init__(self, service: WebhookService, tokens: TokenSet, config: ApiConfig) -> None:
        self._service = service
        self._tokens = tokens
        self._config = config

    def _principal(self, request: web.Request, scope: Scope) -> Principal:
        principal = self._tokens.authenticate(request.headers.get("Authorization"))
        principal.require(scope)
        return principal

    async def _body(self, request: web.Request, *, optional: bool = False) -> dict[str, Any]:
        if optional and not request.body_exists:
            return {}
        return await read_json_object(request, max_bytes=self._config.max_body_bytes)

    @staticmethod
    def _webhook_id(request: web.Request) -> str:
        webhook_id = request.match_info["webhook_id"]
        if len(webhook_id) > _MAX_ID or "\x00" in webhook_id:
            raise Problem.invalid(
                FieldError("webhook_id", "invalid_id", "not a webhook id", "path")
            )
        return webhook_id

    async def openapi(self, request: web.Request) -> web.Response:
        return _json(openapi_document())

    async def list_webhooks(self, request: web.Request) -> web.Response:
        principal = self._principal(request, "read")
        query = _single_values(request)
        limit = _limit(query.get("limit"))
        event_type = query.get("event_type")
        state = query.get("state")
        errors: list[FieldError] = []
        if event_type is not None and event_type not in EVENT_TYPES:
            errors.append(FieldError("event_type", "enum", "not an event type", "query"))
        if state is not None and state not in WEBHOOK_STATES:
            errors.append(
                FieldError("state", "enum", f"expected one of {', '.join(WEBHOOK_STATES)}", "query")
            )
        for name in ("site_id", "user_id", "cursor"):
            value = query.get(name)
            if value is not None and not 0 < len(value) <= (2000 if name == "cursor" else _MAX_ID):
                errors.append(FieldError(name, "length", "empty or too long", "query"))
        if errors:
            raise Problem.invalid(*errors)
        where = WebhookFilter(
            site_id=query.get("site_id"),
            user_id=query.get("user_id"),
            event_type=event_type,
            state=state,
        )
        page = await self._service.list(principal, where, limit=limit, cursor=query.get("cursor"))
        return _json(
            {"items": [public_view(w) for w in page.items], "next_cursor": page.next_cursor}
        )

    async def create_webhook(self, request: web.Request) -> web.Response:
        principal = self._principal(request, "write")
        created = await self._service.create(principal, await self._body(request))
        webhook = created.webhook
        if not created.created:
            return _webhook_response(webhook, 200, with_secret=True)
        location = f"/v1/webhooks/{quote(webhook.id, safe='')}"
        return _webhook_response(webhook, 201, with_secret=True, Location=location)

    async def get_webhook(self, request: web.Request) -> web.Response:
        principal = self._principal(request, "read")
        webhook = await self._service.get(principal, self._webhook_id(request))
        return _webhook_response(webhook)

    async def update_webhook(self, request: web.Request) -> web.Response:
        principal = self._principal(request, "write")
        webhook_id = self._webhook_id(request)
        body = await self._body(request)
        webhook = await self._service.update(
            principal, webhook_id, body, if_match=request.headers.get("If-Match")
        )
        return _webhook_response(webhook)

    async def delete_webhook(self, request: web.Request) -> web.Response:
        principal = self._principal(request, "write")
        await self._service.delete(
            principal, self._webhook_id(request), if_match=request.headers.get("If-Match")
        )
        return web.Response(status=204)

    async def rotate_secret(self, request: web.Request) -> web.Response:
        principal = self._principal(request, "write")
        webhook_id = self._webhook_id(request)
        body = await self._body(request, optional=True)
        webhook = await self._service.rotate_secret(
            principal, webhook_id, body, if_match=request.headers.get("If-Match")
        )
        return _webhook_response(webhook, with_secret=True)

    async def send_test(self, request: web.Request) -> web.Response:
        principal = self._principal(request, "write")
        webhook_id = self._webhook_id(request)
        body = await self._body(request, optional=True)
        event = await self._service.send_test(principal, webhook_id, body)
        return _json({"webhook_id": webhook_id, "event_id": event.id}, 202)


def _single_values(request: web.Request) -> dict[str, str]:
    """The query parameters of a listing: ``400`` for an unknown or repeated one."""
    errors: list[FieldError] = []
    values: dict[str, str] = {}
    for name, value in request.query.items():
        if name not in _LIST_PARAMS:
            errors.append(FieldError(name[:100], "unknown_field", "not a parameter here", "query"))
        elif name in values:
            errors.append(FieldError(name, "repeated", "give it once", "query"))
        else:
            values[name] = value
    if errors:
        raise Problem.invalid(*errors)
    return values


def _limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_PAGE_LIMIT
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_PAGE_LIMIT):
        raise Problem.invalid(
            FieldError("limit", "range", f"an integer from 1 to {MAX_PAGE_LIMIT}", "query")
        )
    return int(text)


def create_app(
    service: WebhookService, tokens: TokenSet, *, config: ApiConfig | None = None
) -> web.Application:
    """The ``/v1`` application: the OpenAPI document (no token needed) and the webhook routes."""
    config = config or ApiConfig()
    routes = _Routes(service, tokens, config)
    app = web.Application(
        middlewares=[problem_middleware(config.request_timeout)],
        client_max_size=config.max_body_bytes,
    )
    app.router.add_get("/v1/openapi.json", routes.openapi, allow_head=False)
    app.router.add_get("/v1/webhooks", routes.list_webhooks, allow_head=False)
    app.router.add_post("/v1/webhooks", routes.create_webhook)
    app.router.add_get("/v1/webhooks/{webhook_id}", routes.get_webhook, allow_head=False)
    app.router.add_patch("/v1/webhooks/{webhook_id}", routes.update_webhook)
    app.router.add_delete("/v1/webhooks/{webhook_id}", routes.delete_webhook)
    app.router.add_post("/v1/webhooks/{webhook_id}/rotate-secret", routes.rotate_secret)
    app.router.add_post("/v1/webhooks/{webhook_id}/test", routes.send_test)
    return app
