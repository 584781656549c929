"""Hiding, in text that is printed, what must never be: the credentials a URL can carry."""

from __future__ import annotations

import re

__all__ = ["for_logs", "url_without_userinfo", "without_userinfo"]

#: A URL's scheme and authority in text (to its path, query or fragment, or the end of the URL
#: in text: a space, a quote, an angle bracket).
_AUTHORITY = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<authority>[^\s/?#\"'<>]*)")
#: A bare ``user:pass@host`` at the start of a list item (bootstrap servers): to the last "@"
#: before the next item, so that a user or a password holding an "@" is hidden whole.
_BARE = re.compile(r"(?P<start>^|[\s,])[^\s,/?#:\"']+:[^\s,/?#\"']*@")
#: What comes before the authority of a text that is a URL, as urlsplit and httpx read it:
#: C0 controls and spaces (urlsplit strips them), a scheme, or none (urlsplit's ``//host``,
#: httpx's ``://host``), tabs and line breaks anywhere (urlsplit drops them), then ``//``.
_URL_START = re.compile(
    r"[\x00-\x20]*(?:(?:[A-Za-z][A-Za-z0-9+.\-\t\r\n]*)?:)?[\t\r\n]*/[\t\r\n]*/"
)
#: The end of a URL's authority, for both parsers: its first "/", "?" or "#".
_AUTHORITY_END = re.compile(r"[/?#]")


def without_userinfo(text: str) -> str:
    """``text`` with the user information of every URL in it (``user:password@``) replaced by
    ``***@``: a webhook URL written by another producer, an ``api_url`` or bootstrap server
    given with credentials. A URL's user information ends at the last "@" of its authority,
    as URL parsers (httpx, urllib) read it: a password holding an "@" is hidden whole (until
    2026-12-07 its tail showed). In free text a URL ends at a space, a quote or an angle
    bracket; a text that is a URL is :func:`url_without_userinfo`'s."""
    return _BARE.sub(lambda m: m.group("start") + "***@", _AUTHORITY.sub(_hidden, text))


def _hidden(match: re.Match[str]) -> str:
    authority = match.group("authority")
    if "@" not in authority:
        return match.group(0)
    return f"{match.group('scheme')}***@{authority.rpartition('@')[2]}"


def url_without_userinfo(url: str) -> str:
    """``url``, a text that is a URL (a webhook's URL, a name that is one, a URL setting),
    without user information: its authority runs to its first "/", "?" or "#", as urlsplit
    and httpx read it, so a password holding a quote, an angle bracket or a space is hidden
    whole (until 2026-12-07 it was shown, the text read as free text). Any other URL in it is
    hidden as :func:`without_userinfo` hides it."""
    start = _URL_START.match(url)
    if start is not None:
        head = start.end()
        end = _AUTHORITY_END.search(url, head)
        at = url.rfind("@", head, len(url) if end is None else end.start())
        if at >= 0:
            url = f"{url[:head]}***{url[at:]}"
    return without_userinfo(url)


def for_logs(url: str) -> str:
    """A webhook URL as logs and reprs show it: without user information
    (:func:`url_without_userinfo`), and without its query, which may carry a token
    (``?token=...``): ``https://h.example/hook?***``. (The API and the CLI show a webhook's
    query to those who may see the webhook: it is theirs.)"""
    bare = url_without_userinfo(url)
    path, mark, _ = bare.partition("?")
    return f"{path}?***" if mark else path
