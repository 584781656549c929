"""Text the bridge did not write (records, an API's answers, a receiver's bytes) as the
commands print it and the worker logs it: shown on the terminal, never obeyed by it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["escaped", "shown", "json_line"]


def escaped(text: str, *, quote: bool = True) -> str:
    """``text`` with every character a terminal could act on (C0 and C1 controls, DEL, line
    breaks, bidirectional and other format characters), the backslash and (with ``quote``) the
    double quote written as Python escapes: for text shown between double quotes (a
    receiver's bytes), or as one unambiguous line (a log line's message)."""
    special = '\\"' if quote else "\\"
    if text.isprintable() and not any(c in text for c in special):  # one pass in C
        return text
    return "".join(
        c
        if c.isprintable() and c not in special
        else ('\\"' if c == '"' else c.encode("unicode_escape").decode("ascii"))
        for c in text
    )


def shown(text: str) -> str:
    """``text`` with the characters :func:`escaped` escapes but the backslash and the double
    quote written as Python escapes: a line of the command's own words and others' values
    (until 2026-12-07 an API's problem title, or a delivery id read from it, reached the
    terminal as it came, escape sequences and all). Text already escaped is unchanged."""
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


def json_line(value: Any, default: Callable[[Any], Any] | None = None) -> str:
    """``value`` as one line of JSON (``default`` as for :func:`json.dumps`), its text as it
    is but for the characters :func:`escaped` escapes (controls, line breaks, bidirectional
    and other format characters), written as JSON escapes: what a dead letter holds is shown,
    never obeyed by the terminal (until 2026-12-06 ``dlq list`` printed C1 controls and bidi
    overrides raw)."""
    text = json.dumps(value, ensure_ascii=False, default=default)
    if text.isprintable():  # the usual line: one pass in C
        return text
    return "".join(c if c.isprintable() else _json_escape(c) for c in text)


def _json_escape(c: str) -> str:
    # JSON escapes UTF-16 code units: a character past U+FFFF is a surrogate pair.
    units = c.encode("utf-16-be", "surrogatepass")
    return "".join(f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2))
