"""The aiohttp application of ``/v1``: the OpenAPI document and every route it declares.

Handlers are thin: authenticate (:class:`~bridge.api.auth.TokenSet`), check the scope, read and
bound the input, call :class:`~bridge.api.service.WebhookService` (webhooks) or
:class:`~bridge.api.control.ControlService` (delivery log, stats, recovery, dead letters),
answer JSON. Every error is a problem (:mod:`bridge.api.problems`), bad input always a ``4xx``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from bridge.admin.dead_letters import DeadLetterFilter
from bridge.admin.recovery import Operation
from bridge.api.auth import Principal, Scope, TokenSet
from bridge.api.control import ControlService, decode_dead_letter_cursor
from bridge.api.idempotency import HEADER as IDEMPOTENCY_KEY
from bridge.api.idempotency import REPLAYED_HEADER, IdempotencyKey
from bridge.api.metrics import ApiMetrics, metrics_middleware
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
    Unwinding,
    problem_middleware,
    read_json_object,
)
from bridge.api.ratelimit import TokenBuckets
from bridge.api.repository import WebhookFilter
from bridge.api.service import WebhookService, body_errors, etag, none_match
from bridge.attempts.log import STATUS_CLASSES, LogQuery, decode_cursor
from bridge.attempts.record import TRIGGERS
from bridge.contract import jsoncanon
from bridge.contract.events import parse_time
from bridge.contract.payload import delivery_id
from bridge.contract.schemas import EVENT_TYPES, event_data_schema
from bridge.paths import path_segment
from bridge.subscriptions.webhook import Webhook

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT",
    "REPLAY_SHARE",
    "ApiConfig",
    "create_app",
    "redelivery_target",
]

#: How long a request may take before it is answered ``503`` (seconds).
DEFAULT_REQUEST_TIMEOUT = 10.0

#: The part of a request's time a dead-letter replay reads for; then it answers what it did,
#: and the cursor to go on from.
REPLAY_SHARE = 0.5

_LIST_PARAMS = ("site_id", "user_id", "event_type", "state", "limit", "cursor")
_ATTEMPT_PARAMS = (
    "event_type",
    "outcome",
    "status_class",
    "trigger",
    "recovery_id",
    "since",
    "until",
    "limit",
    "cursor",
)
_DEAD_LETTER_PARAMS = ("webhook_id", "delivery_id", "since", "until", "limit", "cursor")
_RECOVERY_PARAMS = ("state", "limit", "cursor")
_RECOVERY_STATES = ("running", "done", "cancelled", "failed")
_OUTCOMES = ("success", "failure", "skipped")
_MAX_ID = 200
_MAX_CURSOR = 2000


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiConfig:
    """Limits of the API server."""

    #: The largest request body (bytes); larger ones are answered ``413``.
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: Seconds a request may take; then ``503`` with ``Retry-After``.
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    #: Requests a second each token may make (:class:`~bridge.api.ratelimit.TokenBuckets`);
    #: more are answered ``429`` with ``Retry-After``. 0: no limit.
    rate_limit: float = 0.0


def _json(
    value: Any, status: int = 200, *, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=jsoncanon.dumps(value),
        content_type="application/json",
        headers=dict(headers or {}),
    )


def _replayed(replayed: bool) -> dict[str, str]:
    """The header of an answer to a request whose ``Idempotency-Key`` had made its change."""
    return {REPLAYED_HEADER: "true"} if replayed else {}


def _key(request: web.Request, principal: Principal) -> IdempotencyKey | None:
    """The request's ``Idempotency-Key`` (:meth:`IdempotencyKey.of_headers`)."""
    return IdempotencyKey.of_headers(
        request.headers.getall(IDEMPOTENCY_KEY, []), principal.name, principal.key_salt
    )


def _operation_response(
    operation: Operation, status: int = 200, *, replayed: bool = False
) -> web.Response:
    headers = {"Location": f"/v1/recoveries/{path_segment(operation.id)}", **_replayed(replayed)}
    return _json(operation.as_dict(), status, headers=headers if status == 202 else None)


class _Routes:
    def __init__(
        self,
        service: WebhookService,
        control: ControlService,
        tokens: TokenSet,
        config: ApiConfig,
        buckets: TokenBuckets | None = None,
    ) -> None:
        self._service = service
        self._control = control
        self._tokens = tokens
        self._config = config
        self._buckets = TokenBuckets(config.rate_limit) if buckets is None else buckets

    def _webhook_response(
        self,
        webhook: Webhook,
        status: int = 200,
        *,
        with_secret: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        """``webhook`` as the service shows it now, with its ``ETag``."""
        out = {"ETag": etag(webhook), **(headers or {})}
        if with_secret:
            out["Cache-Control"] = "no-store"
        return _json(self._service.view(webhook, with_secret=with_secret), status, headers=out)

    def _principal(self, request: web.Request, scope: Scope) -> Principal:
        """The request's token, which has ``scope``, within its rate."""
        principal = self._tokens.authenticate_headers(request.headers)
        principal.require(scope)
        self._buckets.admit_request(request, principal.name)
        if scope == "write" and "If-None-Match" in request.headers:
            raise Problem.invalid(_NONE_MATCH_REFUSED)
        return principal

    async def _body(self, request: web.Request, *, optional: bool = False) -> dict[str, Any]:
        if optional and not request.body_exists:
            return {}
        return await read_json_object(request, max_bytes=self._config.max_body_bytes)

    @staticmethod
    def _path_id(request: web.Request, name: str = "webhook_id") -> str:
        value = request.match_info[name]
        if len(value) > _MAX_ID or "\x00" in value:
            raise Problem.invalid(FieldError(name, "invalid_id", "not an id", "path"))
        return value

    _webhook_id = _path_id

    async def openapi(self, request: web.Request) -> web.Response:
        return _json(openapi_document())

    async def event_types(self, request: web.Request) -> web.Response:
        self._principal(request, "read")
        _single_values(request, ())
        items = [{"type": t, "data_schema": event_data_schema(t)} for t in EVENT_TYPES]
        return _json({"items": items})

    async def list_webhooks(self, request: web.Request) -> web.Response:
        principal = self._principal(request, "read")
        query = _single_values(request, _LIST_PARAMS)
        limit = _limit(query.get("limit"))
        event_type = query.get("event_type")
        state = query.get("state")
        errors: list[FieldError] = []
        if event_type is not None and event_type not in EVENT_TYPES:
            errors.append(FieldError("event_type", "enum", "not an event type", "query"))
        _check_enums(query, errors, state=WEBHOOK_STATES)
        _check_ids(query, errors, "site_id", "user_id")
        cursor = query.get("cursor")
        if cursor is not None and not 0 < len(cursor) <= _MAX_CURSOR:
            errors.append(FieldError("cursor", "length", "empty or too long", "query"))
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
            {
                "items": [self._service.view(w) for w in page.items],
                "next_cursor": page.next_cursor,
            }
        )

    async def create_webhook(self, request: web.Request) -> web.Response:
        principal = self._principal(request, "write")
        _single_values(request, ())
        key = _key(request, principal)
        created = await self._service.create(principal, await self._body(request), key=key)
        webhook = created.webhook
        if not created.created:
            return self._webhook_response(
                webhook, 200, with_secret=created.shows_secret, headers=_replayed(created.replayed)
            )
        location = f"/v1/webhooks/{path_segment(webhook.id)}"
        return self._webhook_response(
            webhook, 201, with_secret=True, headers={"Location": location}
        )

    async def get_webhook(self, request: web.Request) -> web.Response:
        principal = self._principal(request, "read")
        _single_values(request, ())
        webhook = await self._service.get(principal, self._webhook_id(request))
        unchanged = _if_none_match(request)
        if unchanged is not None and none_match(unchanged, webhook):
            return web.Response(status=304, headers={"ETag": etag(webhook)})
        return self._webhook_response(webhook)

    async def update_webhook(self, request: web.Request) -> web.Response:
        principal = self._principal(request, "write")
        _single_values(request, ())
        webhook_id = self._webhook_id(request)
        key = _key(request, principal)
        body = await self._body(request)
        changed = await self._service.update(
            principal, webhook_id, body, if_match=_if_match(request), key=key
        )
        return self._webhook_response(changed.webhook, headers=_replayed(changed.replayed))

    async def delete_webhook(self, request: web.Request) -> web.Response:
        principal = self._principal(request, "write")
        _single_values(request, ())
        await self._service.delete(
            principal, self._webhook_id(request), if_match=_if_match(request)
        )
        return web.Response(status=204)

    async def rotate_secret(self, request: web.Request) -> web.Response:
        principal = self._principal(request, "write")
        _single_values(request, ())
        webhook_id = self._webhook_id(request)
        key = _key(request, principal)
        body = await self._body(request, optional=True)
        changed = await self._service.rotate_secret(
            principal, webhook_id, body, if_match=_if_match(request), key=key
        )
        return self._webhook_response(
            changed.webhook, with_secret=True, headers=_replayed(changed.replayed)
        )

    async def send_test(self, request: web.Request) -> web.Response:
        principal = self._principal(request, "write")
        _single_values(request, ())
        webhook_id = self._webhook_id(request)
        key = _key(request, principal)
        body = await self._body(request, optional=True)
        event = await self._service.send_test(principal, webhook_id, body, key=key)
        delivery = delivery_id(event.id, webhook_id)
        answer = {"webhook_id": webhook_id, "event_id": event.id, "delivery_id": delivery}
        return _json(answer, 202)

    async def list_attempts(self, request: web.Request) -> web.Response:
        principal = self._principal(request, "read")
        webhook_id = self._webhook_id(request)
        query = _single_values(request, _ATTEMPT_PARAMS)
        limit = _limit(query.get("limit"))
        errors: list[FieldError] = []
        _check_enums(
            query,
            errors,
            event_type=EVENT_TYPES,
            outcome=_OUTCOMES,
            status_class=STATUS_CLASSES,
            trigger=TRIGGERS,
        )
        _check_ids(query, errors, "recovery_id")
        since, until = _time_range(query, errors, "query")
        cursor = query.get("cursor")
        if cursor is not None:
            try:
                if len(cursor) > _MAX_CURSOR:
                    raise ValueError(cursor)
                decode_cursor(cursor)
            except ValueError:
                errors.append(
                    FieldError("cursor", "invalid_cursor", "not a cursor of this list", "query")
                )
        if errors:
            raise Problem.invalid(*errors)
        try:
            log_query = LogQuery(
                event_type=query.get("event_type"),
                outcome=query.get("outcome"),
                status_class=query.get("status_class"),
                since=None if since is None else since.timestamp(),
                until=None if until is None else until.timestamp(),
                trigger=query.get("trigger"),
                recovery_id=query.get("recovery_id"),
            )
        except ValueError:
            # Checked above but for times a float cannot tell apart (a microsecond apart,
            # centuries on): a 500 for a few days on 2026-12-07.
            raise Problem.invalid(
                FieldError("until", "range", "until must be after since", "query")
            ) from None
        page = await self._control.attempts(
            principal, webhook_id, log_query, limit=limit, cursor=cursor
        )
        return _json({"items": [a.as_dict() for a in page.items], "next_cursor": page.next_cursor})

    async def webhook_stats(self, request: web.Request) -> web.Response:
        principal = self._principal(request, "read")
        _single_values(request, ())
        return _json(await self._control.stats(principal, self._webhook_id(request)))

    async def get_delivery(self, request: web.Request) -> web.Response:
        principal = self._principal(request, "read")
        webhook_id = _delivery_webhook(request)
        delivery_id = self._path_id(request, "delivery_id")
        return _json(await self._control.delivery(principal, delivery_id, webhook_id=webhook_id))

    async def redeliver(self, request: web.Request) -> web.Response:
        principal = self._principal(request, "write")
        delivery_id, webhook_id = redelivery_target(request)
        key = _key(request, principal)
        change = None if key is None else key.request("POST redeliver", delivery_id, {})
        started = await self._control.redeliver(
            principal, delivery_id, webhook_id=webhook_id, change=change
        )
        return _operation_response(started.operation, 202, replayed=started.replayed)

    async def start_recovery(self, request: web.Request) -> web.Response:
        principal = self._principal(request, "write")
        _single_values(request, ())
        webhook_id = self._webhook_id(request)
        key = _key(request, principal)
        body = await self._body(request)
        errors = body_errors("RecoveryCreate", body)
        since, until = _time_range(body, errors, "body") if not errors else (None, None)
        if errors:
            raise Problem.invalid(*errors)
        assert since is not None
        rate = body.get("rate")
        started = await self._control.recover(
            principal,
            webhook_id,
            since=since,
            until=until,
            rate=None if rate is None else float(rate),
            change=None if key is None else key.request("POST recover", webhook_id, body),
        )
        return _operation_response(started.operation, 202, replayed=started.replayed)

    async def list_recoveries(self, request: web.Request) -> web.Response:
        principal = self._principal(request, "read")
        webhook_id = self._webhook_id(request)
        query = _single_values(request, _RECOVERY_PARAMS)
        limit = _limit(query.get("limit"))
        errors: list[FieldError] = []
        _check_enums(query, errors, state=_RECOVERY_STATES)
        state = query.get("state")
        cursor = _cursor(query, errors)
        if errors:
            raise Problem.invalid(*errors)
        page = await self._control.recoveries(
            principal, webhook_id, state=state, limit=limit, cursor=cursor
        )
        return _json({"items": [o.as_dict() for o in page.items], "next_cursor": page.next_cursor})

    async def get_recovery(self, request: web.Request) -> web.Response:
        principal = self._principal(request, "read")
        _single_values(request, ())
        operation_id = self._path_id(request, "recovery_id")
        return _operation_response(await self._control.recovery(principal, operation_id))

    async def cancel_recovery(self, request: web.Request) -> web.Response:
        principal = self._principal(request, "write")
        _single_values(request, ())
        operation_id = self._path_id(request, "recovery_id")
        return _operation_response(await self._control.cancel_recovery(principal, operation_id))

    async def list_dead_letters(self, request: web.Request) -> web.Response:
        principal = self._principal(request, "read")
        query = _single_values(request, _DEAD_LETTER_PARAMS)
        limit = _limit(query.get("limit"))
        errors: list[FieldError] = []
        _check_ids(query, errors, "webhook_id", "delivery_id")
        since, until = _time_range(query, errors, "query")
        cursor = _cursor(query, errors)
        if errors:
            raise Problem.invalid(*errors)
        if cursor is not None:
            decode_dead_letter_cursor(cursor)
        where = DeadLetterFilter(
            webhook_id=query.get("webhook_id"),
            delivery_id=query.get("delivery_id"),
            since=since,
            until=until,
        )
        page = await self._control.dead_letters(principal, where, limit=limit, cursor=cursor)
        return _json({"items": page.items, "next_cursor": page.next_cursor})

    async def replay_dead_letters(self, request: web.Request) -> web.Response:
        # From here, as the request's time is counted (a body sent slowly takes from it).
        entered = asyncio.get_running_loop().time()
        principal = self._principal(request, "write")
        _single_values(request, ())
        body = await self._body(request, optional=True)
        errors = body_errors("DeadLetterReplay", body)
        since, until = _time_range(body, errors, "body") if not errors else (None, None)
        if errors:
            raise Problem.invalid(*errors)
        where = DeadLetterFilter(
            webhook_id=body.get("webhook_id"),
            delivery_id=body.get("delivery_id"),
            since=since,
            until=until,
        )
        # It stops reading at half the request's time, and answers what it wrote: cut at the
        # timeout it answered 503 having written some, which a client sent again (until
        # 2026-12-06).
        deadline = entered + self._config.request_timeout * REPLAY_SHARE
        report, cursor = await self._control.replay_dead_letters(
            principal, where, cursor=body.get("cursor"), deadline=deadline
        )
        return _json(
            {
                "replayed": report.replayed,
                "skipped": report.skipped,
                "skipped_by_reason": report.skipped_by_reason,
                "complete": report.complete,
                "next_cursor": cursor,
            }
        )


#: RFC 3339's ``date-time`` (section 5.6; ``T`` and ``Z`` in either case), before it is read:
#: ISO 8601's other forms (``20260101T000000Z``, week dates, ``T12Z``), which Python's reader
#: takes, were accepted until 2026-12-06.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
)


def _time(text: str) -> datetime | None:
    """An RFC 3339 date-time with its offset; ``None`` for anything else."""
    if len(text) > 64 or not _RFC3339.fullmatch(text):
        return None
    try:
        # In UTC, as every time the bridge shows; a time that has none (year 1 east of
        # Greenwich) is refused here rather than failing where it is shown.
        return parse_time(text)
    except ValueError:
        return None


def _time_range(
    values: Mapping[str, Any], errors: list[FieldError], location: str
) -> tuple[datetime | None, datetime | None]:
    """``since`` and ``until`` of a query or body, each optional; errors name the field."""
    out: dict[str, datetime | None] = {"since": None, "until": None}
    for name in out:
        text = values.get(name)
        if text is None:
            continue
        moment = _time(text) if isinstance(text, str) else None
        if moment is None:
            errors.append(
                FieldError(name, "format", "a date-time with a time zone (RFC 3339)", location)
            )
        out[name] = moment
    since, until = out["since"], out["until"]
    if since is not None and until is not None and until <= since:
        errors.append(FieldError("until", "range", "until must be after since", location))
    return since, until


def _delivery_webhook(request: web.Request) -> str | None:
    """The ``webhook_id`` a delivery is looked up in, when the request names one."""
    query = _single_values(request, ("webhook_id",))
    errors: list[FieldError] = []
    _check_ids(query, errors, "webhook_id")
    if errors:
        raise Problem.invalid(*errors)
    return query.get("webhook_id")


def redelivery_target(request: web.Request) -> tuple[str, str | None]:
    """The delivery id ``POST /v1/deliveries/{delivery_id}/redeliver`` names, and the webhook
    its ``webhook_id`` names if given; ``400`` for either invalid."""
    webhook_id = _delivery_webhook(request)
    return _Routes._path_id(request, "delivery_id"), webhook_id


def _if_none_match(request: web.Request) -> str | None:
    """The request's ``If-None-Match``, its lines read as one list."""
    lines = request.headers.getall("If-None-Match", ())
    return ", ".join(lines) if lines else None


#: A change is conditional on ``If-Match`` alone: one with ``If-None-Match`` is refused rather
#: than made regardless of it (until 2026-12-07 the header was ignored everywhere: ``PATCH``
#: with ``If-None-Match: *`` changed the webhook). A webhook's GET evaluates it (``304``).
_NONE_MATCH_REFUSED = FieldError(
    "If-None-Match",
    "unsupported",
    "changes are conditional on If-Match; If-None-Match is evaluated by GET of a webhook",
    "header",
)


def _if_match(request: web.Request) -> str | None:
    """The request's ``If-Match``, its lines read as one list (RFC 9110, section 5.3: until
    2026-12-06 the first line alone, so a tag on a second line was not matched)."""
    lines = request.headers.getall("If-Match", ())
    return ", ".join(lines) if lines else None


def _single_values(request: web.Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query parameters of a request: ``400`` for an unknown or repeated one. Every route
    but ``/v1/openapi.json`` asks, with the parameters its operation names (until 2026-12-06
    routes of one webhook, delivery or recovery ignored unknown ones: a mistyped filter on
    them went unnoticed)."""
    errors: list[FieldError] = []
    values: dict[str, str] = {}
    for name, value in request.query.items():
        if name not in allowed:
            errors.append(FieldError(name[:100], "unknown_field", "not a parameter here", "query"))
        elif name in values:
            errors.append(FieldError(name, "repeated", "give it once", "query"))
        else:
            values[name] = value
    if errors:
        raise Problem.invalid(*errors[:10])  # as a body's: at most ten named
    return values


def _check_enums(
    query: dict[str, str], errors: list[FieldError], **allowed: tuple[str, ...]
) -> None:
    """An error for each query parameter named in ``allowed`` whose value is not one of its."""
    for name, values in allowed.items():
        value = query.get(name)
        if value is not None and value not in values:
            errors.append(FieldError(name, "enum", f"expected one of {', '.join(values)}", "query"))


def _check_ids(query: dict[str, str], errors: list[FieldError], *names: str) -> None:
    """An error for each query parameter of ``names`` that is empty or longer than an id."""
    for name in names:
        value = query.get(name)
        if value is not None and not 0 < len(value) <= _MAX_ID:
            errors.append(FieldError(name, "length", "empty or too long", "query"))


def _cursor(query: dict[str, str], errors: list[FieldError]) -> str | None:
    """The query's ``cursor`` (its form is its list's to judge); an error for an empty or an
    over-long one."""
    cursor = query.get("cursor")
    if cursor is not None and not 0 < len(cursor) <= _MAX_CURSOR:
        errors.append(FieldError("cursor", "invalid_cursor", "not a cursor of this list", "query"))
    return cursor


def _limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_PAGE_LIMIT
    # Its length first: int() refuses more than 4,300 digits with a ValueError of its own.
    digits = len(str(MAX_PAGE_LIMIT))
    if not (
        text.isascii()
        and text.isdigit()
        and len(text.lstrip("0")) <= digits
        and 1 <= int(text) <= MAX_PAGE_LIMIT
    ):
        raise Problem.invalid(
            FieldError("limit", "range", f"an integer from 1 to {MAX_PAGE_LIMIT}", "query")
        )
    return int(text)


def create_app(
    service: WebhookService,
    control: ControlService,
    tokens: TokenSet,
    *,
    config: ApiConfig | None = None,
    metrics: ApiMetrics | None = None,
    unwinding: Unwinding | None = None,
    buckets: TokenBuckets | None = None,
) -> web.Application:
    """The ``/v1`` application: the OpenAPI document (no token needed) and every operation it
    declares. The recoveries ``control`` runs are cancelled when the application shuts down.
    Given ``metrics``, every request is counted and timed. ``unwinding`` tracks the handlers
    answered at their timeout that still run, and refuses requests while too many do (one of
    its own, counted in ``metrics``, when not given). ``buckets`` count each token's requests
    (``config.rate_limit``'s own when not given; a middleware that counts a request before
    its route shares them, :meth:`~bridge.api.ratelimit.TokenBuckets.admit_request`)."""
    config = config or ApiConfig()
    routes = _Routes(service, control, tokens, config, buckets)
    if unwinding is None:
        unwinding = Unwinding(gauge=None if metrics is None else metrics.unwinding)
    middlewares = [problem_middleware(config.request_timeout, unwinding)]
    if metrics is not None:
        middlewares.insert(0, metrics_middleware(metrics))
    app = web.Application(
        middlewares=middlewares,
        client_max_size=config.max_body_bytes,
    )

    async def cancel_recoveries(app: web.Application) -> None:
        await control.close()

    app.on_shutdown.append(cancel_recoveries)
    app.router.add_get("/v1/openapi.json", routes.openapi, allow_head=False)
    app.router.add_get("/v1/event-types", routes.event_types, allow_head=False)
    app.router.add_get("/v1/webhooks", routes.list_webhooks, allow_head=False)
    app.router.add_post("/v1/webhooks", routes.create_webhook)
    app.router.add_get("/v1/webhooks/{webhook_id}", routes.get_webhook, allow_head=False)
    app.router.add_patch("/v1/webhooks/{webhook_id}", routes.update_webhook)
    app.router.add_delete("/v1/webhooks/{webhook_id}", routes.delete_webhook)
    app.router.add_post("/v1/webhooks/{webhook_id}/rotate-secret", routes.rotate_secret)
    app.router.add_post("/v1/webhooks/{webhook_id}/test", routes.send_test)
    app.router.add_get("/v1/webhooks/{webhook_id}/attempts", routes.list_attempts, allow_head=False)
    app.router.add_get("/v1/webhooks/{webhook_id}/stats", routes.webhook_stats, allow_head=False)
    app.router.add_post("/v1/webhooks/{webhook_id}/recoveries", routes.start_recovery)
    app.router.add_get(
        "/v1/webhooks/{webhook_id}/recoveries", routes.list_recoveries, allow_head=False
    )
    app.router.add_get("/v1/recoveries/{recovery_id}", routes.get_recovery, allow_head=False)
    app.router.add_delete("/v1/recoveries/{recovery_id}", routes.cancel_recovery)
    app.router.add_get("/v1/deliveries/{delivery_id}", routes.get_delivery, allow_head=False)
    app.router.add_post("/v1/deliveries/{delivery_id}/redeliver", routes.redeliver)
    app.router.add_get("/v1/dead-letters", routes.list_dead_letters, allow_head=False)
    app.router.add_post("/v1/dead-letters/replay", routes.replay_dead_letters)
    return app
