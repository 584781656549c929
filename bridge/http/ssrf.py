"""Outbound request safety: refusing webhook URLs and addresses that point inside our network.

Two layers, both needed:

* :func:`check_url` — static checks on a webhook URL: first
  :meth:`bridge.subscriptions.urls.WebhookUrl.parse`
  (:class:`bridge.subscriptions.urls.InvalidUrl` for a URL no deployment could use), then this
  deployment's policy (plain http, and given an :class:`AddressPolicy`, IP-literal hosts). Cheap;
  run it when a subscription is accepted and before each attempt.
* the enforcement points, :mod:`bridge.http.guarded_transport` (httpx) and
  :mod:`bridge.http.http1` (the bridge's client), both through :func:`checked_addresses`. Every new
  TCP connection resolves the host once (:mod:`bridge.http.dns`: on the event loop, bounded in
  time, never a thread held), checks *every* resolved address with an
  :class:`AddressPolicy`, and connects to the checked IP literal, so a DNS answer that changes
  between check and connect (rebinding) cannot slip through. TLS still uses the URL's hostname for
  SNI and certificate verification, because httpcore passes the origin's hostname to
  ``start_tls`` separately from ``connect_tcp``.

Refusals raise :class:`DestinationForbidden` before any socket exists. It is the *policy* refusal
(another deployment, or other settings, could allow the URL); a URL that is unusable anywhere is
:class:`bridge.subscriptions.urls.InvalidUrl` instead (``invalid_url``; the line between the two is
drawn in
:mod:`bridge.subscriptions.urls`). httpx does not wrap it (its
exception mapping only translates httpcore's own exceptions and re-raises anything else as it is),
so ``await client.post(...)`` raises ``DestinationForbidden`` itself.

What this does not cover: an HTTP proxy (it resolves names itself; the bridge uses none, and a
client given an explicit transport ignores proxy environment variables), and NAT64 prefixes other
than the well-known one and the local-use block (an operator-specific NAT64 prefix elsewhere
looks like any public IPv6 address). In the local-use block, 64:ff9b:1::/48, the IPv4 address
is read in every RFC 6052 layout the address can be in (prefixes of 48 to 96 bits).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence

from bridge.errors import BridgeError, ConfigError
from bridge.http.dns import DnsResolver
from bridge.subscriptions.urls import WebhookUrl

__all__ = [
    "IPAddress",
    "IPNetwork",
    "Resolver",
    "DestinationForbidden",
    "classify",
    "parse_ip_literal",
    "AddressPolicy",
    "check_url",
    "resolve",
    "checked_addresses",
]


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


#: ``async (host, port) -> addresses``; the default is :func:`resolve`.
Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]


_V4 = ipaddress.IPv4Network


_V6 = ipaddress.IPv6Network


# Order matters: the first matching network names the reason.
_V4_TABLE: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (_V4("0.0.0.0/32"), "unspecified"),
    (_V4("0.0.0.0/8"), "this_network"),
    (_V4("255.255.255.255/32"), "broadcast"),
    (_V4("127.0.0.0/8"), "loopback"),
    (_V4("10.0.0.0/8"), "private"),
    (_V4("172.16.0.0/12"), "private"),
    (_V4("192.168.0.0/16"), "private"),
    (_V4("169.254.0.0/16"), "link_local"),  # includes the 169.254.169.254 metadata service
    (_V4("100.64.0.0/10"), "cgnat"),
    (_V4("192.0.0.0/24"), "ietf_protocol"),
    (_V4("192.0.2.0/24"), "documentation"),
    (_V4("198.51.100.0/24"), "documentation"),
    (_V4("203.0.113.0/24"), "documentation"),
    (_V4("198.18.0.0/15"), "benchmarking"),
    (_V4("192.88.99.0/24"), "reserved"),  # deprecated 6to4 relay anycast (RFC 7526)
    (_V4("224.0.0.0/4"), "multicast"),
    (_V4("240.0.0.0/4"), "reserved"),
)


_V6_UNSPECIFIED = ipaddress.IPv6Address("::")


_V6_LOOPBACK = ipaddress.IPv6Address("::1")


_V6_MAPPED = _V6("::ffff:0:0/96")


_V6_NAT64 = _V6("64:ff9b::/96")


_V6_NAT64_LOCAL = _V6("64:ff9b:1::/48")


_V6_6TO4 = _V6("2002::/16")


_V6_GLOBAL_UNICAST = _V6("2000::/3")


_V6_TABLE: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (_V6("2001::/32"), "reserved"),  # Teredo: the real destination is hidden in the address
    (_V6("2001:2::/48"), "benchmarking"),
    (_V6("2001:db8::/32"), "documentation"),
    (_V6("2001::/23"), "ietf_protocol"),
    (_V6("3fff::/20"), "documentation"),
    (_V6("fc00::/7"), "unique_local"),
    (_V6("fe80::/10"), "link_local"),
    (_V6("fec0::/10"), "site_local"),
    (_V6("ff00::/8"), "multicast"),
    (_V6("100::/64"), "discard"),
)


class DestinationForbidden(BridgeError):
    """A webhook URL or the address it resolves to is not an allowed destination.

    Not retriable: the same URL will be refused again. ``reason`` is always
    ``"destination_forbidden"``; ``detail`` names the host and the classification but never the
    URL's path, query or credentials.
    """

    retriable = False

    def __init__(
        self, detail: str, *, host: str | None = None, classification: str | None = None
    ) -> None:
        super().__init__(f"destination_forbidden: {detail}")
        #: Machine-readable cause, the same for every refusal.
        self.reason = "destination_forbidden"
        #: Human-readable detail, e.g. ``"127.0.0.1 is loopback"``.
        self.detail = detail
        #: The host (as :class:`bridge.subscriptions.urls.WebhookUrl` normalises it, or as connected
        #: to).
        self.host = host
        #: Why: an address class from :func:`classify` (``"loopback"``, ``"ipv4_mapped_private"``
        #: …), ``"plain_http"`` or ``"unix_socket"``.
        self.classification = classification


def _classify_v4(ip: ipaddress.IPv4Address) -> str | None:
    for network, reason in _V4_TABLE:
        if ip in network:
            return reason
    return None


def _embedded(prefix: str, v4: int) -> str | None:
    inner = _classify_v4(ipaddress.IPv4Address(v4))
    return None if inner is None else f"{prefix}_{inner}"


#: RFC 6052's layouts of an IPv4 address in a NAT64 prefix of the local-use block (RFC 8215,
#: 64:ff9b:1::/48: prefixes of 48 to 96 bits): the bytes of the address (0-15) holding the
#: IPv4 address, and those that must be zero (byte 8, the "u" octet, and the suffix).
_NAT64_LAYOUTS = (
    ((6, 7, 9, 10), (8, 11, 12, 13, 14, 15)),  # a /48 prefix
    ((7, 9, 10, 11), (8, 12, 13, 14, 15)),  # /56
    ((9, 10, 11, 12), (8, 13, 14, 15)),  # /64
    ((12, 13, 14, 15), (6, 7, 8, 9, 10, 11)),  # /96
)


def _nat64_local(value: int) -> str | None:
    """An address of the local-use NAT64 block: refused when its IPv4 address, read in any
    layout it can be in, is refused, or when it can be in none. Its prefix length is the
    operator's (until 2026-12-07 the /96 layout alone was read: with a /64 prefix,
    ``64:ff9b:1:0:a:0:100:0`` holds 10.0.0.1 and was read as 1.0.0.0)."""
    octets = value.to_bytes(16, "big")
    readings = [
        int.from_bytes(bytes(octets[i] for i in held), "big")
        for held, zero in _NAT64_LAYOUTS
        if not any(octets[i] for i in zero)
    ]
    if not readings:
        return "reserved"
    for v4 in readings:
        refused = _embedded("nat64", v4)
        if refused is not None:
            return refused
    return None


def _classify_v6(ip: ipaddress.IPv6Address) -> str | None:
    value = int(ip)
    bare = ipaddress.IPv6Address(value)  # drops any %scope, which network membership ignores
    if bare == _V6_UNSPECIFIED:
        return "unspecified"
    if bare == _V6_LOOPBACK:
        return "loopback"
    if bare in _V6_MAPPED:
        return _embedded("ipv4_mapped", value & 0xFFFFFFFF)
    if bare in _V6_NAT64:
        return _embedded("nat64", value & 0xFFFFFFFF)
    if bare in _V6_NAT64_LOCAL:
        return _nat64_local(value)
    if bare in _V6_6TO4:
        return _embedded("6to4", (value >> 80) & 0xFFFFFFFF)
    for network, reason in _V6_TABLE:
        if bare in network:
            return reason
    if bare not in _V6_GLOBAL_UNICAST:
        return "reserved"
    return None


def classify(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public unicast destination, or ``None`` when it is.

    Reasons are short snake_case strings: ``loopback``, ``private``, ``link_local``, ``cgnat``,
    ``multicast``, ``reserved``, ``unspecified``, ``this_network``, ``broadcast``,
    ``documentation``, ``benchmarking``, ``ietf_protocol``, ``unique_local``, ``site_local``,
    ``discard``; IPv6 addresses that embed an IPv4 address (IPv4-mapped, NAT64, 6to4) are judged by
    that address and prefixed: ``ipv4_mapped_loopback``, ``nat64_private``, ``6to4_loopback``.
    Teredo (2001::/32) and anything outside 2000::/3 not named above is ``reserved``.
    """
    if isinstance(ip, ipaddress.IPv4Address):
        return _classify_v4(ip)
    return _classify_v6(ip)


_LEGACY_V4_CHARS = frozenset("0123456789abcdefxABCDEFX.")


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` denotes without DNS, or ``None`` when it is a name.

    Besides canonical literals (``[::1]`` brackets allowed), this accepts the legacy IPv4 forms
    that ``getaddrinfo`` would turn into an address without asking DNS: ``127.1``,
    ``0x7f.0.0.1``, ``2130706433``.
    """
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    if not bare or not set(bare) <= _LEGACY_V4_CHARS:
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(bare))
    except OSError:
        return None


def _parse_network(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise ConfigError(f"not an IP network: {text.strip()!r} ({exc})") from None


class AddressPolicy:
    """Which resolved addresses the bridge may connect to.

    An address is allowed when the policy is disabled, when it lies in one of ``allow_networks``
    (which overrides :func:`classify`; an IPv4-mapped IPv6 address also matches by its IPv4
    address), or when :func:`classify` finds nothing wrong with it.
    """

    def __init__(self, allow_networks: Sequence[IPNetwork] = (), *, enabled: bool = True) -> None:
        self.allow_networks: tuple[IPNetwork, ...] = tuple(allow_networks)
        self.enabled = enabled

    @classmethod
    def from_setting(cls, text: str, *, enabled: bool = True) -> AddressPolicy:
        """Parse a comma-separated allow-list such as ``"10.20.0.0/16, fd00:1::/64"``.

        Networks must not have host bits set (``10.0.0.1/8`` is a :class:`ConfigError`).
        """
        networks = [_parse_network(part) for part in text.split(",") if part.strip()]
        return cls(networks, enabled=enabled)

    def _allow_listed(self, ip: IPAddress) -> bool:
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address):
            bare = ipaddress.IPv6Address(int(ip))
            candidates = [bare]
            if bare.ipv4_mapped is not None:
                candidates.append(bare.ipv4_mapped)
        return any(
            candidate.version == network.version and candidate in network
            for candidate in candidates
            for network in self.allow_networks
        )

    def check(self, ip: IPAddress) -> str | None:
        """``None`` when ``ip`` may be connected to, else the reason from :func:`classify`."""
        if not self.enabled or self._allow_listed(ip):
            return None
        return classify(ip)

    def __repr__(self) -> str:
        networks = ", ".join(str(network) for network in self.allow_networks)
        return f"AddressPolicy(allow_networks=[{networks}], enabled={self.enabled})"


def check_url(
    url: str, *, allow_http: bool, policy: AddressPolicy | None = None, remember: bool = True
) -> WebhookUrl:
    """The parsed URL, if the bridge may call it; raises otherwise.

    :class:`bridge.subscriptions.urls.InvalidUrl` when
    :meth:`~bridge.subscriptions.urls.WebhookUrl.parse` refuses it (no deployment could use it:
    another scheme, user info, no host, a bad port or host...);
    :class:`DestinationForbidden` when this deployment's policy does: ``http`` unless
    ``allow_http`` and, when ``policy`` is given, IP-literal hosts the policy forbids. Host names
    are only judged when connecting (see :class:`GuardedBackend`), since DNS answers change.
    ``remember``: as :meth:`~bridge.subscriptions.urls.WebhookUrl.parse`'s (false for a URL a
    client sends to be judged).
    """
    parsed = WebhookUrl.parse(url, remember=remember)
    if parsed.scheme == "http" and not allow_http:
        raise DestinationForbidden(
            "plain http not allowed", host=parsed.host, classification="plain_http"
        )
    if policy is not None:
        ip = parse_ip_literal(parsed.host)
        if ip is not None:
            _refuse_if_forbidden(policy, parsed.host, [ip])
    return parsed


def _refuse_if_forbidden(policy: AddressPolicy, host: str, addresses: Iterable[IPAddress]) -> None:
    for ip in addresses:
        why = policy.check(ip)
        if why is None:
            continue
        literal = parse_ip_literal(host)
        if literal is not None:
            bare = host.strip("[]")
            detail = f"{host} is {why}" if bare == str(literal) else f"{host} ({ip}) is {why}"
        else:
            detail = f"{host} resolves to {ip}, which is {why}"
        raise DestinationForbidden(detail, host=host, classification=why)


#: The resolver of :func:`resolve` (its lookups are per event loop: one serves them all).
_SYSTEM = DnsResolver()


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address of ``host`` (TCP), in the system's order, without duplicates: an IP
    literal (:func:`parse_ip_literal`) is its own, unresolved; a name is looked up by a
    :class:`bridge.http.dns.DnsResolver` (the system's configuration, at most
    :data:`bridge.http.dns.LOOKUP_TIMEOUT`; ``socket.gaierror`` when it fails).

    The senders pass resolvers of their own (:func:`bridge.http.dns.resolver_for`), whose
    lookups end sooner than their attempts."""
    literal = parse_ip_literal(host)
    if literal is not None:
        return [literal]
    return await _SYSTEM(host, port)


async def checked_addresses(
    policy: AddressPolicy, host: str, port: int, *, resolver: Resolver | None = None
) -> list[IPAddress]:
    """The addresses to connect to for ``host``: the IP literal itself, or every address the
    resolver gives (``OSError`` when there is none), refusing with :class:`DestinationForbidden`
    if *any* of them is forbidden. Connect only to what this returns."""
    literal = parse_ip_literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        addresses = list(dict.fromkeys(await (resolver or resolve)(host, port)))
        if not addresses:
            raise OSError(f"{host} resolves to no address")
    _refuse_if_forbidden(policy, host, addresses)
    return addresses
