"""Hiding, in text that is printed, what must never be: the credentials a URL can carry."""

from __future__ import annotations

import re

__all__ = ["without_userinfo"]

#: ``scheme://user:pass@`` anywhere, and a bare ``user:pass@host`` at the start of a list item.
_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^\s/?#@]*@|(?P<start>^|[\s,])[^\s,/?#@:]+:[^\s,/?#@]*@"
)


def without_userinfo(text: str) -> str:
    """``text`` with the user information of every URL in it (``user:password@``) replaced by
    ``***@``: a webhook URL written by another producer, an ``api_url`` or bootstrap server
    given with credentials."""
    return _USERINFO.sub(lambda m: (m.group("scheme") or m.group("start") or "") + "***@", text)
