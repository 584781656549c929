"""The one parser and validator of webhook URLs: which server a webhook posts to, and how.

Every user of a webhook URL goes through :meth:`WebhookUrl.parse`: ``webhooks create`` and
``update`` and :class:`bridge.subscriptions.store.WebhookStore` (refused there with a one-line
:class:`InvalidUrl`), the circuit breaker's endpoint key
(:func:`bridge.delivery.breaker.endpoint_of`), the SSRF check (:func:`bridge.http.ssrf.check_url`)
and the senders, so that none of them reads a URL differently from the others. A URL already in the
subscriptions topic is not checked when the table loads: the webhook is kept, and each delivery to
it is dead-lettered with reason ``invalid_url``, without retries.

Two kinds of refusal:

* ``invalid_url`` (:class:`InvalidUrl`, raised here): no deployment could ever deliver to the
  URL, whatever its settings: not a string, unparsable, too long, whitespace or control
  characters, a backslash, a scheme other than http(s), user info, a fragment, no host, a host
  that is no valid domain name or IP address (``xn--``), a port outside 1..65535.
* ``destination_forbidden`` (:class:`bridge.http.ssrf.DestinationForbidden`, raised by
  :func:`bridge.http.ssrf.check_url` and at connect time): the URL is well formed, but this
  deployment's policy refuses it: plain ``http`` without ``allow_http``, an IP literal or a
  resolved address in a forbidden range (``ssrf_guard``, ``allow_networks``). Other settings
  could allow it.

What is accepted:

* at most :data:`MAX_URL_LENGTH` characters, every one printable and none a space (so no
  control character, no whitespace, no lone surrogate), and no backslash (WHATWG parsers read it
  as ``/``, RFC 3986 ones as data: the same text would name two URLs);
* the scheme ``http`` or ``https``, in any case; no user info (``user:pass@``); no fragment
  (``#``: it is never sent, so the URL would not mean what it says);
* a host that is a domain name, an IPv4 address or an IPv6 address in brackets (no zone id).
  Names are checked with the ``idna`` package (IDNA 2008 with UTS 46 mapping; non-ASCII names
  become their ``xn--`` form, ``xn--`` labels must decode; ASCII labels are letters, digits,
  ``-`` and ``_``, 1 to 63 of them, no leading or trailing ``-``) and lower-cased. A host whose
  last label is a number must be an IPv4 address (WHATWG's rule); the legacy forms that
  ``getaddrinfo`` also reads (``127.1``, ``0x7f.0.0.1``, ``2130706433``) become dotted quads,
  and IPv6 addresses their compressed form, so that the SSRF check and the endpoint key see the
  address that will be connected to;
* a port from 1 to 65535, or none (80 for http, 443 for https).

The request target (path and query, at least ``/``) is kept as written, with dot segments
removed (RFC 3986 section 5.2.4, as httpx and yarl do) and every character outside RFC 3986's
``pchar`` set percent-encoded as UTF-8 (a ``%`` that starts no escape becomes ``%25``): plain
ASCII that every HTTP client sends unchanged.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import quote, urlsplit

import idna

from bridge.errors import InvalidUrl
from bridge.memo import remembered

__all__ = ["WebhookUrl", "InvalidUrl", "MAX_URL_LENGTH", "DEFAULT_PORTS"]

#: The longest URL accepted, in characters as written (browsers and CDNs handle at least this).
MAX_URL_LENGTH = 2048

#: The port of each scheme when the URL names none.
DEFAULT_PORTS: MappingProxyType[str, int] = MappingProxyType({"http": 80, "https": 443})

# Path and query characters sent as they are: RFC 3986's pchar (unreserved, which ``quote``
# always keeps, sub-delims, ":" and "@"), "/", and "%" once every "%" starts an escape.
_PATH_SAFE = "/!$&'()*+,;=:@%"
_QUERY_SAFE = _PATH_SAFE + "?"
_BARE_PERCENT = re.compile("%(?![0-9A-Fa-f]{2})")
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_LEGACY_V4_CHARS = frozenset("0123456789abcdefxABCDEFX.")


@dataclass(frozen=True, slots=True)
class WebhookUrl:
    """A usable webhook URL, normalised. Build it with :meth:`parse`."""

    #: ``http`` or ``https``.
    scheme: str
    #: ASCII, lower-case: an IDNA-encoded name, a dotted-quad IPv4 address, or a compressed IPv6
    #: address without brackets. What to resolve and to verify TLS certificates against.
    host: str
    #: The explicit port, or the scheme's default.
    port: int
    #: Path and query, ASCII, at least ``/``: what follows ``POST`` in the request line. May
    #: carry a token, so it is not in the ``repr``.
    target: str = field(repr=False)
    #: ``scheme://host:port`` (IPv6 in brackets): one server, the circuit breaker's key.
    endpoint: str = field(init=False, repr=False, compare=False)
    #: The ``Host`` header: the host (IPv6 in brackets), with ``:port`` unless it is the
    #: scheme's default.
    authority: str = field(init=False, repr=False, compare=False)
    #: The whole URL in this normal form (every HTTP client reads it the same way).
    url: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        host = f"[{self.host}]" if ":" in self.host else self.host
        authority = host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"
        object.__setattr__(self, "endpoint", f"{self.scheme}://{host}:{self.port}")
        object.__setattr__(self, "authority", authority)
        object.__setattr__(self, "url", f"{self.scheme}://{authority}{self.target}")

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @staticmethod
    def parse(url: str, *, remember: bool = True) -> WebhookUrl:
        """The URL, checked and normalised; :class:`InvalidUrl` when no one could use it.

        Total: any other exception would be a bug. Remembered per URL (it is on the hot path),
        unless ``remember`` is false: URLs a client sends to be judged are not remembered, so
        that a client sending URLs by the thousand neither fills the memory of the cache (about
        6.6 KB an entry: 330 MB at its 50,000) nor pushes the webhooks' own URLs out of it (it
        did until 2026-12-05).
        """
        if not isinstance(url, str):
            raise InvalidUrl("the URL is not a string", problem="malformed")
        if len(url) > MAX_URL_LENGTH:
            raise InvalidUrl(
                f"the URL is longer than {MAX_URL_LENGTH} characters", problem="too_long"
            )
        text = str.__str__(url)
        parsed = _parse(text) if remember else _parse.__wrapped__(text)
        if isinstance(parsed, WebhookUrl):
            return parsed
        detail, problem = parsed
        raise InvalidUrl(detail, problem=problem)


class _Refused(Exception):
    def __init__(self, detail: str, problem: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.problem = problem


@remembered  # webhooks' URLs are few; refusals are remembered too
def _parse(url: str) -> WebhookUrl | tuple[str, str]:
    try:
        return _parse_uncached(url)
    except _Refused as refused:
        return refused.detail, refused.problem


def _parse_uncached(url: str) -> WebhookUrl:
    if not url:
        raise _Refused("the URL is empty", "malformed")
    for position, char in enumerate(url):
        if not char.isprintable() or char.isspace() or char == "\\":
            raise _Refused(
                f"the URL has whitespace, a control character or a backslash at position "
                f"{position}",
                "character",
            )
    if "#" in url:
        raise _Refused("the URL has a fragment (#...), which is never sent", "fragment")
    try:
        parts = urlsplit(url)
    except ValueError:  # unbalanced brackets, NFKC look-alikes of delimiters in the host
        raise _Refused("the URL cannot be parsed", "malformed") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise _Refused("the scheme is not http or https", "scheme")
    netloc = parts.netloc
    if "@" in netloc:
        raise _Refused("credentials (user@) are not allowed in the URL", "userinfo")
    host, port_text = _split_authority(netloc)
    port = _port(port_text, scheme)
    target = _remove_dot_segments(parts.path) or "/"
    target = quote(_BARE_PERCENT.sub("%25", target), safe=_PATH_SAFE)
    if parts.query:
        target += "?" + quote(_BARE_PERCENT.sub("%25", parts.query), safe=_QUERY_SAFE)
    return WebhookUrl(scheme, host, port, target)


def _split_authority(netloc: str) -> tuple[str, str | None]:
    """The normalised host and the port text (``None`` when absent) of ``host[:port]``."""
    if netloc.startswith("["):
        address, bracket, rest = netloc[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise _Refused("the URL cannot be parsed", "malformed")
        return _ipv6(address), rest[1:] if rest else None
    host, colon, port_text = netloc.partition(":")
    if not host:
        raise _Refused("the URL has no host", "no_host")
    return _domain_or_ipv4(host), port_text if colon else None


def _port(text: str | None, scheme: str) -> int:
    if not text:  # absent, or empty as in "http://host:/": the scheme's default
        return DEFAULT_PORTS[scheme]
    if not (text.isascii() and text.isdigit() and len(text) <= 5 and 1 <= int(text) <= 65535):
        raise _Refused("the port is not a number from 1 to 65535", "port")
    return int(text)


def _ipv6(text: str) -> str:
    if "%" in text:
        raise _Refused("IPv6 zone ids are not allowed in a webhook URL", "host")
    try:
        return ipaddress.IPv6Address(text).compressed
    except ValueError:
        raise _Refused("the host in brackets is not an IPv6 address", "host") from None


def _domain_or_ipv4(host: str) -> str:
    if host.isascii():
        name = host.lower()
    else:
        try:
            name = idna.encode(host, uts46=True).decode("ascii")
        except ValueError:  # idna.IDNAError and the codecs' errors are all ValueErrors
            raise _Refused("the host is not a valid domain name (IDNA)", "host") from None
    bare = name[:-1] if name.endswith(".") else name  # one final dot: a fully qualified name
    labels = bare.split(".")
    if _is_number(labels[-1]):
        # WHATWG: a host ending in a number is an IPv4 address or nothing.
        address = _legacy_ipv4(bare)
        if address is None:
            raise _Refused("the host ends in a number but is not an IPv4 address", "host")
        return address
    if len(bare) > 253:
        raise _Refused("the host is longer than 253 characters", "host")
    for label in labels:
        if (
            not 1 <= len(label) <= 63
            or not _LABEL_CHARS.issuperset(label)
            or label[0] == "-"
            or label[-1] == "-"
        ):
            raise _Refused("the host is not a valid domain name", "host")
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except ValueError:
                raise _Refused("the host is not a valid domain name (IDNA)", "host") from None
    return name


def _is_number(label: str) -> bool:
    """WHATWG's "ends in a number": decimal digits, or ``0x`` and hexadecimal digits."""
    if label.isascii() and label.isdigit():
        return True
    return label[:2] in ("0x", "0X") and _HEX_DIGITS.issuperset(label[2:])


def _legacy_ipv4(host: str) -> str | None:
    """The dotted quad ``getaddrinfo`` would read ``host`` as (``127.1``, ``0x7f.0.0.1``,
    ``2130706433``), or ``None``."""
    if not _LEGACY_V4_CHARS.issuperset(host):
        return None
    try:
        return str(ipaddress.IPv4Address(socket.inet_aton(host)))
    except OSError:
        return None


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 for an absolute path: ``/a/./b/../c`` is ``/a/c``."""
    if "." not in path:
        return path
    segments = path.split("/")
    if "." not in segments and ".." not in segments:
        return path
    out: list[str] = []
    for segment in segments[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    if segments[-1] in (".", ".."):
        out.append("")  # "/a/b/.." is "/a/", a directory
    return "/" + "/".join(out)
