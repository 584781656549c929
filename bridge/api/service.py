"""What the webhook routes mean: validation, versions and If-Match, idempotent create, rotation,
``Idempotency-Key`` (:mod:`bridge.api.idempotency`).

Pure of I/O except through the repository and the test-event publisher it is given, with the
clock passed in. Records are built by :mod:`bridge.subscriptions.changes`, the functions
:class:`~bridge.subscriptions.store.WebhookStore` builds its records with (same defaults, same
fields, the same ``disabled_reason`` rule), and validated by the same code: the request
schema (its fields are ``topics/schemas/webhook.json``'s), then
:func:`~bridge.subscriptions.webhook.webhook_from_record` and the URL check
(``WebhookUrl.parse``, or the deployment's stricter ``check_url``).

Changes of one webhook are serialized in this process (a lock per id), so a version checked
is the version replaced. Several API processes writing the same webhook need the writes routed
to one of them (docs/api.md, "Design").
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import itertools
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from jsonschema import ValidationError

from bridge.admin.publish import scope_of_test_event
from bridge.api.auth import Principal
from bridge.api.idempotency import HEADER as IDEMPOTENCY_KEY
from bridge.api.idempotency import IdempotencyKey, KeyedChange, forget_expired, reused
from bridge.api.openapi import request_validator
from bridge.api.problems import FieldError, Problem
from bridge.api.repository import WebhookFilter, WebhookRepository, webhook_version
from bridge.contract.events import Event, format_timestamp, parse_time
from bridge.contract.schemas import MAX_ERRORS_READ
from bridge.errors import BridgeError, InvalidSubscription, InvalidUrl
from bridge.memo import put_newest
from bridge.redaction import url_without_userinfo
from bridge.subscriptions.changes import (
    created_record,
    default_name,
    rotated_record,
    updated_record,
)
from bridge.subscriptions.freshness import Placed
from bridge.subscriptions.serial import KeyedLocks, to_the_end
from bridge.subscriptions.urls import WebhookUrl
from bridge.subscriptions.webhook import Webhook, webhook_from_record

__all__ = [
    "TestEventPublisher",
    "Page",
    "Created",
    "Changed",
    "MAX_DELETES_KEPT",
    "REPEAT_SHOWS_SECRET_FOR",
    "WebhookService",
    "body_errors",
    "public_view",
    "etag",
    "none_match",
    "encode_cursor",
    "decode_cursor",
]


class TestEventPublisher(Protocol):
    """Publishes a ``test.event`` for one webhook (as
    :func:`bridge.admin.publish.send_test_event`); raises :class:`InvalidSubscription`
    (``webhook_inactive``, ``test_event_scope``) when it cannot."""

    def __call__(
        self,
        webhook: Webhook,
        message: str,
        *,
        site_id: str | None,
        user_id: str | None,
        event_id: str | None = None,
    ) -> Awaitable[Event]: ...


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing."""

    items: list[Webhook]
    #: Give it back as ``cursor`` for the next page; ``None`` on the last page.
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Created:
    """The outcome of a create."""

    webhook: Webhook
    #: ``False`` when the id existed with the same body (the request was a repeat).
    created: bool
    #: Whether the answer shows the secret: a creation does; a repeat does only for the token
    #: that created it, within :data:`REPEAT_SHOWS_SECRET_FOR` of the creation.
    shows_secret: bool = True
    #: ``True`` when the request's ``Idempotency-Key`` had made it: nothing was changed now.
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class Changed:
    """The outcome of a change (``PATCH``, a rotation)."""

    webhook: Webhook
    #: ``True`` when the request's ``Idempotency-Key`` had made the change: nothing was changed
    #: now, and ``webhook`` is the webhook as it is.
    replayed: bool = False


#: Seconds after a webhook's creation during which a repeat of the create by the same token
#: answers its secret again (a client whose first answer was lost): a day, as idempotency keys
#: are commonly kept. Another token, or later, gets the webhook without it.
REPEAT_SHOWS_SECRET_FOR = 86400.0
#: Deletes a service remembers the time of (:meth:`WebhookService.delete`), the oldest
#: forgotten first: about 100 bytes each.
MAX_DELETES_KEPT = 10_000


def public_view(
    webhook: Webhook, *, with_secret: bool = False, now: datetime | None = None
) -> dict[str, Any]:
    """The API's representation of a webhook at ``now`` (the clock's, unless given): no secret
    unless ``with_secret``; ``previous_secret_expires_at`` while the previous secret signs
    (:meth:`Webhook.overlap_end`), not an end that has passed (the record keeps it until the
    next change) nor one of a webhook whose headers carry no previous secret."""
    out: dict[str, Any] = {
        "id": webhook.id,
        "name": webhook.shown_name(),
        "url": url_without_userinfo(webhook.url),  # a record written elsewhere may carry some
        "events": sorted(webhook.events),
        "site_id": webhook.site_id,
        "user_id": webhook.user_id,
        "active": webhook.active,
        "state": webhook.state,
        "disabled_reason": webhook.extra.get("disabled_reason"),
        "rate_limit": webhook.rate_limit,
        "standard_webhooks": webhook.standard_webhooks,
        "previous_secret_expires_at": webhook.overlap_end(now or datetime.now(UTC)),
        "created_at": webhook.extra.get("created_at"),
        "updated_at": webhook.extra.get("updated_at"),
        "version": webhook_version(webhook),
    }
    if with_secret:
        out["secret"] = webhook.secret
    return out


def etag(webhook: Webhook) -> str:
    """The ``ETag`` header value: the version, quoted (a strong validator)."""
    return f'"{webhook_version(webhook)}"'


def _if_match(header: str | None, current: Webhook | None) -> None:
    """RFC 9110 If-Match with strong comparison: ``412`` unless the header is absent, ``*``
    with a current webhook, or lists the current ETag."""
    if header is None:
        return
    if current is None:
        raise Problem("precondition_failed", "the webhook does not exist (If-Match)")
    value = header.strip()
    if value == "*":
        return
    tags = [t.strip() for t in value.split(",")]
    if not all(len(t) >= 2 and t.endswith('"') and t.startswith(('"', 'W/"')) for t in tags):
        raise Problem.invalid(
            FieldError("If-Match", "malformed", "expected one or more quoted ETags", "header")
        )
    if etag(current) not in tags:  # a weak tag (W/"...") never matches: strong comparison
        raise Problem(
            "precondition_failed",
            "the webhook changed since that ETag was read; GET it again",
            headers={"ETag": etag(current)},
        )


def none_match(header: str, current: Webhook) -> bool:
    """RFC 9110 If-None-Match with weak comparison: whether ``header`` (``*`` or a list of
    ETags) names ``current`` (the condition is then false: a GET answers ``304``); ``400``
    for a malformed one."""
    value = header.strip()
    if value == "*":
        return True
    tags = [t.strip() for t in value.split(",")]
    if not all(len(t) >= 2 and t.endswith('"') and t.startswith(('"', 'W/"')) for t in tags):
        raise Problem.invalid(
            FieldError("If-None-Match", "malformed", "expected * or quoted ETags", "header")
        )
    return etag(current) in {t.removeprefix("W/") for t in tags}


def encode_cursor(after: str, where: WebhookFilter) -> str:
    """An opaque cursor: the last id of a page and the filter's digest, base64url JSON.

    Not signed, only validated (:func:`decode_cursor`): all a made-up cursor can choose is the
    id a listing starts after, which the client could reach by paging anyway; the token's
    restriction is applied to every page whatever the cursor says.
    """
    raw = json.dumps({"a": after, "f": where.digest()}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str, where: WebhookFilter) -> str:
    """The id a page starts after; ``400`` for a cursor that is not one of
    :func:`encode_cursor`'s or came from a listing with other filters."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise _not_a_listing_cursor() from None
    if (
        not isinstance(value, dict)
        or set(value) != {"a", "f"}
        or not isinstance(value["a"], str)
        or value["f"] != where.digest()
    ):
        raise _not_a_listing_cursor()
    return value["a"]


def _not_a_listing_cursor() -> Problem:
    # Made where it is raised: a problem kept in the raising frame, which its traceback holds,
    # was a reference cycle (until 2026-12-07).
    return Problem.invalid(
        FieldError("cursor", "invalid_cursor", "not a cursor of this listing", "query")
    )


def _field_name(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def body_errors(schema: str, body: Mapping[str, Any]) -> list[FieldError]:
    """The fields of ``body`` that ``schema`` (a request schema of the OpenAPI document)
    refuses, at most ten; messages never quote a value."""
    # Read at most MAX_ERRORS_READ: a body of a megabyte can hold a million wrong items.
    found = itertools.islice(request_validator(schema).iter_errors(body), MAX_ERRORS_READ)
    errors = sorted(found, key=lambda e: list(map(str, e.path)))
    out: list[FieldError] = []
    for error in errors:
        out.extend(_field_errors(error))
        if len(out) >= 10:
            break
    for error in errors:
        # jsonschema links an error (an anyOf's) and those under it both ways (context and
        # parent): a reference cycle of every such body's errors until 2026-12-07.
        _unlinked(error)
    return out[:10]


def _unlinked(error: ValidationError) -> None:
    for under in error.context:
        _unlinked(under)
        under.parent = None
    error.context.clear()


def _field_errors(error: ValidationError) -> list[FieldError]:
    field = _field_name(error.absolute_path)
    rule, expected = error.validator, error.validator_value
    if rule == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        # Named as sent, up to 100 characters (a key of 60 KB was quoted whole, twice, until
        # 2026-12-05), as unknown query parameters are; the first ten, as many as are
        # answered (until 2026-12-07 one for each of thousands of keys was made first).
        unknown = itertools.islice((k for k in error.instance if k not in known), 10)
        return [
            FieldError(
                _field_name([*error.absolute_path, k[:100]]), "unknown_field", "not a field here"
            )
            for k in unknown
        ]
    if rule == "required" and isinstance(error.instance, dict):
        return [
            FieldError(_field_name([*error.absolute_path, k]), "required", "is required")
            for k in expected
            if k not in error.instance
        ]
    if rule == "anyOf" and not field:
        return [FieldError("site_id", "required", "give site_id, or user_id for an account")]
    if rule == "type":
        names = [expected] if isinstance(expected, str) else list(expected)
        return [FieldError(field, "type", f"expected {' or '.join(names)}")]
    if rule == "enum":
        options = ", ".join(json.dumps(v) for v in expected)
        return [FieldError(field, "enum", f"expected one of {options}"[:300])]
    if rule == "minProperties":
        return [FieldError(field, "empty", "give at least one field")]
    bounds = {
        "minLength": "shorter than {} characters",
        "maxLength": "longer than {} characters",
        "minItems": "fewer than {} items",
        "maximum": "more than {}",
        "minimum": "less than {}",
        "exclusiveMinimum": "not more than {}",
    }
    if rule in bounds:
        return [FieldError(field, str(rule), bounds[str(rule)].format(json.dumps(expected)))]
    if rule == "uniqueItems":
        return [FieldError(field, "duplicate", "has duplicate items")]
    if rule == "pattern":
        return [FieldError(field, "pattern", f"does not match {expected!r}")]
    return [FieldError(field, str(rule), f"fails the {rule!r} rule")]


def _from_record(record: dict[str, Any], *, check_url: Callable[[str], object] | None) -> Webhook:
    """The webhook of a record built here, validated as WebhookStore validates, with the
    problem naming the field."""
    try:
        webhook = webhook_from_record(record)
        if check_url is not None:
            check_url(webhook.url)
    except InvalidUrl as exc:
        raise Problem.invalid(FieldError("url", "invalid_url", exc.detail)) from None
    except InvalidSubscription as exc:
        field = "secret" if exc.reason.startswith("secret") else ""
        if exc.reason == "schema_invalid" and exc.detail.startswith("$."):
            field = exc.detail[2:].split(":", 1)[0]
        elif exc.reason == "schema_invalid" and exc.detail.startswith("$: needs "):
            # A rule of the whole record naming the fields it needs ("needs site_id or
            # user_id": an update leaving the webhook no owner): the first one, as a create
            # names it (until 2026-12-07 no field).
            field = re.split(r"[ ,]", exc.detail.removeprefix("$: needs "), maxsplit=1)[0]
        raise Problem.invalid(FieldError(field, exc.reason, exc.detail)) from None
    except BridgeError as exc:  # the deployment's policy (DestinationForbidden: plain http...)
        reason = str(getattr(exc, "reason", "forbidden"))
        detail = str(getattr(exc, "detail", "refused by this deployment's policy"))
        raise Problem.invalid(FieldError("url", reason, detail)) from None
    return webhook


#: What a URL a client sends is judged by, unless the deployment says otherwise.
_judge_url = functools.partial(WebhookUrl.parse, remember=False)


class WebhookService:
    """The webhook operations of the API over a :class:`WebhookRepository`.

    ``check_url`` judges URLs being set (default :meth:`WebhookUrl.parse`, what WebhookStore
    checks, not remembering them; a deployment passes its SSRF policy's ``check_url`` too).
    ``publisher`` sends test events (none: the test route answers 409). ``clock`` gives aware
    datetimes.
    """

    def __init__(
        self,
        repository: WebhookRepository,
        *,
        publisher: TestEventPublisher | None = None,
        check_url: Callable[[str], object] = _judge_url,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        locks: KeyedLocks | None = None,
        max_webhooks: int = 0,
    ) -> None:
        self._repository = repository
        self._publisher = publisher
        self._check_url = check_url
        self._clock = clock
        #: One change of a webhook at a time (shared with the bridge's disables in a worker).
        self._locks = locks if locks is not None else KeyedLocks()
        #: When this process last deleted each id (the newest :data:`MAX_DELETES_KEPT`): a
        #: webhook made again with it is stamped later, so that its version differs.
        self._deleted: dict[str, datetime] = {}
        #: Webhooks an owner (a site; an account's account-wide ones) may have; 0: no limit.
        self._max_webhooks = max_webhooks
        #: One creation (or move) into an owner at a time, so that two cannot both see room
        #: for one more.
        self._owner_locks = KeyedLocks()

    def __repr__(self) -> str:
        return f"WebhookService({self._repository!r})"

    def _locked(self, webhook_id: str) -> AbstractAsyncContextManager[None]:
        return self._locks.hold(webhook_id)

    async def _read_as_written(self, webhook_id: str) -> Webhook | None:
        """The webhook, from a table that shows this process's last write of it (held lock);
        ``503`` when it does not within ``WRITE_SEEN_TIMEOUT``."""
        shown, webhook = await self._locks.read_as_written(
            webhook_id, lambda: self._repository.get(webhook_id)
        )
        if not shown:
            raise Problem(
                "unavailable",
                "the webhooks table does not show the last change yet; try again",
                headers={"Retry-After": "1"},
            )
        return webhook

    async def _put(self, webhook: Webhook, *, fenced: bool = True) -> None:
        """Write ``webhook`` (its lock held), unless this process may not write it now
        (:class:`~bridge.subscriptions.serial.NotWritable`: a worker that gave its webhooks up
        since the change was taken). ``fenced=False``: an id generated for it here. Written
        to its end, the lock held, even when the request is cancelled meanwhile (its record
        lands all the same: :func:`~bridge.subscriptions.serial.to_the_end`)."""
        async with self._locks.writing(webhook.id, fenced=fenced):
            await to_the_end(
                self._repository.put(webhook),
                lambda placed: self._locks.wrote(webhook.id, webhook, placed),
            )

    async def _existing(self, webhook_id: str, principal: Principal) -> Webhook:
        webhook = await self._read_as_written(webhook_id)
        if webhook is None:
            raise Problem("not_found", "no such webhook")
        return principal.see(webhook)

    async def list(
        self, principal: Principal, where: WebhookFilter, *, limit: int, cursor: str | None
    ) -> Page:
        """One page of the webhooks ``where`` selects, within the token's restriction."""
        principal.check_scope(
            where.site_id or principal.site_id, where.user_id or principal.user_id, "query"
        )
        after = decode_cursor(cursor, where) if cursor is not None else None

        def visible(webhook: Webhook) -> bool:
            return where.matches(webhook) and principal.allows(webhook.site_id, webhook.user_id)

        # Only the token's site's (user's) webhooks can be visible: check_scope refused a
        # filter naming another site or user than the token's.
        within = replace(
            where,
            site_id=where.site_id or principal.site_id,
            user_id=where.user_id or principal.user_id,
        )
        items = await self._repository.scan(
            after=after, limit=limit + 1, where=visible, within=within
        )
        more = len(items) > limit
        items = items[:limit]
        return Page(items, encode_cursor(items[-1].id, where) if more else None)

    async def get(self, principal: Principal, webhook_id: str) -> Webhook:
        return await self._existing(webhook_id, principal)

    async def create(
        self, principal: Principal, body: Mapping[str, Any], *, key: IdempotencyKey | None = None
    ) -> Created:
        """Create from a request body; with a client-chosen id that exists, the same body
        answers the existing webhook (``created`` false), another body ``409``. With ``key``
        and no ``id``, the id is made from the key, so a repeat finds the webhook it made."""
        errors = body_errors("WebhookCreate", body)
        if errors:
            raise Problem.invalid(*errors)
        principal.check_scope(body.get("site_id"), body.get("user_id"))
        generated = False
        if body.get("id"):
            webhook_id = body["id"]
        elif key is not None:
            webhook_id = key.webhook_id()
        else:
            # No other request can race an id generated here: its write is not fenced.
            webhook_id, generated = f"wh_{uuid.uuid4().hex}", True
        change = None if key is None else key.request("POST", "/v1/webhooks", body)
        async with self._locked(webhook_id):
            existing = await self._read_as_written(webhook_id)
            if existing is not None:
                if not principal.allows(existing.site_id, existing.user_id):
                    # Taken by a webhook the token cannot see: what it would be told of one
                    # with other fields (a 403 named the other's site or account until
                    # 2026-12-06).
                    raise _taken()
                if change is not None and self._made(change, existing) is not None:
                    if existing.updated_at == existing.created_at and not _same(existing, body):
                        raise reused()  # unchanged since, so another body (its secret)
                    return Created(
                        existing,
                        created=False,
                        shows_secret=self._repeat_shows(existing, principal),
                        replayed=True,
                    )
                # A repeat that names a secret is recognised for the token that created the
                # webhook alone: for any other, 200 or 409 told whether it guessed the secret
                # (until 2026-12-06), a check of guesses that changes nothing.
                if _same(existing, body) and (
                    body.get("secret") is None or existing.extra.get("created_by") == principal.name
                ):
                    return Created(
                        existing,
                        created=False,
                        shows_secret=self._repeat_shows(existing, principal),
                    )
                raise _taken()
            try:
                record = created_record(
                    webhook_id=webhook_id,
                    url=body["url"],
                    events=body["events"],
                    now=self._creation_time(webhook_id),
                    site_id=body.get("site_id"),
                    user_id=body.get("user_id"),
                    name=body.get("name"),
                    secret=body.get("secret"),
                    active=body.get("active", True),
                    rate_limit=body.get("rate_limit"),
                    standard=bool(body.get("standard_webhooks", False)),
                )
            except InvalidSubscription as exc:
                raise _refused("secret", exc) from None
            record["created_by"] = principal.name
            if change is not None:
                change.record(record, None, now=self._now())
            webhook = _from_record(record, check_url=self._check_url)
            async with self._room_for(webhook):
                await self._put(webhook, fenced=not generated)
            return Created(webhook, created=True)

    @asynccontextmanager
    async def _room_for(
        self, webhook: Webhook, *, was: Webhook | None = None
    ) -> AsyncIterator[None]:
        """Around the write of ``webhook``, new to its owner (:attr:`Webhook.owner`) unless it
        ``was`` that owner's already: ``409`` naming ``site_id`` (``user_id`` for an
        account-wide webhook) when the owner has ``max_webhooks`` already. Holds the owner's
        lock, so that creations in this process are counted one after the other (a creation
        at the same moment in another worker is not seen: each may pass the limit by one)."""
        if not self._max_webhooks or (was is not None and was.owner == webhook.owner):
            yield
            return
        kind, value = webhook.owner
        async with self._owner_locks.hold(f"{kind}\0{value}"):
            within = WebhookFilter(**{kind: value})
            found = await self._repository.scan(
                after=None,
                limit=self._max_webhooks,
                where=lambda other: other.owner == (kind, value) and other.id != webhook.id,
                within=within,
            )
            if len(found) >= self._max_webhooks:
                whose = "the site" if kind == "site_id" else "the account (account-wide)"
                detail = f"{whose} has {self._max_webhooks} webhooks, the most it may have"
                raise Problem(
                    "conflict", detail, errors=[FieldError(kind, "webhook_limit", detail)]
                )
            yield

    def _repeat_shows(self, existing: Webhook, principal: Principal) -> bool:
        """Whether a repeated create answers the secret: to the token that created the webhook
        (its name, kept in the record as ``created_by``), within REPEAT_SHOWS_SECRET_FOR, and
        while the webhook is as it was created (a secret rotated since, by whichever token,
        was never given to the creator)."""
        made = existing.created_seconds
        return (
            existing.extra.get("created_by") == principal.name
            and existing.updated_at == existing.created_at
            and made is not None
            and self._clock().timestamp() - made <= REPEAT_SHOWS_SECRET_FOR
        )

    async def update(
        self,
        principal: Principal,
        webhook_id: str,
        changes: Mapping[str, Any],
        *,
        if_match: str | None,
        key: IdempotencyKey | None = None,
    ) -> Changed:
        """Change some fields (``WebhookUpdate``), as ``WebhookStore.update`` does; with a
        ``key`` that made this change already, the webhook as it is (nothing changed)."""
        errors = body_errors("WebhookUpdate", changes)
        if errors:
            raise Problem.invalid(*errors)
        change = None if key is None else key.request("PATCH", webhook_id, changes)
        async with self._locked(webhook_id):
            current = await self._existing(webhook_id, principal)
            # Before If-Match: the first request's change made the ETag it sent stale.
            if change is not None and self._made(change, current) is not None:
                return Changed(current, replayed=True)
            _if_match(if_match, current)
            try:
                record = updated_record(current, changes, self._clock())
            except InvalidSubscription as exc:
                raise _refused("standard_webhooks", exc) from None
            principal.check_scope(record.get("site_id"), record.get("user_id"))
            self._note(change, record, current)
            webhook = _from_record(record, check_url=self._check_url if "url" in changes else None)
            async with self._room_for(webhook, was=current):
                await self._put(webhook)
            return Changed(webhook)

    def _now(self) -> float:
        return self._clock().timestamp()

    def view(self, webhook: Webhook, *, with_secret: bool = False) -> dict[str, Any]:
        """:func:`public_view` of ``webhook`` at this service's clock."""
        return public_view(webhook, with_secret=with_secret, now=self._clock())

    def _note(self, change: KeyedChange | None, record: dict[str, Any], current: Webhook) -> None:
        """Record ``change``'s key in ``record`` (``current`` changed), or without a key drop
        the keys expired since."""
        if change is None:
            forget_expired(record, now=self._now())
        else:
            change.record(record, current.to_record(), now=self._now())

    def _made(self, change: KeyedChange, current: Webhook) -> str | None:
        """The ``updated_at`` ``change`` gave ``current`` when its key made it (``422`` when
        the key made another change), else ``None``."""
        return change.made(current.to_record(), now=self._now())

    async def delete(self, principal: Principal, webhook_id: str, *, if_match: str | None) -> None:
        async with self._locked(webhook_id):
            current = await self._existing(webhook_id, principal)
            _if_match(if_match, current)
            async with self._locks.writing(webhook_id):
                await to_the_end(
                    self._repository.delete(webhook_id),
                    lambda placed: self._was_deleted(current, placed),
                )

    def _was_deleted(self, deleted: Webhook, placed: Placed | None) -> None:
        """This process deleted ``deleted`` (acknowledged at ``placed``), its lock held."""
        at = self._clock()
        self._locks.deleted(deleted.id, format_timestamp(at), placed)
        try:
            # No earlier than the deleted webhook's own last stamp (a change within the
            # millisecond is stamped a millisecond on): made again, it is stamped later than
            # every webhook of the id before it.
            at = max(at, parse_time(deleted.updated_at or ""))
        except ValueError:
            pass
        put_newest(self._deleted, deleted.id, at, MAX_DELETES_KEPT)

    def _creation_time(self, webhook_id: str) -> datetime:
        """Now, or a millisecond after this process deleted ``webhook_id`` if that was no
        earlier (times are kept to the millisecond): a webhook made again within the
        millisecond of its delete had the deleted one's version, so an ``If-Match`` taken of
        the deleted webhook matched the new one (until 2026-12-06)."""
        now = self._clock()
        deleted = self._deleted.get(webhook_id)
        if deleted is None:
            return now
        after = deleted.replace(microsecond=deleted.microsecond // 1000 * 1000) + timedelta(
            milliseconds=1
        )
        return max(now, after)

    async def rotate_secret(
        self,
        principal: Principal,
        webhook_id: str,
        body: Mapping[str, Any],
        *,
        if_match: str | None,
        key: IdempotencyKey | None = None,
    ) -> Changed:
        """A new secret (given, or generated as ``WebhookStore.rotate_secret`` does); with
        ``overlap_seconds``, the previous secret stays valid that long. With a ``key`` that
        made this rotation already, the webhook and the secret it was given, as long as the
        rotation is the webhook's last change (``409`` after another: rotate again)."""
        errors = body_errors("RotateSecret", body)
        if errors:
            raise Problem.invalid(*errors)
        change = None if key is None else key.request("POST rotate", webhook_id, body)
        async with self._locked(webhook_id):
            current = await self._existing(webhook_id, principal)
            made = None if change is None else self._made(change, current)
            if made is not None:
                if made != current.updated_at:
                    raise Problem(
                        "conflict",
                        "this rotation was made, and the webhook changed since: its secret is "
                        "not shown again; rotate again for a new one",
                        errors=[
                            FieldError(IDEMPOTENCY_KEY, "changed_since", "rotate again", "header")
                        ],
                    )
                given = body.get("secret")
                if given is not None and not _equal_secrets(str(given), current.secret):
                    raise reused()
                return Changed(current, replayed=True)
            _if_match(if_match, current)
            try:
                record = rotated_record(
                    current,
                    now=self._clock(),
                    secret=body.get("secret"),
                    overlap=float(body.get("overlap_seconds", 0)),
                )
            except InvalidSubscription as exc:
                field = "overlap_seconds" if exc.reason.startswith("overlap_") else "secret"
                raise _refused(field, exc) from None
            self._note(change, record, current)
            webhook = _from_record(record, check_url=None)
            await self._put(webhook)
            return Changed(webhook)

    async def send_test(
        self,
        principal: Principal,
        webhook_id: str,
        body: Mapping[str, Any],
        *,
        key: IdempotencyKey | None = None,
    ) -> Event:
        """Publish a ``test.event`` to this webhook only; with ``key``, under an event id made
        from it (a repeat is the same event, delivered with the same delivery id)."""
        errors = body_errors("TestEventRequest", body)
        if errors:
            raise Problem.invalid(*errors)
        webhook = await self._existing(webhook_id, principal)
        site_id, user_id = body.get("site_id"), body.get("user_id")
        principal.check_scope(site_id or webhook.site_id, user_id or webhook.user_id, event=True)
        if self._publisher is None:
            raise Problem("conflict", "this API server cannot publish events")
        if not webhook.active:
            raise Problem("conflict", "the webhook is not active")
        try:
            scope_of_test_event(webhook, site_id, user_id)
            return await self._publisher(
                webhook,
                body.get("message", ""),
                site_id=site_id,
                user_id=user_id,
                event_id=None
                if key is None
                else key.request("POST test", webhook_id, body).event_id(),
            )
        except InvalidSubscription as exc:
            if exc.reason == "webhook_inactive":
                raise Problem("conflict", "the webhook is not active") from None
            field = "user_id" if exc.reason == "test_event_user" else "site_id"
            raise Problem.invalid(FieldError(field, exc.reason, exc.detail)) from None


def _taken() -> Problem:
    """``409``: the id of a create names a webhook that exists with other fields."""
    return Problem(
        "conflict",
        "a webhook with this id exists with other fields",
        errors=[FieldError("id", "exists", "another webhook has this id")],
    )


def _refused(field: str, exc: InvalidSubscription) -> Problem:
    """The problem of a change :mod:`bridge.subscriptions.changes` refused: ``400`` naming
    ``rate_limit`` for one below the lowest (the request schema refuses it first), else
    ``409`` naming ``field``, for a change the webhook as it is, or would be, cannot take
    (``secret_not_whsec``, ``overlap_running``, ``overlap_needs_standard_webhooks``)."""
    if exc.reason == "rate_limit_too_low":
        return Problem.invalid(FieldError("rate_limit", exc.reason, exc.detail))
    return Problem("conflict", exc.detail, errors=[FieldError(field, exc.reason, exc.detail)])


def _equal_secrets(given: str, kept: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), kept.encode("utf-8"))


def _same(existing: Webhook, body: Mapping[str, Any]) -> bool:
    """Whether a create ``body`` describes ``existing`` (a repeated request)."""
    wanted = {
        # As the create names it (a URL's first 500 characters: until 2026-12-06 a repeated
        # create of a longer URL was a 409, or with its Idempotency-Key a 422).
        "name": body["name"] if body.get("name") is not None else default_name(body["url"]),
        "url": body["url"],
        "events": frozenset(body["events"]),
        "site_id": body.get("site_id"),
        "user_id": body.get("user_id"),
        "active": body.get("active", True),
        "rate_limit": body.get("rate_limit"),
        "standard_webhooks": bool(body.get("standard_webhooks", False)),
    }
    have = {
        "name": existing.name,
        "url": existing.url,
        "events": existing.events,
        "site_id": existing.site_id,
        "user_id": existing.user_id,
        "active": existing.active,
        "rate_limit": existing.rate_limit,
        "standard_webhooks": existing.standard_webhooks,
    }
    if wanted != have:
        return False
    secret = body.get("secret")
    return secret is None or _equal_secrets(str(secret), existing.secret)
