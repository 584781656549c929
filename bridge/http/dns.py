"""Name lookups for deliveries: c-ares, on the event loop, bounded, shared and dropped unwanted.

The system's ``getaddrinfo`` blocks a thread for each lookup, and an event loop runs it in a
small pool (libuv's 4 threads under uvloop, asyncio's default executor otherwise) that no
cancellation frees: a webhook whose domain's DNS never answers held every thread with 16
deliveries, and every other site's deliveries waited out their 30 s in the queue for a thread,
charged to their endpoints, until the lookups gave up (until 2026-12-07).

A :class:`DnsResolver` looks names up with c-ares (``pycares``) instead, reading the system's
configuration as ``getaddrinfo`` does: ``/etc/hosts`` first, then the name servers, search
domains, ``ndots``, ``timeout`` and ``attempts`` of ``/etc/resolv.conf`` (``RES_OPTIONS`` and
``LOCALDOMAIN`` too). Names under ``localhost`` (``hooks.localhost``) are loopback without a
query, c-ares's RFC 6761 answer.

``localhost`` itself (any case) is not looked up by c-ares, which adds the loopback address of
every family to what ``/etc/hosts`` gives for it (``::1`` next to a hosts file's only
``127.0.0.1``): a policy allowing ``127.0.0.0/8`` refused ``http://localhost`` for that ``::1``
(on 2026-12-07, until c-ares was kept from it). It is answered as glibc's ``getaddrinfo``
answers it (:func:`localhost_addresses`): the addresses ``/etc/hosts`` gives for it, and only
when it gives none, ``::1`` and ``127.0.0.1``; no query, no channel. ``localhost.`` stays
c-ares's: c-ares reads no hosts file for a name with a trailing dot, and asks the name servers.

Each lookup:

* holds no thread: its c-ares channel's sockets and timers are the event loop's;
* ends within its resolver's ``timeout`` whatever the configuration says (retries of every
  search domain add up): then it fails, ``EAI_AGAIN``. c-ares may give up sooner, after its
  tries (``attempts``): a try waits ``timeout`` at most, and five times the name servers'
  recent answer times when they just answered (250 ms at least, doubled each try), as they
  have after a Kubernetes pod's search domains (1.75 s for three tries);
* is shared by every caller asking for the same name meanwhile (one query for 16 deliveries
  to one webhook);
* is dropped, its queries with it, when the last caller waiting for it is cancelled (a
  delivery that timed out): its channel is cancelled and closed, nothing is sent again.

Failures are :class:`socket.gaierror`, as ``getaddrinfo``'s: ``EAI_NONAME`` for a name that
does not exist or has no address, ``EAI_AGAIN`` for servers that failed or did not answer.
IP literals are the caller's to keep from a lookup (:func:`bridge.http.ssrf.resolve` does).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import threading
from collections.abc import Callable, Sequence

import pycares

__all__ = ["HOSTS_FILE", "LOOKUP_TIMEOUT", "DnsResolver", "localhost_addresses", "resolver_for"]


#: Seconds a lookup may take at most (glibc's default, two tries of 5 s).
LOOKUP_TIMEOUT = 10.0


_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


#: The hosts file ``localhost`` is read from (read at each lookup of it, as c-ares reads it for
#: other names; a resolver given ``hosts_file`` reads that one instead).
HOSTS_FILE = "/etc/hosts"

#: ``localhost`` when the hosts file names it nowhere: the loopback address of each family.
_LOOPBACK: tuple[_Address, ...] = (ipaddress.ip_address("::1"), ipaddress.ip_address("127.0.0.1"))


def localhost_addresses(hosts_file: str | os.PathLike[str] | None = None) -> list[_Address]:
    """What glibc's ``getaddrinfo`` gives for ``localhost`` (TCP, any family) from ``files``:
    the addresses of the lines of ``hosts_file`` (:data:`HOSTS_FILE` by default) naming it, as
    its name or an alias, in any case; IPv6 before IPv4 (the order RFC 6724 gives ``::1`` and
    ``127.0.0.1``), each once. When none names it, or the file cannot be read, the loopback
    addresses, ``::1`` and ``127.0.0.1``."""
    try:
        with open(HOSTS_FILE if hosts_file is None else hosts_file, encoding="latin-1") as lines:
            found: list[_Address] = []
            for line in lines:
                fields = line.partition("#")[0].split()
                if len(fields) < 2 or not any(n.lower() == "localhost" for n in fields[1:]):
                    continue
                try:
                    address = ipaddress.ip_address(fields[0])
                except ValueError:
                    continue  # a line getaddrinfo skips too
                if address not in found:
                    found.append(address)
    except OSError:
        found = []
    if not found:
        return list(_LOOPBACK)
    return sorted(found, key=lambda address: address.version != 6)


#: How a lookup ended: its addresses, or the ``(EAI_*, message)`` of its failure. Every caller
#: builds its own exception from it: one object raised in many tasks would carry all of their
#: frames on its traceback.
_Outcome = list[_Address] | tuple[int, str]


#: c-ares's failures as ``getaddrinfo``'s.
_NONAME = frozenset(
    {pycares.errno.ARES_ENOTFOUND, pycares.errno.ARES_ENODATA, pycares.errno.ARES_EBADNAME}
)
_AGAIN = frozenset(
    {
        pycares.errno.ARES_ETIMEOUT,
        pycares.errno.ARES_ESERVFAIL,
        pycares.errno.ARES_ECONNREFUSED,
        pycares.errno.ARES_EREFUSED,
    }
)


#: ``process_fd``'s arguments when no socket is ready: a timer's turn.
_NO_SOCKETS = (pycares.ARES_SOCKET_BAD, pycares.ARES_SOCKET_BAD)


def _failure(code: int) -> tuple[int, str]:
    if code in _NONAME:
        eai = socket.EAI_NONAME
    elif code in _AGAIN:
        eai = socket.EAI_AGAIN
    elif code == pycares.errno.ARES_ENOMEM:
        eai = socket.EAI_MEMORY
    else:
        eai = socket.EAI_FAIL
    return eai, str(pycares.errno.strerror(code))


class _Lookup:
    """One name's lookup: a c-ares channel of its own, driven by ``loop`` (sockets watched,
    timers armed), closed when the lookup ends, fails, expires or is abandoned."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        timeout: float,
        servers: Sequence[str] | None,
        on_end: Callable[[_Lookup], None],
    ) -> None:
        self.loop = loop
        self.outcome: asyncio.Future[_Outcome] = loop.create_future()
        #: Callers awaiting :attr:`outcome`; the lookup is dropped when the last one leaves.
        self.waiters = 0
        self._timeout = timeout
        self._on_end = on_end
        self._thread = threading.get_ident()
        self._readers: set[int] = set()
        self._writers: set[int] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._ended = False
        self._channel: pycares.Channel | None = None
        self._deadline = loop.call_later(timeout, self._expire)
        try:
            # Not resolvconf_path: pycares 5.2 hands c-ares a copy of the path that it has
            # freed already (what c-ares reads is whatever is there then, often nothing).
            self._channel = pycares.Channel(sock_state_cb=self._sock_state)
            if servers:
                self._channel.servers = servers
            self._channel.getaddrinfo(
                host, None, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM, callback=self._done
            )
        except pycares.AresError as exc:  # no channel (its configuration), or a bad name
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
            self._settle(_failure(code) if code is not None else (socket.EAI_FAIL, str(exc)))
            self.end()
            return
        except (RuntimeError, ValueError) as exc:  # a name pycares cannot encode
            self._settle((socket.EAI_NONAME, str(exc)))
            self.end()
            return
        except BaseException:
            self.end()  # nothing left open or armed
            raise
        self._arm()

    def end(self) -> None:
        """Cancel and close the channel (its queries are never sent again); idempotent."""
        if self._ended:
            return
        self._ended = True
        self._deadline.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for fd in self._readers:
            self.loop.remove_reader(fd)
        for fd in self._writers:
            self.loop.remove_writer(fd)
        self._readers.clear()
        self._writers.clear()
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.cancel()  # here, on the loop's thread: its callbacks come back as no-ops
            channel.close()
        if not self.outcome.done():
            self.outcome.set_result((socket.EAI_AGAIN, "lookup abandoned"))
        self._on_end(self)

    # -- c-ares's callbacks (on the loop's thread, inside the channel's calls)
    def _done(self, result: pycares.AddrInfoResult | None, error: int | None) -> None:
        if self._ended or threading.get_ident() != self._thread:
            return
        if error is not None or result is None:
            self._settle(_failure(error if error is not None else pycares.errno.ARES_ENODATA))
        else:
            addresses: list[_Address] = []
            for node in result.nodes:
                if node.family not in (socket.AF_INET, socket.AF_INET6):
                    continue
                raw = node.addr[0]
                ip = ipaddress.ip_address(raw.decode() if isinstance(raw, bytes) else str(raw))
                if ip not in addresses:
                    addresses.append(ip)
            self._settle(addresses)
        # Not from inside c-ares's call: a channel is not closed under its own callback.
        self.loop.call_soon(self.end)

    def _sock_state(self, fd: int, readable: bool, writable: bool) -> None:
        if self._ended or threading.get_ident() != self._thread:
            return  # a closed channel's sockets, closed by pycares's own thread
        if readable and fd not in self._readers:
            self.loop.add_reader(fd, self._process, fd, pycares.ARES_SOCKET_BAD)
            self._readers.add(fd)
        elif not readable and fd in self._readers:
            self.loop.remove_reader(fd)
            self._readers.discard(fd)
        if writable and fd not in self._writers:
            self.loop.add_writer(fd, self._process, pycares.ARES_SOCKET_BAD, fd)
            self._writers.add(fd)
        elif not writable and fd in self._writers:
            self.loop.remove_writer(fd)
            self._writers.discard(fd)

    # -- the loop's callbacks
    def _process(self, read_fd: int, write_fd: int) -> None:
        if self._channel is None:
            return
        self._channel.process_fd(read_fd, write_fd)
        self._arm()

    def _arm(self) -> None:
        """Wake c-ares when its next query times out (to send it again or give up)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._ended or self._channel is None:
            return
        # ares_timeout gives the bound back when no query waits: no busy loop.
        delay: float = self._channel.timeout(self._timeout)  # type: ignore[no-untyped-call]
        self._timer = self.loop.call_later(delay, self._process, *_NO_SOCKETS)

    def _expire(self) -> None:
        self._settle((socket.EAI_AGAIN, f"no answer within {self._timeout:g} s"))
        self.end()

    def _settle(self, outcome: _Outcome) -> None:
        if not self.outcome.done():
            self.outcome.set_result(outcome)


class DnsResolver:
    """A :data:`bridge.http.ssrf.Resolver`: ``await resolver(host, port)`` gives every address
    of ``host`` (TCP; ``port`` is not looked up), in c-ares's order (RFC 6724, as
    ``getaddrinfo``'s), without duplicates; see the module docstring.

    ``timeout``: seconds a lookup may take. ``servers``: the name servers to ask instead of
    the system's (``"127.0.0.1:5353"``: tests ask a server of their own); the rest of the
    system's configuration holds. ``hosts_file``: where ``localhost`` is read from
    (:func:`localhost_addresses`; :data:`HOSTS_FILE` by default), instead of the system's."""

    def __init__(
        self,
        *,
        timeout: float = LOOKUP_TIMEOUT,
        servers: Sequence[str] | None = None,
        hosts_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.timeout = timeout
        self._servers = tuple(servers) if servers else None
        self._hosts_file = hosts_file
        #: Lookups under way, by event loop and name (a resolver may serve several loops).
        self._lookups: dict[tuple[asyncio.AbstractEventLoop, str], _Lookup] = {}

    @property
    def in_flight(self) -> int:
        """Lookups under way (each a c-ares channel with its queries)."""
        return len(self._lookups)

    async def __call__(self, host: str, port: int) -> list[_Address]:
        if host.lower() == "localhost":  # not c-ares's, which adds ::1 (module docstring)
            return localhost_addresses(self._hosts_file)
        loop = asyncio.get_running_loop()
        key = (loop, host)
        lookup = self._lookups.get(key)
        if lookup is None:
            lookup = _Lookup(loop, host, self.timeout, self._servers, self._forget(key))
            if not lookup.outcome.done():
                self._lookups[key] = lookup
        lookup.waiters += 1
        try:
            outcome = await asyncio.shield(lookup.outcome)
        finally:
            lookup.waiters -= 1
            if lookup.waiters == 0:
                lookup.end()  # done, or nobody wants it any more: its queries are dropped
        if isinstance(outcome, tuple):
            raise socket.gaierror(*outcome)
        return list(outcome)

    def _forget(self, key: tuple[asyncio.AbstractEventLoop, str]) -> Callable[[_Lookup], None]:
        def forget(lookup: _Lookup) -> None:
            if self._lookups.get(key) is lookup:
                del self._lookups[key]

        return forget


def resolver_for(delivery_timeout: float) -> DnsResolver:
    """The resolver of a sender whose attempts end after ``delivery_timeout`` seconds: its
    lookups take at most half of that (and :data:`LOOKUP_TIMEOUT`), so that a name whose DNS
    does not answer fails as such (``connect_error``, "cannot resolve"), not as the attempt's
    timeout, and leaves time to connect."""
    return DnsResolver(timeout=min(LOOKUP_TIMEOUT, delivery_timeout / 2))
