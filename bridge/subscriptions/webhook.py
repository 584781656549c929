"""A webhook subscription record: the Webhook, and parsing it from its compacted topic."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from functools import lru_cache
from types import MappingProxyType
from typing import Any, cast

from bridge.contract import jsoncanon, standard_webhooks
from bridge.contract.events import Event, parse_time
from bridge.contract.jsoncanon import MAX_SAFE_INTEGER
from bridge.contract.schemas import schema_errors
from bridge.errors import InvalidRecord, InvalidSubscription
from bridge.redaction import for_logs, url_without_userinfo
from bridge.subscriptions.secretbox import Keyring, is_encrypted

__all__ = [
    "ALL_EVENTS",
    "TEST_EVENT",
    "MIN_RATE_LIMIT",
    "RaisedRate",
    "Webhook",
    "name_as_shown",
    "webhook_from_record",
    "RECORD_PROBLEMS",
    "webhook_key",
    "parse_webhook",
    "created_seconds",
    "before_created",
    "CLOCK_MARGIN",
    "not_after",
]


ALL_EVENTS = "*"


TEST_EVENT = "test.event"

#: The lowest ``rate_limit`` (deliveries per second: one every 100 s), the slowest pace a
#: recovery goes at too (:data:`bridge.admin.recovery.MIN_RATE`). A delivery over its webhook's
#: rate is deferred, and a deferred delivery is tried again for about 11 hours
#: (:data:`bridge.delivery.deliverer.MAX_DEFERRALS`): at 0.01 the next turn comes within that,
#: at 1e-6 (one every 11.6 days) never, and at 5e-324 the wait was infinite. Writers refuse a
#: lower one (until 2026-12-07 any positive one was taken, and every delivery after the first
#: was dead-lettered ``attempts_exhausted``); one read in a record (an older writer's, another
#: producer's) is read as this (:func:`parse_webhook`).
MIN_RATE_LIMIT = 0.01


@dataclass(frozen=True, slots=True)
class Webhook:
    """One webhook subscription, as the bridge uses it."""

    id: str
    name: str
    url: str
    #: The signing secret. Never printed: see ``__repr__``.
    secret: str = field(repr=False)
    #: Event types it wants, or ``{"*"}`` for all of them.
    events: frozenset[str]
    #: Site-scoped when set; account-scoped (every site of ``user_id``) when ``None``.
    site_id: str | None
    #: The owning account; required for account scope, optional for site scope.
    user_id: str | None
    active: bool = True
    #: Optional limit of deliveries per second to this webhook: at least :data:`MIN_RATE_LIMIT`
    #: (a record's lower one is read as that).
    rate_limit: float | None = None
    #: Also sign with Standard Webhooks headers (``webhook-id``, ``webhook-timestamp``,
    #: ``webhook-signature``), which carry a timestamp and so resist replays.
    standard_webhooks: bool = False
    #: The secret before the last rotation, still valid until ``previous_secret_expires_at``.
    previous_secret: str | None = field(default=None, repr=False)
    #: ISO-8601 UTC end of the rotation overlap.
    previous_secret_expires_at: str | None = None
    #: Any other fields of the record, kept so that updates can round-trip them.
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __repr__(self) -> str:
        return (
            f"Webhook(id={self.id!r}, name={self._logged_name()!r}, "
            f"url={for_logs(self.url)!r}, "
            "secret='***', "
            f"events={sorted(self.events)!r}, site_id={self.site_id!r}, "
            f"user_id={self.user_id!r}, active={self.active!r})"
        )

    def shown_name(self) -> str:
        """The name as answers and delivery bodies show it (:func:`name_as_shown`)."""
        return name_as_shown(self.name)

    def _logged_name(self) -> str:
        # A name that is a URL (the default: the URL, or its first 500 characters; or the URL
        # before a change of it) is logged as the URL is (for_logs: no query either); any
        # other without user information. (Until 2026-12-07 only a name equal to the URL was:
        # a long URL's name, or the old URL's, showed its query token in reprs.)
        url_like = self.name == self.url or self.name[:8].lower().startswith(
            ("http://", "https://")
        )
        return for_logs(self.name) if url_like else name_as_shown(self.name)

    def signing_secrets(self, now: datetime) -> list[str]:
        """The secrets to sign with: the current one, and the previous one during an overlap."""
        secrets = [self.secret]
        if self.previous_secret and self.previous_secret_expires_at:
            # An expiry that is not a time with a zone ends the overlap: signing falls back to
            # the current secret rather than failing every delivery.
            try:
                overlapping = now < parse_time(self.previous_secret_expires_at)
            except (ValueError, TypeError):  # TypeError: ``now`` without an offset
                overlapping = False
            if overlapping:
                secrets.append(self.previous_secret)
        return secrets

    def overlap_end(self, now: datetime) -> str | None:
        """``previous_secret_expires_at`` while the previous secret signs a header at ``now``
        (a Standard Webhooks webhook's rotation overlap runs), else ``None``: what the API and
        the CLI show. ``X-Webhook-Signature`` carries the current secret alone, so a webhook
        without Standard Webhooks headers never has one (until 2026-12-07 the API showed the
        end of an overlap no header carried, and of one that had ended)."""
        if self.standard_webhooks and len(self.signing_secrets(now)) > 1:
            return self.previous_secret_expires_at
        return None

    @property
    def created_at(self) -> str | None:
        """The record's ``created_at`` as written (``None`` in a record without one): which
        webhook of this id it is, when an id is used again after a delete."""
        value = self.extra.get("created_at")
        return value if isinstance(value, str) else None

    @property
    def updated_at(self) -> str | None:
        """The record's ``updated_at`` as written (``None`` in a record without one): which
        version of the webhook it is (with :attr:`created_at`)."""
        value = self.extra.get("updated_at")
        return value if isinstance(value, str) else None

    @property
    def created_seconds(self) -> float | None:
        """:attr:`created_at` as seconds since the epoch (``None`` without a readable one)."""
        return None if self.created_at is None else created_seconds(self.created_at)

    def is_incarnation(self, created_at: str | None) -> bool:
        """Whether something made for the webhook created at ``created_at`` (``None``: made
        before deliveries named it) is this webhook's, not a deleted one's of the same id."""
        return created_at is None or self.created_at is None or created_at == self.created_at

    def made_for(self, at_seconds: float, created_at: str | None) -> bool:
        """Whether what was made at ``at_seconds`` for the webhook created at ``created_at``
        (an attempt, as its record says) is this webhook's: the same webhook, and not made
        before it was (a deleted webhook's of the same id)."""
        return self.is_incarnation(created_at) and not before_created(at_seconds, self.created_at)

    def refusal(self, created_at: str | None, event: Event) -> str | None:
        """Why a delivery of ``event`` made for the webhook created at ``created_at`` is not
        sent to this one now: ``webhook_deleted`` (this is another webhook of its id: see
        :meth:`is_incarnation`), ``webhook_inactive``, ``not_receiving`` (:meth:`receives`);
        ``None`` when it is. The rule a retry is held to when it falls due, and a dead-letter
        replay before it writes one."""
        gone = self.gone_for(created_at)
        if gone is None and not self.receives(event):
            return "not_receiving"
        return gone

    def gone_for(self, created_at: str | None) -> str | None:
        """Why nothing made for the webhook created at ``created_at`` is sent to this one now,
        whatever the event: ``webhook_deleted`` (another webhook of its id), or
        ``webhook_inactive``; ``None`` when it is still that webhook, and active (what a
        recovery checks as it runs)."""
        if not self.is_incarnation(created_at):
            return "webhook_deleted"
        if not self.active:
            return "webhook_inactive"
        return None

    @property
    def state(self) -> str:
        """``active``; ``disabled`` when the bridge turned it off (``disabled_reason`` in the
        record); else ``inactive`` (turned off by its owner)."""
        if self.active:
            return "active"
        return "disabled" if self.extra.get("disabled_reason") else "inactive"

    def wants(self, event_type: str) -> bool:
        return ALL_EVENTS in self.events or event_type in self.events

    def receives(self, event: Event) -> bool:
        """Whether this webhook, as it is, gets a delivery of ``event``: it is active, and the
        event is of its scope (its site; its account for an account-wide webhook) and of a type
        its filter names. A ``test.event`` goes only to the webhook its ``data.webhook_id``
        names, whatever its filter and site, when the event comes from its owner's account (from
        its site, when it has no owner). The one rule of :meth:`SubscriptionIndex.match
        <bridge.subscriptions.index.SubscriptionIndex.match>` and of every later attempt: a
        retry is sent only while it holds (until 2026-12-06 a retry went to the webhook of its
        id as it was then: one moved to another site since got its old site's events)."""
        if not self.active:
            return False
        if event.type == TEST_EVENT:
            if str(event.data.get("webhook_id")) != self.id:
                return False
            if self.user_id is not None:
                return self.user_id == event.user_id
            return self.site_id == event.site_id
        if self.site_id is not None:
            in_scope = self.site_id == event.site_id
        else:
            in_scope = self.user_id == event.user_id
        return in_scope and self.wants(event.type)

    @property
    def owner(self) -> tuple[str, str]:
        """Whose webhook it is, as the API's limits count them: its site's
        (``("site_id", site)``), or for an account-wide webhook its account's
        (``("user_id", user)``)."""
        if self.site_id is not None:
            return ("site_id", self.site_id)
        assert self.user_id is not None  # (the schema requires one of them)
        return ("user_id", self.user_id)

    def in_scope(self, event: Event) -> bool:
        if self.site_id is not None:
            return self.site_id == event.site_id
        return self.user_id == event.user_id

    def to_record(self) -> dict[str, Any]:
        """The subscriptions-topic record value."""
        record: dict[str, Any] = dict(self.extra)
        record.update(
            id=self.id,
            name=self.name,
            url=self.url,
            secret=self.secret,
            events=sorted(self.events),
            site_id=self.site_id,
            user_id=self.user_id,
            active=self.active,
        )
        if self.rate_limit is not None:
            record["rate_limit"] = self.rate_limit
        if self.standard_webhooks:
            record["standard_webhooks"] = True
        if self.previous_secret is not None:
            record["previous_secret"] = self.previous_secret
            record["previous_secret_expires_at"] = self.previous_secret_expires_at
        return record

    def to_bytes(self) -> bytes:
        """The record's bytes, as :meth:`WebhookStore.write
        <bridge.subscriptions.store.WebhookStore.write>` writes them (secrets as held)."""
        return jsoncanon.dumps(self.to_record(), big_integers=True)


#: Record fields the Webhook holds as attributes; the others stay in ``extra``.
_KNOWN = frozenset(f.name for f in fields(Webhook)) - {"extra"}


def name_as_shown(name: str) -> str:
    """A webhook's name as the API, the CLI and every delivery body show it: without the user
    information of a URL in it. A record written elsewhere may be named after its URL,
    password and all, and a name is sent to the endpoint, which need not be that URL's (a
    webhook whose URL changed since: until 2026-12-07 the body sent the password). Read as a
    URL when it starts as one (:func:`~bridge.redaction.url_without_userinfo`)."""
    return url_without_userinfo(name)


def webhook_from_record(value: Any, keyring: Keyring | None = None) -> Webhook:
    """Validate a record value built in Python and build the :class:`Webhook`.

    Raises :class:`InvalidSubscription`: ``invalid_text`` for a lone surrogate in any string,
    ``schema_invalid``, ``secret_undecryptable`` or ``secret_malformed``. The URL is not judged
    here (a stored webhook keeps its URL; see :mod:`bridge.subscriptions.urls`): writers check it.
    """
    try:
        jsoncanon.check_text(value)
    except InvalidRecord as exc:
        raise InvalidSubscription(exc.reason, exc.detail) from None
    return _webhook(value, keyring)


#: Called with a webhook's id and the ``rate_limit`` its record gave when that was below
#: :data:`MIN_RATE_LIMIT` (the webhook is read with that): see :func:`parse_webhook`.
RaisedRate = Callable[[str, float], None]


def _webhook(value: Any, keyring: Keyring | None, *, reveal: bool = True) -> Webhook:
    """The webhook of a decoded record value whose strings are all text; with ``reveal``
    false its secrets as stored (see :func:`parse_webhook`)."""
    errors = schema_errors("webhook", value)
    if errors:
        raise InvalidSubscription("schema_invalid", "; ".join(errors))
    try:
        # The bridge writes the record again (a disable, a rotation, any change keeps its other
        # fields), as WebhookStore.write does: one it could not encode (nested deeper than JSON
        # is here) was matched, and each of those writes failed (until 2026-12-07). An integer
        # beyond 2^53 in a field of the producer's own (a 64-bit id) is written back as read.
        jsoncanon.check_encodable(value, big_integers=True)
    except InvalidRecord as exc:
        raise InvalidSubscription(
            "schema_invalid", f"cannot be written again: {exc.detail}"
        ) from None
    rate_limit = value.get("rate_limit")
    if type(rate_limit) is int and not -MAX_SAFE_INTEGER <= rate_limit <= MAX_SAFE_INTEGER:
        # The API answers with it (a JavaScript number): every read of the webhook would fail.
        raise InvalidSubscription(
            "schema_invalid", "rate_limit is an integer beyond +/-(2**53 - 1)"
        )
    if rate_limit is not None and rate_limit < MIN_RATE_LIMIT:
        # (the schema has it a positive number) Read as the lowest a writer takes: the
        # webhook gets a delivery every 100 s at least, rather than its first delivery and
        # none after, each dead-lettered (until 2026-12-07). A write of it writes that.
        rate_limit = MIN_RATE_LIMIT
    aad = value["id"].encode("utf-8")
    secret = value["secret"]
    previous = value.get("previous_secret")
    if reveal:
        secret = _reveal(secret, keyring, aad)
        if not secret:
            # An encrypted empty string (the schema refuses a plain one): an HMAC key anyone
            # can sign with (until 2026-12-07 deliveries were signed with it).
            raise InvalidSubscription("secret_malformed", "the secret decrypts to nothing")
        if isinstance(previous, str):
            previous = _reveal(previous, keyring, aad) or None
    if reveal and value.get("standard_webhooks"):
        # Fail here, once, rather than at every delivery: a whsec_ secret must be base64.
        standard_webhooks.secret_key(secret)
        if isinstance(previous, str):
            try:
                standard_webhooks.secret_key(previous)
            except InvalidSubscription:
                # A previous secret no one can sign with ends the overlap, as an expiry that
                # is no time does: signed with the current secret alone (until 2026-12-07
                # every delivery failed, as the bridge's error, and each counted against its
                # endpoint's circuit, other webhooks' on the host with it).
                previous = None
    return Webhook(
        id=value["id"],
        name=value["name"],
        url=value["url"],
        secret=secret,
        events=_shared(frozenset(value["events"])),
        site_id=value.get("site_id"),
        user_id=value.get("user_id"),
        active=value["active"],
        rate_limit=rate_limit,
        standard_webhooks=bool(value.get("standard_webhooks", False)),
        previous_secret=previous if isinstance(previous, str) else None,
        previous_secret_expires_at=value.get("previous_secret_expires_at"),
        extra={k: v for k, v in value.items() if k not in _KNOWN} or _NO_EXTRA,
    )


#: One instance of each distinct event filter and of "no other fields": a worker holds every
#: webhook in memory (100,000 of them in the benchmark), and most share these.
_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})


@lru_cache(maxsize=10_000)
def _shared(events: frozenset[str]) -> frozenset[str]:
    return events  # the cache returns the first instance equal to ``events``


def _reveal(secret: str, keyring: Keyring | None, aad: bytes) -> str:
    if keyring is not None:
        return keyring.decrypt(secret, aad=aad)
    if is_encrypted(secret):
        raise InvalidSubscription(
            "secret_undecryptable", "the secret is encrypted but no secret_keys are configured"
        )
    return secret


#: Why a subscriptions-topic record was refused (:attr:`InvalidSubscription.reason` of
#: :func:`parse_webhook`): a bounded set, the label values of
#: ``webhook_bridge_invalid_subscription_records_total``.
RECORD_PROBLEMS = (
    "null_key",
    "key_not_utf8",
    "key_mismatch",
    "malformed_json",
    "invalid_text",
    "schema_invalid",
    "secret_undecryptable",
    "secret_malformed",
)


def webhook_key(key: bytes | None) -> str | None:
    """The webhook id a record key names; ``None`` when it names none (no key, not UTF-8)."""
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def parse_webhook(
    key: bytes | None,
    raw: bytes | None,
    keyring: Keyring | None = None,
    *,
    reveal: bool = True,
    on_raised_rate: RaisedRate | None = None,
) -> Webhook | None:
    """Parse a subscriptions-topic record; ``None`` for a tombstone.

    With ``reveal`` false the secrets are left as stored (encrypted, with ``secret_keys``), not
    decrypted nor checked: a webhook to judge (which it is, what it receives), never to sign
    with, read by a process that need not hold the keys.

    A ``rate_limit`` below :data:`MIN_RATE_LIMIT` (a record of a writer older than that
    floor, or of another producer) is read as it, and ``on_raised_rate`` told (a worker counts
    and logs it, once per record it reads).

    Raises :class:`InvalidSubscription`, with one of :data:`RECORD_PROBLEMS` as its reason, for
    any other record: no key (a compacted topic keeps no keyless record, and Apache Kafka refuses
    one), a key that is not UTF-8, a value that is not a valid webhook, a key that is not its id.
    Nothing else: the subscription table reads every record through here.
    """
    webhook_id = webhook_key(key)
    if webhook_id is None:
        if key is None:
            raise InvalidSubscription("null_key", "the record has no key (the webhook id)")
        raise InvalidSubscription("key_not_utf8", "the record key is not UTF-8")
    if raw is None:
        return None
    try:
        value = jsoncanon.loads(raw)
    except InvalidRecord as exc:
        raise InvalidSubscription(exc.reason, exc.detail) from None
    webhook = _webhook(value, keyring, reveal=reveal)
    if webhook.id != webhook_id:
        raise InvalidSubscription(
            "key_mismatch", f"the record key {webhook_id[:200]!r} is not the webhook id"
        )
    if on_raised_rate is not None and webhook.rate_limit == MIN_RATE_LIMIT:
        written: float = cast(dict[str, Any], value)["rate_limit"]  # (the schema held)
        if written < MIN_RATE_LIMIT:
            on_raised_rate(webhook.id, written)
    return webhook


@lru_cache(maxsize=4096)
def created_seconds(created_at: str) -> float | None:
    """A webhook's ``created_at`` as seconds since the epoch; ``None`` when unreadable.
    Read per attempt by the stats and per failure by endpoint health: cached."""
    try:
        return parse_time(created_at).timestamp()
    except ValueError:
        return None


#: Seconds a webhook's own times may run ahead of a worker's clock and still be read.
CLOCK_MARGIN = 300.0


def not_after(stamp: str | None, now: float) -> str | None:
    """``stamp`` (a webhook's ``created_at`` or ``updated_at``), or ``None`` when it is more
    than :data:`CLOCK_MARGIN` after ``now``."""
    seconds = created_seconds(stamp) if stamp is not None else None
    return None if seconds is not None and seconds > now + CLOCK_MARGIN else stamp


def before_created(moment: object, created_at: str | None) -> bool:
    """Whether ``moment`` (seconds since the epoch) is before the webhook created at
    ``created_at`` was: what began then (a failing period) was another webhook's of its id,
    one deleted before the id was used again. False without a readable time on either side."""
    if created_at is None or not isinstance(moment, int | float):
        return False
    created = created_seconds(created_at)
    return created is not None and moment < created
