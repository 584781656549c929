"""The SSRF policy enforced for httpx: a network backend that connects only to checked addresses."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable

import anyio
import httpcore
import httpx

from bridge.http.ssrf import (
    AddressPolicy,
    DestinationForbidden,
    Resolver,
    checked_addresses,
    resolve,
)
from bridge.http.tls import ssl_context

__all__ = ["GuardedBackend", "guarded_transport"]


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to addresses the policy allows.

    Each ``connect_tcp`` resolves the host once (IP literals are not resolved), refuses with
    :class:`DestinationForbidden` if *any* address is forbidden (a mixed answer is suspicious),
    then hands the inner backend the checked IP literals, trying them in order until one
    connects. Name-resolution failures become ``httpcore.ConnectError`` (``httpx.ConnectError``
    through httpx) and a resolution that outlasts the connect timeout ``httpcore.ConnectTimeout``.
    """

    def __init__(
        self,
        policy: AddressPolicy,
        *,
        resolver: Resolver | None = None,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._policy = policy
        self._resolver: Resolver = resolve if resolver is None else resolver
        self._inner: httpcore.AsyncNetworkBackend = (
            httpcore.AnyIOBackend() if inner is None else inner
        )

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        started = time.monotonic()
        try:
            with anyio.fail_after(timeout):
                addresses = await checked_addresses(
                    self._policy, host, port, resolver=self._resolver
                )
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        last_error: httpcore.ConnectError | None = None
        for ip in addresses:
            remaining = (
                None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
            )
            try:
                return await self._inner.connect_tcp(
                    str(ip),
                    port,
                    timeout=remaining,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                last_error = exc
        assert last_error is not None  # addresses is never empty
        raise last_error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise DestinationForbidden("unix sockets are not allowed", classification="unix_socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_transport(
    policy: AddressPolicy,
    *,
    verify: ssl.SSLContext | str | bool = True,
    limits: httpx.Limits,
    resolver: Resolver | None = None,
    inner: httpcore.AsyncNetworkBackend | None = None,
) -> httpx.AsyncHTTPTransport:
    """An httpx transport (HTTP/1.1, no proxy) whose every connection goes through
    :class:`GuardedBackend` (which opens the checked connections with ``inner``,
    ``httpcore.AnyIOBackend`` by default).

    ``verify``: ``True`` for certifi's CA bundle (environment variables are ignored), ``False``
    to disable verification, an ``ssl.SSLContext``, or the path of a CA bundle file or directory
    (:class:`ConfigError` when it cannot be loaded). Pass the result as
    ``httpx.AsyncClient(transport=...)``; the client's own ``verify`` and ``limits`` are then
    ignored.
    """
    context = ssl_context(verify)
    transport = httpx.AsyncHTTPTransport(
        verify=context, limits=limits, http2=False, trust_env=False
    )
    # Mirrors the pool httpx 0.28 builds in AsyncHTTPTransport.__init__ (no proxy, no uds),
    # adding only the network backend, which httpx does not let us pass.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        http1=True,
        http2=False,
        retries=0,
        network_backend=GuardedBackend(policy, resolver=resolver, inner=inner),
    )
    return transport
