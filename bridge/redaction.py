"""Hiding, in text that is printed, what must never be: the credentials a URL can carry."""

from __future__ import annotations

import re

__all__ = ["for_logs", "without_userinfo"]

#: A URL's scheme and authority (to its path, query or fragment, or the end of the URL in
#: text: a space, a quote, an angle bracket).
_AUTHORITY = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<authority>[^\s/?#\"'<>]*)")
#: A bare ``user:pass@host`` at the start of a list item (bootstrap servers): to the last "@"
#: before the next item, so that a user or a password holding an "@" is hidden whole.
_BARE = re.compile(r"(?P<start>^|[\s,])[^\s,/?#:\"']+:[^\s,/?#\"']*@")


def without_userinfo(text: str) -> str:
    """``text`` with the user information of every URL in it (``user:password@``) replaced by
    ``***@``: a webhook URL written by another producer, an ``api_url`` or bootstrap server
    given with credentials. A URL's user information ends at the last "@" of its authority,
    as URL parsers (httpx, urllib) read it: a password holding an "@" is hidden whole (until
    2026-12-07 its tail showed)."""
    return _BARE.sub(lambda m: m.group("start") + "***@", _AUTHORITY.sub(_hidden, text))


def _hidden(match: re.Match[str]) -> str:
    authority = match.group("authority")
    if "@" not in authority:
        return match.group(0)
    return f"{match.group('scheme')}***@{authority.rpartition('@')[2]}"


def for_logs(url: str) -> str:
    """A webhook URL as logs and reprs show it: without user information, and without its
    query, which may carry a token (``?token=...``): ``https://h.example/hook?***``. (The API
    and the CLI show a webhook's query to those who may see the webhook: it is theirs.)"""
    bare = without_userinfo(url)
    path, mark, _ = bare.partition("?")
    return f"{path}?***" if mark else path
