"""bridge.http.dns: c-ares lookups on the event loop, against a DNS server of the test's own.

Safety: every resolver here is given a :class:`FakeDns` on 127.0.0.1 as its only name server
(the machine's are never asked); the rest of the system's configuration (``/etc/hosts``,
search domains and options) is read as the worker reads it, with search domains and options
set through ``LOCALDOMAIN`` and ``RES_OPTIONS`` where a test needs them. The fake answers
``*.fast.test`` at once, never answers ``*.slow.test``, and says ``NXDOMAIN`` for anything
else.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import bridge.http.ssrf
from bridge.http.dns import LOOKUP_TIMEOUT, DnsResolver, resolver_for
from bridge.http.ssrf import resolve
from tests.support.fake_dns import FakeDns
from tests.support.loopback import LoopbackGuard
from tests.support.waiting import eventually

LOCAL = [ipaddress.ip_address("127.0.0.1")]


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDns]:
    # No search domain, c-ares's default options, whatever the machine's resolv.conf says.
    monkeypatch.setenv("LOCALDOMAIN", "")
    monkeypatch.setenv("RES_OPTIONS", "ndots:1 timeout:2 attempts:3")
    with FakeDns() as server:
        yield server


def resolver(dns: FakeDns, *, timeout: float = 5.0) -> DnsResolver:
    return DnsResolver(timeout=timeout, servers=[dns.address])


async def test_names_resolve_through_the_configured_server(dns: FakeDns) -> None:
    names = resolver(dns)
    assert await names("hooks.fast.test", 443) == LOCAL
    assert dns.questions[("hooks.fast.test", "A")] == 1
    assert dns.questions[("hooks.fast.test", "AAAA")] == 1
    with pytest.raises(socket.gaierror) as caught:
        await names("nowhere.test", 443)
    assert caught.value.errno == socket.EAI_NONAME
    assert names.in_flight == 0


async def test_fast_lookups_answer_at_once_while_hundreds_never_answered_hang(dns: FakeDns) -> None:
    """The system's getaddrinfo held a thread of a pool of 4 (uvloop) for each lookup: 16 that
    DNS never answered kept every other name waiting for a thread until they gave up."""
    names = resolver(dns)
    threads = threading.active_count()
    hanging = [asyncio.ensure_future(names(f"h{i}.slow.test", 443)) for i in range(100)]
    hanging += [asyncio.ensure_future(names("one.slow.test", 443)) for _ in range(16)]
    await eventually(lambda: dns.asked(".slow.test") >= 2 * 101)
    started = time.monotonic()
    answers = await asyncio.gather(*(names(f"site{i}.fast.test", 443) for i in range(20)))
    assert time.monotonic() - started < 0.5
    assert answers == [LOCAL] * 20
    assert names.in_flight == 101  # one lookup for the 16 callers asking for one.slow.test
    assert threading.active_count() == threads  # no thread per lookup
    for waiting in hanging:
        waiting.cancel()
    await asyncio.gather(*hanging, return_exceptions=True)
    assert names.in_flight == 0


async def test_a_lookup_nobody_waits_for_is_dropped_with_its_queries(
    dns: FakeDns, monkeypatch: pytest.MonkeyPatch
) -> None:
    # c-ares would ask again 1 s after each unanswered question, 4 times.
    monkeypatch.setenv("RES_OPTIONS", "timeout:1 attempts:4")
    names = resolver(dns)
    abandoned = [asyncio.ensure_future(names(f"gone{i}.slow.test", 443)) for i in range(20)]
    await eventually(lambda: dns.asked(".slow.test") == 2 * 20)
    for waiting in abandoned:
        waiting.cancel()
    await asyncio.gather(*abandoned, return_exceptions=True)
    assert names.in_flight == 0
    # A lookup kept waiting meanwhile shows the time for a second question has passed.
    kept = asyncio.ensure_future(names("kept.slow.test", 443))
    await eventually(lambda: dns.questions[("kept.slow.test", "A")] >= 2, timeout=5.0)
    assert dns.asked(".slow.test") - dns.asked("kept.slow.test") == 2 * 20
    kept.cancel()
    await asyncio.gather(kept, return_exceptions=True)


async def test_callers_asking_for_one_name_share_one_lookup(dns: FakeDns) -> None:
    names = resolver(dns)
    answers = await asyncio.gather(*(names("shared.fast.test", port) for port in range(1, 17)))
    assert answers == [LOCAL] * 16
    assert dns.questions[("shared.fast.test", "A")] == 1
    # The lookup lives while anyone waits for it, and ends when the last one is cancelled.
    waiting = [asyncio.ensure_future(names("shared.slow.test", 443)) for _ in range(3)]
    await eventually(lambda: dns.asked("shared.slow.test") == 2)
    for i, one in enumerate(waiting):
        one.cancel()
        await asyncio.gather(one, return_exceptions=True)
        assert names.in_flight == (1 if i < 2 else 0)
    assert dns.questions[("shared.slow.test", "A")] == 1


async def test_a_lookup_fails_at_its_timeout(dns: FakeDns) -> None:
    names = resolver(dns, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(socket.gaierror, match=r"no answer within 0.3 s") as caught:
        await names("late.slow.test", 443)
    assert 0.25 < time.monotonic() - started < 2.0
    assert caught.value.errno == socket.EAI_AGAIN
    assert names.in_flight == 0


def test_a_senders_lookups_end_before_its_attempts() -> None:
    assert resolver_for(30.0).timeout == LOOKUP_TIMEOUT == 10.0
    assert resolver_for(5.0).timeout == 2.5


async def test_search_domains_and_ndots_of_the_system_hold(
    dns: FakeDns, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in a Kubernetes pod (``search`` and ``options ndots:5`` in its resolv.conf; here the
    environment variables that override them): a name with fewer dots than ``ndots`` is tried
    under the search domain first, and a short name finds its service."""
    monkeypatch.setenv("LOCALDOMAIN", "svc.cluster.local")  # c-ares reads one domain there
    monkeypatch.setenv("RES_OPTIONS", "ndots:5")
    assert await resolver(dns)("hooks.fast.test", 443) == LOCAL
    assert list(dict.fromkeys(dns.names)) == [
        "hooks.fast.test.svc.cluster.local",
        "hooks.fast.test",
    ]
    monkeypatch.setenv("LOCALDOMAIN", "fast.test")
    assert await resolver(dns)("short", 443) == LOCAL
    assert list(dict.fromkeys(dns.names))[2:] == ["short.fast.test"]


def _hosts_file() -> dict[str, set[str]]:
    """The names of /etc/hosts and their addresses."""
    names: dict[str, set[str]] = {}
    try:
        lines = Path("/etc/hosts").read_text().splitlines()
    except OSError:
        return names
    for line in lines:
        fields = line.partition("#")[0].split()
        if len(fields) >= 2:
            for name in fields[1:]:
                names.setdefault(name.lower(), set()).add(fields[0])
    return names


async def test_localhost_and_the_hosts_file_need_no_query(dns: FakeDns) -> None:
    names = resolver(dns)
    assert ipaddress.ip_address("127.0.0.1") in await names("localhost", 443)
    for name, addresses in _hosts_file().items():
        assert {str(a) for a in await names(name, 443)} >= {
            str(ipaddress.ip_address(a.partition("%")[0])) for a in addresses
        }, name
    assert dns.names == []


async def test_localhost_is_what_the_hosts_file_gives_for_it(dns: FakeDns, tmp_path: Path) -> None:
    """As glibc's getaddrinfo: c-ares added ::1 to a hosts file's only 127.0.0.1 for
    ``localhost``, which a policy allowing 127.0.0.0/8 refused (2026-12-07)."""
    hosts = tmp_path / "hosts"
    hosts.write_text("# the machine's\n127.0.0.1\tlocalhost\n127.0.0.1 runsc\n")
    names = DnsResolver(timeout=5.0, servers=[dns.address], hosts_file=hosts)
    for name in ("localhost", "LocalHost", "LOCALHOST"):
        assert await names(name, 443) == LOCAL, name
    # Both families when the file names both (as an alias too, any case), IPv6 first.
    hosts.write_text(
        "127.0.0.1 localhost\n::1 ip6-localhost LocalHost # comment\n"
        "127.0.0.1 localhost\n127.0.1.1 box\n"
    )
    assert await names("localhost", 443) == [
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("127.0.0.1"),
    ]
    # The loopback of each family when it names localhost nowhere, or is not there at all.
    loopback = [ipaddress.ip_address("::1"), ipaddress.ip_address("127.0.0.1")]
    hosts.write_text("127.0.0.1 box # localhost\n")
    assert await names("localhost", 443) == loopback
    hosts.unlink()
    assert await names("localhost", 443) == loopback
    assert dns.names == [] and names.in_flight == 0


async def test_resolve_keeps_ip_literals_and_asks_the_default_resolver_for_names(
    dns: FakeDns, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bridge.http.ssrf, "_SYSTEM", resolver(dns))
    assert await resolve("0x7f.1", 80) == LOCAL  # the legacy forms getaddrinfo reads too
    assert await resolve("::1", 80) == [ipaddress.ip_address("::1")]
    assert dns.names == []
    assert await resolve("hooks.fast.test", 80) == LOCAL
    assert dns.names == ["hooks.fast.test"] * 2


async def test_the_loopback_guard_of_the_fuzz_tests_refuses_these_lookups(dns: FakeDns) -> None:
    names = resolver(dns)
    with LoopbackGuard() as guard:
        with pytest.raises(OSError, match="loopback guard"):
            await names("hooks.fast.test", 443)
        assert await names("127.0.0.1", 443) == LOCAL  # a literal: nothing asked
    assert guard.violations == ["lookup of 'hooks.fast.test' by c-ares"]
    assert dns.names == [] and names.in_flight == 0
