"""Hiding, in text that is printed, what must never be: the credentials a URL can carry."""

from __future__ import annotations

import re

__all__ = ["for_logs", "without_userinfo"]

#: ``scheme://user:pass@`` anywhere, and a bare ``user:pass@host`` at the start of a list item.
# To the last "@" before the path: the user information ends there for URL parsers (httpx,
# urllib), so a password holding an "@" is hidden whole (until 2026-12-07 its tail showed).
_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^\s/?#]*@|(?P<start>^|[\s,])[^\s,/?#@:]+:[^\s,/?#]*@"
)


def without_userinfo(text: str) -> str:
    """``text`` with the user information of every URL in it (``user:password@``) replaced by
    ``***@``: a webhook URL written by another producer, an ``api_url`` or bootstrap server
    given with credentials."""
    return _USERINFO.sub(lambda m: (m.group("scheme") or m.group("start") or "") + "***@", text)


def for_logs(url: str) -> str:
    """A webhook URL as logs and reprs show it: without user information, and without its
    query, which may carry a token (``?token=...``): ``https://h.example/hook?***``. (The API
    and the CLI show a webhook's query to those who may see the webhook: it is theirs.)"""
    bare = without_userinfo(url)
    path, mark, _ = bare.partition("?")
    return f"{path}?***" if mark else path
