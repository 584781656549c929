"""bridge.http.ssrf: address classes, allow-lists, URL checks and the guarded httpx transport.

Safety: nothing here connects anywhere but 127.0.0.1 servers the tests start. Refusals are shown
with a fake resolver and a fake inner backend that fails the test if it is ever asked to connect.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpcore
import httpx
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

import bridge.http.ssrf
from bridge.errors import BridgeError, ConfigError, InvalidUrl
from bridge.http.dns import DnsResolver
from bridge.http.guarded_transport import GuardedBackend, guarded_transport
from bridge.http.ssrf import (
    AddressPolicy,
    DestinationForbidden,
    IPAddress,
    check_url,
    checked_addresses,
    classify,
    parse_ip_literal,
)
from bridge.subscriptions.urls import WebhookUrl
from tests.support.fake_dns import FakeDns
from tests.support.waiting import eventually

LIMITS = httpx.Limits(max_connections=4, max_keepalive_connections=4, keepalive_expiry=5.0)
LOOPBACK_ONLY = AddressPolicy([ipaddress.ip_network("127.0.0.0/8")])


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


# --- classify ------------------------------------------------------------------------------------

CLASSIFY_TABLE = [
    # IPv4 public
    ("8.8.8.8", None),
    ("1.1.1.1", None),
    ("93.184.216.34", None),
    ("100.63.255.255", None),
    ("100.128.0.0", None),
    ("172.15.255.255", None),
    ("172.32.0.0", None),
    ("11.0.0.1", None),
    ("223.255.255.255", None),
    # IPv4 special
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link_local"),
    ("169.254.0.1", "link_local"),
    ("100.64.0.1", "cgnat"),
    ("100.127.255.255", "cgnat"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.254", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "this_network"),
    ("192.0.2.1", "documentation"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.200", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.255", "benchmarking"),
    ("192.0.0.8", "ietf_protocol"),
    ("192.88.99.1", "reserved"),
    # IPv6 public
    ("2606:4700::1111", None),
    ("2001:4860:4860::8888", None),
    ("2a00:1450:4001::1", None),
    # IPv6 special
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link_local"),
    ("fe80::1%eth0", "link_local"),
    ("febf::1", "link_local"),
    ("fc00::1", "unique_local"),
    ("fd00::1", "unique_local"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("fec0::1", "site_local"),
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"),
    ("2001::1", "reserved"),  # Teredo
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "reserved"),
    ("2001:2::1", "benchmarking"),
    ("2001:10::1", "ietf_protocol"),
    ("100::1", "discard"),
    ("::127.0.0.1", "reserved"),  # deprecated IPv4-compatible
    ("4000::1", "reserved"),  # outside 2000::/3
    # IPv4 embedded in IPv6
    ("::ffff:127.0.0.1", "ipv4_mapped_loopback"),
    ("::ffff:10.0.0.1", "ipv4_mapped_private"),
    ("::ffff:169.254.169.254", "ipv4_mapped_link_local"),
    ("::ffff:8.8.8.8", None),
    ("64:ff9b::a00:1", "nat64_private"),
    ("64:ff9b::7f00:1", "nat64_loopback"),
    ("64:ff9b::808:808", None),
    ("64:ff9b:1::a9fe:a9fe", "nat64_link_local"),
    ("64:ff9b:1::808:808", None),
    # The local-use block's /64 layout (RFC 6052: bytes 9-12), read as 1.0.0.0 until 2026-12-07.
    ("64:ff9b:1:0:a:0:100:0", "nat64_private"),
    ("64:ff9b:1:0:7f:0:100:0", "nat64_loopback"),
    ("64:ff9b:1:0:8:808:800:0", None),
    ("64:ff9b:1:a00:0:100::", "nat64_private"),  # /48 layout
    ("64:ff9b:1:ff:8:808:800:1", "reserved"),  # in no layout (a suffix that is not zero)
    ("2002:7f00:1::", "6to4_loopback"),
    ("2002:a00:1::1", "6to4_private"),
    ("2002:808:808::1", None),
]


@pytest.mark.parametrize(("address", "reason"), CLASSIFY_TABLE)
def test_classify(address: str, reason: str | None) -> None:
    assert classify(ip(address)) == reason


v4_addresses = st.ip_addresses(v=4)


@given(v4_addresses)
def test_embedded_ipv4_is_judged_by_the_ipv4_address(v4: ipaddress.IPv4Address) -> None:
    inner = classify(v4)
    value = int(v4)
    for prefix, address in [
        ("ipv4_mapped", ipaddress.IPv6Address((0xFFFF << 32) | value)),
        ("nat64", ipaddress.IPv6Address((0x64FF9B << 96) | value)),
        ("6to4", ipaddress.IPv6Address((0x2002 << 112) | (value << 80))),
    ]:
        assert classify(address) == (None if inner is None else f"{prefix}_{inner}")


# RFC 6052's layouts of an IPv4 address under a prefix of the local-use block 64:ff9b:1::/48:
# prefix length, the bits of the address (from the left) of each half of the IPv4 address.
LOCAL_NAT64_LAYOUTS = [(48, ((48, 16), (72, 16))), (56, ((56, 8), (72, 24))), (64, ((72, 32),))]


@given(v4_addresses, st.sampled_from(LOCAL_NAT64_LAYOUTS), st.integers(0, 2**48 - 1))
def test_a_local_nat64_address_in_any_layout_is_judged_by_its_ipv4_address(
    v4: ipaddress.IPv4Address, layout: tuple[int, tuple[tuple[int, int], ...]], bits: int
) -> None:
    """Whatever the operator's prefix length, an address synthesized for a refused IPv4
    address is refused (until 2026-12-07 only the /96 layout was read)."""
    length, halves = layout
    prefix = (0x64FF9B0001 << 80) | ((bits << (128 - length)) & ((1 << 80) - 1))
    prefix &= ~((1 << (128 - length)) - 1)  # the prefix's own bits, beyond the /48
    value, left = prefix, int(v4)
    taken = 0
    for start, width in halves:
        taken += width
        part = (left >> (32 - taken)) & ((1 << width) - 1)
        value |= part << (128 - start - width)
    address = ipaddress.IPv6Address(value)
    assert address in ipaddress.ip_network("64:ff9b:1::/48")
    if classify(v4) is not None:
        assert classify(address) is not None, (address, v4)


@given(v4_addresses)
def test_every_non_global_ipv4_is_refused(v4: ipaddress.IPv4Address) -> None:
    # The standard library's notion (it samples special ranges on purpose) is covered by ours.
    if not v4.is_global:
        assert classify(v4) is not None


EMBEDDING = [ipaddress.ip_network(n) for n in ("::ffff:0:0/96", "64:ff9b::/96", "2002::/16")]
EMBEDDING.append(ipaddress.ip_network("64:ff9b:1::/48"))


@given(st.ip_addresses(v=6))
def test_every_non_global_ipv6_is_refused(v6: ipaddress.IPv6Address) -> None:
    if not v6.is_global and not any(v6 in network for network in EMBEDDING):
        assert classify(v6) is not None


# --- parse_ip_literal ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("127.1", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("example.com", None),
        ("localhost", None),
        ("cafe", None),
        ("deadbeef.example", None),
        ("1.2.3.4.5", None),
        ("", None),
    ],
)
def test_parse_ip_literal(host: str, expected: str | None) -> None:
    parsed = parse_ip_literal(host)
    assert (None if parsed is None else str(parsed)) == expected


# --- AddressPolicy -------------------------------------------------------------------------------


def test_policy_refuses_what_classify_refuses() -> None:
    policy = AddressPolicy()
    assert policy.check(ip("127.0.0.1")) == "loopback"
    assert policy.check(ip("8.8.8.8")) is None


def test_allow_list_overrides_classification() -> None:
    policy = AddressPolicy([ipaddress.ip_network("10.20.0.0/16"), ipaddress.ip_network("fd00::/8")])
    assert policy.check(ip("10.20.3.4")) is None
    assert policy.check(ip("fd00::1")) is None
    assert policy.check(ip("10.21.0.1")) == "private"
    assert policy.check(ip("127.0.0.1")) == "loopback"
    assert policy.check(ip("8.8.8.8")) is None


def test_allow_list_matches_ipv4_mapped_addresses_by_their_ipv4_address() -> None:
    assert LOOPBACK_ONLY.check(ip("::ffff:127.0.0.1")) is None
    assert LOOPBACK_ONLY.check(ip("::ffff:10.0.0.1")) == "ipv4_mapped_private"
    # NAT64 reaches a translator, not the embedded address: no match by the IPv4 address.
    assert LOOPBACK_ONLY.check(ip("64:ff9b::7f00:1")) == "nat64_loopback"


def test_disabled_policy_allows_everything() -> None:
    policy = AddressPolicy(enabled=False)
    for address, _reason in CLASSIFY_TABLE:
        assert policy.check(ip(address)) is None


def test_policy_from_setting() -> None:
    policy = AddressPolicy.from_setting(" 10.20.0.0/16 , fd00:1::/64,")
    assert policy.allow_networks == (
        ipaddress.ip_network("10.20.0.0/16"),
        ipaddress.ip_network("fd00:1::/64"),
    )
    assert policy.enabled
    assert AddressPolicy.from_setting("").allow_networks == ()
    assert not AddressPolicy.from_setting("", enabled=False).enabled
    assert "10.20.0.0/16" in repr(policy)


@pytest.mark.parametrize("text", ["10.0.0.1/8", "not-a-network", "10.0.0.0/33", "fd00::/129"])
def test_policy_from_setting_rejects_bad_networks(text: str) -> None:
    with pytest.raises(ConfigError):
        AddressPolicy.from_setting(text)


# --- check_url -----------------------------------------------------------------------------------

URL_OK = [
    ("https://hooks.example/receive?token=abc", False),
    ("https://hooks.example:8443/", False),
    ("HTTPS://HOOKS.EXAMPLE/", False),
    ("http://hooks.example/", True),
    ("https://8.8.8.8/", False),
]


@pytest.mark.parametrize(("url", "allow_http"), URL_OK)
def test_check_url_accepts(url: str, allow_http: bool) -> None:
    check_url(url, allow_http=allow_http, policy=AddressPolicy())


#: This deployment's policy: another setting could allow these (destination_forbidden).
URL_REFUSED = [
    ("http://hooks.example/", False, "plain_http", "plain http not allowed"),
    ("https://127.0.0.1/", True, "loopback", "127.0.0.1 is loopback"),
    ("https://[::1]:8443/", True, "loopback", "::1 is loopback"),
    ("https://169.254.169.254/latest/meta-data", True, "link_local", "169.254.169.254 is"),
    # Legacy IPv4 forms: WebhookUrl normalises them to the address connected to.
    ("https://0x7f.1/", True, "loopback", "127.0.0.1 is loopback"),
    ("https://2130706433/", True, "loopback", "127.0.0.1 is loopback"),
    ("https://[::ffff:10.0.0.1]/", True, "ipv4_mapped_private", "is ipv4_mapped_private"),
]

#: No deployment could use these (invalid_url): WebhookUrl.parse refuses them first.
URL_INVALID = [
    ("ftp://hooks.example/", "scheme"),
    ("file:///etc/passwd", "scheme"),
    ("gopher://hooks.example/", "scheme"),
    ("hooks.example/receive", "scheme"),
    ("https://user:hunter2@hooks.example/", "userinfo"),
    ("https://user@hooks.example/", "userinfo"),
    ("https:///receive", "no_host"),
    ("https://[::1/", "malformed"),
    ("http://127.0.0.1:99999/x", "port"),
    ("http://xn--/", "host"),  # once an idna.IDNAError out of check_url
]


@pytest.mark.parametrize(("url", "allow_http", "classification", "detail"), URL_REFUSED)
def test_check_url_refuses(url: str, allow_http: bool, classification: str, detail: str) -> None:
    with pytest.raises(DestinationForbidden) as caught:
        check_url(url, allow_http=allow_http, policy=AddressPolicy())
    error = caught.value
    assert isinstance(error, BridgeError)
    assert not error.retriable
    assert error.reason == "destination_forbidden"
    assert error.classification == classification
    assert detail in error.detail
    assert str(error) == f"destination_forbidden: {error.detail}"
    assert "hunter2" not in str(error)
    assert "meta-data" not in str(error)


@pytest.mark.parametrize(("url", "problem"), URL_INVALID)
@pytest.mark.parametrize("allow_http", [True, False])
def test_check_url_refuses_unusable_urls_as_invalid_not_forbidden(
    url: str, problem: str, allow_http: bool
) -> None:
    with pytest.raises(InvalidUrl) as caught:
        check_url(url, allow_http=allow_http, policy=AddressPolicy())
    assert caught.value.reason == "invalid_url"
    assert caught.value.problem == problem
    assert not caught.value.retriable
    assert "hunter2" not in str(caught.value)


def test_check_url_returns_the_parsed_url() -> None:
    parsed = check_url("https://0x08.8.8.8:8443/x?y", allow_http=False, policy=AddressPolicy())
    assert parsed == WebhookUrl.parse("https://8.8.8.8:8443/x?y")


def test_check_url_without_policy_leaves_addresses_to_connect_time() -> None:
    check_url("https://127.0.0.1/", allow_http=False)
    check_url("https://localhost/", allow_http=False, policy=AddressPolicy())


# --- GuardedBackend with fakes -------------------------------------------------------------------


class FakeStream(httpcore.AsyncNetworkStream):
    async def aclose(self) -> None:
        return None


@dataclass
class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Stands in for the socket layer: records connects, never opens a socket."""

    fail_hosts: set[str] = field(default_factory=set)
    connects: list[tuple[str, int, float | None]] = field(default_factory=list)
    slept: list[float] = field(default_factory=list)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port, timeout))
        if host in self.fail_hosts:
            raise httpcore.ConnectError(f"fake refusal from {host}")
        return FakeStream()

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


class ForbiddenToConnect(httpcore.AsyncNetworkBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise AssertionError(f"connect_tcp({host!r}, {port}) must not be reached")


@dataclass
class FakeResolver:
    """Answers from a script, one answer per call; records the questions."""

    answers: list[list[str]]
    asked: list[tuple[str, int]] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> Sequence[IPAddress]:
        self.asked.append((host, port))
        return [ip(a) for a in self.answers.pop(0)]


async def refuse_to_resolve(host: str, port: int) -> Sequence[IPAddress]:
    raise AssertionError(f"{host} must not be resolved")


@pytest.mark.parametrize(
    ("answer", "classification"),
    [
        (["10.0.0.7"], "private"),
        (["169.254.169.254"], "link_local"),
        (["::1"], "loopback"),
        (["::ffff:127.0.0.1"], "ipv4_mapped_loopback"),
        # A mixed answer is refused even though the first address is public.
        (["8.8.8.8", "192.168.0.10"], "private"),
        (["2606:4700::1111", "fd00::1"], "unique_local"),
    ],
)
async def test_backend_refuses_forbidden_answers_before_connecting(
    answer: list[str], classification: str
) -> None:
    resolver = FakeResolver([answer])
    backend = GuardedBackend(AddressPolicy(), resolver=resolver, inner=ForbiddenToConnect())
    with pytest.raises(DestinationForbidden) as caught:
        await backend.connect_tcp("hooks.example", 443, timeout=5.0)
    assert caught.value.classification == classification
    assert caught.value.host == "hooks.example"
    assert caught.value.detail.startswith("hooks.example resolves to ")
    assert resolver.asked == [("hooks.example", 443)]


async def test_backend_connects_to_the_checked_ip_literal_and_never_re_resolves() -> None:
    # Rebinding: the name answers a public address first, then a private one.
    resolver = FakeResolver([["8.8.8.8"], ["127.0.0.1"]])
    inner = RecordingBackend()
    backend = GuardedBackend(AddressPolicy(), resolver=resolver, inner=inner)

    stream = await backend.connect_tcp("rebind.example", 443, timeout=5.0)

    assert isinstance(stream, FakeStream)
    assert resolver.asked == [("rebind.example", 443)]
    assert [(host, port) for host, port, _ in inner.connects] == [("8.8.8.8", 443)]

    # The next connection resolves anew and the rebound answer is refused before any connect.
    with pytest.raises(DestinationForbidden, match="rebind.example resolves to 127.0.0.1"):
        await backend.connect_tcp("rebind.example", 443, timeout=5.0)
    assert len(inner.connects) == 1


async def test_backend_tries_checked_addresses_in_order() -> None:
    resolver = FakeResolver([["2606:4700::1111", "8.8.8.8", "8.8.8.8"]])
    inner = RecordingBackend(fail_hosts={"2606:4700::1111"})
    backend = GuardedBackend(AddressPolicy(), resolver=resolver, inner=inner)
    await backend.connect_tcp("dual.example", 443, timeout=5.0)
    assert [host for host, _, _ in inner.connects] == ["2606:4700::1111", "8.8.8.8"]
    assert len(resolver.asked) == 1
    _, _, timeout = inner.connects[1]
    assert timeout is not None and 0 < timeout <= 5.0


async def test_backend_raises_the_last_connect_error_when_all_fail() -> None:
    resolver = FakeResolver([["8.8.8.8", "8.8.4.4"]])
    inner = RecordingBackend(fail_hosts={"8.8.8.8", "8.8.4.4"})
    backend = GuardedBackend(AddressPolicy(), resolver=resolver, inner=inner)
    with pytest.raises(httpcore.ConnectError, match="8.8.4.4"):
        await backend.connect_tcp("down.example", 443, timeout=None)
    assert [timeout for _, _, timeout in inner.connects] == [None, None]


@pytest.mark.parametrize(
    ("host", "classification"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("127.1", "loopback"),
        ("0x7f.0.0.1", "loopback"),
        ("2130706433", "loopback"),
        ("169.254.169.254", "link_local"),
        ("fe80::1", "link_local"),
    ],
)
async def test_ip_literals_are_checked_without_dns(host: str, classification: str) -> None:
    backend = GuardedBackend(
        AddressPolicy(), resolver=refuse_to_resolve, inner=ForbiddenToConnect()
    )
    with pytest.raises(DestinationForbidden) as caught:
        await backend.connect_tcp(host, 80)
    assert caught.value.classification == classification


async def test_allowed_ip_literal_is_connected_in_canonical_form() -> None:
    inner = RecordingBackend()
    backend = GuardedBackend(LOOPBACK_ONLY, resolver=refuse_to_resolve, inner=inner)
    await backend.connect_tcp("0x7f.1", 8080)
    assert [host for host, _, _ in inner.connects] == ["127.0.0.1"]


async def test_resolution_failure_is_a_connect_error() -> None:
    async def fails(host: str, port: int) -> Sequence[IPAddress]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    backend = GuardedBackend(AddressPolicy(), resolver=fails, inner=ForbiddenToConnect())
    with pytest.raises(httpcore.ConnectError, match="cannot resolve nowhere.example"):
        await backend.connect_tcp("nowhere.example", 443)


async def test_empty_answer_is_a_connect_error() -> None:
    backend = GuardedBackend(
        AddressPolicy(), resolver=FakeResolver([[]]), inner=ForbiddenToConnect()
    )
    with pytest.raises(httpcore.ConnectError, match="no address"):
        await backend.connect_tcp("empty.example", 443)


async def test_slow_resolution_is_a_connect_timeout() -> None:
    async def hangs(host: str, port: int) -> Sequence[IPAddress]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    backend = GuardedBackend(AddressPolicy(), resolver=hangs, inner=ForbiddenToConnect())
    with pytest.raises(httpcore.ConnectTimeout):
        await backend.connect_tcp("slow.example", 443, timeout=0.01)


async def test_unix_sockets_are_refused_and_sleep_is_delegated() -> None:
    inner = RecordingBackend()
    backend = GuardedBackend(AddressPolicy(enabled=False), inner=inner)
    with pytest.raises(DestinationForbidden) as caught:
        await backend.connect_unix_socket("/var/run/docker.sock")
    assert caught.value.classification == "unix_socket"
    await backend.sleep(0.5)
    assert inner.slept == [0.5]


async def test_names_that_dns_never_answers_hold_up_no_other_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default resolver (:func:`resolve`, that of ``checked_addresses``) once asked the
    system's getaddrinfo in the loop's thread pool (asyncio's executor: at most 32 threads),
    where a lookup held its thread until the resolver gave up, cancelled or not: a few dozen
    names whose DNS drops queries left every other name waiting. (This loop's getaddrinfo
    runs ``socket.getaddrinfo``, replaced here by one that hangs for those names, answers the
    others as the fake name server does, and asks no one.)"""
    entered = threading.Event()
    release = threading.Event()

    def system_getaddrinfo(host: object, port: object, *args: object, **kwargs: object) -> object:
        if str(host).endswith(".fast.test"):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        entered.set()
        release.wait(10)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", system_getaddrinfo)
    with FakeDns() as dns:
        default = DnsResolver(servers=[dns.address])
        monkeypatch.setattr(bridge.http.ssrf, "_SYSTEM", default, raising=False)
        hanging = [
            asyncio.ensure_future(checked_addresses(LOOPBACK_ONLY, f"h{i}.slow.test", 443))
            for i in range(48)
        ]
        try:
            await eventually(lambda: entered.is_set() or dns.asked(".slow.test") == 2 * 48)
            async with asyncio.timeout(1.0):
                answers = await asyncio.gather(
                    *(checked_addresses(LOOPBACK_ONLY, f"s{i}.fast.test", 443) for i in range(8))
                )
            assert answers == [[ip("127.0.0.1")]] * 8
        finally:
            for lookup in hanging:
                lookup.cancel()
            await asyncio.gather(*hanging, return_exceptions=True)
            release.set()
    assert default.in_flight == 0


# --- guarded_transport against real 127.0.0.1 servers --------------------------------------------


@dataclass
class LocalServer:
    port: int
    connections: int = 0
    hosts: list[str] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)


@asynccontextmanager
async def local_server(ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[LocalServer]:
    """An aiohttp app on 127.0.0.1 that counts TCP connections (not just requests)."""
    state = LocalServer(port=0)

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        state.hosts.append(request.host)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    make_handler = runner.server
    assert make_handler is not None

    def counting_factory() -> asyncio.BaseProtocol:
        state.connections += 1
        return make_handler()

    server = await asyncio.get_running_loop().create_server(
        counting_factory, "127.0.0.1", 0, ssl=ssl_context
    )
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await runner.cleanup()
        await server.wait_closed()


async def test_allowed_loopback_post_gets_200() -> None:
    async with local_server() as server:
        transport = guarded_transport(LOOPBACK_ONLY, limits=LIMITS)
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.post(f"http://127.0.0.1:{server.port}/hook", content=b"{}")
    assert response.status_code == 200
    assert server.connections == 1


async def test_host_name_is_sent_while_the_checked_ip_is_connected() -> None:
    resolver = FakeResolver([["127.0.0.1"]])
    async with local_server() as server:
        transport = guarded_transport(LOOPBACK_ONLY, limits=LIMITS, resolver=resolver)
        async with httpx.AsyncClient(transport=transport) as client:
            url = f"http://hooks.test:{server.port}/hook"
            first = await client.post(url, content=b"1")
            second = await client.post(url, content=b"2")  # keep-alive: no new resolution
    assert (first.status_code, second.status_code) == (200, 200)
    assert server.hosts == [f"hooks.test:{server.port}"] * 2
    assert resolver.asked == [("hooks.test", server.port)]
    assert server.connections == 1


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_guard_refuses_loopback_before_any_connection(host: str) -> None:
    resolver = FakeResolver([["127.0.0.1"]])
    async with local_server() as server:
        transport = guarded_transport(AddressPolicy(), limits=LIMITS, resolver=resolver)
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(DestinationForbidden) as caught:
                await client.post(f"http://{host}:{server.port}/hook", content=b"{}")
    # httpx lets it through unwrapped: callers catch DestinationForbidden itself.
    assert not isinstance(caught.value, httpx.HTTPError)
    assert caught.value.classification == "loopback"
    assert server.connections == 0
    assert server.hosts == []


async def test_resolution_failure_surfaces_as_httpx_connect_error() -> None:
    async def fails(host: str, port: int) -> Sequence[IPAddress]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    transport = guarded_transport(AddressPolicy(), limits=LIMITS, resolver=fails)
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.ConnectError):
            await client.post("https://nowhere.test/hook", content=b"{}")


# --- TLS: SNI and certificate checks use the URL's host name, not the connected IP ---------------


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    server_context: ssl.SSLContext
    server_names: list[str | None]


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_pki(directory: Path, dns_name: str) -> Pki:
    """A throwaway CA and a server certificate for ``dns_name`` only (no IP SAN)."""
    now = datetime.datetime.now(datetime.UTC)
    validity = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(hours=1))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("bridge test CA"))
        .issuer_name(_name("bridge test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(dns_name))
        .issuer_name(ca_cert.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file = directory / "server.pem"
    cert_file.write_bytes(
        leaf_cert.public_bytes(serialization.Encoding.PEM)
        + leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_file)
    server_names: list[str | None] = []

    def record_sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        server_names.append(name)

    server_context.sni_callback = record_sni
    return Pki(ca_file, server_context, server_names)


async def test_tls_verifies_and_sends_sni_for_the_url_host(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, "hooks.test")
    resolver = FakeResolver([["127.0.0.1"]])
    async with local_server(pki.server_context) as server:
        # The CA bundle is given as a path: the custom-CA option.
        transport = guarded_transport(
            LOOPBACK_ONLY, verify=str(pki.ca_file), limits=LIMITS, resolver=resolver
        )
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.post(f"https://hooks.test:{server.port}/hook", content=b"{}")
    assert response.status_code == 200
    assert pki.server_names == ["hooks.test"]


async def test_tls_rejects_a_certificate_for_another_name(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, "other.test")
    resolver = FakeResolver([["127.0.0.1"]])
    async with local_server(pki.server_context) as server:
        context = ssl.create_default_context(cafile=pki.ca_file)
        transport = guarded_transport(
            LOOPBACK_ONLY, verify=context, limits=LIMITS, resolver=resolver
        )
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx.ConnectError) as caught:
                await client.post(f"https://hooks.test:{server.port}/hook", content=b"{}")
    assert isinstance(caught.value.__cause__, httpcore.ConnectError)
    assert "hostname" in str(caught.value).lower() or "certificate" in str(caught.value).lower()
    assert pki.server_names == ["hooks.test"]


def test_missing_ca_bundle_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load CA certificates"):
        guarded_transport(AddressPolicy(), verify=str(tmp_path / "missing.pem"), limits=LIMITS)
