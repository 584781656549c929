"""The records of webhook changes (create, update, rotate, disable), built once for every writer.

Pure: the clock's reading and the generated secrets come in as arguments or from
:func:`new_secret`, nothing is written here, and only what a change itself may not do is
checked (a Standard Webhooks webhook without a ``whsec_`` secret, a field longer than
:data:`MAX_LENGTHS`, a ``rate_limit`` below :data:`MIN_RATE_LIMIT`, a rotation overlap no
header would carry). Every change drops a previous secret that signs nothing any more
(:func:`_drop_retired_secret`), so that no write carries a retired secret forward.
:class:`~bridge.subscriptions.store.WebhookStore` (the CLI, the workers) and
:class:`~bridge.api.service.WebhookService` (the API) both build their records with these
functions, then validate them with :func:`~bridge.subscriptions.webhook.webhook_from_record`,
so a webhook changed by either has the same defaults and fields.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from bridge.contract import standard_webhooks
from bridge.contract.events import format_timestamp, parse_time
from bridge.errors import InvalidSubscription
from bridge.subscriptions.webhook import MIN_RATE_LIMIT, Webhook

__all__ = [
    "SECRET_BYTES",
    "MAX_LENGTHS",
    "MAX_NAME",
    "MAX_OVERLAP_SECONDS",
    "MIN_RATE_LIMIT",
    "check_rate_limit",
    "default_name",
    "new_secret",
    "generated_secret",
    "created_record",
    "updated_record",
    "rotated_record",
    "disabled_record",
]

#: 32 random bytes, hex-encoded.
SECRET_BYTES = 32


#: The longest ``site_id``, ``user_id`` and ``secret`` a change may set, in characters (the
#: subscriptions topic's schema bounds the others: ``id``, ``name``, ``url``). Every worker holds
#: every webhook in memory, so no writer may make one as large as a request body. Records read
#: back are not held to these: one written before 2026-12-05 stays readable.
MAX_LENGTHS = {"site_id": 200, "user_id": 200, "secret": 256}
#: Longest name (topics/schemas/webhook.json); a webhook named after its URL is named after
#: its first this many characters.
MAX_NAME = 500

#: The longest rotation overlap (30 days): the previous secret of a rotation stays valid that
#: long at most.
MAX_OVERLAP_SECONDS = 30 * 24 * 3600


def new_secret() -> str:
    """A new signing secret of 32 random bytes (64 hex characters)."""
    return secrets.token_hex(SECRET_BYTES)


def generated_secret(standard: bool) -> str:
    """The secret given when none is: ``whsec_`` base64 for Standard Webhooks, else hex."""
    return standard_webhooks.generate_secret() if standard else new_secret()


def _standard_needs_whsec(record: Mapping[str, Any]) -> None:
    """:class:`InvalidSubscription` (``secret_not_whsec``) for Standard Webhooks signing with a
    secret that is not ``whsec_``, which no Standard Webhooks library could verify."""
    if record.get("standard_webhooks") and not str(record["secret"]).startswith("whsec_"):
        raise InvalidSubscription(
            "secret_not_whsec",
            "Standard Webhooks signing needs a whsec_ secret: give one with the change, "
            "or rotate to one first",
        )


def check_rate_limit(rate_limit: object) -> None:
    """:class:`InvalidSubscription` (``rate_limit_too_low``) for a ``rate_limit`` a writer may
    not set: a number below :data:`MIN_RATE_LIMIT` (``nan`` too). ``None`` (no limit) and what
    is not a number pass: the schema judges those."""
    if (
        isinstance(rate_limit, int | float)
        and not isinstance(rate_limit, bool)
        and not rate_limit >= MIN_RATE_LIMIT
    ):
        raise InvalidSubscription(
            "rate_limit_too_low",
            f"rate_limit must be at least {MIN_RATE_LIMIT} (a delivery every "
            f"{1 / MIN_RATE_LIMIT:g} s); remove it for no limit",
        )


def _drop_retired_secret(record: dict[str, Any], current: Webhook, now: datetime) -> None:
    """Remove ``previous_secret`` and its expiry from ``record`` (a change of ``current``
    being written at ``now``, which keeps its previous secret) unless the previous secret
    still signs: the webhook sends Standard Webhooks headers (``webhook-signature`` is the one
    header that carries more than one signature) and the overlap runs
    (:meth:`Webhook.signing_secrets`); when this change turns those headers on, only a
    ``whsec_`` previous secret is kept, as a Standard Webhooks secret. Until 2026-12-07 every
    write (an update, the bridge's disable, a rotation) wrote the retired secret again to the
    compacted topic, and the API went on showing the end of an overlap long past; a webhook
    given an overlap without those headers then turned on signed them with its non-``whsec_``
    previous secret."""
    if "previous_secret" not in record and "previous_secret_expires_at" not in record:
        return
    standard = record.get("standard_webhooks") is True
    signs = standard and len(current.signing_secrets(now)) > 1
    if signs and not current.standard_webhooks:  # turned on by this change
        signs = str(record["previous_secret"]).startswith(standard_webhooks.SECRET_PREFIX)
    if not signs:
        record.pop("previous_secret", None)
        record.pop("previous_secret_expires_at", None)


def _bounded(record: Mapping[str, Any], fields: Iterable[str]) -> None:
    """:class:`InvalidSubscription` (``too_long``) when one of ``fields`` of ``record`` (those a
    change sets) is longer than :data:`MAX_LENGTHS` allows."""
    for name in fields:
        value = record.get(name)
        limit = MAX_LENGTHS.get(name)
        if limit is not None and isinstance(value, str) and len(value) > limit:
            raise InvalidSubscription("too_long", f"{name} is longer than {limit} characters")


def _stamp_after(current: Webhook, now: datetime) -> str:
    """``updated_at`` for a change of ``current`` made ``now``: later than its own, by a
    millisecond if need be, so that every change makes a new version (the version leaves
    secrets out: a rotation within the millisecond of the last change would not show)."""
    stamp = format_timestamp(now)
    previous = current.updated_at
    if previous is not None and stamp <= previous:
        try:
            stamp = format_timestamp(parse_time(previous) + timedelta(milliseconds=1))
        except (ValueError, OverflowError):
            # Not a time the bridge wrote, or the last millisecond of year 9999 (until
            # 2026-12-07 an OverflowError: no change of the webhook could be made, the bridge's
            # disable included): the clock's stands.
            pass
    return stamp


def default_name(url: str) -> str:
    """The name of a webhook created without one: its URL's first :data:`MAX_NAME`
    characters."""
    return url[:MAX_NAME]


def created_record(
    *,
    webhook_id: str,
    url: str,
    events: Iterable[str],
    now: datetime,
    site_id: str | None = None,
    user_id: str | None = None,
    name: str | None = None,
    secret: str | None = None,
    active: bool = True,
    rate_limit: float | None = None,
    standard: bool = False,
) -> dict[str, Any]:
    """The record of a new webhook: named after its URL unless named (its first
    :data:`MAX_NAME` characters: a URL may be longer, and until 2026-12-06 a webhook with a
    URL over 500 characters and no name was refused for its ``name``), a secret generated
    unless given, created and updated ``now``."""
    stamp = format_timestamp(now)
    record: dict[str, Any] = {
        "id": webhook_id,
        "name": name if name is not None else default_name(url),
        "url": url,
        "secret": secret or generated_secret(standard),
        "events": list(events),
        "site_id": site_id,
        "user_id": user_id,
        "active": active,
        "created_at": stamp,
        "updated_at": stamp,
    }
    if rate_limit is not None:
        check_rate_limit(rate_limit)
        record["rate_limit"] = rate_limit
    if standard:
        record["standard_webhooks"] = True
    _bounded(record, MAX_LENGTHS)
    _standard_needs_whsec(record)
    return record


def updated_record(current: Webhook, changes: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """``current``'s record with ``changes``: ``active`` (the owner turning it on or off)
    clears ``disabled_reason``, ``rate_limit: None`` removes the limit, a new ``url`` renames a
    webhook named after its URL (:func:`default_name`) unless ``changes`` name it; a previous
    secret that signs nothing any more is dropped (:func:`_drop_retired_secret`: turning
    Standard Webhooks signing on drops one that is not ``whsec_``, turning it off drops any).
    :class:`InvalidSubscription` (``secret_not_whsec``) when Standard Webhooks signing is asked
    for without a ``whsec_`` secret, ``too_long`` for a field set longer than
    :data:`MAX_LENGTHS` allows, ``rate_limit_too_low`` (:func:`check_rate_limit`)."""
    if changes.get("rate_limit") is not None:
        check_rate_limit(changes["rate_limit"])
    record = current.to_record()
    if "active" in changes:
        record.pop("disabled_reason", None)
    record.update(changes)
    url = changes.get("url")
    if isinstance(url, str) and "name" not in changes and current.name == default_name(current.url):
        # The old URL as name would go on to the new endpoint in every delivery body (its
        # query token, its credentials in a record written elsewhere): until 2026-12-07 it did.
        record["name"] = default_name(url)
    _bounded(record, changes)
    _standard_needs_whsec(record)
    if "events" in changes:
        record["events"] = list(changes["events"])
    if "rate_limit" in changes and changes["rate_limit"] is None:
        record.pop("rate_limit", None)
    _drop_retired_secret(record, current, now)
    record["updated_at"] = _stamp_after(current, now)
    return record


def rotated_record(
    current: Webhook, *, now: datetime, secret: str | None = None, overlap: float = 0.0
) -> dict[str, Any]:
    """``current``'s record with a new secret (generated unless given); with ``overlap``
    seconds, the previous secret stays valid that long. A webhook the bridge disabled stays
    so (``disabled_reason``) until its owner turns it on (``active``), as after any change.
    :class:`InvalidSubscription` (``secret_not_whsec``) for a Standard Webhooks webhook given
    a secret that is not ``whsec_``; (``overlap_needs_standard_webhooks``) for an overlap of a
    webhook without Standard Webhooks headers, where no header would carry the previous
    secret: ``X-Webhook-Signature`` holds one signature, the current secret's (until
    2026-12-07 the overlap was taken, shown, and refused a second overlap as running);
    (``overlap_running``) for an overlap asked while the last rotation's still runs: one
    previous secret is kept, and a second overlap would end the first before the end its
    rotation gave (until 2026-12-06 it did). A rotation without an overlap ends both at once
    (a secret that leaked)."""
    if not 0 <= overlap <= MAX_OVERLAP_SECONDS:
        # (the API's schema says so too; until 2026-12-07 the CLI's 99999999d was a traceback)
        raise InvalidSubscription(
            "overlap_too_long", f"the overlap must be at most {MAX_OVERLAP_SECONDS // 86400} days"
        )
    if overlap > 0 and not current.standard_webhooks:
        raise InvalidSubscription(
            "overlap_needs_standard_webhooks",
            "no header would carry the previous secret: X-Webhook-Signature holds one "
            "signature, the new secret's from the next delivery on, and only the Standard "
            "Webhooks header (webhook-signature) holds several. Rotate without an overlap and "
            "have the receiver accept both secrets for a while, or turn standard_webhooks on "
            "first",
        )
    if overlap > 0 and len(current.signing_secrets(now)) > 1:
        raise InvalidSubscription(
            "overlap_running",
            f"the last rotation's overlap runs until {current.previous_secret_expires_at}: "
            "rotate with an overlap after it, or without one now (which ends it)",
        )
    record = current.to_record()
    record.update(
        secret=secret or generated_secret(current.standard_webhooks),
        updated_at=_stamp_after(current, now),
    )
    _bounded(record, ["secret"])
    _standard_needs_whsec(record)
    if overlap > 0:
        record["previous_secret"] = current.secret
        record["previous_secret_expires_at"] = format_timestamp(now + timedelta(seconds=overlap))
    else:
        record.pop("previous_secret", None)
        record.pop("previous_secret_expires_at", None)
    return record


def disabled_record(current: Webhook, reason: str, now: datetime) -> dict[str, Any]:
    """``current``'s record turned off by the bridge, saying why (``disabled_reason``), without
    a previous secret that signs nothing any more (:func:`_drop_retired_secret`)."""
    record = current.to_record()
    record.update(active=False, disabled_reason=reason, updated_at=_stamp_after(current, now))
    _drop_retired_secret(record, current, now)
    return record
