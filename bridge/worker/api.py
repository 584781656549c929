"""``/v1`` served by a worker whose role includes the API, over its delivery log.

Imported only by such workers (it loads :mod:`bridge.api` and, through it, the admin tools).
The delivery log, stats and deliveries come from :class:`WorkerActivitySource`, which asks the
worker's :class:`~bridge.worker.app.Bridge`: its own book for the webhooks of its attempts
partitions, the owner's for the others (one hop). The owners answer through the internal
routes below, with the caller's bearer token, checked again (scope and site or account
restriction) by the owner. Without ``delivery_log`` the worker serves ``/v1`` over
:class:`~bridge.api.kafka_sources.KafkaActivitySource` (topics read per request).

Webhooks are read from the worker's subscription table, current as of each request
(:class:`~bridge.api.table_repository.TableRepository`). Changes of one webhook are made by one
worker: with ``delivery_log``, the owner of the webhook's attempts partition (the worker that
holds its log); a change sent to another worker is relayed to the owner once (the relayed request
says so in ``X-Bridge-Relayed-By`` and is never relayed again). Recoveries run at the owner too,
and so do redeliveries: the webhook is the one ``webhook_id`` names, else the delivery's, looked
up in every owner's log before relaying (the owner is sent that ``webhook_id``), so a redelivery's
``Idempotency-Key`` is checked in one place. The owner serializes the changes
of each webhook (:class:`~bridge.api.service.WebhookService`'s lock per id) and checks
``If-Match`` against a table current as of the change, so two clients racing with the same
``ETag`` through different workers get one ``200`` and one ``412``. From the start of a
rebalance until its assignment is applied a worker owns nothing for changes
(``Bridge.owner(..., settled=True)``): the old and the new owner never both begin one. A change
taken before a rebalance began is written only if the worker still owns the webhook then
(``KeyedLocks.writing``); one refused there was not made and goes to the next owner like one
held here, and the worker gives its partitions up only once the changes being written are
acknowledged (``Bridge._changes_revoked``; what is left of that window: docs/api.md,
"Concurrent changes").

A request that needs an owner while a rebalance settles is held rather than answered ``503`` at
once (:mod:`bridge.worker.settling`): while no owner is known, while this worker owns the
webhook but still reads its partition, and, for a relayed change, while the worker it was
relayed to is not (yet) the owner. It goes on as soon as the assignment says where (a change is
still relayed once, and made only by the worker its assignment names), and is answered ``503``
with ``Retry-After`` only when nothing settled within the smaller of
:data:`~bridge.worker.settling.MAX_HOLD` and half the request timeout. A routed or relayed
request carries what is left of that hold, so the owner holds it no longer. One sent on by a
worker that had not yet received the assignment the next one already had waits there in vain
(it is never sent on again) and is answered ``503`` at the end of its hold: the members of a
group receive an assignment within moments of one another.

A relayed change that was sent but not answered (the owner closed the connection as it stopped,
or did not answer in time) may have been made, so it is answered ``503`` and never sent again,
unless it carries an ``Idempotency-Key`` (:mod:`bridge.api.idempotency`): the owner keeps the key
in the webhook's record, so the owner the next assignment names makes the change at most once,
and the change is sent there within the same hold.
"""

from __future__ import annotations

import asyncio
import functools
import time
from contextlib import AsyncExitStack
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import aiohttp
import yarl
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from aiokafka import AIOKafkaProducer

from bridge.admin.recovery import Operation
from bridge.api.activity import ActivitySource, EndpointStatus
from bridge.api.app import ApiConfig, create_app, redelivery_target
from bridge.api.auth import Principal, TokenSet
from bridge.api.control import ControlService, require_read_to_find, sees_recovery
from bridge.api.idempotency import HEADER as IDEMPOTENCY_KEY
from bridge.api.idempotency import REPLAYED_HEADER, IdempotencyKey
from bridge.api.kafka_sources import (
    KafkaActivitySource,
    KafkaDeadLetters,
    kafka_recovery_runner,
    scan_share,
)
from bridge.api.metrics import RELAYED_BY, ApiMetrics, answered, hop_of
from bridge.api.problems import Problem, Unwinding, read_body, read_json, route_template
from bridge.api.ratelimit import TokenBuckets
from bridge.api.recoveries import DEFAULT_HEARTBEAT, Recoveries, per_owner
from bridge.api.repository import WebhookRepository
from bridge.api.service import WebhookService
from bridge.api.table_repository import TableRepository, require_current
from bridge.attempts.book import Activity
from bridge.attempts.record import Attempt
from bridge.attempts.wire import activity_to_dict
from bridge.contract import jsoncanon
from bridge.kafka.clients import client_kwargs, started, stopped
from bridge.subscriptions.serial import NotWritable
from bridge.subscriptions.store import WebhookStore
from bridge.worker.delivery_log import Owner, OwnerUnavailable
from bridge.worker.recovery_journal import (
    FORGET_INTERVAL,
    KafkaRecoveryJournal,
    forget_ended,
    keep_calling,
    take_over,
)
from bridge.worker.recovery_view import DEFAULT_STALE_AFTER, live_runner
from bridge.worker.settling import (
    HOLD_HEADER,
    held,
    hold_bound,
    hold_left,
    hold_until,
    settle,
    settle_async,
)
from bridge.worker.web import READINESS

if TYPE_CHECKING:
    from bridge.worker.app import Bridge

__all__ = ["RELAYED_BY", "WorkerActivitySource", "api_application"]

#: The ``Authorization`` of the request being answered, sent on with routed reads.
_authorization: ContextVar[str | None] = ContextVar("authorization", default=None)
#: When the request being answered stops waiting for an owner (event loop time; ``None``: it
#: does not wait, outside a request).
_hold_until: ContextVar[float | None] = ContextVar("hold_until", default=None)

#: The routes the owner of the webhook named in the path answers (method, route template):
#: its changes, and its recoveries, which run in the owner.
_BY_OWNER = frozenset(
    {
        ("PATCH", "/v1/webhooks/{webhook_id}"),
        ("DELETE", "/v1/webhooks/{webhook_id}"),
        ("POST", "/v1/webhooks/{webhook_id}/rotate-secret"),
        ("POST", "/v1/webhooks/{webhook_id}/recoveries"),
    }
)
#: A redelivery, run by the owner of the delivery's webhook as a recovery is: named by its
#: ``webhook_id`` parameter, else found from the delivery id (every owner asked).
_REDELIVER = ("POST", "/v1/deliveries/{delivery_id}/redeliver")
#: The changes an ``Idempotency-Key`` makes at most once (the key kept in the webhook's record,
#: or a recovery's id made from it), which may therefore be sent to the next owner when the
#: first did not answer.
_KEYED = frozenset(
    {
        ("POST", "/v1/webhooks"),
        ("PATCH", "/v1/webhooks/{webhook_id}"),
        ("POST", "/v1/webhooks/{webhook_id}/rotate-secret"),
        ("POST", "/v1/webhooks/{webhook_id}/recoveries"),
        _REDELIVER,
    }
)
#: Request headers a relayed change carries; response headers its answer brings back.
_RELAYED_REQUEST_HEADERS = (
    "Authorization",
    "Content-Type",
    "If-Match",
    "If-None-Match",  # (refused where a change is made)
    "Accept",
    IDEMPOTENCY_KEY,
)
_RELAYED_RESPONSE_HEADERS = (
    "Cache-Control",  # no-store on an answer with a secret (a create, a rotation)
    "Content-Type",
    "WWW-Authenticate",  # the owner's 401 challenge (lost until 2026-12-07)
    "ETag",
    "Location",
    "Retry-After",
    REPLAYED_HEADER,
)
#: The most a relayed answer may hold (a webhook, or a problem).
_MAX_RELAYED_ANSWER = 1 << 20


def _unavailable(exc: OwnerUnavailable) -> Problem:
    return Problem(exc.problem, exc.detail, headers={"Retry-After": str(exc.retry_after)})


class WorkerActivitySource:
    """An :class:`~bridge.api.activity.ActivitySource` over the workers' delivery logs
    (:meth:`Bridge.activity_for <bridge.worker.app.Bridge.activity_for>`) and the worker's
    endpoint-status table. While an owner is unknown, reading its partition or not answering,
    the request is held (module docstring); ``503 unavailable`` with ``Retry-After`` if that
    does not settle within the hold."""

    indexes_deliveries = True

    def __init__(self, bridge: Bridge) -> None:
        self._bridge = bridge

    def __repr__(self) -> str:
        return f"WorkerActivitySource({self._bridge.settings.canonical_url!r})"

    @staticmethod
    def _headers() -> dict[str, str]:
        authorization = _authorization.get()
        return {} if authorization is None else {"Authorization": authorization}

    async def activity(self, webhook_id: str) -> Activity:
        try:
            return await self._bridge.activity_for(
                webhook_id, headers=self._headers(), until=_hold_until.get()
            )
        except OwnerUnavailable as exc:
            raise _unavailable(exc) from None

    async def delivery(self, delivery_id: str) -> list[Attempt]:
        try:
            return await self._bridge.delivery_for(
                delivery_id, headers=self._headers(), until=_hold_until.get()
            )
        except OwnerUnavailable as exc:
            raise _unavailable(exc) from None

    async def status(self, webhook_id: str) -> EndpointStatus | None:
        record = self._bridge.statuses.get(webhook_id)
        return None if record is None else EndpointStatus.parse(jsoncanon.dumps(record))


@web.middleware
async def _keep_authorization(request: web.Request, handler: Any) -> web.StreamResponse:
    token = _authorization.set(request.headers.get("Authorization"))
    try:
        response: web.StreamResponse = await handler(request)
        return response
    finally:
        _authorization.reset(token)


def _holding(bound: float, metrics: ApiMetrics | None = None) -> Middleware:
    """Middleware keeping when the request being answered stops waiting for an owner:
    ``bound`` seconds after it arrived, or sooner when a peer sent it with less left
    (:func:`~bridge.worker.settling.hold_until`); a request that waited is timed in
    ``metrics`` (``webhook_bridge_api_held_seconds``)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        now = asyncio.get_running_loop().time()
        token = _hold_until.set(hold_until(request.headers.get(HOLD_HEADER), bound, now))
        waits: list[float] = []
        counting = held.set(waits)

        def seen(status: int) -> None:
            if waits and metrics is not None:
                outcome = "unavailable" if status == 503 else "settled"
                metrics.held.labels(outcome, hop_of(request)).observe(sum(waits))

        try:
            return await answered(request, handler, seen)
        finally:
            held.reset(counting)
            _hold_until.reset(token)

    return middleware


def _key(request: web.Request, tokens: TokenSet) -> IdempotencyKey | None:
    """The request's valid ``Idempotency-Key`` (``None`` without one, or with one the route
    will refuse), for the token that sent it."""
    try:
        principal = tokens.authenticate_headers(request.headers)
        return IdempotencyKey.of_headers(
            request.headers.getall(IDEMPOTENCY_KEY, []), principal.name, principal.key_salt
        )
    except Problem:
        return None


async def _changed_webhook(
    request: web.Request, max_bytes: int, tokens: TokenSet, buckets: TokenBuckets
) -> str | None:
    """The id of the webhook a request changes, or ``None`` (not a change, or a creation
    without a client-chosen id or ``Idempotency-Key``, which no other request can race)."""
    template = route_template(request)
    if (request.method, template) in _BY_OWNER:
        return request.match_info.get("webhook_id")
    if request.method == "POST" and template == "/v1/webhooks":
        # Refused before the body is read, as the route refuses it: until 2026-12-07 a stranger
        # was answered 413 or 415, and had the worker read and parse 64 KiB first.
        principal = tokens.authenticate_headers(request.headers)
        principal.require("write")
        # Counted before the body is read (once: the route, if it runs here, counts it no
        # more). Until 2026-12-07 a token over its rate had every body read and parsed before
        # the route answered it 429.
        buckets.admit_request(request, principal.name)
        await read_body(request, max_bytes=max_bytes)  # 413 and 415 answered from here
        try:
            body = await read_json(request, max_bytes=max_bytes)  # kept for the route
        except Problem:  # the route answers what is wrong with it
            return None
        chosen = body.get("id") if isinstance(body, dict) else None
        if isinstance(chosen, str) and chosen:
            return chosen
        key = _key(request, tokens) if isinstance(body, dict) and not chosen else None
        return None if key is None else key.webhook_id()
    return None


class _Relay:
    """Sends a change of a webhook to its owner (see the module docstring)."""

    def __init__(
        self,
        bridge: Bridge,
        tokens: TokenSet,
        *,
        max_bytes: int,
        buckets: TokenBuckets | None = None,
    ) -> None:
        self._bridge = bridge
        self._tokens = tokens
        self._max_bytes = max_bytes
        #: The routes' buckets (a creation is counted here before its body is read).
        self._buckets = TokenBuckets(0.0) if buckets is None else buckets

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse
        if self._bridge.delivery_log is None:
            response = await handler(request)
            return response
        # Relayed by a peer (or claimed to be, by anyone: the header is not trusted): handled
        # here only if this worker is where it belongs, never relayed again.
        relayed = RELAYED_BY in request.headers
        runner = await self._live_runner(request)
        if runner is not None:
            if relayed:
                raise _unavailable(OwnerUnavailable("the recovery moved to another worker"))
            # A cancel goes to the worker running the recovery (its token checked above).
            try:
                return await self._relay(runner, request)
            except OwnerUnavailable as exc:  # no connection to the runner
                raise _unavailable(exc) from None
        webhook_id = await _changed_webhook(request, self._max_bytes, self._tokens, self._buckets)
        path_qs = request.rel_url.raw_path_qs
        if webhook_id is None and (request.method, route_template(request)) == _REDELIVER:
            # A relayed one names its webhook, and is answered here only if this worker owns it
            # (one without, which no worker relays, is looked up as any other).
            webhook_id = await self._redelivered_webhook(request)
            if webhook_id is not None:  # its owner reads that webhook's log alone
                named = request.rel_url.update_query(webhook_id=webhook_id)
                path_qs = named.raw_path_qs
                request = request.clone(rel_url=named)
        if webhook_id is None:
            try:
                response = await handler(request)
            except NotWritable:
                # Not routed, yet refused by the fence (nothing written): the client tries
                # again, and is routed then.
                raise _unavailable(OwnerUnavailable(self._refused("changing"))) from None
            return response
        if not self._bridge.owner(webhook_id, settled=True).local:
            # Refused here what the owner would refuse, so a stranger can neither make workers
            # call each other nor have requests held.
            self._tokens.authenticate_headers(request.headers).require("write")

        async def attempt() -> web.StreamResponse:
            """The change made here (the owner), or the owner's answer to it relayed there."""
            owner = self._destination(webhook_id, relayed=relayed)
            if not owner.local:
                assert owner.url is not None  # _destination names a worker
                return await self._relay(owner.url, request, path_qs)
            try:
                made: web.StreamResponse = await handler(request)
            except NotWritable:
                # A rebalance began while it waited for the webhook's lock or its table (or the
                # worker was paused): not written, so it goes where the next assignment says,
                # as one not yet made.
                raise OwnerUnavailable(self._refused("changing (rebalancing)")) from None
            return made

        try:
            return await settle_async(attempt, self._bridge.changes, _hold_until.get())
        except OwnerUnavailable as exc:
            raise _unavailable(exc) from None

    def _refused(self, changing: str) -> str:
        """Why the fence refused a write here (the detail of a ``503``)."""
        if not self._bridge.pauses.may_write():
            return "this worker was paused past its session timeout; its ownership is unconfirmed"
        return f"the webhook's owner is {changing}"

    async def _redelivered_webhook(self, request: web.Request) -> str | None:
        """The webhook a redelivery names, else that of its delivery, from the owners' logs
        (its owner answers one deleted since); ``None`` when the request is invalid or the
        delivery is not found (answered here: ``400``, ``404``). ``503`` when an owner is
        unknown or does not answer within the hold: answered here, the redelivery could start
        where its webhook is not owned."""
        # Refused here what the owner would refuse, before any owner is asked (a second
        # Authorization line among it).
        principal = self._tokens.authenticate_headers(request.headers)
        principal.require("write")
        authorization = request.headers.get("Authorization")
        try:
            delivery, named = redelivery_target(request)
        except Problem:
            return None
        if named is not None:
            return named
        require_read_to_find(principal)  # before the owners are asked
        try:
            attempts = await self._bridge.delivery_for(
                delivery,
                headers=None if authorization is None else {"Authorization": authorization},
                until=_hold_until.get(),
            )
        except OwnerUnavailable as exc:
            raise _unavailable(exc) from None
        # Routed to the owner of the delivery's webhook even when this worker's table lacks it
        # (a worker still reading the table; a webhook deleted since: the owner answers that).
        # Until 2026-12-05 a webhook not in this worker's table left the request here, where a
        # starting worker, once its table held the webhook, started the redelivery unowned.
        return attempts[0].webhook_id if attempts else None

    def _destination(self, webhook_id: str, *, relayed: bool) -> Owner:
        """Where a change of ``webhook_id`` is made: here (its owner), or the owner it is relayed
        to; :class:`OwnerUnavailable` while no owner is known, or when a relayed change is not
        this worker's."""
        owner = self._bridge.owner(webhook_id, settled=True)
        if owner.local:
            return owner
        if owner.url is None:
            raise OwnerUnavailable("the webhook has no owner now (rebalancing)")
        if relayed:
            # Its owner changed on the way (a rebalance; or this worker has yet to learn that it
            # is the owner now), or a client forged the header to have a change made where the
            # webhook is not owned: either way, not here, and never relayed again.
            raise OwnerUnavailable("the webhook's owner is another worker now")
        return owner

    async def _live_runner(self, request: web.Request) -> str | None:
        """For ``DELETE /v1/recoveries/{id}``: the URL of another worker running it now, as the
        recoveries table shows once it is current (until 2026-12-06 as it was: a cancel sent
        to another worker right after the start found no runner there yet, was recorded
        cancelled and answered so, and the runner went on, its next record running again);
        ``None`` when the token may not see it (:meth:`_sees`), for the route to answer."""
        if request.method != "DELETE" or route_template(request) != "/v1/recoveries/{recovery_id}":
            return None
        # Refused before the wait, which asks the broker: a stranger makes no worker wait.
        principal = self._tokens.authenticate_headers(request.headers)
        principal.require("write")
        await require_current(self._bridge.recoveries.freshness, time.monotonic(), "recoveries")
        operation_id = request.match_info["recovery_id"]
        runner = self._bridge.recoveries.live_runner(operation_id, time.time(), DEFAULT_STALE_AFTER)
        if runner is None or runner == self._bridge.settings.canonical_url:
            return None
        if not self._sees(principal, operation_id):
            # Not the token's to see: answered here by the route, 404 as for an id naming
            # nothing. Until 2026-12-07 it went to the runner (404 there), or, with a forged
            # relayed header, was answered 503 "moved to another worker", which an id naming
            # nothing is not: a restricted token told another site's running recoveries apart.
            return None
        return runner

    def _sees(self, principal: Principal, operation_id: str) -> bool:
        """Whether ``principal`` may see the recovery ``operation_id`` as the recoveries table
        records it, judged as the route judges it (:func:`~bridge.api.control.sees_recovery`)."""
        if not principal.restricted:
            return True
        record = self._bridge.recoveries.get(operation_id)
        webhook_id = None if record is None else record.get("webhook_id")
        webhook = self._bridge.index.get(webhook_id) if isinstance(webhook_id, str) else None
        if record is None or webhook is None:
            return False
        try:
            operation = Operation.from_record(record, webhook)
        except ValueError:  # the route finds no recovery in it either
            return False
        return sees_recovery(principal, webhook, operation.started_at)

    async def _relay(
        self, url: str, request: web.Request, path_qs: str | None = None
    ) -> web.Response:
        """``request`` sent on to the worker at ``url`` (to ``path_qs``, else its own path and
        query, as they came: encoded), its answer brought back."""
        # Every line of each (until 2026-12-06 the first alone: a change with two
        # Idempotency-Key lines, refused where it is made, was made through another worker
        # with the first key; an If-Match's second line was lost).
        headers = [
            (name, value)
            for name in _RELAYED_REQUEST_HEADERS
            for value in request.headers.getall(name, ())
        ]
        headers.append((RELAYED_BY, self._bridge.settings.canonical_url))
        left = hold_left(_hold_until.get(), asyncio.get_running_loop().time())
        headers.append((HOLD_HEADER, left))
        try:
            async with self._bridge.peers(fresh=True).request(
                request.method,
                # As the request named them: decoded, an id holding `?`, `#`, `/` or `%XX` named
                # another webhook at the owner (`victim?` was `victim`), until 2026-12-07.
                yarl.URL(
                    url + (request.rel_url.raw_path_qs if path_qs is None else path_qs),
                    encoded=True,
                ),
                data=await read_body(request, max_bytes=self._max_bytes),
                headers=headers,
            ) as answer:
                body = await answer.content.read(_MAX_RELAYED_ANSWER + 1)
                if len(body) > _MAX_RELAYED_ANSWER:
                    raise OwnerUnavailable("the owner's answer was too large")
                kept = {
                    name: answer.headers[name]
                    for name in _RELAYED_RESPONSE_HEADERS
                    if name in answer.headers
                }
                return web.Response(status=answer.status, body=body, headers=kept)
        except aiohttp.ClientConnectorError as exc:
            # No connection to the owner (it went: killed, or stopped before the group knew):
            # nothing was sent, so the change may go to the owner the next assignment names.
            # Any other failure is not held: once sent, a change is never sent again (a second
            # rotation would replace the secret the first one kept valid), unless its key makes
            # a second sending harmless (below).
            raise OwnerUnavailable(
                f"the webhook's owner did not answer ({type(exc).__name__})"
            ) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Made where raised (an error kept in the raising frame is a reference cycle).
            unanswered = f"the webhook's owner did not answer ({type(exc).__name__})"
            keyed = (request.method, route_template(request)) in _KEYED
            if keyed and _key(request, self._tokens) is not None:
                # Sent, and maybe made: with an Idempotency-Key the owner the next assignment
                # names makes it at most once (the key is in the webhook's record), so it may
                # be sent again.
                raise OwnerUnavailable(unanswered) from None
            raise _unavailable(OwnerUnavailable(unanswered)) from None
        except OwnerUnavailable as exc:
            raise _unavailable(exc) from None


class _Internal:
    """The routes other workers read this worker's book through (never routed on).

    Served beside ``/v1``, to anyone with a token, and each answer is a webhook's whole log:
    a token's requests here are limited to ``rate_limit`` a second, in buckets apart from
    ``/v1``'s (a request to ``/v1`` of another worker read here took its own turn there), so
    that reading logs here costs a token no more than through ``/v1`` (until 2026-12-05 it
    was not limited)."""

    def __init__(
        self,
        bridge: Bridge,
        tokens: TokenSet,
        repository: WebhookRepository,
        *,
        rate_limit: float = 0.0,
    ) -> None:
        self._bridge = bridge
        self._tokens = tokens
        self._repository = repository
        self._buckets = TokenBuckets(rate_limit)

    def _principal(self, request: web.Request) -> Any:
        principal = self._tokens.authenticate_headers(request.headers)
        principal.require("read")
        self._buckets.admit(principal.name, "log reads")
        return principal

    async def activity(self, request: web.Request) -> web.Response:
        principal = self._principal(request)
        webhook_id = request.match_info["webhook_id"]
        webhook = await self._repository.get(webhook_id)
        if webhook is None:
            raise Problem("not_found", "no such webhook")
        principal.see(webhook)
        check = functools.partial(self._bridge.local_activity, webhook_id)
        try:
            activity = await settle(check, self._bridge.changes, _hold_until.get())
        except OwnerUnavailable as exc:
            raise _unavailable(exc) from None
        body = activity_to_dict(activity)
        if principal.restricted:
            # What /v1 shows such a token, and no more: anyone may call this route with one,
            # not only a worker relaying (until 2026-12-05 it gave a deleted webhook's log and
            # stats to the site that took its id).
            body = {
                "attempts": [
                    a.as_dict()
                    for a in activity.log.attempts()
                    if webhook.made_for(a.at_seconds, a.webhook_created_at)
                ],
                "stats": activity.stats.of_webhook(webhook.created_at).to_dict(),
            }
        return web.Response(body=jsoncanon.dumps(body), content_type="application/json")

    async def delivery(self, request: web.Request) -> web.Response:
        principal = self._principal(request)
        check = functools.partial(self._bridge.local_delivery, request.match_info["delivery_id"])
        try:
            attempts = await settle(check, self._bridge.changes, _hold_until.get())
        except OwnerUnavailable as exc:
            raise _unavailable(exc) from None
        shown = []
        for attempt in attempts:
            if principal.restricted:
                # What /v1 shows such a token: none of a deleted webhook's, nor of another site's
                # or account's, nor of a deleted webhook whose id this one took. An unrestricted
                # token is shown a deleted webhook's too, as /v1 shows them from this worker's
                # book (until 2026-12-07 they were left out here, so the answer depended on
                # which worker was asked).
                webhook = await self._repository.get(attempt.webhook_id)
                if (
                    webhook is None
                    or not principal.allows(webhook.site_id, webhook.user_id)
                    or not webhook.made_for(attempt.at_seconds, attempt.webhook_created_at)
                ):
                    continue
            shown.append(attempt.as_dict())
        return web.Response(
            body=jsoncanon.dumps({"attempts": shown}), content_type="application/json"
        )

    async def summary(self, request: web.Request) -> web.Response:
        principal = self._principal(request)
        if principal.restricted:
            # Counts over every site's and account's webhooks: not one site's to read.
            raise Problem(
                "forbidden", "the worker's summary covers every site: not for a restricted token"
            )
        reader = self._bridge.delivery_log
        body: dict[str, Any] = {"served_by": self._bridge.settings.canonical_url}
        if reader is not None:
            body.update(reader.summary())
        return web.Response(body=jsoncanon.dumps(body), content_type="application/json")


async def api_application(bridge: Bridge) -> web.Application:
    """``/v1`` (and the internal routes of the delivery log) for ``bridge``'s web server; the
    webhook store and the recoveries' producer it opens are closed with the application."""
    from bridge.admin.publish import send_test_event
    from bridge.kafka.clients import endpoint_check

    settings = bridge.settings
    assert settings.api_tokens is not None
    tokens = TokenSet.from_file(settings.api_tokens)
    async with AsyncExitStack() as opened:  # closed with the application (close_clients)
        store = await opened.enter_async_context(WebhookStore(settings))
        # One record per batch (recoveries record themselves at once): the recoveries topic is
        # read to its end offsets, which the embedded broker reports exactly only then.
        producer = await started(
            AIOKafkaProducer(
                **client_kwargs(settings),
                acks="all",
                linger_ms=0,
                max_batch_size=1,
                enable_idempotence=False,
            )
        )
        opened.push_async_callback(stopped, producer)
        clients = opened.pop_all()
    repository = TableRepository(bridge.index, bridge.freshness, store)
    service = WebhookService(
        repository,
        publisher=functools.partial(send_test_event, settings),
        check_url=endpoint_check(settings),
        locks=bridge.change_locks,
        max_webhooks=settings.api_max_webhooks,
    )
    # The topic reads made for /v1 take together at most api_scan_share of the loop.
    share = scan_share(settings)
    activity: ActivitySource = (
        WorkerActivitySource(bridge)
        if bridge.delivery_log is not None
        else KafkaActivitySource(settings, share=share)
    )
    journal = KafkaRecoveryJournal(bridge.recoveries, producer, settings.recoveries_topic)
    recoveries = Recoveries(
        kafka_recovery_runner(settings, current=bridge.index.get, share=share),
        journal=journal,
        url=settings.canonical_url,
        max_running=settings.api_max_recoveries,
        max_per_owner=per_owner(settings.api_max_recoveries),
        writing=bridge.change_locks.writing,
        live_runner=lambda record, now: live_runner(record, now, DEFAULT_STALE_AFTER),
        # Recoveries are taken over (resumed by the webhook's owner) only with the log.
        taken_over=bridge.delivery_log is not None,
    )
    # The log, stats and recovery routes only check that a webhook exists (and whose it is):
    # the table as it is will do, without an end-offsets request per read.
    as_it_is = TableRepository(bridge.index, bridge.freshness, store, current=False)
    control = ControlService(
        as_it_is,
        activity,
        recoveries,
        KafkaDeadLetters(settings, share=share),
        redeliver_lookback=settings.delivery_log_max_age,
    )
    config = ApiConfig(rate_limit=settings.api_rate_limit)
    metrics = ApiMetrics(bridge.registry)
    unwinding = Unwinding(gauge=metrics.unwinding)
    # Shared by the routes and the relay, which counts a creation before reading its body.
    buckets = TokenBuckets(config.rate_limit)
    app = create_app(
        service,
        control,
        tokens,
        config=config,
        metrics=metrics,
        unwinding=unwinding,
        buckets=buckets,
    )
    # Not ready while /v1 is refused for the handlers still unwinding: the Service sends the
    # API's requests to the workers that answer them.
    app[READINESS] = unwinding.readiness
    app.middlewares.append(_keep_authorization)
    # Inside problem_middleware's request timeout: a held request is answered "unavailable" after
    # its hold, which leaves time for the answer when the owner settles within it.
    app.middlewares.append(_holding(hold_bound(config.request_timeout), metrics))
    relay = _Relay(bridge, tokens, max_bytes=config.max_body_bytes, buckets=buckets)
    app.middlewares.append(relay.middleware)
    internal = _Internal(bridge, tokens, as_it_is, rate_limit=config.rate_limit)
    app.router.add_get("/internal/v1/activity/{webhook_id}", internal.activity, allow_head=False)
    app.router.add_get("/internal/v1/deliveries/{delivery_id}", internal.delivery, allow_head=False)
    app.router.add_get("/internal/v1/delivery-log", internal.summary, allow_head=False)

    taking_over: list[asyncio.Task[None]] = []
    reader = bridge.delivery_log
    if reader is not None:
        view = bridge.recoveries

        def owns(webhook_id: str) -> bool:
            owner = bridge.owner(webhook_id, settled=True)
            return owner.local and owner.partition in reader.assigned

        async def webhooks_current() -> bool:
            return await bridge.freshness.wait_current(time.monotonic())

        async def take_over_once() -> list[str]:
            return await take_over(
                view,
                recoveries,
                owns=owns,
                webhook=bridge.index.get,
                table_current=webhooks_current,
            )

        async def forget_once() -> list[str]:
            retention = settings.recovery_retention
            return await forget_ended(view, journal, owns=owns, retention=retention)

        async def start_taking_over(app: web.Application) -> None:
            taking_over.append(
                asyncio.create_task(
                    keep_calling(take_over_once, DEFAULT_HEARTBEAT, "recovery take-over")
                )
            )
            taking_over.append(
                asyncio.create_task(
                    keep_calling(
                        forget_once,
                        min(FORGET_INTERVAL, settings.recovery_retention),
                        "forgetting ended recoveries",
                    )
                )
            )

        app.on_startup.append(start_taking_over)

    async def stop_taking_over(app: web.Application) -> None:
        # Before the recoveries are released: a worker that stops takes none over.
        for task in taking_over:
            task.cancel()
        await asyncio.gather(*taking_over, return_exceptions=True)

    app.on_shutdown.insert(0, stop_taking_over)

    async def close_clients(app: web.Application) -> None:
        await clients.aclose()

    app.on_cleanup.append(close_clients)
    return app
