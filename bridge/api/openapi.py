"""The OpenAPI 3.1 document of ``/v1``, built from the topics' JSON Schemas; its request schemas.

The document is the one source of truth for request bodies: the routes validate each body
against the schema named here (:func:`request_validator`), and those schemas take their field
definitions from ``topics/schemas/webhook.json``, which the CLI and the workers validate
records with. So the API, the CLI and the subscription table refuse the same values.

An operation the application does not serve would carry ``x-bridge-served: false``; today it
serves every one (tests/unit/api/test_openapi.py keeps the two in step).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import cache
from typing import Any

from bridge.admin.dead_letters import SKIP_REASONS
from bridge.admin.publish import MAX_TEST_MESSAGE
from bridge.admin.recovery import MIN_RATE
from bridge.api.control import MAX_REPLAY_CURSOR
from bridge.api.idempotency import HEADER as IDEMPOTENCY_KEY
from bridge.api.idempotency import (
    KEY_LIFETIME,
    MAX_KEY_LENGTH,
    MAX_KEYS_PER_WEBHOOK,
    REPLAYED_HEADER,
)
from bridge.api.problems import DEFAULT_MAX_BODY_BYTES
from bridge.attempts.log import STATUS_CLASSES
from bridge.attempts.record import TRIGGERS
from bridge.attempts.stats import LATENCY_BOUNDS
from bridge.contract.resources import load_json
from bridge.contract.schemas import EVENT_TYPES, Validator
from bridge.subscriptions.changes import MAX_LENGTHS, MAX_OVERLAP_SECONDS, MIN_RATE_LIMIT

__all__ = [
    "API_VERSION",
    "MAX_PAGE_LIMIT",
    "DEFAULT_PAGE_LIMIT",
    "WEBHOOK_STATES",
    "DELIVERY_STATES",
    "HEALTH_STATES",
    "MAX_RECOVERY_RATE",
    "MIN_RECOVERY_RATE",
    "openapi_document",
    "request_schema",
    "request_validator",
    "served_operations",
]


def _bounds_text(bounds: tuple[float, ...]) -> str:
    """``5, 10, 25 ms, 1, 2.5 s`` for the finite bounds (seconds) of a latency histogram."""
    finite = [b for b in bounds if b != float("inf")]
    millis = ", ".join(f"{b * 1000:g}" for b in finite if b < 1)
    seconds = ", ".join(f"{b:g}" for b in finite if b >= 1)
    return f"{millis} ms, {seconds} s"


#: How the stats' latency quantiles are estimated (:mod:`bridge.attempts.stats`).
_LATENCY_ESTIMATE = (
    f"Estimated from a histogram of the window's requests (bounds "
    f"{_bounds_text(LATENCY_BOUNDS)}), interpolated within the bucket that holds the quantile "
    "and within the fastest and slowest request of the window: off by at most that bucket's "
    "width, exact when every request took the same time; null without requests."
)

API_VERSION = "1.0.0"
DEFAULT_PAGE_LIMIT = 50
MAX_PAGE_LIMIT = 200

#: What a delivery's last attempt says (``Delivery.state``).
DELIVERY_STATES = ("delivered", "retrying", "dead_lettered", "dropped")
#: ``WebhookStats.state.health``.
HEALTH_STATES = ("healthy", "failing", "disabled", "inactive")
#: The fastest pace a recovery may be asked for (deliveries per second).
MAX_RECOVERY_RATE = 1000
#: ... and at least (one every 100 s): a rate of 5e-324 was taken, and its recovery waited
#: for ever between two deliveries, holding a place (until 2026-12-05).
MIN_RECOVERY_RATE = MIN_RATE

#: ``active``; ``inactive`` (turned off by its owner); ``disabled`` (turned off by the bridge:
#: the endpoint answered 410, or failed longer than ``disable_after``; ``disabled_reason`` says).
WEBHOOK_STATES = ("active", "inactive", "disabled")

_PROBLEM = "#/components/schemas/Problem"


def _webhook_field(name: str) -> dict[str, Any]:
    """A property schema of ``topics/schemas/webhook.json`` (a copy); an array of unique
    members of an ``enum`` gets the ``maxItems`` it cannot pass anyway, so that a request's
    array of a million is refused for its length, not judged item by item."""
    field = copy.deepcopy(load_json("schemas/webhook.json")["properties"][name])
    members = field.get("items", {}).get("enum")
    if field.get("type") == "array" and field.get("uniqueItems") and members:
        # First: keywords are judged in order, and a request's errors read at most fifty.
        field = {"maxItems": len(members), **field}
    return dict(field)


def _attempt_fields() -> dict[str, Any]:
    return copy.deepcopy(load_json("schemas/attempt.json")["properties"])


def _embedded(path: str) -> dict[str, Any]:
    """A topic schema to embed in components (without ``$schema`` and ``$id``, which would
    change the base URI of the references around it)."""
    schema = copy.deepcopy(load_json(path))
    for key in ("$schema", "$id"):
        schema.pop(key, None)
    return dict(schema)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_SCOPE_ANY_OF = copy.deepcopy(load_json("schemas/webhook.json")["anyOf"])

_WRITABLE = ("name", "url", "events", "site_id", "user_id", "active", "rate_limit")


def _schemas() -> dict[str, Any]:
    webhook_props: dict[str, Any] = {
        "id": _webhook_field("id"),
        "name": _webhook_field("name"),
        "url": _webhook_field("url"),
        "events": _webhook_field("events"),
        "site_id": _webhook_field("site_id"),
        "user_id": _webhook_field("user_id"),
        "active": _webhook_field("active"),
        "state": {"enum": list(WEBHOOK_STATES)},
        "disabled_reason": _webhook_field("disabled_reason"),
        "rate_limit": {
            **_webhook_field("rate_limit"),
            "description": "At most this many deliveries per second to this webhook (a record "
            f"written with less than {MIN_RATE_LIMIT} before 2026-12-07, or by another "
            f"producer, is delivered and shown at {MIN_RATE_LIMIT}).",
        },
        "standard_webhooks": _webhook_field("standard_webhooks"),
        "previous_secret_expires_at": {
            "type": ["string", "null"],
            "description": "End of the running rotation overlap: until then the previous secret "
            "signs the Standard Webhooks header (webhook-signature) too. Null without one, once "
            "it has passed (the next change drops the previous secret from the record), and for "
            "a webhook without Standard Webhooks headers, whose X-Webhook-Signature carries the "
            "current secret alone.",
        },
        "created_at": {"type": ["string", "null"]},
        "updated_at": {"type": ["string", "null"]},
        "version": {
            "type": "string",
            "description": "Changes with every change of the webhook; its ETag (quoted).",
        },
    }
    create_props = {
        name: _webhook_field(name) for name in ("id", "secret", "standard_webhooks", *_WRITABLE)
    }
    create_props["id"]["not"] = {"enum": [".", ".."]}
    create_props["id"]["description"] = (
        "Default: wh_ and 32 hex digits. Any text but . and .. (a path segment that clients "
        "resolve away)."
    )
    create_props["secret"]["description"] = (
        "Default: 32 random bytes (hex), or a whsec_ secret with standard_webhooks."
    )
    update_props = {name: _webhook_field(name) for name in (*_WRITABLE, "standard_webhooks")}
    for props in (create_props, update_props):
        for name, longest in MAX_LENGTHS.items():
            if name in props:
                props[name]["maxLength"] = longest
        # The topic's schema takes any positive rate (a record written before 2026-12-07 is
        # read as the floor): a change sets MIN_RATE_LIMIT at least.
        rate = props["rate_limit"]
        rate.pop("exclusiveMinimum", None)
        rate["minimum"] = MIN_RATE_LIMIT
        rate["description"] = (
            f"Optional: at most this many deliveries per second to this webhook, at least "
            f"{MIN_RATE_LIMIT} (one every {1 / MIN_RATE_LIMIT:g} s: a delivery over the rate is "
            "deferred, and a slower rate would defer it past its last try)."
        )
    update_props["rate_limit"]["description"] += " null removes the limit."
    attempt = _attempt_fields()
    # For a starting worker's recent answers (bridge.delivery.recent_answers): the delivery log
    # does not keep it, the webhook's URL says where its attempts go.
    del attempt["endpoint"]
    attempt["event_id"] = {"type": ["string", "null"]}
    attempt["event_at"] = {
        "type": ["string", "null"],
        "description": "The event's own timestamp (null in attempts recorded before it was).",
    }
    attempt["webhook_created_at"] = {
        "type": ["string", "null"],
        "description": "The created_at of the webhook the attempt was made for (null in "
        "attempts recorded before it was): an id can be used again after a delete.",
    }
    attempt["next_at"] = {
        "type": ["string", "null"],
        "description": "When the retry is due, for next retry (null otherwise, or not recorded).",
    }
    attempt["response_bytes"]["description"] = (
        "Bytes of the response body read, up to the 64 KiB cap on a response (its head counted "
        "too): the body's length unless response_truncated. Null when no response arrived, or "
        "not recorded."
    )
    attempt["response_truncated"] = {
        "type": "boolean",
        "description": "True when the cap ended the body: response_bytes is what was read.",
    }
    attempt["response_prefix"]["description"] = (
        "The response body's first bytes as UTF-8 text (invalid bytes replaced), only when the "
        "worker keeps them (attempt_response_prefix_bytes, off by default); absent otherwise. "
        "Written by the receiver: may hold control characters."
    )
    attempt["trigger"]["description"] = (
        "manual for an attempt of a delivery an operator sent again (a redelivery, a recovery, "
        "a dead letter replayed) and of its retries, whose attempt numbers count from that "
        "sending (from 1 for a redelivery or a recovery); scheduled for the event's own "
        "attempts (and attempts recorded before 2026-12-06)."
    )
    attempt["recovery_id"] = {
        "type": ["string", "null"],
        "description": "For trigger manual: the recovery or redelivery that sent the delivery "
        "(GET /v1/recoveries/{id}); null for a replayed dead letter, the event's own attempts "
        "and attempts recorded before 2026-12-06.",
    }
    attempt["status_class"] = {
        "enum": [*STATUS_CLASSES, "other"],
        "description": "The status's class; none when no response arrived.",
    }
    counts = ("attempts", "successes", "failures", "skipped")
    window = {
        "type": "object",
        "description": "attempts counts requests made (successes + failures); skipped "
        "attempts (open circuit, full queue, rate limit) are apart.",
        "required": [*counts, "failure_ratio", "latency_p50_seconds", "latency_p99_seconds"],
        "properties": {
            **{name: {"type": "integer", "minimum": 0} for name in counts},
            "failure_ratio": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            "latency_p50_seconds": {
                "type": ["number", "null"],
                "minimum": 0,
                "description": _LATENCY_ESTIMATE,
            },
            "latency_p99_seconds": {
                "type": ["number", "null"],
                "minimum": 0,
                "description": _LATENCY_ESTIMATE,
            },
        },
        "additionalProperties": False,
    }
    nullable_text = {"type": ["string", "null"]}
    time_range = {
        "since": {"type": "string", "format": "date-time"},
        "until": {"type": "string", "format": "date-time"},
    }
    return {
        "Problem": {
            "type": "object",
            "description": "RFC 9457 problem details.",
            "required": ["type", "title", "status", "detail"],
            "properties": {
                "type": {"type": "string", "format": "uri"},
                "title": {"type": "string"},
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "detail": {"type": "string"},
                "errors": {"type": "array", "items": _ref("FieldError")},
            },
        },
        "FieldError": {
            "type": "object",
            "required": ["field", "in", "reason", "detail"],
            "properties": {
                "field": {"type": "string", "description": "Dotted path, e.g. events[0]."},
                "in": {"enum": ["body", "query", "header", "path"]},
                "reason": {"type": "string", "description": "snake_case cause."},
                "detail": {"type": "string"},
            },
        },
        "Webhook": {
            "type": "object",
            "required": ["id", "name", "url", "events", "active", "state", "version"],
            "properties": webhook_props,
        },
        "WebhookWithSecret": {
            "allOf": [
                _ref("Webhook"),
                {
                    "type": "object",
                    "required": ["secret"],
                    "properties": {"secret": {"type": "string"}},
                },
            ],
            "description": "Only creation and rotation return the secret.",
        },
        "WebhookList": {
            "type": "object",
            "required": ["items", "next_cursor"],
            "properties": {
                "items": {"type": "array", "items": _ref("Webhook")},
                "next_cursor": {"type": ["string", "null"]},
            },
        },
        "WebhookCreate": {
            "type": "object",
            "required": ["url", "events"],
            "anyOf": _SCOPE_ANY_OF,
            "properties": create_props,
            "additionalProperties": False,
        },
        "WebhookUpdate": {
            "type": "object",
            "minProperties": 1,
            "properties": update_props,
            "additionalProperties": False,
            "description": "Only the fields given change; rate_limit null removes the limit. "
            "The secret changes only by rotation. Turning standard_webhooks on keeps a running "
            "overlap's previous secret only when it is whsec_ (a Standard Webhooks secret); "
            "turning it off ends the overlap (no other header carries the previous secret).",
        },
        "RotateSecret": {
            "type": "object",
            "properties": {
                "secret": {**_webhook_field("secret"), "maxLength": MAX_LENGTHS["secret"]},
                "overlap_seconds": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": MAX_OVERLAP_SECONDS,
                    "description": "How long the previous secret also signs the Standard "
                    "Webhooks header (webhook-signature), the one header that carries several "
                    "signatures. A webhook without standard_webhooks takes no overlap: 409 "
                    "(overlap_needs_standard_webhooks), as its X-Webhook-Signature carries the "
                    "new secret alone from the next delivery on. One previous secret is kept: "
                    "while the last rotation's overlap runs, another overlap is 409 "
                    "(overlap_running); a rotation without one ends it.",
                },
            },
            "additionalProperties": False,
        },
        "TestEventRequest": {
            "type": "object",
            "properties": {
                "message": {"type": "string", "maxLength": MAX_TEST_MESSAGE},
                "site_id": {"type": "string", "minLength": 1, "maxLength": 200},
                "user_id": {"type": "string", "minLength": 1, "maxLength": 200},
            },
            "additionalProperties": False,
        },
        "TestEventAccepted": {
            "type": "object",
            "required": ["webhook_id", "event_id", "delivery_id"],
            "properties": {
                "webhook_id": {"type": "string"},
                "event_id": {"type": "string"},
                "delivery_id": {
                    "type": "string",
                    "description": "The X-Webhook-Delivery id the test event is sent with: "
                    "GET /v1/deliveries/{delivery_id} shows its attempts once the first is made "
                    "(404 until then).",
                },
            },
        },
        "Attempt": {
            "type": "object",
            "required": [name for name in attempt if name != "response_prefix"],
            "properties": attempt,
            "additionalProperties": False,
        },
        "EventTypeList": {
            "type": "object",
            "required": ["items"],
            "properties": {
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["type", "data_schema"],
                        "properties": {
                            "type": {"enum": list(EVENT_TYPES)},
                            "data_schema": {
                                "type": "object",
                                "description": "The JSON Schema (2020-12) the event type's "
                                "data is validated against before any delivery: what a "
                                "receiver finds in a delivery's data.",
                            },
                        },
                    },
                },
            },
        },
        "RecoveryList": {
            "type": "object",
            "required": ["items", "next_cursor"],
            "properties": {
                "items": {"type": "array", "items": _ref("Recovery")},
                "next_cursor": {"type": ["string", "null"]},
            },
        },
        "AttemptList": {
            "type": "object",
            "required": ["items", "next_cursor"],
            "properties": {
                "items": {"type": "array", "items": _ref("Attempt")},
                "next_cursor": {"type": ["string", "null"]},
            },
        },
        "Delivery": {
            "type": "object",
            "required": [
                "delivery_id",
                "webhook_id",
                "event_id",
                "event_type",
                "state",
                "attempts",
            ],
            "properties": {
                "delivery_id": {"type": "string"},
                "webhook_id": {"type": "string"},
                "event_id": nullable_text,
                "event_type": {"type": "string"},
                "state": {
                    "enum": list(DELIVERY_STATES),
                    "description": "From the last attempt: succeeded, to be retried, "
                    "dead-lettered (attempts exhausted, or the endpoint disabled: 410 Gone, "
                    "failing too long), or dropped: a first attempt or a retry not sent, its "
                    "webhook deleted, turned off or no longer getting the event (error "
                    "webhook_deleted, webhook_inactive, not_receiving); nothing follows.",
                },
                "attempts": {"type": "array", "minItems": 1, "items": _ref("Attempt")},
            },
            "additionalProperties": False,
        },
        "WebhookStats": {
            "type": "object",
            "required": ["webhook_id", "windows", "last_success_at", "last_failure_at", "state"],
            "properties": {
                "webhook_id": {"type": "string"},
                "windows": {
                    "type": "object",
                    "required": ["1h", "24h", "7d"],
                    "properties": {"1h": window, "24h": window, "7d": window},
                    "additionalProperties": False,
                },
                "last_success_at": nullable_text,
                "last_failure_at": nullable_text,
                "state": {
                    "type": "object",
                    "required": [
                        "active",
                        "health",
                        "failing_since",
                        "disabled_reason",
                        "circuit_open_until",
                        "source",
                    ],
                    "properties": {
                        "active": {"type": "boolean"},
                        "health": {"enum": list(HEALTH_STATES)},
                        "failing_since": nullable_text,
                        "disabled_reason": nullable_text,
                        "circuit_open_until": {
                            "type": ["string", "null"],
                            "description": "Set while the endpoint's circuit is open: the newest "
                            "attempt was skipped (circuit_open) and its retry, when the circuit "
                            "lets a probe through, is still to come. Null otherwise.",
                        },
                        "source": {
                            "enum": ["webhook", "status", "log"],
                            "description": "What the health was read from: the webhook record "
                            "(inactive, disabled), the endpoint status topic, or the delivery log "
                            "when the endpoint has no status record.",
                        },
                    },
                    "additionalProperties": False,
                },
            },
            "additionalProperties": False,
        },
        "RecoveryCreate": {
            "type": "object",
            "required": ["since"],
            "properties": {
                **time_range,
                "rate": {
                    "type": "number",
                    "minimum": MIN_RECOVERY_RATE,
                    "maximum": MAX_RECOVERY_RATE,
                    "description": "Deliveries enqueued per second, at most (default 10, "
                    "never above the webhook's rate_limit).",
                },
            },
            "additionalProperties": False,
            "description": "until defaults to now.",
        },
        "Recovery": {
            "type": "object",
            "description": "A recovery or a redelivery (a recovery of one delivery_id), as it "
            "goes. Workers record it in the recoveries topic, so every worker shows it; "
            "python -m bridge.api serve keeps it in its process.",
            "required": [
                "id",
                "kind",
                "webhook_id",
                "since",
                "until",
                "delivery_id",
                "rate",
                "state",
                "scanned",
                "enqueued",
                "invalid",
                "progress",
                "error",
                "resumed",
                "started_at",
                "finished_at",
            ],  # fmt: skip
            "properties": {
                "id": {"type": "string"},
                "kind": {"const": "recover"},
                "webhook_id": {"type": "string"},
                "since": {"type": "string"},
                "until": {"type": "string"},
                "delivery_id": nullable_text,
                "rate": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "description": "Deliveries enqueued per second at most, as it goes now: the "
                    "rate asked for, at most the webhook's rate_limit as it is now.",
                },
                "state": {"enum": ["running", "done", "cancelled", "failed"]},
                "scanned": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Source records read.",
                },
                "enqueued": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Deliveries enqueued (the webhook's matching events).",
                },
                "invalid": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Source records that are not valid events.",
                },
                "progress": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": 1,
                    "description": "The share of the records to read that were read, never "
                    "falling: 0 until the reading starts, below 1 while it runs, 1 once done (a "
                    "failed or cancelled one keeps its share).",
                },
                "error": {
                    "type": ["string", "null"],
                    "description": "Why it failed: event_not_retained (a redelivery whose event "
                    "left the source topics), not_receiving (a redelivery whose event its webhook "
                    "no longer gets: its event filter, site or account changed), webhook_deleted "
                    "(deleted, or its id taken by another webhook), webhook_inactive (turned off "
                    "while it ran), or the error's class.",
                },
                "resumed": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "How many times another worker resumed it (its worker "
                    "stopped); what it had enqueued is not enqueued again after a clean stop.",
                },
                "started_at": nullable_text,
                "finished_at": nullable_text,
            },
            "additionalProperties": False,
        },
        "DeadLetter": _embedded("schemas/deadletter.json"),
        "DeadLetterList": {
            "type": "object",
            "required": ["items", "next_cursor"],
            "properties": {
                "items": {"type": "array", "items": _ref("DeadLetter")},
                "next_cursor": {"type": ["string", "null"]},
            },
        },
        "DeadLetterReplay": {
            "type": "object",
            "description": "Every field narrows the replay; a token restricted to a site or "
            "account must give webhook_id.",
            "properties": {
                "webhook_id": {"type": "string", "minLength": 1, "maxLength": 200},
                "delivery_id": {"type": "string", "minLength": 1, "maxLength": 200},
                **time_range,
                "cursor": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_REPLAY_CURSOR,
                    "description": "The next_cursor of a replay that stopped before its end "
                    "(complete false), given with the same filter: goes on after the letters "
                    "it took, to the same until.",
                },
            },
            "additionalProperties": False,
        },
        "ReplayReport": {
            "type": "object",
            "required": [
                "replayed",
                "skipped",
                "skipped_by_reason",
                "complete",
                "next_cursor",
            ],
            "properties": {
                "replayed": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "The delivery ids written to the first retry tier, each "
                    "once (its first letter read).",
                },
                "skipped": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Letters not replayed, in all (skipped_by_reason says why).",
                },
                "skipped_by_reason": {
                    "type": "object",
                    "required": list(SKIP_REASONS),
                    "properties": {
                        reason: {"type": "integer", "minimum": 0} for reason in SKIP_REASONS
                    },
                    "additionalProperties": False,
                    "description": "unreadable: the letter lacks what a retry needs (an "
                    "invalid event, no webhook or delivery id); webhook_gone: no webhook of "
                    "its id now, or another one that took a deleted webhook's id; webhook_off: "
                    "its webhook is turned off or disabled (turn it on, then replay); "
                    "not_receiving: its webhook no longer gets the event (another site, a "
                    "narrower filter); already_replayed: a further letter of a delivery this "
                    "replay wrote; wrong_delivery_id: the letter's delivery_id is not the one its "
                    "event id and webhook id make, which a delivery is sent with.",
                },
                "complete": {
                    "type": "boolean",
                    "description": "false when the replay stopped reading at half the "
                    "request's time (a large dead-letter topic): what it wrote is above, and "
                    "next_cursor goes on.",
                },
                "next_cursor": {
                    "type": ["string", "null"],
                    "description": "When not complete: send the same request with this cursor "
                    "to replay the letters after those taken (none taken twice); else null.",
                },
            },
        },
    }


_RATE_LIMITED = (
    "More requests a second with this token than the worker answering allows (api_rate_limit): "
    "retry after Retry-After seconds."
)


def _problem_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": _PROBLEM}}},
    }


def _json(schema: Mapping[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


_ETAG_HEADER = {
    "ETag": {"description": "The webhook's version, quoted.", "schema": {"type": "string"}}
}

_ID_PARAM = {
    "name": "webhook_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
}
_IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "description": "The ETag read before; a changed webhook answers 412.",
    "schema": {"type": "string"},
}

_IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": (
        "ETags (or *) a client holds; naming the current one answers 304 without a body "
        "(weak comparison). Refused (400) on every change: those take If-Match."
    ),
    "schema": {"type": "string"},
}

_IDEMPOTENCY_KEY_PARAM = {
    "name": IDEMPOTENCY_KEY,
    "in": "header",
    "required": False,
    "description": (
        "Any unique string of the client's (a UUID): the same request sent again with the same "
        "key (after a timeout, a closed connection or a 503) is made at most once and answers "
        f"{REPLAYED_HEADER}: true. The token's own, for {int(KEY_LIFETIME // 3600)} hours "
        f"and among the webhook's last {MAX_KEYS_PER_WEBHOOK} keyed changes; the same key with "
        "another request for the webhook is 422 (for a test event: another event)."
    ),
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_KEY_LENGTH,
        "pattern": "^[ -~]+$",
    },
}
_REPLAYED = {
    REPLAYED_HEADER: {
        "description": "true: the Idempotency-Key had made this change; nothing changed now.",
        "schema": {"type": "string", "enum": ["true"]},
    }
}


def _query(name: str, schema: Mapping[str, Any], description: str = "") -> dict[str, Any]:
    param = {"name": name, "in": "query", "required": False, "schema": dict(schema)}
    if description:
        param["description"] = description
    return param


#: A delivery looked up in its webhook's log alone (a delivery id does not name its webhook).
_DELIVERY_WEBHOOK = _query(
    "webhook_id",
    {"type": "string", "minLength": 1, "maxLength": 200},
    "The delivery's webhook, when known: only that webhook's log is read (by the worker "
    "holding it), not every worker's; 404 when that webhook has no attempt of the delivery.",
)
_LIMIT = _query(
    "limit",
    {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_LIMIT, "default": DEFAULT_PAGE_LIMIT},
)
_CURSOR = _query(
    "cursor",
    {"type": "string", "minLength": 1, "maxLength": 2000, "pattern": "^[A-Za-z0-9_-]+$"},
    "next_cursor of the previous page, with the same filters.",
)


def _operation(
    operation_id: str,
    summary: str,
    scope: str,
    responses: dict[str, Any],
    *,
    parameters: list[dict[str, Any]] | None = None,
    body: str | None = None,
    body_required: bool = True,
    served: bool = True,
    tag: str = "webhooks",
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        "security": [{"bearer": [scope]}],
        "responses": {
            **responses,
            "400": _problem_response("Invalid request; errors name the fields."),
            "401": _problem_response("No valid bearer token."),
            "403": _problem_response(
                "The token lacks the scope, or the request names a site or account outside "
                "the token's."
            ),
            "429": responses.get("429") or _problem_response(_RATE_LIMITED),
            "503": _problem_response(
                "Not answered in time, the webhooks table could not be shown current, or the "
                "owner of the webhook or its delivery log was not known or not ready within the "
                "hold of a rebalance (a request that needs it waits, at most the smaller of 5 s "
                "and half the request timeout, for the assignment to settle), or a recovery or "
                "redelivery reached a worker that is stopping: retry after Retry-After seconds."
            ),
        },
    }
    if body is not None:
        out["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": _ref(body)}},
        }
        out["responses"]["413"] = _problem_response(
            f"The body is larger than {DEFAULT_MAX_BODY_BYTES // 1024} KiB."
        )
        out["responses"]["415"] = _problem_response(
            "The body is not application/json, or is sent with a Content-Encoding."
        )
    if parameters:
        out["parameters"] = parameters
    if not served:
        out["x-bridge-served"] = False
    return out


_LOCATION = {
    "Location": {"description": "The recovery: /v1/recoveries/{id}.", "schema": {"type": "string"}}
}


def _path_param(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
    }


def _paths() -> dict[str, Any]:
    busy = _problem_response(
        "As many recoveries as the worker runs at once (api_max_recoveries) are running, or "
        "half as many of the webhook's site's (account's) webhooks, or more requests a second "
        "with this token than the worker answering allows (api_rate_limit): retry after "
        "Retry-After seconds."
    )
    not_found = _problem_response(
        "No such webhook (for a token restricted to a site or account, none of its)."
    )
    no_recovery = _problem_response(
        "No such recovery (or it ended more than recovery_retention ago, or its webhook is "
        "outside the token's site or account)."
    )
    no_delivery = _problem_response("No attempt of this delivery is kept.")
    changed = _problem_response("If-Match does not match the current ETag.")
    webhook = _json(_ref("Webhook"), "The webhook.", headers=_ETAG_HEADER)
    changed_webhook = _json(_ref("Webhook"), "The webhook.", headers={**_ETAG_HEADER, **_REPLAYED})
    with_secret = _json(
        _ref("WebhookWithSecret"),
        "The webhook and its secret.",
        headers={**_ETAG_HEADER, **_REPLAYED},
    )
    reused = _problem_response(
        "The Idempotency-Key was used with another request (body or route) for this webhook."
    )
    started = _json(
        _ref("Recovery"),
        "Started; poll it. With an Idempotency-Key that started one already (kept for "
        "recovery_retention after it ends), that one, and nothing new started.",
        headers={**_LOCATION, **_REPLAYED},
    )
    return {
        "/v1/openapi.json": {
            "get": {
                "operationId": "getOpenApi",
                "summary": "This document.",
                "tags": ["meta"],
                "security": [],
                "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
            }
        },
        "/v1/event-types": {
            "get": _operation(
                "listEventTypes",
                "The event types a webhook can subscribe to, each with the schema of its data.",
                "read",
                {"200": _json(_ref("EventTypeList"), "Every event type, in the document's order.")},
                tag="meta",
            )
        },
        "/v1/webhooks": {
            "get": _operation(
                "listWebhooks",
                "List webhooks, ordered by id; secrets are never shown.",
                "read",
                {"200": _json(_ref("WebhookList"), "One page.")},
                parameters=[
                    _query("site_id", {"type": "string", "minLength": 1, "maxLength": 200}),
                    _query("user_id", {"type": "string", "minLength": 1, "maxLength": 200}),
                    _query(
                        "event_type",
                        {"enum": list(EVENT_TYPES)},
                        "Webhooks that receive this type (also those subscribed to *).",
                    ),
                    _query("state", {"enum": list(WEBHOOK_STATES)}),
                    _LIMIT,
                    _CURSOR,
                ],
            ),
            "post": _operation(
                "createWebhook",
                "Create a webhook; with a client-chosen id, repeating it is idempotent.",
                "write",
                {
                    "201": {
                        **with_secret,
                        "headers": {
                            **_ETAG_HEADER,
                            "Location": {"schema": {"type": "string"}},
                        },
                    },
                    "200": _json(
                        _ref("Webhook"),
                        "That id exists with this very body (or this Idempotency-Key made it): "
                        "the webhook again, with its `secret` for the token that created it "
                        "within a day of the creation while unchanged (a client whose first "
                        "answer was lost), without it for any other.",
                        headers={**_ETAG_HEADER, **_REPLAYED},
                    ),
                    "409": _problem_response(
                        "That id exists with another body; or the site (site_id), or for an "
                        "account-wide webhook the account (user_id), has as many webhooks as "
                        "it may (api_max_webhooks; errors names the field, reason "
                        "webhook_limit)."
                    ),
                    "422": reused,
                },
                parameters=[_IDEMPOTENCY_KEY_PARAM],
                body="WebhookCreate",
            ),
        },
        "/v1/webhooks/{webhook_id}": {
            "parameters": [_ID_PARAM],
            "get": _operation(
                "getWebhook",
                "One webhook.",
                "read",
                {
                    "200": webhook,
                    "304": {
                        "description": "If-None-Match names the current ETag.",
                        "headers": {"ETag": {"schema": {"type": "string"}}},
                    },
                    "404": not_found,
                },
                parameters=[_IF_NONE_MATCH],
            ),
            "patch": _operation(
                "updateWebhook",
                "Change some fields.",
                "write",
                {
                    "200": changed_webhook,
                    "404": not_found,
                    "409": _problem_response(
                        "standard_webhooks asked of a webhook whose secret is not whsec_: "
                        "give one with the change, or rotate to one first; or a move to a "
                        "site (or account) that has as many webhooks as it may (reason "
                        "webhook_limit)."
                    ),
                    "412": changed,
                    "422": reused,
                },
                parameters=[_IF_MATCH, _IDEMPOTENCY_KEY_PARAM],
                body="WebhookUpdate",
            ),
            "delete": _operation(
                "deleteWebhook",
                "Delete a webhook (a tombstone in the subscriptions topic).",
                "write",
                {"204": {"description": "Deleted."}, "404": not_found, "412": changed},
                parameters=[_IF_MATCH],
            ),
        },
        "/v1/webhooks/{webhook_id}/rotate-secret": {
            "parameters": [_ID_PARAM],
            "post": _operation(
                "rotateWebhookSecret",
                "A new secret, returned once; the previous one may overlap.",
                "write",
                {
                    "200": with_secret,
                    "404": not_found,
                    "409": _problem_response(
                        "A secret that is not whsec_ for a Standard Webhooks webhook; an "
                        "overlap of a webhook without Standard Webhooks headers "
                        "(overlap_needs_standard_webhooks: no header would carry the previous "
                        "secret), or while the last overlap runs (overlap_running); or this "
                        "Idempotency-Key's rotation was made and the webhook changed since (its "
                        "secret is not shown again: rotate again)."
                    ),
                    "412": changed,
                    "422": reused,
                },
                parameters=[_IF_MATCH, _IDEMPOTENCY_KEY_PARAM],
                body="RotateSecret",
                body_required=False,
            ),
        },
        "/v1/webhooks/{webhook_id}/test": {
            "parameters": [_ID_PARAM],
            "post": _operation(
                "sendTestEvent",
                "Publish a test.event delivered to this webhook only.",
                "write",
                {
                    "202": _json(
                        _ref("TestEventAccepted"),
                        "Published. With an Idempotency-Key, under an event id made from it and "
                        "the request: sent again, the same event and delivery id (receivers "
                        "drop the second as a duplicate).",
                    ),
                    "404": not_found,
                    "409": _problem_response("The webhook is not active."),
                },
                parameters=[_IDEMPOTENCY_KEY_PARAM],
                body="TestEventRequest",
                body_required=False,
            ),
        },
        "/v1/webhooks/{webhook_id}/attempts": {
            "parameters": [_ID_PARAM],
            "get": _operation(
                "listAttempts",
                "Attempts of a webhook, newest first.",
                "read",
                {"200": _json(_ref("AttemptList"), "One page."), "404": not_found},
                parameters=[
                    _query("event_type", {"enum": list(EVENT_TYPES)}),
                    _query("outcome", {"enum": ["success", "failure", "skipped"]}),
                    _query(
                        "status_class",
                        {"enum": list(STATUS_CLASSES)},
                        "none: attempts that got no response.",
                    ),
                    _query(
                        "trigger",
                        {"enum": list(TRIGGERS)},
                        "scheduled: the event's own attempts and their retries; manual: those "
                        "of a redelivery, a recovery or a dead-letter replay, and their retries.",
                    ),
                    _query(
                        "recovery_id",
                        {"type": "string", "minLength": 1, "maxLength": 200},
                        "Only the attempts of this recovery or redelivery (its id in "
                        "/v1/recoveries), with their retries.",
                    ),
                    _query("since", {"type": "string", "format": "date-time"}, "Inclusive."),
                    _query(
                        "until",
                        {"type": "string", "format": "date-time"},
                        "Exclusive; after since.",
                    ),
                    _LIMIT,
                    _CURSOR,
                ],
                tag="deliveries",
            ),
        },
        "/v1/webhooks/{webhook_id}/stats": {
            "parameters": [_ID_PARAM],
            "get": _operation(
                "getWebhookStats",
                "Attempts, successes, failure ratio and latency over 1 h, 24 h and 7 d; state.",
                "read",
                {"200": _json(_ref("WebhookStats"), "The stats."), "404": not_found},
                tag="deliveries",
            ),
        },
        "/v1/webhooks/{webhook_id}/recoveries": {
            "parameters": [_ID_PARAM],
            "post": _operation(
                "startRecovery",
                "Deliver again this webhook's events since (until) a time, same delivery ids.",
                "write",
                {
                    "202": started,
                    "404": not_found,
                    "409": _problem_response(
                        "The webhook is not active, or a recovery of it over a window that "
                        "overlaps this one is running (the detail names it)."
                    ),
                    "422": reused,
                    "429": busy,
                },
                parameters=[_IDEMPOTENCY_KEY_PARAM],
                body="RecoveryCreate",
                tag="recovery",
            ),
            "get": _operation(
                "listRecoveries",
                "A webhook's recoveries and redeliveries, newest first: those running, and "
                "those that ended within recovery_retention (7 days by default), at most "
                "the newest 1,000 of them.",
                "read",
                {"200": _json(_ref("RecoveryList"), "One page."), "404": not_found},
                parameters=[
                    _query("state", {"enum": ["running", "done", "cancelled", "failed"]}),
                    _LIMIT,
                    _CURSOR,
                ],
                tag="recovery",
            ),
        },
        "/v1/recoveries/{recovery_id}": {
            "parameters": [_path_param("recovery_id")],
            "get": _operation(
                "getRecovery",
                "Progress of a recovery or redelivery.",
                "read",
                {"200": _json(_ref("Recovery"), "The recovery."), "404": no_recovery},
                tag="recovery",
            ),
            "delete": _operation(
                "cancelRecovery",
                "Cancel a running recovery and wait until it stopped (what it enqueued stays "
                "enqueued); a finished one is answered as it is.",
                "write",
                {"200": _json(_ref("Recovery"), "Cancelled, or finished."), "404": no_recovery},
                tag="recovery",
            ),
        },
        "/v1/deliveries/{delivery_id}": {
            "parameters": [_path_param("delivery_id")],
            "get": _operation(
                "getDelivery",
                "One delivery (X-Webhook-Delivery id) with all its attempts, in order.",
                "read",
                {"200": _json(_ref("Delivery"), "The delivery."), "404": no_delivery},
                tag="deliveries",
                parameters=[_DELIVERY_WEBHOOK],
            ),
        },
        "/v1/deliveries/{delivery_id}/redeliver": {
            "parameters": [_path_param("delivery_id")],
            "post": _operation(
                "redeliver",
                "Deliver again now, with the same delivery id: a recovery of that delivery.",
                "write",
                {
                    "202": started,
                    "404": no_delivery,
                    "409": _problem_response("The delivery's webhook is gone or not active."),
                    "422": reused,
                    "429": busy,
                },
                tag="recovery",
                parameters=[_DELIVERY_WEBHOOK, _IDEMPOTENCY_KEY_PARAM],
            ),
        },
        "/v1/dead-letters": {
            "get": _operation(
                "listDeadLetters",
                "Dead letters, oldest first, as `webhook-bridge dlq list` shows them; a "
                "restricted token sees those of its webhooks only.",
                "read",
                {
                    "200": _json(_ref("DeadLetterList"), "One page."),
                    "404": _problem_response("webhook_id names no webhook (restricted tokens)."),
                },
                parameters=[
                    _query("webhook_id", {"type": "string", "minLength": 1, "maxLength": 200}),
                    _query("delivery_id", {"type": "string", "minLength": 1, "maxLength": 200}),
                    _query(
                        "since",
                        {"type": "string", "format": "date-time"},
                        "Dead-lettered at or after.",
                    ),
                    _query(
                        "until",
                        {"type": "string", "format": "date-time"},
                        "Dead-lettered at or before; after since.",
                    ),
                    _LIMIT,
                    _CURSOR,
                ],
                tag="recovery",
            ),
        },
        "/v1/dead-letters/replay": {
            "post": _operation(
                "replayDeadLetters",
                "Re-enqueue matching dead letters with their delivery ids.",
                "write",
                {
                    "200": _json(_ref("ReplayReport"), "What was replayed."),
                    "404": _problem_response("webhook_id names no webhook (restricted tokens)."),
                },
                body="DeadLetterReplay",
                body_required=False,
                tag="recovery",
            ),
        },
    }


@cache
def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "webhook-bridge control plane",
            "version": API_VERSION,
            "description": "Webhooks, delivery logs, stats and recovery, served from Kafka. "
            "Every error is an RFC 9457 problem (application/problem+json) naming the fields.",
        },
        "tags": [
            {"name": "webhooks"},
            {"name": "deliveries"},
            {"name": "recovery"},
            {"name": "meta"},
        ],
        "security": [{"bearer": ["read"]}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from the bridge's token file; scopes read (GET) and "
                    "write (the rest), optionally restricted to one site or account.",
                }
            },
            "schemas": _schemas(),
        },
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (a fresh copy: callers may change it)."""
    return copy.deepcopy(_document())


def request_schema(name: str) -> dict[str, Any]:
    """A schema of ``components/schemas`` (``"WebhookCreate"``...), self-contained."""
    schema = copy.deepcopy(_document()["components"]["schemas"][name])
    return dict(schema)


@cache
def request_validator(name: str) -> Any:
    """The validator of a request body schema (JSON Schema 2020-12, as OpenAPI 3.1 says; its
    ``uniqueItems`` in one pass, not over every pair)."""
    return Validator(request_schema(name))


def served_operations() -> list[tuple[str, str]]:
    """``(method, path)`` of every operation the API serves today."""
    return [
        (method.upper(), path)
        for path, item in _document()["paths"].items()
        for method, operation in item.items()
        if method != "parameters" and operation.get("x-bridge-served", True)
    ]
