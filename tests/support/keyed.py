"""Reading the subscriptions topic for changes made twice with one ``Idempotency-Key``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["made_twice"]


def made_twice(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """The (webhook id, key digest) of each key the webhook records ``records`` (in topic order)
    show with more than one ``updated_at``, with those: a change made with a key records the key
    beside the ``updated_at`` it gave (``idempotency_keys``), so one made twice — by one owner,
    or by two that each did not see the other's record across a rebalance — shows two."""
    made_with: dict[tuple[str, str], set[str]] = {}
    for value in records:
        for entry in value.get("idempotency_keys") or []:
            key, _, at = entry.split(" ")
            made_with.setdefault((str(value.get("id")), key), set()).add(at)
    return {k: v for k, v in made_with.items() if len(v) > 1}
