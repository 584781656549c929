"""Ids as one segment of the path of a URL the bridge makes (its API's, its workers', its CLI's)."""

from __future__ import annotations

from urllib.parse import quote

__all__ = ["path_segment"]

#: The segments a client resolves away (RFC 3986, 5.2.4), and what is sent for each instead.
_DOT_SEGMENTS = {".": "%2E", "..": "%2E%2E"}


def path_segment(text: str) -> str:
    """``text`` percent-encoded as one path segment, which a server decodes back to ``text``.

    Every character but the unreserved ones is encoded (``/``, ``?``, ``#`` and ``%`` too); a
    segment ``.`` or ``..`` has its dots encoded (``%2E``), which yarl (given the URL as
    ``encoded=True``) and httpx send as they are, where they resolve ``.`` and ``..`` away
    (``/v1/deliveries/..`` is ``/v1/``). ``""`` is an empty segment."""
    quoted = quote(text, safe="")
    return _DOT_SEGMENTS.get(quoted, quoted)
