"""Dead letters: what the bridge could not process or deliver, with a machine-readable reason."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from bridge.contract import jsoncanon
from bridge.contract.events import Event, format_timestamp
from bridge.delivery.job import SourceRef
from bridge.http.base import AttemptResult

__all__ = [
    "SourceRef",
    "dead_letter_record",
    "internal_error",
    "MAX_EVENT_BYTES",
    "MAX_RAW_BYTES",
    "PREFIX_CHARS",
]

log = logging.getLogger(__name__)

#: Largest unparseable record kept whole (as ``raw``) in its dead letter: JSON escapes can make
#: it up to six times larger there.
MAX_RAW_BYTES = 64 * 1024
#: Largest event (its canonical JSON) kept whole (as ``event``) in its dead letter.
MAX_EVENT_BYTES = 512 * 1024
#: A larger record or event is dead-lettered by reference (``omitted``: its size, SHA-256 and
#: the first ``PREFIX_CHARS`` characters; the whole record stays in its source topic at the
#: offset given), so that every dead letter fits a produce request (1 MiB by default).
PREFIX_CHARS = 4096
#: Longest ``detail`` kept.
_MAX_DETAIL_CHARS = 1024


def dead_letter_record(
    *,
    reason: str,
    detail: str,
    source: SourceRef,
    now: datetime,
    event: Event | None = None,
    raw: bytes | None = None,
    webhook_id: str | None = None,
    delivery_id: str | None = None,
    attempts: Sequence[AttemptResult] = (),
    webhook_created_at: str | None = None,
) -> dict[str, Any]:
    """The dead-letter record (``topics/schemas/deadletter.json``). Never includes a secret.

    The event (or, when it could not be parsed, the raw record) is kept whole when it is at most
    ``MAX_EVENT_BYTES`` (``MAX_RAW_BYTES``); a larger one, or an event that cannot be encoded,
    is replaced by a reference: ``omitted`` gives its size, SHA-256 and a prefix.
    """
    record: dict[str, Any] = {
        "reason": reason,
        "detail": detail[:_MAX_DETAIL_CHARS],
        "source": source.as_record(),
        "event": None,
        "raw": None,
        "webhook_id": webhook_id,
        "delivery_id": delivery_id,
        "attempts": [a.as_record() for a in attempts],
        "dead_lettered_at": format_timestamp(now),
    }
    if webhook_created_at is not None:
        record["webhook_created_at"] = webhook_created_at
    content: bytes | None = raw
    if event is not None:
        envelope = event.envelope()
        try:
            content = jsoncanon.dumps(envelope)
        except Exception:
            content = None
        else:
            if len(content) <= MAX_EVENT_BYTES:
                record["event"] = envelope
                return record
    if content is None:
        return record
    if event is None and len(content) <= MAX_RAW_BYTES:
        record["raw"] = content.decode("utf-8", "replace")
    else:
        record["omitted"] = {
            "size": len(content),
            "sha256": hashlib.sha256(content).hexdigest(),
            "prefix": content[: PREFIX_CHARS * 4].decode("utf-8", "replace")[:PREFIX_CHARS],
        }
    return record


def internal_error(exc: BaseException, stage: str) -> tuple[str, str]:
    """The dead-letter reason and detail for a record or job that failed through a fault of the
    bridge's own (a bug, an output that cannot be written) while ``stage``; the exception is
    logged with its traceback. The detail names the exception's class, never its message,
    which may quote the record."""
    log.error("internal error while %s; dead-lettering", stage, exc_info=exc)
    return "internal_error", f"{stage}: {type(exc).__name__}"
