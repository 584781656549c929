"""Opaque page cursors: a JSON list of values, base64url without padding. The API's pages
(attempts, dead letters, recoveries) each name their place in one."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

__all__ = ["encode_cursor", "decode_cursor"]


def encode_cursor(values: list[Any]) -> str:
    """The cursor holding ``values`` (JSON values)."""
    text = json.dumps(values, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, shape: tuple[type | tuple[type, ...], ...]) -> list[Any]:
    """The values of a cursor of :func:`encode_cursor`, one of each type (or types) of
    ``shape``, floats finite (an integer where a float may be is given as a float);
    ``ValueError`` for anything else, booleans never taken for numbers."""
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting: RecursionError
        raise ValueError("not a cursor of this list") from None
    if not isinstance(values, list) or len(values) != len(shape):
        raise ValueError("not a cursor of this list")
    out: list[Any] = []
    for value, kinds in zip(values, shape, strict=True):
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ValueError("not a cursor of this list")
        if isinstance(value, float) or (isinstance(value, int) and _takes_float(kinds)):
            try:
                value = float(value)
            except OverflowError:  # an integer of hundreds of digits
                raise ValueError("not a cursor of this list") from None
            if not math.isfinite(value):  # json.loads takes NaN and Infinity
                raise ValueError("not a cursor of this list")
        out.append(value)
    return out


def _takes_float(kinds: type | tuple[type, ...]) -> bool:
    return float in kinds if isinstance(kinds, tuple) else kinds is float
