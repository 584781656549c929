"""A guard that refuses, and records, every name lookup or connection that would leave loopback.

Tests whose inputs are generated (URLs a fuzzer makes up) install it around the whole process:
``socket.getaddrinfo`` and ``socket.create_connection`` for blocking clients, and
``getaddrinfo`` and ``sock_connect`` of asyncio's selector event loops, through which every
asyncio connection passes (``create_connection`` resolves names with the loop's
``getaddrinfo`` and connects with its ``sock_connect``; an IP literal skips the lookup but not
the connect). The deliveries' own lookups (c-ares, :mod:`bridge.http.dns`) are refused in
``pycares.Channel.getaddrinfo``, in every loop. Only IP literals in 127.0.0.0/8 or ``::1``
pass, and Unix sockets: a host name, even one that would resolve to loopback, is refused before
any DNS query is made. A refusal raises ``OSError`` in the caller, so nothing is sent, and is
kept in :attr:`violations` for the test to fail on. uvloop's loops bypass the event loop
patches: :meth:`covers` tells whether a loop is one the guard sees.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from asyncio import base_events, selector_events
from types import TracebackType
from typing import Any

import pycares
import pytest

__all__ = ["LoopbackGuard", "is_loopback"]


def is_loopback(host: object) -> bool:
    """Whether ``host`` is an IP literal of the loopback networks (no name, not even
    ``localhost``: resolving a name is what the guard prevents)."""
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(bare.partition("%")[0]).is_loopback
    except ValueError:
        return False


class LoopbackGuard:
    """Installed while the ``with`` block runs; :attr:`violations` lists what it refused."""

    def __init__(self) -> None:
        self.violations: list[str] = []
        self._lock = threading.Lock()
        self._patch = pytest.MonkeyPatch()

    def _refuse(self, what: str) -> OSError:
        with self._lock:
            self.violations.append(what)
        return OSError(f"refused by the loopback guard: {what}")

    def __enter__(self) -> LoopbackGuard:
        lookup = socket.getaddrinfo
        connect = socket.create_connection
        loop_lookup = base_events.BaseEventLoop.getaddrinfo
        loop_connect = selector_events.BaseSelectorEventLoop.sock_connect
        ares_lookup = pycares.Channel.getaddrinfo
        guard = self

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            if not is_loopback(host):
                raise guard._refuse(f"lookup of {host!r}")
            return lookup(host, port, *args, **kwargs)

        def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
            if not is_loopback(address[0]):
                raise guard._refuse(f"connection to {address!r}")
            return connect(address, *args, **kwargs)

        async def loop_getaddrinfo(
            self: asyncio.AbstractEventLoop, host: Any, port: Any, *args: Any, **kwargs: Any
        ) -> Any:
            if not is_loopback(host):
                raise guard._refuse(f"lookup of {host!r} in an event loop")
            return await loop_lookup(self, host, port, *args, **kwargs)  # type: ignore[arg-type]

        def channel_getaddrinfo(
            self: pycares.Channel, host: str, *args: Any, **kwargs: Any
        ) -> None:
            if not is_loopback(host):
                raise guard._refuse(f"lookup of {host!r} by c-ares")
            ares_lookup(self, host, *args, **kwargs)

        async def sock_connect(self: Any, sock: socket.socket, address: Any) -> None:
            if sock.family != socket.AF_UNIX and not is_loopback(address[0]):
                raise guard._refuse(f"connection to {address!r} in an event loop")
            await loop_connect(self, sock, address)

        self._patch.setattr(socket, "getaddrinfo", getaddrinfo)
        self._patch.setattr(socket, "create_connection", create_connection)
        self._patch.setattr(base_events.BaseEventLoop, "getaddrinfo", loop_getaddrinfo)
        self._patch.setattr(selector_events.BaseSelectorEventLoop, "sock_connect", sock_connect)
        self._patch.setattr(pycares.Channel, "getaddrinfo", channel_getaddrinfo)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._patch.undo()

    @staticmethod
    def covers(loop: asyncio.AbstractEventLoop) -> bool:
        """Whether connections made in ``loop`` pass through the guard (asyncio's selector
        loops do; uvloop's do not)."""
        return isinstance(loop, selector_events.BaseSelectorEventLoop)
